"""Cluster and listener policies through one real Envoy: access logs (json, text, tcp),
OpenTelemetry tracing (to a collector address and to a cluster) received by an OTLP/gRPC
receiver on loopback, the retry budget refusing retries, and slow start ramping a new
backend's share up.

The module shares one world (etcd prefix, admin API, xDS replica, Envoy, backends, OTLP
receiver), set up once: the policies live on different clusters and listeners of the same
intent. Slow start runs last: the cluster it measures is created with the world, so the
hosts it starts with are out of their own window by then (Envoy starts every host present at
a cluster's creation in slow start, together).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import EnvoyProcess, EtcdCluster, free_port
from controlplane.etcd import EtcdConfig
from tests.conftest import _replica_config, make_app, wait_for
from tests.otlp import OtlpReceiver

RAMP_WINDOW = 8.0  # seconds: the slow-start window measured below
JSON_FIELDS = {
    "status": "%RESPONSE_CODE%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "test_id": "%REQ(X-TEST-ID)%",
    "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "summary": "%REQ(:METHOD)% -> %RESPONSE_CODE%",
    "literal": "100%%",
}
TCP_FIELDS = {
    "upstream": "%UPSTREAM_HOST%",
    "cluster": "%UPSTREAM_CLUSTER%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "received": "%BYTES_RECEIVED%",
}


@dataclass
class World:
    api: httpx.AsyncClient
    envoy: EnvoyProcess
    backends: list[DemoBackend]
    otlp: OtlpReceiver
    logs: Path
    ports: dict[str, int]
    dead_port: int
    ramp_ready_at: float = 0.0  # loop time the ramp cluster's first hosts were serving

    def url(self, listener: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}{path}"


def _intent(w: World) -> list[dict[str, Any]]:
    def backends(names: list[str]) -> list[dict[str, Any]]:
        by_name = {b.name: b for b in w.backends}
        return [{"name": n, "address": "127.0.0.1", "port": by_name[n].port} for n in names]

    cluster = {"connect_timeout": "1s"}
    ops: list[dict[str, Any]] = [
        {"op": "put", "kind": "cluster", "name": "web", "body": cluster},
        {"op": "replace_backends", "cluster": "web", "body": backends(["b0", "b1"])},
        {
            "op": "put",
            "kind": "cluster",
            "name": "ramp",
            "body": {
                **cluster,
                "slow_start": {"window": f"{RAMP_WINDOW:g}s", "aggression": 1, "min_weight_percent": 5},
            },
        },
        {"op": "replace_backends", "cluster": "ramp", "body": backends(["b0", "b1", "b2"])},
        {"op": "put", "kind": "cluster", "name": "otel", "body": {**cluster, "protocol": "http2"}},
        {
            "op": "replace_backends",
            "cluster": "otel",
            "body": [{"name": "otlp", "address": "127.0.0.1", "port": w.otlp.port}],
        },
    ]
    # Two clusters on a port where nothing listens: every try is a connect failure. One with a
    # retry budget of nothing (every retry refused), one without (Envoy's defaults allow them).
    for name, breakers in (("budget", {"retry_budget": {"percent": 0, "min_concurrency": 0}}), ("nobudget", {})):
        ops += [
            {"op": "put", "kind": "cluster", "name": name, "body": {**cluster, "circuit_breakers": breakers}},
            {
                "op": "replace_backends",
                "cluster": name,
                "body": [{"name": "gone", "address": "127.0.0.1", "port": w.dead_port}],
            },
        ]
    json_log = {"format": "json", "fields": JSON_FIELDS, "path": str(w.logs / "http.json.log")}
    listeners = {
        # json access log; spans to a collector by address (no cluster)
        "pol": {
            "access_log": json_log,
            "tracing": {
                "collector": {"address": "127.0.0.1", "port": w.otlp.port},
                "sampling_percent": 100,
                "service_name": "edge-collector",
            },
        },
        # Envoy's default text line; spans through the http2 cluster `otel`
        "plain": {
            "access_log": {"path": str(w.logs / "http.text.log")},
            "tracing": {"cluster": "otel", "sampling_percent": 100, "service_name": "edge-cluster"},
        },
        "tcp": {
            "protocol": "tcp",
            "cluster": "web",
            "access_log": {"format": "json", "fields": TCP_FIELDS, "path": str(w.logs / "tcp.json.log")},
        },
        "ramp": {},
    }
    for name, body in listeners.items():
        ops.append(
            {
                "op": "put",
                "kind": "listener",
                "name": name,
                "body": {"address": "127.0.0.1", "port": w.ports[name], **body},
            }
        )
    retries = {"attempts": 3, "on": ["connect-failure"]}
    routes = {
        "pol-main": {"listener": "pol", "backends": [{"cluster": "web"}]},
        "plain-main": {"listener": "plain", "backends": [{"cluster": "web"}]},
        "ramp-main": {"listener": "ramp", "backends": [{"cluster": "ramp"}]},
        "budget": {
            "listener": "ramp",
            "match": {"prefix": "/budget"},
            "backends": [{"cluster": "budget"}],
            "retries": retries,
        },
        "nobudget": {
            "listener": "ramp",
            "match": {"prefix": "/nobudget"},
            "backends": [{"cluster": "nobudget"}],
            "retries": retries,
        },
    }
    ops += [{"op": "put", "kind": "route", "name": n, "body": b} for n, b in routes.items()]
    return ops


@pytest.fixture(scope="module")
async def world(etcd_cluster: EtcdCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    from controlplane.xds.replica import XdsReplica

    etcd_config = EtcdConfig(
        endpoints=tuple(etcd_cluster.endpoints), prefix=f"/lbcp-test/policy-{uuid.uuid4().hex[:8]}/v1/", timeout=3.0
    )
    root = tmp_path_factory.mktemp("policy")
    logs = root / "logs"
    logs.mkdir()
    backends = [DemoBackend(f"b{i}") for i in range(4)]
    otlp = OtlpReceiver().start()
    app = make_app(etcd_config)
    replica = XdsReplica(_replica_config(etcd_config, "policy-replica"))
    envoy: EnvoyProcess | None = None
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lbcp.test") as api:
                await replica.start()
                ports = {name: free_port() for name in ("pol", "plain", "tcp", "ramp")}
                envoy = EnvoyProcess(root / "envoy", "policy-envoy", "default", [("127.0.0.1", replica.port)])
                w = World(api, envoy, backends, otlp, logs, ports, dead_port=free_port())
                r = await api.post("/v1/batch", json={"operations": _intent(w)})
                assert r.status_code == 200, r.text
                await asyncio.to_thread(envoy.start)
                loop = asyncio.get_running_loop()
                await wait_for(lambda: _ok(w.url("ramp")), 30, "the ramp listener serving")
                w.ramp_ready_at = loop.time()
                for name in ("pol", "plain"):
                    await wait_for(lambda n=name: _ok(w.url(n)), 15, f"listener {name} serving")
                yield w
    finally:
        if envoy is not None:
            envoy.stop()
        await replica.stop(grace=0)
        otlp.stop()
        for b in backends:
            b.stop()


async def _ok(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as c:
            return (await c.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


def _counter(envoy: EnvoyProcess, name: str) -> int:
    return envoy.stats("^" + re.escape(name) + "$").get(name, 0)


async def _flushed_lines(w: World, path: Path, want: int, what: str) -> list[str]:
    """The log's lines once it holds at least `want`: Envoy buffers access logs (flushing every
    10 s); the admin's /reopen_logs makes it write them out now."""
    lines: list[str] = []

    async def enough() -> bool:
        nonlocal lines
        await asyncio.to_thread(httpx.post, f"{w.envoy.admin}/reopen_logs", timeout=5)
        await asyncio.sleep(0.1)
        lines = path.read_text().splitlines() if path.exists() else []
        return len(lines) >= want

    await wait_for(enough, 15, what)
    return lines


