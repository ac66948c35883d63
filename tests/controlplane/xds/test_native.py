"""The native core's delta streams, driven over gRPC by a client that tracks what it holds,
against a snapshot cache of a view changed by hand (no etcd): what the client ends up
holding is compared with what the snapshot (with the node's own variants) says it should.

Each diff looks only at what changed since the table it last compared against, plus its
own entries: these are the cases where that could miss something (a shed that ends, a
listener that stops binding the public address, a random walk of intent changes,
subscriptions, reconnects, NACKs and late ACKs), and make-before-break holds."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import controlplane
from controlplane.intent.keyspace import Ref, Stored
from controlplane.intent.model import Backend, Cluster, Kind, Listener
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.client import AdsClient
from controlplane.xds.native import NativeService, NativeStream
from controlplane.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE
from controlplane.xds.server.admission import ServerLimits
from tests.conftest import wait_for
from tests.controlplane.xds.test_cache import _FakeView, _random_change

QUIET = 0.15  # seconds without a response: the core has nothing more to say


class _Client:
    """One delta stream and what its client holds (name -> version) and follows, per type."""

    def __init__(self, service: NativeService, node: str = "n1", fleet: str = "default", **meta: Any) -> None:
        self.service = service
        self.node, self.fleet, self.meta = node, fleet, meta
        self.held: dict[str, dict[str, str]] = {}
        self.values: dict[str, dict[str, bytes]] = {}
        self.follows: dict[str, tuple[bool, set[str]]] = {}  # type -> (wildcard, names)
        self.ads: AdsClient | None = None

    async def open(self) -> None:
        assert self.service.core is not None
        self.ads = AdsClient(f"127.0.0.1:{self.service.core.port}", self.node, self.fleet, delta=True)
        if self.meta:
            self.ads.node.metadata.update(self.meta)
        await self.ads.open()

    async def close(self) -> None:
        if self.ads is not None:
            await self.ads.close()

        async def gone() -> bool:
            return self.node not in self.service.by_node

        await wait_for(gone, 5, "the old stream closed")

    @property
    def stream(self) -> NativeStream:
        s = self.service.by_node[self.node]
        assert isinstance(s, NativeStream)
        return s

    async def request(
        self,
        type_url: str,
        subscribe: list[str] | None = None,
        unsubscribe: list[str] | None = None,
        **kw: Any,
    ) -> None:
        wildcard, names = self.follows.get(type_url, (False, set()))
        if type_url not in self.follows and type_url in (CLUSTER_TYPE, LISTENER_TYPE) and not subscribe:
            wildcard = True
        for n in subscribe or []:
            if n == "*":
                wildcard = True
            else:
                names.add(n)
        for n in unsubscribe or []:
            if n == "*":
                wildcard = False
            else:
                names.discard(n)
        self.follows[type_url] = (wildcard, names)
        assert self.ads is not None
        await self.ads.delta_request(type_url, subscribe or [], unsubscribe or [], **kw)

    def take(self, r: Any) -> None:
        """The client takes a response: what it still follows of it."""
        wildcard, names = self.follows.get(r.type_url, (False, set()))
        held = self.held.setdefault(r.type_url, {})
        values = self.values.setdefault(r.type_url, {})
        for resource in r.resources:
            if wildcard or resource.name in names:
                held[resource.name] = resource.version
                values[resource.name] = resource.resource.value
        for name in r.removed_resources:
            held.pop(name, None)
            values.pop(name, None)

    async def flush(self, ack: bool = True, first: float = QUIET) -> list[Any]:
        """Every response until the core goes quiet (each taken and ACKed unless told not to),
        waiting up to `first` seconds for the first one."""
        assert self.ads is not None
        got: list[Any] = []
        while (r := await self.ads.recv(first if not got else QUIET)) is not None:
            got.append(r)
            if ack:
                self.take(r)
                await self.ads.delta_request(r.type_url, nonce=r.nonce)
        return got

    def mismatches(self, type_url: str, rejected: dict[str, str] | None = None) -> list[tuple[str, Any, Any]]:
        """(name, held, owed) where the client does not hold what it is owed (a version it
        rejected excepted)."""
        want, held = self.owed(type_url), self.held.get(type_url, {})
        return [
            (n, held.get(n), want.get(n))
            for n in sorted(set(want) | set(held))
            if held.get(n) != want.get(n) and (rejected or {}).get(n) != want.get(n)
        ]

    async def settle(self, *types: str, rejected: dict[str, dict[str, str]] | None = None) -> None:
        """Take responses until the client holds what it is owed of `types` (at most 10 s:
        a loaded machine may answer late)."""
        for _ in range(60):
            await self.flush()
            if not any(self.mismatches(t, (rejected or {}).get(t)) for t in types):
                return
        raise AssertionError({t: self.mismatches(t, (rejected or {}).get(t)) for t in types})

    def owed(self, type_url: str) -> dict[str, str]:
        """What the client should hold of `type_url`: what it follows of the snapshot, with
        this node's own variants."""
        wildcard, names = self.follows.get(type_url, (False, set()))
        entries = self.stream.entries(self.service.cache.snapshot(self.fleet), type_url)
        return {n: e.version for n, e in entries.items() if wildcard or n in names}


