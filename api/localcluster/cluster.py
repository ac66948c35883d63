"""`lbcp up` / `lbcp down`: a local lbcp cluster on loopback, every component a child process.

`up` starts etcd (1 or 3 members), the admin API, two xDS replicas, N Envoys and M demo
backends (HTTP + WebSocket), applies a demo cluster (Maglev, hash on `x-user-id`), listener
and route, and writes what it started to STATE_DIR/cluster.json. All Envoys share the demo
listener's port through SO_REUSEPORT, so the kernel spreads connections over them as an
ECMP/iptables front tier spreads them over hosts; each Envoy's admin URL is its own.

`up` is a supervisor: a component that dies (etcd, the admin API, an xDS replica, an Envoy,
the front-door DNS) is reported with its exit status and the tail of its log, and started
again with back-off (0.5 s doubling to 30 s, reset once it has lived 60 s) while the rest
keeps running; cluster.json always holds the live PIDs. `--restart never` instead takes the
cluster down when one dies (exit status 1). Only Ctrl-C / SIGTERM (or `lbcp down`) stops it.
`up --detach` runs the same in the background and returns once the cluster is ready; `down`
stops it by the PIDs in cluster.json.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from api.cli.client import Client
from api.localcluster.demo import DemoBackend
from api.localcluster.procs import (
    EnvoyProcess,
    EtcdCluster,
    EtcdMember,
    Proc,
    envoy_address,
    free_port,
    wait_until,
)
from controlplane.workers import BACKOFF_MAX, BACKOFF_MIN, STABLE_AFTER, exit_status

XDS_REPLICAS = 2
STATE_FILE = "cluster.json"


def _say(msg: str) -> None:
    print(msg, flush=True)


def _lbcp_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli", *args]


def http_ok(url: str) -> bool:
    """`url` answers 200 within a second."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _dns_answers(port: int, name: str) -> bool:
    import dns.exception
    import dns.message
    import dns.query

    try:
        dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1)
        return True
    except (OSError, dns.exception.DNSException):
        return False


# Backends the README's first-minutes walk adds, started by `lbcp up` on these fixed ports
# (when free) so that the walk works as written; shop-3 (:9103) is left dead on purpose.
WALK_BACKENDS = {"web-4": 9004, "shop-1": 9101, "shop-2": 9102}


def _walk_backends() -> list[DemoBackend]:
    started = []
    for name, port in WALK_BACKENDS.items():
        try:
            started.append(DemoBackend(name, port=port))
        except OSError as exc:
            _say(f"  note: {name} not started on 127.0.0.1:{port} ({exc.strerror}): the README walk will see it dead")
    return started


def _demo_intent(backends: list[DemoBackend], listener_port: int) -> list[dict[str, Any]]:
    return [
        {
            "op": "put",
            "kind": "cluster",
            "name": "web",
            "body": {
                "load_balancer": {"type": "maglev"},
                "connect_timeout": "1s",
                "health_check": {
                    # Each Envoy checks each backend every 2 s: a dead one is out of rotation
                    # before users find it, and the per-backend health shows it.
                    "active": {"type": "http", "path": "/healthz", "interval": "2s", "timeout": "1s"},
                    "passive": {"consecutive_5xx": 5, "base_ejection_time": "30s", "max_ejection_percent": 34},
                },
            },
        },
        {
            "op": "replace_backends",
            "cluster": "web",
            "body": [{"name": b.name, "address": "127.0.0.1", "port": b.port} for b in backends],
        },
        {
            "op": "put",
            "kind": "listener",
            "name": "http",
            # Shared on 127.0.0.1 (SO_REUSEPORT: the kernel spreads connections), and each
            # Envoy's own 127.0.1.N, where the front door (lbcp dns) sends clients.
            "body": {"address": "127.0.0.1", "port": listener_port, "bind_public_address": True},
        },
        {
            "op": "put",
            "kind": "route",
            "name": "web",
            "body": {
                "listener": "http",
                "backends": [{"cluster": "web"}],
                "websocket": True,
                "hash_policies": [{"type": "header", "name": "x-user-id"}],
            },
        },
    ]


