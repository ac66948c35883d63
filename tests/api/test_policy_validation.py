"""Traffic policy through the real admin API and a real etcd: every exclusive or forbidden
combination is a 422 problem+json pointing at the field to change, alone, in a batch (the
pointer under the operation's body) and with dry-run, and writes nothing (etcd's revision
does not move); references from mirrors and tracing are checked like backends'; a route that
only redirects or answers round-trips with ETags; the OpenAPI document describes it all."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

PROBLEM = "application/problem+json"

# The world every case starts from: an http1 cluster `web`, an http2 cluster `otel`, a tcp
# cluster `raw`, an http1 cluster `shadow`, an http listener `http`, a tcp listener `tcp`.
SETUP = [
    {"op": "put", "kind": "cluster", "name": "web", "body": {}},
    {"op": "put", "kind": "cluster", "name": "shadow", "body": {}},
    {"op": "put", "kind": "cluster", "name": "otel", "body": {"protocol": "http2"}},
    {"op": "put", "kind": "cluster", "name": "raw", "body": {"protocol": "tcp"}},
    {"op": "put", "kind": "listener", "name": "http", "body": {"port": 10080}},
    {"op": "put", "kind": "listener", "name": "tcp", "body": {"port": 10081, "protocol": "tcp", "cluster": "raw"}},
]
FWD = {"listener": "http", "backends": [{"cluster": "web"}]}
REDIRECT = {"listener": "http", "redirect": {"host": "example.com"}}
DIRECT = {"listener": "http", "direct_response": {"status": 503, "body": "down"}}
FIELDS = {"status": "%RESPONSE_CODE%"}


async def _setup(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/batch", json={"operations": SETUP})
    assert r.status_code == 200, r.text


async def _revision(api: httpx.AsyncClient) -> int:
    """etcd's revision: any write anywhere moves it."""
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    resp = await store.etcd.range(store.keys.root, count_only=True)
    return int(resp.header.revision)