async def test_access_logs_json_text_and_tcp(world: World) -> None:
    w = world
    by_port = {b.port: b.name for b in w.backends}
    answered: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=5) as c:
        for i in range(6):
            r = await c.get(w.url("pol", f"/log/{i}?q=1"), headers={"x-test-id": f"t{i}"})
            assert r.status_code == 200
            answered[f"t{i}"] = r.headers["x-backend"]
        for i in range(3):
            assert (await c.get(w.url("plain", f"/text/{i}"))).status_code == 200

    # JSON: one object per request, every configured field, typed where Envoy keeps a type.
    lines = await _flushed_lines(w, w.logs / "http.json.log", 6, "6 json access log lines")
    entries = {e["test_id"]: e for e in map(json.loads, lines) if e.get("test_id")}
    assert set(entries) == set(answered), lines
    for tid, e in entries.items():
        assert set(e) == set(JSON_FIELDS), e
        i = tid[1:]
        assert e["status"] == 200  # a lone operator keeps its type: a number
        assert e["method"] == "GET"
        assert e["path"] == f"/log/{i}?q=1"
        assert e["cluster"] == "web"
        host, _, port = e["upstream"].rpartition(":")
        assert host == "127.0.0.1" and by_port[int(port)] == answered[tid], e
        assert e["summary"] == "GET -> 200"  # text around operators: a string
        assert e["literal"] == "100%"  # '%%' is a literal '%'
    print("json access log line:", lines[-1])

    # Text: Envoy's default line.
    text = await _flushed_lines(w, w.logs / "http.text.log", 3, "3 text access log lines")
    for i in range(3):
        assert any(f'"GET /text/{i} HTTP/1.1" 200 ' in line for line in text), text
    print("text access log line:", text[-1])

    # TCP: one line per connection, when it closes.
    request = b"GET /over-tcp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", w.ports["tcp"])
    writer.write(request)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    assert reply.startswith(b"HTTP/1.1 200"), reply
    answered_by = next(h.split(b":", 1)[1].strip().decode() for h in reply.split(b"\r\n") if h.startswith(b"x-backend"))
    (line,) = await _flushed_lines(w, w.logs / "tcp.json.log", 1, "a tcp access log line")
    print("tcp access log line:", line)
    tcp = json.loads(line)
    assert set(tcp) == set(TCP_FIELDS), tcp
    assert tcp["cluster"] == "web"
    assert by_port[int(tcp["upstream"].rpartition(":")[2])] == answered_by
    assert tcp["client"].startswith("127.0.0.1:")
    assert tcp["received"] == len(request)

    # Envoy took every listener and cluster as sent.
    assert _counter(w.envoy, "listener_manager.lds.update_rejected") == 0
    assert _counter(w.envoy, "cluster_manager.cds.update_rejected") == 0


