"""Route translation: every Route field becomes the Envoy config it should (no Envoy needed,
except one `envoy --mode validate` of a configuration that uses every policy at once)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import json_format

from api.localcluster.procs import free_port
from controlplane.intent.model import DIRECT_RESPONSE_MAX_BODY, Cluster, Listener, Route
from controlplane.xds import resources as res
from controlplane.xds.resources import routes as rmod
from controlplane.xds.resources._shared import CORS_FILTER, FAULT_FILTER, RATE_LIMIT_FILTER, RATE_LIMIT_STAT_PREFIX
from tests.envoy_validate import bootstrap, inline_routes, validate

MILLION = percent_pb2.FractionalPercent.MILLION
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def route(**fields: Any) -> Route:
    body: dict[str, Any] = {"name": "r", "listener": "http", "backends": [{"cluster": "web"}], **fields}
    if "redirect" in fields or "direct_response" in fields:
        body.pop("backends")
    return Route.model_validate(body)


def entry(**fields: Any) -> route_components_pb2.Route:
    return res.route_entry(route(**fields))


def unpack(e: route_components_pb2.Route, name: str, msg: Any) -> Any:
    """A per-route filter config, which also turns on the filter (disabled in the HCM)."""
    wrapper = route_components_pb2.FilterConfig()
    assert e.typed_per_filter_config[name].Unpack(wrapper) and not wrapper.disabled
    assert wrapper.config.Unpack(msg)
    return msg


def limit(e: route_components_pb2.Route) -> local_rate_limit_pb2.LocalRateLimit:
    return unpack(e, RATE_LIMIT_FILTER, local_rate_limit_pb2.LocalRateLimit())


# --- retries --------------------------------------------------------------------------------


def test_retries() -> None:
    e = entry(
        retries={
            "attempts": 3,
            "on": ["5xx", "reset", "retriable-status-codes"],
            "status_codes": [503, 429],
            "per_try_timeout": "250ms",
            "backoff": {"base": "10ms", "max": "200ms"},
        }
    )
    p = e.route.retry_policy
    assert p.retry_on == "5xx,reset,retriable-status-codes"
    assert p.num_retries.value == 3
    assert list(p.retriable_status_codes) == [429, 503]
    assert p.per_try_timeout.ToMilliseconds() == 250
    assert p.retry_back_off.base_interval.ToMilliseconds() == 10
    assert p.retry_back_off.max_interval.ToMilliseconds() == 200
    # A retry prefers a host not tried yet.
    assert [h.name for h in p.retry_host_predicate] == ["envoy.retry_host_predicates.previous_hosts"]
    assert p.retry_host_predicate[0].typed_config.Is(previous_hosts_pb2.PreviousHostsPredicate.DESCRIPTOR)
    assert p.host_selection_retry_max_attempts == 5


def test_retries_defaults() -> None:
    p = entry(retries={"attempts": 1}).route.retry_policy
    assert p.retry_on == "connect-failure,refused-stream,gateway-error"
    assert p.num_retries.value == 1
    assert not p.HasField("per_try_timeout") and not p.HasField("retry_back_off")
    assert not p.retriable_status_codes
    # Back-off without max: Envoy's default (10 x base).
    p = entry(retries={"attempts": 2, "backoff": {"base": "50ms"}}).route.retry_policy
    assert p.retry_back_off.base_interval.ToMilliseconds() == 50 and not p.retry_back_off.HasField("max_interval")
    assert not entry().route.HasField("retry_policy")


def test_websocket_with_retries() -> None:
    a = entry(websocket=True, retries={"attempts": 2}, timeout=None).route
    assert [(u.upgrade_type, u.enabled.value) for u in a.upgrade_configs] == [("websocket", True)]
    assert a.retry_policy.num_retries.value == 2


# --- redirect and direct response -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (301, route_components_pb2.RedirectAction.MOVED_PERMANENTLY),
        (302, route_components_pb2.RedirectAction.FOUND),
        (303, route_components_pb2.RedirectAction.SEE_OTHER),
        (307, route_components_pb2.RedirectAction.TEMPORARY_REDIRECT),
        (308, route_components_pb2.RedirectAction.PERMANENT_REDIRECT),
    ],
)
def test_redirect_status(status: int, code: int) -> None:
    e = entry(redirect={"host": "example.com", "status": status})
    assert e.WhichOneof("action") == "redirect"
    assert e.redirect.response_code == code


def test_redirect_fields() -> None:
    r = entry(
        redirect={"scheme": "https", "host": "www.example.com", "port": 8443, "path": "/new", "strip_query": True}
    ).redirect
    assert r.https_redirect and r.WhichOneof("scheme_rewrite_specifier") == "https_redirect"
    assert (r.host_redirect, r.port_redirect, r.path_redirect, r.strip_query) == ("www.example.com", 8443, "/new", True)
    r = entry(match={"prefix": "/old/"}, redirect={"scheme": "http", "prefix": "/new/"}).redirect
    assert r.scheme_redirect == "http" and r.prefix_rewrite == "/new/"
    assert r.WhichOneof("path_rewrite_specifier") == "prefix_rewrite"
    r = entry(redirect={"host": "a.example"}).redirect
    assert r.WhichOneof("scheme_rewrite_specifier") is None and r.WhichOneof("path_rewrite_specifier") is None
    assert r.response_code == route_components_pb2.RedirectAction.MOVED_PERMANENTLY and not r.strip_query


def test_direct_response() -> None:
    e = entry(direct_response={"status": 418, "body": "short and stout", "content_type": "application/json"})
    assert e.WhichOneof("action") == "direct_response"
    assert e.direct_response.status == 418
    assert e.direct_response.body.inline_string == "short and stout"
    [ct] = e.response_headers_to_add
    assert (ct.header.key, ct.header.value, ct.append_action) == ("content-type", "application/json", OVERWRITE)
    # No body: no data source at all.
    e = entry(direct_response={"status": 204})
    assert not e.direct_response.HasField("body")
    assert [(h.header.key, h.header.value) for h in e.response_headers_to_add] == [("content-type", "text/plain")]


def test_direct_response_content_type_and_headers() -> None:
    """The route's own `set` of content-type wins; other headers keep sorted order after it."""
    e = entry(
        direct_response={"status": 200, "body": "{}", "content_type": "application/json"},
        response_headers={"set": {"x-b": "2", "content-type": "text/html"}, "add": {"x-a": "1"}},
    )
    assert [(h.header.key, h.header.value, h.append_action) for h in e.response_headers_to_add] == [
        ("content-type", "text/html", OVERWRITE),
        ("x-b", "2", OVERWRITE),
        ("x-a", "1", APPEND),
    ]
    e = entry(
        direct_response={"status": 200, "body": "{}", "content_type": "application/json"},
        response_headers={"set": {"x-b": "2"}},
    )
    assert [h.header.key for h in e.response_headers_to_add] == ["content-type", "x-b"]


