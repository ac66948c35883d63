"""xDS protocol behaviour with a raw client: nonces, ACK/NACK, subscriptions, reconnects."""

from __future__ import annotations

import asyncio

from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind, Listener, Route
from controlplane.intent.store import Store
from controlplane.xds.client import AdsClient
from controlplane.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from tests.conftest import wait_for

QUIET = 0.3  # how long a quick "no response" check waits: a fast wrong push fails early
# A quiet spell alone proves nothing (a wrong push may come later): each one is followed by a
# marker, a change that must reach the stream, and the first response after the spell must be
# that change; then the replica's own count of pushes on the stream (`_pushes`) must match
# exactly what the client received, so a wrong push, early or late, fails the test.


async def _client(replica, node="n1", delta=False) -> AdsClient:
    c = AdsClient(f"127.0.0.1:{replica.port}", node, "default", delta=delta)
    await c.open()
    return c


async def _seed(store: Store) -> int:
    await store.put(Cluster(name="a"))
    await store.put(Cluster(name="b"))
    await store.put(Backend(name="a1", address="10.0.0.1", port=80), cluster="a")
    await store.put(Listener(name="http", port=10000))
    res = await store.put(Route(name="r", listener="http", backends=[{"cluster": "a"}]))
    return res.revision


def _pushes(replica, node: str) -> dict[str, int]:
    """The replica's own count of responses pushed to `node` (its newest stream), per type."""
    streams = [s for s in replica.service.streams.values() if s.node.id == node]
    assert streams, f"no stream of {node} on the replica"
    newest = max(streams, key=lambda s: s.id)
    return {t: st.pushes for t, st in newest.types.items() if st.pushes}


async def _settle(replica, revision: int) -> None:
    assert await replica.view.wait_for_revision(revision, 5)
    for _ in range(100):
        if replica.cache.revision >= revision:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(
        f"cache did not publish: cache={replica.cache.revision} view={replica.view.revision} want={revision} "
        f"pending={replica.cache._pending} stats={replica.cache.stats}"
    )


async def test_sotw_ack_nack_and_stale_nonce(store: Store, replica) -> None:
    await _settle(replica, await _seed(store))
    c = await _client(replica)
    await c.request(CLUSTER_TYPE)
    r1 = await c.recv()
    assert set(AdsClient.decode(r1)) == {"a", "b"}
    await c.request(CLUSTER_TYPE, version=r1.version_info, nonce=r1.nonce)  # ACK
    assert await c.recv(QUIET) is None  # nothing more to say

    # The marker: the first response after the spell is this change's, not a resend of r1.
    await _settle(replica, (await store.put(Cluster(name="c"))).revision)
    r2 = await c.recv()
    assert r2 is not None and set(AdsClient.decode(r2)) == {"a", "b", "c"} and r2.nonce != r1.nonce
    assert _pushes(replica, "n1") == {CLUSTER_TYPE: 2}
    # A request carrying an old nonce is stale: ignored, no response.
    await c.request(CLUSTER_TYPE, version=r1.version_info, nonce=r1.nonce)
    assert await c.recv(QUIET) is None
    # NACK the latest: recorded, and the rejected version is not sent again.
    await c.request(CLUSTER_TYPE, version=r1.version_info, nonce=r2.nonce, error="bad cluster c")
    assert await c.recv(QUIET) is None
    stream = next(iter(replica.service.streams.values()))
    nack = stream.types[CLUSTER_TYPE].nack
    assert nack.message == "bad cluster c" and nack.version == r2.version_info
    await asyncio.sleep(0.2)
    assert replica.registry.nacks[-1]["message"] == "bad cluster c"
    # An unrelated write that leaves clusters alone does not resend them either.
    await _settle(replica, (await store.put(Backend(name="a2", address="10.0.0.2", port=80), cluster="a")).revision)
    assert await c.recv(QUIET) is None
    # The next intent change does: the marker for the three spells above. Any response to
    # the stale request, a resend of the NACKed version or of the unrelated write would come
    # first (and would have made the NACK's nonce stale), and the replica counts 3 pushes.
    await _settle(replica, (await store.put(Cluster(name="d"))).revision)
    r3 = await c.recv()
    assert r3 is not None and set(AdsClient.decode(r3)) == {"a", "b", "c", "d"}
    assert r3.version_info not in (r1.version_info, r2.version_info)
    assert _pushes(replica, "n1") == {CLUSTER_TYPE: 3}
    await c.close()


