"""Dividing a fleet's `scope: fleet` rate limits over its Envoys, with no per-request call.

Each Envoy in service (front state in or full, not drained) gets a share of every fleet-scope
limit in proportion to its share of the fleet's live connections (the registry's load
samples, what /v1/fleet shows): clients spread 60/30/10 over three Envoys give them shares
0.6/0.3/0.1 of the limit, so the fleet as a whole admits the limit whatever the spread. An
Envoy that leaves the front tier gives its share back: it is listed with share 0 (its bucket
keeps one token per period), and the others divide the whole limit.

A new division is written only when membership changes or some Envoy's share moves by more
than `TOLERANCE`: every division is an RDS update on the Envoys whose share changed, and
Envoy starts a route's token bucket afresh when its route configuration changes, so a
division that churned would admit more than the limit. The mover (controller.py) runs
`divide` on its leader at most every `INTERVAL` seconds, while some route has a fleet-scope
limit; replicas turn the `shares/{fleet}` record into each Envoy's own route configuration
(controlplane/xds/server/common.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from controlplane.etcd import Etcd
from controlplane.intent.keyspace import Keyspace

# Front states that hold a share (controlplane/frontdoor/render.py): a full Envoy is out of
# the front door only for new clients, and its many connections still send requests.
IN_SERVICE = ("in", "full", "kept-full")
TOLERANCE = 0.05  # re-divide when a share moves by more than 5 points of the whole limit
INTERVAL = 1.0  # seconds between looks at the fleet's load
_DIGITS = 4  # shares are stored rounded (same division, same bytes on every replica)


def divide(connections: Mapping[str, int], out_of_service: frozenset[str] | set[str] = frozenset()) -> dict[str, float]:
    """Each node's share: its connections over the in-service total (at least one connection
    each, so a fresh Envoy gets a sliver rather than nothing); out-of-service nodes get 0.
    With no connections anywhere, in-service nodes share equally."""
    members = {n: max(1, c) for n, c in connections.items() if n not in out_of_service}
    total = sum(members.values())
    out = {n: 0.0 for n in connections if n in out_of_service}
    for n, c in members.items():
        out[n] = round(c / total, _DIGITS)
    return out


def needs_update(old: Mapping[str, float] | None, new: Mapping[str, float], tolerance: float = TOLERANCE) -> bool:
    """A different membership (who is listed, who is in service), or a share that moved by
    more than `tolerance`."""
    if old is None or old.keys() != new.keys():
        return True
    for n, share in new.items():
        before = old[n]
        if (before == 0) != (share == 0) or abs(before - share) > tolerance:
            return True
    return False


async def write_shares(etcd: Etcd, fleet: str, shares: Mapping[str, float], connections: Mapping[str, int]) -> None:
    record = {
        "shares": dict(sorted(shares.items())),
        "connections": dict(sorted(connections.items())),
        "at": time.time(),
    }
    await etcd.put(Keyspace(etcd.config.prefix).share_key(fleet), json.dumps(record, sort_keys=True).encode())
