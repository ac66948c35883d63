"""Ring resources: the consistent-hash ring every Envoy builds for a cluster, computed here.

- `GET  /v1/clusters/{c}/ring` → algorithm, size, revision, each backend's share of the key
  space next to its ideal share (from weights), and max/avg imbalance
- `GET  /v1/clusters/{c}/ring/lookup?key=K` and `POST …/ring/lookup {"keys": [...]}` → the
  backend every Envoy picks for a request whose hash-policy value is K. K is the value that
  the route's (single) hash policy hashes: the header value, the cookie value, the query
  parameter value, or the client IP as text. Envoy hashes it with XXH64, seed 0.
- `POST /v1/clusters/{c}/ring/simulate {"add": [...], "remove": [...], "reweight": {...}}` →
  the fraction of keys that would move, per backend, versus the theoretical minimum.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api._request import json_body, parse
from api.auth import Role, require
from api.resources import check_name
from controlplane.intent.errors import FieldError, ValidationFailed
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind
from controlplane.ring.tables import HashLB, MaglevTable, RingHashTable, ring_for, sample_hashes, xxh64

_readers = [Depends(require(Role.READER))]
_CACHE: OrderedDict[tuple[object, ...], HashLB] = OrderedDict()
_CACHE_SIZE = 64
_SAMPLES = 200_000


async def _build(request: Request, cluster: Cluster, backends: list[Backend]) -> HashLB:
    """Build off the event loop (a 655,373-slot Maglev table takes over a second)."""
    started = time.perf_counter()
    lb = await asyncio.to_thread(ring_for, cluster, backends)
    request.app.state.metrics.ring.seconds.labels(cluster.load_balancer.type).observe(time.perf_counter() - started)
    return lb


async def _load(request: Request, cluster: str) -> tuple[Any, list[Backend], int, HashLB]:
    check_name(Kind.CLUSTER, cluster, "/cluster")
    store = request.app.state.store
    c = await store.get(Ref(Kind.CLUSTER, cluster))
    if not c.obj.hashing:
        raise ValidationFailed(
            [
                FieldError(
                    "/load_balancer/type",
                    f"cluster {cluster!r} uses {c.obj.load_balancer.type}; only maglev and ring_hash have a ring",
                )
            ]
        )
    members, token = [], None
    revision = c.mod_revision
    while True:
        page = await store.list(Kind.BACKEND, cluster=cluster, limit=1000, page_token=token)
        members += page.items
        token = page.next_page_token
        if not token:
            break
    backends = [s.obj for s in members]
    revision = max([revision, *(s.mod_revision for s in members)])
    # Computed once per cluster and intent revision (a delete changes the member count).
    key = (store.keys.prefix, cluster, c.mod_revision, revision, len(backends))
    lb = _CACHE.get(key)
    if lb is None:
        lb = _CACHE[key] = await _build(request, c.obj, backends)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return c.obj, backends, revision, lb


def _shares(lb: HashLB) -> dict[str, float]:
    """Share of requests per backend, across priorities (table shares weighted by priority load)."""
    out: dict[str, float] = {}
    for p, table in enumerate(lb.tables):
        load = (lb.healthy_load[p] + lb.degraded_load[p]) / 100 if p < len(lb.healthy_load) else 0
        if table is None or not load:
            continue
        for name, s in table.shares().items():
            out[name] = out.get(name, 0.0) + s * load
    return out


def _ideal(backends: list[Backend]) -> dict[str, float]:
    live = [
        b
        for b in backends
        if b.admin_state == "ready"
        and b.priority == min((x.priority for x in backends if x.admin_state == "ready"), default=0)
    ]
    total = sum(b.weight for b in live)
    return {b.name: b.weight / total for b in live} if total else {}


class SimulateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    add: list[Backend] = Field(default_factory=list, max_length=10_000)
    remove: list[str] = Field(default_factory=list, max_length=10_000)
    reweight: dict[str, int] = Field(default_factory=dict)


def ring_router() -> APIRouter:
    r = APIRouter(prefix="/v1/clusters/{cluster}/ring", tags=["ring"])

    @r.get("", dependencies=_readers, summary="The cluster's ring, as every Envoy builds it")
    async def show(request: Request, cluster: str) -> JSONResponse:
        c, backends, revision, lb = await _load(request, cluster)
        shares = _shares(lb)
        ideal = _ideal(backends)
        avg = 1 / len(shares) if shares else 0
        lbc = c.load_balancer
        return JSONResponse(
            {
                "cluster": cluster,
                "algorithm": lbc.type,
                "table_size": lbc.table_size if lbc.type == "maglev" else None,
                "ring_size": None
                if lbc.type == "maglev"
                else sum(len(t.hashes) for t in lb.tables if isinstance(t, RingHashTable)),
                "revision": revision,
                "priority_load": lb.healthy_load,
                "backends": [{"name": n, "share": s, "ideal_share": ideal.get(n)} for n, s in sorted(shares.items())],
                "max_over_avg": (max(shares.values()) / avg) if shares else None,
                "max_over_ideal": max((s / ideal[n] for n, s in shares.items() if ideal.get(n)), default=None),
            }
        )

    def _pick(lb: HashLB, key: str) -> str | None:
        return lb.pick(xxh64(key.encode()))

    @r.get("/lookup", dependencies=_readers, summary="Which backend a hash-policy value goes to")
    async def lookup(request: Request, cluster: str, key: str = Query(..., max_length=8192)) -> JSONResponse:
        _, _, revision, lb = await _load(request, cluster)
        return JSONResponse({"key": key, "backend": _pick(lb, key), "hash": xxh64(key.encode()), "revision": revision})

    @r.post("/lookup", dependencies=_readers, summary='Batch lookup: {"keys": [...]}')
    async def lookup_many(request: Request, cluster: str) -> JSONResponse:
        doc = await json_body(request)
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(keys) > 100_000:
            raise ValidationFailed([FieldError("/keys", "keys is a list of at most 100000 strings")])
        _, _, revision, lb = await _load(request, cluster)
        return JSONResponse({"revision": revision, "backends": {k: _pick(lb, k) for k in keys}})

    @r.post("/simulate", dependencies=_readers, summary="What-if: how many keys move")
    async def simulate(request: Request, cluster: str) -> JSONResponse:
        body: SimulateBody = parse(SimulateBody, await json_body(request))
        c, backends, revision, before = await _load(request, cluster)
        names = {b.name for b in backends}
        errors = [FieldError(f"/remove/{i}", f"no backend {n!r}") for i, n in enumerate(body.remove) if n not in names]
        errors += [FieldError(f"/reweight/{n}", f"no backend {n!r}") for n in body.reweight if n not in names]
        errors += [
            FieldError(f"/add/{i}/name", f"backend {b.name!r} exists")
            for i, b in enumerate(body.add)
            if b.name in names
        ]
        errors += [
            FieldError(f"/reweight/{n}", "weight is 1..1000000")
            for n, w in body.reweight.items()
            if not 1 <= w <= 1_000_000
        ]
        if errors:
            raise ValidationFailed(errors)
        after_backends = [
            b.model_copy(update={"weight": body.reweight.get(b.name, b.weight)})
            for b in backends
            if b.name not in body.remove
        ]
        after_backends += body.add
        after = await _build(request, c, after_backends)
        tb, ta = (before.tables[0], after.tables[0]) if len(before.tables) == len(after.tables) == 1 else (None, None)
        moved_slots: list[tuple[str | None, str | None]]
        if isinstance(tb, MaglevTable) and isinstance(ta, MaglevTable):
            moved_slots = [
                (tb.names[x], ta.names[y])
                for x, y in zip(tb.table, ta.table, strict=False)
                if tb.names[x] != ta.names[y]
            ]
            total, method = tb.size, "exact (every Maglev slot)"
        else:
            hs = sample_hashes(_SAMPLES)
            moved_slots = [(a, b) for a, b in ((before.pick(h), after.pick(h)) for h in hs) if a != b]
            total, method = len(hs), f"sampled ({_SAMPLES} request hashes)"
        out_of: dict[str | None, int] = {}
        into: dict[str | None, int] = {}
        for a, b in moved_slots:
            out_of[a] = out_of.get(a, 0) + 1
            into[b] = into.get(b, 0) + 1
        s0, s1 = _shares(before), _shares(after)
        minimum = sum(abs(s1.get(n, 0) - s0.get(n, 0)) for n in s0.keys() | s1.keys()) / 2
        return JSONResponse(
            {
                "revision": revision,
                "method": method,
                "moved_fraction": len(moved_slots) / total,
                "minimum_fraction": minimum,
                "per_backend": {
                    n: {
                        "moved_out": out_of.get(n, 0) / total,
                        "moved_in": into.get(n, 0) / total,
                        "share_before": s0.get(n, 0.0),
                        "share_after": s1.get(n, 0.0),
                    }
                    for n in sorted(s0.keys() | s1.keys())
                },
            }
        )

    return r
