"""`lbcp up`: a local lbcp cluster on loopback, every component a child process.

Starts etcd, the admin API, two xDS replicas, N Envoys and M demo backends, applies a demo
cluster (maglev, hash on `x-user-id`), listener and route, and writes what it started to
STATE_DIR/cluster.json. Ctrl-C / SIGTERM stops everything; a child that dies is reported
with its log path and takes the cluster down (exit status 1).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from controlplane.procs import EnvoyProcess, EtcdCluster, Proc, free_port, wait_until

from .client import Client
from .demo import DemoBackend

XDS_REPLICAS = 2


def _say(msg: str) -> None:
    print(msg, flush=True)


def _lbcp_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli", *args]


def _demo_intent(backends: list[DemoBackend], listener_port: int) -> list[dict]:
    return [
        {"op": "put", "kind": "cluster", "name": "web",
         "body": {"load_balancer": {"type": "maglev"}, "connect_timeout": "1s",
                  "health_check": {"passive": {"consecutive_5xx": 5, "base_ejection_time": "30s", "max_ejection_percent": 34}}}},
        {"op": "replace_backends", "cluster": "web",
         "body": [{"name": b.name, "address": "127.0.0.1", "port": b.port} for b in backends]},
        {"op": "put", "kind": "listener", "name": "http", "body": {"address": "127.0.0.1", "port": listener_port}},
        {"op": "put", "kind": "route", "name": "web",
         "body": {"listener": "http", "backends": [{"cluster": "web"}], "websocket": True,
                  "hash_policies": [{"type": "header", "name": "x-user-id"}]}},
    ]


def up(state_dir: str = ".lbcp", etcd_nodes: int = 1, api_port: int | None = None, envoys: int = 1, backends: int = 3) -> int:
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    logs = state / "logs"
    procs: list[tuple[str, Proc]] = []
    envoy_procs: list[EnvoyProcess] = []
    demo: list[DemoBackend] = []
    etcd = EtcdCluster(state / "etcd", size=etcd_nodes, token=f"lbcp-{os.getpid()}")
    stopping = False

    def _on_signal(signum, frame) -> None:  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    def _http_ok(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _say(f"starting etcd ({etcd_nodes} node{'s' if etcd_nodes > 1 else ''}) ...")
        etcd.start()
        _say(f"  etcd ready: {', '.join(etcd.endpoints)}")
        eps = ",".join(etcd.endpoints)

        port = api_port or free_port()
        api_url = f"http://127.0.0.1:{port}"
        _say("starting the admin API ...")
        api = Proc(_lbcp_argv("api", "--host", "127.0.0.1", "--port", str(port), "--etcd", eps), logs / "api.log")
        api.start()
        procs.append(("admin API", api))
        try:
            wait_until(lambda: _http_ok(f"{api_url}/readyz"), 30, what="admin API ready")
        except TimeoutError:
            _say(f"  admin API FAILED to start; log: {api.log_path}\n{api.tail()}")
            return 1
        _say(f"  admin API ready: {api_url} (docs: {api_url}/docs)")

        xds = []
        for i in range(XDS_REPLICAS):
            xport = free_port()
            p = Proc(_lbcp_argv("xds", "--host", "127.0.0.1", "--port", str(xport), "--etcd", eps, "--replica-id", f"xds-{i}"),
                     logs / f"xds-{i}.log")
            p.start()
            procs.append((f"xDS replica xds-{i}", p))
            xds.append(("127.0.0.1", xport))
        _say(f"  xDS replicas: {', '.join(f'{h}:{p}' for h, p in xds)}")

        listener_port = free_port()
        for i in range(backends):
            demo.append(DemoBackend(f"web-{i + 1}"))
        if demo:
            Client(api_url).post("/v1/batch", {"operations": _demo_intent(demo, listener_port)})
            _say(f"  demo backends: {', '.join(f'{b.name}@127.0.0.1:{b.port}' for b in demo)}")

        for i in range(envoys):
            e = EnvoyProcess(state / "envoy", f"envoy-{i}", "default", [xds[i % len(xds)]] + xds[:i % len(xds)] + xds[i % len(xds) + 1:])
            try:
                e.start()
            except RuntimeError as exc:
                _say(f"  Envoy envoy-{i} FAILED: {exc}")
                return 1
            envoy_procs.append(e)
            procs.append((f"Envoy envoy-{i}", e.proc))
        _say(f"  Envoys: {', '.join(f'{e.node_id} (admin {e.admin})' for e in envoy_procs)}")
        if demo and envoy_procs:
            try:
                wait_until(lambda: _http_ok(f"http://127.0.0.1:{listener_port}/"), 30, what="demo route through Envoy")
            except TimeoutError:
                _say("  WARNING: the demo route did not answer through Envoy yet; see the logs")

        doc = {
            "admin_api": api_url,
            "etcd": etcd.endpoints,
            "xds": [f"{h}:{p}" for h, p in xds],
            "envoys": [{"node_id": e.node_id, "listener": f"127.0.0.1:{listener_port}", "admin": e.admin} for e in envoy_procs],
            "backends": [{"name": b.name, "address": f"127.0.0.1:{b.port}"} for b in demo],
            "token": None,
            "pids": {"admin_api": api.pid, "etcd": [m.proc.pid for m in etcd.members if m.proc],
                     "others": [p.pid for _, p in procs]},
            "logs": str(logs),
        }
        (state / "cluster.json").write_text(json.dumps(doc, indent=2) + "\n")
        curl = f"curl -s -H 'x-user-id: alice' http://127.0.0.1:{listener_port}/" if demo and envoy_procs else ""
        _say(
            "\nlbcp is up.\n"
            f"  admin API   {api_url}   (OpenAPI docs: {api_url}/docs)\n"
            f"  xDS         {', '.join(doc['xds'])}\n"
            f"  etcd        {', '.join(etcd.endpoints)}\n"
            f"  state       {state / 'cluster.json'}\n\n"
            "Try:\n"
            + (f"  {curl}\n" if curl else "")
            + f"  export LBCP_API={api_url}\n"
            "  .venv/bin/lbcp get clusters\n"
            "  .venv/bin/lbcp backend add web web-9 127.0.0.1:9009 --weight 2\n"
            f"  curl -s {api_url}/v1/fleet\n\n"
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
        for e in envoy_procs:
            e.stop()
        for _, p in reversed(procs):
            p.stop()
        for b in demo:
            b.stop()
        etcd.stop()
        try:
            (state / "cluster.json").unlink()
        except FileNotFoundError:
            pass
        _say("stopped.")
