"""A new user's first minutes: `lbcp up`, apply intent with the CLI, list it, stop cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from api.localcluster.cluster import alive as _alive
from api.localcluster.cluster import http_ok
from api.localcluster.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _lbcp(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "api.cli", "--state-dir", str(state), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"lbcp {' '.join(args)} failed: {r.stdout}\n{r.stderr}")
    return r


def _http() -> httpx.Client:
    """A client for many requests (httpx.get builds a client, SSL context included, each
    time); `connection: close` keeps each request on a connection of its own, as before, so
    the kernel spreads them over the Envoys sharing a listener."""
    return httpx.Client(timeout=5, headers={"connection": "close"})


@pytest.fixture
def local_cluster(tmp_path: Path, request: pytest.FixtureRequest):
    """`lbcp up` in the foreground; `@pytest.mark.parametrize("local_cluster", [[ARGS]],
    indirect=True)` adds arguments."""
    state = tmp_path / "state"
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "--state-dir", str(state), "up", *getattr(request, "param", [])],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: (state / "cluster.json").exists() or proc.poll() is not None, 60, what="cluster.json")
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        yield state, proc, tmp_path / "up.log"
    finally:
        if proc.poll() is None:
            # A failed test left it running: stop it and everything it started, by PID
            # (its children run in sessions of their own, so killing its group is not enough).
            from api.localcluster.cluster import down

            if (state / "cluster.json").exists():
                down(str(state), timeout=15)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_up_apply_get_down(local_cluster) -> None:
    state, proc, log = local_cluster
    doc = json.loads((state / "cluster.json").read_text())
    assert doc["admin_api"].startswith("http://127.0.0.1:") and doc["etcd"]

    assert set(doc) >= {"admin_api", "xds", "etcd", "envoys", "backends", "token", "metrics", "dns"}
    assert len(doc["xds"]) == 2 and len(doc["envoys"]) == 2 and len(doc["backends"]) == 3
    assert all(set(e) == {"node_id", "address", "listener", "own_listener", "admin"} for e in doc["envoys"])
    assert [e["address"] for e in doc["envoys"]] == ["127.0.1.1", "127.0.1.2"]
    assert all(set(b) == {"name", "address"} for b in doc["backends"])
    listener = doc["envoys"][0]["listener"]
    with _http() as http:
        # Both Envoys share the listener (SO_REUSEPORT): fresh connections reach each of them.
        for _ in range(40):
            assert http.get(f"http://{listener}/").status_code == 200
        for e in doc["envoys"]:
            stats = http.get(f"{e['admin']}/stats", params={"filter": "^http.http.downstream_rq_total$"}).text
            assert int(stats.split(":")[1]) > 0, (e["node_id"], stats)
        # A WebSocket through an Envoy reaches a demo backend, which greets and echoes.
        with connect(f"ws://{listener}/chat", additional_headers={"x-user-id": "ws-user"}, open_timeout=5) as ws:
            hello = ws.recv(timeout=5)
            assert hello in {"web-1", "web-2", "web-3"}
            ws.send("ping through envoy")
            assert ws.recv(timeout=5) == "ping through envoy"
        # Metrics endpoints listed in cluster.json answer.
        for url in [doc["metrics"]["admin_api"], *doc["metrics"]["xds"]]:
            assert "lbcp_" in http.get(url).text
        # The demo route answers through Envoy, and the same user always lands on the same backend.
        names = {http.get(f"http://{listener}/", headers={"x-user-id": f"user-{i}"}).text.strip() for i in range(30)}
        assert names <= {"web-1", "web-2", "web-3"} and len(names) >= 2
        alice = {http.get(f"http://{listener}/", headers={"x-user-id": "alice"}).text for _ in range(10)}
        assert len(alice) == 1

    out = _lbcp(state, "apply", "-f", "docs/examples/demo.yaml").stdout
    assert "cluster shop created" in out and "backends of shop: +3" in out and "route shop created" in out
    _lbcp(state, "backend", "add", "shop", "shop-4", "127.0.0.1:9104", "--weight", "2")
    _lbcp(state, "backend", "drain", "shop", "shop-2")

    table = _lbcp(state, "get", "clusters").stdout.splitlines()
    assert table[0].split() == ["NAME", "PROTOCOL", "LB", "BACKENDS", "REVISION"]
    assert table[1].split()[:4] == ["shop", "http1", "ring_hash", "4"]
    assert table[2].split()[:4] == ["web", "http1", "maglev", "3"]
    backends = json.loads(_lbcp(state, "get", "backends", "shop", "-o", "json").stdout)
    assert {b["name"]: b["admin_state"] for b in backends} == {
        "shop-1": "ready",
        "shop-2": "drain",
        "shop-3": "ready",
        "shop-4": "ready",
    }
    ring = _lbcp(state, "ring", "show", "web").stdout
    assert "web: maglev, table 65537" in ring and "web-1" in ring
    looked = _lbcp(state, "ring", "lookup", "web", "alice").stdout.split()
    assert looked == ["alice", next(iter(alice)).strip()]  # the ring says where Envoy sent alice
    fleet = httpx.get(f"{doc['admin_api']}/v1/fleet", timeout=5).json()
    assert sorted(n["node_id"] for n in fleet["nodes"]) == ["envoy-0", "envoy-1"]
    # The same ring over xDS (lbcp.v1.HashRing), as a non-Envoy consumer sees it.
    watched = _lbcp(state, "ring", "watch", "web", "--key", "alice", "--count", "1").stdout
    assert "web: maglev revision" in watched and "65537 slots" in watched
    assert f"key 'alice' -> {next(iter(alice)).strip()}" in watched

    # The front tier for the two local Envoys: both in service, each at its own address.
    dns = _lbcp(
        state, "frontdoor", "render", "--format", "dns", "--fleet", "default", "--zone", "example.test", "--name", "www"
    ).stdout
    assert "\tIN\tA\t127.0.1.1\t; envoy-0" in dns and "\tIN\tA\t127.0.1.2\t; envoy-1" in dns, dns
    _fleet_views_cli(state, doc)
    _front_door_cli(state, doc)
    _moves_cli(state, doc)
    _certificates_cli(state, doc)
    bad = _lbcp(state, "backend", "add", "nope", "x", "127.0.0.1:1", check=False)
    assert bad.returncode == 1 and "cluster-not-found" in bad.stderr

    pids = [doc["pids"]["admin_api"], *doc["pids"]["etcd"], *doc["pids"]["others"]]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    assert not (state / "cluster.json").exists()


def test_detach_and_down(tmp_path: Path) -> None:
    state = tmp_path / "bg"
    r = _lbcp(state, "up", "--detach", "--envoys", "1", "--backends", "1", "--etcd-nodes", "3")
    assert "lbcp is up." in r.stdout and "lbcp --state-dir" in r.stdout
    doc = json.loads((state / "cluster.json").read_text())
    assert len(doc["etcd"]) == 3 and len(doc["backends"]) == 1 and len(doc["envoys"]) == 1
    pids = [doc["pids"]["supervisor"], doc["pids"]["admin_api"], *doc["pids"]["etcd"], *doc["pids"]["others"]]
    try:
        assert all(_alive(p) for p in pids)
        listener = doc["envoys"][0]["listener"]
        assert httpx.get(f"http://{listener}/", timeout=5).text.strip() == "web-1"
        # A second `up` on the same state dir refuses instead of starting a twin.
        again = _lbcp(state, "up", check=False)
        assert again.returncode == 1 and "already running" in again.stdout
        out = _lbcp(state, "down").stdout
        assert "stopped" in out
        assert not any(_alive(p) for p in pids), [p for p in pids if _alive(p)]
        assert not (state / "cluster.json").exists()
        assert "no cluster running" in _lbcp(state, "down").stdout
    finally:
        for p in pids:
            if _alive(p):
                os.killpg(p, signal.SIGKILL)


def test_down_after_the_supervisor_was_killed(tmp_path: Path) -> None:
    """`lbcp up` SIGKILLed leaves its children; `lbcp down` still stops them by PID."""
    state = tmp_path / "orphans"
    _lbcp(state, "up", "--detach", "--envoys", "1", "--no-demo")
    doc = json.loads((state / "cluster.json").read_text())
    assert doc["backends"] == [] and doc["envoys"][0]["listener"] is None
    children = [doc["pids"]["admin_api"], *doc["pids"]["etcd"], *doc["pids"]["others"]]
    try:
        os.kill(doc["pids"]["supervisor"], signal.SIGKILL)
        wait_until(lambda: not _alive(doc["pids"]["supervisor"]), 10, what="supervisor gone")
        # etcd, the API and the replicas outlive it (Envoy gets SIGTERM when its parent dies).
        assert all(_alive(p) for p in [doc["pids"]["admin_api"], *doc["pids"]["etcd"]])
        _lbcp(state, "down")
        assert not any(_alive(p) for p in children)
    finally:
        for p in children:
            if _alive(p):
                os.killpg(p, signal.SIGKILL)


@pytest.mark.parametrize("local_cluster", [["--restart", "never"]], indirect=True)
def test_restart_never_takes_the_cluster_down(local_cluster) -> None:
    """An xDS replica killed under `lbcp up --restart never`: it says which one and where its
    log is, stops everything else and exits 1."""
    state, proc, log = local_cluster
    doc = json.loads((state / "cluster.json").read_text())
    xds_pid = doc["pids"]["others"][1]  # admin API first, then the replicas
    os.killpg(xds_pid, signal.SIGKILL)
    assert proc.wait(30) == 1
    out = log.read_text()
    assert "xDS replica xds-0 exited unexpectedly (signal SIGKILL)" in out and "xds-0.log" in out, out[-2000:]
    pids = [doc["pids"]["admin_api"], *doc["pids"]["etcd"], *doc["pids"]["others"]]
    wait_until(lambda: not any(_alive(p) for p in pids), 15, what="everything stopped")


def _serves(listener: str) -> bool:
    try:
        return httpx.get(f"http://{listener}/", headers={"connection": "close"}, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_survives_a_dead_replica_and_a_dead_etcd(tmp_path: Path) -> None:
    """`lbcp up --detach` as a supervisor: kill -9 an xDS replica and its Envoy re-homes to the
    other and keeps serving, then the replica is started again; kill -9 etcd and the Envoys
    keep serving while writes get 503, then etcd is started again and writes reach every Envoy."""
    state = tmp_path / "sup"
    _lbcp(state, "up", "--detach", "--envoys", "2", "--backends", "2")
    doc = json.loads((state / "cluster.json").read_text())
    api, log = doc["admin_api"], state / "up.log"
    started = [doc["pids"]["supervisor"], *doc["pids"]["etcd"], *doc["pids"]["others"]]
    own = [e["own_listener"] for e in doc["envoys"]]

    def fleet() -> dict:
        return {n["node_id"]: n for n in httpx.get(f"{api}/v1/fleet", timeout=5).json()["nodes"]}

    def pids() -> dict:
        return json.loads((state / "cluster.json").read_text())["pids"]

    try:
        wait_until(lambda: len(fleet()) == 2, 30, what="both Envoys connected")
        home = fleet()["envoy-0"]["replica"]
        i = int(home.removeprefix("xds-"))
        other = f"xds-{1 - i}"
        xds_pid = pids()["others"][1 + i]  # the admin API first, then the replicas
        os.killpg(xds_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while fleet().get("envoy-0", {}).get("replica") != other:
            assert all(_serves(x) for x in own), "an Envoy stopped serving while its replica was down"
            assert time.monotonic() < deadline, f"envoy-0 did not re-home: {fleet().get('envoy-0')}"
            time.sleep(0.2)
        back = lambda: pids()["others"][1 + i] != xds_pid and _alive(pids()["others"][1 + i])  # noqa: E731
        wait_until(back, 30, what=f"{home} back")
        wait_until(lambda: http_ok(doc["metrics"]["xds"][i]), 30, what=f"{home} metrics")
        text = log.read_text()
        assert f"xDS replica {home} exited unexpectedly (signal SIGKILL)" in text, text[-2000:]
        assert f"xDS replica {home} started again" in text
        # New names for a live demo backend: the Envoys' answers stay 200 throughout.
        host, port = doc["backends"][0]["address"].rsplit(":", 1)
        body = {"name": "after-replica", "address": host, "port": int(port)}
        r = httpx.post(f"{api}/v1/clusters/web/backends", params={"wait": "acked", "timeout": "20s"}, json=body)
        assert r.status_code == 201 and r.json()["rollout"]["complete"], r.text
        assert sorted(r.json()["rollout"]["acked"]) == ["envoy-0", "envoy-1"]

        etcd_pid = pids()["etcd"][0]
        os.killpg(etcd_pid, signal.SIGKILL)
        refused = None
        deadline = time.monotonic() + 5
        while refused is None and time.monotonic() < deadline:
            w = httpx.put(f"{api}/v1/clusters/while-down", json={}, timeout=10)
            if w.status_code == 503:
                refused = w.json()
        assert refused and refused["code"] == "store-unavailable", "no write was refused while etcd was down"
        assert all(_serves(x) for x in own), "an Envoy stopped serving while etcd was down"
        wait_until(lambda: pids()["etcd"][0] != etcd_pid and _alive(pids()["etcd"][0]), 30, what="etcd back")
        assert "etcd member etcd0 exited unexpectedly (signal SIGKILL)" in log.read_text()

        def write_acked() -> bool:
            body = {"name": "after-etcd", "address": host, "port": int(port)}
            params = {"wait": "acked", "timeout": "5s"}
            r = httpx.put(f"{api}/v1/clusters/web/backends/after-etcd", params=params, json=body, timeout=15)
            return r.status_code in (200, 201) and r.json()["rollout"]["complete"]

        wait_until(write_acked, 60, interval=1, what="a write acked by every Envoy after etcd came back")
        assert all(_serves(x) for x in own)
        assert _alive(doc["pids"]["supervisor"])
        # What `make run` prints is lbcp's own account (and a dead component's log tail), not
        # library log lines: httpx logs every request at INFO.
        assert "HTTP Request:" not in log.read_text() and "httpx" not in log.read_text()
    finally:
        now = pids() if (state / "cluster.json").exists() else {}
        _lbcp(state, "down", check=False)
        for p in [*started, *now.get("etcd", []), *now.get("others", [])]:  # restarted ones too
            if _alive(p):
                os.killpg(p, signal.SIGKILL)


def _fleet_views_cli(state: Path, doc: dict) -> None:
    """lbcp fleet (per-type SYNCED/STALE/REJECTED), fleet show, config and config --diff
    against the Envoys' own /config_dump; global flags after the subcommand; no log lines."""

    def synced() -> bool:
        rows = _lbcp(state, "fleet", "-o", "wide").stdout.splitlines()
        return len(rows) == 3 and all(r.split()[5:9] == ["SYNCED"] * 4 for r in rows[1:])

    wait_until(synced, 30, interval=0.5, what="every Envoy SYNCED on CDS, LDS, EDS and RDS")
    r = _lbcp(state, "fleet", "-o", "wide")
    assert r.stdout.splitlines()[0].split()[5:10] == ["CDS", "LDS", "EDS", "RDS", "ACKED"] and r.stderr == ""
    shown = subprocess.run(
        [sys.executable, "-m", "api.cli", "fleet", "show", "envoy-0", "--state-dir", str(state)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert any(line.split()[:2] == ["CDS", "SYNCED"] for line in shown.stdout.splitlines()), shown.stdout
    config = json.loads(_lbcp(state, "config", "envoy-0", "--type", "cds").stdout)
    assert set(config["types"]) == {"cds"}
    assert {"web", "shop"} <= {r["name"] for r in config["types"]["cds"]["resources"]}
    same = _lbcp(state, "config", "envoy-0", "--diff")
    assert "its config dump matches what lbcp serves" in same.stdout and same.stderr == ""
    # A write that waits for its rollout (a progress bar on stderr) and says who acked it.
    live = doc["backends"][0]["address"]
    waited = _lbcp(state, "backend", "add", "web", "web-9", live, "--weight", "2", "--wait", "20")
    assert "acked by every Envoy (2)" in waited.stdout, waited.stdout + waited.stderr
    gone = _lbcp(state, "backend", "remove", "web", "web-9", "--wait", "20")
    assert "acked by every Envoy (2)" in gone.stdout
    # envoy-1's dump differs from what envoy-0 is served: its listener binds its own address.
    other = _lbcp(state, "config", "envoy-0", "--diff", "--admin", doc["envoys"][1]["admin"], check=False)
    assert other.returncode == 1 and "+++ envoy/lds/http" in other.stdout and '"127.0.1.2"' in other.stdout


def _front_door_cli(state: Path, doc: dict) -> None:
    """lbcp node drain/undrain, frontdoor exabgp, frontdoor render --watch and lbcp dns
    against the running local cluster."""
    import dns.exception
    import dns.message
    import dns.query

    exabgp = ["frontdoor", "exabgp", "--node", "envoy-0", "--vip", "198.51.100.1", "--interval", "0.2", "--count", "1"]
    assert _lbcp(state, *exabgp).stdout == "announce route 198.51.100.1/32 next-hop self\n"
    out = _lbcp(state, "node", "drain", "envoy-0", "--reason", "test", "--wait", "20").stdout
    assert "withdrawn from the front tier" in out
    assert _lbcp(state, *exabgp).stdout == "withdraw route 198.51.100.1/32 next-hop self\n"
    dns_text = _lbcp(state, "frontdoor", "render", "--format", "dns").stdout
    assert "envoy-1" in dns_text and "envoy-0" not in dns_text
    # lbcp fleet: one row per Envoy, with why it is (not) in front of clients and its live load.
    rows = {r["node_id"]: r for r in json.loads(_lbcp(state, "fleet", "-o", "json").stdout)}
    assert rows["envoy-0"]["front_state"] == "drained" and rows["envoy-1"]["front_state"] == "in"
    assert rows["envoy-1"]["load"]["connections"] >= 0
    table = _lbcp(state, "fleet", "-o", "wide").stdout.splitlines()
    assert table[0].split()[:5] == ["NODE", "FLEET", "REPLICA", "ADDRESS", "FRONT"]
    assert any(line.split()[0] == "envoy-0" and "drained" in line.split() for line in table[1:])
    assert _lbcp(state, "node", "drain", "nobody", check=False).returncode == 1

    # A sidecar's watch: first render now (one Envoy), the next when envoy-0 is back.
    out_file = state / "frontdoor.nft"
    marker = state / "reloads"
    err = open(state / "watch.err", "w")
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api.cli",
            "--state-dir",
            str(state),
            "frontdoor",
            "render",
            "--format",
            "nftables",
            "--watch",
            "--interval",
            "0.2",
            "--count",
            "2",
            "-o",
            str(out_file),
            "--exec",
            f"sh -c 'echo reload >> {marker}'",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        wait_until(lambda: marker.exists(), 30, what="the first watched render")
        assert "1 Envoys in service (envoy-1)" in out_file.read_text()
        _lbcp(state, "node", "undrain", "envoy-0")
        assert watch.wait(30) == 0, (state / "watch.err").read_text()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)
        err.close()
    assert "2 Envoys in service (envoy-0, envoy-1)" in out_file.read_text()
    assert marker.read_text() == "reload\nreload\n"

    # lbcp up runs `lbcp dns` (its own process) for www.lbcp.test: a real query gets the
    # Envoys in service from etcd's fleet state.
    host, port = doc["dns"]["address"].rsplit(":", 1)

    def answered() -> bool:
        try:
            r = dns.query.udp(dns.message.make_query(doc["dns"]["name"], "A"), host, port=int(port), timeout=1)
        except (OSError, dns.exception.Timeout):
            return False
        return bool(r.answer) and {a.address for a in r.answer[0]} == {"127.0.1.1", "127.0.1.2"}

    wait_until(answered, 30, what="lbcp dns answering")
    tcp = dns.query.tcp(dns.message.make_query(doc["dns"]["name"], "A"), host, port=int(port), timeout=2)
    assert {a.address for a in tcp.answer[0]} == {"127.0.1.1", "127.0.1.2"}

    # The front door is real: a client that resolves the name and connects to the first
    # answer reaches the Envoy at that address, and no other.
    by_address = {e["address"]: e for e in doc["envoys"]}

    def requests(e: dict) -> int:
        text = httpx.get(f"{e['admin']}/stats", params={"filter": "^http.http.downstream_rq_total$"}, timeout=5).text
        return int(text.split(":")[1])

    before = {a: requests(e) for a, e in by_address.items()}
    chosen: dict[str, int] = {}
    listener_port = doc["envoys"][0]["listener"].rsplit(":", 1)[1]
    with _http() as http:
        for _ in range(10):
            r = dns.query.udp(dns.message.make_query(doc["dns"]["name"], "A"), host, port=int(port), timeout=2)
            first = r.answer[0][0].address
            chosen[first] = chosen.get(first, 0) + 1
            assert http.get(f"http://{first}:{listener_port}/").status_code == 200
    after = {a: requests(e) for a, e in by_address.items()}
    assert {a: after[a] - before[a] for a in by_address} == {a: chosen.get(a, 0) for a in by_address}


def _ws_state(ws, timeout: float) -> str:
    """'closed' if the peer closed the WebSocket (close frame, EOF or reset), 'open' if
    nothing came within `timeout`, 'message' if it is still carrying traffic."""
    try:
        ws.recv(timeout=timeout)
    except ConnectionClosed:
        return "closed"
    except TimeoutError:
        return "open"
    return "message"


def _moves_cli(state: Path, doc: dict) -> None:
    """`lbcp node drain --evacuate --wait` empties an Envoy at the asked rate and says so;
    `lbcp fleet` shows it; `lbcp fleet rebalance --wait` answers once the fleet is balanced."""
    envoy = doc["envoys"][1]
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(f"ws://{envoy['own_listener']}/", open_timeout=5)) for _ in range(30)]
        for ws in held:
            assert ws.recv(timeout=5) in {"web-1", "web-2", "web-3"}

        def load_seen() -> bool:
            rows = {r["node_id"]: r for r in json.loads(_lbcp(state, "fleet", "-o", "json").stdout)}
            return (rows[envoy["node_id"]].get("load") or {}).get("connections", 0) >= 30

        wait_until(load_seen, 20, what="the held connections in the fleet's load")
        out = _lbcp(state, "node", "drain", envoy["node_id"], "--evacuate", "--rate", "20", "--wait", "30")
        assert "evacuating at 20 connections/s" in out.stdout and "evacuated: no connections left" in out.stdout, out
        rows = {r["node_id"]: r for r in json.loads(_lbcp(state, "fleet", "-o", "json").stdout)}
        assert rows[envoy["node_id"]]["evacuation"]["state"] in ("evacuating", "evacuated")
        table = _lbcp(state, "fleet", "-o", "wide").stdout.splitlines()
        assert table[0].split()[-1] == "MOVING"
        assert any(line.startswith(envoy["node_id"]) and "left at 20/s" in line for line in table[1:]), table
        # Each held connection must have been closed by the evacuation: recv() raises
        # ConnectionClosed (a close frame, or EOF/reset) at once on a closed one. A timeout
        # means it is still open, and a message means it is still carrying traffic.
        deadline = time.monotonic() + 10
        states = [_ws_state(ws, max(0.05, deadline - time.monotonic())) for ws in held]
        assert states == ["closed"] * len(held), states
    _lbcp(state, "node", "undrain", envoy["node_id"])
    out = _lbcp(state, "fleet", "rebalance", "default", "--rate", "50", "--wait", "20").stdout
    assert "fleet default balanced" in out, out


def _certificates_cli(state: Path, doc: dict) -> None:
    """`lbcp apply` a certificate, then `lbcp get certificates` shows its days left."""
    import yaml

    from tests.certs import CA

    leaf = CA().issue("www.example.test", ["www.example.test"], days=20)
    path = state / "cert.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "certificate",
                "name": "site",
                "certificate_chain": leaf.cert_pem.decode(),
                "private_key": leaf.key_pem.decode(),
            }
        )
    )
    assert "certificate site created" in _lbcp(state, "apply", "-f", str(path)).stdout
    table = _lbcp(state, "get", "certificates").stdout.splitlines()
    assert table[0].split() == ["NAME", "SUBJECT", "SANS", "ISSUER", "NOT_AFTER", "DAYS_LEFT", "REVISION"]
    row = table[1].split()
    assert row[0] == "site" and row[2] == "DNS:www.example.test" and 19 < float(row[-2]) <= 20  # the issuer has spaces
    assert "PRIVATE KEY" not in _lbcp(state, "get", "certificates", "-o", "json").stdout
