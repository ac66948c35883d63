"""Translate intent into Envoy v3 resources (xds-protos). Pure functions, no I/O.

Choices made on purpose (see docs/xds.md):
- A cluster is EDS over ADS (`discovery: eds`, the default) or STRICT_DNS with its endpoints
  inline (`discovery: dns`): Envoy cannot take hostnames over EDS, so hostname backends need
  a DNS cluster, chosen explicitly (the API refuses a hostname in an EDS cluster).
- `common_lb_config.update_merge_window` is 0: lbcp coalesces changes itself, and Envoy's
  default 1 s merge window would delay drains and make Envoys apply weight changes at
  different moments (their consistent-hash rings would briefly disagree).
- Each endpoint carries `envoy.lb/hash_key` = the backend's name, so its place on a
  maglev/ring-hash ring follows its identity, not its address.
- `admin_state: drain` → health_status DRAINING (no new requests, existing connections
  stay); `maint` → left out of the assignment.
- WebSocket: the HCM lists `websocket` disabled and routes that want it enable it, so
  route changes never touch the Listener (no listener drain).
- Circuit breakers default far above Envoy's own 1024, which would cap a cluster at 1024
  connections per Envoy — wrong for a fleet carrying millions of persistent connections.
- Edge settings (Envoy's "configuring Envoy as an edge proxy"): 32 KiB buffer limits per
  connection on listeners and clusters; HTTP listeners use the remote address, reject
  headers with underscores, limit HTTP/2 to 100 streams per connection with 64 KiB stream
  and 1 MiB connection windows, close idle connections after 1 h and idle streams after
  5 min, and give clients 10 s to send request headers. No whole-request timeout: it would
  cut long WebSocket and streaming requests.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import xxhash
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, extension_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.local_ratelimit.v3 import local_ratelimit_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.service.runtime.v3 import rtds_pb2 as runtime_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import http_pb2, range_pb2, token_bucket_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import domain_pb2 as xds_domain_pb2
from xds.type.matcher.v3 import matcher_pb2 as xds_matcher_pb2

from controlplane.gen.lbcp.v1 import ring_pb2
from controlplane.intent.model import (
    AdminState,
    Backend,
    Certificate,
    Cluster,
    Fleet,
    Listener,
    Maglev,
    Protocol,
    RingHash,
    Route,
)
from controlplane.ring.tables import MaglevTable, RingHashTable, ring_for

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# Push order that never references a resource Envoy does not have yet (make before break).
# lbcp's own resource (protos/lbcp/v1/ring.proto), served on the same ADS stream on demand.
HASH_RING_TYPE = "type.googleapis.com/lbcp.v1.HashRing"
# The fleet's runtime layer (RTDS): capacity limits that must change without touching a listener.
RUNTIME_TYPE = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
RUNTIME_LAYER = "lbcp"
# The fleet's admission filter (ECDS): a token bucket on new connections to every listener,
# served like the runtime layer, so a new rate changes no listener either.
EXTENSION_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
ADMISSION = "lbcp.admission"
_RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.local_ratelimit.v3.LocalRateLimit"

TYPE_ORDER = (RUNTIME_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE, LISTENER_TYPE, EXTENSION_TYPE, ROUTE_TYPE)
SHORT_NAMES = {
    RUNTIME_TYPE: "rtds",
    EXTENSION_TYPE: "ecds",
    CLUSTER_TYPE: "cds",
    ENDPOINT_TYPE: "eds",
    LISTENER_TYPE: "lds",
    ROUTE_TYPE: "rds",
    SECRET_TYPE: "sds",
    HASH_RING_TYPE: "ring",
}

DEFAULT_CIRCUIT_LIMIT = 1_000_000
EDGE_BUFFER_LIMIT = 32 * 1024
EDGE_H2_MAX_STREAMS = 100
EDGE_H2_STREAM_WINDOW = 64 * 1024
EDGE_H2_CONNECTION_WINDOW = 1024 * 1024
EDGE_IDLE_TIMEOUT = 3600.0
EDGE_STREAM_IDLE_TIMEOUT = 300.0
EDGE_REQUEST_HEADERS_TIMEOUT = 10.0
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _dur(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(round(seconds * 1000))
    return d


def _any(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _socket(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


# -- clusters and endpoints ------------------------------------------------------------------


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
    elif lb.type == "least_request":
        out.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
        out.least_request_lb_config.choice_count.value = lb.choice_count
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
    out.circuit_breakers.thresholds.append(t)
    return out


def _lb_endpoint(b: Backend) -> endpoint_components_pb2.LbEndpoint:
    ep = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=_socket(b.address, b.port)),
        load_balancing_weight=wrappers_pb2.UInt32Value(value=b.weight),
    )
    if b.admin_state == AdminState.DRAIN:
        ep.health_status = health_check_pb2.DRAINING
    meta = struct_pb2.Struct()
    meta.fields["hash_key"].string_value = b.name
    ep.metadata.filter_metadata["envoy.lb"].CopyFrom(meta)
    return ep


def load_assignment(cluster: str, backends: Iterable[Backend]) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by (priority, zone), each group in name order (deterministic)."""
    groups: dict[tuple[int, str], list[Backend]] = {}
    for b in backends:
        if b.admin_state == AdminState.MAINT:
            continue
        groups.setdefault((b.priority, b.zone or ""), []).append(b)
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster)
    for (priority, zone), members in sorted(groups.items()):
        loc = endpoint_components_pb2.LocalityLbEndpoints(priority=priority)
        if zone:
            loc.locality.zone = zone
        loc.lb_endpoints.extend(_lb_endpoint(b) for b in sorted(members, key=lambda b: b.name))
        cla.endpoints.append(loc)
    return cla


