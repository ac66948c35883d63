"""Translate intent into Envoy v3 resources (xds-protos). Pure functions, no I/O.

One module per resource family, the way go-control-plane keeps one file per resource kind:
`clusters`, `endpoints` (and the front health gate), `listeners` (and shards), `routes`,
`secrets`, `runtime` (RTDS and the admission ECDS filter), `rings` (lbcp.v1.HashRing);
what they share (type URLs, edge limits, proto helpers) is in `_shared`.

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

from controlplane.xds.resources._shared import (
    ADMISSION,
    CLUSTER_TYPE,
    DEFAULT_CIRCUIT_LIMIT,
    EDGE_BUFFER_LIMIT,
    EDGE_H2_CONNECTION_WINDOW,
    EDGE_H2_MAX_STREAMS,
    EDGE_H2_STREAM_WINDOW,
    EDGE_IDLE_TIMEOUT,
    EDGE_REQUEST_HEADERS_TIMEOUT,
    EDGE_STREAM_IDLE_TIMEOUT,
    ENDPOINT_TYPE,
    EXTENSION_TYPE,
    HASH_RING_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    RUNTIME_LAYER,
    RUNTIME_TYPE,
    SECRET_TYPE,
    SHORT_NAMES,
    TYPE_ORDER,
    route_config_name,
)
from controlplane.xds.resources.clusters import cluster_resource, uses_dns
from controlplane.xds.resources.endpoints import GATE_CLUSTER, GATE_PREFIX, gate_assignment, gate_name, load_assignment
from controlplane.xds.resources.listeners import (
    SHARD_METADATA,
    SHARDS,
    ListenerBase,
    listener_base,
    listener_resource,
    shard_chain_name,
    shed_listener,
)
from controlplane.xds.resources.rings import hash_ring, hashes
from controlplane.xds.resources.routes import route_configuration, route_entry
from controlplane.xds.resources.runtime import admission_resource, runtime_resource
from controlplane.xds.resources.secrets import secret_resource

__all__ = [
    "ADMISSION",
    "CLUSTER_TYPE",
    "DEFAULT_CIRCUIT_LIMIT",
    "EDGE_BUFFER_LIMIT",
    "EDGE_H2_CONNECTION_WINDOW",
    "EDGE_H2_MAX_STREAMS",
    "EDGE_H2_STREAM_WINDOW",
    "EDGE_IDLE_TIMEOUT",
    "EDGE_REQUEST_HEADERS_TIMEOUT",
    "EDGE_STREAM_IDLE_TIMEOUT",
    "ENDPOINT_TYPE",
    "EXTENSION_TYPE",
    "GATE_CLUSTER",
    "GATE_PREFIX",
    "HASH_RING_TYPE",
    "LISTENER_TYPE",
    "ListenerBase",
    "ROUTE_TYPE",
    "RUNTIME_LAYER",
    "RUNTIME_TYPE",
    "SECRET_TYPE",
    "SHARDS",
    "SHARD_METADATA",
    "SHORT_NAMES",
    "TYPE_ORDER",
    "admission_resource",
    "cluster_resource",
    "gate_assignment",
    "gate_name",
    "hash_ring",
    "hashes",
    "listener_base",
    "listener_resource",
    "load_assignment",
    "route_config_name",
    "route_configuration",
    "route_entry",
    "runtime_resource",
    "secret_resource",
    "shard_chain_name",
    "shed_listener",
    "uses_dns",
]
