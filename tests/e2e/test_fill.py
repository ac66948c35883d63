"""The front tier fills the emptiest Envoy: two Envoys hold 200 WebSockets each, a third
joins, and 300 new clients that resolve the front door's name through `lbcp dns` (and
connect to its first answer, as most clients do) land mostly on the new one."""

from __future__ import annotations

import asyncio
import contextlib
import time

import dns.asyncquery
import dns.message
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns
from tests.conftest import http_ok, wait_for

LIMIT, HIGH_WATER = 400, 90
OLD, NEW = 200, 300
ADDRESSES = ["127.0.1.61", "127.0.1.62", "127.0.1.63"]
NAME = "www.fill.test"


async def test_new_clients_fill_the_emptiest_envoy(api, etcd, make_replica, envoys) -> None:
    replica = await make_replica("fill", load_interval=0.5)
    demo = [DemoBackend(f"f{i}") for i in range(2)]
    port = free_port()
    members = [{"name": d.name, "address": "127.0.0.1", "port": d.port} for d in demo]
    route = {"listener": "edge", "websocket": True, "timeout": None, "backends": [{"cluster": "web"}]}
    listener = {"address": "127.0.0.1", "port": port, "bind_public_address": True}
    capacity = {"max_connections_per_envoy": LIMIT, "high_water_percent": HIGH_WATER}
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {}},
        {"op": "replace_backends", "cluster": "web", "body": members},
        {"op": "put", "kind": "listener", "name": "edge", "body": listener},
        {"op": "put", "kind": "route", "name": "all", "body": route},
        {"op": "put", "kind": "fleet", "name": "default", "body": {"capacity": capacity}},
    ]
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    xds = [("127.0.0.1", replica.port)]
    fleet = [envoys(f"fill-{i}", xds, public_address=a) for i, a in enumerate(ADDRESSES[:2])]
    front = FrontDoorDns(DnsConfig(zone="fill.test", name="www", ttl=1, port=0, interval=0.2))
    await front.start()
    following = asyncio.create_task(front.follow(etcd))
    active = f"listener.127.0.0.1_{port}.downstream_cx_active"
    held: list[ClientConnection] = []

    async def hold(address: str) -> str:
        ws = await ws_connect(f"ws://{address}:{port}/", open_timeout=5)
        held.append(ws)
        await asyncio.wait_for(ws.recv(), 5)  # the backend's greeting: really through
        return address

    async def resolve() -> list[str]:
        r = await dns.asyncquery.udp(dns.message.make_query(NAME, "A"), "127.0.0.1", port=front.port, timeout=2)
        return [a.address for a in r.answer[0]] if r.answer else []

    async def answers(want: set[str]):
        async def ok() -> bool:
            return set(await resolve()) == want

        return ok

    async def connections(e) -> int:
        return (await asyncio.to_thread(e.stats, active)).get(active, 0)

    try:
        for a in ADDRESSES[:2]:
            await wait_for(http_ok(f"http://{a}:{port}/"), timeout=30, what=f"the Envoy at {a} serving")
        await wait_for(await answers(set(ADDRESSES[:2])), timeout=20, what="both Envoys in the DNS answer")
        # The old Envoys: 200 WebSockets each, straight to their own addresses.
        await asyncio.gather(*(hold(a) for a in ADDRESSES[:2] for _ in range(OLD)))
        assert [await connections(e) for e in fleet] == [OLD, OLD]

        fleet.append(envoys("fill-2", xds, public_address=ADDRESSES[2]))
        await wait_for(await answers(set(ADDRESSES)), timeout=20, what="the new Envoy in the DNS answer")
        # 300 new clients over 3 s (a steady arrival, not one burst answered from one sample),
        # each resolving the name and connecting to the first record.
        landed: list[str] = []
        start = time.monotonic()
        for i in range(NEW):
            await asyncio.sleep(max(0.0, start + i * 0.01 - time.monotonic()))
            first = (await resolve())[0]
            landed.append(first)
            held.append(await ws_connect(f"ws://{first}:{port}/", open_timeout=5))
        await asyncio.gather(*(asyncio.wait_for(ws.recv(), 5) for ws in held[-NEW:]))
        final = [await connections(e) for e in fleet]
        share = landed.count(ADDRESSES[2]) / NEW
        print(f"fill: {NEW} new clients: {share:.0%} on the new Envoy; connections per Envoy now {final}")
        assert sum(final) == 2 * OLD + NEW
        assert final[2] == landed.count(ADDRESSES[2])  # each went where the answer said
        assert share >= 0.7, (share, final)
        assert all(n * 100 < LIMIT * HIGH_WATER for n in final), final  # nobody above high water
        # ... and the answer followed the load: once the new Envoy was as full as the others,
        # they shared the rest (within a headroom band, 10 % of the capacity, plus the lag).
        assert max(final) - min(final) <= 0.15 * LIMIT, final
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await front.stop()
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
        for d in demo:
            d.stop()
