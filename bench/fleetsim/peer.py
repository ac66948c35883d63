"""A peer control plane as the system under test: go-control-plane (bench/gocp), one process
that serves xDS and the part of lbcp's admin API the scenarios write through.

`PeerStack` stands in for `Stack` where a scenario runs `--against go-control-plane`: it has
`api_url`, `targets`, `replicas` (whose `pid` gives `cpu_seconds` / `rss_bytes` their process)
and `start` / `stop`. It has no etcd, no separate API process and no lbcp metrics: a scenario
must not scrape it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from api.localcluster.procs import Proc, free_port, wait_until
from bench.fleetsim.stack import answers_ok, listening

GOCP_DIR = Path(__file__).resolve().parents[1] / "gocp"
BINARY = GOCP_DIR / "bin" / "gocp"
PEERS = ("go-control-plane",)


def go_tool() -> str | None:
    """The `go` command, or None when Go is not installed."""
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.exists() else None


def build(*, quiet: bool = False) -> Path:
    """bench/gocp/bin/gocp, built first (`make -C bench/gocp`) when missing or older than its
    sources; modules come from the Go module proxy, checked against the committed go.sum."""
    if go_tool() is None:
        raise RuntimeError("go is not installed: the go-control-plane peer (bench/gocp) cannot be built")
    stale = not BINARY.exists() or subprocess.run(["make", "-q", "-C", str(GOCP_DIR)], capture_output=True).returncode
    if stale:
        if not quiet:
            what = "missing" if not BINARY.exists() else "older than its sources"
            print(f"bench/gocp/bin/gocp is {what}: building it (make -C bench/gocp)", flush=True)
        done = subprocess.run(["make", "-C", str(GOCP_DIR)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"make -C bench/gocp failed:\n{done.stdout}{done.stderr}")
    return BINARY


class PeerStack:
    """go-control-plane on 127.0.0.1: one process, xDS on `xds_ports[0]`, REST at `api_url`."""

    def __init__(self, peer: str = "go-control-plane", root: Path | None = None, *, quiet: bool = False) -> None:
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}: one of {', '.join(PEERS)}")
        self.peer = peer
        self.quiet = quiet
        self.root = root or Path(tempfile.mkdtemp(prefix="lbcp-fleetsim-gocp-"))
        self.replicas: list[Proc] = []
        self.xds_ports: list[int] = []
        self.api_url = ""

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.xds_ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.replicas if p.pid is not None]

    def start(self) -> PeerStack:
        binary = build(quiet=self.quiet)
        grpc_port, http_port = free_port(), free_port()
        self.xds_ports = [grpc_port]
        self.api_url = f"http://127.0.0.1:{http_port}"
        proc = Proc([str(binary), "--grpc-port", str(grpc_port), "--http-port", str(http_port)], self.root / "gocp.log")
        self.replicas = [proc]
        proc.start()
        try:
            wait_until(lambda: answers_ok(f"{self.api_url}/readyz") and listening(grpc_port), 30, what=self.peer)
        except TimeoutError:
            raise RuntimeError(f"{self.peer} did not come up:\n{proc.tail()}") from None
        return self

    def stop(self) -> None:
        for p in self.replicas:
            p.stop()
