"""Group commit against a real etcd: writes that arrive together share a read and a
transaction, and each keeps its own preconditions and its own answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controlplane.etcd import prefix_end
from controlplane.intent.errors import NotFound, PreconditionFailed
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind
from controlplane.intent.store import Store


def backend(name: str, port: int = 8080) -> Backend:
    return Backend(name=name, address="127.0.0.1", port=port)


async def test_concurrent_independent_writes_share_transactions(store: Store) -> None:
    await store.put(Cluster(name="w"))
    rounds = store._commits.rounds
    results = await asyncio.gather(*(store.put(backend(f"b{i:02d}", 9000 + i), cluster="w") for i in range(32)))
    # Every write is in etcd, at the revision it was answered with...
    for i, res in enumerate(results):
        got = await store.get(Ref(Kind.BACKEND, f"b{i:02d}", "w"))
        assert got.obj.port == 9000 + i and got.mod_revision == res.revision == res.results[0].mod_revision
    # ...and they took far fewer etcd transactions (one revision each) than writes.
    revisions = {r.revision for r in results}
    assert len(revisions) == store._commits.rounds - rounds < 32 / 4, revisions


async def test_a_failed_precondition_fails_only_its_own_write(store: Store) -> None:
    await store.put(Cluster(name="w"))
    stale = (await store.put(backend("a"), cluster="w")).revision
    await store.put(backend("a", 8081), cluster="w")
    outcomes = await asyncio.gather(
        store.put(backend("a", 8082), cluster="w", if_match=stale),
        store.put(backend("b"), cluster="w"),
        store.put(backend("c"), cluster="nope"),
        store.put(backend("d"), cluster="w"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], PreconditionFailed)
    assert isinstance(outcomes[2], NotFound)
    b, d = outcomes[1], outcomes[3]
    assert not isinstance(b, BaseException) and not isinstance(d, BaseException)
    assert b.revision == d.revision  # committed together
    assert (await store.get(Ref(Kind.BACKEND, "a", "w"))).obj.port == 8081


async def test_a_write_that_loses_its_compare_in_the_transaction_is_retried_alone(store: Store, etcd) -> None:
    """Between the round's read and its transaction another writer (a second store, as a
    second API process would be) changes what one write relied on: that write's nested
    compare fails, it is planned again on fresh facts (its If-Match now fails), and the
    write sharing its transaction commits."""
    await store.put(Cluster(name="w"))
    seen = (await store.put(backend("a"), cluster="w")).revision
    other = Store(etcd)
    real_txn = store._commits._txn
    calls: list[Any] = []

    async def txn_with_a_writer_in_between(req: Any) -> Any:
        if not calls:
            calls.append(await other.put(backend("a", 8090), cluster="w"))
        return await real_txn(req)

    store._commits._txn = txn_with_a_writer_in_between
    a, b = await asyncio.gather(
        store.put(backend("a", 8081), cluster="w", if_match=seen),
        store.put(backend("b"), cluster="w"),
        return_exceptions=True,
    )
    assert isinstance(a, PreconditionFailed), a
    assert not isinstance(b, BaseException) and b.revision > calls[0].revision
    assert (await store.get(Ref(Kind.BACKEND, "a", "w"))).obj.port == 8090


async def test_overlapping_writes_wait_for_the_next_round(store: Store) -> None:
    # The same key from many writers: each commits in turn (etcd refuses a key twice in
    # one transaction), the last one wins.
    await store.put(Cluster(name="w"))
    results = await asyncio.gather(*(store.put(backend("same", 9000 + i), cluster="w") for i in range(8)))
    assert len({r.revision for r in results}) == 8
    assert (await store.get(Ref(Kind.BACKEND, "same", "w"))).obj.port == 9000 + 7
    # A cluster's delete and a backend added to it, together, many times: never a backend
    # left without its cluster (the backend's compare on the cluster must see the delete).
    for i in range(20):
        await store.put(Cluster(name=f"x{i}"))
        deleted, added = await asyncio.gather(
            store.delete(Ref(Kind.CLUSTER, f"x{i}")),
            store.put(backend("b"), cluster=f"x{i}"),
            return_exceptions=True,
        )
        assert not isinstance(deleted, BaseException)
        with pytest.raises(NotFound):
            await store.get(Ref(Kind.CLUSTER, f"x{i}"))
        page = await store.list(Kind.BACKEND, cluster="w")  # the folder read still works
        assert page.items
        folder = store.keys.folder(Kind.BACKEND, f"x{i}")
        orphans = await store.etcd.range(folder, prefix_end(folder), count_only=True)
        assert orphans.count == 0, (i, added)