def test_direct_response_body_limit_on_the_configuration() -> None:
    big = "x" * DIRECT_RESPONSE_MAX_BODY
    rc = res.route_configuration("http", [route(direct_response={"status": 200, "body": big})])
    assert rc.max_direct_response_body_size_bytes.value == DIRECT_RESPONSE_MAX_BODY
    assert rc.virtual_hosts[0].routes[0].direct_response.body.inline_string == big
    # Without a direct response the configuration is as before (Envoy's default limit).
    assert not res.route_configuration("http", [route()]).HasField("max_direct_response_body_size_bytes")


def test_answering_routes_have_no_route_action() -> None:
    for e in (entry(redirect={"host": "a.example"}), entry(direct_response={"status": 404})):
        assert not e.HasField("route")


# --- rewrite and headers --------------------------------------------------------------------


def test_rewrite() -> None:
    a = entry(match={"prefix": "/api/"}, rewrite={"prefix": "/v2/", "host": "internal.example"}).route
    assert a.prefix_rewrite == "/v2/" and not a.HasField("regex_rewrite")
    assert a.host_rewrite_literal == "internal.example"
    a = entry(rewrite={"regex": {"pattern": "^/u/([^/]+)/(.*)$", "substitution": "/users/\\1/\\2"}}).route
    assert a.regex_rewrite.pattern.regex == "^/u/([^/]+)/(.*)$"
    assert a.regex_rewrite.substitution == "/users/\\1/\\2"
    assert a.prefix_rewrite == "" and a.WhichOneof("host_rewrite_specifier") is None
    a = entry(rewrite={"host": "h.example"}).route
    assert a.host_rewrite_literal == "h.example" and a.prefix_rewrite == "" and not a.HasField("regex_rewrite")


