"""The OpenAPI document, as the API behaves: every status each operation answers (errors as
`application/problem+json`, the `Problem` schema), the name rules of path parameters, the
bounds of query parameters, the optional bodies, and the rules across fields that JSON
Schema cannot say, as descriptions. `tests/api/test_openapi.py` runs schemathesis against it.

FastAPI's own document lists 200 and a 422 of its own shape only; this one is built from it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from api.problems import PROBLEM_JSON
from api.resources import MAX_BATCH_OPS, PLURAL
from controlplane.intent.model import DIRECT_RESPONSE_MAX_BODY, MODELS, FleetName, Kind
from controlplane.xds.served import TYPES

PROBLEM: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable, `detail` is for people.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "urn:lbcp:problem:{code}"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "pattern": "^[a-z0-9-]+$"},
        "instance": {"type": "string", "description": "the request's path"},
        "errors": {
            "type": "array",
            "description": "422 validation-failed: each field that is wrong, as a JSON pointer into the request",
            "items": {
                "type": "object",
                "required": ["pointer", "detail"],
                "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
        "current_revision": {
            "type": ["integer", "null"],
            "description": "412: the object's revision now (also its ETag)",
        },
        "override": {"type": "string", "description": "a query parameter that would force the request (`force`)"},
    },
}

# status -> (description, codes): docs/api.md, "Errors".
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Bad request", "invalid-json, invalid-page-token, invalid-precondition"),
    401: ("No valid token (`Authorization: Bearer ...`)", "unauthenticated"),
    403: ("The token's role may not do this", "forbidden"),
    404: (
        "Not found",
        "cluster-not-found, backend-not-found, listener-not-found, route-not-found, certificate-not-found, "
        "fleet-not-found, node-not-found, not-drained, not-found",
    ),
    408: ("The body did not arrive within `lbcp api --body-timeout`", "body-timeout"),
    409: (
        "Conflict",
        "already-exists, cluster-in-use, listener-in-use, certificate-in-use, port-conflict, write-conflict, "
        "min-in-service",
    ),
    410: ("The page token is older than etcd's compaction; list again", "page-token-expired"),
    412: ("If-Match (or the body's `revision`) is not the object's revision", "precondition-failed"),
    413: ("Body over 8 MiB, or too many operations", "payload-too-large, batch-too-large"),
    415: ("Send JSON", "unsupported-media-type"),
    422: ("The request is not valid: `errors` says where", "validation-failed"),
    431: ("A request head over 64 KiB (the connection closes)", "head-too-large"),
    503: (
        "etcd cannot be reached, or more requests are in flight than `lbcp api --max-concurrency`; retry after "
        "Retry-After",
        "store-unavailable, overloaded",
    ),
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    412: {"ETag": {"description": "the object's revision now", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds", "schema": {"type": "string"}}},
}

# Statuses by what an operation does (on top of 401, 403 and 503, which every /v1 one has).
_BODY = frozenset({400, 408, 413, 415, 422})  # it reads a JSON body
_LIST = frozenset({400, 410, 422})  # limit and page_token
_READ = frozenset({404, 422})
_WRITE = _BODY | {404, 409, 412}  # and If-Match / If-None-Match / the body's revision
_DELETE = frozenset({400, 404, 409, 412, 422})


@dataclass(frozen=True)
class Operation:
    errors: frozenset[int]  # besides 401, 403 and 503
    ok: tuple[int, ...] = (200,)
    wait: str | None = None  # `?wait=` takes this (with `?timeout=`)


def _operations() -> dict[tuple[str, str], Operation]:
    """Every /v1 operation: what it answers. A new route must be added here
    (`test_every_operation_is_described` fails until it is)."""
    ops: dict[tuple[str, str], Operation] = {}
    write, create = Operation(_WRITE, wait="acked"), Operation(_WRITE, (200, 201), "acked")
    delete = Operation(_DELETE, wait="acked")
    for kind in (Kind.CLUSTER, Kind.LISTENER, Kind.ROUTE, Kind.CERTIFICATE, Kind.FLEET):
        col, item = f"/v1/{PLURAL[kind]}", f"/v1/{PLURAL[kind]}/{{name}}"
        ops |= {("get", col): Operation(_LIST), ("post", col): create, ("get", item): Operation(_READ)}
        ops |= {("put", item): create, ("delete", item): delete}
        if kind != Kind.CERTIFICATE:
            ops[("patch", item)] = write
    col, item = "/v1/clusters/{cluster}/backends", "/v1/clusters/{cluster}/backends/{name}"
    ops |= {("get", col): Operation(_LIST | {404}), ("post", col): create}
    ops |= {("put", col): Operation(_BODY | {404, 409}, wait="acked")}
    ops |= {("get", item): Operation(_READ), ("put", item): create, ("patch", item): write, ("delete", item): delete}
    ops[("post", "/v1/batch")] = write
    ring = "/v1/clusters/{cluster}/ring"
    ops |= {("get", ring): Operation(_READ), ("get", ring + "/lookup"): Operation(_READ)}
    ops |= {
        ("post", ring + "/lookup"): Operation(_BODY | {404}),
        ("post", ring + "/simulate"): Operation(_BODY | {404}),
    }
    ops |= {
        ("get", "/v1/fleet"): Operation(frozenset()),
        ("get", "/v1/fleet/{node_id}"): Operation(_READ),
        ("get", "/v1/fleet/{node_id}/config"): Operation(_READ),
        ("post", "/v1/fleet/{node_id}/drain"): Operation(_BODY | {404, 409}, (200, 201), "withdrawn"),
        ("delete", "/v1/fleet/{node_id}/drain"): Operation(frozenset({404})),
        ("post", "/v1/fleets/{fleet}/rebalance"): Operation(_BODY, (202,)),
        ("get", "/v1/fleets/{fleet}/rebalance"): Operation(frozenset({422})),
        ("get", "/v1/rollouts/{revision}"): Operation(frozenset({422})),
        ("get", "/v1/frontdoor/{fmt}"): Operation(frozenset({422})),
        ("get", "/v1/events"): Operation(frozenset()),
        ("get", "/v1/whoami"): Operation(frozenset()),
    }
    return ops


OPERATIONS = _operations()


def _name_schema(kind: Kind) -> dict[str, Any]:
    prop = dict(MODELS[kind].model_json_schema()["properties"]["name"])
    prop.pop("title", None)
    return prop


_NODE_ID = {
    "type": "string",
    "minLength": 1,
    "description": "an Envoy's node id (node.id; an Envoy's is 1-253 characters of A-Z a-z 0-9 . _ : @ -, but a "
    "forced drain takes any id, a slash included as %2F)",
}


def _path_parameter(path: str, name: str) -> dict[str, Any] | None:
    if name == "cluster":
        return _name_schema(Kind.CLUSTER)
    if name == "fleet":  # any fleet of Envoys (node.cluster), as listeners name them
        fleet = TypeAdapter(FleetName).json_schema()
        fleet.pop("title", None)
        return fleet
    if name == "node_id":
        return dict(_NODE_ID)
    if name == "fmt":
        return {"type": "string", "enum": ["json", "dns", "iptables", "nftables", "bird"]}
    if name == "revision":
        return {"type": "integer", "minimum": 0}
    if name == "name":
        if path.startswith("/v1/clusters/{cluster}/backends/"):
            return _name_schema(Kind.BACKEND)
        plural = path.split("/")[2]
        kind = next(k for k, p in PLURAL.items() if p == plural)
        return _name_schema(kind)
    return None


_DURATION = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$",
    "description": "a duration (`5s`, `250ms`), at most 300s",
}
_QUERY: dict[str, dict[str, Any]] = {
    "type": {
        "type": "string",
        "pattern": rf"^ *({'|'.join(TYPES)}) *(, *({'|'.join(TYPES)}) *)*$",
        "description": "comma-separated: which of " + ", ".join(TYPES),
    },
    "mode": {"type": "string", "description": "iptables: nth or random; nftables: hash or numgen"},
}

_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/fleets/{fleet}/rebalance"): {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "rate": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "tolerance_percent": {"type": "integer", "minimum": 1, "maximum": 100},
        },
    },
    ("post", "/v1/fleet/{node_id}/drain"): {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "reason": {"type": "string", "maxLength": 256},
            "evacuate": {
                "type": "object",
                "additionalProperties": False,
                "required": ["connections_per_second"],
                "properties": {"connections_per_second": {"type": "integer", "minimum": 1, "maximum": 1_000_000}},
            },
        },
    },
    ("post", "/v1/clusters/{cluster}/ring/lookup"): {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "maxItems": 100_000, "items": {"type": "string"}}},
    },
}
_OPTIONAL_BODY = {("post", "/v1/fleets/{fleet}/rebalance"), ("post", "/v1/fleet/{node_id}/drain")}

# Rules across fields, or beyond what JSON Schema says: each is a 422 with its pointer.
RULES: dict[str, list[str]] = {
    "Maglev": ["table_size must be a prime number"],
    "RingHash": ["minimum_ring_size must not exceed maximum_ring_size"],
    "ActiveHealthCheck": [
        "an http health check needs a path starting with '/'",
        "a tcp health check takes no path or host",
        "timeout must not exceed interval",
    ],
    "ClusterTLS": ["give ca_bundle (PEM certificates) to verify backends, or set insecure_skip_verify"],
    "Cluster": [
        "an eds cluster's backends must be IP addresses (a dns cluster resolves hostnames); a cluster that holds "
        "hostname backends cannot switch to eds",
        "tls.client_certificate names a certificate that exists",
        "slow_start needs a round_robin or least_request load balancer (Envoy ignores it on hash load balancers)",
    ],
    "CircuitBreakers": ["give max_retries or retry_budget, not both (Envoy ignores max_retries under a budget)"],
    "Backend": [
        "address is an IPv4/IPv6 literal or a hostname",
        "metadata holds at most 32 keys and 4096 bytes of JSON",
        "its cluster exists (404 cluster-not-found)",
    ],
    "ListenerTLS": [
        "certificates must not repeat a name, and each exists",
        "min_version must not be above max_version",
        "alpn must not repeat a protocol",
    ],
    "Listener": [
        "address is an IPv4/IPv6 literal; fleets must not repeat",
        "a tcp listener needs cluster; an http listener takes none (routes attach to it)",
        "no two listeners of a fleet share an address and port (409 port-conflict)",
        "tracing applies to http listeners only; tracing.cluster names an http2 cluster that exists",
    ],
    "AccessLog": [
        "a json access log needs fields; a text one takes none",
        "each field is text with Envoy command operators (%REQ(:PATH)%); a literal '%' is written '%%'",
        "path is an absolute file path without '..'",
    ],
    "Collector": ["address is an IPv4/IPv6 literal"],
    "Tracing": ["exactly one of collector or cluster"],
    "HeaderMatch": ["exactly one of exact, prefix, regex, present", "a regex is RE2"],
    "RouteMatch": ["exactly one of prefix, path, regex; prefix and path start with '/'; a regex is RE2"],
    "HashPolicy": [
        "header, cookie and query_parameter policies need a name (a header's is a valid header name); "
        "source_ip and path take none",
        "ttl and path apply to cookie policies only; query to path policies only",
    ],
    "Route": [
        "domains must not repeat; backends must name each cluster once",
        "its listeners and the clusters of its backends and mirrors exist (and speak http)",
        "a route has backends, a redirect or a direct_response: exactly one of the three",
        "retries, rewrite, mirror and hash_policies apply to routes with backends",
        "a prefix redirect or a prefix rewrite needs a prefix or path match, not regex",
        "mirror names each cluster once",
    ],
    "Retries": [
        "on must not repeat a condition",
        "status_codes go with (and only with) the retriable-status-codes condition",
    ],
    "Backoff": ["max must be at least base"],
    "Redirect": ["give path or prefix, not both"],
    "DirectResponse": [f"body is at most {DIRECT_RESPONSE_MAX_BODY} bytes of UTF-8"],
    "Rewrite": ["give prefix or regex, not both; a rewrite needs prefix, regex or host"],
    "RegexRewrite": ["pattern is RE2"],
    "HeaderChanges": [
        "header names are lower-cased HTTP tokens; pseudo-headers (':path') and host cannot be changed",
        "remove must not repeat; no header is both removed and set or added, or both set and added",
    ],
    "Fault": ["a fault needs delay or abort"],
    "Cors": ['allow_credentials cannot go with the origin "*" (name the origins)'],
    "OriginRegex": ["regex is RE2"],
    "RateLimitKey": ["exactly one of header or source_ip: true"],
    "Capacity": ["low_water_percent must be below high_water_percent"],
    "Certificate": [
        "certificate_chain is PEM, leaf first; private_key is its PEM key and matches the leaf",
        "the leaf is valid now",
    ],
}


# The traffic-policy fields (docs/api.md, "Traffic policy"): schema -> field -> (description,
# example). The model's own description and examples win; these fill what it leaves out, so
# every field of these schemas is described and has an example in the document
# (tests/api/test_examples.py checks it, and that each example is valid for its field).
POLICY_FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    "Route": {
        "retries": ("Retry failed requests (Envoy's retry policy).", {"attempts": 2, "on": ["5xx", "reset"]}),
        "redirect": ("Answer with a redirect (instead of backends).", {"scheme": "https", "status": 301}),
        "direct_response": (
            "Answer from Envoy (instead of backends).",
            {"status": 503, "body": "down for maintenance", "content_type": "text/plain"},
        ),
        "rewrite": ("Rewrite the path (prefix or regex) and host before forwarding.", {"prefix": "/v2/"}),
        "request_headers": (
            "Changes to the request before it is forwarded.",
            {"set": {"x-env": "prod"}, "remove": ["x-debug"]},
        ),
        "response_headers": (
            "Changes to the response before it is sent.",
            {"add": {"cache-control": "no-store"}, "remove": ["server"]},
        ),
        "mirror": ("Shadow copies of requests.", [{"cluster": "shadow", "percent": 10}]),
        "fault": ("Inject delays and aborts (chaos testing).", {"abort": {"status": 503, "percent": 1}}),
        "cors": (
            "Cross-origin resource sharing, answered by Envoy.",
            {"allow_origins": ["https://app.example.com"], "allow_methods": ["GET", "POST"], "max_age": "10m"},
        ),
        "rate_limit": (
            "At most `requests` per `per`, then 429 with retry-after (per Envoy, or for the whole fleet).",
            {"requests": 100, "per": "1s", "burst": 50, "scope": "envoy"},
        ),
    },
    "HashPolicy": {
        "type": (
            "What is hashed: a header, a cookie, the client address, a query parameter, or the path.",
            "path",
        ),
        "query": ("path only: hash the query string too (default true, like NGINX's $request_uri).", False),
    },
    "Cluster": {
        "slow_start": (
            "Ramp new backends up over a window (round_robin and least_request only).",
            {"window": "30s", "aggression": 1.0, "min_weight_percent": 10},
        ),
    },
    "CircuitBreakers": {
        "retry_budget": (
            "Limit retries to a share of active requests (replaces max_retries' fixed count).",
            {"percent": 20, "min_concurrency": 3},
        ),
    },
    "Listener": {
        "access_log": (
            "Log each request (http) or connection (tcp).",
            {"format": "json", "fields": {"status": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%"}},
        ),
        "tracing": (
            "OpenTelemetry tracing (http listeners only).",
            {"collector": {"address": "10.0.0.9", "port": 4317}, "sampling_percent": 5},
        ),
    },
    "Retries": {
        "attempts": ("Retries after the first try (Envoy's num_retries).", 3),
        "on": ("Which failures are retried.", ["5xx", "reset", "connect-failure"]),
        "status_codes": ("With retriable-status-codes: the statuses retried.", [503, 429]),
        "per_try_timeout": ("Timeout of each try (the route's timeout bounds all).", "2s"),
        "backoff": ("Back-off between tries (Envoy's: 25ms base, doubling, 10 x base at most).", {"base": "50ms"}),
    },
    "Backoff": {
        "base": ("First back-off interval (Envoy's default 25ms); doubles per retry.", "25ms"),
        "max": ("Longest back-off (default 10 x base).", "1s"),
    },
    "Redirect": {
        "scheme": ("Scheme of the new URL (default: the request's).", "https"),
        "host": ("Host of the new URL (default: the request's).", "www.example.com"),
        "port": ("Port of the new URL (default: the request's).", 443),
        "path": ("Replace the whole path.", "/new"),
        "prefix": ("Replace the matched prefix (prefix and path matches).", "/v2/"),
        "status": ("Redirect status.", 308),
        "strip_query": ("Drop the query string.", True),
    },
    "DirectResponse": {
        "status": ("Status Envoy answers with.", 404),
        "body": ("At most 65536 bytes of UTF-8.", "not here"),
        "content_type": ("The answer's content-type.", "application/json"),
    },
    "Rewrite": {
        "prefix": ("Replaces the matched prefix.", "/api/"),
        "regex": ("Rewrite the path by RE2 regex.", {"pattern": "^/v1/(.*)$", "substitution": "/\\1"}),
        "host": ("The Host header (authority) sent to the backend.", "internal.example.com"),
    },
    "RegexRewrite": {
        "pattern": ("RE2 regex matched against the path.", "^/users/([0-9]+)$"),
        "substitution": ("RE2 substitution (\\1 for the first group).", "/u/\\1"),
    },
    "HeaderChanges": {
        "set": ("Headers set, replacing any the message has.", {"x-env": "prod"}),
        "add": ("Headers added beside any the message has.", {"via": "lbcp"}),
        "remove": ("Headers removed.", ["x-internal"]),
    },
    "Mirror": {
        "cluster": ("The cluster that gets the copies (their answers are dropped).", "shadow"),
        "percent": ("Share of requests copied.", 25),
    },
    "Fault": {
        "delay": ("Delay a share of requests.", {"duration": "2s", "percent": 10}),
        "abort": ("Answer a share of requests with an error, without a backend.", {"status": 503, "percent": 5}),
    },
    "FaultDelay": {
        "duration": ("How long the request waits before it is forwarded.", "500ms"),
        "percent": ("Share of requests delayed.", 10),
    },
    "FaultAbort": {
        "status": ("Status of the aborted requests.", 503),
        "percent": ("Share of requests aborted.", 5),
    },
    "Cors": {
        "allow_origins": (
            'Exact origins ("https://app.example.com"), "*" for any, or {"regex": ...}.',
            ["https://app.example.com"],
        ),
        "allow_methods": ("access-control-allow-methods.", ["GET", "PUT"]),
        "allow_headers": ("access-control-allow-headers.", ["content-type", "authorization"]),
        "expose_headers": ("access-control-expose-headers.", ["x-request-id"]),
        "max_age": ("How long browsers may cache a preflight's answer.", "1h"),
        "allow_credentials": ('access-control-allow-credentials (not with the origin "*").', True),
    },
    "OriginRegex": {"regex": ("RE2 regex an origin must match.", "https://.*\\.example\\.com")},
    "RateLimit": {
        "requests": ("Requests allowed per period.", 100),
        "per": ("The period.", "1m"),
        "burst": ("Requests allowed above the rate at once.", 20),
        "key": ("One bucket per value (header or client address).", {"header": "x-api-key"}),
        "scope": (
            "envoy: each Envoy enforces the whole limit on its own; fleet: lbcp divides it over the Envoys in "
            "service by their share of live connections.",
            "fleet",
        ),
    },
    "RateLimitKey": {
        "header": ("One bucket per value of this request header.", "x-api-key"),
        "source_ip": ("One bucket per client address.", True),
    },
    "SlowStart": {
        "window": ("How long a new backend ramps up.", "30s"),
        "aggression": ("1: linear ramp; higher: faster start.", 2.0),
        "min_weight_percent": ("A new backend's weight starts at this share.", 10),
    },
    "RetryBudget": {
        "percent": ("Retries allowed, as a share of active requests.", 20),
        "min_concurrency": ("Concurrent retries always allowed.", 3),
    },
    "AccessLog": {
        "format": ("text: Envoy's default line; json: `fields`.", "json"),
        "fields": (
            'json only: field name -> Envoy command operator, e.g. {"path": "%REQ(:PATH)%"}.',
            {"status": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "duration_ms": "%DURATION%"},
        ),
        "path": ("Where each Envoy writes the log (an absolute path on the Envoy host).", "/var/log/envoy/access.log"),
    },
    "Tracing": {
        "collector": ("The collector's address (or give `cluster`).", {"address": "10.0.0.9", "port": 4317}),
        "cluster": ("An http2 cluster of OTLP/gRPC collectors (or give `collector`).", "otel"),
        "sampling_percent": ("Share of requests traced.", 5),
        "service_name": ("OpenTelemetry service.name.", "edge"),
    },
    "Collector": {
        "address": ("IP literal of an OTLP/gRPC collector.", "10.0.0.9"),
        "port": ("The collector's OTLP/gRPC port.", 4317),
    },
}


def _document_policy_fields(comps: dict[str, Any]) -> None:
    for schema, fields in POLICY_FIELDS.items():
        props = comps[schema]["properties"]
        for name, (description, example) in fields.items():
            prop = props[name]
            prop.setdefault("description", description)
            if "examples" not in prop and "example" not in prop:
                prop["examples"] = [example]


def _problem_response(status: int) -> dict[str, Any]:
    description, codes = _ERRORS[status]
    resp: dict[str, Any] = {
        "description": f"{description} (code: {codes})",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in _HEADERS:
        resp["headers"] = copy.deepcopy(_HEADERS[status])
    return resp


def _fix_operation(path: str, method: str, op: dict[str, Any]) -> None:
    key = (method, path)
    responses = op.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's HTTPValidationError: the API never answers that shape
    responses["431"] = _problem_response(431)  # any request, before it reaches a route
    if path == "/readyz":
        responses["503"] = _problem_response(503)
    if not path.startswith("/v1/"):
        return
    spec = OPERATIONS[key]
    success = next(v for k, v in responses.items() if k.startswith("2"))
    for code in list(responses):
        if code.startswith("2") and int(code) not in spec.ok:
            del responses[code]
    for code in spec.ok:
        responses.setdefault(str(code), copy.deepcopy(success))
    if 201 in spec.ok:
        responses["201"]["description"] = "Created"
        responses["200"]["description"] = "Replaced, unchanged, or validated only (dry_run)"
    for status in sorted({401, 403, 503} | spec.errors):
        responses[str(status)] = _problem_response(status)
    if path == "/v1/frontdoor/{fmt}":
        responses["200"]["content"] = {
            "application/json": {"schema": {"type": "object"}},
            "text/plain": {"schema": {"type": "string"}},
        }
        responses["200"]["description"] = "json: the in-service set; dns, iptables, nftables, bird: text"
    if path == "/v1/events":
        responses["200"]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}

    params = op.setdefault("parameters", [])
    for p in params:
        if p["in"] == "path":
            schema = _path_parameter(path, p["name"])
            if schema is not None:
                p["schema"] = schema
        elif p["in"] == "query" and p["name"] in _QUERY:
            p["schema"] = copy.deepcopy(_QUERY[p["name"]])
    if spec.wait is not None:
        wait = {
            "type": "string",
            "enum": [spec.wait],
            "description": "answer once every connected Envoy has acked the write"
            if spec.wait == "acked"
            else "answer once the node has left the front tier",
        }
        params += [
            {"name": "wait", "in": "query", "required": False, "schema": wait},
            {"name": "timeout", "in": "query", "required": False, "schema": dict(_DURATION)},
        ]
    if key in _BODIES:
        op["requestBody"] = {
            "required": key not in _OPTIONAL_BODY,
            "content": {"application/json": {"schema": _BODIES[key]}},
        }


def _presented(kind: Kind, comps: dict[str, Any], revision: bool = True) -> dict[str, Any]:
    """An object as the API shows it: the model's fields and its `revision` (a certificate:
    no private key, the leaf's facts instead; a fleet: the mover's `status`; a backend, with
    `?health=true`, its `health`)."""
    if kind == Kind.CERTIFICATE:
        props: dict[str, Any] = {
            "name": _name_schema(kind),
            "certificate_chain": {"type": "string"},
            "subject": {"type": "string"},
            "issuer": {"type": "string"},
            "sans": {"type": "array", "items": {"type": "string"}},
            "not_before": {"type": "string"},
            "not_after": {"type": "string"},
            "expires_in_seconds": {"type": "integer"},
            "fingerprint_sha256": {"type": "string"},
            "serial": {"type": "string"},
            "chain_length": {"type": "integer"},
        }
    else:
        props = dict(copy.deepcopy(comps[MODELS[kind].__name__]["properties"]))
    if not revision:  # as DELETE shows what it deleted
        return {"type": "object", "required": ["name"], "properties": props}
    props["revision"] = {"type": "integer", "minimum": 0, "description": "etcd's mod_revision: the ETag"}
    if kind == Kind.FLEET:
        props["status"] = {"type": "object", "description": "the mover's progress (not intent)"}
    if kind == Kind.BACKEND:
        props["health"] = {"type": "object", "description": "with ?health=true: the Envoys' view"}
    return {"type": "object", "required": ["name", "revision"], "properties": props}


def _response_schemas(schema: dict[str, Any], comps: dict[str, Any]) -> None:
    for kind in (Kind.CLUSTER, Kind.LISTENER, Kind.ROUTE, Kind.CERTIFICATE, Kind.FLEET, Kind.BACKEND):
        comps[f"{MODELS[kind].__name__}Presented"] = _presented(kind, comps)
        ref = {"$ref": f"#/components/schemas/{MODELS[kind].__name__}Presented"}
        written = {"allOf": [ref, {"properties": {"rollout": {"type": "object"}}}]}
        listing = {
            "type": "object",
            "required": ["items", "revision", "next_page_token"],
            "properties": {
                "items": {"type": "array", "items": ref},
                "revision": {"type": "integer", "minimum": 0},
                "next_page_token": {"type": ["string", "null"]},
            },
        }
        deleted = {
            "type": "object",
            "required": ["deleted", "revision"],
            "properties": {
                "deleted": {"anyOf": [_presented(kind, comps, revision=False), {"type": "null"}]},
                "revision": {"type": "integer"},
            },
        }
        if kind == Kind.BACKEND:
            col, item = "/v1/clusters/{cluster}/backends", "/v1/clusters/{cluster}/backends/{name}"
        else:
            col, item = f"/v1/{PLURAL[kind]}", f"/v1/{PLURAL[kind]}/{{name}}"
        shapes = {
            ("get", col): listing,
            ("post", col): written,
            ("get", item): ref,
            ("put", item): written,
            ("patch", item): written,
            ("delete", item): deleted,
        }
        for (method, path), shape in shapes.items():
            op = schema["paths"].get(path, {}).get(method)
            if op is None:
                continue  # certificates have no PATCH
            for code, resp in op["responses"].items():
                if code.startswith("2"):
                    resp["content"] = {"application/json": {"schema": copy.deepcopy(shape)}}


def build(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in MODELS.values():
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        comps.update(js.pop("$defs", {}))
        comps[model.__name__] = js
    comps.pop("HTTPValidationError", None)
    comps.pop("ValidationError", None)
    comps["Problem"] = PROBLEM
    _document_policy_fields(comps)
    for name, rules in RULES.items():
        if name in comps:
            text = "Rules beyond the schema (each a 422 at its field): " + "; ".join(rules) + "."
            comps[name]["description"] = (comps[name].get("description", "") + "\n\n" + text).strip()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            _fix_operation(path, method, op)
    _response_schemas(schema, comps)
    batch = schema["paths"]["/v1/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    batch["properties"]["operations"]["maxItems"] = MAX_BATCH_OPS
    return schema