async def test_sotw_named_resources_and_resource_before_it_exists(store: Store, replica) -> None:
    await _settle(replica, await _seed(store))
    c = await _client(replica)
    await c.request(ENDPOINT_TYPE, ["a", "later"])
    r = await c.recv()
    assert set(AdsClient.decode(r)) == {"a"}
    await c.request(ENDPOINT_TYPE, ["a", "later"], version=r.version_info, nonce=r.nonce)
    assert await c.recv(QUIET) is None
    # Endpoints of a cluster it did not ask for are not sent.
    await _settle(replica, (await store.put(Backend(name="b1", address="10.0.0.9", port=80), cluster="b")).revision)
    assert await c.recv(QUIET) is None
    # The named resource appears: sent without being asked again (the cluster first, on its
    # own: a change after a quiet spell is published at once). It is the marker for the two
    # spells above: a resend of "a" or a push of "b" would be the first response instead.
    await _settle(replica, (await store.put(Cluster(name="later"))).revision)
    r1 = await c.recv()
    assert r1 is not None and set(AdsClient.decode(r1)) == {"later"}
    assert _pushes(replica, "n1") == {ENDPOINT_TYPE: 2}
    await c.request(ENDPOINT_TYPE, ["a", "later"], version=r1.version_info, nonce=r1.nonce)
    await _settle(replica, (await store.put(Backend(name="l1", address="10.0.0.3", port=80), cluster="later")).revision)
    r2 = await c.recv()
    cla = AdsClient.decode(r2)
    # EDS is incremental in SotW: only what changed ("a" is unchanged and not resent).
    assert set(cla) == {"later"}
    assert cla["later"].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "10.0.0.3"
    await c.request(ENDPOINT_TYPE, ["a", "later"], version=r2.version_info, nonce=r2.nonce)
    await _settle(replica, (await store.put(Backend(name="a9", address="10.0.0.4", port=80), cluster="a")).revision)
    r3 = await c.recv()
    assert set(AdsClient.decode(r3)) == {"a"} and r3.version_info not in (r.version_info, r2.version_info)
    # Unsubscribing one name leaves nothing new to send but a new set: the full set answers it.
    await c.request(ENDPOINT_TYPE, ["a"], version=r3.version_info, nonce=r3.nonce)
    r4 = await c.recv()
    assert set(AdsClient.decode(r4)) == {"a"}
    assert _pushes(replica, "n1") == {ENDPOINT_TYPE: 5}
    await c.close()


async def test_sotw_reconnect_with_version_gets_nothing(store: Store, replica) -> None:
    await _settle(replica, await _seed(store))
    c = await _client(replica)
    await c.request(LISTENER_TYPE)
    r = await c.recv()
    await c.close()
    c2 = await _client(replica)
    await c2.request(LISTENER_TYPE, version=r.version_info)
    again = await c2.recv(QUIET)
    assert again is None, (r.version_info, again.version_info, r.resources == again.resources, replica.cache.stats)
    # The marker: a listener change must reach c2, and be the first thing it gets (a late
    # resend of the version it declared would come first), the only LDS push on its stream.
    await _settle(replica, (await store.put(Listener(name="http", port=10001))).revision)
    changed = await c2.recv()
    assert changed is not None and changed.version_info != r.version_info
    ports = [lst.address.socket_address.port_value for lst in AdsClient.decode(changed).values()]
    assert ports == [10001], ports
    assert _pushes(replica, "n1") == {LISTENER_TYPE: 1}
    await c2.close()


