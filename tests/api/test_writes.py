"""Preconditions, batch atomicity, dry-run, validation errors and limits."""

from __future__ import annotations

import asyncio
import urllib.parse

import httpx
import pytest

from controlplane.etcd import prefix_end


async def _keys(api: httpx.AsyncClient) -> list[bytes]:
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    resp = await store.etcd.range(store.keys.root, prefix_end(store.keys.root), keys_only=True)
    return [kv.key for kv in resp.kvs if not kv.key.startswith(store.index.root)]  # intent, not its index


async def test_if_match_race(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/clusters/web", json={})
    etag = r.headers["etag"]
    a, b = await asyncio.gather(
        api.put("/v1/clusters/web", json={"protocol": "http2"}, headers={"if-match": etag}),
        api.put("/v1/clusters/web", json={"protocol": "tcp"}, headers={"if-match": etag}),
    )
    assert sorted([a.status_code, b.status_code]) == [200, 412]
    loser = a if a.status_code == 412 else b
    winner = b if loser is a else a
    assert loser.json()["code"] == "precondition-failed"
    assert loser.headers["etag"] == winner.headers["etag"]
    assert loser.headers["content-type"] == "application/problem+json"


async def test_revision_in_body_acts_as_if_match(api: httpx.AsyncClient) -> None:
    first = (await api.put("/v1/clusters/web", json={})).json()
    await api.put("/v1/clusters/web", json={"protocol": "http2"})
    stale = {**first, "protocol": "tcp"}
    r = await api.put("/v1/clusters/web", json=stale)
    assert r.status_code == 412


async def test_create_only_and_replace_only(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/clusters/web", json={}, headers={"if-none-match": "*"})
    assert r.status_code == 201
    r = await api.put("/v1/clusters/web", json={}, headers={"if-none-match": "*"})
    assert r.status_code == 409 and r.json()["code"] == "already-exists"
    r = await api.post("/v1/clusters", json={"name": "web"})
    assert r.status_code == 409 and r.json()["code"] == "already-exists"
    r = await api.put("/v1/clusters/other", json={}, headers={"if-match": "*"})
    assert r.status_code == 404
    r = await api.delete("/v1/clusters/web", headers={"if-match": '"1"'})
    assert r.status_code == 412


async def test_batch_all_or_nothing(api: httpx.AsyncClient) -> None:
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {"load_balancer": {"type": "maglev"}}},
        {"op": "put", "kind": "backend", "cluster": "web", "name": "a", "body": {"address": "10.0.0.1", "port": 80}},
        {"op": "put", "kind": "listener", "name": "http", "body": {"port": 10000}},
        {"op": "put", "kind": "route", "name": "r", "body": {"listener": "http", "backends": [{"cluster": "missing"}]}},
    ]
    r = await api.post("/v1/batch", json={"operations": ops})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["pointer"] == "/operations/3/body/backends/0/cluster"
    assert await _keys(api) == []
    ops[3]["body"]["backends"][0]["cluster"] = "web"
    r = await api.post("/v1/batch", json={"operations": ops})
    assert r.status_code == 200, r.text
    assert [x["outcome"] for x in r.json()["results"]] == ["created"] * 4
    assert len(await _keys(api)) == 4
    assert int(r.headers["lbcp-revision"]) == r.json()["revision"]
    # A failing precondition in the middle leaves the earlier ops unwritten too.
    r = await api.post(
        "/v1/batch",
        json={
            "operations": [
                {"op": "delete", "kind": "route", "name": "r"},
                {"op": "create", "kind": "listener", "name": "http", "body": {"port": 10001}},
            ]
        },
    )
    assert r.status_code == 409
    assert (await api.get("/v1/routes/r")).status_code == 200


