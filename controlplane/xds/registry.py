"""The fleet registry: every replica records its connected Envoys in etcd, under a lease.

Key: `{prefix}_runtime/fleet/{node id, %-quoted}/{replica}.{stream id}`, value: JSON of the
stream (node, fleet, locality, protocol, connected_since, acked_revision, per-type sent/acked
versions and last NACK). A replica's records share one lease, so a replica that dies takes
its records with it within the lease TTL. Writes are coalesced and batched (one transaction
per flush), so a push to a thousand Envoys is not a thousand etcd round trips.

Readers (`read_fleet`, `rollout`) work from etcd alone, so the admin API answers for the
whole fleet from any replica.

One stream per node id, fleet-wide. A stream claims its node at `{prefix}_runtime/owners/
{node id}` before it gets a record: the claim succeeds when nobody
holds the node, and replaces a holder only when the new stream's client certificate proves
the same node-bound identity (an Envoy reconnecting after a network cut, or with a renewed
certificate). Otherwise the new stream is refused: the live stream wins. A claim is freed
when its stream ends (a dead TCP connection is found by the server's keepalive within
`KEEPALIVE_SECONDS`) or its replica stops heartbeating: claims live under a short lease of
their own (`CLAIM_TTL`), so a killed replica's nodes are free
for the Envoys that reconnect elsewhere within seconds, not at the registry lease's expiry.
Claims that arrive together share one etcd transaction (one nested compare-and-put per
node); while etcd is unreachable a stream is served provisionally and claims when etcd is
back (and is closed if the node turns out to be held by another live stream). Each replica
watches the claims, so a stream taken over on another replica is closed at once.

Both leases are renewed three times per TTL from a thread of their own (controlplane.xds.
leases), never starved by the replica's loop, so an idle stream costs etcd nothing once it is
recorded. Each replica also keeps a heartbeat record under its lease (`replicas_prefix`)
saying whether every stream it serves is recorded: readers of the front door keep an Envoy
whose record vanished with a lapsed or incomplete replica (control-plane trouble), and drop
one whose record its replica deleted (the stream ended: evidence about the Envoy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aetcd import rpc

from controlplane.etcd import Etcd, prefix_end
from controlplane.intent.errors import StoreError
from controlplane.intent.keyspace import Keyspace
from controlplane.intent.model import DEFAULT_MIN_IN_SERVICE, Kind
from controlplane.xds.leases import LeaseKeeper
from controlplane.xds.server.common import BaseStream, Nack, StreamRejected

log = logging.getLogger(__name__)

LEASE_TTL = 10
CLAIM_TTL = 3
_MAX_OPS_PER_TXN = 1000
_MAX_RECORD_BYTES = 64 * 1024  # a registry record never exceeds this (docs/security.md, "Bounds")


def fleet_prefix(root: str) -> bytes:
    return f"{root}_runtime/fleet/".encode()


def owners_prefix(root: str) -> bytes:
    return f"{root}_runtime/owners/".encode()


def replicas_prefix(root: str) -> bytes:
    """Each replica's heartbeat record (under its registry lease): whether every stream it
    serves is recorded (`complete`), so a reader can tell a record that went with its
    stream from records that went with a lapsed lease."""
    return f"{root}_runtime/replicas/".encode()


def _put(key: bytes, value: bytes, lease: int) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def _cas(compare: rpc.Compare, key: bytes, success: rpc.RequestOp) -> rpc.RequestOp:
    """One key's compare-and-op, nested in a larger transaction (etcd >= 3.3)."""
    return rpc.RequestOp(
        request_txn=rpc.TxnRequest(
            compare=[compare], success=[success], failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))]
        )
    )


class NackLog:
    """NACKs in the log, bounded: one line per node, type and version (a stream that NACKs the
    same version again, or reconnects and does, is not logged again), the message cut to
    `MESSAGE_CHARS`, and at most `PER_SECOND` lines a second, then one line saying how many
    were left out. The whole message stays in the registry record and `/v1/fleet`."""

    MESSAGE_CHARS = 300
    PER_SECOND = 10
    _REMEMBERED = 10_000  # (node, type) pairs whose last logged version is kept

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], str] = {}
        self._second = 0
        self._lines = 0
        self._left_out = 0

    def nacked(self, node_id: str, fleet: str, type_url: str, nack: Nack) -> None:
        key = (node_id, type_url)
        if self._last.get(key) == nack.version:
            return
        if len(self._last) >= self._REMEMBERED:
            self._last.clear()
        self._last[key] = nack.version
        second = int(time.monotonic())
        if second != self._second:
            if self._left_out:
                log.warning("%d more NACKs not logged in the last second (see /v1/fleet)", self._left_out)
            self._second, self._lines, self._left_out = second, 0, 0
        if self._lines >= self.PER_SECOND:
            self._left_out += 1
            return
        self._lines += 1
        message = nack.message
        if len(message) > self.MESSAGE_CHARS:
            message = f"{message[: self.MESSAGE_CHARS]}… [{len(message)} characters]"
        log.warning("NACK from %s (%s) for %s version %s: %s", node_id, fleet, type_url, nack.version, message)


