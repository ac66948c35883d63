"""Route configurations (RDS): one virtual host per domain, routes in match order.

Every route-level policy lives in the RouteConfiguration, never in the Listener: the HCM of
every http listener carries CORS, fault and local rate-limit filters (`_shared`) that are
disabled by default, and a route turns one on with `typed_per_filter_config` under its name:
a `FilterConfig` wrapper (`enabled`) whose `config` is the filter's per-route config. Envoy
does not create a disabled filter for a request at all, so a route without the policy pays
nothing for it (docs/benchmarks.md, "Idle HTTP filters per request"). Changing a policy is an
RDS push, with no listener drain and no connection closed.

What each field becomes, and the choices made on purpose (read from Envoy 1.40's source):

- `retries` -> RouteAction.retry_policy: `retry_on` is the conditions joined by "," (lbcp
  uses Envoy's names), `num_retries` = `attempts` (retries after the first try, so a request
  is tried at most attempts + 1 times), `per_try_timeout`, `retriable_status_codes`,
  `retry_back_off` {base, max} (Envoy's jittered exponential back-off; max defaults to
  10 x base). Every retry policy also carries the `previous_hosts` retry host predicate with
  `host_selection_retry_max_attempts` = 5: a retry prefers a host not tried yet for this
  request (the load balancer picks again, up to 5 times, while its pick was tried). With one
  healthy host, or when every pick lands on a tried host, the retry goes to the last pick
  anyway: the predicate steers, it never fails a request. It matters most on maglev and
  ring_hash clusters: without it a retry hashes to the very host that just failed; with it
  Envoy mutates the hash on every re-pick, so a retry leaves the failed host unless all 5
  re-picks land on it again (about 1/N^5 with N equal hosts, 1/32 with two).
- WebSocket routes with retries: Envoy's router applies the retry policy to the upgrade
  request like to any request until the upstream answers. A connect failure, a reset or a
  retriable status (e.g. a 503) to the handshake is retried, on another host first (the
  predicate above). The 101 response ends retrying: the router drops its retry state when the
  upstream's response headers arrive, so frames of an established WebSocket are never
  buffered for a retry nor replayed, and a connection closed later is not retried (the
  client reconnects). The route timeout and `per_try_timeout` start only when the downstream
  request is complete, which an upgraded stream is not until the client closes it: neither
  cuts an established WebSocket (`idle_timeout` does, as for any stream), and neither bounds
  a handshake the upstream never answers (the listener's stream idle timeout does).
- `redirect` -> Route.redirect: scheme https -> `https_redirect`, http -> `scheme_redirect`;
  `host_redirect`, `port_redirect`, `path_redirect` or (matched) `prefix_rewrite`,
  `response_code`, `strip_query`.
- `direct_response` -> Route.direct_response {status, body inline}; the content type is a
  response header the route sets (overwriting the text/plain Envoy gives a local reply's
  body). A route configuration with a direct response raises
  `max_direct_response_body_size_bytes` to DIRECT_RESPONSE_MAX_BODY (Envoy's default, 4 KiB,
  would reject larger bodies); one without keeps Envoy's default, so listeners without direct
  responses translate as before.
- `rewrite` -> `prefix_rewrite` or `regex_rewrite` (RE2 pattern and substitution) and
  `host_rewrite_literal`.
- `request_headers` / `response_headers` -> `*_headers_to_add` (`set`: OVERWRITE_IF_EXISTS_OR_ADD,
  `add`: APPEND_IF_EXISTS_OR_ADD) and `*_headers_to_remove`. Values are literal: Envoy reads
  '%' in a header value as the start of a command operator, so '%' is sent as '%%'; an empty
  value is kept (Envoy drops empty values by default). Names are sorted, so the same intent
  always gives the same bytes. A direct response's content type comes first; a `set` of
  content-type on the same route replaces it.
- `mirror` -> `request_mirror_policies`: cluster and a runtime fraction of `percent` in
  millionths. Envoy appends "-shadow" to the mirrored request's host and drops its answer.
- `fault` -> the fault filter's per-route HTTPFault: fixed delay and abort status, each with
  its share in millionths (Envoy draws per request, so the share is binomial).
- `cors` -> the CORS filter's per-route CorsPolicy: exact origins (including "*": Envoy's
  filter allows an origin when a matcher matches the literal "*" or the origin, and answers
  with the request's own origin), regex origins as RE2 `safe_regex`, methods and headers
  joined with ",", `max_age` in whole seconds, `allow_credentials`.
  `forward_not_matching_preflights` is false: Envoy answers every preflight itself (without
  allow-origin when the origin is not allowed), none reaches a backend. Envoy's CORS filter
  only acts on routes that forward: on a redirect or direct_response route it does nothing.
- `rate_limit` -> the local rate-limit filter's per-route LocalRateLimit: a token bucket of
  `requests + burst` tokens refilled continuously at `requests` per `per` (Envoy 1.40's token
  buckets refill on access, not by timer), enabled and enforced for 100 % of requests. Over
  the limit Envoy answers 429 with `retry-after: ceil(per / requests)` seconds (the time one
  token takes to come back); the header is added to limited answers only (Envoy applies
  `response_headers_to_add` in the local reply it sends when it limits). Every RDS update
  rebuilds the limiter, so a change to the listener's routes refills its buckets.
  With `key` the route also carries `rate_limits` (one `request_headers` action whose
  descriptor key is the header's name, or `remote_address`) and one wildcard descriptor (an
  entry with an empty value), so Envoy keeps one bucket of the same size per value, at most
  MAX_KEYED_BUCKETS of them (least recently used evicted: an evicted value starts again with
  a full bucket). `always_consume_default_token_bucket` is false, so a keyed request takes a
  token from its value's bucket only. A request WITHOUT the key header yields no descriptor
  (the action fails when the header is absent) and is counted in the route's default bucket:
  every request lacking the header shares ONE bucket of the same size (as if the missing
  header were one more value), so leaving the header out never escapes the limit.
  `source_ip` is the connection's peer address (http listeners use the remote address and do
  not trust X-Forwarded-For).
- `scope: fleet`: `route_configuration(..., share=s)` gives every fleet-scope limit
  `requests * s` requests (at least 1) and `burst * s` burst, rounded half up: the part of the limit
  one Envoy enforces; `share=None` translates every limit in full. Each route's translation
  without a fleet-scope limit is kept (per Route object, while it lives), so translating the
  same routes again for another share copies them and builds only the fleet-scope limits.
- `hash_policies` type path -> a header hash policy on ":path"; with `query: false` its
  `regex_rewrite` strips the query string (`\\?.*` -> "") before hashing.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from controlplane.intent.model import (
    DIRECT_RESPONSE_MAX_BODY,
    Cors,
    DirectResponse,
    Fault,
    HashPolicy,
    HeaderChanges,
    OriginRegex,
    RateLimit,
    Redirect,
    Retries,
    Route,
)
from controlplane.xds.resources._shared import (
    CORS_FILTER,
    FAULT_FILTER,
    RATE_LIMIT_FILTER,
    RATE_LIMIT_STAT_PREFIX,
    _any,
    _dur,
    route_config_name,
)

PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
# Buckets Envoy keeps per keyed rate limit (one per header value or client address, LRU).
MAX_KEYED_BUCKETS = 10_000
SOURCE_IP_DESCRIPTOR = "remote_address"  # the descriptor key of Envoy's remote_address action
_STRIP_QUERY = r"\?.*"

_REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def _specificity(r: Route) -> tuple[int, int, int, int, str]:
    """Envoy takes the first match; order by `order`, then exact > regex > longest prefix."""
    m = r.match
    if m.path is not None:
        kind, length = 0, len(m.path)
    elif m.regex is not None:
        kind, length = 1, len(m.regex)
    else:
        kind, length = 2, len(m.prefix or "")
    return (r.order, kind, -length, -len(m.headers), r.name)


def _string_match(exact: str | None, prefix: str | None, regex: str | None) -> string_pb2.StringMatcher:
    if exact is not None:
        return string_pb2.StringMatcher(exact=exact)
    if prefix is not None:
        return string_pb2.StringMatcher(prefix=prefix)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex or ""))


def _millionths(percent: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _literal(value: str) -> str:
    """A header value Envoy sends as is: '%' starts a command operator unless doubled."""
    return value.replace("%", "%%")


def _header(
    name: str, value: str, action: base_pb2.HeaderValueOption.HeaderAppendAction.ValueType
) -> base_pb2.HeaderValueOption:
    opt = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=_literal(value)), append_action=action)
    if not value:
        opt.keep_empty_value = True
    return opt


def _headers_to_add(
    changes: HeaderChanges | None, first: dict[str, str] | None = None
) -> list[base_pb2.HeaderValueOption]:
    """`first` (set semantics) unless `changes.set` names the same header, then set, then add."""
    out: list[base_pb2.HeaderValueOption] = []
    own = changes.set if changes is not None else {}
    for name, value in sorted((first or {}).items()):
        if name not in own:
            out.append(_header(name, value, _OVERWRITE))
    if changes is not None:
        out += [_header(n, v, _OVERWRITE) for n, v in sorted(changes.set.items())]
        out += [_header(n, v, _APPEND) for n, v in sorted(changes.add.items())]
    return out


def _retry_policy(rt: Retries) -> route_components_pb2.RetryPolicy:
    p = route_components_pb2.RetryPolicy(
        retry_on=",".join(rt.on),
        num_retries=wrappers_pb2.UInt32Value(value=rt.attempts),
        retriable_status_codes=rt.status_codes,
        host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )
    p.retry_host_predicate.append(
        route_components_pb2.RetryPolicy.RetryHostPredicate(
            name=PREVIOUS_HOSTS, typed_config=_any(previous_hosts_pb2.PreviousHostsPredicate())
        )
    )
    if rt.per_try_timeout:
        p.per_try_timeout.CopyFrom(_dur(rt.per_try_timeout))
    if rt.backoff is not None:
        p.retry_back_off.base_interval.CopyFrom(_dur(rt.backoff.base))
        if rt.backoff.max is not None:
            p.retry_back_off.max_interval.CopyFrom(_dur(rt.backoff.max))
    return p


def _redirect(rd: Redirect) -> route_components_pb2.RedirectAction:
    a = route_components_pb2.RedirectAction(response_code=_REDIRECT_CODES[rd.status], strip_query=rd.strip_query)
    if rd.scheme == "https":
        a.https_redirect = True
    elif rd.scheme is not None:
        a.scheme_redirect = rd.scheme
    if rd.host is not None:
        a.host_redirect = rd.host
    if rd.port is not None:
        a.port_redirect = rd.port
    if rd.path is not None:
        a.path_redirect = rd.path
    elif rd.prefix is not None:
        a.prefix_rewrite = rd.prefix
    return a


def _direct_response(dr: DirectResponse) -> route_components_pb2.DirectResponseAction:
    a = route_components_pb2.DirectResponseAction(status=dr.status)
    if dr.body:
        a.body.inline_string = dr.body
    return a


def _fault(f: Fault) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if f.delay is not None:
        out.delay.CopyFrom(
            common_fault_pb2.FaultDelay(fixed_delay=_dur(f.delay.duration), percentage=_millionths(f.delay.percent))
        )
    if f.abort is not None:
        out.abort.CopyFrom(fault_pb2.FaultAbort(http_status=f.abort.status, percentage=_millionths(f.abort.percent)))
    return out


def _cors(c: Cors) -> cors_pb2.CorsPolicy:
    p = cors_pb2.CorsPolicy(
        allow_methods=",".join(c.allow_methods),
        allow_headers=",".join(c.allow_headers),
        expose_headers=",".join(c.expose_headers),
        forward_not_matching_preflights=wrappers_pb2.BoolValue(value=False),
    )
    for o in c.allow_origins:
        if isinstance(o, OriginRegex):
            p.allow_origin_string_match.append(
                string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=o.regex))
            )
        else:
            p.allow_origin_string_match.append(string_pb2.StringMatcher(exact=o))
    if c.max_age is not None:
        p.max_age = str(math.floor(c.max_age))
    if c.allow_credentials:
        p.allow_credentials.value = True
    return p


def limit_for(rl: RateLimit, share: float | None) -> tuple[int, int]:
    """(requests, burst) one Envoy enforces: the whole limit, or its share of a fleet limit."""
    if share is None or rl.scope != "fleet":
        return rl.requests, rl.burst
    return max(1, _round(rl.requests * share)), _round(rl.burst * share)


def _round(x: float) -> int:
    """Halves up (Python's round() would take 2.5 to 2)."""
    return math.floor(x + 0.5)


def _rate_limit(rl: RateLimit, share: float | None) -> local_rate_limit_pb2.LocalRateLimit:
    requests, burst = limit_for(rl, share)
    bucket = token_bucket_pb2.TokenBucket(
        max_tokens=requests + burst,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=requests),
        fill_interval=duration_pb2.Duration(seconds=rl.seconds),
    )
    everyone = base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED)
    )
    retry_after = max(1, math.ceil(rl.seconds / requests))
    cfg = local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=RATE_LIMIT_STAT_PREFIX,
        status=http_status_pb2.HttpStatus(code=http_status_pb2.TooManyRequests),
        token_bucket=bucket,
        filter_enabled=everyone,
        filter_enforced=everyone,
        response_headers_to_add=[_header("retry-after", str(retry_after), _OVERWRITE)],
    )
    if rl.key is not None:
        action = route_components_pb2.RateLimit.Action()
        if rl.key.header is not None:
            key = rl.key.header
            action.request_headers.header_name = key
            action.request_headers.descriptor_key = key
        else:
            key = SOURCE_IP_DESCRIPTOR
            action.remote_address.SetInParent()
        cfg.rate_limits.append(route_components_pb2.RateLimit(actions=[action]))
        cfg.descriptors.append(
            ratelimit_pb2.LocalRateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value="")], token_bucket=bucket
            )
        )
        cfg.max_dynamic_descriptors.value = MAX_KEYED_BUCKETS
        cfg.always_consume_default_token_bucket.value = False
    return cfg


