"""CRUD for every kind through the admin API, against a real etcd."""

from __future__ import annotations

import httpx

PROBLEM = "application/problem+json"


async def _setup(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/clusters/web", json={"load_balancer": {"type": "maglev"}})
    assert r.status_code == 201, r.text
    for i in range(3):
        r = await api.post(
            "/v1/clusters/web/backends", json={"name": f"b{i}", "address": "127.0.0.1", "port": 9000 + i}
        )
        assert r.status_code == 201, r.text
    r = await api.put("/v1/listeners/http", json={"port": 10000})
    assert r.status_code == 201, r.text
    r = await api.put(
        "/v1/routes/main",
        json={
            "listener": "http",
            "backends": [{"cluster": "web"}],
            "hash_policies": [{"type": "header", "name": "x-user-id"}],
        },
    )
    assert r.status_code == 201, r.text


async def test_cluster_crud(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/clusters/web", json={"protocol": "http2", "connect_timeout": "250ms"})
    assert r.status_code == 201
    etag = r.headers["etag"]
    assert r.json()["revision"] == int(r.headers["lbcp-revision"]) == int(etag.strip('"'))
    r = await api.get("/v1/clusters/web")
    assert r.status_code == 200 and r.headers["etag"] == etag
    body = r.json()
    assert (
        body["protocol"] == "http2"
        and body["connect_timeout"] == "250ms"
        and body["load_balancer"] == {"type": "round_robin"}
    )
    r = await api.patch(
        "/v1/clusters/web",
        json={"load_balancer": {"type": "ring_hash"}},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["load_balancer"]["minimum_ring_size"] == 1024
    assert r.json()["protocol"] == "http2"
    r = await api.get("/v1/clusters")
    assert [c["name"] for c in r.json()["items"]] == ["web"]
    r = await api.delete("/v1/clusters/web")
    assert r.status_code == 200 and r.json()["deleted"]["name"] == "web" and r.json()["revision"] > 0
    r = await api.get("/v1/clusters/web")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM and r.json()["code"] == "cluster-not-found"


async def test_every_kind(api: httpx.AsyncClient) -> None:
    await _setup(api)
    r = await api.get("/v1/clusters/web/backends")
    assert [b["name"] for b in r.json()["items"]] == ["b0", "b1", "b2"]
    r = await api.patch("/v1/clusters/web/backends/b1", json={"admin_state": "drain"})
    assert r.json()["admin_state"] == "drain"
    r = await api.get("/v1/listeners/http")
    assert r.json()["address"] == "0.0.0.0" and r.json()["protocol"] == "http"
    r = await api.get("/v1/routes/main")
    assert r.json()["match"] == {"prefix": "/", "path": None, "regex": None, "headers": []}
    r = await api.get("/v1/routes")
    assert len(r.json()["items"]) == 1
    r = await api.delete("/v1/clusters/web/backends/b2")
    assert r.status_code == 200
    r = await api.delete("/v1/routes/main")
    assert r.status_code == 200
    r = await api.delete("/v1/listeners/http")
    assert r.status_code == 200


async def test_replace_backends(api: httpx.AsyncClient) -> None:
    await _setup(api)
    r = await api.put(
        "/v1/clusters/web/backends",
        json=[
            {"name": "b0", "address": "127.0.0.1", "port": 9000},
            {"name": "b1", "address": "127.0.0.1", "port": 9001, "weight": 3},
            {"name": "b9", "address": "::1", "port": 9009},
        ],
    )
    assert r.status_code == 200, r.text
    assert (r.json()["added"], r.json()["removed"], r.json()["updated"], r.json()["unchanged"]) == (
        ["b9"],
        ["b2"],
        ["b1"],
        1,
    )


async def test_in_use_and_references(api: httpx.AsyncClient) -> None:
    await _setup(api)
    r = await api.delete("/v1/clusters/web")
    assert r.status_code == 409 and r.json()["code"] == "cluster-in-use" and r.json()["users"] == ["route main"]
    r = await api.patch("/v1/clusters/web", json={"load_balancer": {"type": "round_robin"}})
    assert r.status_code == 409 and r.json()["code"] == "cluster-in-use"
    r = await api.put("/v1/routes/other", json={"listener": "http", "backends": [{"cluster": "nope"}]})
    assert r.status_code == 422 and r.json()["errors"] == [
        {"pointer": "/backends/0/cluster", "detail": "cluster 'nope' does not exist"}
    ]
    r = await api.delete("/v1/listeners/http")
    assert r.status_code == 409 and r.json()["code"] == "listener-in-use"
    r = await api.post("/v1/clusters/nope/backends", json={"name": "x", "address": "127.0.0.1", "port": 1})
    assert r.status_code == 404 and r.json()["code"] == "cluster-not-found"
    r = await api.get("/v1/clusters/nope/backends")
    assert r.status_code == 404 and r.json()["code"] == "cluster-not-found"


async def test_pagination(api: httpx.AsyncClient) -> None:
    for i in range(5):
        await api.put(f"/v1/clusters/c{i}", json={})
    names, token = [], None
    while True:
        r = await api.get("/v1/clusters", params={"limit": 2, **({"page_token": token} if token else {})})
        names += [c["name"] for c in r.json()["items"]]
        token = r.json()["next_page_token"]
        if not token:
            break
    assert names == [f"c{i}" for i in range(5)]
    r = await api.get("/v1/clusters", params={"page_token": "garbage"})
    assert r.status_code == 400 and r.json()["code"] == "invalid-page-token"


async def test_a_backend_of_a_missing_cluster_names_the_cluster(api) -> None:
    for method, body in (("GET", None), ("PATCH", {"admin_state": "drain"}), ("DELETE", None)):
        r = await api.request(
            method,
            "/v1/clusters/nope/backends/web-1",
            json=body,
            headers={"content-type": "application/merge-patch+json"} if body else {},
        )
        assert r.status_code == 404, (method, r.text)
        assert r.json()["code"] == "cluster-not-found" and r.json()["detail"] == "cluster 'nope' does not exist"
    assert (await api.put("/v1/clusters/web", json={})).status_code == 201
    missing = await api.get("/v1/clusters/web/backends/web-1")
    assert missing.json()["code"] == "backend-not-found"