class _Failed(Exception):
    """A component did not come up: the message names it and its log."""


def _ready(name: str, proc: Proc, pred: Callable[[], bool], timeout: float = 30.0) -> None:
    def check() -> bool:
        if not proc.alive():
            raise _Failed(f"{name} exited during start-up; log: {proc.log_path}\n{proc.tail()}")
        return pred()

    try:
        wait_until(check, timeout, what=name)
    except TimeoutError:
        raise _Failed(f"{name} not ready after {timeout:.0f}s; log: {proc.log_path}\n{proc.tail()}") from None


def up(
    state_dir: str = ".lbcp",
    etcd_nodes: int = 1,
    api_port: int | None = None,
    envoys: int = 2,
    backends: int = 3,
    demo_intent: bool = True,
    restart: str = "on-failure",
) -> int:
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if (state / STATE_FILE).exists():
        doc = json.loads((state / STATE_FILE).read_text())
        if alive(doc.get("pids", {}).get("supervisor", 0)):
            _say(f"a cluster is already running from {state} (admin API {doc.get('admin_api')}); `lbcp down` stops it")
            return 1
        (state / STATE_FILE).unlink()
    logs = state / "logs"
    procs: list[tuple[str, Proc]] = []
    envoy_procs: list[EnvoyProcess] = []
    demo: list[DemoBackend] = []
    walk: list[DemoBackend] = []  # the README walk's (WALK_BACKENDS), not in intent
    etcd = EtcdCluster(state / "etcd", size=etcd_nodes, token=f"lbcp-{os.getpid()}")
    stopping = False

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    try:
        _say(f"starting etcd ({etcd_nodes} member{'s' if etcd_nodes > 1 else ''}) ...")
        try:
            etcd.start()
        except (RuntimeError, TimeoutError) as exc:
            raise _Failed(f"etcd failed: {exc}; logs: {state / 'etcd'}") from None
        _say(f"  etcd ready: {', '.join(etcd.endpoints)}")
        eps = ",".join(etcd.endpoints)

        port = api_port or free_port()
        api_url = f"http://127.0.0.1:{port}"
        _say("starting the admin API ...")
        api = Proc(_lbcp_argv("api", "--host", "127.0.0.1", "--port", str(port), "--etcd", eps), logs / "api.log")
        api.start()
        procs.append(("admin API", api))
        _ready("admin API", api, lambda: http_ok(f"{api_url}/readyz"))
        _say(f"  admin API ready: {api_url} (docs: {api_url}/docs)")

        xds, xds_metrics = [], []
        for i in range(XDS_REPLICAS):
            xport, mport = free_port(), free_port()
            _say(f"starting xDS replica xds-{i} ...")
            p = Proc(
                _lbcp_argv(
                    "xds",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(xport),
                    "--etcd",
                    eps,
                    "--replica-id",
                    f"xds-{i}",
                    "--metrics-port",
                    str(mport),
                    # Loopback only: each Envoy's public_address is a 127.x address of its own.
                    "--front-cidr",
                    "*=127.0.0.0/8",
                ),
                logs / f"xds-{i}.log",
            )
            p.start()
            procs.append((f"xDS replica xds-{i}", p))
            metrics_url = f"http://127.0.0.1:{mport}/metrics"
            _ready(f"xDS replica xds-{i}", p, functools.partial(http_ok, metrics_url))
            xds.append(("127.0.0.1", xport))
            xds_metrics.append(f"http://127.0.0.1:{mport}/metrics")
            _say(f"  xds-{i} ready: 127.0.0.1:{xport} (metrics {xds_metrics[-1]})")

        listener_port = free_port()
        if backends:
            _say(f"starting {backends} demo backends ...")
            for i in range(backends):
                demo.append(DemoBackend(f"web-{i + 1}"))
            _say(f"  demo backends: {', '.join(f'{b.name}@127.0.0.1:{b.port}' for b in demo)}")
        if demo and demo_intent:
            Client(api_url).post("/v1/batch", {"operations": _demo_intent(demo, listener_port)})
            walk += _walk_backends()
            _say(
                f"  for the README walk: {', '.join(f'{b.name}@127.0.0.1:{b.port}' for b in walk)} (not in intent yet)"
            )
            _say("  demo intent applied: cluster web (maglev, hash on x-user-id), listener http, route web")

        for i in range(envoys):
            # Each Envoy prefers a different replica and fails over to the others.
            order = xds[i % len(xds) :] + xds[: i % len(xds)]
            _say(f"starting Envoy envoy-{i} ...")
            e = EnvoyProcess(state / "envoy", f"envoy-{i}", "default", order, public_address=envoy_address(i))
            envoy_procs.append(e)
            try:
                e.start()
            except RuntimeError as exc:
                raise _Failed(f"Envoy envoy-{i} failed: {exc}; log: {e.proc.log_path}\n{e.proc.tail()}") from None
            procs.append((f"Envoy envoy-{i}", e.proc))
            _say(f"  envoy-{i} ready at {e.ops_address}: admin {e.admin}")
        if demo and demo_intent and envoy_procs:
            try:
                wait_until(lambda: http_ok(f"http://127.0.0.1:{listener_port}/"), 30, what="demo route through Envoy")
                _say(f"  demo route answers through Envoy on 127.0.0.1:{listener_port}")
            except TimeoutError:
                _say("  WARNING: the demo route does not answer through Envoy yet; see the logs")

        # The front door: authoritative DNS for www.lbcp.test, answering with the Envoys in service.
        dns_port = free_port()
        _say("starting the front-door DNS (lbcp dns) ...")
        dns_proc = Proc(
            _lbcp_argv(
                "dns",
                "--host",
                "127.0.0.1",
                "--port",
                str(dns_port),
                "--etcd",
                eps,
                "--zone",
                "lbcp.test",
                "--name",
                "www",
                "--ttl",
                "5",
            ),
            logs / "dns.log",
        )
        dns_proc.start()
        procs.append(("front-door DNS", dns_proc))
        _ready("front-door DNS", dns_proc, lambda: _dns_answers(dns_port, "www.lbcp.test"))
        _say(f"  www.lbcp.test answered on 127.0.0.1:{dns_port} (UDP and TCP)")

        listener = f"127.0.0.1:{listener_port}" if demo and demo_intent else None
        doc = {
            "admin_api": api_url,
            "etcd": etcd.endpoints,
            "xds": [f"{h}:{p}" for h, p in xds],
            "envoys": [
                {
                    "node_id": e.node_id,
                    "address": e.ops_address,
                    "listener": listener,
                    "own_listener": f"{e.ops_address}:{listener_port}" if listener else None,
                    "admin": e.admin,
                }
                for e in envoy_procs
            ],
            "backends": [{"name": b.name, "address": f"127.0.0.1:{b.port}"} for b in demo],
            "dns": {"address": f"127.0.0.1:{dns_port}", "name": "www.lbcp.test"},
            "token": None,
            "metrics": {
                "admin_api": f"{api_url}/metrics",
                "xds": xds_metrics,
                "envoys": [f"{e.admin}/stats/prometheus" for e in envoy_procs],
            },
            "pids": {},
            "logs": str(logs),
        }

        def write_state() -> None:
            doc["pids"] = {
                "supervisor": os.getpid(),
                "admin_api": api.pid,
                "etcd": [m.proc.pid for m in etcd.members if m.proc],
                "others": [p.pid for _, p in procs],
            }
            tmp = state / (STATE_FILE + ".tmp")
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            tmp.replace(state / STATE_FILE)  # readers never see half a file

        write_state()
        _say(_summary(doc, state))
        # An etcd member gets a new Proc when started again; the others restart their own.
        components = [_Component(name, _fixed(p), p.start) for name, p in procs]
        components += [
            _Component(f"etcd member {m.name}", _member(m), functools.partial(etcd.start_member, m))
            for m in etcd.members
        ]
        while not stopping:
            for c in components:
                if c.check(restart == "never"):
                    write_state()
                elif c.failed:
                    return 1
            time.sleep(0.2)
        _say("\nstopping ...")
        return 0
    except _Failed as exc:
        _say(f"  FAILED: {exc}")
        return 1
    finally:
        for e in envoy_procs:
            e.stop()
        for _, p in reversed(procs):
            p.stop()
        for b in demo + walk:
            b.stop()
        etcd.stop()
        (state / STATE_FILE).unlink(missing_ok=True)
        _say("stopped.")