def test_header_changes_both_directions() -> None:
    changes = {"set": {"x-z": "z", "x-a": "a"}, "add": {"x-m": "m", "x-c": "c"}, "remove": ["x-gone", "server"]}
    e = entry(request_headers=changes, response_headers=changes)
    for added in (e.request_headers_to_add, e.response_headers_to_add):
        assert [(h.header.key, h.header.value, h.append_action) for h in added] == [
            ("x-a", "a", OVERWRITE),
            ("x-z", "z", OVERWRITE),
            ("x-c", "c", APPEND),
            ("x-m", "m", APPEND),
        ]
    assert list(e.request_headers_to_remove) == ["x-gone", "server"]
    assert list(e.response_headers_to_remove) == ["x-gone", "server"]


def test_header_values_are_literal() -> None:
    """'%' would start an Envoy command operator: it is doubled; empty values are kept."""
    e = entry(request_headers={"set": {"x-p": "100%", "x-op": "%START_TIME%", "x-empty": ""}})
    got = {h.header.key: h for h in e.request_headers_to_add}
    assert got["x-p"].header.value == "100%%"
    assert got["x-op"].header.value == "%%START_TIME%%"
    assert got["x-empty"].header.value == "" and got["x-empty"].keep_empty_value
    assert not got["x-p"].keep_empty_value


def test_no_header_changes() -> None:
    e = entry()
    assert not e.request_headers_to_add and not e.response_headers_to_add
    assert not e.request_headers_to_remove and not e.response_headers_to_remove
    assert not e.typed_per_filter_config


# --- mirror, fault, cors --------------------------------------------------------------------


def test_mirror() -> None:
    a = entry(mirror=[{"cluster": "shadow"}, {"cluster": "audit", "percent": 12.5}, {"cluster": "off", "percent": 0}])
    ms = a.route.request_mirror_policies
    assert [m.cluster for m in ms] == ["shadow", "audit", "off"]
    assert [(m.runtime_fraction.default_value.numerator, m.runtime_fraction.default_value.denominator) for m in ms] == [
        (1_000_000, MILLION),
        (125_000, MILLION),
        (0, MILLION),
    ]
    assert (
        entry(mirror=[{"cluster": "s", "percent": 0.0001}])
        .route.request_mirror_policies[0]
        .runtime_fraction.default_value.numerator
        == 1
    )


def test_fault() -> None:
    f = unpack(
        entry(fault={"delay": {"duration": "1.5s", "percent": 10}, "abort": {"status": 503, "percent": 2.5}}),
        FAULT_FILTER,
        fault_pb2.HTTPFault(),
    )
    assert f.delay.fixed_delay.ToMilliseconds() == 1500
    assert (f.delay.percentage.numerator, f.delay.percentage.denominator) == (100_000, MILLION)
    assert f.abort.http_status == 503
    assert (f.abort.percentage.numerator, f.abort.percentage.denominator) == (25_000, MILLION)
    f = unpack(entry(fault={"abort": {"status": 500}}), FAULT_FILTER, fault_pb2.HTTPFault())
    assert not f.HasField("delay") and f.abort.percentage.numerator == 1_000_000
    f = unpack(entry(fault={"delay": {"duration": "20ms"}}), FAULT_FILTER, fault_pb2.HTTPFault())
    assert not f.HasField("abort") and f.delay.percentage.numerator == 1_000_000


def test_cors() -> None:
    c = unpack(
        entry(
            cors={
                "allow_origins": ["https://app.example.com", "*", {"regex": "https://.*\\.example\\.org"}],
                "allow_methods": ["GET", "PUT"],
                "allow_headers": ["x-a", "content-type"],
                "expose_headers": ["x-b"],
                "max_age": "90.7s",
            }
        ),
        CORS_FILTER,
        cors_pb2.CorsPolicy(),
    )
    kinds = [(m.WhichOneof("match_pattern"), m.exact or m.safe_regex.regex) for m in c.allow_origin_string_match]
    assert kinds == [("exact", "https://app.example.com"), ("exact", "*"), ("safe_regex", "https://.*\\.example\\.org")]
    assert (c.allow_methods, c.allow_headers, c.expose_headers) == ("GET,PUT", "x-a,content-type", "x-b")
    assert c.max_age == "90"
    assert not c.HasField("allow_credentials")
    # Envoy answers every preflight itself, none reaches a backend.
    assert c.HasField("forward_not_matching_preflights") and not c.forward_not_matching_preflights.value
    c = unpack(
        entry(cors={"allow_origins": ["https://a.example"], "allow_credentials": True}),
        CORS_FILTER,
        cors_pb2.CorsPolicy(),
    )
    assert c.allow_credentials.value and c.max_age == "" and c.allow_methods == ""


