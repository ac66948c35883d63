"""One xDS replica: etcd watch → intent view → snapshot cache → gRPC xDS server (+ registry).

`XdsReplica.start()` serves as soon as the first full load of intent is in; when etcd is
unreachable at any later time it keeps serving the last good snapshot to connected and
newly connecting Envoys, and resumes on its own when etcd returns.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.model import Capacity
from controlplane.intent.view import IntentView
from controlplane.metrics import EtcdMetrics
from controlplane.moves.controller import Mover
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.identity import IdentityRule
from controlplane.xds.load import LoadSampler
from controlplane.xds.metrics import LoadCollector, PollerCollector, XdsMetrics
from controlplane.xds.native import CoreCollector, NativeService
from controlplane.xds.probe import FrontPolicy, FrontProber
from controlplane.xds.registry import FleetRegistry
from controlplane.xds.server.admission import ServerLimits
from controlplane.xds.server.common import StreamObserver

log = logging.getLogger(__name__)


@dataclass
class ReplicaConfig:
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    host: str = "127.0.0.1"
    port: int = 18000
    replica_id: str = ""
    debounce: float = 0.01
    max_connection_age: float = 1800.0
    limits: ServerLimits = field(default_factory=ServerLimits)
    registry_flush_interval: float = 0.2
    registry_lease_ttl: int = 10  # seconds: the replica's records outlive it (killed, cut off) this long
    tls: tuple[bytes, bytes, bytes | None] | None = None  # server cert, key, client CA (mTLS)
    metrics_port: int | None = None  # serve Prometheus /metrics on host:metrics_port (0: any free port)
    probe_interval: float = 2.0  # probe connected Envoys' /healthz this often (0: never); xds/probe.py
    load_interval: float = 2.0  # sample connected Envoys' live load this often (0: never); xds/load.py
    # With mTLS (a client CA in `tls`): the rule binding node ids to client certificates
    # (controlplane.xds.identity: "spiffe", "dns" or a template).
    identity: str = "spiffe"
    front_cidrs: tuple[str, ...] = ()  # FLEET=CIDR: where a node's public_address may point
    front_unprobed: tuple[str, ...] = ()  # fleets in service without a probe (no ops listener)
    insecure: bool = False  # allow a non-loopback address without mTLS (warned about loudly)
    moves_interval: float = 0.25  # the mover's tick (evacuations, rebalancing); 0: this replica never moves
    reuse_port: bool = False  # share the port with other replica processes (SO_REUSEPORT; xds/workers.py)

    def __post_init__(self) -> None:
        if not self.replica_id:
            self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{self.port}"

    def check(self) -> None:
        """Refuse to serve xDS to the network without mutual TLS (like the API without tokens)."""
        mtls = self.tls is not None and self.tls[2] is not None
        if mtls or _loopback(self.host):
            return
        if not self.insecure:
            raise SystemExit(
                f"refusing to serve xDS on {self.host} without mutual TLS: anyone who reaches the port could read "
                "every fleet's configuration and speak for any node. Give --tls-cert, --tls-key and "
                "--tls-client-ca (docs/security.md), bind to 127.0.0.1, or pass --insecure"
            )
        log.warning(
            "INSECURE: serving xDS on %s without mutual TLS; any client that reaches it reads every fleet's "
            "configuration and may claim any free node id",
            self.host,
        )


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class XdsReplica:
    def __init__(self, config: ReplicaConfig, extra_observers: list[StreamObserver] | None = None) -> None:
        self.config = config
        self.metrics_registry = CollectorRegistry()
        self.metrics = XdsMetrics(self.metrics_registry, config.replica_id)
        etcd_metrics = EtcdMetrics(self.metrics_registry)
        self.etcd = Etcd(config.etcd)
        self.etcd.metrics = etcd_metrics
        self.view = IntentView(self.etcd)
        self.cache = SnapshotCache(self.view, debounce=config.debounce)
        self.metrics.watch_cache(self.cache)
        self.registry = FleetRegistry(
            Etcd(config.etcd), config.replica_id, config.registry_flush_interval, config.registry_lease_ttl
        )
        self.registry.etcd.metrics = etcd_metrics
        self.prober = FrontProber(
            config.probe_interval, policy=FrontPolicy.parse(config.front_cidrs, config.front_unprobed)
        )
        self.sampler = LoadSampler(config.load_interval, capacity=self._capacity)
        self.metrics_registry.register(LoadCollector(self.sampler))
        self.metrics_registry.register(PollerCollector(self.sampler, self.prober))
        mtls = config.tls is not None and config.tls[2] is not None
        self.service = NativeService(
            self.cache,
            [self.registry, self.metrics, self.prober, self.sampler, *(extra_observers or [])],
            config.limits,
            claims=self.registry,
            identity=IdentityRule.parse(config.identity) if mtls else None,
        )
        self.metrics.use_core(CoreCollector(self.service))
        self.registry.recorder = self.service.records
        self.mover = Mover(self.etcd, self.view, config.replica_id, config.moves_interval or 1.0)
        self.port = config.port
        self.metrics_port: int | None = None
        self._metrics_server: WSGIServer | None = None

    def _capacity(self, fleet: str) -> Capacity | None:
        stored = self.view.fleets.get(fleet)
        return stored.obj.capacity if stored is not None else None

    async def start(self) -> None:
        await self.view.start()
        await self.registry.start()
        self.config.check()
        self.port = self.service.start(
            self.config.host,
            self.config.port,
            tls=self.config.tls,
            reuse_port=self.config.reuse_port,
            max_connection_age=self.config.max_connection_age,
        )
        await self.prober.start()
        await self.sampler.start()
        if self.config.moves_interval > 0:
            await self.mover.start()
        if self.config.metrics_port is not None:
            server, _ = start_http_server(self.config.metrics_port, self.config.host, self.metrics_registry)
            self._metrics_server = server
            self.metrics_port = server.server_address[1]
        log.info("xDS replica %s serving on %s:%d", self.config.replica_id, self.config.host, self.port)

    async def stop(self, grace: float = 1.0) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        await self.mover.stop()
        await self.prober.stop()
        await self.sampler.stop()
        await self.service.stop(grace)
        await self.registry.stop()
        await self.view.stop()
        await self.etcd.close()
        await self.registry.etcd.close()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
