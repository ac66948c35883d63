"""Moving connections deliberately: evacuating a drained Envoy at a chosen rate, and
rebalancing a fleet after it grew. Real Envoys at their own 127.0.1.N, `lbcp dns` (in
process) as the front door, WebSocket clients that resolve the name on every (re)connect
and retry with jittered back-off, as real clients do."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time

import dns.asyncquery
import dns.message
import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns
from tests.conftest import http_ok, wait_for

NAME = "www.moves.test"
LIMIT = 1000


class Client:
    """A WebSocket client that stays connected: the first time at `first` (an address), then
    wherever the front door's first answer says; counts its connections."""

    def __init__(self, port: int, dns_port: int, first: str | None = None) -> None:
        self.port, self.dns_port, self.first = port, dns_port, first
        self.connected = asyncio.Event()
        self.connects = 0
        self.at: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def resolve(self) -> str | None:
        try:
            r = await dns.asyncquery.udp(dns.message.make_query(NAME, "A"), "127.0.0.1", port=self.dns_port, timeout=1)
        except (OSError, dns.exception.DNSException):
            return None
        return r.answer[0][0].address if r.answer else None

    async def run(self, deadline: float) -> None:
        backoff = 0.05
        while time.monotonic() < deadline:
            address, self.first = self.first or await self.resolve(), None
            if address is not None:
                try:
                    async with ws_connect(f"ws://{address}:{self.port}/", open_timeout=3, close_timeout=0.5) as ws:
                        await asyncio.wait_for(ws.recv(), 3)
                        self.connects += 1
                        self.at = address
                        self.connected.set()
                        backoff = 0.05
                        await ws.wait_closed()
                except (OSError, TimeoutError, WebSocketException):
                    pass
            self.connected.clear()
            self.at = None
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(1.0, backoff * 2)


async def _setup(api, etcd, make_replica, envoys, addresses: list[str], capacity: dict | None = None):
    replica = await make_replica("moves", load_interval=0.25, moves_interval=0.1)
    demo = [DemoBackend(f"m{i}") for i in range(2)]
    port = free_port()
    members = [{"name": d.name, "address": "127.0.0.1", "port": d.port} for d in demo]
    listener = {"address": "127.0.0.1", "port": port, "bind_public_address": True}
    route = {"listener": "edge", "websocket": True, "timeout": None, "backends": [{"cluster": "web"}]}
    fleet = {"capacity": capacity or {"max_connections_per_envoy": LIMIT}}
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {}},
        {"op": "replace_backends", "cluster": "web", "body": members},
        {"op": "put", "kind": "listener", "name": "edge", "body": listener},
        {"op": "put", "kind": "route", "name": "all", "body": route},
        {"op": "put", "kind": "fleet", "name": "default", "body": fleet},
    ]
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    xds = [("127.0.0.1", replica.port)]
    started = [envoys(f"mv-{i}", xds, public_address=a) for i, a in enumerate(addresses)]
    front = FrontDoorDns(DnsConfig(zone="moves.test", name="www", ttl=1, port=0, interval=0.1))
    await front.start()
    following = asyncio.create_task(front.follow(etcd))
    for a in addresses:
        await wait_for(http_ok(f"http://{a}:{port}/"), timeout=30, what=f"the Envoy at {a}")
    return replica, demo, port, started, front, following


async def _teardown(clients, front, following, demo) -> None:
    for c in clients:
        if c.task is not None:
            c.task.cancel()
    await asyncio.gather(*(c.task for c in clients if c.task is not None), return_exceptions=True)
    following.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await following
    await front.stop()
    for d in demo:
        d.stop()


