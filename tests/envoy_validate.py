"""Translation checked by a real Envoy offline: `envoy --mode validate` of a static bootstrap
holding what lbcp would serve (EDS and RDS inlined), with the node and ADS source lbcp's own
bootstraps have, because listeners find their admission filter over ADS (ECDS). Validation
opens no connection."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from api.localcluster.procs import envoy_binary, free_port

_HCM = "envoy.filters.network.http_connection_manager"
_ADS = {
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


def inline_routes(listener: listener_pb2.Listener, routes: route_pb2.RouteConfiguration) -> None:
    """Put `routes` into every HTTP connection manager of `listener`, in place of RDS."""
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.name == _HCM:
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                hcm.ClearField("rds")
                hcm.route_config.CopyFrom(routes)
                f.typed_config.Pack(hcm)


def bootstrap(clusters: list[dict[str, Any]], listeners: list[dict[str, Any]], fleet: str = "validate") -> dict:
    """A static bootstrap of these clusters and listeners (JSON dicts, as Envoy's config dump
    writes them), with lbcp's node and ADS source."""
    return {
        "node": {"id": "validate", "cluster": fleet},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "lbcp_xds"}}],
            }
        },
        "static_resources": {"clusters": [*clusters, _ADS], "listeners": listeners},
    }


def validate(config: dict, where: Path, log_level: str = "error") -> subprocess.CompletedProcess[str]:
    """Run `envoy --mode validate` on `config` (written under `where`)."""
    path = where / f"envoy-{free_port()}.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", log_level],
        capture_output=True,
        text=True,
        timeout=60,
    )
