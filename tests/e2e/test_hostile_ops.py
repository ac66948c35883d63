"""A node whose ops listener answers garbage is that node's problem only (issue 27, item 3).

For each hostile answer, an attacker's raw xDS client claims an `ops_port` served by a
hostile server written here (on its own loopback address, inside the fleet's allowed front
CIDR) and connects to the same replica as a real Envoy. The replica records the attacker's
failure (`load_error`, `front_health.error`) and counts it, while the real Envoy's live load
keeps being sampled at the interval, changes in its connections reach `/v1/fleet`, and its
`/healthcheck/fail` takes it out of the front door within a bound. The replica's memory
stays bounded however big or fast the hostile answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.localcluster.procs import free_port
from controlplane.intent.model import Backend, Cluster, Listener, Route, WeightedBackend
from controlplane.intent.store import Store
from controlplane.xds.client import AdsClient
from controlplane.xds.resources import CLUSTER_TYPE, LISTENER_TYPE
from tests.conftest import wait_for

REAL_ADDRESS, HOSTILE_ADDRESS = "127.0.0.71", "127.0.0.72"
INTERVAL = 0.25  # the replica's load and probe interval here
BOUND = 5.0  # a /healthcheck/fail or a new connection count is seen within this
HUGE = 500 << 20  # the "huge" answers send at most this much, as fast as the replica reads
RSS_BOUND = 200 << 20  # the replica's (this process's) growth while attacked


Answer = Callable[[str, asyncio.StreamWriter], Awaitable[None]]


async def _bare(path: str, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1\r\n\r\n")
    await w.drain()


async def _json_list(path: str, w: asyncio.StreamWriter) -> None:
    if path == "/healthz":
        w.write(b'[1, 2, "three"]\r\n')  # not even HTTP
    else:
        body = b'[{"stats": [1, 2]}, 2, "x"]'
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    await w.drain()


async def _long_line(path: str, w: asyncio.StreamWriter) -> None:
    w.write(b"A" * 200_000)  # a 200 KB line, no newline, and then nothing
    await w.drain()
    await asyncio.sleep(5)


async def _stream(w: asyncio.StreamWriter, total: int) -> None:
    """`total` bytes of JSON-ish filler, as fast as the other side reads them."""
    chunk = b" " * (1 << 20)
    for _ in range(total // len(chunk)):
        w.write(chunk)
        await w.drain()


async def _huge_body(path: str, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % HUGE)
    await _stream(w, HUGE)


async def _huge_chunk(path: str, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % HUGE)
    await _stream(w, HUGE)


async def _endless_body(path: str, w: asyncio.StreamWriter) -> None:
    # No length, no chunks: the body runs until the connection closes (HTTP/1.1 allows it).
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    await _stream(w, HUGE)
    w.close()


async def _slow_loris(path: str, w: asyncio.StreamWriter) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"[:20]:  # a byte a second, never done
        w.write(bytes([byte]))
        await w.drain()
        await asyncio.sleep(1.0)


async def _bad_chunk(path: str, w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    await w.drain()


@dataclass(frozen=True)
class Kind:
    answer: Answer
    load_reason: str  # the reason the replica gives for the failed load sample
    probe_reason: str | None  # and for the failed probe (None: /healthz gets a 200 status line)


KINDS = {
    "bare-http": Kind(_bare, "bad-head", "bad-head"),
    "json-list": Kind(_json_list, "bad-json", "bad-head"),
    "long-line": Kind(_long_line, "too-long", "too-long"),
    "huge-body": Kind(_huge_body, "too-big", None),
    "huge-chunk": Kind(_huge_chunk, "too-big", None),
    "endless-body": Kind(_endless_body, "too-big", None),
    "slow-loris": Kind(_slow_loris, "timeout", "timeout"),
    "bad-chunk": Kind(_bad_chunk, "bad-chunk", None),
}


class _Listener:
    """A TCP server on `host` (any free port) whose connections `stop()` aborts."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._conns):
            w.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)


class Hostile(_Listener):
    """An ops listener that answers every request with one kind of garbage (the attacker)."""

    def __init__(self, answer: Answer, host: str) -> None:
        super().__init__(host)
        self.answer = answer
        self.requests: Counter[str] = Counter()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            for _ in range(1000):  # requests on one connection
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                path = head.split(b" ", 2)[1].decode()
                self.requests[path] += 1
                await self.answer(path, writer)
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class RssWatch:
    """The peak resident size of this process (the replica runs in it), sampled every 20 ms."""

    def __init__(self) -> None:
        self.base = self.peak = rss()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        for _ in range(10_000):  # 200 s at most
            self.peak = max(self.peak, rss())
            await asyncio.sleep(0.02)

    def __enter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss())