# -- the front health gate -------------------------------------------------------------------

# Each Envoy's bootstrap has a static EDS cluster `lbcp_gate` whose assignment is named after
# the node (`lbcp.gate/{node id}`), and its ops listener's health check requires 100 % of that
# cluster healthy. The replica serves the assignment with one placeholder endpoint, HEALTHY
# while the node is in service and UNHEALTHY while an operator has drained it, so a drain
# fails that one Envoy's /healthz (and the front tier withdraws it) without touching the
# fleet's shared resources. Nothing routes to the gate; its endpoint is never connected to.
GATE_CLUSTER = "lbcp_gate"
GATE_PREFIX = "lbcp.gate/"


def gate_name(node_id: str) -> str:
    return GATE_PREFIX + node_id


def gate_assignment(name: str, drained: bool) -> endpoint_pb2.ClusterLoadAssignment:
    """The gate assignment served under `name` (a subscribed `lbcp.gate/...` name)."""
    ep = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=_socket("127.0.0.1", 9)))
    ep.health_status = health_check_pb2.UNHEALTHY if drained else health_check_pb2.HEALTHY
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    cla.endpoints.append(endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[ep]))
    return cla


# -- listeners -------------------------------------------------------------------------------


def route_config_name(listener: str) -> str:
    return listener


def secret_resource(cert: Certificate, private_key_pem: str) -> secret_pb2.Secret:
    """The certificate as an SDS Secret (the key opened from its sealed form by the caller)."""
    return secret_pb2.Secret(
        name=cert.name,
        tls_certificate=tls_common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cert.certificate_chain.encode()),
            private_key=base_pb2.DataSource(inline_bytes=private_key_pem.encode()),
        ),
    )


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


_TLS_VERSIONS = {"1.2": tls_common_pb2.TlsParameters.TLSv1_2, "1.3": tls_common_pb2.TlsParameters.TLSv1_3}


def _downstream_tls(lst: Listener, certificate: str) -> base_pb2.TransportSocket:
    assert lst.tls is not None
    ctx = tls_pb2.DownstreamTlsContext()
    common = ctx.common_tls_context
    common.tls_params.tls_minimum_protocol_version = _TLS_VERSIONS[lst.tls.min_version]
    common.tls_params.tls_maximum_protocol_version = _TLS_VERSIONS[lst.tls.max_version]
    common.alpn_protocols.extend(lst.tls.alpn)
    # By name over ADS: rotating the certificate changes the Secret, never this Listener.
    common.tls_certificate_sds_secret_configs.append(secret_pb2.SdsSecretConfig(name=certificate, sds_config=_ads()))
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_any(ctx))