def _pointers(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    doc = r.json()
    assert doc["code"] == "validation-failed" and doc["status"] == 422, doc
    return [e["pointer"] for e in doc["errors"]]


# (kind, name, body, pointer, words of the detail): one object on its own is wrong.
MODEL_CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("route", "r", {**REDIRECT, "backends": [{"cluster": "web"}]}, "/redirect", "takes no backends"),
    ("route", "r", {**DIRECT, "backends": [{"cluster": "web"}]}, "/direct_response", "takes no backends"),
    ("route", "r", {**REDIRECT, "direct_response": {"status": 200}}, "/direct_response", "not both"),
    ("route", "r", {"listener": "http"}, "/backends", "at least 1 backend"),
    ("route", "r", {**REDIRECT, "retries": {"attempts": 2}}, "/retries", "forward to backends"),
    ("route", "r", {**DIRECT, "rewrite": {"host": "a.example"}}, "/rewrite", "forward to backends"),
    ("route", "r", {**REDIRECT, "mirror": [{"cluster": "shadow"}]}, "/mirror", "forward to backends"),
    ("route", "r", {**DIRECT, "hash_policies": [{"type": "path"}]}, "/hash_policies", "forward to backends"),
    (
        "route",
        "r",
        {**FWD, "retries": {"attempts": 2, "on": ["5xx"], "status_codes": [503]}},
        "/retries/status_codes",
        "retriable-status-codes",
    ),
    (
        "route",
        "r",
        {**FWD, "retries": {"attempts": 2, "on": ["retriable-status-codes"]}},
        "/retries/status_codes",
        "needs status_codes",
    ),
    ("route", "r", {**FWD, "retries": {"attempts": 11}}, "/retries/attempts", "10"),
    (
        "route",
        "r",
        {**FWD, "rewrite": {"prefix": "/", "regex": {"pattern": "^/a", "substitution": "/b"}}},
        "/rewrite/regex",
        "not both",
    ),
    ("route", "r", {**FWD, "match": {"regex": "^/a.*"}, "rewrite": {"prefix": "/b"}}, "/rewrite", "regex rewrite"),
    ("route", "r", {**REDIRECT, "match": {"regex": "^/a.*"}, "redirect": {"prefix": "/b"}}, "/redirect", "prefix"),
    ("route", "r", {**REDIRECT, "redirect": {"path": "/a", "prefix": "/b"}}, "/redirect/prefix", "not both"),
    ("route", "r", {**FWD, "request_headers": {"remove": ["host"]}}, "/request_headers/remove/0", "host"),
    ("route", "r", {**FWD, "response_headers": {"remove": [":status"]}}, "/response_headers/remove/0", "pseudo"),
    (
        "route",
        "r",
        {**FWD, "request_headers": {"set": {"x-a": "1"}, "add": {"X-A": "2"}}},
        "/request_headers/add",
        "both set and added",
    ),
    (
        "route",
        "r",
        {**FWD, "response_headers": {"set": {"x-a": "1"}, "remove": ["x-a"]}},
        "/response_headers/remove",
        "removed and set",
    ),
    (
        "route",
        "r",
        {**FWD, "cors": {"allow_origins": ["*"], "allow_credentials": True}},
        "/cors",
        "name the origins",
    ),
    ("route", "r", {**FWD, "rate_limit": {"requests": 1, "key": {}}}, "/rate_limit/key", "header or source_ip"),
    (
        "route",
        "r",
        {**FWD, "rate_limit": {"requests": 1, "key": {"header": "x-a", "source_ip": True}}},
        "/rate_limit/key",
        "header or source_ip",
    ),
    ("route", "r", {**FWD, "rate_limit": {"requests": 1, "per": "1d"}}, "/rate_limit/per", "1s"),
    ("route", "r", {**FWD, "mirror": [{"cluster": "shadow", "percent": 150}]}, "/mirror/0/percent", "100"),
    ("route", "r", {**FWD, "fault": {}}, "/fault", "delay or abort"),
    (
        "route",
        "r",
        {**DIRECT, "direct_response": {"status": 200, "body": "x" * (64 * 1024 + 1)}},
        "/direct_response/body",
        "65536 bytes",
    ),
    ("route", "r", {**FWD, "hash_policies": [{"type": "path", "name": "p"}]}, "/hash_policies/0", "takes no name"),
    (
        "cluster",
        "c",
        {"load_balancer": {"type": "maglev"}, "slow_start": {"window": "30s"}},
        "/slow_start",
        "round_robin or least_request",
    ),
    (
        "cluster",
        "c",
        {"load_balancer": {"type": "ring_hash"}, "slow_start": {"window": "30s"}},
        "/slow_start",
        "ring_hash",
    ),
    (
        "cluster",
        "c",
        {"load_balancer": {"type": "random"}, "slow_start": {"window": "30s"}},
        "/slow_start",
        "random",
    ),
    (
        "cluster",
        "c",
        {"circuit_breakers": {"max_retries": 3, "retry_budget": {"percent": 20}}},
        "/circuit_breakers/retry_budget",
        "not both",
    ),
    ("listener", "l", {"port": 10090, "access_log": {"format": "json"}}, "/access_log/fields", "needs fields"),
    (
        "listener",
        "l",
        {"port": 10090, "access_log": {"format": "text", "fields": FIELDS}},
        "/access_log/fields",
        "json access logs only",
    ),
    (
        "listener",
        "l",
        {"port": 10090, "access_log": {"format": "json", "fields": {"share": "100%"}}},
        "/access_log/fields/share",
        "%%",
    ),
    (
        "listener",
        "l",
        {"port": 10090, "access_log": {"format": "json", "fields": {"x": "%NOT_AN_OPERATOR%"}}},
        "/access_log/fields/x",
        "NOT_AN_OPERATOR",
    ),
    ("listener", "l", {"port": 10090, "access_log": {"path": "envoy.log"}}, "/access_log/path", "pattern"),
    (
        "listener",
        "l",
        {"port": 10090, "tracing": {"cluster": "otel", "collector": {"address": "127.0.0.1"}}},
        "/tracing",
        "exactly one",
    ),
    ("listener", "l", {"port": 10090, "tracing": {"sampling_percent": 5}}, "/tracing", "exactly one"),
    (
        "listener",
        "l",
        {"port": 10090, "protocol": "tcp", "cluster": "raw", "tracing": {"cluster": "otel"}},
        "/tracing",
        "http listeners only",
    ),
]

# One object that is fine on its own, but not in the world it would join.
REFERENCE_CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("route", "r", {**FWD, "mirror": [{"cluster": "nope"}]}, "/mirror/0/cluster", "does not exist"),
    (
        "route",
        "r",
        {**FWD, "mirror": [{"cluster": "shadow"}, {"cluster": "raw"}]},
        "/mirror/1/cluster",
        "speaks tcp",
    ),
    ("listener", "l", {"port": 10090, "tracing": {"cluster": "nope"}}, "/tracing/cluster", "does not exist"),
    ("listener", "l", {"port": 10090, "tracing": {"cluster": "web"}}, "/tracing/cluster", "http2"),
]