def _hash_policy(hp: HashPolicy) -> route_components_pb2.RouteAction.HashPolicy:
    p = route_components_pb2.RouteAction.HashPolicy(terminal=hp.terminal)
    if hp.type == "header":
        p.header.header_name = hp.name or ""
    elif hp.type == "path":
        p.header.header_name = ":path"
        if hp.query is False:
            p.header.regex_rewrite.pattern.regex = _STRIP_QUERY
            p.header.regex_rewrite.substitution = ""
    elif hp.type == "cookie":
        p.cookie.name = hp.name or ""
        if hp.ttl:
            p.cookie.ttl.CopyFrom(_dur(hp.ttl))
        if hp.path:
            p.cookie.path = hp.path
    elif hp.type == "source_ip":
        p.connection_properties.source_ip = True
    else:
        p.query_parameter.name = hp.name or ""
    return p


def _route_action(r: Route) -> route_components_pb2.RouteAction:
    action = route_components_pb2.RouteAction(timeout=_dur(r.timeout) if r.timeout else duration_pb2.Duration())
    if len(r.backends) == 1:
        action.cluster = r.backends[0].cluster
    else:
        for wb in r.backends:
            action.weighted_clusters.clusters.append(
                route_components_pb2.WeightedCluster.ClusterWeight(
                    name=wb.cluster, weight=wrappers_pb2.UInt32Value(value=wb.weight)
                )
            )
    if r.idle_timeout:
        action.idle_timeout.CopyFrom(_dur(r.idle_timeout))
    for hp in r.hash_policies:
        action.hash_policy.append(_hash_policy(hp))
    if r.websocket:
        action.upgrade_configs.append(
            route_components_pb2.RouteAction.UpgradeConfig(
                upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=True)
            )
        )
    if r.retries is not None:
        action.retry_policy.CopyFrom(_retry_policy(r.retries))
    if r.rewrite is not None:
        if r.rewrite.prefix is not None:
            action.prefix_rewrite = r.rewrite.prefix
        elif r.rewrite.regex is not None:
            action.regex_rewrite.pattern.regex = r.rewrite.regex.pattern
            action.regex_rewrite.substitution = r.rewrite.regex.substitution
        if r.rewrite.host is not None:
            action.host_rewrite_literal = r.rewrite.host
    for m in r.mirror:
        action.request_mirror_policies.append(
            route_components_pb2.RouteAction.RequestMirrorPolicy(
                cluster=m.cluster,
                runtime_fraction=base_pb2.RuntimeFractionalPercent(default_value=_millionths(m.percent)),
            )
        )
    return action