async def _intent(store: Store, backend_port: int) -> int:
    """A listener on 127.0.0.1 for every Envoy; returns its port."""
    port = free_port()
    await store.put(Cluster(name="web"))
    await store.put(Backend(name="b0", address="127.0.0.1", port=backend_port), cluster="web")
    await store.put(Listener(name="edge", address="127.0.0.1", port=port, protocol="http"))
    await store.put(Route(name="all", listener="edge", backends=[WeightedBackend(cluster="web")]))
    return port


async def _attacker(replica_port: int, node: str, ops_port: int) -> AdsClient:
    """A raw xDS client that claims an ops listener at HOSTILE_ADDRESS:`ops_port` and ACKs its
    clusters and listeners (so it counts as configured)."""
    c = AdsClient(f"127.0.0.1:{replica_port}", node)
    c.node.metadata.update({"public_address": HOSTILE_ADDRESS, "ops_port": ops_port})
    await c.open()
    for t in (CLUSTER_TYPE, LISTENER_TYPE):
        await c.request(t)
        r = await c.recv()
        assert r is not None, f"no {t} response"
        await c.request(t, version=r.version_info, nonce=r.nonce)
    return c


async def _fleet(api: httpx.AsyncClient) -> dict[str, dict]:
    return {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}


async def _in_front(api: httpx.AsyncClient) -> list[str]:
    return [m["node_id"] for m in (await api.get("/v1/frontdoor/json")).json()["in_service"]]


def _metric(text: str, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and want <= set(s.labels.items())
    )


async def _sample_times(replica, node_id: str, seconds: float) -> list[float]:
    """The distinct `at` of a node's load samples seen on its stream (in this process) over
    `seconds`: how often the replica actually samples it."""
    seen: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for s in list(replica.sampler.streams.values()):
            at = (s.load or {}).get("at") if s.node.id == node_id else None
            if at is not None and at not in seen:
                seen.append(at)
        await asyncio.sleep(0.02)
    return seen


async def _three_connections_show(api, edge: int, clients: list[asyncio.StreamWriter]) -> None:
    """Three new connections to the real Envoy's listener show in its live load."""
    for _ in range(3):
        clients.append((await asyncio.open_connection("127.0.0.1", edge))[1])

    async def three() -> bool:
        return ((await _fleet(api))["real"].get("load") or {}).get("connections") == 3

    await wait_for(three, timeout=BOUND, what="the real Envoy's 3 connections in its live load")


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_hostile_ops_listener_is_that_nodes_problem_only(
    kind: str, api, store: Store, make_replica, envoys, backends
) -> None:
    spec = KINDS[kind]
    edge = await _intent(store, backends[0].port)
    replica = await make_replica(f"hostile-{kind}", load_interval=INTERVAL, probe_interval=INTERVAL)
    hostile = Hostile(spec.answer, HOSTILE_ADDRESS)
    await hostile.start()
    clients: list[asyncio.StreamWriter] = []
    evil: AdsClient | None = None
    try:
        with RssWatch() as memory:
            # The attacker first: whatever it does to the replica's loops, it does before the
            # real Envoy is even probed.
            evil = await _attacker(replica.port, "evil", hostile.port)
            real = envoys("real", [("127.0.0.1", replica.port)], public_address=REAL_ADDRESS)

            async def real_in_front() -> bool:
                return "real" in await _in_front(api)

            await wait_for(real_in_front, timeout=30, what="the real Envoy in the front door")

            async def attacker_recorded() -> bool:
                doc = (await _fleet(api)).get("evil") or {}
                health = doc.get("front_health") or {}
                probed = spec.probe_reason is None or (health.get("probed") and health.get("reason"))
                return bool(doc.get("load_error")) and bool(probed)

            await wait_for(attacker_recorded, timeout=10, what="the attacker's failures in its record")
            evil_doc = (await _fleet(api))["evil"]
            assert evil_doc["load_error"]["reason"] == spec.load_reason, evil_doc["load_error"]
            assert evil_doc["load_error"]["error"] and evil_doc["load_error"]["failures"] >= 1
            assert "load" not in evil_doc  # nothing it said was taken as its load
            if spec.probe_reason is not None:
                health = evil_doc["front_health"]
                assert health["ok"] is False and health["reason"] == spec.probe_reason, health
                assert health["error"]
                assert evil_doc["front_state"] == "unhealthy"

            # The real Envoy is sampled at the interval all along, not at the attacker's pace.
            times = await _sample_times(replica, "real", 8 * INTERVAL)
            assert len(times) >= 4, f"the real Envoy sampled {len(times)} times in {8 * INTERVAL} s"

            # Its live load follows it: three connections to its listener show in /v1/fleet.
            await _three_connections_show(api, edge, clients)

            # /healthcheck/fail on its admin takes it out of the front door within the bound.
            async with httpx.AsyncClient(timeout=5) as c:
                assert (await c.post(f"{real.admin}/healthcheck/fail")).status_code == 200
            failed_at = time.monotonic()

            async def real_out() -> bool:
                return "real" not in await _in_front(api)

            await wait_for(real_out, timeout=BOUND, what="the failed real Envoy out of the front door")
            print(f"{kind}: out of the front door {time.monotonic() - failed_at:.2f} s after /healthcheck/fail")
            assert (await _fleet(api))["real"]["front_state"] == "unhealthy"

            # The failures are counted, by reason.
            text = httpx.get(f"http://127.0.0.1:{replica.metrics_port}/metrics").text
            assert _metric(text, "lbcp_load_sample_failures_total", reason=spec.load_reason) >= 1
            if spec.probe_reason is not None:
                assert _metric(text, "lbcp_front_probe_failures_total", reason=spec.probe_reason) >= 1
            assert _metric(text, "lbcp_xds_loop_restarts_total") == 0  # nothing needed restarting
        grown = memory.peak - memory.base
        print(f"{kind}: replica RSS {memory.base >> 20} MB, peak +{grown >> 20} MB; requests {dict(hostile.requests)}")
        assert grown < RSS_BOUND, f"RSS grew by {grown >> 20} MB"
        # The attacker was polled less often than the interval (back-off).
        assert hostile.requests["/lbcp/load"] <= 12, hostile.requests
    finally:
        for w in clients:
            w.close()
        if evil is not None:
            await evil.close()
        await hostile.stop()