# --- rate limits ----------------------------------------------------------------------------


def test_rate_limit() -> None:
    rl = limit(entry(rate_limit={"requests": 10, "per": "1m", "burst": 5}))
    assert rl.stat_prefix == RATE_LIMIT_STAT_PREFIX
    assert rl.status.code == 429
    assert rl.token_bucket.max_tokens == 15
    assert rl.token_bucket.tokens_per_fill.value == 10
    assert rl.token_bucket.fill_interval.seconds == 60
    for pct in (rl.filter_enabled, rl.filter_enforced):
        assert (pct.default_value.numerator, pct.default_value.denominator) == (
            100,
            percent_pb2.FractionalPercent.HUNDRED,
        )
    [h] = rl.response_headers_to_add
    assert (h.header.key, h.header.value, h.append_action) == ("retry-after", "6", OVERWRITE)
    # Unkeyed: the default bucket only.
    assert not rl.descriptors and not rl.rate_limits and not rl.HasField("max_dynamic_descriptors")
    assert not rl.HasField("always_consume_default_token_bucket")


@pytest.mark.parametrize(
    ("requests", "per", "retry_after"),
    [(1, "1s", "1"), (1000, "1s", "1"), (7, "1m", "9"), (1, "1h", "3600"), (5000, "1h", "1")],
)
def test_retry_after_is_one_tokens_time(requests: int, per: str, retry_after: str) -> None:
    rl = limit(entry(rate_limit={"requests": requests, "per": per}))
    assert rl.response_headers_to_add[0].header.value == retry_after


def test_keyed_rate_limit_by_header() -> None:
    rl = limit(entry(rate_limit={"requests": 3, "per": "1h", "burst": 1, "key": {"header": "X-Api-Key"}}))
    [policy] = rl.rate_limits
    [action] = policy.actions
    assert action.request_headers.header_name == "x-api-key"
    assert action.request_headers.descriptor_key == "x-api-key"
    assert not action.request_headers.skip_if_absent
    [d] = rl.descriptors
    assert [(e.key, e.value) for e in d.entries] == [("x-api-key", "")]  # empty value: a bucket per value
    assert d.token_bucket == rl.token_bucket
    assert rl.max_dynamic_descriptors.value == rmod.MAX_KEYED_BUCKETS
    # A keyed request takes a token from its value's bucket only; the default bucket (same size)
    # is what requests without the header share.
    assert rl.HasField("always_consume_default_token_bucket") and not rl.always_consume_default_token_bucket.value
    assert rl.token_bucket.max_tokens == 4


def test_keyed_rate_limit_by_source_ip() -> None:
    rl = limit(entry(rate_limit={"requests": 3, "key": {"source_ip": True}}))
    [action] = rl.rate_limits[0].actions
    assert action.WhichOneof("action_specifier") == "remote_address"
    assert [(e.key, e.value) for e in rl.descriptors[0].entries] == [("remote_address", "")]


def _limits(rc: Any) -> dict[str, tuple[int, int]]:
    out = {}
    for vh in rc.virtual_hosts:
        for e in vh.routes:
            if RATE_LIMIT_FILTER in e.typed_per_filter_config:
                rl = limit(e)
                out[e.name] = (rl.token_bucket.tokens_per_fill.value, rl.token_bucket.max_tokens)
    return out


