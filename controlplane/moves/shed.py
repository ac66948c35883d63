"""Asking one Envoy to let go of shards of its connections.

Every traffic listener splits its connections over `SHARDS` filter chains (xds/resources/listeners.py,
"shards"). A shed record in etcd (`sheds/{node}`: a generation per shard) is turned by every
replica into that Envoy's own listener variant, in which the shards whose generation moved
are marked: Envoy drains exactly those filter chains (HTTP/1.1 `Connection: close`, HTTP/2
GOAWAY on the next response; every connection of the shard closed within its drain time).
Bumping a shard again sheds the connections that arrived on it since.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from aetcd import rpc

from controlplane.etcd import Etcd
from controlplane.intent.keyspace import Keyspace
from controlplane.xds.resources import SHARDS

_ATTEMPTS = 20


async def shed(etcd: Etcd, node_id: str, shards: Iterable[int], reason: str = "") -> tuple[int, ...]:
    """Bump the generation of `shards` of `node_id` (read-modify-write, retried on a
    concurrent change); returns the generations now stored."""
    wanted = sorted(set(shards))
    if any(not 0 <= s < SHARDS for s in wanted):
        raise ValueError(f"shards are 0..{SHARDS - 1}, not {wanted}")
    key = Keyspace(etcd.config.prefix).shed_key(node_id)
    for _ in range(_ATTEMPTS):
        got = await etcd.range(key)
        if got.kvs:
            kv = got.kvs[0]
            gens = list(json.loads(kv.value).get("generations", []))[:SHARDS]
            same = rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=kv.mod_revision)
        else:
            gens = []
            same = rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)
        gens += [0] * (SHARDS - len(gens))
        for s in wanted:
            gens[s] += 1
        record = {"generations": gens, "reason": reason, "at": time.time()}
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=json.dumps(record).encode()))
        if (await etcd.txn(rpc.TxnRequest(compare=[same], success=[put]))).succeeded:
            return tuple(gens)
    raise RuntimeError(f"the shed record of {node_id!r} kept changing under {_ATTEMPTS} attempts")


async def forget(etcd: Etcd, node_id: str) -> None:
    """Remove a node's shed record (its Envoy is gone; a new one starts unmarked)."""
    await etcd.delete(Keyspace(etcd.config.prefix).shed_key(node_id))
