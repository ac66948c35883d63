"""The watch-fed view converges to etcd's state: after bursts, deletes, restarts, compaction."""

from __future__ import annotations

import asyncio

from aetcd import rpc

from api.localcluster.procs import EtcdCluster
from controlplane.errors import StoreUnavailable
from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind
from controlplane.intent.store import Op, ReplaceBackends, Store
from controlplane.intent.view import IntentView


def _snapshot(view: IntentView) -> dict:
    return {
        "clusters": {n: s.obj for n, s in view.clusters.items()},
        "backends": {c: {n: s.obj for n, s in m.items()} for c, m in view.backends.items()},
        "listeners": {n: s.obj for n, s in view.listeners.items()},
        "routes": {n: s.obj for n, s in view.routes.items()},
    }


async def _truth(store: Store) -> dict:
    fresh = IntentView(store.etcd, store.keys)
    await fresh._load()
    return _snapshot(fresh)


async def test_view_converges_after_burst(store: Store) -> None:
    view = IntentView(store.etcd, store.keys)
    changes: list[set[Ref]] = []
    view.subscribe(lambda rev, changed: changes.append(changed))
    await view.start()
    await asyncio.wait_for(view.ready.wait(), 10)
    await store.put(Cluster(name="web"))
    sem = asyncio.Semaphore(50)

    async def write(i: int):
        async with sem:
            b = Backend(name=f"b{i}", address="10.0.0.1", port=1000 + i)
            return await store.apply([Op("put", Ref(Kind.BACKEND, b.name, "web"), b)])

    results = await asyncio.gather(*(write(i) for i in range(1000)))
    last = max(r.revision for r in results)
    assert await view.wait_for_revision(last, 10)
    assert len(view.backends["web"]) == 1000
    assert _snapshot(view) == await _truth(store)
    # Deletes are seen too, and reported to subscribers.
    changes.clear()
    res = await store.apply([ReplaceBackends("web", ())])
    assert await view.wait_for_revision(res.revision, 10)
    assert "web" not in view.backends
    assert sum(len(c) for c in changes) == 1000
    await view.stop()


async def test_view_survives_etcd_restart_and_compaction(private_etcd: EtcdCluster) -> None:
    cfg = EtcdConfig(endpoints=tuple(private_etcd.endpoints), timeout=2.0, connect_timeout=0.5)
    etcd = Etcd(cfg)
    writer_etcd = Etcd(cfg)
    store = Store(writer_etcd)
    view = IntentView(etcd)
    await view.start()
    await asyncio.wait_for(view.ready.wait(), 10)
    await store.put(Cluster(name="web"))
    res = await store.put(Backend(name="a", address="10.0.0.1", port=80), cluster="web")
    assert await view.wait_for_revision(res.revision, 5)

    await asyncio.to_thread(private_etcd.stop)
    await asyncio.sleep(0.5)
    assert view.clusters["web"].obj.name == "web"  # last state kept while etcd is down
    await asyncio.to_thread(private_etcd.start)

    # Changes made while the view was disconnected, then compacted away, force a reload.
    # Each write retries while etcd comes back (only "unavailable" is expected), and must
    # land within 50 tries: a write that never lands fails here rather than testing nothing.
    for i in range(20):
        for _ in range(50):
            try:
                res = await store.put(Backend(name=f"n{i}", address="10.0.0.2", port=80 + i), cluster="web")
                break
            except StoreUnavailable:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"etcd never took the write of n{i} after its restart")
    res = await store.delete(Ref(Kind.BACKEND, "a", "web"))
    assert await view.wait_for_revision(res.revision, 15)
    assert set(view.backends["web"]) == {f"n{i}" for i in range(20)}
    assert _snapshot(view) == await _truth(store)

    await view.stop()
    await writer_etcd.put(b"/unrelated", b"x")
    more = await store.put(Backend(name="late", address="10.0.0.3", port=80), cluster="web")
    await store.delete(Ref(Kind.BACKEND, "n0", "web"))
    head = await store.revision()
    await writer_etcd._call(
        lambda ch, md: rpc.KVStub(ch).Compact(rpc.CompactionRequest(revision=head), metadata=md), idempotent=False
    )
    loads = view.loads
    await view.start()  # resumes from its old revision, which is compacted: reload in full
    assert await view.wait_for_revision(head, 10)
    assert view.loads == loads + 1
    assert "late" in view.backends["web"] and "n0" not in view.backends["web"]
    assert more.revision <= view.revision
    assert _snapshot(view) == await _truth(store)
    await view.stop()
    await etcd.close()
    await writer_etcd.close()