class Flaky(_Listener):
    """The attacker's ops listener in front of a real Envoy's: it answers `HTTP/1.1` and
    nothing more while `garbage` is set, and passes every byte through to the real one once
    it is not."""

    def __init__(self, host: str, upstream: tuple[str, int]) -> None:
        super().__init__(host)
        self.upstream = upstream
        self.garbage = True
        self.times: list[float] = []  # when each garbage answer went out (monotonic)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            if self.garbage:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                self.times.append(time.monotonic())
                writer.write(b"HTTP/1.1\r\n\r\n")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._conns.add(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        for _ in range(1_000_000):
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def test_a_node_answering_garbage_is_polled_less_often_until_it_answers(
    api, store: Store, make_replica, envoys, backends
) -> None:
    """Back-off: a node that keeps answering garbage is sampled and probed after 1, 2, 4, 8…
    intervals (up to the cap); once it answers, it is back on the interval, its load and
    front health are read again and `load_error` goes."""
    await _intent(store, backends[0].port)
    replica = await make_replica("flaky", load_interval=INTERVAL, probe_interval=INTERVAL)
    for poller in (replica.sampler, replica.prober):
        poller.max_backoff = 8 * INTERVAL
    real = envoys("real", [("127.0.0.1", replica.port)], public_address=REAL_ADDRESS)
    flaky = Flaky(HOSTILE_ADDRESS, (REAL_ADDRESS, real.ops_port))
    await flaky.start()
    evil: AdsClient | None = None
    try:

        async def real_in_front() -> bool:
            return "real" in await _in_front(api)

        await wait_for(real_in_front, timeout=30, what="the real Envoy in the front door")
        evil = await _attacker(replica.port, "flaky", flaky.port)
        started = time.monotonic()
        await asyncio.sleep(16 * INTERVAL)
        # Sampler and prober each, at 1, 1, 2, 4, 8, 8 intervals: 5 or 6 answers each in 16
        # intervals, where 32 would have gone out without back-off.
        sent = len(flaky.times)
        gaps = [b - a for a, b in zip(flaky.times, flaky.times[1:], strict=False)]
        print(f"garbage answers: {sent} in {time.monotonic() - started:.1f} s; gaps {[round(g, 2) for g in gaps]}")
        assert 4 <= sent <= 14, sent
        assert max(gaps) >= 6 * INTERVAL, gaps  # the cap reached (8 intervals, less a round's slack)
        doc = (await _fleet(api))["flaky"]
        assert doc["load_error"]["reason"] == "bad-head" and doc["load_error"]["failures"] >= 4
        assert doc["front_health"]["reason"] == "bad-head" and "load" not in doc

        flaky.garbage = False  # from now on the real Envoy's ops listener answers for it
        answered = time.monotonic()

        async def recovered() -> bool:
            doc = (await _fleet(api))["flaky"]
            return "load_error" not in doc and "load" in doc and doc["front_state"] == "in"

        await wait_for(recovered, timeout=8 * INTERVAL + BOUND, what="the node's load and health read again")
        print(f"read again {time.monotonic() - answered:.2f} s after it answered")
        times = await _sample_times(replica, "flaky", 8 * INTERVAL)
        assert len(times) >= 4, f"sampled {len(times)} times in {8 * INTERVAL} s once it answers"
    finally:
        if evil is not None:
            await evil.close()
        await flaky.stop()


async def test_a_crashed_loop_is_logged_counted_and_restarted(
    api, store: Store, make_replica, envoys, backends, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash of the sampler's or the prober's loop (injected here: twice each) is logged
    with its traceback, counted in `lbcp_xds_loop_restarts_total` and the loop starts again;
    a crash of one node's sample (injected on the attacker's answers) is that node's
    `load_error` ("internal"), and the real Envoy is sampled and probed all along."""
    import controlplane.xds.load as load_module

    edge = await _intent(store, backends[0].port)
    replica = await make_replica("crashy", load_interval=INTERVAL, probe_interval=INTERVAL)
    crashes = {replica.sampler.loop_name: 2, replica.prober.loop_name: 2}
    for poller in (replica.sampler, replica.prober):

        def broken(now: float, poller=poller, launch=poller._launch_due):  # type: ignore[no-untyped-def]
            if crashes[poller.loop_name] > 0:
                crashes[poller.loop_name] -= 1
                raise RuntimeError(f"{poller.loop_name} broken on purpose")
            return launch(now)

        monkeypatch.setattr(poller, "_launch_due", broken)
    parse_load = load_module.parse_load

    def parse_or_crash(stats: list, ops_listener_port: int | None) -> dict:
        if any(isinstance(s, dict) and s.get("name") == "crash.lbcp" for s in stats):
            raise RuntimeError("a bug in lbcp, on purpose")
        return parse_load(stats, ops_listener_port)

    monkeypatch.setattr(load_module, "parse_load", parse_or_crash)

    async def answer(path: str, w: asyncio.StreamWriter) -> None:
        body = b'{"stats": [{"name": "crash.lbcp", "value": 1}]}' if path == "/lbcp/load" else b"ok"
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await w.drain()

    hostile = Hostile(answer, HOSTILE_ADDRESS)
    await hostile.start()
    evil = await _attacker(replica.port, "evil", hostile.port)
    clients: list[asyncio.StreamWriter] = []
    try:
        real = envoys("real", [("127.0.0.1", replica.port)], public_address=REAL_ADDRESS)

        async def real_in_front() -> bool:
            return "real" in await _in_front(api)

        await wait_for(real_in_front, timeout=30, what="the real Envoy in the front door")

        async def evil_crashed() -> bool:
            return ((await _fleet(api)).get("evil") or {}).get("load_error", {}).get("reason") == "internal"

        await wait_for(evil_crashed, timeout=BOUND, what="the crashed sample in the attacker's record")
        assert "a bug in lbcp" in (await _fleet(api))["evil"]["load_error"]["error"]
        await _three_connections_show(api, edge, clients)
        async with httpx.AsyncClient(timeout=5) as c:
            assert (await c.post(f"{real.admin}/healthcheck/fail")).status_code == 200

        async def real_out() -> bool:
            return "real" not in await _in_front(api)

        await wait_for(real_out, timeout=BOUND, what="the failed real Envoy out of the front door")

        assert crashes == {"load-sampler": 0, "front-prober": 0}
        text = httpx.get(f"http://127.0.0.1:{replica.metrics_port}/metrics").text
        for loop in ("load-sampler", "front-prober"):
            assert _metric(text, "lbcp_xds_loop_restarts_total", loop=loop) == 2, loop
            crashed = [r for r in caplog.records if r.getMessage().startswith(f"{loop} loop crashed")]
            assert len(crashed) == 2 and all(r.exc_info for r in crashed), loop
        assert _metric(text, "lbcp_load_sample_failures_total", reason="internal") >= 1
        # The node's crashes are logged with their traceback once, not once per sample.
        node_crashes = [r for r in caplog.records if r.getMessage() == "load-sampler: polling node evil failed"]
        assert len(node_crashes) == 1 and node_crashes[0].exc_info
    finally:
        for w in clients:
            w.close()
        await evil.close()
        await hostile.stop()
