"""Property: whatever intent the model accepts translates into configuration a real Envoy
accepts (`envoy --mode validate`), so the API never takes intent the fleet will NACK.

Hypothesis generates small worlds (clusters of every load balancer and health check, backends
by IP and hostname in every admin state, HTTP and TCP listeners, routes with every match,
header matcher, weighting and hash policy); the model (and its integrity rules) filters them;
what passes is translated with lbcp's own functions into a static bootstrap (EDS inlined,
RDS inlined) and handed to Envoy 1.40.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.localcluster.procs import envoy_binary, free_port
from controlplane.intent.errors import StoreError
from controlplane.intent.integrity import World, check
from controlplane.intent.model import Backend, Cluster, Kind, Listener, Route
from controlplane.xds import resources as res

durations = st.sampled_from(["1s", "250ms", "5s", "30s", "2m"])
names = st.sampled_from(["web", "api", "ws", "grpc"])
lbs = st.one_of(
    st.just({"type": "round_robin"}),
    st.builds(lambda n: {"type": "least_request", "choice_count": n}, st.integers(2, 5)),
    st.just({"type": "random"}),
    st.builds(lambda t: {"type": "maglev", "table_size": t}, st.sampled_from([251, 65537, 131071])),
    st.builds(
        lambda lo, hf: {"type": "ring_hash", "minimum_ring_size": lo, "maximum_ring_size": lo * 8, "hash_function": hf},
        st.sampled_from([64, 1024, 4096]),
        st.sampled_from(["xx_hash", "murmur_hash_2"]),
    ),
)
active = st.one_of(
    st.builds(
        lambda p, i, codes: {"type": "http", "path": p, "interval": i, "timeout": "1s", "expected_statuses": codes},
        st.sampled_from(["/", "/healthz", "/ready?x=1"]),
        st.sampled_from(["1s", "5s", "10s"]),
        st.lists(st.integers(200, 299), min_size=1, max_size=3),
    ),
    st.just({"type": "tcp", "interval": "5s", "timeout": "1s"}),
)
health = st.one_of(
    st.none(),
    st.builds(
        lambda a, p: {k: v for k, v in (("active", a), ("passive", p)) if v is not None},
        st.one_of(st.none(), active),
        st.one_of(st.none(), st.just({"consecutive_5xx": 3, "max_ejection_percent": 50})),
    ),
)
clusters = st.builds(
    lambda lb, proto, t, hc, cb: {
        "load_balancer": lb,
        "protocol": proto,
        "connect_timeout": t,
        "health_check": hc,
        "circuit_breakers": cb,
    },
    lbs,
    st.sampled_from(["http1", "http2"]),
    durations,
    health,
    st.one_of(st.none(), st.just({"max_connections": 100, "max_requests": 1000, "max_retries": 3})),
)
addresses = st.sampled_from(
    ["10.0.0.1", "10.0.0.2", "192.168.1.9", "::1", "2001:db8::5", "backend.internal", "a.example.com"]
)
backends = st.builds(
    lambda a, port, w, prio, zone, state: {
        "address": a,
        "port": port,
        "weight": w,
        "priority": prio,
        "zone": zone,
        "admin_state": state,
    },
    addresses,
    st.integers(1, 65535),
    st.integers(1, 100),
    st.integers(0, 2),
    st.sampled_from([None, "zone-a", "zone-b"]),
    st.sampled_from(["ready", "drain", "maint"]),
)
header_matches = st.lists(
    st.one_of(
        st.builds(lambda v: {"name": "x-env", "exact": v}, st.sampled_from(["prod", "", "a b"])),
        st.just({"name": "x-tenant", "prefix": "t-"}),
        st.just({"name": "x-id", "regex": "^[0-9a-f]{8}$"}),
        st.just({"name": "x-debug", "present": True, "invert": True}),
        st.just({"name": ":authority", "exact": "example.com"}),
    ),
    max_size=3,
)
matches = st.one_of(
    st.builds(lambda p, h: {"prefix": p, "headers": h}, st.sampled_from(["/", "/api", "/v1/"]), header_matches),
    st.builds(lambda p, h: {"path": p, "headers": h}, st.sampled_from(["/exact", "/a/b"]), header_matches),
    st.builds(
        lambda r, h: {"regex": r, "headers": h}, st.sampled_from(["^/v[0-9]+/.*", "/(a|b)/c", ".*"]), header_matches
    ),
)
hash_policies = st.lists(
    st.one_of(
        st.builds(lambda t: {"type": "header", "name": "x-user-id", "terminal": t}, st.booleans()),
        st.just({"type": "cookie", "name": "sid", "ttl": "1h", "path": "/"}),
        st.just({"type": "cookie", "name": "sid"}),
        st.just({"type": "source_ip"}),
        st.just({"type": "query_parameter", "name": "u"}),
    ),
    max_size=3,
)


@st.composite
def worlds(draw):
    cluster_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    cs = {n: draw(clusters) for n in cluster_names}
    bs = {n: draw(st.lists(backends, max_size=4)) for n in cluster_names}
    listeners = [{"name": "http", "port": 10000, "max_connections": draw(st.sampled_from([None, 1000]))}]
    if draw(st.booleans()):
        listeners.append({"name": "tcp", "port": 10001, "protocol": "tcp", "cluster": cluster_names[0]})
    routes = []
    for i in range(draw(st.integers(1, 4))):
        targets = draw(st.lists(st.sampled_from(cluster_names), min_size=1, max_size=2, unique=True))
        routes.append(
            {
                "name": f"r{i}",
                "listener": "http",
                "match": draw(matches),
                "domains": draw(st.sampled_from([["*"], ["example.com", "*.example.org"], ["api.test:8080"]])),
                "backends": [{"cluster": c, "weight": draw(st.integers(1, 100))} for c in targets],
                "hash_policies": draw(hash_policies),
                "websocket": draw(st.booleans()),
                "timeout": draw(st.sampled_from([None, "15s"])),
                "idle_timeout": draw(st.sampled_from([None, "5m"])),
                "order": draw(st.integers(-1, 1)),
            }
        )
    return cs, bs, listeners, routes


def _bootstrap(
    clusters: list[Cluster], members: dict[str, list[Backend]], listeners: list[Listener], routes: list[Route]
) -> dict:
    """lbcp's translation, with EDS and RDS inlined so Envoy can validate it offline."""
    out_clusters = []
    for c in clusters:
        msg = res.cluster_resource(c, members[c.name])
        if msg.type == cluster_pb2.Cluster.EDS:
            msg.ClearField("eds_cluster_config")
            msg.type = cluster_pb2.Cluster.STATIC
            msg.load_assignment.CopyFrom(res.load_assignment(c.name, members[c.name]))
        out_clusters.append(json_format.MessageToDict(msg))
    out_listeners = []
    for lst in listeners:
        msg = res.listener_resource(lst)
        for chain in msg.filter_chains:
            for f in chain.filters:
                if f.name == "envoy.filters.network.http_connection_manager":
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    hcm.ClearField("rds")
                    hcm.route_config.CopyFrom(
                        res.route_configuration(lst.name, [r for r in routes if r.listener == lst.name])
                    )
                    f.typed_config.Pack(hcm)
        out_listeners.append(json_format.MessageToDict(msg))
    # Listeners find their admission filter over ADS (ECDS): give the bootstrap a node and an
    # ADS source, as lbcp's own bootstrap has (validation opens no connection).
    ads = {
        "name": "lbcp_xds",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {"cluster_name": "lbcp_xds"},
    }
    return {
        "node": {"id": "validate", "cluster": "validate"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "lbcp_xds"}}],
            }
        },
        "static_resources": {"clusters": [*out_clusters, ads], "listeners": out_listeners},
    }