def _fixed(p: Proc) -> Callable[[], Proc | None]:
    return lambda: p


def _member(m: EtcdMember) -> Callable[[], Proc | None]:
    return lambda: m.proc


class _Component:
    """One supervised process of the local cluster: noticed when it dies, started again with
    back-off (see the module docstring)."""

    def __init__(self, name: str, proc: Callable[[], Proc | None], start: Callable[[], None]) -> None:
        self.name, self._proc, self._start = name, proc, start
        self.started = time.monotonic()
        self.backoff = BACKOFF_MIN
        self.restart_at: float | None = None
        self.failed = False
        self.restarts = 0

    def check(self, never: bool) -> bool:
        """Look at the process once; True when it was just started again."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now < self.restart_at:
                return False
            self.restart_at = None
            try:
                self._start()
            except OSError as exc:
                _say(f"{self.name} could not be started again: {exc}")
                self._schedule(now)
                return False
            self.started, self.restarts = now, self.restarts + 1
            proc = self._proc()
            _say(f"{self.name} started again (pid {proc.pid if proc else '?'}, restart {self.restarts})")
            return True
        proc = self._proc()
        if proc is not None and proc.alive():
            return False
        status = exit_status(proc.popen.returncode if proc is not None and proc.popen is not None else None)
        where = f"log: {proc.log_path}\n{proc.tail()}" if proc is not None else "no log"
        _say(f"\n{self.name} exited unexpectedly ({status}); {where}")
        if never:
            self.failed = True
            return False
        if now - self.started >= STABLE_AFTER:
            self.backoff = BACKOFF_MIN
        self._schedule(now)
        return False

    def _schedule(self, now: float) -> None:
        delay = self.backoff
        self.backoff = min(delay * 2, BACKOFF_MAX)
        self.restart_at = now + delay
        _say(f"  starting {self.name} again in {delay:.1f}s; the rest keeps running (--restart never stops instead)")


def _summary(doc: dict[str, Any], state: Path) -> str:
    lines = [
        "",
        "lbcp is up.",
        f"  console     {doc['admin_api']}/ui   (the fleet live, in a browser)",
        f"  admin API   {doc['admin_api']}   (OpenAPI docs: {doc['admin_api']}/docs)",
        f"  xDS         {', '.join(doc['xds'])}",
        f"  etcd        {', '.join(doc['etcd'])}",
        f"  front door  {doc['dns']['name']} on {doc['dns']['address']} (lbcp dns: the Envoys in service)",
    ]
    for e in doc["envoys"]:
        lines.append(
            f"  {e['node_id']:<11} {e['address']:<11} listener {e['own_listener'] or '-'} "
            f"(and {e['listener'] or '-'})   admin {e['admin']}"
        )
    lines += [
        f"  metrics     {doc['metrics']['admin_api']}, {', '.join(doc['metrics']['xds'])}",
        f"  state       {state / STATE_FILE}   logs {doc['logs']}",
        "",
        "Try:",
    ]
    listener = doc["envoys"][0]["listener"] if doc["envoys"] else None
    if listener:
        lines += [
            f"  curl -s -H 'x-user-id: alice' http://{listener}/        # the same user always lands on the same "
            "backend",
            "  .venv/bin/lbcp ring lookup web alice                  # ... which the ring predicts",
            f"  WebSocket: ws://{listener}/ greets with the backend's name, then echoes",
        ]
    lines += [
        f"  export LBCP_API={doc['admin_api']}",
        "  .venv/bin/lbcp get clusters",
        "  .venv/bin/lbcp backend add web web-9 127.0.0.1:9009 --weight 2",
        "  .venv/bin/lbcp ring watch web --key alice",
        f"  curl -s {doc['admin_api']}/v1/fleet",
        f"  dig @127.0.0.1 -p {doc['dns']['address'].rsplit(':', 1)[1]} {doc['dns']['name']}   # the front door: "
        "the Envoys' own addresses, most headroom first",
        "  .venv/bin/lbcp node drain envoy-0 --wait 10              # ... drops an Envoy from it, connections stay",
        "  .venv/bin/lbcp node drain envoy-0 --evacuate --rate 50 --wait 60   # ... then moves them off, paced",
        "  .venv/bin/lbcp fleet rebalance default --rate 50 --wait 60          # even out the Envoys' connections",
        "",
        "Ctrl-C stops everything (or `lbcp down` if started with --detach).",
    ]
    return "\n".join(lines)


# -- background mode -------------------------------------------------------------------------


def alive(pid: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def up_detached(argv: list[str], state_dir: str, timeout: float = 120.0) -> int:
    """Run `lbcp up` (argv without --detach) in a new session; return when it is ready or failed."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "up.log"
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            _lbcp_argv("--state-dir", str(state), *argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    shown = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        print(text[shown:], end="", flush=True)
        shown = len(text)
        if child.poll() is not None:
            print(f"\nlbcp up exited with status {child.returncode}; log: {log_path}", file=sys.stderr)
            return 1
        if (state / STATE_FILE).exists() and "lbcp is up." in text:
            print(
                f"\nRunning in the background (pid {child.pid}, log {log_path}). Stop it with: "
                f"lbcp --state-dir {state_dir} down",
                flush=True,
            )
            return 0
        time.sleep(0.2)
    print(f"lbcp up did not become ready in {timeout:.0f}s; stopping it (log: {log_path})", file=sys.stderr)
    os.killpg(child.pid, signal.SIGTERM)
    return 1


def down(state_dir: str, timeout: float = 30.0) -> int:
    """Stop a cluster started by `lbcp up`: SIGTERM to its supervisor, then every PID it
    recorded that is still alive (SIGKILL after `timeout`)."""
    state = Path(state_dir).resolve()
    path = state / STATE_FILE
    if not path.exists():
        print(f"no cluster running from {state} (no {STATE_FILE})")
        return 0
    doc = json.loads(path.read_text())
    pids = doc.get("pids", {})
    supervisor = pids.get("supervisor", 0)
    children = [pids.get("admin_api", 0), *pids.get("etcd", []), *pids.get("others", [])]
    if alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        _wait_gone([supervisor], timeout)
    left = [p for p in children if alive(p)]
    for p in left:  # the supervisor died before stopping them (e.g. it was SIGKILLed)
        try:
            os.killpg(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if left and not _wait_gone(left, 10):
        for p in left:
            if alive(p):
                os.killpg(p, signal.SIGKILL)
    still = [p for p in [supervisor, *children] if alive(p)]
    path.unlink(missing_ok=True)
    if still:
        print(f"could not stop PIDs {still}", file=sys.stderr)
        return 1
    print(f"stopped the cluster from {state}")
    return 0


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False
