"""The system under test, as separate processes: etcd, the admin API, xDS replicas."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from api.localcluster.procs import EtcdCluster, Proc, free_port, wait_until

_TICKS = os.sysconf("SC_CLK_TCK")


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections at host:port."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants so far (an xDS replica
    with `--workers` is a supervisor and its worker processes)."""
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except FileNotFoundError:
                pass
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its live descendants."""
    total = 0
    for p in _tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except FileNotFoundError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)
    return total


def answers_ok(url: str) -> bool:
    """GET `url` answers 200 (within a second)."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Stack:
    def __init__(
        self,
        replicas: int = 1,
        root: Path | None = None,
        registry_interval: float = 0.2,
        replica_args: tuple[str, ...] = (),
        xds_workers: int = 1,
        api_workers: int = 1,
    ) -> None:
        self.api_workers = api_workers
        self.registry_interval = registry_interval
        self.xds_workers = xds_workers  # `lbcp xds --workers`: worker i serves metrics on metrics port + i
        self.replica_args = replica_args
        self.root = root or Path(tempfile.mkdtemp(prefix="lbcp-fleetsim-"))
        self.etcd = EtcdCluster(self.root / "etcd", 1)
        self.n_replicas = replicas
        self.api: Proc | None = None
        self.replicas: list[Proc] = []
        self.xds_ports: list[int] = []
        self.metrics_ports: list[int] = []
        self.api_url = ""

    @property
    def all_metrics_ports(self) -> list[int]:
        return [m + i for m in self.metrics_ports for i in range(self.xds_workers)]

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.xds_ports]

    def start(self) -> Stack:
        self.etcd.start()
        eps = ",".join(self.etcd.endpoints)
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.api = Proc(
            [
                sys.executable,
                "-m",
                "api.cli",
                "api",
                "--port",
                str(port),
                "--etcd",
                eps,
                "--log-level",
                "warning",
                "--workers",
                str(self.api_workers),
            ],  # fmt: skip
            self.root / "api.log",
        )
        self.api.start()
        for i in range(self.n_replicas):
            self.xds_ports.append(free_port())
            self.metrics_ports.append(free_port())
            self.replicas.append(self._replica(i, eps))
        for r in self.replicas:
            r.start()
        wait_until(lambda: answers_ok(f"{self.api_url}/readyz"), 30, what="admin API")
        for m in self.all_metrics_ports:
            wait_until(lambda m=m: answers_ok(f"http://127.0.0.1:{m}/metrics"), 30, what="xDS replica")
        return self

    def _replica(self, i: int, eps: str) -> Proc:
        return Proc(
            [
                sys.executable,
                "-m",
                "api.cli",
                "xds",
                "--port",
                str(self.xds_ports[i]),
                "--etcd",
                eps,
                "--replica-id",
                f"x{i}",
                "--metrics-port",
                str(self.metrics_ports[i]),
                "--registry-interval",
                str(self.registry_interval),
                *(("--workers", str(self.xds_workers)) if self.xds_workers > 1 else ()),
                *self.replica_args,
            ],
            self.root / f"xds{i}.log",
        )

    def front_door(self, port: int, zone: str) -> subprocess.Popen[bytes]:
        """`lbcp dns` for `www.<zone>` on 127.0.0.1:`port` over this stack's etcd (TTL 1 s,
        the fleet read every 0.2 s); the caller kills it."""
        argv = [sys.executable, "-m", "api.cli", "dns", "--host", "127.0.0.1", "--port", str(port),
                "--etcd", ",".join(self.etcd.endpoints), "--zone", zone, "--name", "www", "--ttl", "1",
                "--interval", "0.2"]  # fmt: skip
        return subprocess.Popen(argv, stderr=subprocess.DEVNULL)

    def restart_replica(self, i: int, down_for: float = 0.0) -> float:
        """Kill replica i and start it again on the same ports; returns when it serves again
        (its metrics answer), giving that moment (monotonic)."""
        self.replicas[i].kill()
        time.sleep(down_for)
        self.replicas[i] = self._replica(i, ",".join(self.etcd.endpoints))
        self.replicas[i].start()
        wait_until(lambda: answers_ok(f"http://127.0.0.1:{self.metrics_ports[i]}/metrics"), 30, what="xDS replica back")
        return time.monotonic()

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        if self.api:
            self.api.stop()
        self.etcd.stop()
