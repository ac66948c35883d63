"""Listeners (LDS): HTTP and TCP chains, TLS by SNI, shards, per-Envoy variants, access logs
and tracing.

Access logs and tracing are the listener's own fields, so they live in the listener (its HTTP
connection manager or tcp_proxy): changing one updates the listener, and Envoy drains the
connections of its old filter chains, like any listener change. A route change never touches
them (routes reach Envoy over RDS)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import domain_pb2 as xds_domain_pb2
from xds.type.matcher.v3 import matcher_pb2 as xds_matcher_pb2

from controlplane.intent.model import (
    AccessLog,
    Listener,
    Tracing,
)
from controlplane.xds.resources._shared import (
    _RATELIMIT_TYPE,
    ADMISSION,
    CORS_FILTER,
    EDGE_BUFFER_LIMIT,
    EDGE_H2_CONNECTION_WINDOW,
    EDGE_H2_MAX_STREAMS,
    EDGE_H2_STREAM_WINDOW,
    EDGE_IDLE_TIMEOUT,
    EDGE_REQUEST_HEADERS_TIMEOUT,
    EDGE_STREAM_IDLE_TIMEOUT,
    FAULT_FILTER,
    RATE_LIMIT_FILTER,
    RATE_LIMIT_STAT_PREFIX,
    _ads,
    _any,
    _dur,
    _socket,
    _typed,
    route_config_name,
)
from controlplane.xds.resources.runtime import _admission_filter

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
        if lst.access_log is not None:
            tcp.access_log.append(access_log(lst.access_log))
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
        hcm.http_filters.extend(_http_filters())
        if lst.access_log is not None:
            hcm.access_log.append(access_log(lst.access_log))
        if lst.tracing is not None:
            hcm.tracing.CopyFrom(tracing(lst.name, lst.tracing))
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


# -- access logs and tracing ------------------------------------------------------------------

ACCESS_LOGGER = "envoy.access_loggers.file"
TRACER = "envoy.tracers.opentelemetry"
# The Google gRPC client's stats prefix for a collector given by address.
TRACING_STAT_PREFIX = "lbcp_otlp"


def access_log(log: AccessLog) -> accesslog_pb2.AccessLog:
    """Envoy's file access logger at `log.path`: one line per request (HCM) or connection
    (tcp_proxy). `text` is Envoy's default line (its default format: start time, method,
    path, protocol, status, flags, bytes, duration, upstream host...); `json` is one JSON
    object per line of `fields` (name -> command operator; a value that is exactly one
    operator keeps its type, so %RESPONSE_CODE% is a number). Envoy buffers the file and
    writes it out every 10 s (its --file-flush-interval-msec), at 64 KiB, or on the admin's
    POST /reopen_logs (also the way to follow a rotated file)."""
    out = file_pb2.FileAccessLog(path=log.path)
    if log.format == "json":
        for name, value in log.fields.items():
            out.log_format.json_format.fields[name].string_value = value
    return accesslog_pb2.AccessLog(name=ACCESS_LOGGER, typed_config=_any_deterministic(out))


def _any_deterministic(msg: Message) -> any_pb2.Any:
    """`msg` packed with its maps in key order. Any.Pack serialises a map (here the json
    fields, a Struct) in the order of its hash table, which varies with insertion order and
    between processes: the same intent must give the same bytes (the listener's version)."""
    return any_pb2.Any(
        type_url=f"type.googleapis.com/{msg.DESCRIPTOR.full_name}", value=msg.SerializeToString(deterministic=True)
    )


def _collector_target(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def tracing(listener: str, t: Tracing) -> hcm_pb2.HttpConnectionManager.Tracing:
    """OpenTelemetry spans (envoy.tracers.opentelemetry) for `sampling_percent` of requests,
    exported over OTLP/gRPC with resource `service.name`. A `cluster` is reached through
    Envoy's own gRPC client (envoy_grpc: the cluster's load balancing, health checks, TLS);
    a `collector` address through the Google gRPC client's `target_uri` (this Envoy build
    links it), so no cluster is added for it. Exports are asynchronous and best effort: a
    missing collector costs spans, never requests."""
    grpc = grpc_service_pb2.GrpcService()
    if t.cluster is not None:
        grpc.envoy_grpc.cluster_name = t.cluster
    else:
        assert t.collector is not None
        grpc.google_grpc.target_uri = _collector_target(t.collector.address, t.collector.port)
        grpc.google_grpc.stat_prefix = TRACING_STAT_PREFIX
    config = opentelemetry_pb2.OpenTelemetryConfig(grpc_service=grpc, service_name=t.service_name)
    return hcm_pb2.HttpConnectionManager.Tracing(
        random_sampling=percent_pb2.Percent(value=t.sampling_percent),
        provider=http_tracer_pb2.Tracing.Http(name=TRACER, typed_config=_any(config)),
    )


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


def _http_filters() -> list[hcm_pb2.HttpFilter]:
    """CORS, fault and local rate limit, disabled until a route turns one on (routes.enabled),
    then the router. A disabled filter is not created for a request: idle, it costs nothing."""
    return [
        hcm_pb2.HttpFilter(name=CORS_FILTER, typed_config=_any(cors_pb2.Cors()), disabled=True),
        hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=_any(fault_pb2.HTTPFault()), disabled=True),
        hcm_pb2.HttpFilter(
            name=RATE_LIMIT_FILTER,
            typed_config=_any(local_rate_limit_pb2.LocalRateLimit(stat_prefix=RATE_LIMIT_STAT_PREFIX)),
            disabled=True,
        ),
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())),
    ]
