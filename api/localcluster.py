"""`lbcp up`: a local lbcp cluster on loopback, every component a child process.

Writes what it started to STATE_DIR/cluster.json (admin_api, etcd, ...), prints a summary,
then watches its children: Ctrl-C / SIGTERM stops them all; a child that dies is
reported with its log path and takes the cluster down (exit status 1).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from controlplane.procs import EtcdCluster, Proc, free_port, wait_until


def _say(msg: str) -> None:
    print(msg, flush=True)


def _lbcp_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli", *args]


def up(state_dir: str = ".lbcp", etcd_nodes: int = 1, api_port: int | None = None) -> int:
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    logs = state / "logs"
    procs: list[tuple[str, Proc]] = []
    etcd = EtcdCluster(state / "etcd", size=etcd_nodes, token=f"lbcp-{os.getpid()}")

    def stop_all() -> None:
        for name, p in reversed(procs):
            p.stop()
        etcd.stop()
        try:
            (state / "cluster.json").unlink()
        except FileNotFoundError:
            pass

    stopping = False

    def _on_signal(signum, frame) -> None:  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    try:
        _say(f"starting etcd ({etcd_nodes} node{'s' if etcd_nodes > 1 else ''}) ...")
        etcd.start()
        _say(f"  etcd ready: {', '.join(etcd.endpoints)}")

        port = api_port or free_port()
        api_url = f"http://127.0.0.1:{port}"
        _say("starting the admin API ...")
        api = Proc(
            _lbcp_argv("api", "--host", "127.0.0.1", "--port", str(port), "--etcd", ",".join(etcd.endpoints)),
            logs / "api.log",
        )
        api.start()
        procs.append(("admin API", api))

        def _ready() -> bool:
            try:
                return httpx.get(f"{api_url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(_ready, 30, what="admin API ready")
        except TimeoutError:
            _say(f"  admin API FAILED to start; log: {api.log_path}\n{api.tail()}")
            return 1
        _say(f"  admin API ready: {api_url} (docs: {api_url}/docs)")

        doc = {
            "admin_api": api_url,
            "etcd": etcd.endpoints,
            "xds": [],
            "envoys": [],
            "backends": [],
            "token": None,
            "pids": {"admin_api": api.pid, "etcd": [m.proc.pid for m in etcd.members if m.proc]},
            "logs": str(logs),
        }
        (state / "cluster.json").write_text(json.dumps(doc, indent=2) + "\n")
        _say(
            "\nlbcp is up.\n"
            f"  admin API   {api_url}   (OpenAPI docs: {api_url}/docs)\n"
            f"  etcd        {', '.join(etcd.endpoints)}\n"
            f"  state       {state / 'cluster.json'}\n\n"
            "Try:\n"
            f"  export LBCP_API={api_url}\n"
            "  .venv/bin/lbcp apply -f docs/examples/demo.yaml\n"
            "  .venv/bin/lbcp backend add web web-4 127.0.0.1:9004 --weight 2\n"
            "  .venv/bin/lbcp get clusters\n\n"
            "Ctrl-C stops everything."
        )
        while not stopping:
            for name, p in procs:
                if not p.alive():
                    _say(f"\n{name} exited unexpectedly; log: {p.log_path}\n{p.tail()}")
                    return 1
            for m in etcd.members:
                if m.proc and not m.proc.alive():
                    _say(f"\netcd member {m.name} exited unexpectedly; log: {m.proc.log_path}")
                    return 1
            time.sleep(0.2)
        _say("\nstopping ...")
        return 0
    finally:
        stop_all()
        _say("stopped.")