CASES = MODEL_CASES + REFERENCE_CASES
_IDS = [f"{kind}:{pointer}:{i}" for i, (kind, _, _, pointer, _) in enumerate(CASES)]


def _path(kind: str, name: str) -> str:
    return f"/v1/{kind}s/{name}"


@pytest.mark.parametrize(("kind", "name", "body", "pointer", "words"), CASES, ids=_IDS)
async def test_refused_alone_in_a_batch_and_dry_run_writing_nothing(
    api: httpx.AsyncClient, kind: str, name: str, body: dict[str, Any], pointer: str, words: str
) -> None:
    await _setup(api)
    before = await _revision(api)

    r = await api.put(_path(kind, name), json=body)
    assert _pointers(r) == [pointer], r.json()
    assert any(words.lower() in e["detail"].lower() for e in r.json()["errors"]), r.json()

    r = await api.put(_path(kind, name) + "?dry_run=true", json=body)
    assert _pointers(r) == [pointer], r.json()

    # In a batch, after a valid operation: the pointer is under the failing operation's body,
    # and the valid one is not written either.
    ops = [
        {"op": "put", "kind": "cluster", "name": "extra", "body": {}},
        {"op": "put", "kind": kind, "name": name, "body": body},
    ]
    r = await api.post("/v1/batch", json={"operations": ops})
    assert _pointers(r) == [f"/operations/1/body{pointer}"], r.json()
    r = await api.post("/v1/batch?dry_run=true", json={"operations": ops})
    assert _pointers(r) == [f"/operations/1/body{pointer}"], r.json()

    assert await _revision(api) == before, "a refused write moved etcd's revision"
    assert (await api.get(_path(kind, name))).status_code == 404
    assert (await api.get("/v1/clusters/extra")).status_code == 404


async def test_a_reference_created_in_the_same_batch_is_accepted(api: httpx.AsyncClient) -> None:
    """Mirrors and tracing clusters are checked against the final state of the batch."""
    await _setup(api)
    ops = [
        {"op": "put", "kind": "cluster", "name": "copy", "body": {}},
        {"op": "put", "kind": "cluster", "name": "collector", "body": {"protocol": "http2"}},
        {"op": "put", "kind": "route", "name": "r", "body": {**FWD, "mirror": [{"cluster": "copy"}]}},
        {"op": "put", "kind": "listener", "name": "l", "body": {"port": 10090, "tracing": {"cluster": "collector"}}},
    ]
    r = await api.post("/v1/batch", json={"operations": ops})
    assert r.status_code == 200, r.text
    assert (await api.get("/v1/routes/r")).json()["mirror"] == [{"cluster": "copy", "percent": 100.0}]


