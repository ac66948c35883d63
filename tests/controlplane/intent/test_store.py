"""The store against a real etcd: atomic writes, preconditions, referential integrity."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.intent.errors import AlreadyExists, InUse, NotFound, PreconditionFailed, ValidationFailed
from controlplane.intent.integrity import PortConflict
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind, Listener, Route
from controlplane.intent.store import Op, ReplaceBackends, Store


def cluster(name: str = "web", lb: str = "maglev") -> Cluster:
    return Cluster.model_validate({"name": name, "load_balancer": {"type": lb}})


def backend(name: str, port: int = 8080, weight: int = 1) -> Backend:
    return Backend(name=name, address="127.0.0.1", port=port, weight=weight)


async def _all_keys(store: Store) -> list[bytes]:
    """Every intent key (the reference index aside)."""
    from controlplane.etcd import prefix_end

    resp = await store.etcd.range(store.keys.root, prefix_end(store.keys.root), keys_only=True)
    return [kv.key for kv in resp.kvs if not kv.key.startswith(store.index.root)]


async def _count(store: Store) -> int:
    return len(await _all_keys(store))


async def test_put_get_delete_cluster(store: Store) -> None:
    res = await store.put(cluster())
    got = await store.get(Ref(Kind.CLUSTER, "web"))
    assert got.obj == cluster()
    assert got.mod_revision == res.revision == res.results[0].mod_revision
    assert res.results[0].outcome == "created"
    again = await store.put(cluster())
    assert again.results[0].outcome == "unchanged"
    assert (await store.get(Ref(Kind.CLUSTER, "web"))).mod_revision == res.revision  # no rewrite
    await store.delete(Ref(Kind.CLUSTER, "web"))
    with pytest.raises(NotFound) as e:
        await store.get(Ref(Kind.CLUSTER, "web"))
    assert e.value.code == "cluster-not-found"


async def test_if_match_and_create_only(store: Store) -> None:
    first = await store.put(cluster())
    with pytest.raises(PreconditionFailed) as e:
        await store.put(cluster(lb="ring_hash"), if_match=first.revision - 1)
    assert e.value.current_revision == first.revision
    with pytest.raises(AlreadyExists):
        await store.apply([Op("create", Ref(Kind.CLUSTER, "web"), cluster())])
    second = await store.put(cluster(lb="ring_hash"), if_match=first.revision)
    assert second.revision > first.revision


async def test_two_writers_one_wins(store: Store) -> None:
    base = await store.put(cluster())
    results = await asyncio.gather(
        store.put(cluster(lb="ring_hash"), if_match=base.revision),
        store.put(cluster(lb="random"), if_match=base.revision),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["PreconditionFailed", "WriteResult"]


async def test_backend_needs_cluster(store: Store) -> None:
    with pytest.raises(NotFound) as e:
        await store.put(backend("a"), cluster="nope")
    assert e.value.code == "cluster-not-found"
    assert await _all_keys(store) == []


async def test_route_references(store: Store) -> None:
    await store.put(cluster("web", "round_robin"))
    await store.put(Listener(name="http", port=10000))
    bad = Route.model_validate({"name": "r", "listener": "http", "backends": [{"cluster": "missing"}]})
    with pytest.raises(ValidationFailed) as e:
        await store.put(bad)
    assert e.value.errors[0].pointer == "/backends/0/cluster"
    hashed = Route.model_validate(
        {"name": "r", "listener": "http", "backends": [{"cluster": "web"}], "hash_policies": [{"type": "source_ip"}]}
    )
    with pytest.raises(ValidationFailed) as e:
        await store.put(hashed)
    assert "maglev or ring_hash" in e.value.errors[0].detail
    await store.put(cluster("web", "maglev"))
    await store.put(hashed)
    # Now the cluster cannot go back to round robin, nor be deleted, while the route uses it.
    with pytest.raises(InUse) as e:
        await store.put(cluster("web", "round_robin"))
    assert e.value.code == "cluster-in-use"
    with pytest.raises(InUse):
        await store.delete(Ref(Kind.CLUSTER, "web"))
    with pytest.raises(InUse) as e:
        await store.delete(Ref(Kind.LISTENER, "http"))
    assert e.value.code == "listener-in-use"


async def test_batch_is_atomic(store: Store) -> None:
    ops = [
        Op("put", Ref(Kind.CLUSTER, "web"), cluster()),
        Op("put", Ref(Kind.BACKEND, "a", "web"), backend("a")),
        Op("put", Ref(Kind.BACKEND, "b", "nope"), backend("b")),  # fails
    ]
    with pytest.raises(NotFound):
        await store.apply(ops)
    assert await _all_keys(store) == []
    res = await store.apply(ops[:2])
    assert [r.outcome for r in res.results] == ["created", "created"]
    assert len(await _all_keys(store)) == 2


async def test_delete_cluster_cascades_backends(store: Store) -> None:
    await store.put(cluster())
    await store.apply([ReplaceBackends("web", tuple(backend(f"b{i}") for i in range(5)))])
    assert len(await _all_keys(store)) == 6
    await store.delete(Ref(Kind.CLUSTER, "web"))
    assert await _all_keys(store) == []


async def test_replace_backends_reports_diff(store: Store) -> None:
    await store.put(cluster())
    await store.apply([ReplaceBackends("web", (backend("a"), backend("b"), backend("c")))])
    res = await store.apply([ReplaceBackends("web", (backend("a"), backend("b", weight=5), backend("d")))])
    r = res.results[0]
    assert (r.added, r.removed, r.updated) == (["d"], ["c"], ["b"])
    page = await store.list(Kind.BACKEND, cluster="web")
    assert [s.obj.name for s in page.items] == ["a", "b", "d"]


async def test_dry_run_writes_nothing(store: Store) -> None:
    res = await store.apply([Op("put", Ref(Kind.CLUSTER, "web"), cluster())], dry_run=True)
    assert res.dry_run and res.results[0].outcome == "created"
    assert await _all_keys(store) == []


async def test_port_conflict(store: Store) -> None:
    await store.put(Listener(name="a", port=10000))
    with pytest.raises(PortConflict):
        await store.put(Listener(name="b", address="127.0.0.1", port=10000))
    await store.put(Listener(name="c", port=10001))
    # Disjoint fleets may share a port: no Envoy gets both.
    await store.put(Listener(name="d", port=10002, fleets=["edge"]))
    await store.put(Listener(name="e", port=10002, fleets=["internal"]))
    with pytest.raises(PortConflict):
        await store.put(Listener(name="f", port=10002))


async def test_pagination_is_consistent(store: Store) -> None:
    for i in range(7):
        await store.put(cluster(f"c{i}"))
    page = await store.list(Kind.CLUSTER, limit=3)
    names = [s.obj.name for s in page.items]
    await store.put(cluster("c00"))  # written after the first page: not in this listing
    while page.next_page_token:
        page = await store.list(Kind.CLUSTER, limit=3, page_token=page.next_page_token)
        names += [s.obj.name for s in page.items]
    assert names == [f"c{i}" for i in range(7)]
