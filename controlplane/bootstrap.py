"""Envoy bootstrap for an lbcp fleet: ADS (delta by default) to an HA cluster of xDS replicas.

`render(...)` returns the bootstrap as a dict (write it as YAML or JSON); `lbcp bootstrap`
renders one per Envoy instance. deploy/envoy/bootstrap.yaml is a rendered example.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class XdsEndpoint:
    host: str
    port: int


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
) -> dict:
    locality = {k: v for k, v in (("region", region), ("zone", zone)) if v}
    return {
        "node": {"id": node_id, "cluster": fleet, **({"locality": locality} if locality else {})},
        "admin": {"address": {"socket_address": {"address": admin_address, "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "lbcp_xds", "retry_policy": {
                    "retry_back_off": {"base_interval": "0.25s", "max_interval": "5s"}, "num_retries": 100000}}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
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
                    # A replica that refuses connections is skipped at once on reconnect.
                    "outlier_detection": {"consecutive_local_origin_failure": 1, "split_external_local_origin_errors": True,
                                          "base_ejection_time": "5s", "max_ejection_percent": 100},
                    "load_assignment": {
                        "cluster_name": "lbcp_xds",
                        "endpoints": [{"lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}}} for e in xds
                        ]}],
                    },
                }
            ]
        },
    }


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
