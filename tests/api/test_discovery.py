"""`Cluster.discovery` is explicit: a hostname backend in an EDS cluster is a 422 that
writes nothing (it used to switch the whole cluster to STRICT_DNS silently); a DNS cluster
takes hostnames and IPs; a DNS cluster holding hostnames cannot be switched back to EDS."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from controlplane.intent.model import Cluster
from controlplane.xds import resources as res


async def _backends(api, cluster: str) -> list[str]:
    return [b["name"] for b in (await api.get(f"/v1/clusters/{cluster}/backends")).json()["items"]]


async def test_a_hostname_in_an_eds_cluster_is_refused_and_nothing_is_written(api) -> None:
    assert (await api.put("/v1/clusters/web", json={})).json()["discovery"] == "eds"
    bad = await api.post(
        "/v1/clusters/web/backends", json={"name": "web-7", "address": "backend.example.com", "port": 80}
    )
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    [err] = bad.json()["errors"]
    assert err["pointer"] == "/address"
    assert "'backend.example.com' is a hostname and cluster 'web' uses EDS" in err["detail"]
    assert '"discovery": "dns"' in err["detail"]
    assert await _backends(api, "web") == []
    before = (await api.get("/v1/clusters/web")).headers["etag"]

    # The same in a batch, beside a good write: the pointer is into the batch; nothing lands.
    ops = [
        {"op": "put", "kind": "cluster", "name": "other", "body": {}},
        {"op": "replace_backends", "cluster": "web", "body": [
            {"name": "ok", "address": "10.0.0.1", "port": 80},
            {"name": "named", "address": "db.internal", "port": 80},
        ]},
    ]  # fmt: skip
    batch = await api.post("/v1/batch", json={"operations": ops})
    assert batch.status_code == 422, batch.text
    assert [e["pointer"] for e in batch.json()["errors"]] == ["/operations/1/body/1/address"]
    assert (await api.get("/v1/clusters/other")).status_code == 404
    assert await _backends(api, "web") == []
    assert (await api.get("/v1/clusters/web")).headers["etag"] == before


async def test_a_dns_cluster_takes_hostnames_and_cannot_go_back_to_eds_while_it_has_them(api) -> None:
    assert (await api.put("/v1/clusters/ext", json={"discovery": "dns"})).status_code == 201
    for name, address in (("h", "backend.example.com"), ("ip", "10.0.0.2")):
        r = await api.post("/v1/clusters/ext/backends", json={"name": name, "address": address, "port": 80})
        assert r.status_code == 201, r.text
    back = await api.put("/v1/clusters/ext", json={"discovery": "eds"})
    assert back.status_code == 422, back.text
    [err] = back.json()["errors"]
    assert err["pointer"] == "/discovery" and "backends named by hostname (h)" in err["detail"]
    assert (await api.get("/v1/clusters/ext")).json()["discovery"] == "dns"
    # Without its hostname backend the switch is allowed.
    assert (await api.delete("/v1/clusters/ext/backends/h")).status_code == 200
    assert (await api.put("/v1/clusters/ext", json={"discovery": "eds"})).status_code == 200
    bad = await api.put("/v1/clusters/ext", json={"discovery": "static"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/discovery"


def test_translation_follows_discovery_not_the_addresses() -> None:
    from controlplane.intent.model import Backend

    ips = [Backend(name="a", address="10.0.0.1", port=80)]
    assert res.cluster_resource(Cluster(name="c"), ips).type == cluster_pb2.Cluster.EDS
    dns = res.cluster_resource(Cluster(name="c", discovery="dns"), ips)
    assert dns.type == cluster_pb2.Cluster.STRICT_DNS
    assert dns.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "10.0.0.1"
