"""Envoy bootstrap for an lbcp fleet: ADS (delta by default) to an HA cluster of xDS replicas.

`render(...)` returns the bootstrap as a dict (write it as YAML or JSON); `lbcp bootstrap`
renders one per Envoy instance. deploy/envoy/bootstrap.yaml is a rendered example.

What a production edge Envoy needs beyond xDS, after Envoy's "configuring Envoy as an edge
proxy" guide (the per-listener edge settings live in the LDS translation, xds/resources/listeners.py):
- the overload manager: a global downstream connection limit (the process never accepts
  more connections than it can carry; Envoy warns when there is none) and a fixed-heap
  monitor that shrinks the heap at 95 %, stops keep-alive at 95 % and stops accepting
  requests at 98 %;
- admin on 127.0.0.1 only;
- a static operations listener (`ops_port`, default 8081) with two paths and nothing else:
  `GET /healthz` for the front tier (DNS health checks, the anycast announcer, the L4
  balancer) answers 200, and 503 once the Envoy fails its health check (`POST
  /healthcheck/fail` on the admin port: the first step of a drain), so the front tier stops
  sending new clients before listeners drain; `GET /stats/prometheus` is proxied to the
  loopback-only admin, so Prometheus can scrape without the admin being exposed.
  `/healthz` also fails while the node is drained through the API (`POST
  /v1/fleet/{node}/drain`): the health check requires 100 % of the static EDS cluster
  `lbcp_gate` healthy, and the replica serves that node's gate assignment UNHEALTHY while it
  is drained (resources.gate_assignment). Until the gate's first assignment arrives the
  cluster is empty and `/healthz` fails too: an Envoy is not put in front of clients before
  it has heard from the control plane.
- a stats flush every 60 s (`stats_flush_interval`; Envoy's default is 5 s). With no stats
  sinks the flush still runs, on the main thread — the thread that applies xDS: it merges
  every histogram (a round trip through every worker), refreshes the server.* gauges
  (uptime, memory, connections, cert expiry) and latches every counter into a snapshot for
  the sinks (source/server/server.cc: InstanceBase::flushStats -> ThreadLocalStoreImpl::
  mergeHistograms -> flushStatsInternal -> updateServerStats, MetricSnapshotImpl). Its cost
  grows with the stats: with 10,000 clusters (~1M stats) it stalls the main thread
  230-300 ms, and an xDS update that lands then waits. With two such Envoys a change waits
  on one of them 1.7 % of the time at 30 s, so the p99 stays the stall (measured); at 60 s
  it is 0.8 % (docs/benchmarks.md, "Intent at scale"). Nothing lbcp reads waits for the
  flush: counters and gauges (the load route's, /clusters, the alert rules' and the
  dashboard's) are read live, and a stat's "used" flag (`usedonly`) is set when it is
  incremented or set. What the interval delays: histogram quantiles and buckets in /stats
  and /stats/prometheus and the server.* gauges, refreshed once a minute (over Envoy
  histograms, use rate() windows of 2 min or more). Never `stats_flush_on_admin`: it
  flushes on every /stats request, the load route's included.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from controlplane.xds.resources import GATE_CLUSTER, RUNTIME_LAYER, gate_name

# `GET /lbcp/load` on the ops listener: the admin's stats that make an Envoy's live load, and
# nothing else (controlplane.xds.load reads it once per sample interval, on a kept-alive
# connection). The regex is fixed here, so the ops listener exposes no general stats query.
LOAD_PATH = "/lbcp/load"
# `GET /lbcp/server_info`: the admin's /server_info (read-only), for the Envoy's drain time and
# strategy, which the mover paces by (controlplane.moves).
SERVER_INFO_PATH = "/lbcp/server_info"
# `GET /lbcp/hosts`: the admin's /clusters as JSON for intent's clusters only (their names have
# no `_`; lbcp's own lbcp_* clusters are left out): each upstream host's health as this Envoy
# sees it (active checks, outlier ejection, EDS status), for per-backend health.
HOSTS_PATH = "/lbcp/hosts"
HOSTS_FILTER = r"^[a-z0-9-]+$"
LOAD_STATS = (
    r"^(listener\..+\.(downstream_cx_active|downstream_cx_total|ssl\.handshake)"
    r"|http\..+\.downstream_cx_http2_active|http2\.streams_active|overload\..+\.active"
    r"|cluster\..+\.membership_(healthy|total))$"
)


# Seconds between Envoy's stats flushes (Envoy's default: 5; module docstring), in whole
# milliseconds from 0.001 to 299.999 (Envoy takes [1ms, 5m)).
STATS_FLUSH_INTERVAL = 60.0
STATS_FLUSH_INTERVAL_RANGE = (0.001, 299.999)


@dataclass(frozen=True)
class XdsEndpoint:
    host: str
    port: int


@dataclass(frozen=True)
class XdsTLS:
    """Mutual TLS to the xDS replicas: this Envoy's client certificate and key, and the CA
    that signed the replicas' certificate (files on the Envoy's host)."""

    cert_file: str
    key_file: str
    ca_file: str
    sni: str = ""


def render(
    node_id: str,
    fleet: str,
    xds: list[XdsEndpoint],
    *,
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    zone: str = "",
    region: str = "",
    delta: bool = True,
    max_connections: int = 100_000,
    max_heap_bytes: int = 2 * 1024**3,
    ops_address: str = "0.0.0.0",
    ops_port: int | None = 8081,
    xds_tls: XdsTLS | None = None,
    public_address: str = "",
    stats_flush_interval: float = STATS_FLUSH_INTERVAL,
) -> dict[str, Any]:
    locality = {k: v for k, v in (("region", region), ("zone", zone)) if v}
    # The address clients reach this Envoy at: the front-tier renders (DNS, iptables) use it.
    metadata: dict[str, Any] = {"public_address": public_address} if public_address else {}
    if ops_port is not None:
        # Where the replica probes /healthz (at the stream's peer address), for the front tier.
        metadata["ops_port"] = ops_port
    listeners = [_ops_listener(ops_address, ops_port)] if ops_port is not None else []
    clusters = [_admin_cluster(admin_address, admin_port), _gate_cluster(node_id)] if ops_port is not None else []
    return {
        "node": {
            "id": node_id,
            "cluster": fleet,
            **({"locality": locality} if locality else {}),
            **({"metadata": metadata} if metadata else {}),
        },
        "admin": {"address": {"socket_address": {"address": admin_address, "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": "lbcp_xds",
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.25s", "max_interval": "5s"},
                                "num_retries": 100000,
                            },
                        }
                    }
                ],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "overload_manager": _overload_manager(max_connections, max_heap_bytes),
        # The periodic stats flush runs on the main thread and its cost grows with the stats
        # (module docstring); lbcp reads nothing that waits for it.
        "stats_flush_interval": _duration(stats_flush_interval),
        # The fleet's capacity limits arrive as a runtime layer over ADS (RTDS), so changing them
        # never touches a listener (xds/resources.runtime_resource). The admin layer stays last.
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {}},
                {
                    "name": RUNTIME_LAYER,
                    "rtds_layer": {
                        "name": RUNTIME_LAYER,
                        "rtds_config": {"ads": {}, "resource_api_version": "V3"},
                    },
                },
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                {
                    "name": "lbcp_xds",
                    "type": "STRICT_DNS" if any(not _is_ip(e.host) for e in xds) else "STATIC",
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": {"interval": "15s", "timeout": "5s"},
                                }
                            },
                        }
                    },
                    **({"transport_socket": _xds_transport_socket(xds_tls)} if xds_tls else {}),
                    # A replica that refuses connections is skipped at once on reconnect.
                    "outlier_detection": {
                        "consecutive_local_origin_failure": 1,
                        "split_external_local_origin_errors": True,
                        "base_ejection_time": "5s",
                        "max_ejection_percent": 100,
                    },
                    "load_assignment": {
                        "cluster_name": "lbcp_xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": e.host, "port_value": e.port}}
                                        }
                                    }
                                    for e in xds
                                ]
                            }
                        ],
                    },
                },
                *clusters,
            ],
        },
    }


_HEAP = "envoy.resource_monitors.fixed_heap"
_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"


def _overload_manager(max_connections: int, max_heap_bytes: int) -> dict[str, Any]:
    def on_heap(action: str, threshold: float) -> dict[str, Any]:
        return {"name": action, "triggers": [{"name": _HEAP, "threshold": {"value": threshold}}]}

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": _HEAP,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": max_heap_bytes,
                },
            },
            {
                "name": _CONNECTIONS,
                "typed_config": {
                    "@type": (
                        "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections."
                        "v3.DownstreamConnectionsConfig"
                    ),
                    "max_active_downstream_connections": max_connections,
                },
            },
        ],
        "actions": [
            on_heap("envoy.overload_actions.shrink_heap", 0.95),
            on_heap("envoy.overload_actions.disable_http_keepalive", 0.95),
            on_heap("envoy.overload_actions.stop_accepting_requests", 0.98),
        ],
    }


def _xds_transport_socket(tls: XdsTLS) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [
                {"certificate_chain": {"filename": tls.cert_file}, "private_key": {"filename": tls.key_file}}
            ],
            "validation_context": {"trusted_ca": {"filename": tls.ca_file}},
        },
    }
    if tls.sni:
        ctx["sni"] = tls.sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def _admin_cluster(address: str, port: int) -> dict[str, Any]:
    return {
        "name": "lbcp_admin",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "lbcp_admin",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}
                    ]
                }
            ],
        },
    }


def _gate_cluster(node_id: str) -> dict[str, Any]:
    return {
        "name": GATE_CLUSTER,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {
            "service_name": gate_name(node_id),
            "eds_config": {"ads": {}, "resource_api_version": "V3"},
        },
    }


def _admin_get(path: str, timeout: str, rewrite: str | None = None) -> dict[str, Any]:
    """An ops-listener route: GET `path` only, to the admin (at `rewrite` when given)."""
    route: dict[str, Any] = {"cluster": "lbcp_admin", "timeout": timeout}
    if rewrite is not None:
        route["prefix_rewrite"] = rewrite
    return {"match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]}, "route": route}


def _ops_listener(address: str, port: int) -> dict[str, Any]:
    hcm = {
        "@type": (
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        ),
        "stat_prefix": "lbcp_ops",
        "route_config": {
            "name": "lbcp_ops",
            "virtual_hosts": [
                {
                    "name": "ops",
                    "domains": ["*"],
                    "routes": [
                        # Only read-only admin pages, each at a fixed path, never a mutating endpoint.
                        _admin_get("/stats/prometheus", "10s"),
                        _admin_get(
                            LOAD_PATH,
                            "5s",
                            "/stats?format=json&usedonly&filter=" + urllib.parse.quote(LOAD_STATS, safe=""),
                        ),
                        _admin_get(
                            HOSTS_PATH,
                            "5s",
                            "/clusters?format=json&filter=" + urllib.parse.quote(HOSTS_FILTER, safe=""),
                        ),
                        # The Envoy's own delays (its drain time and strategy), read once per stream.
                        _admin_get(SERVER_INFO_PATH, "5s", "/server_info"),
                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                    # Answered by Envoy itself: 200, or 503 once the server fails health checks.
                    "pass_through_mode": False,
                    # 503 while the node is drained (its gate is unhealthy) or not yet configured.
                    "cluster_min_healthy_percentages": {GATE_CLUSTER: {"value": 100}},
                    "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "name": "lbcp_ops",
        "address": {"socket_address": {"address": address, "port_value": port}},
        # Probes and scrapes are not clients: they must not count against the connection limit.
        "ignore_global_conn_limit": True,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _duration(seconds: float) -> str:
    """`stats_flush_interval` as a protobuf Duration (`60s`, `0.5s`), in whole ms within Envoy's bounds."""
    low, high = STATS_FLUSH_INTERVAL_RANGE
    ms = round(seconds * 1000)
    if not low * 1000 <= ms <= high * 1000:
        raise ValueError(f"stats_flush_interval must be {low:g} to {high:g} seconds, not {seconds:g}")
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