async def test_tracing_to_a_collector_and_through_a_cluster(world: World) -> None:
    w = world
    paths = {"pol": [f"/traced/c{i}" for i in range(8)], "plain": [f"/traced/k{i}" for i in range(8)]}

    def traced(service: str) -> set[str]:
        return {
            a.value.string_value.split("/", 3)[-1]
            for s, span in w.otlp.spans()
            if s == service
            for a in span.attributes
            if a.key == "http.url"
        }

    async def arrived() -> bool:
        return {p[1:] for p in paths["pol"]} <= traced("edge-collector") and {p[1:] for p in paths["plain"]} <= traced(
            "edge-cluster"
        )

    # One keep-alive connection per listener: one Envoy worker, whose tracer exports each time
    # it holds 5 spans (its min_flush_spans), else on a 5 s timer. Until every request's span
    # has arrived, one more request per listener (at most 40) fills the worker's batch.
    async with httpx.AsyncClient(timeout=5) as pol, httpx.AsyncClient(timeout=5) as plain:
        clients = {"pol": pol, "plain": plain}
        for listener, ps in paths.items():
            for p in ps:
                assert (await clients[listener].get(w.url(listener, p))).status_code == 200
        for _ in range(40):
            await asyncio.sleep(0.25)
            if await arrived():
                break
            for listener, c in clients.items():
                assert (await c.get(w.url(listener, "/traced/filler"))).status_code == 200
    await wait_for(arrived, 10, "every request's span at the OTLP receiver")
    services = Counter(s for s, _ in w.otlp.spans())
    assert set(services) == {"edge-collector", "edge-cluster"}, services
    print("spans received per service.name:", dict(services))
    # The collector given by address needed no cluster: Envoy has the intent's clusters only.
    clusters = w.envoy.config_dump("dynamic_active_clusters")["configs"]
    assert {c["cluster"]["name"] for c in clusters} == {"web", "ramp", "otel", "budget", "nobudget"}


async def test_retry_budget_refuses_retries(world: World) -> None:
    w = world
    # Envoy has the budget (and the cluster without one has none).
    clusters = {c["cluster"]["name"]: c["cluster"] for c in w.envoy.config_dump("dynamic_active_clusters")["configs"]}
    (thresholds,) = clusters["budget"]["circuit_breakers"]["thresholds"]
    assert thresholds["retry_budget"] == {"budget_percent": {}, "min_retry_concurrency": 0}, thresholds
    (plain,) = clusters["nobudget"]["circuit_breakers"]["thresholds"]
    assert "retry_budget" not in plain

    n = 5
    async with httpx.AsyncClient(timeout=10) as c:
        for prefix in ("/budget", "/nobudget"):
            for _ in range(n):
                assert (await c.get(w.url("ramp", prefix))).status_code == 503
    stats = w.envoy.stats("^cluster\\.(no)?budget\\.upstream_rq_retry")
    # With a budget of nothing, every retry the route asked for was refused...
    assert stats.get("cluster.budget.upstream_rq_retry_overflow", 0) == n, stats
    assert stats.get("cluster.budget.upstream_rq_retry", 0) == 0, stats
    # ...while the same route policy without a budget retried (3 more tries per request).
    assert stats.get("cluster.nobudget.upstream_rq_retry", 0) == 3 * n, stats
    assert stats.get("cluster.nobudget.upstream_rq_retry_overflow", 0) == 0, stats
    print("retry stats:", stats)