# Rounds of claiming one batch: a holder that changes between a read and a takeover is read again.
_CLAIM_ROUNDS = 4


class FleetRegistry:
    """A StreamObserver that mirrors this replica's streams into etcd."""

    def __init__(
        self,
        etcd: Etcd,
        replica: str,
        flush_interval: float = 0.2,
        lease_ttl: int = LEASE_TTL,
        claim_ttl: int = CLAIM_TTL,
    ) -> None:
        self.etcd = etcd
        self.replica = replica
        self.flush_interval = flush_interval
        self.lease_ttl, self.claim_ttl = lease_ttl, claim_ttl
        self.heartbeat_key = replicas_prefix(etcd.config.prefix) + urllib.parse.quote(replica, safe="").encode()
        # Who writes many streams' records at once, cheaper than `as_dict` each (the native
        # core): given the streams and the JSON tail every record ends with ("replica",
        # "updated"), each record's bytes, or None to build that one from `as_dict`.
        self.recorder: Callable[[list[BaseStream], bytes], list[bytes | None]] | None = None
        self._complete: bool | None = None  # what the heartbeat record says (None: not written under this lease)
        self._keeper: LeaseKeeper | None = None
        self.lapses = {"lease": 0, "claims": 0}
        self.prefix = fleet_prefix(etcd.config.prefix)
        self._streams: dict[int, BaseStream] = {}
        self._dirty: set[int] = set()
        self._gone: dict[int, bytes] = {}
        self._lease = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.flushes = 0
        self.nacks: list[dict[str, Any]] = []
        self.owners = owners_prefix(etcd.config.prefix)
        self._claims: dict[int, bytes] = {}  # stream id -> the claim value it holds in etcd
        self._node_streams: dict[str, set[int]] = {}  # node id -> its streams here (claim events find them)
        self._claimed_at: dict[int, int] = {}  # stream id -> the etcd revision its claim was written at
        self._unclaimed: set[int] = set()  # served provisionally: claim when etcd answers
        self._claim_queue: list[tuple[BaseStream, asyncio.Future[str | None]]] = []
        self._claimer: asyncio.Task[None] | None = None
        self._releases: dict[bytes, bytes] = {}  # owner key -> claim value to delete if still ours
        self._watcher: asyncio.Task[None] | None = None
        self._claim_lease = 0
        self._lease_lock = asyncio.Lock()
        self._refused_by: dict[int, str] = {}  # stream id -> the replica holding its node (refused)
        self._released: dict[bytes, asyncio.Event] = {}  # owner key -> set when its claim goes
        self._nack_log = NackLog()

    def key(self, s: BaseStream) -> bytes:
        return self.prefix + f"{urllib.parse.quote(s.node.id, safe='')}/{self.replica}.{s.id}".encode()

    def owner_key(self, node_id: str) -> bytes:
        return self.owners + urllib.parse.quote(node_id, safe="").encode()

    # -- claims: one stream per node id ------------------------------------------------------

    async def claim(self, stream: BaseStream) -> str | None:
        """Claim `stream`'s node id fleet-wide: None when it may be served (claimed, or
        provisionally while etcd is unreachable), else why it is refused."""
        refusal = await self._claim_once(stream)
        holder = self._refused_by.pop(stream.id, None)
        if refusal is None or holder in (None, self.replica):
            return refusal
        # Held by another replica: if that replica died, its claim lapses within CLAIM_TTL.
        # Wait for that once, rather than refusing an Envoy that reconnects because its replica
        # was killed (each refusal would grow its retry back-off); a live holder keeps it.
        key = self.owner_key(stream.node.id)
        released = self._released.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(released.wait(), self.claim_ttl + 1)
        except TimeoutError:
            return refusal
        finally:
            if self._released.get(key) is released:
                del self._released[key]
        refusal = await self._claim_once(stream)
        self._refused_by.pop(stream.id, None)
        return refusal

    async def _claim_once(self, stream: BaseStream) -> str | None:
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._claim_queue.append((stream, fut))
        if self._claimer is None or self._claimer.done():
            self._claimer = asyncio.create_task(self._claim_loop(), name="fleet-claims")
        return await fut

    async def _claim_loop(self) -> None:
        # Group commit: claims that arrive while a transaction is in flight go in the next one.
        while self._claim_queue:
            batch, self._claim_queue = self._claim_queue, []
            try:
                verdicts = await self._claim_batch([s for s, _ in batch])
            except StoreError as exc:
                log.warning("cannot claim %d node id(s) in etcd (%s); serving them provisionally", len(batch), exc)
                self._unclaimed |= {s.id for s, _ in batch}
                verdicts = [None] * len(batch)
            for (_, fut), verdict in zip(batch, verdicts, strict=True):
                if not fut.done():
                    fut.set_result(verdict)

    def _claim_value(self, s: BaseStream) -> bytes:
        ident = s.identity
        doc = {
            "replica": self.replica,
            "stream": s.id,
            "peer": s.node.peer,
            "since": s.connected_since,
            "identity": ident.name if ident is not None else None,
            "node_bound": bool(ident is not None and ident.node_bound),
        }
        return json.dumps(doc, sort_keys=True).encode()

    async def _claim_batch(self, streams: list[BaseStream]) -> list[str | None]:
        await self._claim_lease_now()
        streams_by_key = {self.owner_key(s.node.id): s for s in streams}  # one claim per node per txn
        values = {k: self._claim_value(s) for k, s in streams_by_key.items()}
        verdict: dict[bytes, str | None] = {}
        written: dict[bytes, int] = {}  # the etcd revision each claim was written at
        # Each key: create it if absent, else take it over at the revision read if the holder
        # may be replaced. A holder that went or changed between the read and the takeover
        # (an ended stream's release landing just then) is looked at again, a few times.
        expect = dict.fromkeys(streams_by_key, 0)  # key -> mod revision expected (0: absent)
        for _ in range(_CLAIM_ROUNDS):
            keys = list(expect)
            ops = [
                _cas(
                    rpc.Compare(key=k, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)
                    if not rev
                    else rpc.Compare(key=k, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=rev),
                    k,
                    _put(k, values[k], self._claim_lease),
                )
                for k, rev in expect.items()
            ]
            resp = await self.etcd.txn(rpc.TxnRequest(success=ops))
            expect = {}
            for k, r in zip(keys, resp.responses, strict=True):
                if r.response_txn.succeeded:
                    verdict[k] = None
                    written[k] = resp.header.revision
                    continue
                kvs = r.response_txn.responses[0].response_range.kvs
                if not kvs:  # released between compare and read: create it next round
                    expect[k] = 0
                    continue
                refusal = self._may_replace(streams_by_key[k], kvs[0].value)
                if refusal is None:
                    expect[k] = kvs[0].mod_revision
                else:
                    verdict[k] = refusal
            if not expect:
                break
        for k in expect:
            verdict[k] = "another stream claimed this node id at the same time"
        out: list[str | None] = []
        for s in streams:
            k = self.owner_key(s.node.id)
            if streams_by_key[k] is not s:
                out.append("a second stream for this node id arrived in the same instant")
                continue
            v = verdict[k]
            if v is None:
                self._claims[s.id] = values[k]
                self._claimed_at[s.id] = written[k]
                self._unclaimed.discard(s.id)
            out.append(v)
        return out

    def _may_replace(self, s: BaseStream, held: bytes) -> str | None:
        """None if `s` may take the node over from the holder recorded in `held`, else why not."""
        try:
            doc = json.loads(held)
        except ValueError:
            return None  # not a claim lbcp wrote: take it
        mine = doc.get("replica") == self.replica
        if mine and doc.get("stream") not in self._streams:
            return None  # our own, for a stream that has ended (its release not yet flushed)
        self._refused_by[s.id] = str(doc.get("replica"))
        ident = s.identity
        if ident is not None and ident.node_bound and doc.get("node_bound") and doc.get("identity") == ident.name:
            return None  # the same node-bound certificate identity: the honest reconnect
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(doc.get("since", 0)))
        return (
            f"node {s.node.id!r} already has a live xDS stream (replica {doc.get('replica')!r}, "
            f"from {doc.get('peer')!r}, since {since}); a second stream is refused unless it presents "
            "the same node-bound client certificate identity. A dead connection is closed by the "
            "server's keepalive, and the Envoy's next retry then gets in"
        )

    async def _reclaim(self) -> None:
        """Claim what was served provisionally (or lost with an expired lease)."""
        todo = [self._streams[i] for i in list(self._unclaimed) if i in self._streams]
        if not todo:
            self._unclaimed &= set(self._streams)
            return
        verdicts = await self._claim_batch(todo)
        for s, refusal in zip(todo, verdicts, strict=True):
            if refusal is not None:
                self._unclaimed.discard(s.id)
                s.evict(StreamRejected(grpc.StatusCode.ALREADY_EXISTS, refusal))
            else:
                self._mark(s)

    async def _watch_claims(self) -> None:
        """Close a local stream as soon as another replica's stream takes its node over."""
        revision = 0
        while True:
            try:
                if not revision:
                    # From now, after what holds now: takeovers missed while no watch was open
                    # (its history compacted away, or at start) are found in the claims themselves.
                    cur = await self.etcd.range(self.owners, prefix_end(self.owners))
                    held = {kv.key for kv in cur.kvs}
                    for kv in cur.kvs:
                        self._claim_changed(kv.key, kv.value, kv.mod_revision)
                    for key, event in list(self._released.items()):
                        if key not in held:
                            event.set()
                    revision = cur.header.revision + 1
                call = await self.etcd.watch(self.owners, prefix_end(self.owners), revision)
                try:
                    async for resp in call:
                        if resp.compact_revision or resp.canceled:
                            revision = 0  # etcd compacted the history this watch needed: read anew
                            break
                        if not resp.events and not resp.created:  # a progress notification
                            revision = max(revision, resp.header.revision + 1)
                        for ev in resp.events:
                            revision = max(revision, ev.kv.mod_revision + 1)
                            if ev.type == 0:  # PUT
                                self._claim_changed(ev.kv.key, ev.kv.value, ev.kv.mod_revision)
                            elif (released := self._released.get(ev.kv.key)) is not None:  # DELETE
                                released.set()
                finally:
                    call.cancel()
            except (StoreError, grpc.aio.AioRpcError) as exc:
                log.debug("claim watch interrupted (%s); resuming", exc)
            await asyncio.sleep(1.0)

    def _claim_changed(self, key: bytes, value: bytes, revision: int) -> None:
        # The streams of the claimed node only: a storm of N claims is N lookups, not N x N.
        node_id = urllib.parse.unquote(key[len(self.owners) :].decode(errors="replace"))
        for sid in list(self._node_streams.get(node_id, ())):
            held = self._claims.get(sid)
            s = self._streams.get(sid)
            if s is None or held is None or held == value:
                continue
            if revision <= self._claimed_at.get(sid, 0):
                continue  # an older claim the watch delivers late (the one this stream replaced)
            try:
                doc = json.loads(value)
            except ValueError:
                doc = {}
            del self._claims[sid]
            s.evict(
                StreamRejected(
                    grpc.StatusCode.ABORTED,
                    f"node {s.node.id!r} was taken over by a newer stream with the same identity "
                    f"(replica {doc.get('replica')!r}, from {doc.get('peer')!r})",
                )
            )

    # -- StreamObserver --------------------------------------------------------------------

    def connected(self, stream: BaseStream) -> None:
        self._streams[stream.id] = stream
        self._node_streams.setdefault(stream.node.id, set()).add(stream.id)
        self._mark(stream)

    def changed(self, stream: BaseStream) -> None:
        self._mark(stream)

    def disconnected(self, stream: BaseStream) -> None:
        self._streams.pop(stream.id, None)
        mine = self._node_streams.get(stream.node.id)
        if mine is not None:
            mine.discard(stream.id)
            if not mine:
                del self._node_streams[stream.node.id]
        self._dirty.discard(stream.id)
        self._unclaimed.discard(stream.id)
        held = self._claims.pop(stream.id, None)
        self._claimed_at.pop(stream.id, None)
        if held is not None:
            self._releases[self.owner_key(stream.node.id)] = held
        self._gone[stream.id] = self.key(stream)
        self._wake.set()

    def acked(self, stream: BaseStream, type_url: str, latency: float) -> None:
        # The record carries per-type acked versions and push counts: keep it current even
        # when the stream's overall acked revision does not move (e.g. it holds a NACKed
        # resource). Writes stay batched per flush interval, so this costs no extra txn.
        self._mark(stream)

    def nacked(self, stream: BaseStream, type_url: str, nack: Nack) -> None:
        self._nack_log.nacked(stream.node.id, stream.fleet, type_url, nack)
        self.nacks.append({"node_id": stream.node.id, "type_url": type_url, **nack.as_dict()})
        del self.nacks[:-100]
        self._mark(stream)

    def _mark(self, stream: BaseStream) -> None:
        self._dirty.add(stream.id)
        self._wake.set()

    # -- flushing --------------------------------------------------------------------------

    async def start(self) -> None:
        self._keeper = LeaseKeeper(self.etcd.config, self._lost)
        self._task = asyncio.create_task(self._run(), name="fleet-registry")
        self._watcher = asyncio.create_task(self._watch_claims(), name="fleet-claim-watch")

    async def stop(self) -> None:
        for task in (self._task, self._watcher, self._claimer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreError):
                    await asyncio.wait({task}, timeout=2)
        self._task = self._watcher = self._claimer = None
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.stop)
            self._keeper = None
        if self._claim_lease:
            # Revoking frees this replica's node ids at once: its Envoys move elsewhere freely.
            with contextlib.suppress(StoreError, TimeoutError):
                await asyncio.wait_for(self.etcd.lease_revoke(self._claim_lease), 2)
            self._claim_lease = 0
        if self._lease:
            # Revoking deletes this replica's records at once (instead of at lease expiry).
            try:
                await asyncio.wait_for(self.etcd.lease_revoke(self._lease), 2)
            except (StoreError, TimeoutError):
                pass
            self._lease = 0

    async def _ensure_lease(self) -> None:
        async with self._lease_lock:
            if self._lease:
                return
            self._lease = await self.etcd.lease_grant(self.lease_ttl)
            if self._keeper is not None:
                self._keeper.keep(self._lease, self.lease_ttl)
            self._complete = None  # the heartbeat record went with the old lease, if any
            self._dirty |= set(self._streams)

    async def _claim_lease_now(self) -> None:
        async with self._lease_lock:
            if not self._claim_lease:
                self._claim_lease = await self.etcd.lease_grant(self.claim_ttl)
                if self._keeper is not None:
                    self._keeper.keep(self._claim_lease, self.claim_ttl)

    def _lost(self, lease: int) -> None:
        """etcd let one of our leases lapse (etcd, or this whole process, stalled past its
        TTL: the keeper's thread renews them whatever the replica's loop is doing)."""
        if lease == self._lease:
            self.lapses["lease"] += 1
            log.warning("fleet registry lease expired; re-registering %d streams", len(self._streams))
            self._lease = 0
        elif lease == self._claim_lease:
            self.lapses["claims"] += 1
            log.warning("node-id claims expired (etcd or this replica stalled); claiming %d again", len(self._claims))
            self._claim_lease = 0
            self._unclaimed |= set(self._claims)
            self._claims.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.lease_ttl / 3)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if not self._lease:
                    await self._ensure_lease()
                if self._unclaimed:
                    await self._reclaim()
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
        # A claim is freed only if it is still the one this stream made (a takeover's is not).
        for key, held in self._releases.items():
            same = rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=held)
            ops.append(_cas(same, key, rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))))
        # Only a stream that holds its node's claim has a record (the live stream's, not a rival's).
        dirty = [self._streams[i] for i in self._dirty if i in self._streams and i in self._claims]
        now = time.time()
        tail = json.dumps({"replica": self.replica, "updated": now})[1:-1].encode()
        fast = self.recorder(dirty, tail) if self.recorder is not None else [None] * len(dirty)
        for s, raw in zip(dirty, fast, strict=True):
            if raw is None or len(raw) > _MAX_RECORD_BYTES:
                raw = self._record(s, now)
            ops.append(_put(self.key(s), raw, self._lease))
        # The heartbeat says whether every stream served is recorded, written when that changes:
        # readers keep the last good front door while a replica's records are incomplete.
        complete = not self._unclaimed and not (self._dirty - {s.id for s in dirty})
        if complete != self._complete:
            beat = {"replica": self.replica, "complete": complete, "streams": len(self._streams), "at": now}
            ops.append(_put(self.heartbeat_key, json.dumps(beat).encode(), self._lease))
        if not ops:
            return 0
        gone, self._gone = self._gone, {}
        releases, self._releases = self._releases, {}
        self._dirty -= {s.id for s in dirty}
        try:
            for i in range(0, len(ops), _MAX_OPS_PER_TXN):
                await self.etcd.txn(rpc.TxnRequest(success=ops[i : i + _MAX_OPS_PER_TXN]))
        except StoreError:
            self._gone.update(gone)
            self._releases.update(releases)
            self._dirty |= {s.id for s in dirty}
            raise
        self._complete = complete
        self.flushes += 1
        return len(ops)

    def _record(self, s: BaseStream, now: float) -> bytes:
        doc = {**s.as_dict(), "replica": self.replica, "updated": now}
        raw = json.dumps(doc).encode()
        if len(raw) <= _MAX_RECORD_BYTES:
            return raw
        # Every field is bounded where it enters (node, metadata, NACK messages, types); this
        # only guards against a future field that is not.
        log.warning("registry record of %s is %d bytes; writing it without NACK messages", s.node.id, len(raw))
        for st in doc.get("types", {}).values():
            if st.get("last_nack"):
                st["last_nack"]["message"] = "[lbcp: dropped, the record was over its size bound]"
        doc["truncated"] = True
        raw = json.dumps(doc).encode()
        if len(raw) > _MAX_RECORD_BYTES:
            keep = ("node_id", "fleet", "peer", "protocol", "connected_since", "acked_revision", "replica", "updated")
            raw = json.dumps({k: doc[k] for k in keep if k in doc} | {"truncated": True}).encode()
        return raw