async def test_dry_run_writes_nothing(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/clusters/web?dry_run=true", json={})
    assert r.status_code == 200 and r.headers["lbcp-dry-run"] == "true" and r.headers["lbcp-outcome"] == "created"
    r = await api.post(
        "/v1/batch?dry_run=true", json={"operations": [{"op": "put", "kind": "cluster", "name": "x", "body": {}}]}
    )
    assert r.status_code == 200 and r.json()["dry_run"] is True
    r = await api.put("/v1/clusters/web?dry_run=true", json={"protocol": "bogus"})
    assert r.status_code == 422
    assert await _keys(api) == []


@pytest.mark.parametrize(
    ("path", "body", "pointer", "needle"),
    [
        ("/v1/clusters/Web", {}, "/name", "should match pattern"),
        ("/v1/clusters/" + "a" * 64, {}, "/name", "at most 63"),
        ("/v1/clusters/web", {"protocol": "udp"}, "/protocol", "http1"),
        (
            "/v1/clusters/web",
            {"load_balancer": {"type": "maglev", "table_size": 65536}},
            "/load_balancer/table_size",
            "prime",
        ),
        (
            "/v1/clusters/web",
            {"load_balancer": {"type": "ring_hash", "minimum_ring_size": 10, "maximum_ring_size": 5}},
            "/load_balancer",
            "minimum_ring_size",
        ),
        ("/v1/clusters/web", {"load_balancer": {"type": "fastest"}}, "/load_balancer", "tag"),
        ("/v1/clusters/web", {"connect_timeout": "5 parsecs"}, "/connect_timeout", "invalid duration"),
        ("/v1/clusters/web", {"health_check": {"active": {"type": "http"}}}, "/health_check/active", "path"),
        (
            "/v1/clusters/web",
            {"health_check": {"active": {"type": "tcp", "interval": "1s", "timeout": "2s"}}},
            "/health_check/active",
            "timeout",
        ),
        ("/v1/clusters/web", {"typo_field": 1}, "/typo_field", "Extra inputs"),
        ("/v1/listeners/l", {"port": 70000}, "/port", "65535"),
        ("/v1/listeners/l", {"port": 80, "protocol": "tcp"}, "", "needs 'cluster'"),
        ("/v1/listeners/l", {"port": 80, "address": "example.com"}, "/address", "literal"),
        ("/v1/routes/r", {"listener": "l", "backends": []}, "/backends", "at least 1"),
        (
            "/v1/routes/r",
            {"listener": "l", "backends": [{"cluster": "a"}], "match": {"regex": "(?=x)"}},
            "/match/regex",
            "RE2",
        ),
        (
            "/v1/routes/r",
            {"listener": "l", "backends": [{"cluster": "a"}], "match": {"prefix": "/", "path": "/x"}},
            "/match",
            "exactly one",
        ),
        (
            "/v1/routes/r",
            {"listener": "l", "backends": [{"cluster": "a"}], "hash_policies": [{"type": "header"}]},
            "/hash_policies/0",
            "needs a name",
        ),
        (
            "/v1/routes/r",
            {
                "listener": "l",
                "backends": [{"cluster": "a"}, {"cluster": "b"}],
                "hash_policies": [{"type": "source_ip"}],
            },
            "",
            "ambiguous",
        ),
    ],
)
async def test_validation_errors(api: httpx.AsyncClient, path: str, body: dict, pointer: str, needle: str) -> None:
    r = await api.put(path, json=body)
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["code"] == "validation-failed" and r.headers["content-type"] == "application/problem+json"
    assert any(e["pointer"] == pointer and needle.lower() in e["detail"].lower() for e in doc["errors"]), doc


@pytest.mark.parametrize(
    ("body", "pointer", "needle"),
    [
        ({"address": "300.1.1.1", "port": 80}, "/address", "not a valid IPv4"),
        ({"address": "bad_host!", "port": 80}, "/address", "neither"),
        ({"address": "10.0.0.1", "port": 0}, "/port", "greater than or equal to 1"),
        ({"address": "10.0.0.1", "port": 80, "weight": 0}, "/weight", "greater than or equal to 1"),
        ({"address": "10.0.0.1", "port": 80, "weight": 1_000_001}, "/weight", "less than or equal"),
        ({"address": "10.0.0.1", "port": 80, "priority": 128}, "/priority", "less than or equal"),
        ({"address": "10.0.0.1", "port": 80, "admin_state": "off"}, "/admin_state", "ready"),
        ({"address": "10.0.0.1", "port": 80, "metadata": {f"k{i}": i for i in range(33)}}, "/metadata", "at most 32"),
        (
            {
                "address": "10.0.0.1",
                "port": 80,
                "metadata": {"k": "x" * 1000, "j": "y" * 1000, "l": "z" * 1000, "m": "w" * 1000, "n": "v" * 1000},
            },
            "/metadata",
            "bytes",
        ),
    ],
)
async def test_backend_validation(api: httpx.AsyncClient, body: dict, pointer: str, needle: str) -> None:
    await api.put("/v1/clusters/web", json={})
    r = await api.put("/v1/clusters/web/backends/b", json=body)
    assert r.status_code == 422, r.text
    assert any(e["pointer"] == pointer and needle.lower() in e["detail"].lower() for e in r.json()["errors"]), r.json()


async def test_bad_requests_are_problems(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/clusters/web", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "invalid-json"
    r = await api.put("/v1/clusters/web", content=b"name: web", headers={"content-type": "text/yaml"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported-media-type"
    r = await api.put(
        "/v1/clusters/web", content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422) and r.headers["content-type"] == "application/problem+json"
    r = await api.get("/v1/clusters", params={"limit": 0})
    assert r.status_code == 422 and r.json()["code"] == "validation-failed"
    r = await api.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["code"] == "not-found"
    assert await _keys(api) == []


async def test_body_limit(etcd_config) -> None:
    from tests.conftest import make_app

    app = make_app(etcd_config, max_body_bytes=1024)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.put("/v1/clusters/web", json={"name": "web", "pad": "x" * 2000})
            assert r.status_code == 413 and r.json()["code"] == "payload-too-large"


async def test_auth_roles(etcd_config) -> None:
    from tests.conftest import make_app

    app = make_app(etcd_config, tokens="reader:reader-token-123456,writer:writer-token-123456")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/v1/clusters")
            assert (
                r.status_code == 401
                and r.json()["code"] == "unauthenticated"
                and "bearer" in r.headers["www-authenticate"].lower()
            )
            r = await c.get("/v1/clusters", headers={"authorization": "Bearer wrong-token-000000"})
            assert r.status_code == 401
            reader = {"authorization": "Bearer reader-token-123456"}
            writer = {"authorization": "Bearer writer-token-123456"}
            assert (await c.get("/v1/clusters", headers=reader)).status_code == 200
            r = await c.put("/v1/clusters/web", json={}, headers=reader)
            assert r.status_code == 403 and r.json()["code"] == "forbidden"
            assert (await c.put("/v1/clusters/web", json={}, headers=writer)).status_code == 201
            assert (await c.get("/healthz")).status_code == 200


def test_refuses_public_bind_without_tokens() -> None:
    from api.app import Settings
    from api.auth import Tokens

    with pytest.raises(SystemExit, match="no tokens"):
        Settings(host="0.0.0.0").check()
    Settings(host="127.0.0.1").check()
    Settings(host="0.0.0.0", tokens=Tokens.parse("writer:0123456789abcdef")).check()
    with pytest.raises(ValueError):
        Tokens.parse("admin:0123456789abcdef")
    with pytest.raises(ValueError):
        Tokens.parse("writer:short")


async def test_tls_listener_naming_a_missing_certificate_is_refused(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/listeners/secure", json={"port": 8443, "tls": {"certificates": ["site"]}})
    assert r.status_code == 422 and r.json()["errors"][0]["pointer"] == "/tls/certificates/0"
    assert "certificate 'site' does not exist" in r.json()["errors"][0]["detail"]
    assert await _keys(api) == []


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "%2e%2e", "a%2Fb", "a\x00b", "x" * 300, "-lead", "with space", "ünï", "a\nb"]
)
async def test_names_cannot_escape_the_key_space(api: httpx.AsyncClient, name: str) -> None:
    """Names that could leave their etcd folder, or are not DNS-label-like, are a clear 4xx
    for every kind and every way a name arrives (path or body), and nothing is written."""
    assert (await api.put("/v1/clusters/home", json={})).status_code == 201
    before = await _keys(api)
    quoted = urllib.parse.quote(name, safe="")
    attempts = [
        lambda: api.put(f"/v1/clusters/{quoted}", json={}),
        lambda: api.put(f"/v1/listeners/{quoted}", json={"port": 1000}),
        lambda: api.put(f"/v1/clusters/home/backends/{quoted}", json={"address": "10.0.0.1", "port": 80}),
        lambda: api.post("/v1/clusters", json={"name": name}),
        lambda: api.post("/v1/clusters/home/backends", json={"name": name, "address": "10.0.0.1", "port": 80}),
        lambda: api.post(
            "/v1/batch", json={"operations": [{"op": "put", "kind": "cluster", "name": name, "body": {}}]}
        ),
    ]
    for attempt in attempts:
        r = await attempt()
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert await _keys(api) == before


@pytest.mark.parametrize(
    "params", [{"wait": "later"}, {"wait": "acked", "timeout": "301s"}, {"wait": "acked", "timeout": "soon"}]
)
async def test_a_bad_wait_is_refused_before_anything_is_written(api: httpx.AsyncClient, params: dict[str, str]) -> None:
    """`?wait=`/`?timeout=` are checked before the write: a 422 never leaves a write behind."""
    before = await _keys(api)
    for method, path, body in (
        ("PUT", "/v1/clusters/web", {}),
        ("POST", "/v1/fleets", {"name": "edge"}),
        ("POST", "/v1/batch", {"operations": [{"op": "put", "kind": "cluster", "name": "api", "body": {}}]}),
    ):
        r = await api.request(method, path, json=body, params=params)
        assert r.status_code == 422, (method, path, r.text)
        assert r.json()["errors"][0]["pointer"] in ("/query/wait", "/query/timeout")
    assert await _keys(api) == before
