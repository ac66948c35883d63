"""The seam between the policy (Python) and the native xDS core (Rust, `controlplane._native`).

Python keeps deciding what every node gets: the snapshot cache builds each fleet's resources
once, admission, identity and the fleet-wide node-id claims run here, and the registry,
metrics, prober and sampler observe streams through the same `StreamObserver` protocol as
ever. The core owns the sockets and the whole per-stream protocol. The boundary is crossed:

- once per publish and fleet (`Core.publish`: the entries that changed since the last
  publish, by the tables' own change records), plus a stream's own entries when its inputs
  change (`Core.set_overlay`: its health gate, its listeners' public-address or shed
  variants, its share of fleet rate limits): the one seam where per-node policy lives;
- once per batch of events (`Core.events`, drained when the core's eventfd is readable):
  streams opening (admitted here, once per stream), closing, NACKs, subscriptions to watched
  types (hash rings, health gates), and which streams ACKed or synced since the last batch;
- once per stream for admission and, when a record is written, to read its protocol state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.core.v3 import base_pb2
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from controlplane._native import Core, latency_buckets
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.identity import IdentityError, IdentityRule
from controlplane.xds.resources import (
    ENDPOINT_TYPE,
    GATE_PREFIX,
    HASH_RING_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SHORT_NAMES,
    TYPE_ORDER,
)
from controlplane.xds.server.admission import KEEPALIVE_SECONDS, Admission, NodeClaims, ServerLimits
from controlplane.xds.server.common import (
    BaseStream,
    Nack,
    NodeInfo,
    QuietObserver,
    StreamObserver,
    StreamRejected,
    TypeState,
)
from controlplane.xds.snapshot import Entry, Snapshot, Table

if TYPE_CHECKING:
    from controlplane._native import EntryRow, TypeChange

log = logging.getLogger(__name__)

# Subscriptions the core reports (type -> name prefix): hash rings are built on demand for
# the clusters someone subscribed to, and a stream's health gate is its own entry.
_WATCHED = {HASH_RING_TYPE: "", ENDPOINT_TYPE: GATE_PREFIX}


def _row(e: Entry) -> EntryRow:
    return (e.name, e.version, e.mix, e.sotw_chunk, e.delta_chunk)


def _code(code: grpc.StatusCode) -> int:
    value: tuple[int, str] = code.value
    return value[0]


_CODES = {_code(c): c for c in grpc.StatusCode}


def _acked_types(mask: int) -> Iterator[str]:
    for i, t in enumerate(TYPE_ORDER):
        if mask & (1 << i):
            yield t
    if mask & (1 << 31):
        yield HASH_RING_TYPE


class NativeStream(BaseStream):
    """A stream the core serves, as the observers see it: node, identity, what the registry
    and pollers attach (front, load), and its protocol state read from the core."""

    def __init__(self, core: Core, sid: int, protocol: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.id = sid
        self.protocol = protocol
        self._core = core
        self.closed = False
        # What this stream's own entries were last built from, per type (the core holds them).
        self._own_versions: dict[str, dict[str, str]] = {}
        # The record's facts as JSON, and the objects they were made from (the pollers
        # replace front, load and health with new objects when they change).
        self._facts: tuple[tuple[object, ...], bytes] | None = None

    @property
    def types(self) -> dict[str, TypeState]:
        """Its per-type protocol state, read from the core (for records and tests)."""
        state = self._core.stream_states([self.id])[0]
        out: dict[str, TypeState] = {}
        for t, d in (state or {}).get("types", {}).items():
            nack = d.get("last_nack")
            out[t] = TypeState(
                requested=d["requested"],
                wildcard=d["wildcard"],
                sent_version=d["sent_version"],
                acked_version=d["acked_version"],
                in_flight=d["in_flight"],
                pushes=d["pushes"],
                bytes_sent=d["bytes_sent"],
                nack=Nack(**nack) if nack else None,
            )
        return out

    @types.setter
    def types(self, value: dict[str, TypeState]) -> None:
        pass  # BaseStream's own table: the core keeps the state

    def facts_json(self) -> bytes:
        """The record's facts as the inside of a JSON object, made again only when they
        changed (the pollers replace front, load and health with new objects)."""
        key = (self.front, self.load, self.load_error, self.front_health, self.identity)
        if self._facts is None or any(a is not b for a, b in zip(key, self._facts[0], strict=True)):
            self._facts = (key, json.dumps(self.facts())[1:-1].encode())
        return self._facts[1]

    def evict(self, reason: StreamRejected) -> None:
        self.evicted = reason
        self._core.evict(self.id, _code(reason.code), reason.message)

    def set_own(self, type_url: str, entries: Mapping[str, Entry]) -> None:
        """Give the core this stream's own entries of `type_url` if they changed."""
        versions = {n: e.version for n, e in entries.items()}
        if self._own_versions.get(type_url, {}) != versions:
            self._own_versions[type_url] = versions
            self._core.set_overlay(self.id, type_url, [_row(e) for e in entries.values()])

    def refresh_own(self, snap: Snapshot) -> None:
        """Its health gate, listener variants and route variants as of `snap`."""
        for type_url in (ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE):
            self.set_own(type_url, self.own_entries(snap, type_url))


