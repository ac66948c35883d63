"""lbcp.v1.HashRing: the consistent-hash ring every Envoy builds, computed centrally."""

from __future__ import annotations

from collections.abc import Iterable

import xxhash

from controlplane.gen.lbcp.v1 import ring_pb2
from controlplane.intent.model import (
    AdminState,
    Backend,
    Cluster,
    Maglev,
    RingHash,
)
from controlplane.ring.tables import MaglevTable, RingHashTable, ring_for


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