def runtime_resource(fleet: Fleet | None, listeners: Mapping[str, int | None]) -> runtime_pb2.Runtime:
    """The fleet's RTDS layer (`RUNTIME_LAYER`): each traffic listener's connection limit
    (`envoy.resource_limits.listener.<name>.connection_limit`, which Envoy's listener checks
    on accept and counts refusals as `downstream_cx_overflow`): the lower of its fleet's
    capacity and its own `max_connections` (`listeners`: name -> that, or None). A runtime
    update changes no listener, so a new limit drains nothing. Empty with neither."""
    layer = struct_pb2.Struct()
    capacity = fleet.capacity.max_connections_per_envoy if fleet is not None and fleet.capacity is not None else None
    for name in sorted(listeners):
        limits = [n for n in (capacity, listeners[name]) if n is not None]
        if limits:
            layer.fields[f"envoy.resource_limits.listener.{name}.connection_limit"].number_value = min(limits)
    return runtime_pb2.Runtime(name=RUNTIME_LAYER, layer=layer)


def _admission_filter(rate: int | None, burst: int | None) -> local_ratelimit_pb2.LocalRateLimit:
    # No rate: a bucket no connection rate on one host can empty (the filter stays, so that
    # setting a rate later changes only this extension config, never the listener).
    if rate is None:
        bucket = token_bucket_pb2.TokenBucket(max_tokens=0xFFFFFFFF, fill_interval=duration_pb2.Duration(seconds=1))
        bucket.tokens_per_fill.value = 0xFFFFFFFF
        return local_ratelimit_pb2.LocalRateLimit(stat_prefix="lbcp_admission", token_bucket=bucket)
    # Refill in small steps (Envoy's bucket adds tokens_per_fill every fill_interval, capped at
    # max_tokens): a whole second's tokens at once would let a burst smaller than the rate
    # cap the rate, and let two refills fall into one second.
    interval_ms = max(50, min(1000, 1000 // rate))
    bucket = token_bucket_pb2.TokenBucket(
        max_tokens=burst or rate, fill_interval=duration_pb2.Duration(nanos=interval_ms * 1_000_000)
    )
    if interval_ms == 1000:
        bucket.fill_interval.CopyFrom(duration_pb2.Duration(seconds=1))
    bucket.tokens_per_fill.value = max(1, round(rate * interval_ms / 1000))
    return local_ratelimit_pb2.LocalRateLimit(stat_prefix="lbcp_admission", token_bucket=bucket)


def admission_resource(fleet: Fleet | None) -> extension_pb2.TypedExtensionConfig:
    """The fleet's admission filter (ECDS, `ADMISSION`): new connections per second per Envoy
    listener, a token bucket of `new_connections_burst` (default: one second's worth). A
    connection over the rate is closed at once (Envoy's local_ratelimit listener filter)."""
    cap = fleet.capacity if fleet is not None else None
    rate = cap.max_new_connections_per_second if cap is not None else None
    burst = (cap.new_connections_burst or rate) if cap is not None else None
    return extension_pb2.TypedExtensionConfig(name=ADMISSION, typed_config=_any(_admission_filter(rate, burst)))


def listener_resource(lst: Listener, server_names: dict[str, tuple[str, ...]] | None = None) -> listener_pb2.Listener:
    """`server_names`: for a TLS listener, each certificate's SNI names (its leaf's DNS names)."""
    out = listener_pb2.Listener(name=lst.name, address=_socket(lst.address, lst.port))
    out.per_connection_buffer_limit_bytes.value = EDGE_BUFFER_LIMIT
    # First, before any TLS work: the fleet's admission rate, found over ECDS. The listener
    # warms until it arrives (milliseconds: the replica answers the subscription at once), so a
    # new Envoy never takes a storm unlimited; the default applies only if it never comes.
    out.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name=ADMISSION,
            config_discovery=config_source_pb2.ExtensionConfigSource(
                config_source=config_source_pb2.ConfigSource(
                    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
                ),
                default_config=_any(_admission_filter(None, None)),
                apply_default_config_without_warming=False,
                type_urls=[_RATELIMIT_TYPE],
            ),
        )
    )
    # `max_connections` is enforced listener-wide through the runtime layer (runtime_resource),
    # not by a connection_limit filter: that filter counts per filter chain, and the chains
    # are shards of the listener's connections.
    chain = listener_components_pb2.FilterChain()
    if lst.protocol == "tcp":
        tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=lst.name, cluster=lst.cluster or "")
        chain.filters.append(
            listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=_any(tcp))
        )
    else:
        hcm = hcm_pb2.HttpConnectionManager(
            stat_prefix=lst.name,
            codec_type=hcm_pb2.HttpConnectionManager.AUTO,
            rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=route_config_name(lst.name)),
            use_remote_address=wrappers_pb2.BoolValue(value=True),
            stream_idle_timeout=_dur(EDGE_STREAM_IDLE_TIMEOUT),
            request_headers_timeout=_dur(EDGE_REQUEST_HEADERS_TIMEOUT),
        )
        hcm.common_http_protocol_options.idle_timeout.CopyFrom(_dur(EDGE_IDLE_TIMEOUT))
        hcm.common_http_protocol_options.headers_with_underscores_action = (
            protocol_pb2.HttpProtocolOptions.REJECT_REQUEST
        )
        h2 = hcm.http2_protocol_options
        h2.max_concurrent_streams.value = EDGE_H2_MAX_STREAMS
        h2.initial_stream_window_size.value = EDGE_H2_STREAM_WINDOW
        h2.initial_connection_window_size.value = EDGE_H2_CONNECTION_WINDOW
        hcm.upgrade_configs.append(
            hcm_pb2.HttpConnectionManager.UpgradeConfig(
                upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=False)
            )
        )
        hcm.http_filters.append(
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_any(router_pb2.Router()))
        )
        chain.filters.append(
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm))
        )
    if lst.tls is None:
        _add_shards(out, chain, lst.name)
        out.filter_chain_matcher.CopyFrom(_shard_matcher(lst.name))
        return out
    # Shards per certificate, the certificate chosen by SNI (exact and wildcard names, the
    # longest suffix first); the first certificate is also the default (no SNI, or a name no
    # certificate claims).
    out.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name="envoy.filters.listener.tls_inspector", typed_config=_any(tls_inspector_pb2.TlsInspector())
        )
    )
    names = server_names or {}
    by_name = xds_domain_pb2.ServerNameMatcher()
    claimed: set[str] = set()
    for cert in lst.tls.certificates:
        domains = [n for n in names.get(cert, ()) if n not in claimed]  # the first certificate naming it wins
        if domains:
            claimed.update(domains)
            tls = listener_components_pb2.FilterChain()
            tls.CopyFrom(chain)
            tls.transport_socket.CopyFrom(_downstream_tls(lst, cert))
            _add_shards(out, tls, f"{lst.name}/{cert}")
            shards = xds_matcher_pb2.Matcher.OnMatch(matcher=_shard_matcher(f"{lst.name}/{cert}"))
            by_name.domain_matchers.append(
                xds_domain_pb2.ServerNameMatcher.DomainMatcher(domains=domains, on_match=shards)
            )
    default = listener_components_pb2.FilterChain()
    default.CopyFrom(chain)
    default.transport_socket.CopyFrom(_downstream_tls(lst, lst.tls.certificates[0]))
    _add_shards(out, default, f"{lst.name}/default")
    fallback = xds_matcher_pb2.Matcher.OnMatch(matcher=_shard_matcher(f"{lst.name}/default"))
    if by_name.domain_matchers:
        tree = xds_matcher_pb2.Matcher.MatcherTree(
            input=_typed("sni", network_inputs_pb2.ServerNameInput()),
            custom_match=_typed("server_names", by_name),
        )
        out.filter_chain_matcher.CopyFrom(xds_matcher_pb2.Matcher(matcher_tree=tree, on_no_match=fallback))
    else:
        out.filter_chain_matcher.CopyFrom(fallback.matcher)
    return out


