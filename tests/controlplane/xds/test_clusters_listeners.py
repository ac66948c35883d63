"""Cluster and listener policies translated to Envoy's protos: slow start, the retry budget,
access logs and tracing (no Envoy here; tests/e2e/test_cluster_listener_policy.py runs them
through a real one)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from controlplane.intent.model import Cluster, Listener
from controlplane.xds import resources as res
from controlplane.xds.resources.clusters import slow_start_runtime_key
from controlplane.xds.resources.listeners import ACCESS_LOGGER, TRACER, TRACING_STAT_PREFIX


def _hcm(lst: Listener) -> hcm_pb2.HttpConnectionManager:
    msg = res.listener_resource(lst)
    hcm = hcm_pb2.HttpConnectionManager()
    assert msg.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    # Every shard chain carries the same filters.
    assert {c.filters[0].typed_config.value for c in msg.filter_chains} == {
        msg.filter_chains[0].filters[0].typed_config.value
    }
    return hcm


def _tcp(lst: Listener) -> tcp_proxy_pb2.TcpProxy:
    tcp = tcp_proxy_pb2.TcpProxy()
    assert res.listener_resource(lst).filter_chains[0].filters[0].typed_config.Unpack(tcp)
    return tcp


def _bytes(lst: Listener) -> bytes:
    return bytes(res.listener_resource(lst).SerializeToString(deterministic=True))


# -- slow start -------------------------------------------------------------------------------


@pytest.mark.parametrize("lb", ["round_robin", "least_request"])
def test_slow_start(lb: str) -> None:
    c = Cluster.model_validate(
        {
            "name": "web",
            "load_balancer": {"type": lb},
            "slow_start": {"window": "30s", "aggression": 2.5, "min_weight_percent": 5},
        }
    )
    out = res.cluster_resource(c)
    config = out.round_robin_lb_config if lb == "round_robin" else out.least_request_lb_config
    ss = config.slow_start_config
    assert ss.slow_start_window.seconds == 30 and ss.slow_start_window.nanos == 0
    assert ss.aggression.default_value == 2.5
    assert ss.aggression.runtime_key == slow_start_runtime_key("web") == "lbcp.cluster.web.slow_start.aggression"
    assert ss.min_weight_percent.value == 5.0
    if lb == "least_request":
        assert out.least_request_lb_config.choice_count.value == 2  # untouched
    else:
        assert not out.HasField("least_request_lb_config")


def test_slow_start_defaults_and_absence() -> None:
    c = Cluster.model_validate({"name": "web", "slow_start": {"window": "1500ms"}})
    ss = res.cluster_resource(c).round_robin_lb_config.slow_start_config
    assert (ss.slow_start_window.seconds, ss.slow_start_window.nanos) == (1, 500_000_000)
    assert ss.aggression.default_value == 1.0 and ss.min_weight_percent.value == 10.0
    # No slow start: no lb config at all, the bytes of a cluster written before the field existed.
    plain = res.cluster_resource(Cluster(name="web"))
    assert not plain.HasField("round_robin_lb_config") and not plain.HasField("least_request_lb_config")
    lr = res.cluster_resource(Cluster.model_validate({"name": "web", "load_balancer": {"type": "least_request"}}))
    assert not lr.least_request_lb_config.HasField("slow_start_config")


@pytest.mark.parametrize("lb", ["random", "maglev", "ring_hash"])
def test_slow_start_refused_where_envoy_ignores_it(lb: str) -> None:
    with pytest.raises(ValueError, match="slow_start"):
        Cluster.model_validate({"name": "web", "load_balancer": {"type": lb}, "slow_start": {"window": "5s"}})


# -- retry budget -----------------------------------------------------------------------------


def test_retry_budget() -> None:
    c = Cluster.model_validate(
        {
            "name": "web",
            "circuit_breakers": {"max_connections": 10, "retry_budget": {"percent": 25, "min_concurrency": 2}},
        }
    )
    (t,) = res.cluster_resource(c).circuit_breakers.thresholds
    assert t.retry_budget.budget_percent.value == 25.0
    assert t.retry_budget.min_retry_concurrency.value == 2
    assert t.max_connections.value == 10
    assert not t.HasField("max_retries")
    # Zero is a value, not an absence: a budget that refuses every retry.
    c0 = Cluster.model_validate(
        {"name": "web", "circuit_breakers": {"retry_budget": {"percent": 0, "min_concurrency": 0}}}
    )
    (t0,) = res.cluster_resource(c0).circuit_breakers.thresholds
    assert t0.HasField("retry_budget")
    assert t0.retry_budget.HasField("budget_percent") and t0.retry_budget.budget_percent.value == 0.0
    assert t0.retry_budget.HasField("min_retry_concurrency") and t0.retry_budget.min_retry_concurrency.value == 0
    # None at all: no budget (Envoy's max_retries applies).
    (tn,) = res.cluster_resource(Cluster(name="web")).circuit_breakers.thresholds
    assert not tn.HasField("retry_budget")


# -- access logs ------------------------------------------------------------------------------


def test_access_log_text_http_and_tcp() -> None:
    lst = Listener.model_validate({"name": "http", "port": 80, "access_log": {}})
    (log,) = _hcm(lst).access_log
    assert log.name == ACCESS_LOGGER == "envoy.access_loggers.file"
    f = file_pb2.FileAccessLog()
    assert log.typed_config.Unpack(f)
    assert f.path == "/dev/stdout"
    assert not f.HasField("log_format")  # Envoy's default line

    tcp = Listener.model_validate(
        {
            "name": "db",
            "port": 5432,
            "protocol": "tcp",
            "cluster": "pg",
            "access_log": {"path": "/var/log/envoy/db.log"},
        }
    )
    (tlog,) = _tcp(tcp).access_log
    ft = file_pb2.FileAccessLog()
    assert tlog.name == ACCESS_LOGGER and tlog.typed_config.Unpack(ft)
    assert ft.path == "/var/log/envoy/db.log" and not ft.HasField("log_format")


def test_access_log_json_fields_and_determinism() -> None:
    fields = {"status": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "note": "lbcp 100%%", "upstream": "%UPSTREAM_HOST%"}
    lst = Listener.model_validate(
        {"name": "http", "port": 80, "access_log": {"format": "json", "fields": fields, "path": "/tmp/a.log"}}
    )
    (log,) = _hcm(lst).access_log
    f = file_pb2.FileAccessLog()
    assert log.typed_config.Unpack(f)
    assert f.path == "/tmp/a.log"
    got = {k: v.string_value for k, v in f.log_format.json_format.fields.items()}
    assert got == fields
    # The same fields in another order: the same bytes (no listener churn on a rewrite).
    reordered = Listener.model_validate(
        {
            "name": "http",
            "port": 80,
            "access_log": {"format": "json", "fields": dict(reversed(list(fields.items()))), "path": "/tmp/a.log"},
        }
    )
    assert _bytes(lst) == _bytes(reordered)


def _json_listener(fields: dict[str, str]) -> Listener:
    return Listener.model_validate({"name": "http", "port": 80, "access_log": {"format": "json", "fields": fields}})


def test_access_log_json_same_bytes_whatever_the_order_and_process() -> None:
    """The listener's version is a hash of its bytes: the same fields in any order, in another
    process (another hash seed), must serialise alike (a Struct is a map)."""
    fields = {f"field_{i:02d}": f"%REQ(X-H-{i})%" for i in range(40)}
    want = _bytes(_json_listener(fields))
    items = list(fields.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert _bytes(_json_listener(dict(items))) == want
    code = (
        "import sys, json\n"
        "from controlplane.intent.model import Listener\n"
        "from controlplane.xds import resources as res\n"
        "f = json.loads(sys.argv[1])\n"
        "lst = Listener.model_validate({'name': 'http', 'port': 80, 'access_log': {'format': 'json', 'fields': f}})\n"
        "sys.stdout.write(res.listener_resource(lst).SerializeToString(deterministic=True).hex())\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, json.dumps(dict(reversed(items)))], capture_output=True, text=True, check=True
    )
    assert bytes.fromhex(other.stdout) == want


def test_no_access_log_no_tracing_by_default() -> None:
    hcm = _hcm(Listener(name="http", port=80))
    assert not hcm.access_log and not hcm.HasField("tracing")
    tcp = _tcp(Listener.model_validate({"name": "db", "port": 5432, "protocol": "tcp", "cluster": "pg"}))
    assert not tcp.access_log


# -- tracing ----------------------------------------------------------------------------------


def _otel(hcm: hcm_pb2.HttpConnectionManager) -> opentelemetry_pb2.OpenTelemetryConfig:
    assert hcm.tracing.provider.name == TRACER == "envoy.tracers.opentelemetry"
    config = opentelemetry_pb2.OpenTelemetryConfig()
    assert hcm.tracing.provider.typed_config.Unpack(config)
    return config


def test_tracing_to_a_cluster() -> None:
    lst = Listener.model_validate(
        {"name": "http", "port": 80, "tracing": {"cluster": "otel", "sampling_percent": 12.5, "service_name": "edge"}}
    )
    hcm = _hcm(lst)
    assert hcm.tracing.random_sampling.value == 12.5
    config = _otel(hcm)
    assert config.service_name == "edge"
    assert config.grpc_service.WhichOneof("target_specifier") == "envoy_grpc"
    assert config.grpc_service.envoy_grpc.cluster_name == "otel"
    assert lst.clusters == ("otel",)


@pytest.mark.parametrize(
    ("address", "target"),
    [("127.0.0.1", "127.0.0.1:4317"), ("::1", "[::1]:4317"), ("2001:db8::7", "[2001:db8::7]:4317")],
)
def test_tracing_to_a_collector_address_needs_no_cluster(address: str, target: str) -> None:
    lst = Listener.model_validate({"name": "http", "port": 80, "tracing": {"collector": {"address": address}}})
    hcm = _hcm(lst)
    assert hcm.tracing.random_sampling.value == 1.0  # the model's default
    config = _otel(hcm)
    assert config.service_name == "envoy"
    assert config.grpc_service.WhichOneof("target_specifier") == "google_grpc"
    assert config.grpc_service.google_grpc.target_uri == target
    assert config.grpc_service.google_grpc.stat_prefix == TRACING_STAT_PREFIX
    assert lst.clusters == ()


def test_sampling_zero_is_kept() -> None:
    lst = Listener.model_validate(
        {"name": "http", "port": 80, "tracing": {"collector": {"address": "127.0.0.1"}, "sampling_percent": 0}}
    )
    hcm = _hcm(lst)
    assert hcm.tracing.HasField("random_sampling") and hcm.tracing.random_sampling.value == 0.0


def test_tracing_refused_on_tcp() -> None:
    with pytest.raises(ValueError, match="http listeners only"):
        Listener.model_validate(
            {
                "name": "db",
                "port": 5432,
                "protocol": "tcp",
                "cluster": "pg",
                "tracing": {"collector": {"address": "127.0.0.1"}},
            }
        )


# -- what changes the listener ----------------------------------------------------------------


def test_listener_bytes_change_only_with_its_own_fields() -> None:
    base = {"name": "http", "port": 80}
    log = {"format": "json", "fields": {"s": "%RESPONSE_CODE%"}}
    trace = {"collector": {"address": "127.0.0.1", "port": 4317}, "sampling_percent": 50, "service_name": "a"}
    variants = [
        base,
        {**base, "access_log": {}},
        {**base, "access_log": log},
        {**base, "access_log": {**log, "path": "/tmp/x.log"}},
        {**base, "access_log": {**log, "fields": {"s": "%RESPONSE_CODE%", "p": "%REQ(:PATH)%"}}},
        {**base, "tracing": trace},
        {**base, "tracing": {**trace, "sampling_percent": 51}},
        {**base, "tracing": {**trace, "service_name": "b"}},
        {**base, "tracing": {**trace, "collector": {"address": "127.0.0.1", "port": 4318}}},
        {**base, "tracing": {"cluster": "otel", "sampling_percent": 50, "service_name": "a"}},
        {**base, "access_log": log, "tracing": trace},
    ]
    built = [_bytes(Listener.model_validate(v)) for v in variants]
    assert len(set(built)) == len(variants)  # each field changes the listener...
    assert built == [_bytes(Listener.model_validate(v)) for v in variants]  # ...deterministically
