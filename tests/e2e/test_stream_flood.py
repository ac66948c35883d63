"""A flood of xDS streams does not blind the registry (issue 27): 2 × 500 simulated Envoys
connect at once to two replicas (in this test's own process, so their event loop is as busy
as it gets) beside two real Envoys, and then the loop is held by batch work for longer than
the registry's leases. The leases never lapse (they are renewed from a thread of their own),
every real Envoy's record is in every read of the fleet, the front door answers both real
Envoys throughout, and the idle streams cost etcd no writes."""

from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.message
import httpx

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from bench.fleetsim.fleet import Fleet, specs
from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns
from controlplane.xds.registry import read_fleet
from tests.conftest import apply_edge, stop_backends, wait_for

REAL = {"flood-real-0": "127.0.1.91", "flood-real-1": "127.0.1.92"}
SIMULATED = 1000  # idle, the old registry wrote each record again: ~1,000 puts in 5 s, 20 x the bound
LEASE = 3  # the registry's lease (and the claims' own TTL) in this test
STALL = 4.5  # seconds the loop is held: past both
NAME = "www.flood.test"


async def _etcd_puts(etcd_cluster) -> float:
    endpoint = etcd_cluster.endpoints[0]
    url = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
    async with httpx.AsyncClient(timeout=5) as c:
        text = (await c.get(f"{url}/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("etcd_mvcc_put_total"))


async def test_a_flood_of_idle_streams_loses_no_record(api, etcd, etcd_cluster, make_replica, envoys) -> None:
    replicas = [await make_replica(f"flood-{i}", registry_lease_ttl=LEASE) for i in range(2)]
    demo = DemoBackend("flood-b")
    port = free_port()
    await apply_edge(api, demo.port, port)
    for (node, address), r in zip(REAL.items(), replicas, strict=True):
        envoys(node, [("127.0.0.1", r.port)], public_address=address)
    front = FrontDoorDns(DnsConfig(zone="flood.test", name="www", ttl=1, port=0, interval=0.2))
    await front.start()
    following = asyncio.create_task(front.follow(etcd))
    want = sorted(REAL.values())
    short_answers: list[list[str]] = []
    missing_records: list[set[str]] = []
    stop = asyncio.Event()

    async def answer() -> list[str]:
        r = await dns.asyncquery.udp(dns.message.make_query(NAME, "A"), "127.0.0.1", port=front.port, timeout=2)
        return sorted(a.address for a in r.answer[0]) if r.answer else []

    async def watch() -> None:
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            got = await answer()
            if got != want:
                short_answers.append(got)
            nodes = (await read_fleet(etcd)).nodes
            if not set(REAL) <= set(nodes):
                missing_records.append(set(REAL) - set(nodes))
            await asyncio.sleep(0.2)

    async def both() -> bool:
        return await answer() == want

    fleet: Fleet | None = None
    watching: asyncio.Task[None] | None = None
    try:
        await wait_for(both, timeout=30, what="both real Envoys in the DNS answer")
        watching = asyncio.create_task(watch())
        targets = [f"127.0.0.1:{r.port}" for r in replicas]
        fleet = await asyncio.to_thread(Fleet, targets, specs(SIMULATED, 0.5, prefix="flood"), 2)
        await asyncio.to_thread(fleet.start, 120)

        async def all_recorded() -> bool:
            return len((await read_fleet(etcd)).nodes) == SIMULATED + len(REAL)

        await wait_for(all_recorded, timeout=60, what="every simulated stream recorded")
        # Batch work holds the replicas' loop (this process's) for longer than both leases.
        end = time.monotonic() + STALL
        while time.monotonic() < end:
            pass
        await asyncio.sleep(3.0)  # what a lapse would do shows within this
        puts = await _etcd_puts(etcd_cluster)
        await asyncio.sleep(5.0)  # idle
        idle_puts = await _etcd_puts(etcd_cluster) - puts
        stop.set()
        await watching
        print(f"idle: {idle_puts:.0f} etcd puts in 5 s for {SIMULATED} streams")
        assert [r.registry.lapses for r in replicas] == [{"lease": 0, "claims": 0}] * 2
        assert short_answers == [] and missing_records == [], (short_answers[:5], missing_records[:5])
        assert idle_puts <= 50, idle_puts  # ≤ 10 writes/s idle (every test in this etcd shares it)
    finally:
        stop.set()
        if watching is not None:
            await asyncio.gather(watching, return_exceptions=True)
        if fleet is not None:
            await asyncio.to_thread(fleet.stop)
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await front.stop()
        stop_backends([demo])
