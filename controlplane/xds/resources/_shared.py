"""What every resource family shares: type URLs, edge limits, small proto helpers."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, config_source_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2

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


def route_config_name(listener: str) -> str:
    return listener


def _typed(name: str, msg: Message) -> xds_extension_pb2.TypedExtensionConfig:
    return xds_extension_pb2.TypedExtensionConfig(name=name, typed_config=_any(msg))


# The HTTP filters every http listener carries, in this order, before the router, disabled:
# a route turns one on with its config (typed_per_filter_config under these names), so a
# route gaining or losing a policy changes only RDS, never the listener (no drain), and a
# route without it pays nothing (Envoy creates no disabled filter for a request).
CORS_FILTER = "envoy.filters.http.cors"
FAULT_FILTER = "envoy.filters.http.fault"
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
RATE_LIMIT_STAT_PREFIX = "lbcp_route_rate_limit"