async def test_evacuate_one_envoy_at_a_chosen_rate(api, etcd, make_replica, envoys) -> None:
    addresses = ["127.0.1.91", "127.0.1.92", "127.0.1.93"]
    replica, demo, port, fleet, front, following = await _setup(api, etcd, make_replica, envoys, addresses)
    active = f"listener.127.0.0.1_{port}.downstream_cx_active"

    async def held(e) -> int:
        return (await asyncio.to_thread(e.stats, active)).get(active, 0)

    deadline = time.monotonic() + 90
    clients = [Client(port, front.port, addresses[0]) for _ in range(400)]
    clients += [Client(port, front.port, a) for a in addresses[1:] for _ in range(100)]
    try:
        for c in clients:
            c.task = asyncio.create_task(c.run(deadline))

        async def all_connected() -> bool:
            return all(c.connected.is_set() for c in clients)

        await wait_for(all_connected, timeout=60, what="600 WebSockets connected")
        assert [await held(e) for e in fleet] == [400, 100, 100]
        others_before = [e.stats("listener_manager.listener_in_place_updated") for e in fleet[1:]]
        victim = fleet[0]
        r = await api.post(f"/v1/fleet/{victim.node_id}/drain", json={"evacuate": {"connections_per_second": 100}})
        assert r.status_code == 201, r.text
        t0 = time.monotonic()
        timeline: list[tuple[float, list[int]]] = []
        while time.monotonic() - t0 < 20:
            counts = list(await asyncio.gather(*(held(e) for e in fleet)))
            timeline.append((time.monotonic() - t0, counts))
            if counts[0] == 0:
                break
            await asyncio.sleep(0.05)
        emptied = timeline[-1][0]
        first_gone = next(t for t, c in timeline if c[0] < 400)
        peak_others = max(max(c[1:]) for _, c in timeline)
        print(f"evacuate: 400 at 100/s emptied in {emptied:.2f}s (first closes at {first_gone:.2f}s, "
              f"{400 / (emptied - first_gone):.0f}/s from there); the others peaked at {peak_others}")  # fmt: skip
        assert timeline[-1][1][0] == 0, timeline[-5:]
        # 400 at 100/s: 4 s (± 25 %) from the first close to the last. Each shard closes one
        # Envoy drain time (1 s here) after it is asked to, so the first close comes that late.
        pace = 400 / (emptied - first_gone)
        assert 75 <= pace <= 125, (pace, timeline[::5])
        assert emptied <= 4.0 * 1.25 + 1.0 + 0.5, (emptied, timeline[::5])  # + drain time + control latency
        assert peak_others <= LIMIT
        await wait_for(all_connected, timeout=20, what="every evacuated client reconnected")
        assert sum(await asyncio.gather(*(held(e) for e in fleet[1:]))) == 600
        # The mover touched only the evacuated Envoy's listener.
        assert [e.stats("listener_manager.listener_in_place_updated") for e in fleet[1:]] == others_before
        node = (await api.get(f"/v1/fleet/{victim.node_id}")).json()
        assert node["evacuation"]["state"] == "evacuated" or node["load"]["connections"] == 0, node.get("evacuation")
        # Now it can be stopped with nothing lost: no client is on it.
        victim.stop()
        await asyncio.sleep(0.5)
        assert await all_connected() and all(c.connects == 1 or c.at != addresses[0] for c in clients)
    finally:
        await _teardown(clients, front, following, demo)


async def _http_load(url: str, http2: bool, stop: asyncio.Event, results: dict[str, int]) -> None:
    """Requests of 200 ms, back to back on one client, until `stop`; counts failures."""
    async with httpx.AsyncClient(http2=http2, timeout=10, limits=httpx.Limits(max_connections=1)) as c:
        while not stop.is_set():
            try:
                r = await c.get(url, params={"delay_ms": "200"})
                results["ok" if r.status_code == 200 else f"status {r.status_code}"] += 1
            except httpx.HTTPError as exc:
                results[f"{type(exc).__name__}"] += 1


def _slope(timeline: list[tuple[float, list[int]]], start: int) -> float:
    """Connections per second leaving the old Envoys while they were asked to: the
    least-squares slope of their sum from just before its first drop until three quarters of
    the move (the drops come a shard at a time; at the end the mover waits for the last ones
    to land before it decides whether one more is needed)."""
    sums = [(t, c[0] + c[1]) for t, c in timeline]
    end = sums[-1][1]
    first = next(i for i, (_, s) in enumerate(sums) if s < start)
    last = next(i for i, (_, s) in enumerate(sums) if start - s >= 0.75 * (start - end))
    pts = sums[max(0, first - 1) : last + 1]
    # A pause in which the mover shed nothing (it waits for samples to show a shard landed,
    # longer on a loaded machine) is not part of the shed rate: take out what exceeds 1.5 s.
    squeezed, shift, flat_since = [], 0.0, None
    for k, (t, s) in enumerate(pts):
        if k and s == pts[k - 1][1]:
            flat_since = pts[k - 1][0] if flat_since is None else flat_since
        else:
            if flat_since is not None and t - flat_since > 1.5:
                shift += t - flat_since - 1.5
            flat_since = None
        squeezed.append((t - shift, s))
    pts = squeezed
    mt, ms = sum(t for t, _ in pts) / len(pts), sum(s for _, s in pts) / len(pts)
    num = sum((t - mt) * (s - ms) for t, s in pts)
    den = sum((t - mt) ** 2 for t, _ in pts) or 1.0
    return -num / den