def _base_entry(r: Route) -> route_components_pb2.Route:
    """The route without a fleet-scope rate limit (the only part that depends on a share)."""
    m = r.match
    match = route_components_pb2.RouteMatch()
    if m.path is not None:
        match.path = m.path
    elif m.regex is not None:
        match.safe_regex.regex = m.regex
    else:
        match.prefix = m.prefix or "/"
    for h in m.headers:
        hm = route_components_pb2.HeaderMatcher(name=h.name, invert_match=h.invert)
        if h.present is not None:
            hm.present_match = h.present
        else:
            hm.string_match.CopyFrom(_string_match(h.exact, h.prefix, h.regex))
        match.headers.append(hm)
    out = route_components_pb2.Route(name=r.name, match=match)
    if r.redirect is not None:
        out.redirect.CopyFrom(_redirect(r.redirect))
    elif r.direct_response is not None:
        out.direct_response.CopyFrom(_direct_response(r.direct_response))
    else:
        out.route.CopyFrom(_route_action(r))
    content_type = {"content-type": r.direct_response.content_type} if r.direct_response is not None else None
    out.request_headers_to_add.extend(_headers_to_add(r.request_headers))
    out.response_headers_to_add.extend(_headers_to_add(r.response_headers, content_type))
    if r.request_headers is not None:
        out.request_headers_to_remove.extend(r.request_headers.remove)
    if r.response_headers is not None:
        out.response_headers_to_remove.extend(r.response_headers.remove)
    if r.fault is not None:
        out.typed_per_filter_config[FAULT_FILTER].CopyFrom(enabled(_fault(r.fault)))
    if r.cors is not None:
        out.typed_per_filter_config[CORS_FILTER].CopyFrom(enabled(_cors(r.cors)))
    if r.rate_limit is not None and r.rate_limit.scope != "fleet":
        out.typed_per_filter_config[RATE_LIMIT_FILTER].CopyFrom(enabled(_rate_limit(r.rate_limit, None)))
    return out