# -- shards: the connections one Envoy can be asked to let go of, a tenth at a time ----------

# Every traffic listener's connections are split over SHARDS filter chains by the tens digit
# of the client's source port (uniform: Linux gives connect() even ports, so the last digit
# would leave half the shards empty). The chains are identical but for their name, so they
# behave as one; when lbcp moves connections off an Envoy it serves that Envoy alone a
# listener in which one shard's chains carry a new generation (their metadata): Envoy drains
# exactly those chains (an in-place filter-chain update), closing their connections
# gracefully within its drain time, and nothing else (docs/frontdoor.md, "Moving connections").
SHARDS = 10
SHARD_METADATA = "lbcp.shard"


def shard_chain_name(prefix: str, shard: int) -> str:
    return f"{prefix}/s{shard}"


def _add_shards(out: listener_pb2.Listener, chain: listener_components_pb2.FilterChain, prefix: str) -> None:
    for shard in range(SHARDS):
        c = out.filter_chains.add()
        c.CopyFrom(chain)
        c.name = shard_chain_name(prefix, shard)


def _typed(name: str, msg: Message) -> xds_extension_pb2.TypedExtensionConfig:
    return xds_extension_pb2.TypedExtensionConfig(name=name, typed_config=_any(msg))


def _shard_matcher(prefix: str) -> xds_matcher_pb2.Matcher:
    """Source port -> the shard chain of its tens digit (a port below 10 goes to shard 0)."""
    port = _typed("source_port", network_inputs_pb2.SourcePortInput())
    out = xds_matcher_pb2.Matcher()
    for shard in range(1, SHARDS):
        m = out.matcher_list.matchers.add()
        m.predicate.single_predicate.input.CopyFrom(port)
        m.predicate.single_predicate.value_match.safe_regex.google_re2.SetInParent()
        m.predicate.single_predicate.value_match.safe_regex.regex = f"^[0-9]*{shard}[0-9]$"
        m.on_match.action.CopyFrom(_chain_action(shard_chain_name(prefix, shard)))
    out.on_no_match.action.CopyFrom(_chain_action(shard_chain_name(prefix, 0)))
    return out