EXAMPLES = 60  # worlds the model accepts, each validated by a real Envoy
# The model filters what Hypothesis draws (about 40% of drawn worlds pass: most rejections are
# hash policies on a cluster that cannot hash, or over several clusters). A property checked
# over worlds that were all filtered out checks nothing: the run must have validated at least
# this many accepted worlds, at this share of those drawn, covering each kind of feature.
MIN_ACCEPTED = 40
MIN_ACCEPTED_SHARE = 0.2
MIN_WITH = {"hash_policies": 3, "health_check": 3, "tcp_listener": 3, "hostname_backend": 3}


def _accept(world) -> tuple[list[Cluster], dict[str, list[Backend]], list[Listener], list[Route]]:
    """The world as the model and its integrity rules take it; raises what they raise."""
    cs, bs, ls, rs = world
    clusters = [
        Cluster.model_validate({"name": n, **{k: v for k, v in c.items() if v is not None}}) for n, c in cs.items()
    ]
    members = {
        n: [
            Backend.model_validate({"name": f"{n}-{i}", **{k: v for k, v in b.items() if v is not None}})
            for i, b in enumerate(bs[n])
        ]
        for n in cs
    }
    listeners = [Listener.model_validate({k: v for k, v in lst.items() if v is not None}) for lst in ls]
    routes = [Route.model_validate({k: v for k, v in r.items() if v is not None}) for r in rs]
    world_ = World({c.name: c for c in clusters}, {lst.name: lst for lst in listeners}, {r.name: r for r in routes})
    check(
        world_,
        {(Kind.CLUSTER, c.name) for c in clusters}
        | {(Kind.LISTENER, lst.name) for lst in listeners}
        | {(Kind.ROUTE, r.name) for r in routes},
    )
    return clusters, members, listeners, routes


def test_what_validates_envoy_accepts(tmp_path_factory) -> None:
    tally: Counter[str] = Counter()

    # Slow on purpose (a real Envoy per example); the filter health check stays on.
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(world=worlds())
    def envoy_accepts(world) -> None:
        try:
            clusters, members, listeners, routes = _accept(world)
        except (ValidationError, StoreError, ValueError):
            tally["rejected"] += 1
            assume(False)
        path = tmp_path_factory.mktemp("prop") / "envoy.json"
        path.write_text(json.dumps(_bootstrap(clusters, members, listeners, routes)))
        r = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, (
            f"Envoy rejects what lbcp accepted:\n{r.stdout}{r.stderr}\n{Path(path).read_text()[:3000]}"
        )
        tally["accepted"] += 1
        tally["hash_policies"] += any(rt.hash_policies for rt in routes)
        tally["health_check"] += any(c.health_check is not None for c in clusters)
        tally["tcp_listener"] += any(lst.protocol == "tcp" for lst in listeners)
        tally["hostname_backend"] += any(
            ":" not in b.address and any(ch.isalpha() for ch in b.address) for bs in members.values() for b in bs
        )

    envoy_accepts()
    print(f"translation property: {dict(tally)}")
    drawn = tally["accepted"] + tally["rejected"]
    assert tally["accepted"] >= MIN_ACCEPTED, f"only {tally['accepted']} of {drawn} drawn worlds were accepted: {tally}"
    assert tally["accepted"] / drawn >= MIN_ACCEPTED_SHARE, tally
    for feature, least in MIN_WITH.items():
        assert tally[feature] >= least, f"only {tally[feature]} accepted worlds with {feature}: {tally}"