async def test_rebalance_after_scale_out(api, etcd, make_replica, envoys) -> None:
    addresses = ["127.0.1.94", "127.0.1.95", "127.0.1.96"]
    replica, demo, port, fleet, front, following = await _setup(api, etcd, make_replica, envoys, addresses[:2])
    active = f"listener.127.0.0.1_{port}.downstream_cx_active"

    async def held(e) -> int:
        return (await asyncio.to_thread(e.stats, active)).get(active, 0)

    deadline = time.monotonic() + 90
    clients = [Client(port, front.port, a) for a in addresses[:2] for _ in range(300)]
    stop = asyncio.Event()
    results: collections.Counter[str] = collections.Counter()
    load = []
    try:
        for c in clients:
            c.task = asyncio.create_task(c.run(deadline))

        async def all_connected() -> bool:
            return all(c.connected.is_set() for c in clients)

        await wait_for(all_connected, timeout=60, what="600 WebSockets connected")
        # HTTP/1.1 and HTTP/2 requests in flight on the old Envoys all through the move.
        load = [
            asyncio.create_task(_http_load(f"http://{a}:{port}/", h2, stop, results))
            for a in addresses[:2]
            for h2 in (False, True)
            for _ in range(3)
        ]
        fleet.append(envoys("mv-2", [("127.0.0.1", replica.port)], public_address=addresses[2]))
        await wait_for(http_ok(f"http://{addresses[2]}:{port}/"), timeout=30, what="the new Envoy")
        await asyncio.sleep(1.0)  # its first load sample is in
        before = [await held(e) for e in fleet]
        r = await api.post("/v1/fleets/default/rebalance", json={"rate": 50})
        assert r.status_code == 202, r.text
        t0 = time.monotonic()
        timeline: list[tuple[float, list[int]]] = []
        state = None
        seen: set[str | None] = set()  # what /v1/fleet (and so `lbcp fleet`) said meanwhile
        while time.monotonic() - t0 < 30:
            counts = list(await asyncio.gather(*(held(e) for e in fleet)))
            timeline.append((time.monotonic() - t0, counts))
            state = ((await api.get("/v1/fleets/default/rebalance")).json().get("status") or {}).get("state")
            seen.add(((await api.get("/v1/fleet")).json()["rebalances"].get("default") or {}).get("state"))
            if state == "balanced" and time.monotonic() - t0 > 1:
                break
            await asyncio.sleep(0.1)
        assert state == "balanced", timeline[::10]
        assert "rebalancing" in seen, seen
        await asyncio.sleep(1.5)  # the last shard's drain time, and the reconnects
        await wait_for(all_connected, timeout=20, what="every moved client reconnected")
        stop.set()
        await asyncio.gather(*load)
        final = [await held(e) for e in fleet]
        mean = sum(final) / 3
        moved = before[0] + before[1] - (timeline[-1][1][0] + timeline[-1][1][1])
        pace = _slope(timeline, before[0] + before[1])
        print(f"rebalance: {before} -> {final}; {moved} moved, {pace:.0f}/s (asked 50/s); http {dict(results)}")
        assert all(abs(n - mean) <= 0.1 * mean + 6 for n in final), final  # 10 % (+ the HTTP load's 12)
        assert 50 * 0.75 <= pace <= 50 * 1.25, (pace, timeline[::5])
        assert set(results) == {"ok"}, results  # no request in flight failed
        # Reconnects went to the new Envoy; every WebSocket is held again.
        assert sum(c.connected.is_set() for c in clients) == 600
    finally:
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
        await _teardown(clients, front, following, demo)
