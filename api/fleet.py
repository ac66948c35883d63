"""Fleet and rollout resources, read from the registry the xDS replicas keep in etcd.

- `GET /v1/fleet` → every connected Envoy (from any replica), newest stream per node id
- `GET /v1/fleet/{node}` → one node
- `GET /v1/rollouts/{revision}` → which nodes acked a config including that revision,
  which rejected it (NACK with the message), which are pending
Writes accept `?wait=acked&timeout=5s` to answer once the fleet has the change (see
`wait_for_rollout`).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from controlplane.registry import read_fleet, rollout_status

from .auth import Role, require
from .problems import ApiError

_readers = [Depends(require(Role.READER))]


def fleet_router() -> APIRouter:
    r = APIRouter(tags=["fleet"])

    @r.get("/v1/fleet", dependencies=_readers, summary="Connected Envoys, from every xDS replica")
    async def fleet(request: Request) -> JSONResponse:
        view = await read_fleet(request.app.state.store.etcd)
        return JSONResponse({"nodes": list(view.nodes.values()), "revision": view.revision})

    @r.get("/v1/fleet/{node_id}", dependencies=_readers, summary="One connected Envoy")
    async def node(request: Request, node_id: str) -> JSONResponse:
        view = await read_fleet(request.app.state.store.etcd)
        doc = view.nodes.get(node_id)
        if doc is None:
            raise ApiError(404, "node-not-found", "Node not found", f"no connected Envoy has node id {node_id!r}")
        return JSONResponse(doc)

    @r.get("/v1/rollouts/{revision}", dependencies=_readers, summary="Which Envoys have (or rejected) an etcd revision")
    async def rollout(request: Request, revision: int) -> JSONResponse:
        view = await read_fleet(request.app.state.store.etcd)
        return JSONResponse(rollout_status(view, revision))

    return r


async def wait_for_rollout(request: Request, revision: int, timeout: float) -> dict:
    """Poll the registry until every connected node acked `revision` (or one rejected it)."""
    etcd = request.app.state.store.etcd
    deadline = time.monotonic() + timeout
    while True:
        status = rollout_status(await read_fleet(etcd), revision)
        if status["complete"] or status["rejected"] or time.monotonic() >= deadline:
            status["timed_out"] = not status["complete"] and not status["rejected"]
            return status
        await asyncio.sleep(0.05)
