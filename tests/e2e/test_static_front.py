"""Static stability of the front door (issue 27): control-plane trouble never shrinks the set
of Envoys in it; only evidence about an Envoy does. etcd is paused for three times the
registry's lease, and then the lease lapses (etcd deletes every record under it) while
`lbcp dns` is asked ten times a second: every answer holds both real Envoys, and the records
come back. An
Envoy that really goes (its stream ends) still leaves at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import dns.asyncquery
import dns.message
import httpx

from api.app import Settings, create_app
from api.localcluster.demo import DemoBackend
from api.localcluster.procs import EtcdCluster, free_port
from controlplane.etcd import Etcd, EtcdConfig
from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns
from controlplane.intent.errors import StoreError
from controlplane.intent.model import Backend, Cluster, Listener, Route, WeightedBackend
from controlplane.intent.store import Store
from controlplane.xds.registry import read_fleet
from controlplane.xds.replica import ReplicaConfig, XdsReplica
from tests.conftest import wait_for

ADDRESSES = {"calm-0": "127.0.1.81", "calm-1": "127.0.1.82"}
NAME = "www.calm.test"
LEASE = 2  # seconds: the registry's lease in this test
PAUSE = 3 * LEASE


async def test_an_etcd_pause_past_the_lease_never_empties_the_front_door(tmp_path, envoys) -> None:
    cluster = EtcdCluster(tmp_path / "etcd", size=1)
    cluster.start()
    cfg = EtcdConfig(endpoints=tuple(cluster.endpoints), timeout=2.0, connect_timeout=0.5)
    replica = XdsReplica(
        ReplicaConfig(
            etcd=cfg,
            port=0,
            replica_id="calm",
            registry_flush_interval=0.05,
            registry_lease_ttl=LEASE,
            probe_interval=0.25,
            front_cidrs=("*=127.0.0.0/8",),
        )
    )
    await replica.start()
    etcd, dns_etcd = Etcd(cfg), Etcd(cfg)
    demo = DemoBackend("calm-b")
    front = FrontDoorDns(DnsConfig(zone="calm.test", name="www", ttl=1, port=0, interval=0.1, stale_hold=30))
    await front.start()
    following = asyncio.create_task(front.follow(dns_etcd))
    answers: list[tuple[float, list[str]]] = []
    renders: list[dict] = []  # /v1/frontdoor/json, while etcd answers the API
    stop_asking = asyncio.Event()
    app = create_app(Settings(etcd=cfg))

    async def answer() -> list[str]:
        r = await dns.asyncquery.udp(dns.message.make_query(NAME, "A"), "127.0.0.1", port=front.port, timeout=2)
        return sorted(a.address for a in r.answer[0]) if r.answer else []

    async def ask() -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens
        while not stop_asking.is_set() and time.monotonic() < deadline:
            answers.append((time.monotonic(), await answer()))
            await asyncio.sleep(0.1)

    async def render(api: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 120
        while not stop_asking.is_set() and time.monotonic() < deadline:
            r = await api.get("/v1/frontdoor/json")
            if r.status_code == 200:  # 503 while etcd is paused
                renders.append(r.json())
            await asyncio.sleep(0.1)

    asking: asyncio.Future[list[None]] | None = None
    member = cluster.members[0]
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lbcp.test")
    try:
        store = Store(etcd)
        await store.put(Cluster(name="web"))
        await store.put(Backend(name="b", address="127.0.0.1", port=demo.port), cluster="web")
        port = free_port()
        await store.put(Listener(name="edge", address="127.0.0.1", port=port, bind_public_address=True))
        await store.put(Route(name="all", listener="edge", backends=[WeightedBackend(cluster="web")]))
        fleet = {n: envoys(n, [("127.0.0.1", replica.port)], public_address=a) for n, a in ADDRESSES.items()}

        async def both() -> bool:
            return await answer() == sorted(ADDRESSES.values())

        await wait_for(both, timeout=30, what="both Envoys in the DNS answer")
        asking = asyncio.gather(ask(), render(api))
        await asyncio.sleep(0.5)

        # etcd stalls for three leases, then comes back: etcd revokes the lapsed lease, and
        # with it every record, before the replica can renew it.
        assert member.proc is not None and member.proc.pid is not None
        os.kill(member.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(PAUSE)
        os.kill(member.proc.pid, signal.SIGCONT)

        async def recorded_again() -> bool:
            try:
                view = await read_fleet(etcd)
            except Exception:  # etcd still catching up: not yet
                return False
            beat = view.replicas.get("calm") or {}
            return set(view.nodes) == set(ADDRESSES) and beat.get("complete") is True

        await wait_for(recorded_again, timeout=30, what="the replica's records and heartbeat back")
        # Whether etcd revoked the lease at once on waking is a race with the renewal already
        # on its way; what a lapse does is certain: etcd deletes every record under it. Do that.
        lapses = replica.registry.lapses["lease"]
        for _ in range(50):  # the current lease: a lapse on waking may have replaced it just now
            try:
                await etcd.lease_revoke(replica.registry._lease)
                break
            except StoreError:
                await asyncio.sleep(0.2)
                lapses = replica.registry.lapses["lease"]

        async def relapsed() -> bool:
            return replica.registry.lapses["lease"] > lapses and await recorded_again()

        await wait_for(relapsed, timeout=30, what="the replica re-registering after its lease went")
        await asyncio.sleep(1.0)  # and a few more answers after that
        stop_asking.set()
        await asking
        want = sorted(ADDRESSES.values())
        short = [(round(t - answers[0][0], 1), a) for t, a in answers if a != want]
        assert len(answers) > 50 and short == [], short[:10]
        # The API's renders (what `lbcp frontdoor render --watch` and exabgp read) hold too,
        # and say which Envoys they keep without a record.
        listed = [sorted(m["address"] for m in r["in_service"]) for r in renders]
        assert len(renders) > 10 and all(x == want for x in listed), [x for x in listed if x != want][:5]
        assert any(sorted(m["node_id"] for m in r["stale"]) == sorted(ADDRESSES) for r in renders)

        # Evidence still counts: an Envoy whose stream ends leaves at once, not after the hold.
        fleet["calm-1"].stop()
        gone = time.monotonic()

        async def one() -> bool:
            return await answer() == [ADDRESSES["calm-0"]]

        await wait_for(one, timeout=10, what="the stopped Envoy out of the answer")
        assert time.monotonic() - gone < 10 < front.config.stale_hold
    finally:
        stop_asking.set()
        if asking is not None:
            with contextlib.suppress(Exception):
                await asking
        if member.proc is not None and member.proc.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(member.proc.pid, signal.SIGCONT)
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await front.stop()
        await api.aclose()
        await lifespan.__aexit__(None, None, None)
        await replica.stop(grace=0)
        await etcd.close()
        await dns_etcd.close()
        demo.stop()
        cluster.stop()