def test_fleet_share() -> None:
    fleet = route(name="f", match={"prefix": "/f"}, rate_limit={"requests": 100, "burst": 20, "scope": "fleet"})
    own = route(name="e", match={"prefix": "/e"}, rate_limit={"requests": 100, "burst": 20})
    tiny = route(name="t", match={"prefix": "/t"}, rate_limit={"requests": 3, "burst": 1, "scope": "fleet"})
    plain = route(name="p")
    rs = [fleet, own, tiny, plain]
    # requests x share (at least 1), burst x share, halves rounded up; envoy scope untouched.
    assert _limits(res.route_configuration("http", rs)) == {"f": (100, 120), "e": (100, 120), "t": (3, 4)}
    assert _limits(res.route_configuration("http", rs, share=None)) == _limits(res.route_configuration("http", rs))
    assert _limits(res.route_configuration("http", rs, share=1.0)) == {"f": (100, 120), "e": (100, 120), "t": (3, 4)}
    assert _limits(res.route_configuration("http", rs, share=0.6)) == {"f": (60, 72), "e": (100, 120), "t": (2, 3)}
    assert _limits(res.route_configuration("http", rs, share=0.125)) == {"f": (13, 16), "e": (100, 120), "t": (1, 1)}
    assert _limits(res.route_configuration("http", rs, share=0.0)) == {"f": (1, 1), "e": (100, 120), "t": (1, 1)}
    # retry-after follows the share's rate.
    rc = res.route_configuration(
        "http", [fleet.model_copy(update={"rate_limit": fleet.rate_limit.model_copy(update={"per": "1m"})})], share=0.5
    )  # type: ignore[union-attr]
    assert limit(rc.virtual_hosts[0].routes[0]).response_headers_to_add[0].header.value == "2"
    with pytest.raises(ValueError, match="share"):
        res.route_configuration("http", rs, share=1.5)
    with pytest.raises(ValueError, match="share"):
        res.route_configuration("http", rs, share=-0.1)


def test_shares_do_not_leak_between_calls() -> None:
    """The cached part of a route is never handed out: every call builds its own messages."""
    r = route(rate_limit={"requests": 100, "scope": "fleet"}, retries={"attempts": 1})
    a = res.route_configuration("http", [r], share=0.5)
    b = res.route_configuration("http", [r], share=0.25)
    assert _limits(a) == {"r": (50, 50)} and _limits(b) == {"r": (25, 25)}
    a.virtual_hosts[0].routes[0].route.retry_policy.num_retries.value = 9
    e = res.route_entry(r)
    e.route.timeout.seconds = 99
    c = res.route_configuration("http", [r], share=0.5)
    assert c == res.route_configuration(
        "http", [route(rate_limit={"requests": 100, "scope": "fleet"}, retries={"attempts": 1})], share=0.5
    )
    assert c.virtual_hosts[0].routes[0].route.retry_policy.num_retries.value == 1
    assert c.virtual_hosts[0].routes[0].route.timeout.seconds == 15
    assert limit(res.route_entry(r, share=0.1)).token_bucket.tokens_per_fill.value == 10
    assert limit(res.route_entry(r)).token_bucket.tokens_per_fill.value == 100


def test_cache_follows_route_objects() -> None:
    before = len(rmod._base_cache)
    rs = [route(name=f"r{i}", match={"prefix": f"/{i}"}) for i in range(50)]
    res.route_configuration("http", rs)
    assert len(rmod._base_cache) >= before + 50
    del rs
    gc.collect()
    assert len(rmod._base_cache) <= before
    # A new object with the same content translates the same.
    assert res.route_entry(route()) == res.route_entry(route())


# --- hashing, determinism -------------------------------------------------------------------


def test_path_hash_policy() -> None:
    [p] = entry(hash_policies=[{"type": "path"}]).route.hash_policy
    assert p.header.header_name == ":path" and not p.header.HasField("regex_rewrite")
    [p] = entry(hash_policies=[{"type": "path", "query": True, "terminal": True}]).route.hash_policy
    assert p.header.header_name == ":path" and not p.header.HasField("regex_rewrite") and p.terminal
    [p] = entry(hash_policies=[{"type": "path", "query": False}]).route.hash_policy
    assert p.header.regex_rewrite.pattern.regex == r"\?.*" and p.header.regex_rewrite.substitution == ""


def test_other_hash_policies_unchanged() -> None:
    ps = entry(
        hash_policies=[
            {"type": "header", "name": "X-User"},
            {"type": "cookie", "name": "sid", "ttl": "1h", "path": "/"},
            {"type": "source_ip"},
            {"type": "query_parameter", "name": "u"},
        ]
    ).route.hash_policy
    assert ps[0].header.header_name == "x-user" and not ps[0].header.HasField("regex_rewrite")
    assert (ps[1].cookie.name, ps[1].cookie.ttl.seconds, ps[1].cookie.path) == ("sid", 3600, "/")
    assert ps[2].connection_properties.source_ip
    assert ps[3].query_parameter.name == "u"


