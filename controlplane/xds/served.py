"""What lbcp serves one Envoy, as JSON: for `GET /v1/fleet/{node}/config` and `lbcp config`.

Built on demand from intent read anew from etcd (an IntentView and SnapshotCache of its own,
then dropped), exactly as a replica builds it, from one read and no watch: the fleet's snapshot, with this Envoy's own
listener variants (its public address, the shards it was asked to let go of). Resources are
shown as Envoy's `/config_dump` shows them (proto3 JSON, proto field names), so the two can
be compared line by line. Secrets (SDS) are never shown: they hold private keys. The health
gate (one EDS resource per Envoy, failing while it is drained) is not either: it is made per
stream, and `drain` in the fleet view says which answer it gives.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, symbol_database

from controlplane.etcd import Etcd
from controlplane.intent.view import IntentView
from controlplane.xds import resources as res
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.snapshot import Entry, encoded_entry, set_version, share_of

TYPES = {"cds": res.CLUSTER_TYPE, "eds": res.ENDPOINT_TYPE, "lds": res.LISTENER_TYPE, "rds": res.ROUTE_TYPE}


def as_json(entry: Entry) -> dict[str, Any]:
    """One resource as Envoy's config dump writes it (Any fields with their `@type`)."""
    [resource] = discovery_pb2.DiscoveryResponse.FromString(entry.sotw_chunk).resources
    msg = symbol_database.Default().GetSymbol(resource.type_url.rsplit("/", 1)[-1])()
    resource.Unpack(msg)
    return dict(json_format.MessageToDict(msg, preserving_proto_field_name=True))


async def node_config(
    etcd: Etcd, fleet: str, node_id: str, public_address: str | None, types: list[str], timeout: float = 10.0
) -> dict[str, Any]:
    """`{revision, types: {cds: {version, resources: [{name, version, resource}]}, ...}}` for
    one Envoy of `fleet`; `types` are short names (cds, eds, lds, rds)."""
    view = IntentView(etcd)
    cache = SnapshotCache(view, debounce=0, max_delay=0)
    # One consistent read of all intent; the cache builds from it at once. Not view.start():
    # that also opens the view's watch on a thread with an event loop of its own, closed
    # when the view stops while gRPC may still hold events for it; the API's loop then logged
    # "RuntimeError: Event loop is closed" for every request (and a watch for a one-off read
    # is waste besides).
    await asyncio.wait_for(view.load_once(), timeout)
    if not cache.ready:
        raise TimeoutError("the snapshot was not built")
    snap = cache.snapshot(fleet)
    out: dict[str, Any] = {}
    for short in types:
        type_url = TYPES[short]
        entries = dict(snap.of(type_url))
        if type_url == res.LISTENER_TYPE:
            generations = snap.sheds.get(node_id)
            for name, base in snap.listener_bases.items():
                if generations or (base.bind_public and public_address):
                    value = base.variant(_ip(public_address), generations)
                    entries[name] = encoded_entry(res.LISTENER_TYPE, name, value)
        if type_url == res.ROUTE_TYPE and snap.route_bases:
            share = share_of(snap.shares, fleet, node_id)
            if share is not None:
                for name, limited in snap.route_bases.items():
                    entries[name] = encoded_entry(res.ROUTE_TYPE, name, limited.variant(share))
        out[short] = {
            "version": set_version(entries),
            "resources": [
                {"name": n, "version": e.version, "resource": as_json(e)} for n, e in sorted(entries.items())
            ],
        }
    return {"revision": snap.revision, "types": out}


def _ip(address: str | None) -> str | None:
    import ipaddress

    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(address or ""))
    return None
