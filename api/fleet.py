"""Fleet and rollout resources, read from the registry the xDS replicas keep in etcd.

- `GET /v1/fleet` → every connected Envoy (from any replica), newest stream per node id
- `GET /v1/fleet/{node}` → one node
- `GET /v1/rollouts/{revision}` → which nodes acked a config including that revision,
  which rejected it (NACK with the message), which are pending
- `POST /v1/fleet/{node}/drain` → take one Envoy out of the front tier: its `/healthz` fails
  (so DNS, anycast and L4 renders drop it) while its listeners keep serving the clients it
  has; `DELETE` puts it back. `?wait=withdrawn&timeout=10s` answers once the Envoy has the
  drain and (when probed) its health check fails.
Writes accept `?wait=acked&timeout=5s` to answer once the fleet has the change (see
`wait_for_rollout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aetcd import rpc
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from api._request import json_body, wait_timeout
from api.auth import Role, require
from api.events import intent_revision, present_node
from api.problems import ApiError, field_errors
from controlplane.etcd import Etcd, prefix_end
from controlplane.frontdoor.render import SERVING, front_states
from controlplane.intent.errors import FieldError, ValidationFailed
from controlplane.intent.keyspace import Keyspace
from controlplane.intent.model import DEFAULT_MIN_IN_SERVICE, FleetName
from controlplane.moves.controller import read_status, read_statuses, request_key
from controlplane.xds import served
from controlplane.xds.registry import FleetView, read_fleet, rollout_status
from controlplane.xds.served import TYPES

_readers = [Depends(require(Role.READER))]
_writers = [Depends(require(Role.WRITER))]
_MAX_REASON = 256
_FLOOR_TRIES = 5  # reads of the fleet when other drains land between a read and the write


_FLEET_NAME: TypeAdapter[str] = TypeAdapter(FleetName)


def _check_fleet(fleet: str) -> None:
    """A fleet name (an Envoy's node.cluster, as listeners name fleets), or a 422."""
    try:
        _FLEET_NAME.validate_python(fleet)
    except ValidationError as exc:
        raise ValidationFailed([FieldError("/fleet", f"{fleet[:300]!r}: {field_errors(exc)[0].detail}")]) from None


def fleet_router() -> APIRouter:
    r = APIRouter(tags=["fleet"])

    @r.get("/v1/fleet", dependencies=_readers, summary="Connected Envoys, from every xDS replica")
    async def fleet(request: Request) -> JSONResponse:
        etcd = request.app.state.store.etcd
        view = await read_fleet(etcd)
        moving = await read_statuses(etcd, "node")
        states = front_states(view.nodes, floors=view.floors)
        nodes = [present_node(doc, moving.get(n), states.get(n)) for n, doc in view.nodes.items()]
        rebalances = await read_statuses(etcd, "fleet")
        latest = await intent_revision(etcd)
        return JSONResponse(
            {
                "nodes": nodes,
                "drained": view.drained,
                "rebalances": rebalances,
                "rate_limit_shares": await _rate_limit_shares(etcd),
                "revision": view.revision,
                "intent_revision": latest,
            }
        )

    @r.get(
        "/v1/fleet/{node_id}/config",
        dependencies=_readers,
        summary="What lbcp serves one Envoy (CDS, EDS, LDS, RDS; never secrets), as its /config_dump shows it",
    )
    async def node_config(request: Request, node_id: str, type: str | None = None) -> JSONResponse:
        types = list(TYPES) if type is None else [t.strip() for t in type.split(",")]
        bad = [t for t in types if t not in TYPES]
        if bad:
            raise ValidationFailed([FieldError("/query/type", f"unknown type {bad[0]!r}: one of {', '.join(TYPES)}")])
        etcd = request.app.state.store.etcd
        doc = (await read_fleet(etcd)).nodes.get(node_id)
        if doc is None:
            raise ApiError(404, "node-not-found", "Node not found", f"no connected Envoy has node id {node_id!r}")
        public = (doc.get("metadata") or {}).get("public_address")
        try:
            built = await served.node_config(etcd, doc["fleet"], node_id, public, types)
        except TimeoutError:
            raise ApiError(503, "store-unavailable", "Store unavailable", "intent could not be read in time") from None
        for short, got in built["types"].items():
            st = (doc.get("types") or {}).get(short) or {}
            got["envoy"] = {k: st.get(k) for k in ("sent_version", "acked_version", "last_nack")}
        return JSONResponse({"node_id": node_id, "fleet": doc["fleet"], "acked_revision": doc.get("acked_revision"),
                             **built})  # fmt: skip

    @r.get("/v1/fleet/{node_id:path}", dependencies=_readers, summary="One connected Envoy")
    async def node(request: Request, node_id: str) -> JSONResponse:
        view = await read_fleet(request.app.state.store.etcd)
        doc = view.nodes.get(node_id)
        if doc is None:
            raise ApiError(404, "node-not-found", "Node not found", f"no connected Envoy has node id {node_id!r}")
        evacuation = await read_status(request.app.state.store.etcd, "node", node_id)
        state = front_states(view.nodes, floors=view.floors, fleet=doc.get("fleet") or "").get(node_id)
        return JSONResponse(present_node(doc, evacuation, state))

    @r.post(
        "/v1/fleets/{fleet}/rebalance",
        dependencies=_writers,
        summary="Rebalance a fleet's connections once, at a paced rate",
        status_code=202,
    )
    async def rebalance(request: Request, fleet: str) -> JSONResponse:
        _check_fleet(fleet)
        doc = await json_body(request) if await request.body() else {}
        allowed = {"rate", "tolerance_percent"}
        bad = [
            FieldError(f"/{k}", "an integer from 1 to 1000000" if k == "rate" else "an integer from 1 to 100")
            for k, v in (doc.items() if isinstance(doc, dict) else [])
            if k in allowed
            and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= (1_000_000 if k == "rate" else 100))
        ]
        if not isinstance(doc, dict) or set(doc) - allowed:
            bad.append(FieldError("", 'the body may hold {"rate": N, "tolerance_percent": P}'))
        if bad:
            raise ValidationFailed(bad)
        etcd = request.app.state.store.etcd
        record = {**doc, "at": time.time()}
        resp = await etcd.put(request_key(etcd.config.prefix, fleet), json.dumps(record).encode())
        status = await read_status(etcd, "fleet", fleet)
        return JSONResponse(
            {"fleet": fleet, "requested": record, "status": status, "revision": resp.header.revision},
            status_code=202,
            headers={"Lbcp-Revision": str(resp.header.revision)},
        )

    @r.get("/v1/fleets/{fleet}/rebalance", dependencies=_readers, summary="A fleet's rebalancing progress")
    async def rebalance_status(request: Request, fleet: str) -> JSONResponse:
        _check_fleet(fleet)
        etcd = request.app.state.store.etcd
        status = await read_status(etcd, "fleet", fleet)
        pending = (await etcd.range(request_key(etcd.config.prefix, fleet))).kvs
        return JSONResponse({"fleet": fleet, "requested": json.loads(pending[0].value) if pending else None,
                             "status": status})  # fmt: skip

    @r.post("/v1/fleet/{node_id:path}/drain", dependencies=_writers, summary="Drain one Envoy out of the front tier")
    async def drain(request: Request, node_id: str, force: bool = False) -> JSONResponse:
        reason, evacuate = await _drain_body(request)
        wait = request.query_params.get("wait")
        if wait is not None and wait != "withdrawn":
            raise ValidationFailed([FieldError("/query/wait", "wait takes only 'withdrawn'")])
        timeout = wait_timeout(request) if wait else 0.0
        etcd = request.app.state.store.etcd
        keys = Keyspace(etcd.config.prefix)
        key = keys.drain_key(node_id)
        record: dict[str, Any] = {"reason": reason, "since": time.time()}
        if evacuate is not None:
            record["evacuate"] = evacuate
        for _ in range(_FLOOR_TRIES):
            view = await read_fleet(etcd)
            if node_id not in view.nodes and node_id not in view.drained and not force:
                raise ApiError(
                    404,
                    "node-not-found",
                    "Node not found",
                    f"no connected Envoy has node id {node_id!r}; force drains it before it connects",
                    override="force",
                )
            # Create only: draining an already drained node keeps its first record (and
            # `since`); an evacuation asked of a drained node is added to (or replaces the
            # rate in) it.
            compare = [rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)]
            if not force and node_id not in view.drained:
                _check_floor(view, node_id, evacuate is not None)
                # ... and only if no other drain landed since the floor was counted (two
                # concurrent drains must not each leave the other as the last one in).
                compare.append(
                    rpc.Compare(
                        key=keys.drains,
                        range_end=prefix_end(keys.drains),
                        target=rpc.Compare.MOD,
                        result=rpc.Compare.LESS,
                        mod_revision=view.revision + 1,
                    )
                )
            resp = await etcd.txn(
                rpc.TxnRequest(
                    compare=compare,
                    success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=json.dumps(record).encode()))],
                    failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
                )
            )
            if resp.succeeded or resp.responses[0].response_range.kvs:
                break
        else:
            raise ApiError(409, "write-conflict", "Conflict", f"drains kept changing while {node_id!r} was drained")
        if resp.succeeded:
            revision, status = resp.header.revision, 201
        else:
            kv = resp.responses[0].response_range.kvs[0]
            record, revision, status = json.loads(kv.value), kv.mod_revision, 200
            if evacuate is not None and record.get("evacuate") != evacuate:
                record["evacuate"] = evacuate
                same = rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision)
                put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=json.dumps(record).encode()))
                changed = await etcd.txn(rpc.TxnRequest(compare=[same], success=[put]))
                if not changed.succeeded:
                    raise ApiError(409, "write-conflict", "Conflict", f"the drain of {node_id!r} changed meanwhile")
                revision = changed.header.revision
        body = {"node_id": node_id, "draining": True, **record, "revision": revision, "forced": force}
        headers = {"Lbcp-Revision": str(revision)}
        if wait is not None:
            body["withdrawal"] = await _wait_withdrawn(request, node_id, revision, timeout)
            headers["Lbcp-Withdrawal"] = "complete" if body["withdrawal"]["complete"] else "timeout"
        return JSONResponse(body, status_code=status, headers=headers)

    @r.delete(
        "/v1/fleet/{node_id:path}/drain", dependencies=_writers, summary="Put a drained Envoy back in the front tier"
    )
    async def undrain(request: Request, node_id: str) -> JSONResponse:
        etcd = request.app.state.store.etcd
        resp = await etcd.delete(Keyspace(etcd.config.prefix).drain_key(node_id))
        if not resp.deleted:
            raise ApiError(404, "not-drained", "Node not drained", f"node {node_id!r} is not drained")
        return JSONResponse(
            {"node_id": node_id, "draining": False, "revision": resp.header.revision},
            headers={"Lbcp-Revision": str(resp.header.revision)},
        )

    @r.get("/v1/rollouts/{revision}", dependencies=_readers, summary="Which Envoys have (or rejected) an etcd revision")
    async def rollout(request: Request, revision: int = Path(ge=0)) -> JSONResponse:
        view = await read_fleet(request.app.state.store.etcd)
        return JSONResponse(rollout_status(view, revision))

    return r


