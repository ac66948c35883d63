"""The front tier from live fleet state: `GET /v1/frontdoor/{format}`.

Formats: `dns` (zone fragment; `?zone=&name=&ttl=`), `json` (the in-service set),
`iptables` / `nftables` (`?vip=&port=&mode=`), `bird` (`?node=&vip=&neighbor=&local_as=&peer_as=`).
`?fleet=` keeps one fleet; `?revision=` requires that revision to be acked. Output is
deterministic: it changes only when the in-service set does (the ETag is its hash).
"""

from __future__ import annotations

from collections import OrderedDict

import xxhash
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api.auth import Role, require
from controlplane.frontdoor import render as frontdoor
from controlplane.intent.errors import FieldError, ValidationFailed
from controlplane.xds.registry import read_fleet

_readers = [Depends(require(Role.READER))]
FORMATS = ("json", "dns", "iptables", "nftables", "bird")


_FRONTS = 256  # in-service sets remembered per API process (one per fleet and revision asked)


def _front(request: Request, fleet: str | None, revision: int | None) -> frontdoor.StableFront:
    """This process's memory of one in-service set, so a render stays statically stable
    across the registry's trouble like `lbcp dns` (a sidecar polling with `lbcp frontdoor
    render --watch` sees what DNS sees). Bounded: the oldest asked is forgotten first."""
    fronts: OrderedDict[tuple[str | None, int | None], frontdoor.StableFront] | None
    fronts = getattr(request.app.state, "fronts", None)
    if fronts is None:
        fronts = request.app.state.fronts = OrderedDict()
    key = (fleet, revision)
    front = fronts.pop(key, None) or frontdoor.StableFront()
    fronts[key] = front
    while len(fronts) > _FRONTS:
        fronts.popitem(last=False)
    return front


def frontdoor_router() -> APIRouter:
    r = APIRouter(prefix="/v1/frontdoor", tags=["frontdoor"])

    @r.get("/{fmt}", dependencies=_readers, summary="DNS records, BIRD, iptables or nftables for the in-service Envoys")
    async def render(
        request: Request,
        fmt: str,
        fleet: str | None = None,
        revision: int | None = Query(None, ge=0),
        zone: str = "example.com",
        name: str = "www",
        ttl: int = Query(60, ge=1, le=86400),
        vip: str = "198.51.100.1",
        port: int = Query(443, ge=1, le=65535),
        mode: str | None = None,
        node: str | None = None,
        neighbor: str = "192.0.2.1",
        local_as: int = 65001,
        peer_as: int = 65000,
    ) -> Response:
        if fmt not in FORMATS:
            raise ValidationFailed([FieldError("/format", f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")])
        view = await read_fleet(request.app.state.store.etcd)
        front = _front(request, fleet, revision)
        members = front.members(view, revision, fleet)
        try:
            if fmt == "json":
                return JSONResponse(
                    {
                        "in_service": [{"node_id": m.node_id, "address": m.address} for m in members],
                        # Kept while their records are gone without evidence (docs/frontdoor.md).
                        "stale": [{"node_id": m.node_id, "address": m.address} for m in front.stale],
                    }
                )
            if fmt == "dns":
                text = frontdoor.render_dns(members, zone, name, ttl)
            elif fmt == "iptables":
                text = frontdoor.render_iptables(members, vip, port, mode or "nth")
            elif fmt == "nftables":
                text = frontdoor.render_nftables(members, vip, port, mode or "hash")
            else:
                if not node:
                    raise ValidationFailed([FieldError("/node", "bird renders one Envoy host's config: give ?node=")])
                member = next((m for m in members if m.node_id == node), None)
                text = frontdoor.render_bird(member, vip, neighbor, local_as, peer_as, node)
        except ValueError as exc:
            raise ValidationFailed([FieldError("/mode", str(exc))]) from None
        return PlainTextResponse(text, headers={"etag": f'"{xxhash.xxh64_hexdigest(text.encode())}"'})

    return r