async def test_delta_subscribe_unsubscribe_reconnect(store: Store, replica) -> None:
    await _settle(replica, await _seed(store))
    c = await _client(replica, delta=True)
    await c.delta_request(CLUSTER_TYPE)  # legacy wildcard
    r = await c.recv()
    got = {res.name: res.version for res in r.resources}
    assert set(got) == {"a", "b"} and not r.removed_resources
    await c.delta_request(CLUSTER_TYPE, nonce=r.nonce)
    await c.delta_request(ENDPOINT_TYPE, ["a", "ghost"])
    r = await c.recv()
    assert [x.name for x in r.resources] == ["a"] and list(r.removed_resources) == ["ghost"]
    await c.delta_request(ENDPOINT_TYPE, nonce=r.nonce)
    assert await c.recv(QUIET) is None
    # A backend change sends only that cluster's endpoints.
    # The marker for that spell: the first response after it is the one carrying a2.
    await _settle(replica, (await store.put(Backend(name="a2", address="10.0.0.2", port=80), cluster="a")).revision)
    r = await c.recv()
    assert r is not None and r.type_url == ENDPOINT_TYPE and [x.name for x in r.resources] == ["a"]
    addresses = {
        lb.endpoint.address.socket_address.address for e in AdsClient.decode(r)["a"].endpoints for lb in e.lb_endpoints
    }
    assert addresses == {"10.0.0.1", "10.0.0.2"}
    await c.delta_request(ENDPOINT_TYPE, nonce=r.nonce)
    # Unsubscribed: further changes are not sent.
    await c.delta_request(ENDPOINT_TYPE, unsubscribe=["a"])
    await _settle(replica, (await store.put(Backend(name="a3", address="10.0.0.3", port=80), cluster="a")).revision)
    assert await c.recv(QUIET) is None
    # A deleted cluster is reported removed: the marker for the unsubscribed spell (a push of
    # a3's endpoints would be the first response), and the replica pushed EDS twice only.
    await _settle(
        replica,
        (await store.delete(Ref(Kind.CLUSTER, "b"))).revision,
    )
    r = await c.recv()
    assert r is not None and r.type_url == CLUSTER_TYPE and list(r.removed_resources) == ["b"]
    assert _pushes(replica, "n1") == {CLUSTER_TYPE: 2, ENDPOINT_TYPE: 2}
    await c.close()

    # Reconnect declaring what it has: nothing is resent.
    c2 = await _client(replica, "n2", delta=True)
    await c2.delta_request(CLUSTER_TYPE, ["*"], initial={"a": got["a"]})
    assert await c2.recv(QUIET) is None
    # The marker: a new cluster reaches c2 alone, first (a resend of "a" would come before it).
    await _settle(replica, (await store.put(Cluster(name="e"))).revision)
    r = await c2.recv()
    assert r is not None and r.type_url == CLUSTER_TYPE and [x.name for x in r.resources] == ["e"]
    assert _pushes(replica, "n2") == {CLUSTER_TYPE: 1}
    await c2.close()


async def test_endpoint_churn_never_touches_lds(store: Store, replica) -> None:
    await _settle(replica, await _seed(store))
    for delta in (False, True):
        c = await _client(replica, f"churn-{delta}", delta=delta)
        counts = dict.fromkeys((CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE), 0)

        async def ack(r, c=c, counts=counts, delta=delta):
            counts[r.type_url] += 1
            if delta:
                await c.delta_request(r.type_url, nonce=r.nonce)
            else:
                names = {ENDPOINT_TYPE: ["a", "b"], ROUTE_TYPE: ["http"]}.get(r.type_url, [])
                await c.request(r.type_url, names, version=r.version_info, nonce=r.nonce)

        if delta:
            await c.delta_request(CLUSTER_TYPE)
            await c.delta_request(ENDPOINT_TYPE, ["a", "b"])
            await c.delta_request(LISTENER_TYPE)
            await c.delta_request(ROUTE_TYPE, ["http"])
        else:
            for t, names in (
                (CLUSTER_TYPE, []),
                (ENDPOINT_TYPE, ["a", "b"]),
                (LISTENER_TYPE, []),
                (ROUTE_TYPE, ["http"]),
            ):
                await c.request(t, names)
        for _ in range(20):  # a first response of every type, however slow, then whatever follows
            if all(counts.values()):
                break
            r = await c.recv()
            assert r is not None, ("a type never got its first response", counts)
            await ack(r)
        while (r := await c.recv(QUIET)) is not None:
            await ack(r)
        assert all(counts.values()), counts
        before = dict(counts)
        for i in range(10):
            await _settle(
                replica,
                (
                    await store.put(
                        Backend(name=f"x{int(delta)}-{i}", address="10.1.0.1", port=1000 + i, weight=1 + i), cluster="a"
                    )
                ).revision,
            )
            while (r := await c.recv(QUIET)) is not None:
                await ack(r)
        # The marker: a route change must reach the stream; everything up to its RDS response
        # is counted (a late LDS push caused by the churn would come before it).
        routed = [{"cluster": "a"}, {"cluster": "b"}] if not delta else [{"cluster": "b"}]
        await _settle(replica, (await store.put(Route(name="r", listener="http", backends=routed))).revision)
        for _ in range(50):
            r = await c.recv()
            assert r is not None, ("no RDS response to the route change", counts)
            await ack(r)
            if r.type_url == ROUTE_TYPE:
                break
        assert counts[LISTENER_TYPE] == before[LISTENER_TYPE]
        assert counts[ROUTE_TYPE] == before[ROUTE_TYPE] + 1
        assert counts[CLUSTER_TYPE] == before[CLUSTER_TYPE]
        assert counts[ENDPOINT_TYPE] > before[ENDPOINT_TYPE]
        assert _pushes(replica, f"churn-{delta}") == counts
        await c.close()