class NativeService(Admission):
    """The xDS service on the native core: what `XdsService` is on grpc.aio."""

    def __init__(
        self,
        cache: SnapshotCache,
        observers: list[StreamObserver] | None = None,
        limits: ServerLimits | None = None,
        *,
        claims: NodeClaims | None = None,
        identity: IdentityRule | None = None,
    ) -> None:
        self.cache = cache
        self.observers = observers or []
        self.limits = limits or ServerLimits()
        self.identity = identity
        Admission.__init__(self, self.limits, claims)
        self.core: Core | None = None
        self._opening: dict[int, NativeStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # fleet -> the tables last published to the core (type -> table)
        self._published: dict[str, dict[str, Mapping[str, Entry]]] = {}
        # fleet -> what its streams' own entries were last built from
        self._own_inputs: dict[str, tuple[object, ...]] = {}
        cache.add_watcher(self._publish_all)

    def start(
        self,
        host: str,
        port: int,
        *,
        tls: tuple[bytes, bytes, bytes | None] | None = None,
        reuse_port: bool = False,
        max_connection_age: float = 1800.0,
    ) -> int:
        """Bind and serve; returns the port."""
        b = self.limits.bounds
        self.core = Core(
            host,
            port,
            tls=tls,
            reuse_port=reuse_port,
            max_streams=self.limits.max_streams,
            max_request_bytes=self.limits.max_request_bytes,
            write_timeout=self.limits.write_timeout,
            ack_timeout=self.limits.ack_timeout,
            warming_hold=self.limits.warming_hold,
            max_connection_age=max_connection_age,
            keepalive=KEEPALIVE_SECONDS,
            max_names_per_type=b.max_names_per_type,
            max_types=b.max_types,
            max_nack_message=b.max_nack_message,
            watched=_WATCHED,
            short_names=SHORT_NAMES,
        )
        asyncio.get_running_loop().add_reader(self.core.event_fd, self._drain)
        if self.cache.ready:
            self._publish_all()
        return self.core.port

    async def stop(self, grace: float = 1.0) -> None:
        core, self.core = self.core, None
        if core is None:
            return
        asyncio.get_running_loop().remove_reader(core.event_fd)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.to_thread(core.stop, grace)
        for s in list(self.streams.values()):
            if isinstance(s, NativeStream):
                self._closed(s)

    # -- publishing --------------------------------------------------------------------------

    def _publish_all(self) -> None:
        if self.core is None:
            return
        for fleet in list(self._published):
            self._publish(fleet)

    def _publish(self, fleet: str) -> None:
        assert self.core is not None
        snap = self.cache.snapshot(fleet)
        last = self._published.setdefault(fleet, {})
        changes: list[TypeChange] = []
        for type_url, table in snap.resources.items():
            prev = last.get(type_url)
            pending = snap.pending.get(type_url)
            pending_names = list(pending) if isinstance(pending, Iterable) else None
            if table is prev and pending_names is None:
                continue
            names = table.changed_since(prev) if isinstance(table, Table) and prev is not None else None
            if names is None:
                changes.append((type_url, True, [_row(e) for e in table.values()], [], pending_names))
            else:
                rows, removed = [], []
                for n in names:
                    e = table.get(n)
                    if e is None:
                        removed.append(n)
                    else:
                        rows.append(_row(e))
                changes.append((type_url, False, rows, removed, pending_names))
            last[type_url] = table
        self.core.publish(fleet, snap.revision, changes)
        inputs = (snap.drained, snap.listener_bases, snap.sheds, snap.route_bases, snap.shares.get(fleet))
        before = self._own_inputs.get(fleet)
        if before is None or any(a is not b and a != b for a, b in zip(inputs, before, strict=True)):
            self._own_inputs[fleet] = inputs
            for s in self.streams.values():
                if isinstance(s, NativeStream) and s.fleet == fleet:
                    s.refresh_own(snap)

    def records(self, streams: list[BaseStream], tail: bytes) -> list[bytes | None]:
        """The registry records of `streams` (one call into the core for all of them): each
        stream's facts joined with its protocol state, which the core writes as JSON."""
        if self.core is None:
            return [None] * len(streams)
        protocol = self.core.records([s.id for s in streams])
        out: list[bytes | None] = []
        for s, p in zip(streams, protocol, strict=True):
            if p is None or not isinstance(s, NativeStream):
                out.append(None)
            else:
                out.append(b"{" + s.facts_json() + b"," + p + b"," + tail + b"}")
        return out

    # -- events ------------------------------------------------------------------------------

    def _drain(self) -> None:
        core = self.core
        if core is None:
            return
        events, changed = core.events()
        for ev in events:
            try:
                self._event(ev)
            except Exception:
                log.exception("native xDS event %r failed", ev[:2])
        # Once per stream that ACKed or synced since the last batch: only the observers that
        # do something with it are called (a fleet's worth of no-op calls is not free).
        on_acked, on_changed = self._listening("acked"), self._listening("changed")
        streams = self.streams
        for sid, revision, _at, acked in changed:
            s = streams.get(sid)
            if s is None:
                continue
            if on_acked:
                for t in _acked_types(acked):
                    for fn in on_acked:
                        fn(s, t, 0.0)
            if revision and revision != s.acked_revision:
                s.acked_revision = revision
                for cb in on_changed:
                    cb(s)

    def _listening(self, event: str) -> list[Any]:
        """The observers' handlers of `event` that are not QuietObserver's no-op."""
        quiet = getattr(QuietObserver, event)
        return [getattr(o, event) for o in self.observers if getattr(type(o), event, None) is not quiet]

    def _event(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "open":
            task = asyncio.create_task(self._open(*ev[1:]), name=f"xds-admit-{ev[1]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "close":
            sid, code, message = ev[1:]
            s = self.streams.get(sid) or self._opening.get(sid)
            if isinstance(s, NativeStream):
                s.closed = True
                if code and s.evicted is None:
                    log.info("stream %d (%s) ended: %s %s", sid, s.node.id, _CODES.get(code, code), message)
                if sid in self.streams:
                    self._closed(s)
        elif kind == "nack":
            sid, type_url, version, message, at, revision = ev[1:]
            s = self.streams.get(sid)
            if s is not None:
                nack = Nack(version, message, at, revision)
                for o in self.observers:
                    o.nacked(s, type_url, nack)
        elif kind == "names":
            sid, type_url, names, wildcard = ev[1:]
            s = self.streams.get(sid)
            if not isinstance(s, NativeStream) or self.core is None:
                return
            if type_url == HASH_RING_TYPE:
                # Rings are built for the clusters someone subscribed to: the names queued
                # now are published as being built, so the stream waits for them.
                self.cache.set_ring_interest(sid, set(names) | ({"*"} if wildcard else set()))
                self._publish(s.fleet)
            elif type_url == ENDPOINT_TYPE:
                s.gate = names[0] if names else None
                s.refresh_own(self.cache.snapshot(s.fleet))
            self.core.settle(sid, type_url)
        elif kind == "want":
            if self.cache.ready and self.core is not None:
                self._publish(ev[1])

    async def _open(
        self, sid: int, protocol: str, only_type: str | None, node_bytes: bytes, peer: str, cert: bytes | None
    ) -> None:
        core = self.core
        assert core is not None
        s: NativeStream | None = None
        try:
            await self.cache.wait_ready()
            node = NodeInfo.from_proto(base_pb2.Node.FromString(node_bytes), peer, self.limits.bounds)
            denied = self._admitted(node)
            if denied:
                code = grpc.StatusCode.PERMISSION_DENIED if node.id else grpc.StatusCode.INVALID_ARGUMENT
                raise StreamRejected(code, denied)
            identity = None
            if self.identity is not None:
                pem = ssl.DER_cert_to_PEM_cert(cert).encode() if cert else None
                try:
                    identity = self.identity.check(pem, node.id, node.fleet)
                except IdentityError as exc:
                    raise StreamRejected(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
            s = NativeStream(core, sid, protocol, node, only_type, self.observers, self.limits.bounds, identity)
            self._opening[sid] = s
            refusal = await self._claim(s)
            if refusal is not None:
                raise StreamRejected(grpc.StatusCode.ALREADY_EXISTS, refusal)
            if node.fleet not in self._published:
                self._publish(node.fleet)
            # Its own entries before its first response: listeners that bind its public
            # address, its shed shards, its share of fleet rate limits.
            s.refresh_own(self.cache.snapshot(node.fleet))
            self.streams[sid] = s
            for o in self.observers:
                o.connected(s)
            if s.closed:  # it went away while being admitted
                self._closed(s)
                return
            core.admit([(sid, 0, "")])
        except StreamRejected as exc:
            if self.core is not None:
                core.admit([(sid, _code(exc.code), exc.message)])
        except Exception:
            log.exception("admitting stream %d failed", sid)
            if self.core is not None:
                core.admit([(sid, _code(grpc.StatusCode.INTERNAL), "this xDS replica failed to admit the stream")])
        finally:
            self._opening.pop(sid, None)

    def _closed(self, s: NativeStream) -> None:
        self.streams.pop(s.id, None)
        if self.by_node.get(s.node.id) is s:
            del self.by_node[s.node.id]
        self.cache.set_ring_interest(s.id, set())
        for o in self.observers:
            o.disconnected(s)


class CoreCollector:
    """The core's per-type counters under lbcp's metric names, read at scrape time."""

    def __init__(self, service: NativeService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        pushes = CounterMetricFamily("lbcp_xds_pushes", "xDS responses sent", labels=["type"])
        nbytes = CounterMetricFamily("lbcp_xds_push_bytes", "bytes of xDS responses sent", labels=["type"])
        resources = CounterMetricFamily("lbcp_xds_pushed_resources", "resources in xDS responses sent", labels=["type"])
        acks = HistogramMetricFamily("lbcp_xds_ack_seconds", "from writing a response to its ACK", labels=["type"])
        queue = HistogramMetricFamily(
            "lbcp_xds_push_queue_seconds",
            "snapshot published → its response written to a stream (per type)",
            labels=["type"],
        )
        core = self.service.core
        bounds = [str(b) for b in latency_buckets()] + ["+Inf"]
        for type_url, n, b, r, (ack_counts, ack_sum), (q_counts, q_sum) in core.metrics() if core else []:
            t = SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])
            pushes.add_metric([t], n)
            nbytes.add_metric([t], b)
            resources.add_metric([t], r)
            acks.add_metric([t], list(zip(bounds, map(float, ack_counts), strict=True)), ack_sum)
            queue.add_metric([t], list(zip(bounds, map(float, q_counts), strict=True)), q_sum)
        yield from (pushes, nbytes, resources, acks, queue)