EVERYTHING: dict[str, Any] = {
    "retries": {
        "attempts": 2,
        "on": ["5xx", "retriable-status-codes"],
        "status_codes": [503],
        "per_try_timeout": "1s",
        "backoff": {"base": "10ms", "max": "100ms"},
    },
    "rewrite": {"regex": {"pattern": "^/a/(.*)$", "substitution": "/b/\\1"}, "host": "up.example"},
    "request_headers": {"set": {"x-s": "50%"}, "add": {"x-a": "1"}, "remove": ["x-r"]},
    "response_headers": {"set": {"x-s": "v"}, "add": {"x-a": ""}, "remove": ["server"]},
    "mirror": [{"cluster": "shadow", "percent": 33.3}],
    "fault": {"delay": {"duration": "10ms", "percent": 1}, "abort": {"status": 503, "percent": 0.5}},
    "cors": {
        "allow_origins": ["*", {"regex": "https://.*\\.example\\.com"}],
        "allow_methods": ["GET"],
        "allow_headers": ["x-a"],
        "expose_headers": ["x-b"],
        "max_age": "1h",
    },
    "rate_limit": {"requests": 10, "per": "1m", "burst": 2, "key": {"header": "x-user"}, "scope": "fleet"},
    "hash_policies": [{"type": "path", "query": False}],
    "websocket": True,
}


def _all_routes() -> list[Route]:
    return [
        route(name="all", match={"prefix": "/a/"}, **EVERYTHING),
        route(
            name="ip",
            match={"prefix": "/ip"},
            rate_limit={"requests": 5, "key": {"source_ip": True}},
            cors={"allow_origins": ["https://x.example"], "allow_credentials": True},
        ),
        route(name="redir", match={"prefix": "/old/"}, redirect={"scheme": "https", "prefix": "/new/", "status": 308}),
        route(name="redir2", match={"path": "/p"}, redirect={"host": "h.example", "port": 8080, "path": "/q"}),
        route(
            name="direct",
            match={"path": "/d"},
            direct_response={"status": 503, "body": "x" * 10_000, "content_type": "application/json"},
            fault={"delay": {"duration": "1ms"}},
            rate_limit={"requests": 1, "per": "1h"},
        ),
        route(name="rw", match={"prefix": "/rw/"}, rewrite={"prefix": "/"}, domains=["example.com", "*.example.org"]),
    ]


def test_same_intent_same_bytes() -> None:
    a = res.route_configuration("http", _all_routes(), share=0.3).SerializeToString(deterministic=True)
    b = res.route_configuration("http", list(reversed(_all_routes())), share=0.3).SerializeToString(deterministic=True)
    assert a == b
    assert a != res.route_configuration("http", _all_routes(), share=0.4).SerializeToString(deterministic=True)


def test_existing_routes_translate_as_before() -> None:
    """A route without the new fields: only what it had before (no retry, filter or header config)."""
    e = entry(hash_policies=[{"type": "header", "name": "x-u"}], websocket=True, idle_timeout="5m")
    assert {f.name for f, _ in e.ListFields()} == {"name", "match", "route"}
    assert {f.name for f, _ in e.route.ListFields()} == {
        "cluster",
        "timeout",
        "idle_timeout",
        "hash_policy",
        "upgrade_configs",
    }


def test_envoy_accepts_every_policy(tmp_path: Path) -> None:
    """`envoy --mode validate`: the listener with its route configuration inlined, every policy used."""
    listener = res.listener_resource(Listener(name="http", port=free_port()))
    inline_routes(listener, res.route_configuration("http", _all_routes(), share=0.5))
    clusters = []
    for name, lb in (("web", {"type": "maglev"}), ("shadow", {"type": "round_robin"})):
        c = res.cluster_resource(Cluster.model_validate({"name": name, "load_balancer": lb}), [])
        c.ClearField("eds_cluster_config")
        c.type = c.STATIC
        c.load_assignment.cluster_name = name
        clusters.append(json_format.MessageToDict(c))
    r = validate(bootstrap(clusters, [json_format.MessageToDict(listener)]), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