def enabled(config: Message) -> any_pb2.Any:
    """A per-route filter config that also turns on its filter, disabled by default in the HCM."""
    return _any(route_components_pb2.FilterConfig(config=_any(config)))


# Route object -> its translation without the rate limit. Routes are frozen (pydantic) and the
# intent view keeps the same objects until they change, so a route's identity is its content;
# the weak reference drops the entry when the Route object goes away.
_base_cache: dict[int, tuple[weakref.ref[Route], route_components_pb2.Route]] = {}


def _cached_base(r: Route) -> route_components_pb2.Route:
    key = id(r)
    hit = _base_cache.get(key)
    if hit is not None and hit[0]() is r:
        return hit[1]
    entry = _base_entry(r)

    def _gone(ref: weakref.ref[Route], key: int = key) -> None:
        cur = _base_cache.get(key)
        if cur is not None and cur[0] is ref:
            del _base_cache[key]

    _base_cache[key] = (weakref.ref(r, _gone), entry)
    return entry


def route_entry(r: Route, share: float | None = None) -> route_components_pb2.Route:
    """One route (a fresh message); `share` as in route_configuration."""
    out = route_components_pb2.Route()
    out.CopyFrom(_cached_base(r))
    if r.rate_limit is not None and r.rate_limit.scope == "fleet":
        out.typed_per_filter_config[RATE_LIMIT_FILTER].CopyFrom(enabled(_rate_limit(r.rate_limit, share)))
    return out