async def test_clusters_in_use_by_mirrors_and_tracing(api: httpx.AsyncClient) -> None:
    await _setup(api)
    r = await api.post(
        "/v1/batch",
        json={
            "operations": [
                {"op": "put", "kind": "route", "name": "r", "body": {**FWD, "mirror": [{"cluster": "shadow"}]}},
                {
                    "op": "put",
                    "kind": "listener",
                    "name": "traced",
                    "body": {"port": 10090, "tracing": {"cluster": "otel", "sampling_percent": 10}},
                },
            ]
        },
    )
    assert r.status_code == 200, r.text
    before = await _revision(api)

    async def refused(r: httpx.Response, user: str) -> None:
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["code"] == "cluster-in-use" and r.json()["users"] == [user], r.json()
        assert await _revision(api) == before

    await refused(await api.delete("/v1/clusters/shadow"), "route r")
    await refused(await api.delete("/v1/clusters/shadow?dry_run=true"), "route r")
    await refused(await api.patch("/v1/clusters/shadow", json={"protocol": "tcp"}), "route r")
    await refused(await api.delete("/v1/clusters/otel"), "listener traced")
    await refused(await api.patch("/v1/clusters/otel", json={"protocol": "http1"}), "listener traced")
    await refused(await api.put("/v1/clusters/otel", json={}), "listener traced")  # http1 by default
    r = await api.post("/v1/batch", json={"operations": [{"op": "delete", "kind": "cluster", "name": "otel"}]})
    await refused(r, "listener traced")

    # Still usable the other way: an http2 -> http2 change, and a route's other mirrors.
    r = await api.patch("/v1/clusters/otel", json={"connect_timeout": "2s"})
    assert r.status_code == 200, r.text
    # Removing the user and the cluster together is fine.
    r = await api.post(
        "/v1/batch",
        json={
            "operations": [
                {"op": "put", "kind": "route", "name": "r", "body": FWD},
                {"op": "delete", "kind": "cluster", "name": "shadow"},
                {"op": "put", "kind": "listener", "name": "traced", "body": {"port": 10090}},
                {"op": "delete", "kind": "cluster", "name": "otel"},
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert (await api.get("/v1/clusters/shadow")).status_code == 404
    assert (await api.get("/v1/clusters/otel")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"listener": "http", "redirect": {"scheme": "https", "host": "example.com", "status": 308}},
            "redirect",
        ),
        (
            {
                "listener": "http",
                "direct_response": {"status": 200, "body": '{"ok":true}', "content_type": "application/json"},
            },
            "direct_response",
        ),
    ],
)
async def test_routes_without_backends_round_trip_with_etags(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    await _setup(api)
    r = await api.put("/v1/routes/answer", json=body)
    assert r.status_code == 201, r.text
    etag = r.headers["etag"]
    assert r.json()["backends"] == [] and r.json()[field] is not None
    got = await api.get("/v1/routes/answer")
    assert got.status_code == 200 and got.headers["etag"] == etag
    stored = got.json()
    assert stored["backends"] == [] and stored["redirect" if field == "direct_response" else "direct_response"] is None
    for k, v in body[field].items():
        assert stored[field][k] == v, (k, stored[field])
    # Sent back as read (with its revision), it is a no-op; with a change and If-Match, it updates.
    r = await api.put("/v1/routes/answer", json=stored)
    assert r.status_code == 200 and r.headers["lbcp-outcome"] == "unchanged", (r.status_code, r.headers)
    changed = {**body, "rate_limit": {"requests": 5}}
    r = await api.put("/v1/routes/answer", json=changed, headers={"if-match": etag})
    assert r.status_code == 200, r.text
    new_etag = r.headers["etag"]
    assert new_etag != etag and (await api.get("/v1/routes/answer")).json()["rate_limit"]["requests"] == 5
    r = await api.put("/v1/routes/answer", json=body, headers={"if-match": etag})  # stale
    assert r.status_code == 412 and r.headers["etag"] == new_etag
    # A merge patch that adds backends to it is refused at the answer's field.
    before = await _revision(api)
    r = await api.patch("/v1/routes/answer", json={"backends": [{"cluster": "web"}]})
    assert _pointers(r) == [f"/{field}"], r.json()
    assert await _revision(api) == before
    # Turning it into a forwarding route takes both in one patch.
    r = await api.patch("/v1/routes/answer", json={field: None, "backends": [{"cluster": "web"}]})
    assert r.status_code == 200, r.text
    assert r.json()[field] is None and r.json()["backends"] == [{"cluster": "web", "weight": 1}]


NEW_FIELDS = {
    "Route": [
        "retries",
        "redirect",
        "direct_response",
        "rewrite",
        "request_headers",
        "response_headers",
        "mirror",
        "fault",
        "cors",
        "rate_limit",
    ],
    "Cluster": ["slow_start"],
    "CircuitBreakers": ["retry_budget"],
    "Listener": ["access_log", "tracing"],
}


async def test_openapi_describes_the_policies(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]

    def described(prop: dict[str, Any]) -> bool:
        """A description on the property, or on the schema it refers to (`X | None` is an
        anyOf of a $ref and null; a list refers through `items`)."""
        if prop.get("description"):
            return True
        refs = [prop.get("$ref")] + [p.get("$ref") for p in prop.get("anyOf", [])]
        refs += [prop.get("items", {}).get("$ref")]
        return any(r and schemas[r.rsplit("/", 1)[1]].get("description") for r in refs)

    for model, fields in NEW_FIELDS.items():
        props = schemas[model]["properties"]
        for f in fields:
            assert f in props, (model, f)
            assert described(props[f]), (model, f, props[f])
    route = schemas["Route"]
    assert "backends" not in route.get("required", []), route.get("required")  # optional with an answer
    # The shapes a client needs: enums and bounds as the model enforces them.
    on = schemas["Retries"]["properties"]["on"]["items"]
    assert set(on["enum"]) == {
        "5xx",
        "gateway-error",
        "reset",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
    }
    attempts = schemas["Retries"]["properties"]["attempts"]
    assert (attempts["minimum"], attempts["maximum"]) == (1, 10)
    assert schemas["Redirect"]["properties"]["status"]["enum"] == [301, 302, 303, 307, 308]
    assert schemas["RateLimit"]["properties"]["scope"]["enum"] == ["envoy", "fleet"]
    assert set(schemas["HashPolicy"]["properties"]["type"]["enum"]) >= {"path"}