async def _serve(view: _FakeView, warming_hold: float = 1.0) -> NativeService:
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell(set())
    service = NativeService(cache, [], ServerLimits(warming_hold=warming_hold))
    service.start("127.0.0.1", 0)
    return service


async def test_a_node_no_longer_shedding_gets_its_listeners_back_as_the_fleet_has_them() -> None:
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    view.listeners["tcp"] = Stored(Listener(name="tcp", port=10001, protocol="tcp", cluster="c0"), 1, 1)
    view.shed["n1"] = (1, 0, 0, 0)
    service = await _serve(view)
    c = _Client(service)
    try:
        await c.open()
        await c.request(LISTENER_TYPE)
        await c.settle(LISTENER_TYPE)
        shed = dict(c.held[LISTENER_TYPE])
        # The shed ends: the fleet's listeners are unchanged, but this node's are not its own any more.
        del view.shed["n1"]
        view.tell(set())
        assert not service.cache.snapshot("default").sheds
        await c.settle(LISTENER_TYPE)
        assert c.held[LISTENER_TYPE] != shed
    finally:
        await c.close()
        await service.stop()


async def test_a_listener_that_stops_binding_the_public_address_is_resent() -> None:
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    lst = Listener(name="tcp", address="10.1.1.1", port=10001, protocol="tcp", cluster="c0", bind_public_address=True)
    view.listeners["tcp"] = Stored(lst, 1, 1)
    service = await _serve(view)
    c = _Client(service, public_address="192.0.2.7")
    try:
        await c.open()
        await c.request(LISTENER_TYPE)
        await c.settle(LISTENER_TYPE)
        assert b"192.0.2.7" in c.values[LISTENER_TYPE]["tcp"]
        # It stops binding each Envoy's public address (the fleet's listener itself is the same).
        view.listeners["tcp"] = Stored(lst.model_copy(update={"bind_public_address": False}), 2, 2)
        view.tell({Ref(Kind.LISTENER, "tcp")})
        await c.settle(LISTENER_TYPE)
        assert b"192.0.2.7" not in c.values[LISTENER_TYPE]["tcp"]
    finally:
        await c.close()
        await service.stop()


@pytest.mark.parametrize("seed", range(3))
async def test_a_random_walk_leaves_the_client_holding_what_it_follows(seed: int) -> None:
    rnd = random.Random(seed)
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    # This client does not follow the endpoints of every cluster it holds: no make-before-break hold.
    service = await _serve(view, warming_hold=0.0)
    c = _Client(service, fleet="a", public_address="192.0.2.7")
    try:
        await c.open()
        await c.request(CLUSTER_TYPE)
        await c.request(LISTENER_TYPE)
        await c.request(ENDPOINT_TYPE, ["c0"])
        await c.request(ROUTE_TYPE, ["l0"])
        await c.request(SECRET_TYPE, ["k0"])
        rejected: dict[str, dict[str, str]] = {}  # type -> name -> a version the client rejected
        unacked: list[Any] = []
        for step in range(2, 100):
            what = rnd.random()
            if what < 0.45:
                changed: set[Ref] = set()
                for _ in range(rnd.randrange(1, 4)):
                    changed |= _random_change(view, rnd, step)
                if rnd.random() < 0.1:
                    if "n1" in view.shed:
                        del view.shed["n1"]
                    else:
                        view.shed["n1"] = (rnd.randrange(3), 0, 0, 0)
                view.tell(changed)
            elif what < 0.6:
                t = rnd.choice([ENDPOINT_TYPE, ROUTE_TYPE, SECRET_TYPE])
                pool = {ENDPOINT_TYPE: [f"c{i}" for i in range(12)], ROUTE_TYPE: [f"l{i}" for i in range(4)]}
                name = rnd.choice(pool.get(t, ["k0", "k1"]))
                if name in c.follows[t][1]:
                    await c.request(t, unsubscribe=[name])
                    c.held.get(t, {}).pop(name, None)  # the client forgets what it stops following
                else:
                    await c.request(t, [name])
            elif what < 0.62:
                # It reconnects (maybe as another fleet's), declaring what it holds and follows.
                await c.close()
                c.fleet = rnd.choice(["a", "b"])
                follows, c.follows = c.follows, {}
                await c.open()
                for t, (wildcard, names) in follows.items():
                    subscribe = sorted(names) + (["*"] if wildcard and names else [])
                    # A first request naming nothing is a wildcard (legacy) for CDS and LDS.
                    legacy = not subscribe and t in (CLUSTER_TYPE, LISTENER_TYPE)
                    c.follows[t] = (wildcard or legacy, set(names))
                    assert c.ads is not None
                    await c.ads.delta_request(t, subscribe, initial=c.held.get(t, {}))
                unacked = []
            elif what < 0.65:
                t = rnd.choice([CLUSTER_TYPE, LISTENER_TYPE])
                if c.follows[t][0]:
                    await c.request(t, unsubscribe=["*"])
                else:
                    await c.request(t, ["*"])
            else:
                unacked += await c.flush(ack=False)
            # Answer some of what is in flight: ACK (taking it) or NACK (keeping what it had).
            while unacked and rnd.random() < 0.7:
                r = unacked.pop(0)
                assert c.ads is not None
                if rnd.random() < 0.15 and not r.removed_resources and r.resources:
                    for resource in r.resources:
                        rejected.setdefault(r.type_url, {})[resource.name] = resource.version
                    await c.ads.delta_request(r.type_url, nonce=r.nonce, error="no")
                else:
                    c.take(r)
                    await c.ads.delta_request(r.type_url, nonce=r.nonce)
            if step % 33 == 0 or step == 99:
                for r in unacked:  # what is still in flight is taken
                    c.take(r)
                    assert c.ads is not None
                    await c.ads.delta_request(r.type_url, nonce=r.nonce)
                unacked = []
                await c.settle(CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE, rejected=rejected)
    finally:
        await c.close()
        await service.stop()