def route_configuration(
    listener: str, routes: Iterable[Route], share: float | None = None
) -> route_pb2.RouteConfiguration:
    """One virtual host per domain named by the listener's routes (so domains never clash).

    `share` (None, or in [0, 1]): the part of every fleet-scope rate limit this Envoy enforces;
    None translates every limit in full."""
    if share is not None and not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], not {share}")
    by_domain: dict[str, list[Route]] = {}
    direct = False
    for r in routes:
        direct = direct or r.direct_response is not None
        for d in r.domains:
            by_domain.setdefault(d, []).append(r)
    rc = route_pb2.RouteConfiguration(name=route_config_name(listener))
    if direct:
        rc.max_direct_response_body_size_bytes.value = DIRECT_RESPONSE_MAX_BODY
    limits: dict[int, any_pb2.Any] = {}
    for domain in sorted(by_domain):
        vh = rc.virtual_hosts.add(name=domain, domains=[domain])
        for r in sorted(by_domain[domain], key=_specificity):
            entry = vh.routes.add()
            entry.CopyFrom(_cached_base(r))
            if r.rate_limit is not None and r.rate_limit.scope == "fleet":
                limit = limits.get(id(r))
                if limit is None:
                    limit = limits[id(r)] = enabled(_rate_limit(r.rate_limit, share))
                entry.typed_per_filter_config[RATE_LIMIT_FILTER].CopyFrom(limit)
    return rc