def _chain_action(chain: str) -> xds_extension_pb2.TypedExtensionConfig:
    return _typed(chain, wrappers_pb2.StringValue(value=chain))


def shed_listener(value: bytes, generations: tuple[int, ...]) -> bytes:
    """A serialised listener with each shard whose generation is not 0 marked with it (its
    chains' metadata): served to one Envoy, this drains those shards' connections there."""
    if not any(generations):
        return value
    msg = listener_pb2.Listener.FromString(value)
    for chain in msg.filter_chains:
        shard = int(chain.name.rsplit("/s", 1)[1]) if "/s" in chain.name else -1
        if 0 <= shard < len(generations) and generations[shard]:
            chain.metadata.filter_metadata[SHARD_METADATA].fields["generation"].number_value = generations[shard]
    return bytes(msg.SerializeToString(deterministic=True))


# -- routes ----------------------------------------------------------------------------------


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


def route_entry(r: Route) -> route_components_pb2.Route:
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
        p = route_components_pb2.RouteAction.HashPolicy(terminal=hp.terminal)
        if hp.type == "header":
            p.header.header_name = hp.name or ""
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
        action.hash_policy.append(p)
    if r.websocket:
        action.upgrade_configs.append(
            route_components_pb2.RouteAction.UpgradeConfig(
                upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=True)
            )
        )
    return route_components_pb2.Route(name=r.name, match=match, route=action)