# -- reading (admin API) ---------------------------------------------------------------------


@dataclass
class FleetView:
    nodes: dict[str, dict[str, Any]]  # node id -> newest stream record (+ "draining", "drain")
    revision: int
    drained: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> drain record, connected or not
    # fleet -> its Fleet object's min_in_service, for the fleets that have an object
    floors: dict[str, int] = field(default_factory=dict)
    # replica id -> its heartbeat record ({"complete": bool, ...}), for the replicas whose lease lives
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)


async def read_fleet(etcd: Etcd) -> FleetView:
    """Every connected node's newest stream record, every drain and every fleet's floor, at
    one etcd revision."""
    prefix = fleet_prefix(etcd.config.prefix)
    keys = Keyspace(etcd.config.prefix)
    drains, fleets, beats = keys.drains, keys.folder(Kind.FLEET), replicas_prefix(etcd.config.prefix)
    resp = await etcd.txn(
        rpc.TxnRequest(
            success=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=k, range_end=prefix_end(k)))
                for k in (prefix, drains, fleets, beats)
            ]
        ),
        read_only=True,
    )
    registry, drain_kvs, fleet_kvs, beat_kvs = (r.response_range.kvs for r in resp.responses)
    drained: dict[str, dict[str, Any]] = {}
    for kv in drain_kvs:
        drained[urllib.parse.unquote(kv.key[len(drains) :].decode())] = drain_record(kv.value, kv.mod_revision)
    docs = []
    for kv in registry:
        try:
            docs.append(json.loads(kv.value))
        except ValueError:
            continue
    view = fleet_view(docs, drained, resp.header.revision)
    for kv in fleet_kvs:
        name, floor = fleet_floor(kv.key[len(fleets) :], kv.value)
        if floor is not None:
            view.floors[name] = floor
    for kv in beat_kvs:
        with contextlib.suppress(ValueError):
            beat = json.loads(kv.value)
            if isinstance(beat, dict):
                view.replicas[urllib.parse.unquote(kv.key[len(beats) :].decode())] = beat
    return view


def fleet_floor(name: bytes, value: bytes | None) -> tuple[str, int | None]:
    """A Fleet object's name and `min_in_service` (None when deleted or unreadable: the
    default floor applies). Read raw: the registry's readers need one field, not the model."""
    try:
        floor = json.loads(value or b"null")["spec"].get("min_in_service", DEFAULT_MIN_IN_SERVICE)
    except (ValueError, TypeError, KeyError, AttributeError):
        return name.decode(errors="replace"), None
    return name.decode(errors="replace"), floor if isinstance(floor, int) else None


def drain_record(value: bytes, mod_revision: int) -> dict[str, Any]:
    """A drain key's value as readers show it: the operator's record plus its revision."""
    try:
        record = json.loads(value)
    except ValueError:
        record = {}
    return {**(record if isinstance(record, dict) else {}), "revision": mod_revision}


def fleet_view(docs: list[dict[str, Any]], drained: dict[str, dict[str, Any]], revision: int) -> FleetView:
    """Registry records (any number of streams per node) and drains as one FleetView: each
    node's newest stream (by `connected_since`) with its stream count and drain state."""
    nodes: dict[str, dict[str, Any]] = {}
    for raw in docs:
        doc = dict(raw)
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
    return FleetView(nodes, revision, drained)


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