async def test_route_changes_leave_the_listener_alone(world: World) -> None:
    """Tracing and access logs live in the listener; a route change (one that adds retries)
    reaches Envoy over RDS and never replaces the listener."""
    w = world
    before = _counter(w.envoy, "listener_manager.listener_modified")
    body = {
        "listener": "pol",
        "match": {"prefix": "/moved"},
        "backends": [{"cluster": "ramp"}],
        "retries": {"attempts": 2},
    }
    assert (await w.api.put("/v1/routes/pol-moved", json=body)).status_code == 201

    async def routed() -> bool:
        dump = await asyncio.to_thread(w.envoy.config_dump, "dynamic_route_configs")
        return "pol-moved" in json.dumps(dump)

    await wait_for(routed, 15, "the new route at Envoy")
    async with httpx.AsyncClient(timeout=5) as c:
        assert (await c.get(w.url("pol", "/moved"))).status_code == 200
    assert _counter(w.envoy, "listener_manager.listener_modified") == before


async def test_slow_start_ramps_a_new_backend_up(world: World) -> None:
    w = world
    loop = asyncio.get_running_loop()
    # The cluster's first hosts started their own window at its creation: let it pass.
    await asyncio.sleep(max(0.0, w.ramp_ready_at + RAMP_WINDOW + 0.5 - loop.time()))
    b3 = w.backends[3]
    r = await w.api.put(f"/v1/clusters/ramp/backends/{b3.name}", json={"address": "127.0.0.1", "port": b3.port})
    assert r.status_code == 201

    async def added() -> bool:
        text = (await asyncio.to_thread(httpx.get, f"{w.envoy.admin}/clusters", timeout=5)).text
        return f"ramp::127.0.0.1:{b3.port}::" in text

    await wait_for(added, 15, "the new backend in Envoy's ramp cluster")
    added_at = loop.time()
    # Traffic through the whole window and a little after, in 1 s buckets (bounded in count):
    # b3's share of each. One keep-alive connection: one worker, one load balancer.
    buckets: list[tuple[float, int, int]] = []  # (seconds since added, requests, to b3)
    async with httpx.AsyncClient(timeout=5) as c:
        while loop.time() - added_at < RAMP_WINDOW + 2.5 and len(buckets) < 20:
            start, total, hits = loop.time(), 0, 0
            while loop.time() - start < 1.0 and total < 500:
                resp = await c.get(w.url("ramp"))
                assert resp.status_code == 200
                total += 1
                hits += resp.headers["x-backend"] == b3.name
            buckets.append((round(start - added_at, 1), total, hits))
    print("slow start (t s, requests, to new backend):", buckets)
    early = [b for b in buckets if b[0] < 2.0]  # buckets that start in its first 2 s (end before 3 s)
    late = [b for b in buckets if b[0] >= RAMP_WINDOW + 0.2]
    assert early and late, buckets
    n_early, hits_early = sum(b[1] for b in early), sum(b[2] for b in early)
    n_late, hits_late = sum(b[1] for b in late), sum(b[2] for b in late)
    early_share, late_share = hits_early / n_early, hits_late / n_late
    print(f"slow start: share of the new backend {early_share:.1%} in its first 2 s, {late_share:.1%} after the window")

    # Out of its window, b3 is one of 4 equal hosts: 25 %. Before 3 s its weight is at most
    # 3/8 of the others' (5 % minimum, linear ramp over 8 s): at most 0.375 / 3.375 = 11 % of
    # the traffic. Round robin is deterministic; the bounds are binomial with 4 sigma anyway,
    # so that a slow machine's few requests cannot fail them by chance.
    def bound(n: int, p: float) -> float:
        return 4 * (n * p * (1 - p)) ** 0.5 + 1

    assert hits_late >= n_late * 0.25 - bound(n_late, 0.25), buckets
    assert hits_early <= n_early * 0.111 + bound(n_early, 0.111), buckets
    assert early_share < late_share, buckets  # the direction of the ramp