@dataclass(frozen=True, slots=True)
class ListenerBase:
    """A listener as the fleet is sent it (`value`, serialised once), and what a per-Envoy
    variant needs: with `bind_public`, each Envoy also binds its own public address; an Envoy
    asked to let go of shards gets them marked (`shed_listener`). A variant is built per
    stream only for Envoys that need one."""

    value: bytes
    address: str
    port: int
    bind_public: bool

    def variant(self, public_address: str | None, generations: tuple[int, ...] | None) -> bytes:
        """The listener for one Envoy: its public address (an IP literal, or None) and its
        shard generations (or None)."""
        value = shed_listener(self.value, generations) if generations else self.value
        if public_address is None or not self.bind_public:
            return value
        ip, own = ipaddress.ip_address(public_address), ipaddress.ip_address(self.address)
        if ip == own or (own.is_unspecified and own.version == ip.version):
            return value  # its own address already covers it (the same, or that family's wildcard)
        # One appended `additional_addresses` field: protobuf merges concatenated fields, so
        # this is a byte concatenation, not a protobuf build.
        extra = listener_pb2.Listener(
            additional_addresses=[listener_pb2.AdditionalAddress(address=_socket(str(ip), self.port))]
        )
        return value + bytes(extra.SerializeToString(deterministic=True))


def listener_base(lst: Listener, msg: listener_pb2.Listener) -> ListenerBase:
    return ListenerBase(msg.SerializeToString(deterministic=True), lst.address, lst.port, lst.bind_public_address)


def route_configuration(listener: str, routes: Iterable[Route]) -> route_pb2.RouteConfiguration:
    """One virtual host per domain named by the listener's routes (so domains never clash)."""
    by_domain: dict[str, list[Route]] = {}
    for r in routes:
        for d in r.domains:
            by_domain.setdefault(d, []).append(r)
    rc = route_pb2.RouteConfiguration(name=route_config_name(listener))
    for domain in sorted(by_domain):
        vh = route_components_pb2.VirtualHost(name=domain, domains=[domain])
        vh.routes.extend(route_entry(r) for r in sorted(by_domain[domain], key=_specificity))
        rc.virtual_hosts.append(vh)
    return rc


# -- lbcp.v1.HashRing ---------------------------------------------------------------------------


def hashes(cluster: Cluster) -> bool:
    """Whether the cluster's hosts are chosen by a consistent-hash ring (has a HashRing)."""
    return cluster.load_balancer.type in ("maglev", "ring_hash")


def hash_ring(cluster: Cluster, backends: Iterable[Backend], revision: int) -> tuple[ring_pb2.HashRing, str]:
    """The ring every Envoy builds for `cluster`, and its content version (the revision
    left out, so an unchanged ring keeps its version across unrelated intent changes)."""
    members = sorted((b for b in backends if b.admin_state != AdminState.MAINT), key=lambda b: b.name)
    lb = ring_for(cluster, members)
    cfg = cluster.load_balancer
    msg = ring_pb2.HashRing(cluster=cluster.name)
    if isinstance(cfg, Maglev):
        msg.algorithm = ring_pb2.HashRing.MAGLEV
        msg.table_size = cfg.table_size
    elif not isinstance(cfg, RingHash):
        raise ValueError(f"cluster {cluster.name!r} does not hash ({cfg.type})")
    else:
        msg.algorithm = ring_pb2.HashRing.RING_HASH
        msg.minimum_ring_size = cfg.minimum_ring_size
        msg.maximum_ring_size = cfg.maximum_ring_size
        msg.hash_function = cfg.hash_function
    index = {b.name: i for i, b in enumerate(members)}
    for b in members:
        msg.backends.add(
            name=b.name,
            address=b.address,
            port=b.port,
            weight=b.weight,
            priority=b.priority,
            zone=b.zone or "",
            draining=b.admin_state == AdminState.DRAIN,
        )
    for p, table in enumerate(lb.tables):
        pr = msg.priorities.add(
            priority=p, panic=lb.panic[p], healthy_load=lb.healthy_load[p], degraded_load=lb.degraded_load[p]
        )
        if isinstance(table, MaglevTable):
            to_global = [index[n] for n in table.names]
            pr.maglev_table.extend([to_global[i] for i in table.table])
        elif isinstance(table, RingHashTable):
            pr.ring_hashes.extend(table.hashes)
            pr.ring_hosts.extend([index[n] for n in table.names])
    version = xxhash.xxh64_hexdigest(msg.SerializeToString(deterministic=True))
    msg.revision = revision
    return msg, version
