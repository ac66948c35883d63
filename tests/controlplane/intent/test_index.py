"""A write reads what it touches: its cost does not grow with the number of objects of its
kind, and the reference index that makes this possible stays exact (real etcd)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from controlplane.etcd import prefix_end
from controlplane.intent import index
from controlplane.intent.errors import InUse
from controlplane.intent.integrity import PortConflict
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Intent, Kind, Listener, Route
from controlplane.intent.store import Op, Store

CONTROLPLANE = str(Path(__file__).resolve().parents[3] / "controlplane")


def route(name: str, cluster: str, listener: str = "http", hashed: bool = False) -> Route:
    doc: dict[str, Any] = {"name": name, "listener": listener, "backends": [{"cluster": cluster}]}
    if hashed:
        doc["hash_policies"] = [{"type": "source_ip"}]
    return Route.model_validate(doc)


def put(kind: Kind, obj: Intent, cluster: str | None = None) -> Op:
    return Op("put", Ref(kind, obj.name, cluster), obj)


async def _seed(store: Store, ops: list[Op]) -> None:
    for i in range(0, len(ops), 500):
        await store.apply(ops[i : i + 500])


async def _cost(write: Callable[[], Awaitable[Any]]) -> tuple[int, int]:
    """(Python calls into controlplane/, values decoded) while `write` runs."""
    calls = decodes = 0

    def count(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls, decodes
        if event == "call" and frame.f_code.co_filename.startswith(CONTROLPLANE):
            calls += 1
            decodes += frame.f_code.co_name == "decode"

    sys.setprofile(count)
    try:
        await write()
    finally:
        sys.setprofile(None)
    return calls, decodes


async def _world(store: Store, n: int) -> None:
    """n clusters, n backends in `web`, n listeners, n routes (on `http`, over 10 clusters);
    c3 and c4 have one user each whatever n is (a write's cost may grow with the users of
    what it changes, never with the kind)."""
    await store.apply([put(Kind.CLUSTER, Cluster.model_validate({"name": "web", "load_balancer": {"type": "maglev"}}))])
    await store.apply([put(Kind.LISTENER, Listener(name="http", port=10000))])
    await _seed(store, [put(Kind.CLUSTER, Cluster(name=f"c{i}")) for i in range(n)])
    await _seed(
        store, [put(Kind.BACKEND, Backend(name=f"b{i}", address="10.0.0.1", port=1 + i), "web") for i in range(n)]
    )
    await _seed(store, [put(Kind.LISTENER, Listener(name=f"l{i}", port=20000 + i)) for i in range(n)])
    await _seed(store, [put(Kind.ROUTE, route(f"r{i}", f"c{10 + i % 10}")) for i in range(n)])
    await store.apply([put(Kind.ROUTE, route("user-3", "c3")), put(Kind.ROUTE, route("user-4", "c4"))])


WRITES: dict[str, Callable[[Store, str], Awaitable[Any]]] = {
    "new cluster": lambda s, t: s.put(Cluster(name=f"new-{t}")),
    "cluster update": lambda s, t: s.put(Cluster(name="c5", protocol="http2" if t == "a" else "http1")),
    "cluster made tcp (checks its users)": lambda s, t: _refused(s.put(Cluster(name="c3", protocol="tcp"))),
    "new backend": lambda s, t: s.put(Backend(name=f"new-{t}", address="10.0.0.2", port=9), cluster="web"),
    "new listener": lambda s, t: s.put(Listener(name=f"new-{t}", port=40000 + ord(t))),
    "listener on a taken port": lambda s, t: _refused(s.put(Listener(name=f"x-{t}", port=20001))),
    "new route": lambda s, t: s.put(route(f"new-{t}", "c1")),
    "route update": lambda s, t: s.put(route("r7", "c2" if t == "a" else "c7")),
    "used cluster delete": lambda s, t: _refused(s.delete(Ref(Kind.CLUSTER, "c4"))),
}


async def _refused(write: Awaitable[Any]) -> None:
    with pytest.raises((InUse, PortConflict)):
        await write


async def test_a_writes_cost_does_not_grow_with_its_kind(etcd_config) -> None:
    from controlplane.etcd import Etcd

    costs: dict[int, dict[str, tuple[int, int]]] = {}
    for n, prefix in ((100, "small"), (2000, "large")):
        config = dataclasses.replace(etcd_config, prefix=f"{etcd_config.prefix}{prefix}/")
        etcd = Etcd(config)
        try:
            store = Store(etcd)
            await _world(store, n)
            costs[n] = {}
            for name, write in WRITES.items():
                await write(store, "a")  # warm: the first of a kind imports, compiles regexes
                costs[n][name] = await _cost(lambda: write(store, "b"))  # noqa: B023
        finally:
            await etcd.close()
    print({name: (costs[100][name], costs[2000][name]) for name in WRITES})
    for name in WRITES:
        (small, small_decodes), (large, large_decodes) = costs[100][name], costs[2000][name]
        # Measured: equal counts. Reading the whole kind (as before the index) decoded every
        # object of it: 20x more calls at 2,000 than at 100.
        assert large_decodes <= small_decodes, f"{name}: {small_decodes} decodes at 100, {large_decodes} at 2,000"
        assert large < 1.2 * small, f"{name}: {small} calls at 100 objects, {large} at 2,000"


async def _index_keys(store: Store) -> set[bytes]:
    resp = await store.etcd.range(store.index.root, prefix_end(store.index.root), keys_only=True)
    return {kv.key for kv in resp.kvs if kv.key != store.index.version}


async def test_the_index_stays_exactly_what_a_rebuild_makes(store: Store) -> None:
    hashing = Cluster.model_validate({"name": "ring", "load_balancer": {"type": "ring_hash"}})
    await store.apply(
        [
            put(Kind.CLUSTER, Cluster(name="a")),
            put(Kind.CLUSTER, Cluster(name="b")),
            put(Kind.CLUSTER, hashing),
            put(Kind.CLUSTER, Cluster(name="raw", protocol="tcp")),
            put(Kind.LISTENER, Listener(name="http", port=10000)),
            put(Kind.LISTENER, Listener(name="other", port=10001)),
            put(Kind.LISTENER, Listener(name="tcp", port=10002, protocol="tcp", cluster="raw")),
            put(Kind.ROUTE, route("r1", "a")),
            put(Kind.ROUTE, route("r2", "ring", hashed=True)),
        ]
    )
    await store.put(route("r1", "b", listener="other"))  # moves: old references go
    await store.put(Listener(name="other", port=10005))  # a new port
    await store.delete(Ref(Kind.ROUTE, "r2"))
    await store.delete(Ref(Kind.CLUSTER, "ring"))  # unused now
    await store.apply([Op("delete", Ref(Kind.LISTENER, "tcp")), Op("delete", Ref(Kind.CLUSTER, "raw"))])
    kept = await _index_keys(store)
    _, wanted = await store.index._wanted(store.etcd)
    assert kept == wanted
    ix = store.index
    assert kept == {
        ix.users(Ref(Kind.CLUSTER, "b")) + b"route/r1",
        ix.users(Ref(Kind.LISTENER, "other")) + b"route/r1",
        ix.port(10000) + b"http",
        ix.port(10005) + b"other",
    }
    # The index is what the checks rest on: the moved references now protect the new targets.
    with pytest.raises(InUse):
        await store.delete(Ref(Kind.CLUSTER, "b"))
    await store.delete(Ref(Kind.CLUSTER, "a"))
    with pytest.raises(PortConflict):
        await store.put(Listener(name="late", port=10005))
    await store.put(Listener(name="late", port=10001))


async def _older_intent(store: Store) -> None:
    """A cluster, a listener and a route using both, written as an lbcp before the index did:
    straight to etcd, no index keys."""
    ks = store.keys
    for ref, obj in [
        (Ref(Kind.CLUSTER, "web"), Cluster(name="web")),
        (Ref(Kind.LISTENER, "http"), Listener(name="http", port=10000)),
        (Ref(Kind.ROUTE, "r"), route("r", "web")),
    ]:
        await store.etcd.put(ks.key(ref), ks.encode(ref.kind, obj))


async def test_an_etcd_written_before_the_index_gets_one(store: Store) -> None:
    """Intent written without an index (an older lbcp): the first write that needs the index
    builds it, and the checks that rest on it hold at once."""
    await _older_intent(store)
    await store.put(Cluster(name="unrelated"))  # a write that needs no user: it builds the index anyway
    assert (await store.etcd.range(store.index.version)).kvs[0].value == index.VERSION
    with pytest.raises(InUse) as e:
        await store.delete(Ref(Kind.CLUSTER, "web"))
    assert "route r" in str(e.value)
    with pytest.raises(PortConflict):
        await store.put(Listener(name="again", port=10000))


async def test_a_new_user_and_a_delete_racing_never_both_win(store: Store) -> None:
    await store.put(Listener(name="http", port=10000))
    for i in range(6):
        await store.put(Cluster(name=f"c{i}"))
        results = await asyncio.gather(
            store.put(route(f"r{i}", f"c{i}")),
            store.delete(Ref(Kind.CLUSTER, f"c{i}")),
            return_exceptions=True,
        )
        route_ok, delete_ok = (not isinstance(r, BaseException) for r in results)
        assert route_ok != delete_ok, results  # one wins; the other sees it and is refused
        for r in results:
            if isinstance(r, BaseException):
                assert type(r).__name__ in ("InUse", "ValidationFailed"), r
        has_route = (await store.etcd.range(store.keys.key(Ref(Kind.ROUTE, f"r{i}")))).count
        has_cluster = (await store.etcd.range(store.keys.key(Ref(Kind.CLUSTER, f"c{i}")))).count
        assert not has_route or has_cluster


async def test_two_listeners_racing_for_one_port(store: Store) -> None:
    for i in range(6):
        results = await asyncio.gather(
            store.put(Listener(name=f"a{i}", port=11000 + i)),
            store.put(Listener(name=f"b{i}", port=11000 + i)),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["PortConflict", "WriteResult"], results


async def test_listeners_of_one_batch_are_checked_against_each_other(store: Store) -> None:
    with pytest.raises(PortConflict):
        await store.apply(
            [put(Kind.LISTENER, Listener(name="a", port=12000)), put(Kind.LISTENER, Listener(name="b", port=12000))]
        )
    many = [put(Kind.LISTENER, Listener(name=f"l{i}", port=13000 + i)) for i in range(300)]
    await store.apply(many)  # distinct ports: no pair is compared (a batch is not quadratic)
    with pytest.raises(PortConflict):
        await store.apply(
            [put(Kind.LISTENER, Listener(name="x", port=14000)), put(Kind.LISTENER, Listener(name="l7", port=14000))]
        )


async def test_an_api_starting_on_an_older_etcd_builds_the_index_before_any_write(store: Store, etcd_config) -> None:
    """At start, not in the first write: a rejected write then moves nothing in etcd."""
    import httpx

    from tests.conftest import make_app, wait_for

    await _older_intent(store)
    app = make_app(etcd_config)
    async with app.router.lifespan_context(app):

        async def indexed() -> bool:
            return (await store.etcd.range(store.index.version, count_only=True)).count == 1

        await wait_for(indexed, 10, "the index built at start")
        before = await store.revision()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lbcp.test") as api:
            r = await api.delete("/v1/clusters/web")
        assert r.status_code == 409 and r.json()["code"] == "cluster-in-use", r.text
        assert await store.revision() == before  # refused: nothing written, not even the index
