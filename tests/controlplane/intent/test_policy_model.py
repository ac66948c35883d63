"""Traffic policy in the intent model on its own: every rule of the route, cluster and
listener policies (ranges, exclusive and forbidden combinations, defaults, canonical form),
each refusal at the field the operator has to change (the error's `loc`, which the API turns
into a problem+json pointer)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from controlplane.intent.keyspace import Keyspace
from controlplane.intent.model import (
    DIRECT_RESPONSE_MAX_BODY,
    Cluster,
    Kind,
    Listener,
    RateLimit,
    Route,
)

FWD = {"name": "r", "listener": "l", "backends": [{"cluster": "web"}]}  # a route that forwards
REDIRECT = {"name": "r", "listener": "l", "redirect": {"host": "example.com"}}
DIRECT = {"name": "r", "listener": "l", "direct_response": {"status": 503}}


def _errors(model: type, data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def _refused(model: type, data: dict[str, Any], loc: tuple[Any, ...], needle: str) -> None:
    """`data` is refused with an error at exactly `loc` whose message holds `needle`."""
    errors = _errors(model, data)
    assert any(at == loc and needle.lower() in m.lower() for at, m in errors), errors


def _round_trip(kind: Kind, obj: Any) -> dict[str, Any]:
    """As stored (the keyspace's encoding) and read back: equal, and the stored spec."""
    raw = Keyspace.encode(kind, obj)
    assert Keyspace.decode(kind, raw) == obj
    spec: dict[str, Any] = json.loads(raw)["spec"]
    return spec


# --- answers without backends ------------------------------------------------------------------


def test_redirect_and_direct_response_make_backends_optional() -> None:
    r = Route.model_validate(REDIRECT)
    assert r.backends == [] and r.clusters == ()
    assert r.redirect is not None and r.redirect.status == 301 and r.redirect.strip_query is False
    spec = _round_trip(Kind.ROUTE, r)
    assert spec["backends"] == [] and spec["redirect"]["status"] == 301
    d = Route.model_validate({**DIRECT, "direct_response": {"status": 200, "body": "ok"}})
    assert d.direct_response is not None and d.direct_response.content_type == "text/plain"
    assert _round_trip(Kind.ROUTE, d)["direct_response"] == {"status": 200, "body": "ok", "content_type": "text/plain"}
    # Without either, a route still needs a backend, at /backends.
    _refused(Route, {"name": "r", "listener": "l"}, ("backends",), "at least 1 backend")
    _refused(Route, {"name": "r", "listener": "l", "backends": []}, ("backends",), "redirect or direct_response")


@pytest.mark.parametrize(
    ("data", "loc", "needle"),
    [
        ({**FWD, "redirect": {"host": "a.example"}}, ("redirect",), "takes no backends"),
        ({**FWD, "direct_response": {"status": 200}}, ("direct_response",), "takes no backends"),
        ({**REDIRECT, "direct_response": {"status": 200}}, ("direct_response",), "not both"),
        ({**REDIRECT, "retries": {"attempts": 2}}, ("retries",), "forward to backends"),
        ({**DIRECT, "retries": {"attempts": 2}}, ("retries",), "forward to backends"),
        ({**REDIRECT, "rewrite": {"host": "b.example"}}, ("rewrite",), "forward to backends"),
        ({**DIRECT, "mirror": [{"cluster": "shadow"}]}, ("mirror",), "forward to backends"),
        ({**REDIRECT, "hash_policies": [{"type": "source_ip"}]}, ("hash_policies",), "forward to backends"),
        # Envoy's CORS filter passes over a route without a route action (cors_filter.cc).
        ({**REDIRECT, "cors": {"allow_origins": ["*"]}}, ("cors",), "forward to backends"),
        ({**DIRECT, "cors": {"allow_origins": ["*"]}}, ("cors",), "forward to backends"),
        ({**REDIRECT, "redirect": {"status": 302}}, ("redirect",), "loops"),
    ],
)
def test_exclusive_answers(data: dict[str, Any], loc: tuple[Any, ...], needle: str) -> None:
    _refused(Route, data, loc, needle)


def test_policies_that_need_no_backend_go_with_answers() -> None:
    """Headers, faults and rate limits act before the answer: allowed on both."""
    for base in (REDIRECT, DIRECT):
        r = Route.model_validate(
            {
                **base,
                "response_headers": {"set": {"x-a": "1"}},
                "fault": {"delay": {"duration": "10ms"}},
                "rate_limit": {"requests": 5},
            }
        )
        assert r.rate_limit is not None and r.rate_limit.scope == "envoy"


def test_redirect_shapes() -> None:
    r = Route.model_validate(
        {**REDIRECT, "redirect": {"scheme": "https", "port": 8443, "prefix": "/new", "status": 308}}
    )
    assert r.redirect is not None and (r.redirect.scheme, r.redirect.port, r.redirect.status) == ("https", 8443, 308)
    _refused(Route, {**REDIRECT, "redirect": {"path": "/a", "prefix": "/b"}}, ("redirect", "prefix"), "not both")
    _refused(Route, {**REDIRECT, "redirect": {"status": 200}}, ("redirect", "status"), "301")
    _refused(Route, {**REDIRECT, "redirect": {"path": "a"}}, ("redirect", "path"), "pattern")
    _refused(Route, {**REDIRECT, "redirect": {"port": 0}}, ("redirect", "port"), "greater than or equal to 1")
    _refused(Route, {**REDIRECT, "redirect": {"host": "a b"}}, ("redirect", "host"), "pattern")
    _refused(Route, {**REDIRECT, "redirect": {"scheme": "ftp"}}, ("redirect", "scheme"), "http")
    # A prefix redirect replaces the matched prefix: a regex match has none.
    _refused(
        Route,
        {**REDIRECT, "match": {"regex": "/a.*"}, "redirect": {"prefix": "/b"}},
        ("redirect",),
        "prefix or path match",
    )
    assert Route.model_validate({**REDIRECT, "match": {"regex": "/a.*"}, "redirect": {"path": "/b"}}).redirect
    assert Route.model_validate({**REDIRECT, "match": {"path": "/a"}, "redirect": {"prefix": "/b"}}).redirect


def test_direct_response_body_limit() -> None:
    at_limit = "x" * DIRECT_RESPONSE_MAX_BODY
    assert Route.model_validate({**DIRECT, "direct_response": {"status": 200, "body": at_limit}})
    _refused(
        Route,
        {**DIRECT, "direct_response": {"status": 200, "body": at_limit + "x"}},
        ("direct_response", "body"),
        f"at most {DIRECT_RESPONSE_MAX_BODY} bytes",
    )
    # Bytes of UTF-8, not characters: 32,769 two-byte characters are over.
    _refused(
        Route,
        {**DIRECT, "direct_response": {"status": 200, "body": "é" * (DIRECT_RESPONSE_MAX_BODY // 2 + 1)}},
        ("direct_response", "body"),
        "bytes",
    )
    _refused(Route, {**DIRECT, "direct_response": {"status": 199}}, ("direct_response", "status"), "200")
    _refused(Route, {**DIRECT, "direct_response": {"status": 600}}, ("direct_response", "status"), "599")
    _refused(
        Route,
        {**DIRECT, "direct_response": {"status": 200, "content_type": "text/plain\r\nx-a: b"}},
        ("direct_response", "content_type"),
        "pattern",
    )


# --- retries -----------------------------------------------------------------------------------


def test_retry_defaults_and_canonical_form() -> None:
    r = Route.model_validate({**FWD, "retries": {"attempts": 3}})
    assert r.retries is not None
    assert r.retries.on == ["connect-failure", "refused-stream", "gateway-error"]
    assert r.retries.status_codes == [] and r.retries.per_try_timeout is None and r.retries.backoff is None
    r = Route.model_validate(
        {
            **FWD,
            "retries": {
                "attempts": 10,
                "on": ["retriable-status-codes", "5xx"],
                "status_codes": [503, 502, 503],
                "per_try_timeout": "0.5s",
                "backoff": {"base": "100ms", "max": "1s"},
            },
        }
    )
    spec = _round_trip(Kind.ROUTE, r)["retries"]
    assert spec == {
        "attempts": 10,
        "on": ["retriable-status-codes", "5xx"],
        "status_codes": [502, 503],  # sorted, once each
        "per_try_timeout": "500ms",
        "backoff": {"base": "100ms", "max": "1s"},
    }
    assert Route.model_validate({**FWD, "retries": {"attempts": 1, "backoff": {}}}).retries.backoff.base == 0.025  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("retries", "loc", "needle"),
    [
        ({"attempts": 0}, ("retries", "attempts"), "greater than or equal to 1"),
        ({"attempts": 11}, ("retries", "attempts"), "less than or equal to 10"),
        ({}, ("retries", "attempts"), "required"),
        ({"attempts": 1, "on": []}, ("retries", "on"), "at least 1"),
        ({"attempts": 1, "on": ["5xx", "5xx"]}, ("retries", "on"), "repeat"),
        ({"attempts": 1, "on": ["4xx"]}, ("retries", "on", 0), "retriable-4xx"),
        # status_codes go with retriable-status-codes, and it with them
        ({"attempts": 1, "on": ["5xx"], "status_codes": [503]}, ("retries", "status_codes"), "retriable-status-codes"),
        ({"attempts": 1, "status_codes": [503]}, ("retries", "status_codes"), "retriable-status-codes"),
        ({"attempts": 1, "on": ["retriable-status-codes"]}, ("retries", "status_codes"), "needs status_codes"),
        (
            {"attempts": 1, "on": ["retriable-status-codes"], "status_codes": []},
            ("retries", "status_codes"),
            "retriable-status-codes",
        ),
        (
            {"attempts": 1, "on": ["retriable-status-codes"], "status_codes": [600]},
            ("retries", "status_codes", 0),
            "599",
        ),
        ({"attempts": 1, "backoff": {"base": "1s", "max": "500ms"}}, ("retries", "backoff", "max"), "at least base"),
        ({"attempts": 1, "backoff": {"max": "10ms"}}, ("retries", "backoff", "max"), "at least base"),
        ({"attempts": 1, "per_try_timeout": "0s"}, ("retries", "per_try_timeout"), "greater than 0"),
        ({"attempts": 1, "jitter": True}, ("retries", "jitter"), "extra"),
    ],
)
def test_retry_rules(retries: dict[str, Any], loc: tuple[Any, ...], needle: str) -> None:
    _refused(Route, {**FWD, "retries": retries}, loc, needle)


# --- rewrite -----------------------------------------------------------------------------------


def test_rewrite_rules() -> None:
    r = Route.model_validate(
        {
            **FWD,
            "match": {"regex": "^/v1/(.*)$"},
            "rewrite": {"regex": {"pattern": "^/v1/(.*)$", "substitution": "/\\1"}},
        }
    )
    assert r.rewrite is not None and r.rewrite.regex is not None and r.rewrite.regex.substitution == "/\\1"
    assert Route.model_validate({**FWD, "rewrite": {"prefix": "/", "host": "internal.example"}}).rewrite
    _refused(
        Route,
        {**FWD, "rewrite": {"prefix": "/", "regex": {"pattern": "a", "substitution": "b"}}},
        ("rewrite", "regex"),
        "prefix or regex, not both",
    )
    _refused(Route, {**FWD, "rewrite": {}}, ("rewrite",), "needs prefix, regex or host")
    _refused(Route, {**FWD, "match": {"regex": "/a.*"}, "rewrite": {"prefix": "/"}}, ("rewrite",), "regex rewrite")
    _refused(
        Route,
        {**FWD, "rewrite": {"regex": {"pattern": "(?=x)", "substitution": ""}}},
        ("rewrite", "regex", "pattern"),
        "RE2",
    )
    _refused(Route, {**FWD, "rewrite": {"host": "bad host"}}, ("rewrite", "host"), "pattern")


# --- header changes ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["request_headers", "response_headers"])
def test_header_changes(field: str) -> None:
    r = Route.model_validate(
        {**FWD, field: {"set": {"X-Frame-Options": "DENY"}, "add": {"x-b": "2"}, "remove": ["Server"]}}
    )
    # Header names are case-insensitive: stored lowercase.
    assert _round_trip(Kind.ROUTE, r)[field] == {
        "set": {"x-frame-options": "DENY"},
        "add": {"x-b": "2"},
        "remove": ["server"],
    }
    for name in (":path", ":authority", "host", "Host"):
        _refused(Route, {**FWD, field: {"set": {name: "x"}}}, (field, "set", name, "[key]"), "cannot be changed")
        _refused(Route, {**FWD, field: {"add": {name: "x"}}}, (field, "add", name, "[key]"), "cannot be changed")
        _refused(Route, {**FWD, field: {"remove": [name]}}, (field, "remove", 0), "cannot be changed")
    _refused(Route, {**FWD, field: {"set": {"x a": "1"}}}, (field, "set", "x a", "[key]"), "pattern")
    _refused(Route, {**FWD, field: {"set": {"x-a": "1\r\nx-b: 2"}}}, (field, "set", "x-a"), "pattern")
    # Overlaps: set and add, and either with remove (case-insensitively).
    _refused(Route, {**FWD, field: {"set": {"x-a": "1"}, "add": {"X-A": "2"}}}, (field, "add"), "both set and added")
    _refused(Route, {**FWD, field: {"set": {"x-a": "1"}, "remove": ["x-a"]}}, (field, "remove"), "removed and set")
    _refused(Route, {**FWD, field: {"add": {"x-a": "1"}, "remove": ["X-A"]}}, (field, "remove"), "removed and set")
    _refused(Route, {**FWD, field: {"remove": ["x-a", "x-a"]}}, (field, "remove"), "repeat")
    _refused(Route, {**FWD, field: {"set": {"X-A": "1", "x-a": "2"}}}, (field, "set"), "repeat")  # not one lost
    _refused(Route, {**FWD, field: {"set": {f"x-{i}": "v" for i in range(33)}}}, (field, "set"), "at most 32")


# --- mirror, fault, CORS -----------------------------------------------------------------------


def test_mirror_rules() -> None:
    r = Route.model_validate({**FWD, "mirror": [{"cluster": "shadow", "percent": 12.5}, {"cluster": "web"}]})
    assert r.clusters == ("web", "shadow")  # a mirror is a reference like a backend (once each)
    assert r.mirror[1].percent == 100.0
    _refused(Route, {**FWD, "mirror": [{"cluster": "s"}, {"cluster": "s"}]}, ("mirror",), "once")
    _refused(Route, {**FWD, "mirror": [{"cluster": "s", "percent": 101}]}, ("mirror", 0, "percent"), "100")
    _refused(Route, {**FWD, "mirror": [{"cluster": "s", "percent": -1}]}, ("mirror", 0, "percent"), "0")
    _refused(Route, {**FWD, "mirror": [{"cluster": "S!"}]}, ("mirror", 0, "cluster"), "pattern")
    _refused(Route, {**FWD, "mirror": [{"cluster": f"m{i}"} for i in range(9)]}, ("mirror",), "at most 8")


def test_fault_rules() -> None:
    r = Route.model_validate({**FWD, "fault": {"delay": {"duration": "1.5s", "percent": 10}, "abort": {"status": 503}}})
    assert _round_trip(Kind.ROUTE, r)["fault"] == {
        "delay": {"duration": "1500ms", "percent": 10.0},
        "abort": {"status": 503, "percent": 100.0},
    }
    _refused(Route, {**FWD, "fault": {}}, ("fault",), "delay or abort")
    _refused(Route, {**FWD, "fault": {"abort": {"status": 100}}}, ("fault", "abort", "status"), "200")
    _refused(
        Route, {**FWD, "fault": {"abort": {"status": 503, "percent": 100.1}}}, ("fault", "abort", "percent"), "100"
    )
    _refused(Route, {**FWD, "fault": {"delay": {}}}, ("fault", "delay", "duration"), "required")


def test_cors_rules() -> None:
    r = Route.model_validate(
        {
            **FWD,
            "cors": {
                "allow_origins": ["https://app.example", {"regex": "https://.*\\.example"}],
                "allow_methods": ["GET", "POST"],
                "allow_headers": ["authorization"],
                "expose_headers": ["x-trace"],
                "max_age": "10m",
                "allow_credentials": True,
            },
        }
    )
    assert _round_trip(Kind.ROUTE, r)["cors"]["max_age"] == "600s"
    assert Route.model_validate({**FWD, "cors": {"allow_origins": ["*"]}}).cors
    _refused(
        Route,
        {**FWD, "cors": {"allow_origins": ["https://a.example", "*"], "allow_credentials": True}},
        ("cors",),
        "name the origins",
    )
    _refused(Route, {**FWD, "cors": {"allow_origins": []}}, ("cors", "allow_origins"), "at least 1")
    _refused(Route, {**FWD, "cors": {}}, ("cors", "allow_origins"), "required")
    _refused(
        Route,
        {**FWD, "cors": {"allow_origins": ["*"], "allow_methods": ["GE T"]}},
        ("cors", "allow_methods", 0),
        "pattern",
    )
    errors = _errors(Route, {**FWD, "cors": {"allow_origins": [{"regex": "(?=x)"}]}})
    assert any(at[:3] == ("cors", "allow_origins", 0) and "RE2" in m for at, m in errors), errors


# --- rate limits -------------------------------------------------------------------------------


def test_rate_limit_defaults_and_periods() -> None:
    r = Route.model_validate({**FWD, "rate_limit": {"requests": 100}})
    assert r.rate_limit == RateLimit(requests=100)
    assert (r.rate_limit.per, r.rate_limit.burst, r.rate_limit.key, r.rate_limit.scope) == ("1s", 0, None, "envoy")
    assert [RateLimit(requests=1, per=p).seconds for p in ("1s", "1m", "1h")] == [1, 60, 3600]
    fleet = Route.model_validate(
        {
            **FWD,
            "rate_limit": {"requests": 600, "per": "1m", "burst": 50, "key": {"header": "X-Tenant"}, "scope": "fleet"},
        }
    )
    assert _round_trip(Kind.ROUTE, fleet)["rate_limit"] == {
        "requests": 600,
        "per": "1m",
        "burst": 50,
        "key": {"header": "x-tenant", "source_ip": None},
        "scope": "fleet",
    }
    assert Route.model_validate({**FWD, "rate_limit": {"requests": 1, "key": {"source_ip": True}}}).rate_limit


@pytest.mark.parametrize(
    ("rate_limit", "loc", "needle"),
    [
        ({"requests": 0}, ("rate_limit", "requests"), "greater than or equal to 1"),
        ({}, ("rate_limit", "requests"), "required"),
        ({"requests": 1, "per": "1d"}, ("rate_limit", "per"), "'1s', '1m' or '1h'"),
        ({"requests": 1, "burst": -1}, ("rate_limit", "burst"), "greater than or equal to 0"),
        ({"requests": 1, "scope": "global"}, ("rate_limit", "scope"), "'envoy' or 'fleet'"),
        # A key is a header or the client address: exactly one.
        ({"requests": 1, "key": {}}, ("rate_limit", "key"), "header or source_ip"),
        ({"requests": 1, "key": {"source_ip": False}}, ("rate_limit", "key"), "header or source_ip"),
        ({"requests": 1, "key": {"header": "x-a", "source_ip": True}}, ("rate_limit", "key"), "header or source_ip"),
        ({"requests": 1, "key": {"header": "x a"}}, ("rate_limit", "key", "header"), "pattern"),
        ({"requests": 1, "key": {"cookie": "sid"}}, ("rate_limit", "key", "cookie"), "extra"),
    ],
)
def test_rate_limit_rules(rate_limit: dict[str, Any], loc: tuple[Any, ...], needle: str) -> None:
    _refused(Route, {**FWD, "rate_limit": rate_limit}, loc, needle)


# --- path hashing ------------------------------------------------------------------------------


def test_path_hash_policy() -> None:
    r = Route.model_validate({**FWD, "hash_policies": [{"type": "path"}, {"type": "path", "query": False}]})
    assert [h.query for h in r.hash_policies] == [None, False]
    _refused(Route, {**FWD, "hash_policies": [{"type": "path", "name": "x"}]}, ("hash_policies", 0), "takes no name")
    _refused(
        Route,
        {**FWD, "hash_policies": [{"type": "header", "name": "x", "query": True}]},
        ("hash_policies", 0),
        "path hash policies only",
    )
    _refused(Route, {**FWD, "hash_policies": [{"type": "path", "ttl": "1s"}]}, ("hash_policies", 0), "cookie")


# --- clusters ----------------------------------------------------------------------------------


def test_slow_start() -> None:
    for lb in ({"type": "round_robin"}, {"type": "least_request"}):
        c = Cluster.model_validate({"name": "c", "load_balancer": lb, "slow_start": {"window": "30s"}})
        assert c.slow_start is not None
        assert (c.slow_start.window, c.slow_start.aggression, c.slow_start.min_weight_percent) == (30, 1.0, 10.0)
    assert Cluster.model_validate({"name": "c", "slow_start": {"window": "1m"}}).slow_start  # round robin by default
    for lb in ({"type": "maglev"}, {"type": "ring_hash"}, {"type": "random"}):
        _refused(
            Cluster, {"name": "c", "load_balancer": lb, "slow_start": {"window": "30s"}}, ("slow_start",), lb["type"]
        )
    _refused(Cluster, {"name": "c", "slow_start": {}}, ("slow_start", "window"), "required")
    _refused(
        Cluster,
        {"name": "c", "slow_start": {"window": "1s", "aggression": 0}},
        ("slow_start", "aggression"),
        "greater than 0",
    )
    _refused(
        Cluster,
        {"name": "c", "slow_start": {"window": "1s", "min_weight_percent": 101}},
        ("slow_start", "min_weight_percent"),
        "100",
    )


def test_retry_budget() -> None:
    c = Cluster.model_validate({"name": "c", "circuit_breakers": {"max_requests": 10, "retry_budget": {}}})
    assert c.circuit_breakers is not None and c.circuit_breakers.retry_budget is not None
    assert (c.circuit_breakers.retry_budget.percent, c.circuit_breakers.retry_budget.min_concurrency) == (20.0, 3)
    _refused(
        Cluster,
        {"name": "c", "circuit_breakers": {"max_retries": 3, "retry_budget": {"percent": 10}}},
        ("circuit_breakers", "retry_budget"),
        "not both",
    )
    _refused(
        Cluster,
        {"name": "c", "circuit_breakers": {"retry_budget": {"percent": 100.5}}},
        ("circuit_breakers", "retry_budget", "percent"),
        "100",
    )
    _refused(
        Cluster,
        {"name": "c", "circuit_breakers": {"retry_budget": {"min_concurrency": -1}}},
        ("circuit_breakers", "retry_budget", "min_concurrency"),
        "0",
    )


# --- listeners ---------------------------------------------------------------------------------


def test_access_log() -> None:
    text = Listener.model_validate({"name": "l", "port": 80, "access_log": {}})
    assert text.access_log is not None and (text.access_log.format, text.access_log.path) == ("text", "/dev/stdout")
    fields = {
        "status": "%RESPONSE_CODE%",
        "path": "%REQ(:PATH):64%",
        "when": "%START_TIME(%Y-%m-%dT%H:%M:%S%z)%",
        "share": "100%% of %BYTES_SENT%",
    }
    j = Listener.model_validate(
        {"name": "l", "port": 80, "access_log": {"format": "json", "fields": fields, "path": "/var/log/envoy.log"}}
    )
    assert _round_trip(Kind.LISTENER, j)["access_log"] == {
        "format": "json",
        "fields": fields,
        "path": "/var/log/envoy.log",
    }
    tcp = {"name": "t", "port": 81, "protocol": "tcp", "cluster": "db"}
    assert Listener.model_validate({**tcp, "access_log": {"format": "json", "fields": {"b": "%BYTES_RECEIVED%"}}})


@pytest.mark.parametrize(
    ("access_log", "loc", "needle"),
    [
        ({"format": "json"}, ("access_log", "fields"), "json access log needs fields"),
        ({"format": "json", "fields": {}}, ("access_log", "fields"), "json access log needs fields"),
        ({"fields": {"a": "%PROTOCOL%"}}, ("access_log", "fields"), "json access logs only"),
        ({"format": "text", "fields": {"a": "%PROTOCOL%"}}, ("access_log", "fields"), "json access logs only"),
        ({"format": "json", "fields": {"a": "%"}}, ("access_log", "fields", "a"), "%%"),
        ({"format": "json", "fields": {"a": "100%"}}, ("access_log", "fields", "a"), "%%"),
        ({"format": "json", "fields": {"a": "%REQ(:PATH)"}}, ("access_log", "fields", "a"), "%%"),
        ({"format": "json", "fields": {"a": "%req(:path)%"}}, ("access_log", "fields", "a"), "%%"),
        ({"format": "json", "fields": {"a": "%NO_SUCH_OPERATOR%"}}, ("access_log", "fields", "a"), "NO_SUCH_OPERATOR"),
        ({"format": "json", "fields": {"a": ""}}, ("access_log", "fields", "a"), "at least 1"),
        ({"format": "xml"}, ("access_log", "format"), "'text' or 'json'"),
        ({"path": "envoy.log"}, ("access_log", "path"), "pattern"),
        ({"path": "./envoy.log"}, ("access_log", "path"), "pattern"),
        ({"path": "/var/log/../../etc/passwd"}, ("access_log", "path"), ".."),
        ({"path": "/var/log/"}, ("access_log", "path"), "file path"),
    ],
)
def test_access_log_rules(access_log: dict[str, Any], loc: tuple[Any, ...], needle: str) -> None:
    _refused(Listener, {"name": "l", "port": 80, "access_log": access_log}, loc, needle)


def test_tracing() -> None:
    by_cluster = Listener.model_validate({"name": "l", "port": 80, "tracing": {"cluster": "otel"}})
    assert by_cluster.clusters == ("otel",)  # a reference, like a tcp listener's cluster
    assert by_cluster.tracing is not None
    assert (by_cluster.tracing.sampling_percent, by_cluster.tracing.service_name) == (1.0, "envoy")
    direct = Listener.model_validate({"name": "l", "port": 80, "tracing": {"collector": {"address": "::0001"}}})
    assert direct.clusters == ()
    assert _round_trip(Kind.LISTENER, direct)["tracing"]["collector"] == {"address": "::1", "port": 4317}
    both = {"cluster": "otel", "collector": {"address": "127.0.0.1"}}
    _refused(Listener, {"name": "l", "port": 80, "tracing": both}, ("tracing",), "exactly one of collector or cluster")
    _refused(Listener, {"name": "l", "port": 80, "tracing": {}}, ("tracing",), "exactly one of collector or cluster")
    _refused(
        Listener,
        {"name": "t", "port": 80, "protocol": "tcp", "cluster": "db", "tracing": {"cluster": "otel"}},
        ("tracing",),
        "http listeners only",
    )
    _refused(
        Listener,
        {"name": "l", "port": 80, "tracing": {"collector": {"address": "otel.local"}}},
        ("tracing", "collector", "address"),
        "IPv4/IPv6 literal",
    )
    _refused(
        Listener,
        {"name": "l", "port": 80, "tracing": {"cluster": "otel", "sampling_percent": 100.01}},
        ("tracing", "sampling_percent"),
        "100",
    )
    _refused(
        Listener,
        {"name": "l", "port": 80, "tracing": {"cluster": "otel", "service_name": "a\nb"}},
        ("tracing", "service_name"),
        "pattern",
    )


def test_everything_at_once_round_trips() -> None:
    """A route using every forwarding policy stores and reads back unchanged."""
    r = Route.model_validate(
        {
            **FWD,
            "backends": [{"cluster": "web", "weight": 1}],
            "hash_policies": [{"type": "path", "query": True}],
            "retries": {"attempts": 2, "on": ["5xx", "reset"], "per_try_timeout": "2s"},
            "rewrite": {"prefix": "/v2/", "host": "web.internal"},
            "request_headers": {"set": {"x-env": "prod"}, "remove": ["x-debug"]},
            "response_headers": {"add": {"via": "lbcp"}},
            "mirror": [{"cluster": "shadow", "percent": 5}],
            "fault": {"abort": {"status": 500, "percent": 0.5}},
            "cors": {"allow_origins": ["*"], "allow_methods": ["GET"]},
            "rate_limit": {"requests": 10, "burst": 5, "key": {"source_ip": True}},
            "websocket": True,
        }
    )
    spec = _round_trip(Kind.ROUTE, r)
    assert Route.model_validate(spec) == r
    assert spec["retries"]["per_try_timeout"] == "2s" and spec["rewrite"]["prefix"] == "/v2/"
