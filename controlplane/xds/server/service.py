"""The gRPC side: ADS (SotW and delta) and the per-type CDS/EDS/LDS/RDS services.

Responses are written as pre-encoded bytes (generic handlers with an identity serializer),
so the protobuf work is done once per resource version in the snapshot, not per stream.
Each stream runs one reader task (requests update its state) and one writer loop (woken by
requests or by a new snapshot); a client that stops reading blocks only its own writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.cache import SnapshotCache
from controlplane.xds.identity import IdentityError, IdentityRule
from controlplane.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, HASH_RING_TYPE, LISTENER_TYPE, ROUTE_TYPE
from controlplane.xds.server.admission import KEEPALIVE_SECONDS, Admission, NodeClaims, ServerLimits
from controlplane.xds.server.common import BaseStream, NodeInfo, StreamObserver, StreamRejected
from controlplane.xds.server.delta import DeltaStream
from controlplane.xds.server.sotw import SotwStream
from controlplane.xds.snapshot import ld, set_version

log = logging.getLogger(__name__)

SLOW_WRITE = 0.5  # seconds a write may block before its stream stops holding back publishes

_SERVICES = {
    "envoy.service.cluster.v3.ClusterDiscoveryService": ("Clusters", CLUSTER_TYPE),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": ("Endpoints", ENDPOINT_TYPE),
    "envoy.service.listener.v3.ListenerDiscoveryService": ("Listeners", LISTENER_TYPE),
    "envoy.service.route.v3.RouteDiscoveryService": ("Routes", ROUTE_TYPE),
}

# A stream-stream handler: the request iterator and the servicer context (requests are envoy protos).
Handler = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


class XdsService(Admission):
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
        # Streams that have not yet taken the latest published snapshot (adaptive coalescing).
        self._behind: set[int] = set()
        cache.add_watcher(self._published)
        cache.fanout_busy = lambda: bool(self._behind)
        self.observers = observers or []
        self.limits = limits or ServerLimits()
        self.identity = identity  # with mTLS: the rule binding node ids to client certificates
        Admission.__init__(self, self.limits, claims)
        self._ticker: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        # One timer for every stream, instead of a timeout around each stream's every wait:
        # often enough to find a response left unanswered for `ack_timeout`.
        while self.streams:
            await asyncio.sleep(self.limits.ack_timeout / 4)
            for s in list(self.streams.values()):
                s.ticked = True
                s.wake.set()

    # -- handlers --------------------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        sotw_req = discovery_pb2.DiscoveryRequest.FromString
        delta_req = discovery_pb2.DeltaDiscoveryRequest.FromString

        def stream(cls: type[BaseStream], only_type: str | None) -> Handler:
            async def handler(
                request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> None:
                await self._serve(request_iterator, context, cls, only_type)

            return handler

        out = [
            grpc.method_handlers_generic_handler(
                "envoy.service.discovery.v3.AggregatedDiscoveryService",
                {
                    "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                        stream(SotwStream, None), sotw_req, None
                    ),
                    "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                        stream(DeltaStream, None), delta_req, None
                    ),
                },
            )
        ]
        for service, (suffix, type_url) in _SERVICES.items():
            out.append(
                grpc.method_handlers_generic_handler(
                    service,
                    {
                        f"Stream{suffix}": grpc.stream_stream_rpc_method_handler(
                            stream(SotwStream, type_url), sotw_req, None
                        ),
                        f"Delta{suffix}": grpc.stream_stream_rpc_method_handler(
                            stream(DeltaStream, type_url), delta_req, None
                        ),
                        f"Fetch{suffix}": grpc.unary_unary_rpc_method_handler(self._fetch(type_url), sotw_req, None),
                    },
                )
            )
        return out

    def _fetch(self, type_url: str) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        async def fetch(req: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            await self.cache.wait_ready()
            snap = self.cache.snapshot(req.node.cluster)
            entries = snap.of(type_url)
            names = sorted(entries) if not req.resource_names else sorted(n for n in req.resource_names if n in entries)
            version = set_version(entries, names)
            if req.version_info == version:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "not modified"
                )  # what Envoy's REST fetch treats as 304
            return ld(1, version.encode()) + b"".join(entries[n].sotw_chunk for n in names) + ld(4, type_url.encode())

        return fetch

    async def _serve(
        self,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        cls: type[BaseStream],
        only_type: str | None,
    ) -> None:
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        try:
            node = NodeInfo.from_proto(first.node, context.peer(), self.limits.bounds)
        except StreamRejected as exc:
            await context.abort(exc.code, exc.message)
        denied = self._admitted(node)
        if denied:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED if node.id else grpc.StatusCode.INVALID_ARGUMENT, denied
            )
        identity = None
        if self.identity is not None:
            try:
                identity = self.identity.check(_peer_certificate(context), node.id, node.fleet)
            except IdentityError as exc:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if len(self.streams) >= self.limits.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this xDS replica is at its limit of {self.limits.max_streams} streams; connect to another replica",
            )
        if only_type is not None and first.type_url not in ("", only_type):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"this service serves {only_type} only")
        s = cls(node, only_type, self.observers, self.limits.bounds, identity)
        refusal = await self._claim(s)
        if refusal is not None:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, refusal)
        self.streams[s.id] = s
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="xds-stream-ticker")
        closed = asyncio.Event()
        wake = s.wake.set
        self.cache.add_watcher(wake)
        for o in self.observers:
            o.connected(s)

        async def read() -> None:
            try:
                await self.cache.wait_ready()
                s.on_request(first, self.cache.snapshot(node.fleet))
                self._ring_interest(s)
                async for req in request_iterator:
                    if only_type is not None and req.type_url not in ("", only_type):
                        continue
                    s.on_request(req, self.cache.snapshot(node.fleet))
                    self._ring_interest(s)
            except StreamRejected as exc:
                log.warning("stream %d (%s): %s", s.id, node.id, exc.message)
                s.evict(exc)
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            finally:
                closed.set()
                s.wake.set()

        reader = asyncio.create_task(read())

        async def write(body: bytes) -> None:
            # asyncio.timeout, not wait_for: no extra task per response.
            s.writing_since = time.monotonic()
            try:
                async with asyncio.timeout(self.limits.write_timeout):
                    await context.write(body)
            finally:
                s.writing_since = 0.0

        try:
            while not closed.is_set():
                await s.wake.wait()  # a request, a publish, or the ticker
                if s.ticked and s.overdue(self.limits.ack_timeout):
                    log.warning(
                        "stream %d (%s) left a response unanswered for %.0fs; closing it",
                        s.id,
                        node.id,
                        self.limits.ack_timeout,
                    )
                    context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
                    context.set_details(f"no ACK/NACK within {self.limits.ack_timeout:.0f}s; reconnect")
                    break
                s.wake.clear()
                s.ticked = False
                if s.evicted is not None or closed.is_set() or not self.cache.ready:
                    if s.evicted is not None:
                        break
                    continue
                snap = self.cache.snapshot(node.fleet)
                if s.needs_flush(snap):
                    s.last_snapshot = snap
                    s.served_revision = snap.revision
                    await s.flush(snap, write)
                # Done with the newest snapshot (its responses written): no longer holding
                # back the next publish.
                if snap is self.cache.snapshot(node.fleet):
                    self._behind.discard(s.id)
        except TimeoutError:
            log.warning(
                "stream %d (%s) stopped reading for %.0fs; closing it", s.id, node.id, self.limits.write_timeout
            )
        except asyncio.CancelledError:
            pass
        finally:
            reader.cancel()
            self.cache.remove_watcher(wake)
            self.cache.set_ring_interest(s.id, set())
            self.streams.pop(s.id, None)
            if self.by_node.get(node.id) is s:
                del self.by_node[node.id]
            self._behind.discard(s.id)
            for o in self.observers:
                o.disconnected(s)
        if s.evicted is not None:
            context.set_code(s.evicted.code)
            context.set_details(s.evicted.message)

    def _published(self) -> None:
        # A stream stuck writing to a slow client (for over SLOW_WRITE seconds) is not waited
        # for: it takes the newest snapshot when its write completes, and must not hold back
        # everyone else.
        stuck = time.monotonic() - SLOW_WRITE
        self._behind = {i for i, st in self.streams.items() if not st.writing_since or st.writing_since > stuck}

    def _ring_interest(self, s: BaseStream) -> None:
        st = s.types.get(HASH_RING_TYPE)
        if st is not None:
            self.cache.set_ring_interest(s.id, st.names | ({"*"} if st.wildcard else set()))


def _peer_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    certs = context.auth_context().get("x509_pem_cert") or []
    return next(iter(certs), None)


def server_options(
    max_connection_age: float = 1800.0,
    max_request_bytes: int = 4 * 1024 * 1024,
    max_streams: int = 20_000,
    *,
    reuse_port: bool = False,
) -> list[tuple[str, int]]:
    return [
        # Large EDS responses (10k+ endpoints) exceed gRPC's 4 MiB default.
        ("grpc.max_send_message_length", 128 * 1024 * 1024),
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_SECONDS * 500),
        # Without this gRPC sends a ping on a connection with no data at most every 5 minutes,
        # and the keepalive above would find a silently dead Envoy only that late.
        ("grpc.http2.min_time_between_pings_ms", KEEPALIVE_SECONDS * 1000),
        # gRPC core (1.5x+) times a keepalive ping out after this, not keepalive_timeout_ms.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_SECONDS * 500),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Rebalance streams across replicas: gRPC core adds +-10% jitter to the age.
        ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
        ("grpc.max_connection_age_grace_ms", 60_000),
        # Off unless several replica processes share the port on purpose (`--workers`): a
        # second replica started on a taken port by mistake must fail, not split the fleet.
        ("grpc.so_reuseport", int(reuse_port)),
        # grpc.aio takes new calls from gRPC core one event-loop turn at a time; the rest wait
        # in core's pending queue. Above 1,000 waiting (the default soft limit) core rejects new
        # calls at random, and the Envoy sees its stream end with a bare CANCELLED before this
        # server ever saw it: a fleet reconnecting at once (a replica restart, a connect storm)
        # got some of its streams dropped, which feeds the storm. The replica's own admission
        # (`ServerLimits.max_streams`, answered with a clear RESOURCE_EXHAUSTED) is the limit.
        ("grpc.server.max_pending_requests", max_streams),
        ("grpc.server.max_pending_requests_hard_limit", max_streams),
    ]