async def test_a_subscription_held_back_behind_clusters_in_flight_is_answered_once_they_are_acked() -> None:
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    view.listeners["l0"] = Stored(Listener(name="l0", port=10000), 1, 1)
    view.listeners["l1"] = Stored(Listener(name="l1", port=10001), 1, 1)
    service = await _serve(view)
    c = _Client(service)
    try:
        await c.open()
        await c.request(CLUSTER_TYPE)
        await c.request(ENDPOINT_TYPE, ["c0"])
        await c.request(LISTENER_TYPE)
        await c.request(ROUTE_TYPE, ["l0"])
        await c.settle(CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
        assert set(c.held[ROUTE_TYPE]) == {"l0"}
        # A cluster change is in flight when the client subscribes to the other listener's routes.
        view.clusters["c1"] = Stored(Cluster(name="c1"), 2, 2)
        view.tell({Ref(Kind.CLUSTER, "c1")})
        (cds,) = await c.flush(ack=False, first=5.0)
        assert cds.type_url == CLUSTER_TYPE
        await c.request(ROUTE_TYPE, ["l1"])
        assert await c.flush(ack=False) == []  # routes wait for the clusters (make before break) ...
        c.take(cds)
        await c.request(CLUSTER_TYPE, nonce=cds.nonce)
        await c.request(ENDPOINT_TYPE, ["c1"])
        await c.settle(ROUTE_TYPE)
        assert set(c.held[ROUTE_TYPE]) == {"l0", "l1"}  # ... and are sent once they are taken
    finally:
        await c.close()
        await service.stop()


async def test_a_stream_that_closes_while_being_admitted_leaves_nothing_behind() -> None:
    view = _FakeView()
    service = await _serve(view)
    try:
        for i in range(20):
            c = _Client(service, node=f"quick-{i}")
            await c.open()
            await c.request(CLUSTER_TYPE)
            assert c.ads is not None
            await c.ads.close()
        assert service.core is not None

        async def settled() -> bool:
            return not service.streams and not service.by_node and service.core is not None and service.core.live == 0

        await wait_for(settled, 5, "every stream gone")
    finally:
        await service.stop()
    await asyncio.sleep(0)


async def _publish_calls(n: int) -> int:
    """Python calls lbcp's own code makes to publish one backend change with `n` delta
    clients connected and synced (the core fans it out; Python should not loop over them)."""
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    view.backends["c0"] = {"b0": Stored(Backend(name="b0", address="10.0.0.1", port=80), 1, 1)}
    service = await _serve(view)
    clients = [_Client(service, node=f"n{i}") for i in range(n)]
    try:
        for c in clients:
            await c.open()
            await c.request(CLUSTER_TYPE)
            await c.request(ENDPOINT_TYPE, ["c0"])
        for c in clients:
            await c.settle(CLUSTER_TYPE, ENDPOINT_TYPE)
        calls = 0
        root = str(Path(controlplane.__file__).parent)

        def count(frame: FrameType, event: str, arg: Any) -> None:
            nonlocal calls
            if event == "call" and frame.f_code.co_filename.startswith(root):
                calls += 1

        cache = service.cache
        while cache._pending is not None and not cache._pending.done():
            await asyncio.sleep(0.01)  # an earlier build still queued would take the change in
        published = cache.published
        view.backends["c0"]["b1"] = Stored(Backend(name="b1", address="10.0.0.2", port=80), 2, 2)
        sys.setprofile(count)
        try:
            view.tell({Ref(Kind.BACKEND, "b1", "c0")})  # the cache builds and publishes at once
        finally:
            sys.setprofile(None)
        assert cache.published == published + 1, "the change was not built and published in the call"
        for c in clients:  # and every client gets it
            await c.settle(ENDPOINT_TYPE)
        return calls
    finally:
        for c in clients:
            if c.ads is not None:
                await c.ads.close()
        await service.stop()


async def test_a_publish_costs_python_nothing_per_stream() -> None:
    small, large = await _publish_calls(4), await _publish_calls(32)
    # The build and the publish of one change, the same work whatever the fleet's size:
    # a loop over the streams (their entries, their versions) would add calls per stream.
    assert large == small, f"Python calls to publish one change: {small} with 4 streams, {large} with 32"
