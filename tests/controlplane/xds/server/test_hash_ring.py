"""lbcp.v1.HashRing over ADS: built on demand, exact, pushed only when the ring changes."""

from __future__ import annotations

import asyncio

from controlplane.gen.lbcp.v1 import ring_pb2
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import AdminState, Backend, Cluster, Kind, Listener
from controlplane.intent.store import Store
from controlplane.ring.tables import ring_for, sample_hashes
from controlplane.ring.watch import RingPicker, watch
from controlplane.xds.client import AdsClient
from controlplane.xds.resources import CLUSTER_TYPE, HASH_RING_TYPE
from tests.controlplane.xds.server.test_protocol import QUIET, _client, _settle


async def _seed(store: Store, algorithm: str = "maglev") -> tuple[list[Backend], int]:
    await store.put(Cluster(name="shop", load_balancer={"type": algorithm}))
    await store.put(Cluster(name="plain"))  # round robin: no ring
    members = [Backend(name=f"s{i}", address=f"10.0.0.{i + 1}", port=80, weight=1 + i % 3) for i in range(8)]
    for b in members:
        res = await store.put(b, cluster="shop")
    await store.put(Backend(name="p1", address="10.0.1.1", port=80), cluster="plain")
    return members, res.revision


def _agrees(ring: ring_pb2.HashRing, cluster: Cluster, members: list[Backend]) -> None:
    expected = ring_for(cluster, members)
    picker = RingPicker(ring)
    hashes = sample_hashes(5000)
    assert [picker.pick(h) for h in hashes] == [expected.pick(h) for h in hashes]


async def test_sotw_ring_is_exact_and_only_resent_when_it_changes(store: Store, replica) -> None:
    members, rev = await _seed(store)
    await _settle(replica, rev)
    c = await _client(replica)
    await c.request(HASH_RING_TYPE, ["shop", "plain", "nope"])
    r = await c.recv()
    rings = AdsClient.decode(r)
    assert set(rings) == {"shop"}  # round robin and unknown clusters have no ring
    ring = rings["shop"]
    assert ring.algorithm == ring_pb2.HashRing.MAGLEV and ring.table_size == 65537 and ring.revision >= rev
    assert [b.name for b in ring.backends] == sorted(b.name for b in members)
    _agrees(ring, Cluster(name="shop", load_balancer={"type": "maglev"}), members)
    await c.request(HASH_RING_TYPE, ["shop", "plain", "nope"], version=r.version_info, nonce=r.nonce)

    # Intent that does not touch the cluster (a listener) sends nothing.
    await _settle(replica, (await store.put(Listener(name="l", port=10000))).revision)
    assert await c.recv(QUIET) is None
    # A re-IP'd backend is resent (consumers need its address) with the very same table:
    # its hash key is its name, so no key moves.
    moved = members[0].model_copy(update={"address": "10.9.9.9"})
    await _settle(replica, (await store.put(moved, cluster="shop")).revision)
    r1 = await c.recv()
    ring1 = AdsClient.decode(r1)["shop"]
    assert ring1.backends[0].address == "10.9.9.9"
    assert ring1.priorities[0].maglev_table == ring.priorities[0].maglev_table
    await c.request(HASH_RING_TYPE, ["shop", "plain", "nope"], version=r1.version_info, nonce=r1.nonce)

    # Draining a backend takes it out of the ring: a new ring, same answer as the model.
    drained = members[1].model_copy(update={"admin_state": AdminState.DRAIN})
    rev = (await store.put(drained, cluster="shop")).revision
    await _settle(replica, rev)
    r2 = await c.recv()
    ring2 = AdsClient.decode(r2)["shop"]
    assert ring2.revision == rev and r2.version_info != r.version_info
    assert next(b for b in ring2.backends if b.name == drained.name).draining
    members2 = [moved, drained, *members[2:]]
    _agrees(ring2, Cluster(name="shop", load_balancer={"type": "maglev"}), members2)
    assert drained.name not in set(RingPicker(ring2).shares()) - {
        n for n, s in RingPicker(ring2).shares().items() if s == 0
    }
    await c.close()
    # The stream is gone: nobody wants the ring any more.
    await asyncio.sleep(0.1)
    assert replica.cache._wanted_rings() == set()


async def test_delta_ring_follows_algorithm_and_deletion(store: Store, replica) -> None:
    members, rev = await _seed(store, "ring_hash")
    await _settle(replica, rev)
    updates = watch(f"127.0.0.1:{replica.port}", "shop", "watcher-1")
    u = await anext(updates)
    assert u.cluster == "shop" and u.ring is not None and u.ring.ring.algorithm == ring_pb2.HashRing.RING_HASH
    _agrees(u.ring.ring, Cluster(name="shop", load_balancer={"type": "ring_hash"}), members)
    # Switching the cluster to round robin removes its ring; back to maglev brings one again.
    await store.put(Cluster(name="shop"))
    u = await asyncio.wait_for(anext(updates), 5)
    assert u.cluster == "shop" and u.ring is None
    await store.put(Cluster(name="shop", load_balancer={"type": "maglev", "table_size": 251}))
    u = await asyncio.wait_for(anext(updates), 5)
    assert u.ring is not None and len(u.ring.ring.priorities[0].maglev_table) == 251
    _agrees(u.ring.ring, Cluster(name="shop", load_balancer={"type": "maglev", "table_size": 251}), members)
    # Deleting the cluster removes its ring.
    await store.delete(Ref(Kind.CLUSTER, "shop"))
    u = await asyncio.wait_for(anext(updates), 5)
    assert u.cluster == "shop" and u.ring is None
    await updates.aclose()


async def test_wildcard_ring_subscription_gets_every_hashing_cluster(store: Store, replica) -> None:
    members, rev = await _seed(store)
    await store.put(Cluster(name="carts", load_balancer={"type": "ring_hash"}))
    rev = (await store.put(Backend(name="c1", address="10.0.2.1", port=80), cluster="carts")).revision
    await _settle(replica, rev)
    c = await _client(replica, delta=True)
    await c.delta_request(HASH_RING_TYPE, ["*"])
    got: dict = {}
    while set(got) != {"shop", "carts"}:
        r = await c.recv()
        assert r is not None, got
        got |= AdsClient.decode(r)
        await c.delta_request(HASH_RING_TYPE, nonce=r.nonce)
    # A ring subscription does not disturb the Envoy types on the same stream.
    await c.delta_request(CLUSTER_TYPE, ["*"])
    r = await c.recv()
    assert set(AdsClient.decode(r)) == {"shop", "plain", "carts"}
    await c.close()
