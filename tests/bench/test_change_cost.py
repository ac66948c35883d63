"""A change costs the replica work in proportion to what changed, not to all intent.

Counted, not timed: the calls the replica's own code (controlplane/) makes in its event loop
— Python functions entered and C functions called from them — while ONE new cluster, and
then ONE backend change, travel from etcd through the intent view, the snapshot cache and
the delta streams to a few simulated Envoys. At 100 clusters and at 2,000 (plus a listener
with routes to a few of them) the counts must be about the same: a build that copied or
re-checked every cluster, rebuilt every listener and route for an unrelated cluster, hashed
every name for a type's version, or a delta stream that diffed every name it holds, makes
them grow with the intent.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from bench.fleetsim.fleet import Fleet, specs
from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind, Listener, Route
from controlplane.intent.store import Op, Store
from controlplane.xds.replica import XdsReplica
from tests.conftest import wait_for

CONTROLPLANE = str(Path(__file__).resolve().parents[2] / "controlplane")
# Nothing is left out: the snapshot's size gauges are summed at scrape time, not per publish.
EXCLUDED: tuple[str, ...] = ()
CLIENTS = 4
ROUTED = 4  # clusters the listener's routes send to


async def _seed(store: Store, start: int, stop: int) -> None:
    """Clusters c{start}..c{stop-1}, each with one backend, a few hundred per transaction."""
    for lo in range(start, stop, 250):
        ops = []
        for i in range(lo, min(stop, lo + 250)):
            ops.append(Op("put", Ref(Kind.CLUSTER, f"c{i}"), Cluster(name=f"c{i}")))
            b = Backend(name="b", address="10.0.0.1", port=20000 + i)
            ops.append(Op("put", Ref(Kind.BACKEND, "b", f"c{i}"), b))
        await store.apply(ops)


async def _routes(store: Store) -> None:
    ops = [Op("put", Ref(Kind.LISTENER, "http"), Listener(name="http", port=10000))]
    for i in range(ROUTED):
        r = Route(name=f"r{i}", listener="http", match={"prefix": f"/{i}/"}, backends=[{"cluster": f"c{i}"}])
        ops.append(Op("put", Ref(Kind.ROUTE, r.name), r))
    await store.apply(ops)


def _counter() -> tuple[collections.Counter[str], Any]:
    counts: collections.Counter[str] = collections.Counter()

    def count(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            path = frame.f_code.co_filename
            if path.startswith(CONTROLPLANE) and path not in EXCLUDED:
                where = frame.f_code.co_name if event == "call" else f"{frame.f_code.co_name}>{arg.__name__}"
                counts[f"{Path(path).name}:{where}"] += 1

    return counts, count


def _apply_elsewhere(config: EtcdConfig, ops: list[Op]) -> None:
    async def apply() -> None:
        etcd = Etcd(config)
        try:
            await Store(etcd).apply(ops)
        finally:
            await etcd.close()

    asyncio.run(apply())


async def _cost(config: EtcdConfig, replica: XdsReplica, prefix: str, port: int) -> tuple[int, int]:
    """Calls for one new cluster, then for one backend change, to reach `CLIENTS` delta clients."""
    fleet = await asyncio.to_thread(Fleet, f"127.0.0.1:{replica.port}", specs(CLIENTS, 1.0, prefix), 1)
    try:
        await asyncio.to_thread(fleet.start, 60)
        await asyncio.sleep(0.5)  # registry writes of the connects are done

        async def measure(ops: list[Op], seen_port: int) -> int:
            async def everyone_saw_it() -> bool:
                return all(t is not None for t in (await asyncio.to_thread(fleet.seen, [seen_port]))[seen_port])

            counts, count = _counter()
            sys.setprofile(count)  # this thread only: the replica's event loop
            try:
                # Written from another thread (a client of its own): what the write itself
                # costs (the store's checks) is the API's, not the replica's.
                await asyncio.to_thread(_apply_elsewhere, config, ops)
                await wait_for(everyone_saw_it, 30, f"{CLIENTS} clients saw port {seen_port}")
            finally:
                sys.setprofile(None)
            await asyncio.sleep(0.3)  # ACKs and registry writes settle before the next change
            if os.environ.get("LBCP_COST_DETAIL"):
                print(prefix, seen_port, sum(counts.values()), sorted(counts.items()))
            return sum(counts.values())

        # Each change three times, the least taken: what a change costs, without the noise
        # of how many wake-ups and registry writes its timing happened to take.
        added, changed = [], []
        for i in range(3):
            name, p = f"new-{prefix}{i}", port + 10 * i
            new_cluster = [
                Op("put", Ref(Kind.CLUSTER, name), Cluster(name=name)),
                Op("put", Ref(Kind.BACKEND, "b", name), Backend(name="b", address="10.0.0.2", port=p)),
            ]
            added.append(await measure(new_cluster, p))
            b = Backend(name=f"b{i}", address="10.0.0.3", port=p + 1)
            changed.append(await measure([Op("put", Ref(Kind.BACKEND, b.name, "c1"), b)], p + 1))
        return min(added), min(changed)
    finally:
        await asyncio.to_thread(fleet.stop)


async def test_a_change_costs_what_changed_not_all_intent(store: Store, etcd_config: EtcdConfig, make_replica) -> None:
    await _seed(store, 0, 100)
    await _routes(store)
    replica = await make_replica("cost", probe_interval=0, load_interval=0, moves_interval=0)
    small = await _cost(etcd_config, replica, "s", 41000)
    await _seed(store, 100, 2000)
    revision = await store.revision()
    assert await replica.view.wait_for_revision(revision, 20)
    await wait_for(lambda: _published(replica, revision), 20, "the 2,000 clusters published")
    large = await _cost(etcd_config, replica, "l", 42000)
    for what, a, b in (("a new cluster", small[0], large[0]), ("a backend change", small[1], large[1])):
        assert b < 1.5 * a, f"calls for {what}: {a} at 100 clusters, {b} at 2,000"


async def _published(replica: XdsReplica, revision: int) -> bool:
    return replica.cache.revision >= revision
