"""Consume lbcp.v1.HashRing: pick a backend from a received ring, and follow a ring live.

This is what a non-Envoy consumer (an L4 director, a client library) needs to send a key to
the same backend as every Envoy of the fleet: subscribe to the cluster's ring over ADS
(delta), ACK each version, and look keys up locally. `lbcp ring watch CLUSTER` is built on it.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator
from dataclasses import dataclass

from controlplane.gen.lbcp.v1 import ring_pb2
from controlplane.xds.client import AdsClient
from controlplane.xds.resources import HASH_RING_TYPE


class RingPicker:
    """Envoy's host choice for a request hash, from a HashRing message (see ring.proto)."""

    def __init__(self, ring: ring_pb2.HashRing) -> None:
        self.ring = ring
        self.names = [b.name for b in ring.backends]
        self._maglev = ring.algorithm == ring_pb2.HashRing.MAGLEV
        # Copied out of the message once: indexing a repeated field is slower than a list.
        self._maglev_tables = [list(p.maglev_table) for p in ring.priorities] if self._maglev else []
        self._ring_tables = [] if self._maglev else [(list(p.ring_hashes), list(p.ring_hosts)) for p in ring.priorities]

    def _priority(self, h: int) -> int:
        x = h % 100 + 1
        acc = 0
        for load in ("healthy_load", "degraded_load"):
            for i, p in enumerate(self.ring.priorities):
                acc += getattr(p, load)
                if x <= acc:
                    return i
        return 0

    def pick(self, h: int) -> str | None:
        """The backend name for request hash `h`, or None if the ring is empty."""
        if self._maglev:
            if not self._maglev_tables:
                return None
            t = self._maglev_tables[self._priority(h)]
            return self.names[t[h % len(t)]] if t else None
        if not self._ring_tables:
            return None
        hashes, hosts = self._ring_tables[self._priority(h)]
        if not hashes:
            return None
        i = bisect.bisect_left(hashes, h)
        return self.names[hosts[i if i < len(hashes) else 0]]

    def shares(self) -> dict[str, float]:
        """Each backend's fraction of priority 0's key space."""
        counts = dict.fromkeys(self.names, 0.0)
        if self._maglev:
            if not self._maglev_tables:
                return {}
            t = self._maglev_tables[0]
            for i in t:
                counts[self.names[i]] += 1 / len(t)
        else:
            if not self._ring_tables:
                return {}
            hashes, hosts = self._ring_tables[0]
            prev = hashes[-1] - (1 << 64) if hashes else 0
            for h, i in zip(hashes, hosts, strict=False):
                counts[self.names[i]] += (h - prev) / float(1 << 64)
                prev = h
        return counts


@dataclass
class RingUpdate:
    cluster: str
    ring: RingPicker | None  # None: the cluster is gone or no longer hashes
    version: str


async def watch(
    target: str, cluster: str, node_id: str, fleet: str = "ring-watchers", limit: int | None = None
) -> AsyncIterator[RingUpdate]:
    """Follow `cluster`'s ring over delta ADS, ACKing each response; yields every change.

    Stops after `limit` updates if given; a failed stream raises grpc.aio.AioRpcError.
    """
    c = AdsClient(target, node_id, fleet, delta=True)
    await c.open()
    try:
        await c.delta_request(HASH_RING_TYPE, [cluster])
        seen = 0
        while limit is None or seen < limit:
            r = await c.recv(timeout=3600)
            if r is None:
                continue
            await c.delta_request(HASH_RING_TYPE, nonce=r.nonce)
            for res in r.resources:
                msg = ring_pb2.HashRing()
                res.resource.Unpack(msg)
                seen += 1
                yield RingUpdate(res.name, RingPicker(msg), res.version)
            for name in r.removed_resources:
                seen += 1
                yield RingUpdate(name, None, "")
    finally:
        await c.close()
