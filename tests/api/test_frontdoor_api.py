"""`/v1/frontdoor/*` follows the live fleet: xDS clients that connect and ACK appear, one
that disconnects disappears within the registry's flush interval. The clients here have no
ops listener, so their fleet opts out of probing, and their public addresses lie inside the
fleet's allowed front CIDR (otherwise they would not be in service at all)."""

from __future__ import annotations

from controlplane.intent.model import Backend, Cluster
from controlplane.intent.store import Store
from controlplane.xds.client import AdsClient
from controlplane.xds.resources import CLUSTER_TYPE
from tests.conftest import wait_for


async def test_frontdoor_follows_the_fleet(api, store: Store, make_replica) -> None:
    replica = await make_replica("frontdoor", front_cidrs=("edge=203.0.113.0/24",), front_unprobed=("edge",))
    await store.put(Cluster(name="web"))
    rev = (await store.put(Backend(name="b", address="10.0.0.1", port=80), cluster="web")).revision
    # These clients ACK once: let the replica publish the writes first, so that ACK is final.
    assert await replica.view.wait_for_revision(rev, 5)

    async def published() -> bool:
        return replica.cache.revision >= rev

    await wait_for(published, what="the replica publishing the writes")
    clients = []
    for i in range(3):
        c = AdsClient(f"127.0.0.1:{replica.port}", f"edge-{i}", "edge")
        c.node.metadata.update({"public_address": f"203.0.113.{10 + i}"})
        await c.open()
        await c.request(CLUSTER_TYPE)
        r = await c.recv()
        await c.request(CLUSTER_TYPE, version=r.version_info, nonce=r.nonce)  # ACK: configured
        clients.append(c)

    async def members() -> list[str]:
        return [
            m["address"] for m in (await api.get("/v1/frontdoor/json", params={"fleet": "edge"})).json()["in_service"]
        ]

    async def three() -> bool:
        return await members() == ["203.0.113.10", "203.0.113.11", "203.0.113.12"]

    await wait_for(three, what="3 Envoys in service")
    dns = await api.get("/v1/frontdoor/dns", params={"fleet": "edge", "zone": "example.com", "name": "www", "ttl": 30})
    assert dns.status_code == 200 and dns.text.count("\tIN\tA\t") == 3
    again = await api.get(
        "/v1/frontdoor/dns", params={"fleet": "edge", "zone": "example.com", "name": "www", "ttl": 30}
    )
    assert again.headers["etag"] == dns.headers["etag"]  # unchanged set, identical render
    rules = (await api.get("/v1/frontdoor/iptables", params={"fleet": "edge", "vip": "198.51.100.1", "port": 443})).text
    assert rules.count("DNAT") == 3 and "--every 3 --packet 0" in rules
    bird = (await api.get("/v1/frontdoor/bird", params={"fleet": "edge", "node": "edge-1"})).text
    assert "route 198.51.100.1/32 blackhole;" in bird

    # edge-1 goes away: it leaves the records and the rules.
    await clients[1].close()

    async def two() -> bool:
        return await members() == ["203.0.113.10", "203.0.113.12"]

    await wait_for(two, what="the stopped Envoy withdrawn")
    assert "203.0.113.11" not in (await api.get("/v1/frontdoor/nftables", params={"fleet": "edge"})).text
    assert (
        "route 198.51.100.1"
        not in (await api.get("/v1/frontdoor/bird", params={"fleet": "edge", "node": "edge-1"})).text
    )
    bad = await api.get("/v1/frontdoor/bind")
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    for c in (clients[0], clients[2]):
        await c.close()


async def test_drain_api_contract(api, make_replica) -> None:
    """Drain/undrain: a clear 4xx for an unknown node, a bad body or a node not drained;
    ?force drains a node before it connects; the drain shows in /v1/fleet. (The raw client
    has no ops listener: its fleet opts out of probing, so the drain flag alone decides.)"""
    replica = await make_replica("drain", front_unprobed=("edge",))
    missing = await api.post("/v1/fleet/ghost/drain")
    assert missing.status_code == 404 and missing.json()["code"] == "node-not-found"
    assert missing.headers["content-type"] == "application/problem+json"
    for body in ({"reason": 5}, {"reason": "x" * 257}, {"why": "no"}, ["reason"]):
        bad = await api.post("/v1/fleet/ghost/drain", json=body, params={"force": "true"})
        assert bad.status_code == 422, body
    assert (await api.get("/v1/fleet")).json()["drained"] == {}  # nothing written by the refusals
    for params in (
        {"wait": "acked"},
        {"wait": "withdrawn", "timeout": "soon"},
        {"wait": "withdrawn", "timeout": "301s"},
    ):
        bad_wait = await api.post("/v1/fleet/ghost/drain", params={"force": "true", **params})
        assert bad_wait.status_code == 422, params
    assert (await api.get("/v1/fleet")).json()["drained"] == {}

    forced = await api.post("/v1/fleet/ghost/drain", json={"reason": "rack move"}, params={"force": "true"})
    assert forced.status_code == 201 and forced.json()["draining"] is True
    fleet = (await api.get("/v1/fleet")).json()
    assert fleet["drained"]["ghost"]["reason"] == "rack move"
    # A node id with a slash is one node, not a path.
    slash = await api.post("/v1/fleet/rack%2F7/drain", params={"force": "true"})
    assert slash.status_code == 201 and slash.json()["node_id"] == "rack/7"
    assert "rack/7" in (await api.get("/v1/fleet")).json()["drained"]

    # The node connects while drained: it is in the registry but not in service.
    c = AdsClient(f"127.0.0.1:{replica.port}", "ghost", "edge")
    await c.open()
    await c.request(CLUSTER_TYPE)
    r = await c.recv()
    await c.request(CLUSTER_TYPE, version=r.version_info, nonce=r.nonce)

    async def registered() -> bool:
        return (await api.get("/v1/fleet/ghost")).status_code == 200

    await wait_for(registered, what="ghost in the registry")
    assert (await api.get("/v1/fleet/ghost")).json()["draining"] is True
    assert (await api.get("/v1/frontdoor/json")).json()["in_service"] == []

    async def serving() -> bool:
        return [m["node_id"] for m in (await api.get("/v1/frontdoor/json")).json()["in_service"]] == ["ghost"]

    assert (await api.delete("/v1/fleet/ghost/drain")).status_code == 200
    await wait_for(serving, what="ghost in service once undrained")
    gone = await api.delete("/v1/fleet/ghost/drain")
    assert gone.status_code == 404 and gone.json()["code"] == "not-drained"
    assert (await api.delete("/v1/fleet/rack%2F7/drain")).status_code == 200
    await c.close()
