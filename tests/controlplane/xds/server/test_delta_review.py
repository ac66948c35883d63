"""Delta streams that diff only what changed since the table they last compared against
still tell the client everything: driven directly (a DeltaStream over a SnapshotCache of a
view changed by hand; no etcd, no gRPC), what the client holds is tracked from the
responses and compared with what the snapshot says it should hold."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane.intent.keyspace import Ref, Stored
from controlplane.intent.model import Cluster, Kind, Listener
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE
from controlplane.xds.server import common, sotw
from controlplane.xds.server.common import NodeInfo
from controlplane.xds.server.delta import DeltaStream
from controlplane.xds.snapshot import Table, encoded_entry
from tests.controlplane.xds.test_cache import _FakeView, _random_change


class _Client:
    """One delta stream and what its client holds (name -> version), per type."""

    def __init__(self, cache: SnapshotCache, node: str = "n1", fleet: str = "default", **meta: Any) -> None:
        self.cache = cache
        self.fleet = fleet
        self.stream = DeltaStream(NodeInfo(node, fleet, {}, "", dict(meta), "ipv4:127.0.0.1:1"), None, [])
        self.held: dict[str, dict[str, str]] = {}
        self.values: dict[str, dict[str, bytes]] = {}

    def request(self, type_url: str, subscribe: list[str] | None = None, **kw: Any) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=subscribe or [], **kw)
        self.stream.on_request(req, self.cache.snapshot(self.fleet))

    async def flush(self, ack: bool = True) -> list[Any]:
        """Flush the stream and take every response (ACKing it unless told not to), until quiet."""
        got: list[Any] = []
        out: list[Any] = []

        async def write(body: bytes) -> None:
            out.append(discovery_pb2.DeltaDiscoveryResponse.FromString(body))

        for _ in range(10):
            out.clear()
            await self.stream.flush(self.cache.snapshot(self.fleet), write)
            for r in out:
                held = self.held.setdefault(r.type_url, {})
                values = self.values.setdefault(r.type_url, {})
                for resource in r.resources:
                    held[resource.name] = resource.version
                    values[resource.name] = resource.resource.value
                for name in r.removed_resources:
                    held.pop(name, None)
                    values.pop(name, None)
                if ack:
                    self.request(r.type_url, response_nonce=r.nonce)
            got += list(out)
            if not out or not ack:
                return got
        raise AssertionError("the stream never went quiet")

    def owed(self, type_url: str) -> dict[str, str]:
        """What the client should hold of `type_url` as a wildcard subscriber (its own variants included)."""
        snap = self.cache.snapshot(self.fleet)
        return {n: e.version for n, e in self.stream.entries(snap, type_url).items()}


def _cache(view: _FakeView) -> SnapshotCache:
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell(set())
    return cache


async def test_a_node_no_longer_shedding_gets_its_listeners_back_as_the_fleet_has_them() -> None:
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    view.listeners["tcp"] = Stored(Listener(name="tcp", port=10001, protocol="tcp", cluster="c0"), 1, 1)
    view.shed["n1"] = (1, 0, 0, 0)
    cache = _cache(view)
    c = _Client(cache)
    c.request(LISTENER_TYPE)
    await c.flush()
    assert c.held[LISTENER_TYPE] == c.owed(LISTENER_TYPE)
    shed = dict(c.held[LISTENER_TYPE])
    # The shed ends: the fleet's listeners are unchanged, but this node's are not its own any more.
    del view.shed["n1"]
    view.tell(set())
    assert not cache.snapshot("default").sheds
    await c.flush()
    assert c.held[LISTENER_TYPE] == c.owed(LISTENER_TYPE) != shed


async def test_a_listener_that_stops_binding_the_public_address_is_resent() -> None:
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    lst = Listener(name="tcp", address="10.1.1.1", port=10001, protocol="tcp", cluster="c0", bind_public_address=True)
    view.listeners["tcp"] = Stored(lst, 1, 1)
    cache = _cache(view)
    c = _Client(cache, public_address="192.0.2.7")
    c.request(LISTENER_TYPE)
    await c.flush()
    assert b"192.0.2.7" in c.values[LISTENER_TYPE]["tcp"]
    # It stops binding each Envoy's public address (the fleet's listener itself is the same).
    view.listeners["tcp"] = Stored(lst.model_copy(update={"bind_public_address": False}), 2, 2)
    view.tell({Ref(Kind.LISTENER, "tcp")})
    await c.flush()
    assert c.held[LISTENER_TYPE] == c.owed(LISTENER_TYPE)
    assert b"192.0.2.7" not in c.values[LISTENER_TYPE]["tcp"]


# -- a random walk: intent changes, subscriptions, NACKs and late ACKs ----------------------


def _wanted(c: _Client, type_url: str) -> dict[str, str]:
    """What the client should hold of `type_url`: what it follows of the snapshot."""
    st = c.stream.types[type_url]
    entries = c.stream.entries(c.cache.snapshot(c.fleet), type_url)
    return {n: e.version for n, e in entries.items() if st.wildcard or n in st.names}


def _take(c: _Client, r: Any) -> None:
    """The client takes a response it answers late: what it still follows (it dropped what it
    unsubscribed from since, and ignores resources it no longer follows)."""
    st = c.stream.types[r.type_url]
    held = c.held.setdefault(r.type_url, {})
    for resource in r.resources:
        if st.wildcard or resource.name in st.names:
            held[resource.name] = resource.version
    for name in r.removed_resources:
        held.pop(name, None)


@pytest.mark.parametrize("seed", range(12))
async def test_a_random_walk_leaves_the_client_holding_what_it_follows(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This client does not follow the endpoints of every cluster it holds: no make-before-break hold.
    monkeypatch.setattr(common, "WARMING_HOLD_SECONDS", 0.0)
    rnd = random.Random(seed)
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    cache = _cache(view)
    c = _Client(cache, fleet="a", public_address="192.0.2.7")
    c.request(CLUSTER_TYPE)
    c.request(LISTENER_TYPE)
    c.request(ENDPOINT_TYPE, ["c0"])
    c.request(ROUTE_TYPE, ["l0"])
    c.request(SECRET_TYPE, ["k0"])
    rejected: dict[str, dict[str, str]] = {}  # type -> name -> a version the client rejected
    unacked: list[Any] = []
    for step in range(2, 200):
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
            if name in c.stream.types[t].names:
                c.request(t, resource_names_unsubscribe=[name])
                c.held.get(t, {}).pop(name, None)  # the client forgets what it stops following
            else:
                c.request(t, [name])
        elif what < 0.62:
            # It reconnects (maybe as another fleet's), declaring what it holds and follows.
            old = c.stream
            c.fleet = rnd.choice(["a", "b"])
            c.stream = DeltaStream(NodeInfo("n1", c.fleet, {}, "", dict(old.node.metadata), "ipv4:1.2.3.4:5"), None, [])
            for t, st in old.types.items():
                names = sorted(st.names) + (["*"] if st.wildcard and st.names else [])
                c.request(t, names, initial_resource_versions=c.held.get(t, {}))
            unacked = []
        elif what < 0.65:
            t = rnd.choice([CLUSTER_TYPE, LISTENER_TYPE])
            if c.stream.types[t].wildcard:
                c.request(t, resource_names_unsubscribe=["*"])
            else:
                c.request(t, ["*"])
        else:
            out = await c.flush(ack=False)
            unacked += out
        # Answer some of what is in flight: ACK (taking it) or NACK (keeping what it had).
        while unacked and rnd.random() < 0.7:
            r = unacked.pop(0)
            if rnd.random() < 0.15 and not r.removed_resources and r.resources:
                for resource in r.resources:
                    rejected.setdefault(r.type_url, {})[resource.name] = resource.version
                c.request(r.type_url, response_nonce=r.nonce, error_detail=status_pb2.Status(code=3, message="no"))
            else:
                _take(c, r)
                c.request(r.type_url, response_nonce=r.nonce)
        if step % 40 == 0 or step == 199:
            for r in unacked:  # what is still in flight is taken
                _take(c, r)
                c.request(r.type_url, response_nonce=r.nonce)
            unacked = []
            await c.flush()
            for t in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE):
                want, held = _wanted(c, t), c.held.get(t, {})
                for n in set(want) | set(held):
                    if held.get(n) != want.get(n) and rejected.get(t, {}).get(n) != want.get(n):
                        raise AssertionError((seed, step, t, n, held.get(n), want.get(n)))


async def test_a_subscription_held_back_behind_clusters_in_flight_is_answered_once_they_are_acked() -> None:
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    view.listeners["l0"] = Stored(Listener(name="l0", port=10000), 1, 1)
    view.listeners["l1"] = Stored(Listener(name="l1", port=10001), 1, 1)
    cache = _cache(view)
    c = _Client(cache)
    c.request(CLUSTER_TYPE)
    c.request(ENDPOINT_TYPE, ["c0"])
    c.request(LISTENER_TYPE)
    c.request(ROUTE_TYPE, ["l0"])
    await c.flush()
    assert set(c.held[ROUTE_TYPE]) == {"l0"}
    # A cluster change is in flight when the client subscribes to the other listener's routes.
    view.clusters["c1"] = Stored(Cluster(name="c1"), 2, 2)
    view.tell({Ref(Kind.CLUSTER, "c1")})
    (cds,) = await c.flush(ack=False)
    assert cds.type_url == CLUSTER_TYPE
    c.request(ROUTE_TYPE, ["l1"])
    assert await c.flush(ack=False) == []  # routes wait for the clusters (make before break) ...
    c.request(CLUSTER_TYPE, response_nonce=cds.nonce)
    c.request(ENDPOINT_TYPE, ["c1"])
    await c.flush()
    assert set(c.held[ROUTE_TYPE]) == {"l0", "l1"}  # ... and are sent once they are taken


def test_a_sotw_response_of_a_few_named_resources_does_not_copy_the_whole_table() -> None:
    table = Table({f"c{i}": encoded_entry(ENDPOINT_TYPE, f"c{i}", b"x%d" % i) for i in range(5000)})

    class Counted(Table):
        __slots__ = ()
        reads = 0

        def items(self) -> Any:
            Counted.reads += 1
            return super().items()

    counted = table._derived(table._shards, len(table))
    counted.__class__ = Counted
    body = sotw._body(ENDPOINT_TYPE, "v-review", counted, ["c7"])
    assert table["c7"].sotw_chunk in body and Counted.reads == 0
