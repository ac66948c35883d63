"""N xDS replica processes on one port (`lbcp xds --workers N`), supervised.

Each worker is a whole replica (its own etcd watch, snapshot cache, gRPC server, fleet
registry entry, probes, load sampler and metrics) in its own process; they share nothing but
etcd, so one host's cores all serve the fleet. The kernel spreads incoming connections over
the workers' listening sockets (SO_REUSEPORT). Versions agree across workers because they
come from the etcd revision. A worker that dies is restarted with back-off while the others
keep serving; its Envoys reconnect to the port and land on a live worker.

Worker i is replica `{replica_id}-w{i}`; with `--metrics-port P` it serves /metrics on P+i.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from dataclasses import replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from controlplane.xds.replica import ReplicaConfig

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5  # seconds before the first restart of a worker that died
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that lived this long starts its back-off over


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


class Workers:
    """Start `len(configs)` replica processes and keep them running until `stop()`."""

    def __init__(self, configs: list[ReplicaConfig]) -> None:
        self.configs = configs
        self._ctx = multiprocessing.get_context("spawn")  # gRPC must not be forked after init
        self._procs: list[BaseProcess | None] = [None] * len(configs)
        self._started_at = [0.0] * len(configs)
        self._backoff = [BACKOFF_MIN] * len(configs)
        self._restart_at: dict[int, float] = {}
        self._stopping = threading.Event()
        self.restarts = 0

    @property
    def port(self) -> int:
        return self.configs[0].port

    def pids(self) -> list[int | None]:
        return [p.pid if p is not None and p.is_alive() else None for p in self._procs]

    def _spawn(self, i: int) -> None:
        p = self._ctx.Process(
            target=_worker_main,
            args=(self.configs[i], logging.getLogger().getEffectiveLevel()),
            name=f"xds-worker-{i}",
            daemon=False,
        )
        p.start()
        self._procs[i] = p
        self._started_at[i] = time.monotonic()
        log.info("xDS worker %d (%s) started, pid %s", i, self.configs[i].replica_id, p.pid)

    def run(self) -> None:
        """Supervise until `stop()` (or SIGTERM/SIGINT when run in the main thread)."""
        for i in range(len(self.configs)):
            self._spawn(i)
        while not self._stopping.is_set():
            now = time.monotonic()
            for i, at in list(self._restart_at.items()):
                if now >= at:
                    del self._restart_at[i]
                    self.restarts += 1
                    self._spawn(i)
            live = [p for p in self._procs if p is not None]
            timeout = min([0.5, *(at - now for at in self._restart_at.values())])
            ready: list[Any] = wait([p.sentinel for p in live], timeout=max(timeout, 0.0))
            for i, p in enumerate(self._procs):
                if p is None or p.sentinel not in ready or self._stopping.is_set():
                    continue
                p.join()
                lived = time.monotonic() - self._started_at[i]
                if lived >= STABLE_AFTER:
                    self._backoff[i] = BACKOFF_MIN
                delay = self._backoff[i]
                self._backoff[i] = min(delay * 2, BACKOFF_MAX)
                log.error(
                    "xDS worker %d (%s, pid %s) exited with %s after %.0fs; restarting in %.1fs "
                    "(the other workers keep serving)",
                    i,
                    self.configs[i].replica_id,
                    p.pid,
                    _exit_status(p.exitcode),
                    lived,
                    delay,
                )
                self._procs[i] = None
                self._restart_at[i] = time.monotonic() + delay
        self._terminate()

    def stop(self) -> None:
        self._stopping.set()

    def _terminate(self) -> None:
        procs = [p for p in self._procs if p is not None]
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker stops its server and leaves the registry
        deadline = time.monotonic() + 10
        for p in procs:
            p.join(max(deadline - time.monotonic(), 0.1))
            if p.is_alive():
                p.kill()
                p.join()


def _exit_status(code: int | None) -> str:
    if code is None:
        return "no status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def run_workers(cfg: ReplicaConfig, n: int) -> int:
    """`lbcp xds --workers N`: serve until SIGTERM/SIGINT."""
    workers = Workers(worker_configs(cfg, n))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: workers.stop())
    log.info("xDS: %d workers on %s:%d", n, cfg.host, workers.port)
    workers.run()
    return 0
