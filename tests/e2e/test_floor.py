"""The fleet's floor (`Fleet.min_in_service`, default 1) against real Envoys and a real
`lbcp dns`: a drain or evacuation that would empty the front door is refused (409
`min-in-service`, nothing written) unless forced, two concurrent drains cannot both pass,
and a fleet whose every Envoy is at high water keeps its least full one in the answer."""

from __future__ import annotations

import asyncio
import contextlib

import dns.asyncquery
import dns.message

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns
from tests.conftest import apply_edge, wait_for

ADDRESSES = {"floor-0": "127.0.1.71", "floor-1": "127.0.1.72"}
NAME = "www.floor.test"


async def test_the_floor_keeps_the_front_door_open(api, etcd, make_replica, envoys) -> None:
    replica = await make_replica("floor", load_interval=0.3)
    demo = DemoBackend("floor-b")
    port = free_port()
    await apply_edge(api, demo.port, port)
    xds = [("127.0.0.1", replica.port)]
    for node, address in ADDRESSES.items():
        envoys(node, xds, public_address=address)
    front = FrontDoorDns(DnsConfig(zone="floor.test", name="www", ttl=1, port=0, interval=0.2))
    await front.start()
    following = asyncio.create_task(front.follow(etcd))
    held: list[asyncio.StreamWriter] = []

    async def answer() -> list[str]:
        r = await dns.asyncquery.udp(dns.message.make_query(NAME, "A"), "127.0.0.1", port=front.port, timeout=2)
        return sorted(a.address for a in r.answer[0]) if r.answer else []

    def answer_is(*nodes: str):
        async def ok() -> bool:
            return await answer() == sorted(ADDRESSES[n] for n in nodes)

        return ok

    async def states() -> dict[str, str]:
        return {n["node_id"]: n["front_state"] for n in (await api.get("/v1/fleet")).json()["nodes"]}

    try:
        await wait_for(answer_is("floor-0", "floor-1"), timeout=30, what="both Envoys in the DNS answer")

        # The first drain leaves one in service: allowed.
        first = await api.post("/v1/fleet/floor-0/drain", json={"reason": "upgrade"})
        assert first.status_code == 201, first.text
        assert first.json()["forced"] is False
        await wait_for(answer_is("floor-1"), what="floor-0 out of the answer")

        # The last one: refused, with the floor, the fleet and who is in; nothing written.
        evacuate = {"evacuate": {"connections_per_second": 5}}
        for body, verb in (({"reason": "oops"}, "draining"), (evacuate, "evacuating")):
            last = await api.post("/v1/fleet/floor-1/drain", json=body)
            assert last.status_code == 409, last.text
            assert last.headers["content-type"] == "application/problem+json"
            p = last.json()
            assert p["code"] == "min-in-service" and p["override"] == "force"
            assert p["fleet"] == "default" and p["in_service"] == ["floor-1"] and p["min_in_service"] == 1
            assert p["detail"].startswith(f"{verb} floor-1 would leave fleet 'default' with 0 of 2 Envoys in service")
        assert set((await api.get("/v1/fleet")).json()["drained"]) == {"floor-0"}
        await asyncio.sleep(1.0)  # several DNS reads later, the answer still holds floor-1
        assert await answer() == [ADDRESSES["floor-1"]]

        # A higher floor refuses even the first drain; 0 turns the floor off.
        assert (await api.delete("/v1/fleet/floor-0/drain")).status_code == 200
        await wait_for(answer_is("floor-0", "floor-1"), what="floor-0 back")
        assert (await api.put("/v1/fleets/default", json={"min_in_service": 2})).status_code == 201
        refused = await api.post("/v1/fleet/floor-0/drain")
        assert refused.status_code == 409 and refused.json()["min_in_service"] == 2, refused.text
        assert "below its floor of 2" in refused.json()["detail"]
        assert (await api.put("/v1/fleets/default", json={"min_in_service": 0})).status_code == 200
        assert (await api.post("/v1/fleet/floor-0/drain")).status_code == 201
        assert (await api.post("/v1/fleet/floor-1/drain")).status_code == 201  # floor 0: both may go
        await wait_for(answer_is(), what="an empty answer with the floor off")
        for n in ADDRESSES:
            assert (await api.delete(f"/v1/fleet/{n}/drain")).status_code == 200
        assert (await api.delete("/v1/fleets/default")).status_code == 200
        await wait_for(answer_is("floor-0", "floor-1"), what="both back")

        # Two drains at once: one passes, the other sees it and is refused.
        both = await asyncio.gather(*(api.post(f"/v1/fleet/{n}/drain") for n in ADDRESSES))
        assert sorted(r.status_code for r in both) == [201, 409], [r.text for r in both]
        assert len((await api.get("/v1/fleet")).json()["drained"]) == 1
        survivor = next(n for n, r in zip(ADDRESSES, both, strict=True) if r.status_code == 409)

        # force drains the last one; the front door is then empty, as asked.
        forced = await api.post(f"/v1/fleet/{survivor}/drain", params={"force": "true"})
        assert forced.status_code == 201 and forced.json()["forced"] is True
        await wait_for(answer_is(), what="the forced drain to empty the answer")
        for n in ADDRESSES:
            assert (await api.delete(f"/v1/fleet/{n}/drain")).status_code == 200
        await wait_for(answer_is("floor-0", "floor-1"), what="both back after the forced drain")

        # Every Envoy at high water: the least full stays in front (kept-full), not none.
        capacity = {"max_connections_per_envoy": 4, "high_water_percent": 50, "low_water_percent": 25}
        assert (await api.put("/v1/fleets/default", json={"capacity": capacity})).status_code == 201
        for node, n in (("floor-0", 3), ("floor-1", 2)):
            for _ in range(n):
                _, w = await asyncio.open_connection(ADDRESSES[node], port)
                held.append(w)

        async def kept() -> bool:
            return await states() == {"floor-0": "full", "floor-1": "kept-full"}

        await wait_for(kept, what="floor-1 kept-full and floor-0 full")
        await wait_for(answer_is("floor-1"), what="the least full Envoy alone in the answer")
        fleet = (await api.get("/v1/fleet/floor-1")).json()
        assert fleet["front_state"] == "kept-full"
        # The one kept in front counts toward the floor: draining it is refused.
        assert (await api.post("/v1/fleet/floor-1/drain")).status_code == 409
    finally:
        for w in held:
            w.close()
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await front.stop()
        demo.stop()
