"""Clusters (CDS): load balancing, slow start, health checks, circuit breakers (and the retry
budget), upstream TLS."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2, protocol_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import http_pb2, percent_pb2, range_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from controlplane.intent.model import (
    Backend,
    Cluster,
    Protocol,
    SlowStart,
)
from controlplane.xds.resources._shared import (
    _HTTP_PROTOCOL_OPTIONS,
    DEFAULT_CIRCUIT_LIMIT,
    EDGE_BUFFER_LIMIT,
    _ads,
    _any,
    _dur,
)
from controlplane.xds.resources.endpoints import load_assignment


def uses_dns(cluster: Cluster, backends: Iterable[Backend]) -> bool:
    """A STRICT_DNS cluster: asked for, or (intent written before `discovery` existed, which
    the API no longer accepts) an EDS cluster holding a hostname, which EDS cannot carry."""
    return cluster.discovery == "dns" or any(not b.is_ip for b in backends)


def cluster_resource(c: Cluster, backends: Iterable[Backend] = ()) -> cluster_pb2.Cluster:
    backends = list(backends)
    out = cluster_pb2.Cluster(name=c.name, connect_timeout=_dur(c.connect_timeout))
    out.per_connection_buffer_limit_bytes.value = EDGE_BUFFER_LIMIT
    if uses_dns(c, backends):
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.load_assignment.CopyFrom(load_assignment(c.name, backends))
    else:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(_ads())
    lb = c.load_balancer
    if lb.type == "round_robin":
        out.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
        if c.slow_start is not None:
            out.round_robin_lb_config.slow_start_config.CopyFrom(_slow_start(c.name, c.slow_start))
    elif lb.type == "least_request":
        out.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
        out.least_request_lb_config.choice_count.value = lb.choice_count
        if c.slow_start is not None:
            out.least_request_lb_config.slow_start_config.CopyFrom(_slow_start(c.name, c.slow_start))
    elif lb.type == "random":
        out.lb_policy = cluster_pb2.Cluster.RANDOM
    elif lb.type == "maglev":
        out.lb_policy = cluster_pb2.Cluster.MAGLEV
        out.maglev_lb_config.table_size.value = lb.table_size
    elif lb.type == "ring_hash":
        out.lb_policy = cluster_pb2.Cluster.RING_HASH
        out.ring_hash_lb_config.minimum_ring_size.value = lb.minimum_ring_size
        out.ring_hash_lb_config.maximum_ring_size.value = lb.maximum_ring_size
        out.ring_hash_lb_config.hash_function = (
            cluster_pb2.Cluster.RingHashLbConfig.XX_HASH
            if lb.hash_function == "xx_hash"
            else cluster_pb2.Cluster.RingHashLbConfig.MURMUR_HASH_2
        )
    out.common_lb_config.update_merge_window.CopyFrom(duration_pb2.Duration())  # 0 s: see module doc

    if c.tls is not None:
        out.transport_socket.CopyFrom(_upstream_tls(c))

    if c.protocol == Protocol.HTTP2:
        opts = http_protocol_options_pb2.HttpProtocolOptions()
        opts.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
        out.typed_extension_protocol_options[_HTTP_PROTOCOL_OPTIONS].CopyFrom(_any(opts))

    hc = c.health_check
    if hc is not None and hc.active is not None:
        a = hc.active
        check = health_check_pb2.HealthCheck(
            timeout=_dur(a.timeout),
            interval=_dur(a.interval),
            # Envoy checks a cluster that carries no traffic only every 60 s by default: a dead
            # backend of a quiet cluster would come back a minute late. The operator's interval.
            no_traffic_interval=_dur(a.interval),
            healthy_threshold=wrappers_pb2.UInt32Value(value=a.healthy_threshold),
            unhealthy_threshold=wrappers_pb2.UInt32Value(value=a.unhealthy_threshold),
        )
        if a.type == "http":
            check.http_health_check.path = a.path or "/"
            if a.host:
                check.http_health_check.host = a.host
            if a.expected_statuses != [200]:
                for s in sorted(set(a.expected_statuses)):
                    check.http_health_check.expected_statuses.append(range_pb2.Int64Range(start=s, end=s + 1))
            if c.protocol == Protocol.HTTP2:
                check.http_health_check.codec_client_type = http_pb2.HTTP2  # (2 would be HTTP3: Envoy crashed on it)
        else:
            check.tcp_health_check.CopyFrom(health_check_pb2.HealthCheck.TcpHealthCheck())
        out.health_checks.append(check)
        # A backend added to a checked cluster takes traffic only once it passed a check (Envoy's
        # default sends it traffic until the first check fails: 503s from a dead new backend).
        out.common_lb_config.ignore_new_hosts_until_first_hc = True
    if hc is not None and hc.passive is not None:
        p = hc.passive
        out.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=wrappers_pb2.UInt32Value(value=p.consecutive_5xx),
                interval=_dur(p.interval),
                base_ejection_time=_dur(p.base_ejection_time),
                max_ejection_percent=wrappers_pb2.UInt32Value(value=p.max_ejection_percent),
            )
        )
    cb = c.circuit_breakers
    t = circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.DEFAULT)
    t.max_connections.value = cb.max_connections if cb and cb.max_connections else DEFAULT_CIRCUIT_LIMIT
    t.max_pending_requests.value = cb.max_pending_requests if cb and cb.max_pending_requests else DEFAULT_CIRCUIT_LIMIT
    t.max_requests.value = cb.max_requests if cb and cb.max_requests else DEFAULT_CIRCUIT_LIMIT
    if cb and cb.max_retries is not None:
        t.max_retries.value = cb.max_retries
    if cb and cb.retry_budget is not None:
        # Envoy then ignores max_retries: the active retries may be at most `percent` of the
        # cluster's active and pending requests, and never fewer than `min_concurrency`; a
        # retry over it is not made (the cluster's `upstream_rq_retry_overflow` counts it).
        t.retry_budget.budget_percent.value = cb.retry_budget.percent
        t.retry_budget.min_retry_concurrency.value = cb.retry_budget.min_concurrency
    out.circuit_breakers.thresholds.append(t)
    return out


def slow_start_runtime_key(cluster: str) -> str:
    """The runtime key Envoy reads a cluster's slow-start aggression from (it must name one).
    lbcp's runtime layer never sets it, so the intent's `aggression` (its default) holds."""
    return f"lbcp.cluster.{cluster}.slow_start.aggression"


def _slow_start(cluster: str, ss: SlowStart) -> cluster_pb2.Cluster.SlowStartConfig:
    """Envoy's slow start: a host that just joined the cluster (or, with an active health
    check, just passed it) weighs weight x max(min_weight_percent, (t / window) ^ (1 /
    aggression)) until `window` has passed. Envoy re-weighs a host each time it picks it, so
    the share ramps up with traffic; hosts present when the cluster is created start the
    window together (no effect among themselves)."""
    out = cluster_pb2.Cluster.SlowStartConfig(
        slow_start_window=_dur(ss.window), min_weight_percent=percent_pb2.Percent(value=ss.min_weight_percent)
    )
    out.aggression.default_value = ss.aggression
    out.aggression.runtime_key = slow_start_runtime_key(cluster)
    return out


def _upstream_tls(c: Cluster) -> base_pb2.TransportSocket:
    assert c.tls is not None
    ctx = tls_pb2.UpstreamTlsContext(sni=c.tls.sni or "")
    common = ctx.common_tls_context
    if c.protocol == Protocol.HTTP2:
        common.alpn_protocols.append("h2")
    if c.tls.ca_bundle is not None:
        v = common.validation_context
        v.trusted_ca.inline_string = c.tls.ca_bundle
        if c.tls.sni:
            # Check the backend's certificate names the server asked for, not just its CA.
            v.match_typed_subject_alt_names.append(
                tls_common_pb2.SubjectAltNameMatcher(
                    san_type=tls_common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=c.tls.sni)
                )
            )
    if c.tls.client_certificate:
        common.tls_certificate_sds_secret_configs.append(
            secret_pb2.SdsSecretConfig(name=c.tls.client_certificate, sds_config=_ads())
        )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_any(ctx))
