"""The front tier follows real Envoys: `lbcp dns` answers a real resolver with the in-service
set, and a drained, failed or stopped Envoy leaves the answer and the rendered rules within
a bounded time while its listeners keep serving."""

from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.asyncresolver
import dns.message
import dns.rdatatype
import httpx

from controlplane.etcd import Etcd
from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns
from controlplane.intent.model import Backend, Cluster, Listener, Route, WeightedBackend
from controlplane.intent.store import Store
from tests.conftest import http_ok, wait_for

ADDRESSES = {"fd-0": "127.0.0.11", "fd-1": "127.0.0.12", "fd-2": "127.0.0.13"}
# The replica probes every 0.25 s, flushes the registry every 0.05 s, and lbcp dns reads
# every 0.2 s: a change is visible within a second; 10 s leaves room on a loaded machine.
BOUND = 10.0


async def _resolve(resolver: dns.asyncresolver.Resolver) -> list[str]:
    try:
        answer = await resolver.resolve("www.example.com", "A")
    except dns.resolver.NoAnswer:
        return []
    return sorted(r.address for r in answer)


async def test_dns_and_rules_follow_drain_failure_and_stop(
    api, store: Store, replica, envoys, backends, etcd: Etcd
) -> None:
    await store.put(Cluster(name="web"))
    await store.put(Backend(name="b0", address="127.0.0.1", port=backends[0].port), cluster="web")
    # Only fd-0 (fleet "a") gets the edge listener, so a request to its port reaches fd-0.
    port = _free_port()
    await store.put(Listener(name="edge", address="127.0.0.1", port=port, protocol="http", fleets=["a"]))
    await store.put(Route(name="all", listener="edge", backends=[WeightedBackend(cluster="web")]))
    fleet = {
        n: envoys(n, [("127.0.0.1", replica.port)], fleet="a" if n == "fd-0" else "b", public_address=a)
        for n, a in ADDRESSES.items()
    }

    server = FrontDoorDns(DnsConfig(zone="example.com", name="www", ttl=5, port=0, interval=0.2))
    await server.start()
    follower = asyncio.create_task(server.follow(etcd))
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.lifetime = 2.0
    resolver.cache = None
    try:

        async def answer_is(*nodes: str):
            want = sorted(ADDRESSES[n] for n in nodes)

            async def ok() -> bool:
                return await _resolve(resolver) == want

            return ok

        await wait_for(await answer_is("fd-0", "fd-1", "fd-2"), timeout=30, what="all three Envoys in the DNS answer")
        for e in fleet.values():
            assert await http_ok(f"{e.ops}/healthz")()

        # Rotation: successive answers start with each Envoy in turn; TCP answers the same set.
        firsts = set()
        for _ in range(3):
            resp = await dns.asyncquery.udp(
                dns.message.make_query("www.example.com", "A"), "127.0.0.1", port=server.port, timeout=2
            )
            firsts.add(list(resp.answer[0])[0].address)
            assert resp.flags & dns.flags.AA
        assert firsts == set(ADDRESSES.values())
        tcp = await dns.asyncquery.tcp(
            dns.message.make_query("www.example.com", "A"), "127.0.0.1", port=server.port, timeout=2
        )
        assert sorted(r.address for r in tcp.answer[0]) == sorted(ADDRESSES.values())
        nx = await dns.asyncquery.udp(
            dns.message.make_query("nope.example.com", "A"), "127.0.0.1", port=server.port, timeout=2
        )
        assert nx.rcode() == dns.rcode.NXDOMAIN

        # fd-0 serves traffic on its edge listener before, during and after its drain.
        drained = fleet["fd-0"]
        await wait_for(http_ok(f"http://127.0.0.1:{port}/"), timeout=30, what="the edge listener serving")
        listeners_before = _stat(drained, "listener_manager.listener_modified") + _stat(
            drained, "listener_manager.listener_removed"
        )

        # Drain fd-0 through the API: its own /healthz fails (real Envoy), and it leaves the
        # DNS answer and every render within the bound. It is fleet a's only Envoy, so the
        # fleet's floor (min_in_service 1) refuses the drain until it is forced.
        refused = await api.post("/v1/fleet/fd-0/drain", json={"reason": "kernel upgrade"})
        assert refused.status_code == 409 and refused.json()["code"] == "min-in-service", refused.text
        t0 = time.monotonic()
        r = await api.post(
            "/v1/fleet/fd-0/drain",
            json={"reason": "kernel upgrade"},
            params={"wait": "withdrawn", "timeout": "15s", "force": "true"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["withdrawal"]["complete"] and r.json()["withdrawal"]["health_failing"] is True
        assert httpx.get(f"{drained.ops}/healthz").status_code == 503
        await wait_for(await answer_is("fd-1", "fd-2"), timeout=BOUND, what="the drained Envoy out of the DNS answer")
        withdrawn_after = time.monotonic() - t0
        for fmt in ("iptables", "nftables", "dns"):
            assert "127.0.0.11" not in (await api.get(f"/v1/frontdoor/{fmt}")).text, fmt
        assert "route 198.51.100.1" not in (await api.get("/v1/frontdoor/bird", params={"node": "fd-0"})).text
        fleet_doc = (await api.get("/v1/fleet/fd-0")).json()
        assert fleet_doc["draining"] and fleet_doc["drain"]["reason"] == "kernel upgrade"
        # Draining did not touch its listeners: nothing modified or removed, and it still serves.
        assert (
            _stat(drained, "listener_manager.listener_modified") + _stat(drained, "listener_manager.listener_removed")
            == listeners_before
        )
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"http://127.0.0.1:{port}/")).status_code == 200
        # Draining again keeps the first record; undraining puts it back.
        again = await api.post("/v1/fleet/fd-0/drain")
        assert again.status_code == 200 and again.json()["reason"] == "kernel upgrade"
        assert (await api.delete("/v1/fleet/fd-0/drain")).status_code == 200
        await wait_for(
            await answer_is("fd-0", "fd-1", "fd-2"), timeout=BOUND, what="the undrained Envoy back in the answer"
        )
        assert httpx.get(f"{drained.ops}/healthz").status_code == 200

        # An operator fails fd-1's health check on its admin: the replica's probe sees it.
        httpx.post(f"{fleet['fd-1'].admin}/healthcheck/fail").raise_for_status()
        await wait_for(await answer_is("fd-0", "fd-2"), timeout=BOUND, what="the failing Envoy out of the answer")
        httpx.post(f"{fleet['fd-1'].admin}/healthcheck/ok").raise_for_status()
        await wait_for(await answer_is("fd-0", "fd-1", "fd-2"), timeout=BOUND, what="the recovered Envoy back")

        # fd-2 stops: its stream ends and it leaves the answer.
        fleet["fd-2"].stop()
        await wait_for(await answer_is("fd-0", "fd-1"), timeout=BOUND, what="the stopped Envoy out of the answer")
        print(f"drain withdrawn from DNS after {withdrawn_after:.2f}s")
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await server.stop()


def _stat(envoy, name: str) -> int:
    text = httpx.get(f"{envoy.admin}/stats", params={"filter": f"^{name}$"}).text
    return int(text.split(":")[1]) if ":" in text else 0


def _free_port() -> int:
    from api.localcluster.procs import free_port

    return free_port()
