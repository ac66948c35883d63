"""The fleet registry: every replica records its connected Envoys in etcd, under a lease.

Key: `{prefix}_runtime/fleet/{node id, %-quoted}/{replica}.{stream id}`, value: JSON of the
stream (node, fleet, locality, protocol, connected_since, acked_revision, per-type sent/acked
versions and last NACK). A replica's records share one lease, so a replica that dies takes
its records with it within the lease TTL. Writes are coalesced and batched (one transaction
per flush), so a push to a thousand Envoys is not a thousand etcd round trips.

Readers (`read_fleet`, `rollout`) work from etcd alone, so the admin API answers for the
whole fleet from any replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from aetcd import rpc

from controlplane.etcd import Etcd, prefix_end
from controlplane.intent.errors import StoreError
from controlplane.intent.keyspace import Keyspace
from controlplane.xds.server.common import BaseStream, Nack

log = logging.getLogger(__name__)

LEASE_TTL = 10
_MAX_OPS_PER_TXN = 1000


def fleet_prefix(root: str) -> bytes:
    return f"{root}_runtime/fleet/".encode()


class FleetRegistry:
    """A StreamObserver that mirrors this replica's streams into etcd."""

    def __init__(self, etcd: Etcd, replica: str, flush_interval: float = 0.2) -> None:
        self.etcd = etcd
        self.replica = replica
        self.flush_interval = flush_interval
        self.prefix = fleet_prefix(etcd.config.prefix)
        self._streams: dict[int, BaseStream] = {}
        self._dirty: set[int] = set()
        self._gone: dict[int, bytes] = {}
        self._lease = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.flushes = 0
        self.nacks: list[dict[str, Any]] = []

    def key(self, s: BaseStream) -> bytes:
        return self.prefix + f"{urllib.parse.quote(s.node.id, safe='')}/{self.replica}.{s.id}".encode()

    # -- StreamObserver --------------------------------------------------------------------

    def connected(self, stream: BaseStream) -> None:
        self._streams[stream.id] = stream
        self._mark(stream)

    def changed(self, stream: BaseStream) -> None:
        self._mark(stream)

    def disconnected(self, stream: BaseStream) -> None:
        self._streams.pop(stream.id, None)
        self._dirty.discard(stream.id)
        self._gone[stream.id] = self.key(stream)
        self._wake.set()

    def pushed(self, stream: BaseStream, type_url: str, nbytes: int, resources: int) -> None:
        pass

    def acked(self, stream: BaseStream, type_url: str, latency: float) -> None:
        # The record carries per-type acked versions and push counts: keep it current even
        # when the stream's overall acked revision does not move (e.g. it holds a NACKed
        # resource). Writes stay batched per flush interval, so this costs no extra txn.
        self._mark(stream)

    def nacked(self, stream: BaseStream, type_url: str, nack: Nack) -> None:
        log.warning(
            "NACK from %s (%s) for %s version %s: %s",
            stream.node.id,
            stream.fleet,
            type_url,
            nack.version,
            nack.message,
        )
        self.nacks.append({"node_id": stream.node.id, "type_url": type_url, **nack.as_dict()})
        del self.nacks[:-100]
        self._mark(stream)

    def _mark(self, stream: BaseStream) -> None:
        self._dirty.add(stream.id)
        self._wake.set()

    # -- flushing --------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fleet-registry")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2)
            self._task = None
        if self._lease:
            # Revoking deletes this replica's records at once (instead of at lease expiry).
            try:
                await asyncio.wait_for(self.etcd.lease_revoke(self._lease), 2)
            except (StoreError, TimeoutError):
                pass
            self._lease = 0

    async def _ensure_lease(self) -> None:
        if self._lease:
            ttl = await self.etcd.lease_keepalive(self._lease)
            if ttl > 0:
                return
            log.warning("fleet registry lease expired; re-registering %d streams", len(self._streams))
        self._lease = await self.etcd.lease_grant(LEASE_TTL)
        self._dirty |= set(self._streams)

    async def _run(self) -> None:
        last_keepalive = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), LEASE_TTL / 3)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if not self._lease or time.monotonic() - last_keepalive > LEASE_TTL / 3:
                    await self._ensure_lease()
                    last_keepalive = time.monotonic()
                written = await self._flush()
            except StoreError as exc:
                log.warning("fleet registry cannot write to etcd (%s); retrying", exc)
                self._lease = 0 if "lease" in str(exc).lower() else self._lease
                await asyncio.sleep(1.0)
                self._wake.set()
                continue
            # Large fleets: space the writes out (0.5 ms per record written), so the registry
            # never becomes etcd's main load; rollout status lags by at most that.
            await asyncio.sleep(max(self.flush_interval, written * 0.0005))

    async def _flush(self) -> int:
        """Write every changed record (and delete gone ones); returns how many ops."""
        ops: list[rpc.RequestOp] = []
        for key in self._gone.values():
            ops.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
        dirty = [self._streams[i] for i in self._dirty if i in self._streams]
        now = time.time()
        for s in dirty:
            doc = {**s.as_dict(), "replica": self.replica, "updated": now}
            ops.append(
                rpc.RequestOp(
                    request_put=rpc.PutRequest(key=self.key(s), value=json.dumps(doc).encode(), lease=self._lease)
                )
            )
        if not ops:
            return 0
        gone, self._gone = self._gone, {}
        self._dirty = set()
        try:
            for i in range(0, len(ops), _MAX_OPS_PER_TXN):
                await self.etcd.txn(rpc.TxnRequest(success=ops[i : i + _MAX_OPS_PER_TXN]))
        except StoreError:
            self._gone.update(gone)
            self._dirty |= {s.id for s in dirty}
            raise
        self.flushes += 1
        return len(ops)


