"""N xDS replica processes on one port (`lbcp xds --workers N`), supervised.

Each worker is a whole replica (its own etcd watch, snapshot cache, gRPC server, fleet
registry entry, probes, load sampler and metrics) in its own process; they share nothing but
etcd, so one host's cores all serve the fleet. The kernel spreads incoming connections over
the workers' listening sockets (SO_REUSEPORT). Versions agree across workers because they
come from the etcd revision. A worker that dies is restarted with back-off while the others
keep serving (`controlplane/workers.py`); its Envoys reconnect to the port and land on a
live worker.

Worker i is replica `{replica_id}-w{i}`; with `--metrics-port P` it serves /metrics on P+i.
"""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import replace

from controlplane.workers import WorkerSpec, serve
from controlplane.xds.replica import ReplicaConfig

log = logging.getLogger(__name__)


def worker_configs(cfg: ReplicaConfig, n: int) -> list[ReplicaConfig]:
    """The config of each of `n` workers: same port (SO_REUSEPORT), own id and metrics port."""
    port = cfg.port or _free_port(cfg.host)
    return [
        replace(
            cfg,
            port=port,
            reuse_port=True,
            replica_id=f"{cfg.replica_id}-w{i}",
            metrics_port=cfg.metrics_port + i if cfg.metrics_port else cfg.metrics_port,
        )
        for i in range(n)
    ]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _worker_main(cfg: ReplicaConfig, log_level: int) -> None:
    import asyncio

    from controlplane.xds.replica import XdsReplica

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        replica = XdsReplica(cfg)
        await replica.start()
        try:
            await stop.wait()
        finally:
            await replica.stop()

    asyncio.run(run())


def run_workers(cfg: ReplicaConfig, n: int) -> int:
    """`lbcp xds --workers N`: serve until SIGTERM/SIGINT."""
    configs = worker_configs(cfg, n)
    level = logging.getLogger().getEffectiveLevel()
    log.info("xDS: %d workers on %s:%d", n, cfg.host, configs[0].port)
    return serve("xDS", [WorkerSpec(c.replica_id, _worker_main, (c, level)) for c in configs])
