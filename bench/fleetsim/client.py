"""One simulated Envoy: a real gRPC ADS client that subscribes and ACKs as Envoy does.

- CDS and LDS wildcard; EDS for every EDS cluster it holds, RDS for every route config its
  HTTP listeners name (subscriptions follow what it receives, like Envoy's).
- Every response is decoded (each resource unpacked into its Envoy type) and ACKed, or
  NACKed when told to (`nack_first`: the first EDS response, to test NACK accounting; the
  rejected version is not applied, a later one is).
- Delta or state of the world. On a broken stream it reconnects with back-off, declaring
  what it holds (delta `initial_resource_versions`; SotW `version_info` and names).
- `configured` is set once it holds its full initial config: CDS and LDS answered, and a
  response for every EDS and RDS name those made it subscribe to (what Envoy waits for
  before its listeners serve).
- It records when each endpoint port first appears in any of its load assignments
  (`seen_ports`), which is how the simulator measures convergence of a backend change,
  and counts protocol violations: endpoints for a cluster it does not have, routes naming
  clusters it does not have.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_TYPES = {
    CDS: cluster_pb2.Cluster,
    EDS: endpoint_pb2.ClusterLoadAssignment,
    LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration,
}
_HCM = "envoy.filters.network.http_connection_manager"


@dataclass
class Counters:
    responses: int = 0
    bytes: int = 0
    resources: int = 0
    acks: int = 0
    nacks: int = 0
    reconnects: int = 0
    violations: int = 0
    by_type_bytes: dict[str, int] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)  # why streams ended: "CODE: details" -> count


class SimEnvoy:
    def __init__(
        self, target: str, node_id: str, fleet: str = "default", *, delta: bool = True, nack_first: bool = False
    ) -> None:
        self.target = target
        self.node = base_pb2.Node(id=node_id, cluster=fleet, user_agent_name="lbcp-fleetsim")
        self.delta = delta
        self.nack_first = nack_first
        self.counters = Counters()
        self.seen_ports: dict[int, float] = {}  # endpoint port -> first time it was seen
        self.have: dict[str, dict[str, str]] = {t: {} for t in _TYPES}  # type -> name -> version
        self.sotw_version: dict[str, str] = {}
        self.clusters: dict[str, cluster_pb2.Cluster] = {}
        self.eds_names: set[str] = set()
        self.rds_names: set[str] = set()
        self.listener_rds: dict[str, str] = {}
        self.connected = asyncio.Event()
        self.configured = asyncio.Event()
        self._received: dict[str, set[str]] = {t: set() for t in _TYPES}  # names received per type
        self._answered: set[str] = set()  # types with at least one response
        self._stop = False
        self._task: asyncio.Task | None = None
        self._channel: grpc.aio.Channel | None = None
        self._out: asyncio.Queue | None = None
        self._nacked = False
        self._backoff = 0.1

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()

    async def _run(self) -> None:
        self._backoff = 0.1
        while not self._stop:
            why = "ended by the server with OK"
            try:
                await self._stream()
            except grpc.aio.AioRpcError as exc:
                why = f"{exc.code().name}: {(exc.details() or '')[:100]}"
            except ConnectionError as exc:
                why = f"{type(exc).__name__}: {str(exc)[:100]}"
            self.counters.ended[why] = self.counters.ended.get(why, 0) + 1
            if self._stop:
                return
            self.connected.clear()
            self.counters.reconnects += 1
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 2.0)

    async def _stream(self) -> None:
        if self._channel is None:
            # One TCP connection per simulated Envoy, as in a real fleet (gRPC would share one).
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                    # Like Envoy's own gRPC client: no BDP probing. grpc-python's client
                    # otherwise sends a PING (with WINDOW_UPDATEs) after every response, which
                    # costs the server under test a read and a write per response that a real
                    # fleet never sends (seen with tcpdump: 2 writes and 2 reads per change).
                    ("grpc.http2.bdp_probe", 0),
                ],
            )
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        out = self._out = asyncio.Queue()
        self._first_message = True
        requests = self._requests(out)
        call = stub.DeltaAggregatedResources(requests) if self.delta else stub.StreamAggregatedResources(requests)
        self._subscribe_initial()
        self.connected.set()
        try:
            async for resp in call:
                self._handle(resp)
        finally:
            out.put_nowait(None)  # ends the request generator cleanly (no pending task left behind)
            call.cancel()

    async def _requests(self, out: asyncio.Queue):
        while True:
            req = await out.get()
            if req is None:
                return
            if self._first_message:
                req.node.CopyFrom(self.node)
                self._first_message = False
            yield req

    # -- requests ----------------------------------------------------------------------------

    def _send(self, req) -> None:
        assert self._out is not None
        self._out.put_nowait(req)

    def _subscribe_initial(self) -> None:
        for t in (CDS, LDS):
            if self.delta:
                self._send(discovery_pb2.DeltaDiscoveryRequest(type_url=t, initial_resource_versions=self.have[t]))
            else:
                self._send(discovery_pb2.DiscoveryRequest(type_url=t, version_info=self.sotw_version.get(t, "")))
        if self.eds_names:
            self._resubscribe(EDS, set(), self.eds_names, initial=True)
        if self.rds_names:
            self._resubscribe(RDS, set(), self.rds_names, initial=True)

    def _resubscribe(self, t: str, old: set[str], new: set[str], initial: bool = False) -> None:
        if self.delta:
            self._send(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=t,
                    resource_names_subscribe=sorted(new - old),
                    resource_names_unsubscribe=sorted(old - new),
                    initial_resource_versions={n: v for n, v in self.have[t].items() if n in new} if initial else {},
                )
            )
        else:
            self._send(
                discovery_pb2.DiscoveryRequest(
                    type_url=t, resource_names=sorted(new), version_info=self.sotw_version.get(t, "") if initial else ""
                )
            )

    # -- responses ---------------------------------------------------------------------------

    def _handle(self, resp) -> None:
        t = resp.type_url
        c = self.counters
        c.responses += 1
        self._backoff = 0.1  # served again: the next failure starts the back-off over
        size = resp.ByteSize()
        c.bytes += size
        c.by_type_bytes[t] = c.by_type_bytes.get(t, 0) + size
        msg_cls = _TYPES[t]
        decoded: dict[str, object] = {}
        if self.delta:
            for r in resp.resources:
                m = msg_cls()
                r.resource.Unpack(m)
                decoded[r.name] = m
                self.have[t][r.name] = r.version
            for name in resp.removed_resources:
                self.have[t].pop(name, None)
        else:
            for a in resp.resources:
                m = msg_cls()
                a.Unpack(m)
                decoded[_name(m)] = m
        c.resources += len(decoded)
        nack = self.nack_first and not self._nacked and t == EDS
        if not nack:
            self._apply(t, decoded, set(resp.removed_resources) if self.delta else None)
        self._ack(resp, nack)
        self._answered.add(t)
        self._received[t].update(decoded)
        if not self.configured.is_set() and self._holds_initial_config():
            self.configured.set()

    def _holds_initial_config(self) -> bool:
        # A rejected response counts as received: it answered the subscription.
        return (
            {CDS, LDS} <= self._answered
            and self.eds_names <= self._received[EDS]
            and self.rds_names <= self._received[RDS]
        )

    def _ack(self, resp, nack: bool) -> None:
        t = resp.type_url
        if nack:
            self._nacked = True
            self.counters.nacks += 1
            err = status_pb2.Status(code=3, message="fleetsim: NACK as told")
        else:
            self.counters.acks += 1
            err = None
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce)
        else:
            if not nack:
                self.sotw_version[t] = resp.version_info
            names = sorted(self.eds_names if t == EDS else self.rds_names if t == RDS else [])
            req = discovery_pb2.DiscoveryRequest(
                type_url=t, response_nonce=resp.nonce, resource_names=names, version_info=self.sotw_version.get(t, "")
            )
        if err is not None:
            req.error_detail.CopyFrom(err)
        self._send(req)

    def _apply(self, t: str, decoded: dict, removed: set[str] | None) -> None:
        now = time.monotonic()
        if t == CDS:
            if removed is None:
                self.clusters = dict(decoded)  # SotW: the whole set
            else:
                self.clusters.update(decoded)
                for n in removed:
                    self.clusters.pop(n, None)
            new = {n for n, c in self.clusters.items() if c.type == cluster_pb2.Cluster.EDS}
            if new != self.eds_names:
                old, self.eds_names = self.eds_names, new
                self._resubscribe(EDS, old, new)
        elif t == EDS:
            for name, cla in decoded.items():
                if name not in self.clusters:
                    self.counters.violations += 1  # endpoints for a cluster it does not have
                for group in cla.endpoints:
                    for lb in group.lb_endpoints:
                        port = lb.endpoint.address.socket_address.port_value
                        self.seen_ports.setdefault(port, now)
        elif t == LDS:
            if removed is None:
                self.listener_rds = {}
            for n in removed or ():
                self.listener_rds.pop(n, None)
            for name, lst in decoded.items():
                self.listener_rds.pop(name, None)
                for chain in lst.filter_chains:
                    for f in chain.filters:
                        if f.name == _HCM:
                            hcm = hcm_pb2.HttpConnectionManager()
                            f.typed_config.Unpack(hcm)
                            self.listener_rds[name] = hcm.rds.route_config_name
            new = set(self.listener_rds.values())
            if new != self.rds_names:
                old, self.rds_names = self.rds_names, new
                self._resubscribe(RDS, old, new)
        elif t == RDS:
            for rc in decoded.values():
                for vh in rc.virtual_hosts:
                    for r in vh.routes:
                        wanted = (
                            {r.route.cluster}
                            if r.route.cluster
                            else {w.name for w in r.route.weighted_clusters.clusters}
                        )
                        if wanted - self.clusters.keys():
                            self.counters.violations += 1  # a route to a cluster it does not have


def _name(m) -> str:
    return getattr(m, "name", "") or getattr(m, "cluster_name", "")