async def _rate_limit_shares(etcd: Etcd) -> dict[str, Any]:
    """Each fleet's division of its `scope: fleet` rate limits (controlplane/moves/shares.py)."""
    keys = Keyspace(etcd.config.prefix)
    out: dict[str, Any] = {}
    for kv in (await etcd.range(keys.shares, prefix_end(keys.shares))).kvs:
        fleet = keys.shares_fleet(kv.key)
        with contextlib.suppress(ValueError):
            if fleet is not None:
                out[fleet] = json.loads(kv.value)
    return out


def _check_floor(view: FleetView, node_id: str, evacuate: bool) -> None:
    """Refuse (409 `min-in-service`) a drain that would leave the node's fleet with fewer
    Envoys in front of clients than its floor. Envoys already out (unhealthy, full, behind,
    drained) do not count; draining one of them takes nothing from the front door."""
    doc = view.nodes.get(node_id)
    if doc is None:
        return
    fleet = doc.get("fleet") or ""
    states = front_states(view.nodes, floors=view.floors, fleet=fleet)
    serving = sorted(n for n, st in states.items() if st in SERVING)
    floor = view.floors.get(fleet, DEFAULT_MIN_IN_SERVICE)
    if node_id not in serving or len(serving) - 1 >= floor:
        return
    what = "evacuating" if evacuate else "draining"
    raise ApiError(
        409,
        "min-in-service",
        "Below the fleet's floor",
        f"{what} {node_id} would leave fleet {fleet!r} with {len(serving) - 1} of {len(states)} Envoys in service,"
        f" below its floor of {floor} (min_in_service); force overrides",
        fleet=fleet,
        in_service=serving,
        min_in_service=floor,
        override="force",
    )


