"""Endpoints (EDS): each cluster's assignment, and the front health gate's."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from controlplane.intent.model import (
    AdminState,
    Backend,
)
from controlplane.xds.resources._shared import (
    _socket,
)


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