async def test_per_type_services(store: Store, replica) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.cluster.v3 import cds_pb2_grpc
    from envoy.service.discovery.v3 import discovery_pb2
    from envoy.service.endpoint.v3 import eds_pb2_grpc

    await _settle(replica, await _seed(store))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch:
        node = base_pb2.Node(id="plain-cds", cluster="default")
        call = cds_pb2_grpc.ClusterDiscoveryServiceStub(ch).StreamClusters()
        await call.write(discovery_pb2.DiscoveryRequest(node=node))  # type_url may be left out on a typed service
        resp = await call.read()
        assert resp.type_url == CLUSTER_TYPE and {AdsClient.decode(resp)[n].name for n in ("a", "b")} == {"a", "b"}
        call.cancel()
        fetched = await eds_pb2_grpc.EndpointDiscoveryServiceStub(ch).FetchEndpoints(
            discovery_pb2.DiscoveryRequest(node=node, resource_names=["a"])
        )
        assert list(AdsClient.decode(fetched)) == ["a"]
        delta = cds_pb2_grpc.ClusterDiscoveryServiceStub(ch).DeltaClusters()
        await delta.write(discovery_pb2.DeltaDiscoveryRequest(node=node))
        d = await delta.read()
        assert sorted(r.name for r in d.resources) == ["a", "b"]
        delta.cancel()


async def test_delta_wildcard_on_empty_intent_gets_an_empty_first_response(store: Store, replica) -> None:
    """Envoy's initialisation waits for a first CDS/LDS response; with no intent at all it must
    still get one, or every Envoy sits out initial_fetch_timeout (15 s) before serving."""
    await replica.cache.wait_ready(5)
    c = await _client(replica, delta=True)
    await c.delta_request(CLUSTER_TYPE)
    r = await c.recv()
    assert r is not None and r.type_url == CLUSTER_TYPE and not r.resources and not r.removed_resources
    await c.delta_request(CLUSTER_TYPE, nonce=r.nonce)
    assert await c.recv(QUIET) is None  # and only once
    # The marker: the first response after that is the first cluster, not the empty one again.
    await _settle(replica, (await store.put(Cluster(name="x"))).revision)
    r = await c.recv()
    assert r is not None and r.type_url == CLUSTER_TYPE and [x.name for x in r.resources] == ["x"]
    assert _pushes(replica, "n1") == {CLUSTER_TYPE: 2}
    await c.close()


async def test_a_late_watch_event_of_an_older_claim_evicts_nobody(store: Store, replica) -> None:
    """A node reconnects: its new stream's claim replaces the old one in etcd. The claim watch
    may deliver the *old* claim's PUT after that; it must not end the new stream (it did:
    `ABORTED ... taken over by a newer stream`, seen once in a full run)."""
    await _settle(replica, await _seed(store))
    c = await _client(replica)
    await c.request(LISTENER_TYPE)
    await c.recv()
    registry = replica.registry
    sid = next(iter(registry._claims))
    old_key = registry.owner_key("n1")
    old = (await store.etcd.range(old_key)).kvs[0]
    await c.close()
    c2 = await _client(replica)
    await c2.request(LISTENER_TYPE)
    await c2.recv()

    async def new_claim() -> bool:
        return bool(registry._claims) and next(iter(registry._claims)) != sid

    await wait_for(new_claim, what="the new stream's claim")
    new_sid = next(iter(registry._claims))
    registry._claim_changed(old_key, old.value, old.mod_revision)  # the stale event, replayed
    assert registry._streams[new_sid].evicted is None
    await c2.close()


async def test_a_claim_whose_holder_goes_between_read_and_takeover_still_gets_in(store: Store, replica) -> None:
    """A node reconnects while the claim of its ended stream is still in etcd: the new claim
    reads it (ours, ended: replaceable) and takes it over at the revision read. If the old
    claim's release lands between that read and the takeover, the takeover's compare fails;
    the claim must then be made afresh, not refused ("another stream claimed this node id at
    the same time", seen twice in one full run). The release is made to land exactly there:
    etcd's own delete, issued right after the claim's first transaction."""
    await _settle(replica, await _seed(store))
    registry = replica.registry
    key = registry.owner_key("n1")
    ended = b'{"replica": "%s", "stream": 999999}' % registry.replica.encode()
    await store.etcd.put(key, ended)  # the claim of a stream of ours that has ended
    real_txn = registry.etcd.txn
    released: list[int] = []

    async def txn(req, **kw):
        resp = await real_txn(req, **kw)
        claims = any(op.request_txn.compare and op.request_txn.compare[0].key == key for op in req.success)
        if claims and not released:
            released.append((await store.etcd.delete(key)).deleted)
        return resp

    registry.etcd.txn = txn
    try:
        c = await _client(replica)
        await c.request(LISTENER_TYPE)
        r = await c.recv()
        assert r.resources and released == [1], released
        value = (await store.etcd.range(key)).kvs[0].value
        assert b'"stream": 999999' not in value, value  # claimed by the new stream
        await c.close()
    finally:
        del registry.etcd.txn
