"""A watch-fed, in-memory copy of all intent at a known etcd revision.

Contract: after `start()`, `ready` is set once the first full load is in; from then on
`revision` only grows and the maps are exactly etcd's intent at `revision`. Subscribers
are called (synchronously, in the event loop) with `(revision, changed_refs)` after each
applied batch of events; a resync (after compaction or a long outage) reports every ref
whose stored revision differs, so a subscriber never misses a delete.

When etcd is unreachable the view keeps its last state and retries with back-off; it
resumes the watch at `revision + 1`, and reloads in full if that revision was compacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc

from controlplane.etcd import Etcd, prefix_end
from controlplane.intent.errors import StoreError
from controlplane.intent.keyspace import Keyspace, Ref, Stored
from controlplane.intent.model import Backend, Certificate, Cluster, Fleet, Kind, Listener, Route
from controlplane.intent.watchpump import WatchPump

log = logging.getLogger(__name__)

Subscriber = Callable[[int, set[Ref]], None]
_PAGE = 10_000


class IntentView:
    """All clusters, backends, listeners and routes, kept current by one etcd watch."""

    def __init__(self, etcd: Etcd, keyspace: Keyspace | None = None) -> None:
        self.etcd = etcd
        self.keys = keyspace or Keyspace(etcd.config.prefix)
        # Intent folders sort as backends/ < certificates/ < clusters/ < drains/ < fleets/ < listeners/ <
        # routes/ < shares/ < sheds/; runtime state (fleet registry) lives under `_runtime/`, outside this
        # range, so it is not watched here.
        self._start = self.keys.root + b"backends/"
        self._end = prefix_end(self.keys.root + b"sheds/")
        self.revision = 0
        self.clusters: dict[str, Stored[Cluster]] = {}
        self.backends: dict[str, dict[str, Stored[Backend]]] = {}
        self.listeners: dict[str, Stored[Listener]] = {}
        self.routes: dict[str, Stored[Route]] = {}
        self.certificates: dict[str, Stored[Certificate]] = {}
        self.fleets: dict[str, Stored[Fleet]] = {}
        # Drained Envoys: node id -> the drain record (JSON: reason, since).
        self.drained: dict[str, dict[str, Any]] = {}
        # Envoys asked to let go of shards of their connections: node id -> generation per shard.
        self.shed: dict[str, tuple[int, ...]] = {}
        # Each fleet's division of its `scope: fleet` rate limits: fleet -> node id -> share.
        self.shares: dict[str, dict[str, float]] = {}
        self.ready = asyncio.Event()
        self.connected = False
        self.loads = 0
        self._subscribers: list[Subscriber] = []
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._pending_revision = 0
        self._pending_changed: set[Ref] = set()
        self._backoff = 0.1

    # -- public ----------------------------------------------------------------------------

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="intent-view")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the view has caught up with `revision`; False on timeout."""

        async def _wait() -> None:
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.revision >= revision)

        try:
            await asyncio.wait_for(_wait(), timeout)
            return True
        except TimeoutError:
            return False

    def get(self, ref: Ref) -> Stored[Any] | None:
        if ref.kind == Kind.BACKEND:
            return self.backends.get(ref.cluster or "", {}).get(ref.name)
        return self._table(ref.kind).get(ref.name)

    def backend_count(self) -> int:
        return sum(len(b) for b in self.backends.values())

    # -- internals -------------------------------------------------------------------------

    def _table(self, kind: Kind) -> dict[str, Stored[Any]]:
        tables: dict[Kind, dict[str, Stored[Any]]] = {
            Kind.CLUSTER: self.clusters,
            Kind.LISTENER: self.listeners,
            Kind.ROUTE: self.routes,
            Kind.CERTIFICATE: self.certificates,
            Kind.FLEET: self.fleets,
        }
        return tables[kind]

    def _set(self, ref: Ref, stored: Stored[Any] | None) -> None:
        if ref.kind == Kind.BACKEND:
            members = self.backends.setdefault(ref.cluster or "", {})
            if stored is None:
                members.pop(ref.name, None)
                if not members:
                    self.backends.pop(ref.cluster or "", None)
            else:
                members[ref.name] = stored
        elif stored is None:
            self._table(ref.kind).pop(ref.name, None)
        else:
            self._table(ref.kind)[ref.name] = stored

    def _set_drain(self, key: bytes, value: bytes | None) -> None:
        """A drain, shed or shares record (state that is not one of the intent kinds) changed."""
        shed = self.keys.shed_node(key)
        if shed is not None:
            self._set_shed(shed, value)
            return
        fleet = self.keys.shares_fleet(key)
        if fleet is not None:
            self._set_shares(fleet, value)
            return
        node = self.keys.drained_node(key)
        if node is None:
            return
        if value is None:
            self.drained.pop(node, None)
            return
        try:
            self.drained[node] = json.loads(value)
        except ValueError:
            self.drained[node] = {}  # still drained: the key's presence is what counts

    def _set_shares(self, fleet: str, value: bytes | None) -> None:
        if value is None:
            self.shares.pop(fleet, None)
            return
        try:
            self.shares[fleet] = {str(n): min(1.0, max(0.0, float(v))) for n, v in json.loads(value)["shares"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            log.error("ignoring an undecodable shares record for fleet %r", fleet)

    def _set_shed(self, node: str, value: bytes | None) -> None:
        if value is None:
            self.shed.pop(node, None)
            return
        try:
            gens = json.loads(value)["generations"]
            self.shed[node] = tuple(int(g) for g in gens)
        except (ValueError, KeyError, TypeError):
            log.error("ignoring an undecodable shed record for node %r", node)

    def _decode(self, ref: Ref, kv: Any) -> Stored[Any] | None:
        try:
            return Stored(self.keys.decode(ref.kind, kv.value), kv.mod_revision, kv.create_revision)
        except Exception as exc:  # one bad value must not stop the fleet's config
            # A validation message may quote the value: for a certificate, that is its key.
            why = type(exc).__name__ if ref.kind == Kind.CERTIFICATE else exc
            log.error("ignoring undecodable value at %s: %s", kv.key.decode(errors="replace"), why)
            return None

    def _all_refs(self) -> dict[Ref, int]:
        out: dict[Ref, int] = {}
        for kind in (Kind.CLUSTER, Kind.LISTENER, Kind.ROUTE, Kind.CERTIFICATE, Kind.FLEET):
            for name, s in self._table(kind).items():
                out[Ref(kind, name)] = s.mod_revision
        for cluster, members in self.backends.items():
            for name, s in members.items():
                out[Ref(Kind.BACKEND, name, cluster)] = s.mod_revision
        return out

    async def load_once(self) -> None:
        """Read all intent at one revision, with no watch after it: for a one-off reader
        (`start()` reads and then follows)."""
        await self._load()

    async def _load(self) -> None:
        """Read all intent at one revision and replace the view's state with it."""
        first = await self.etcd.range(self._start, self._end, limit=_PAGE)
        revision = first.header.revision
        kvs = list(first.kvs)
        more = first.more
        while more:
            page = await self.etcd.range(kvs[-1].key + b"\0", self._end, revision=revision, limit=_PAGE)
            kvs.extend(page.kvs)
            more = page.more
        before = self._all_refs()
        self.clusters, self.backends, self.listeners, self.routes, self.certificates = {}, {}, {}, {}, {}
        self.drained, self.shed, self.shares = {}, {}, {}
        for kv in kvs:
            ref = self.keys.ref(kv.key)
            if ref is None:
                self._set_drain(kv.key, kv.value)
            else:
                stored = self._decode(ref, kv)
                if stored is not None:
                    self._set(ref, stored)
        after = self._all_refs()
        changed = {r for r in before.keys() | after.keys() if before.get(r) != after.get(r)}
        await self._advance(revision, changed)

    async def _advance(self, revision: int, changed: set[Ref]) -> None:
        if revision > self.revision or changed:
            self.revision = max(self.revision, revision)
            for fn in self._subscribers:
                try:
                    fn(self.revision, changed)
                except Exception:
                    log.exception("intent view subscriber failed")
        self.ready.set()
        async with self._advanced:
            self._advanced.notify_all()

    def _apply_batch(self, items: list[Any]) -> bool:
        """Apply every watch response received so far; True if a full reload is needed.
        Raises the error that ended the watch, after applying what came before it."""
        for resp in items:
            if isinstance(resp, BaseException):
                raise resp
            self.connected = True
            self._backoff = 0.1
            if resp.compact_revision:
                log.warning("watch start %d compacted (at %d): reloading", self.revision + 1, resp.compact_revision)
                return True
            if resp.canceled:
                log.warning("watch canceled by etcd: %s", resp.cancel_reason)
                return True
            if resp.created:
                # Its header carries etcd's current revision, not what was delivered.
                continue
            if not resp.events:
                # etcd's periodic progress notification, sent to synced watchers only: every
                # event up to header.revision is in. (lbcp does not send progress *requests*:
                # etcd 3.4 answers them with its current revision even while events are
                # still queued for this watcher.)
                self._pending_revision = max(self._pending_revision, resp.header.revision)
                continue
            for ev in resp.events:
                ref = self.keys.ref(ev.kv.key)
                if ref is None:
                    self._set_drain(ev.kv.key, ev.kv.value if ev.type == 0 else None)
                    continue
                self._pending_changed.add(ref)
                # PUT = 0, DELETE = 1
                self._set(ref, self._decode(ref, ev.kv) if ev.type == 0 else None)
            # While a watcher catches up, etcd may send a batch whose header revision is
            # ahead of its last event; only the events themselves say how far we are.
            self._pending_revision = max(self._pending_revision, max(ev.kv.mod_revision for ev in resp.events))
        return False

    async def _flush_batch(self) -> None:
        """Tell subscribers once about everything the last batch applied."""
        revision, changed = self._pending_revision, self._pending_changed
        self._pending_revision, self._pending_changed = 0, set()
        if revision or changed:
            await self._advance(max(revision, self.revision), changed)

    async def _run(self) -> None:
        # A view restarted after stop() resumes its watch; only a compacted revision reloads.
        need_load = not self.ready.is_set()
        while True:
            pump = None
            try:
                if need_load:
                    await self._load()
                    self.loads += 1
                    need_load = False
                pump = WatchPump(self.etcd.config, self._start, self._end, self.revision + 1)
                while not need_load:
                    await pump.wait()
                    try:
                        need_load = self._apply_batch(pump.drain())
                    finally:
                        await self._flush_batch()  # what was applied before an error, too
            except (StoreError, grpc.aio.AioRpcError) as exc:
                self.connected = False
                log.warning("intent watch interrupted (%s); retrying in %.1fs", exc, self._backoff)
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 2.0)
            finally:
                if pump is not None:
                    await asyncio.shield(asyncio.to_thread(pump.stop))