# -- reading (admin API) ---------------------------------------------------------------------


@dataclass
class FleetView:
    nodes: dict[str, dict[str, Any]]  # node id -> newest stream record (+ "draining", "drain")
    revision: int
    drained: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> drain record, connected or not


async def read_fleet(etcd: Etcd) -> FleetView:
    """Every connected node's newest stream record and every drain, at one etcd revision."""
    prefix = fleet_prefix(etcd.config.prefix)
    drains = Keyspace(etcd.config.prefix).drains
    resp = await etcd.txn(
        rpc.TxnRequest(
            success=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix))),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=drains, range_end=prefix_end(drains))),
            ]
        ),
        read_only=True,
    )
    registry, drain_kvs = (r.response_range.kvs for r in resp.responses)
    drained: dict[str, dict[str, Any]] = {}
    for kv in drain_kvs:
        try:
            record = json.loads(kv.value)
        except ValueError:
            record = {}
        drained[urllib.parse.unquote(kv.key[len(drains) :].decode())] = {**record, "revision": kv.mod_revision}
    nodes: dict[str, dict[str, Any]] = {}
    for kv in registry:
        try:
            doc = json.loads(kv.value)
        except ValueError:
            continue
        cur = nodes.get(doc["node_id"])
        if cur is None or doc.get("connected_since", 0) > cur.get("connected_since", 0):
            doc["streams"] = (cur or {}).get("streams", 0) + 1
            nodes[doc["node_id"]] = doc
        else:
            cur["streams"] = cur.get("streams", 1) + 1
    for node_id, doc in nodes.items():
        doc["draining"] = node_id in drained
        if node_id in drained:
            doc["drain"] = drained[node_id]
    return FleetView(nodes, resp.header.revision, drained)


def rollout_status(fleet: FleetView, revision: int) -> dict[str, Any]:
    """Which connected nodes have acked a config including `revision`, and which rejected it."""
    acked, pending, rejected = [], [], []
    for node_id, doc in sorted(fleet.nodes.items()):
        # A NACK counts against `revision` if it was for that revision or later, or if the
        # node has not been in sync since it (it still holds a rejected resource that intent
        # has not changed since, so it cannot reach `revision` either).
        acked_at = doc.get("acked_revision", 0)
        nacks = [
            {"node_id": node_id, "type": t, **st["last_nack"]}
            for t, st in doc.get("types", {}).items()
            if st.get("last_nack")
            and (st["last_nack"]["revision"] >= revision or st["last_nack"]["revision"] > acked_at)
        ]
        if doc.get("acked_revision", 0) >= revision:
            acked.append(node_id)
        elif nacks:
            rejected.extend(nacks)
        else:
            pending.append(node_id)
    return {
        "revision": revision,
        "nodes": len(fleet.nodes),
        "acked": acked,
        "pending": pending,
        "rejected": rejected,
        "complete": not pending and not rejected,
    }