async def _drain_body(request: Request) -> tuple[str, dict[str, int] | None]:
    """The optional drain body: `{"reason": "...", "evacuate": {"connections_per_second": N}}`."""
    if not await request.body():
        return "", None
    doc = await json_body(request)
    if not isinstance(doc, dict) or set(doc) - {"reason", "evacuate"}:
        raise ValidationFailed(
            [
                FieldError(
                    "", 'the body is optional; it may hold {"reason": "...", "evacuate": {"connections_per_second": N}}'
                )
            ]
        )
    reason = doc.get("reason", "")
    if not isinstance(reason, str) or len(reason) > _MAX_REASON:
        raise ValidationFailed([FieldError("/reason", f"a string of at most {_MAX_REASON} characters")])
    evacuate = doc.get("evacuate")
    if evacuate is None:
        return reason, None
    rate = evacuate.get("connections_per_second") if isinstance(evacuate, dict) else None
    if (
        not isinstance(evacuate, dict)
        or set(evacuate) != {"connections_per_second"}
        or not isinstance(rate, int)
        or isinstance(rate, bool)
        or not 1 <= rate <= 1_000_000
    ):
        raise ValidationFailed(
            [
                FieldError(
                    "/evacuate/connections_per_second", "an integer from 1 to 1000000 (connections closed per second)"
                )
            ]
        )
    return reason, {"connections_per_second": rate}


async def _wait_withdrawn(request: Request, node_id: str, revision: int, timeout: float) -> dict[str, Any]:
    """Poll until the node has acked the drain and, when it is probed, its /healthz fails."""
    etcd = request.app.state.store.etcd
    deadline = time.monotonic() + timeout
    while True:
        doc = (await read_fleet(etcd)).nodes.get(node_id)
        acked = doc is not None and doc.get("acked_revision", 0) >= revision
        probed = doc is not None and bool((doc.get("front_health") or {}).get("probed"))
        failing = doc is not None and probed and (doc.get("front_health") or {}).get("ok") is False
        # A node that is not connected has nothing to withdraw: the front tier already left it.
        complete = doc is None or (acked and (failing or not probed))
        if complete or time.monotonic() >= deadline:
            return {
                "complete": complete,
                "connected": doc is not None,
                "acked": acked,
                "health_failing": failing if probed else None,
            }
        await asyncio.sleep(0.1)
