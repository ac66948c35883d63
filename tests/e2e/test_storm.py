"""A reconnect storm admitted at a bounded rate: three real Envoys share a listener and hold
900 WebSockets; one is killed with SIGKILL, its clients reconnect with jittered back-off (as
real WebSocket clients do), and each survivor admits them at no more than its fleet's
`max_new_connections_per_second` (plus the burst), never past `max_connections_per_envoy`."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from tests.conftest import http_ok, wait_for

CLIENTS = 900
RATE, BURST, LIMIT = 100, 50, 1000


class Client:
    """A WebSocket client that stays connected: on any failure it retries after a jittered
    back-off (50 ms doubling to 1 s), and it counts its reconnections."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connected = asyncio.Event()
        self.connects = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self, deadline: float) -> None:
        backoff = 0.05
        while time.monotonic() < deadline:
            try:
                async with ws_connect(f"ws://127.0.0.1:{self.port}/", open_timeout=3, close_timeout=0.5) as ws:
                    await asyncio.wait_for(ws.recv(), 3)  # the backend's greeting: really through
                    self.connects += 1
                    self.connected.set()
                    backoff = 0.05
                    await ws.wait_closed()
            except (OSError, TimeoutError, WebSocketException):
                pass
            self.connected.clear()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(1.0, backoff * 2)


async def test_a_killed_envoys_clients_are_admitted_at_the_fleet_rate(api, make_replica, envoys) -> None:
    replica = await make_replica("storm", load_interval=0.5)
    demo = [DemoBackend(f"s{i}") for i in range(3)]
    port = free_port()
    members = [{"name": d.name, "address": "127.0.0.1", "port": d.port} for d in demo]
    capacity = {
        "max_connections_per_envoy": LIMIT,
        "max_new_connections_per_second": RATE,
        "new_connections_burst": BURST,
    }
    route = {"listener": "edge", "websocket": True, "timeout": None, "backends": [{"cluster": "web"}]}
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {}},
        {"op": "replace_backends", "cluster": "web", "body": members},
        {"op": "put", "kind": "listener", "name": "edge", "body": {"address": "127.0.0.1", "port": port}},
        {"op": "put", "kind": "route", "name": "all", "body": route},
        {"op": "put", "kind": "fleet", "name": "default", "body": {"capacity": capacity}},
    ]
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    fleet = [envoys(f"storm-{i}", [("127.0.0.1", replica.port)]) for i in range(3)]
    await wait_for(http_ok(f"http://127.0.0.1:{port}/"), timeout=30, what="the listener serving")
    stat = f"listener.127.0.0.1_{port}.downstream_cx_total"
    active = f"listener.127.0.0.1_{port}.downstream_cx_active"

    async def admin(e, name: str) -> int:
        return (await asyncio.to_thread(e.stats, name)).get(name, 0)

    deadline = time.monotonic() + 120
    clients = [Client(port) for _ in range(CLIENTS)]
    try:
        for c in clients:
            c.task = asyncio.create_task(c.run(deadline))

        async def all_connected() -> bool:
            return all(c.connected.is_set() for c in clients)

        await wait_for(all_connected, timeout=60, what="900 WebSockets connected")
        held = [await admin(e, active) for e in fleet]
        assert sum(held) == CLIENTS, held
        victim, survivors = fleet[0], fleet[1:]
        orphans = held[0]
        # The storm: kill -9 the first Envoy, sample the survivors' admissions every 0.1 s.
        samples: list[tuple[float, list[int]]] = [(time.monotonic(), [await admin(e, stat) for e in survivors])]
        killed_at = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)

        async def orphaned() -> bool:
            return sum(not c.connected.is_set() for c in clients) > 0

        await wait_for(orphaned, timeout=10, what="the killed Envoy's clients noticing")
        while not await all_connected() and time.monotonic() - killed_at < 60:
            await asyncio.sleep(0.1)
            samples.append((time.monotonic(), [await admin(e, stat) for e in survivors]))
        rehomed = time.monotonic() - killed_at
        samples.append((time.monotonic(), [await admin(e, stat) for e in survivors]))
        assert await all_connected(), "some clients never got back"

        # Per survivor, the most connections admitted in any 1 s window of the storm.
        peaks = []
        for i in range(len(survivors)):
            peak = 0
            for j, (t0, c0) in enumerate(samples):
                for t1, c1 in samples[j + 1 :]:
                    if t1 - t0 > 1.05:
                        break
                    peak = max(peak, c1[i] - c0[i])
            peaks.append(peak)
        final = [await admin(e, active) for e in survivors]
        predicted = max(0.0, (orphans - BURST * len(survivors)) / (RATE * len(survivors)))
        print(
            f"storm: {orphans} clients of the killed Envoy re-homed in {rehomed:.1f}s "
            f"(rate predicts {predicted:.1f}s); survivors admitted at most {peaks} per second "
            f"(rate {RATE} + burst {BURST}); now holding {final}"
        )
        for peak in peaks:
            assert peak <= RATE + BURST + 10, peaks  # +10: the 0.1 s sampling grain
        assert all(n <= LIMIT for n in final) and sum(final) == CLIENTS, final
        assert rehomed >= predicted * 0.8, (rehomed, predicted)  # the rate did hold the storm back
    finally:
        for c in clients:
            if c.task is not None:
                c.task.cancel()
        await asyncio.gather(*(c.task for c in clients if c.task is not None), return_exceptions=True)
        for d in demo:
            d.stop()
