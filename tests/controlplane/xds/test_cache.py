"""When the snapshot cache publishes: a change after a quiet spell at once (leading edge),
what follows within the window coalesced behind it. Real etcd, the real watch-fed view."""

from __future__ import annotations

import asyncio

from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind
from controlplane.intent.store import Op, Store
from controlplane.intent.view import IntentView
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import ENDPOINT_TYPE
from tests.conftest import wait_for

WINDOW = 3.0  # a debounce far longer than any step here: a publish inside it is the leading edge


async def _cache(store: Store) -> tuple[IntentView, SnapshotCache]:
    await store.put(Cluster(name="web"))
    view = IntentView(store.etcd, store.keys)
    cache = SnapshotCache(view, debounce=WINDOW, max_delay=WINDOW)
    await view.start()
    await cache.wait_ready(10)
    return view, cache


def _backend(i: int) -> Op:
    b = Backend(name=f"b{i}", address="10.0.0.1", port=1000 + i)
    return Op("put", Ref(Kind.BACKEND, b.name, "web"), b)


def _endpoints(cache: SnapshotCache) -> int:
    entry = cache.snapshot("default").of(ENDPOINT_TYPE)
    return entry["web"].delta_chunk.count(b"10.0.0.1") if "web" in entry else 0


async def test_a_change_after_a_quiet_spell_is_published_at_once(store: Store) -> None:
    view, cache = await _cache(store)
    try:
        await asyncio.sleep(WINDOW)  # quiet: the first build was a window ago
        builds = cache.stats.builds
        res = await store.apply([_backend(0)])
        assert await view.wait_for_revision(res.revision, 10)
        # Published within the same turn as the view saw it, not a window later.
        assert cache.stats.builds == builds + 1 and cache.revision == res.revision
        assert cache.stats.last_debounce_seconds < WINDOW / 3
        assert _endpoints(cache) == 1
    finally:
        await view.stop()


async def test_what_follows_within_the_window_is_coalesced(store: Store) -> None:
    view, cache = await _cache(store)
    try:
        await asyncio.sleep(WINDOW)
        builds = cache.stats.builds
        first = await store.apply([_backend(0)])  # the leading edge
        assert await view.wait_for_revision(first.revision, 10)
        last = first
        for i in range(1, 50):  # 49 more, one transaction each, well inside the window
            last = await store.apply([_backend(i)])
        assert await view.wait_for_revision(last.revision, 10)
        assert cache.stats.builds == builds + 1  # nothing more yet: they wait for the window

        async def published() -> bool:
            return cache.revision == last.revision

        await wait_for(published, timeout=2 * WINDOW, what="the coalesced publish")
        assert cache.stats.builds == builds + 2  # 50 writes, two publishes
        assert _endpoints(cache) == 50
    finally:
        await view.stop()
