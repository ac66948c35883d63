"""When the snapshot cache publishes: a change after a quiet spell at once (leading edge),
what follows within the window coalesced behind it (real etcd, the real watch-fed view); and
what it publishes: incremental builds give the snapshots a build from scratch gives, and
one new cluster rebuilds that cluster's resources only (a view changed by hand)."""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any

import pytest

from controlplane.intent.keyspace import Ref, Stored
from controlplane.intent.model import Backend, Certificate, Cluster, Fleet, Kind, Listener, Route
from controlplane.intent.store import Op, Store
from controlplane.intent.view import IntentView
from controlplane.xds import resources as res
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import ENDPOINT_TYPE
from controlplane.xds.snapshot import InconsistentSnapshot, Snapshot, Table, set_version
from tests.certs import CA
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


# -- incremental builds: the same snapshots as a build from scratch -------------------------


class _FakeView:
    """What the cache reads of an IntentView, changed by hand (no etcd)."""

    def __init__(self) -> None:
        self.clusters: dict[str, Stored[Any]] = {}
        self.backends: dict[str, dict[str, Stored[Any]]] = {}
        self.listeners: dict[str, Stored[Any]] = {}
        self.routes: dict[str, Stored[Any]] = {}
        self.certificates: dict[str, Stored[Any]] = {}
        self.fleets: dict[str, Stored[Any]] = {}
        self.drained: dict[str, Any] = {}
        self.shed: dict[str, tuple[int, ...]] = {}
        self.shares: dict[str, dict[str, float]] = {}
        self.revision = 1
        self.subscribers: list[Any] = []

    def subscribe(self, fn: Any) -> None:
        self.subscribers.append(fn)

    def tell(self, changed: set[Ref]) -> None:
        self.revision += 1
        for fn in self.subscribers:
            fn(self.revision, changed)


def _described(snap: Snapshot) -> dict[str, Any]:
    """A snapshot as plain data: every type's names and versions, and every reference."""
    return {
        "resources": {t: {n: e.version for n, e in entries.items()} for t, entries in snap.resources.items()},
        "versions": {t: snap.version(t) for t in snap.resources},
        "references": {t: {n: sorted(r) for n, r in refs.items()} for t, refs in snap.references.items()},
        "bases": dict(snap.listener_bases.items()),
    }


@functools.cache
def _pki() -> tuple[str, list[Certificate]]:
    """A CA bundle and two certificates (keys in clear: no KEK), made once."""
    ca = CA()
    leaves = [ca.issue(f"s{i}.example") for i in range(2)]
    certs = [
        Certificate(name=f"k{i}", certificate_chain=leaf.cert_pem.decode(), private_key=leaf.key_pem.decode())
        for i, leaf in enumerate(leaves)
    ]
    return ca.pem.decode(), certs


def _random_change(view: _FakeView, rnd: random.Random, step: int) -> set[Ref]:
    clusters = [f"c{i}" for i in range(12)]
    listeners = [f"l{i}" for i in range(4)]
    bundle, certs = _pki()
    kind = rnd.choice(
        ["cluster", "cluster", "backend", "backend", "listener", "route", "route", "fleet", "cert", "cert"]
    )
    if kind == "cert":
        cert = rnd.choice(certs)
        if cert.name in view.certificates and rnd.random() < 0.15:
            del view.certificates[cert.name]  # may leave a listener or cluster without it: not published
        else:
            view.certificates[cert.name] = Stored(cert, step, step)
        return {Ref(Kind.CERTIFICATE, cert.name)}
    if kind == "cluster":
        name = rnd.choice(clusters)
        routed = {b.cluster for s in view.routes.values() for b in s.obj.backends}
        if name in view.clusters and name not in routed and name != "c0" and rnd.random() < 0.3:
            del view.clusters[name]
            view.backends.pop(name, None)
        else:
            lb = rnd.choice([{"type": "round_robin"}, {"type": "least_request"}])
            tls = rnd.choice([None, None, {"ca_bundle": bundle, "client_certificate": rnd.choice(certs).name}])
            view.clusters[name] = Stored(
                Cluster(name=name, discovery=rnd.choice(["eds", "eds", "dns"]), load_balancer=lb, tls=tls), step, step
            )
        return {Ref(Kind.CLUSTER, name)}
    if kind == "backend":
        name = rnd.choice(clusters)
        if name not in view.clusters:
            return set()
        b = Backend(name=f"b{rnd.randrange(3)}", address=f"10.0.0.{rnd.randrange(1, 9)}", port=rnd.randrange(1, 9))
        view.backends.setdefault(name, {})[b.name] = Stored(b, step, step)
        return {Ref(Kind.BACKEND, b.name, name)}
    if kind == "listener":
        name = rnd.choice(listeners)
        if name in view.listeners and rnd.random() < 0.25:
            del view.listeners[name]
        else:
            protocol = rnd.choice(["http", "http", "tcp"])
            lst = Listener(
                name=name,
                port=10000 + int(name[1:]),
                protocol=protocol,
                cluster="c0" if protocol == "tcp" else None,  # c0 stays
                fleets=rnd.choice([[], ["a"], ["b"], ["a", "b"]]),
                max_connections=rnd.choice([None, 10, 20]),
                bind_public_address=rnd.random() < 0.3,
                tls=rnd.choice(
                    [None, None, {"certificates": [c.name for c in rnd.sample(certs, rnd.randrange(1, 3))]}]
                ),
            )
            view.listeners[name] = Stored(lst, step, step)
        return {Ref(Kind.LISTENER, name)}
    if kind == "route":
        name = f"r{rnd.randrange(6)}"
        if name in view.routes and rnd.random() < 0.25:
            del view.routes[name]
            return {Ref(Kind.ROUTE, name)}
        if not view.clusters:
            return set()
        targets = rnd.sample(sorted(view.clusters), k=min(len(view.clusters), rnd.randrange(1, 3)))
        route = Route(
            name=name,
            listener=rnd.choice(listeners),
            match={"prefix": f"/{rnd.randrange(4)}/"},
            backends=[{"cluster": c} for c in targets],
        )
        view.routes[name] = Stored(route, step, step)
        return {Ref(Kind.ROUTE, name)}
    name = rnd.choice(["a", "b"])
    cap = rnd.choice([None, {"max_connections_per_envoy": rnd.randrange(1, 100)}])
    view.fleets[name] = Stored(Fleet(name=name, capacity=cap), step, step)
    return {Ref(Kind.FLEET, name)}


def _servable(cache: SnapshotCache) -> bool:
    """Every fleet's snapshot is consistent (the cache's first build checks fleet "" only)."""
    try:
        for fleet in ("a", "b"):
            cache.snapshot(fleet).check()
    except InconsistentSnapshot:
        return False
    return cache.ready


@pytest.mark.parametrize("seed", range(8))
async def test_incremental_builds_match_a_build_from_scratch(seed: int) -> None:
    rnd = random.Random(seed)
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell({Ref(Kind.CLUSTER, "c0")})
    for fleet in ("a", "b"):
        cache.snapshot(fleet)
    rejected = published = 0
    for step in range(2, 160):
        changed = set()
        for _ in range(rnd.randrange(1, 4)):  # a batch of one to three changes
            changed |= _random_change(view, rnd, step)
        view.tell(changed)
        fresh = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
        view.subscribers.remove(fresh._on_change)  # built once, here
        fresh._on_change(view.revision, set())
        if not _servable(fresh):  # this intent cannot be served (a certificate is missing) ...
            assert cache.revision < view.revision, (seed, step)  # ... so it was not published
            rejected += 1
            continue
        assert cache.revision == view.revision, (seed, step, cache.stats.last_error)
        published += 1
        for fleet in ("", "a", "b"):
            got, want = cache.snapshot(fleet), fresh.snapshot(fleet)
            got.check()
            assert _described(got) == _described(want), (seed, step, fleet)
    assert published > 60 and rejected, (published, rejected)  # both seen


async def test_a_build_that_would_be_inconsistent_is_not_published_and_is_retried() -> None:
    view = _FakeView()
    view.clusters["web"] = Stored(Cluster(name="web"), 1, 1)
    view.listeners["http"] = Stored(Listener(name="http", port=10000), 1, 1)
    view.routes["r"] = Stored(Route(name="r", listener="http", backends=[{"cluster": "web"}]), 1, 1)
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell(set())
    published = cache.snapshot("")
    # The route's cluster goes away (intent the store would refuse; the check is the net).
    del view.clusters["web"]
    view.tell({Ref(Kind.CLUSTER, "web")})
    assert cache.revision != view.revision and "references missing clusters ['web']" in (cache.stats.last_error or "")
    assert cache.snapshot("") is published and "web" in published.of(res.CLUSTER_TYPE)
    # An unrelated change is not published either while the cluster is still missing ...
    view.clusters["other"] = Stored(Cluster(name="other"), 2, 2)
    view.tell({Ref(Kind.CLUSTER, "other")})
    assert cache.snapshot("") is published
    # ... and once the route stops sending to it, both changes are.
    view.routes["r"] = Stored(Route(name="r", listener="http", backends=[{"cluster": "other"}]), 3, 3)
    view.tell({Ref(Kind.ROUTE, "r")})
    snap = cache.snapshot("")
    assert cache.revision == view.revision and set(snap.of(res.CLUSTER_TYPE)) == {"other"}


async def test_one_new_cluster_rebuilds_its_own_resources_only() -> None:
    view = _FakeView()
    for i in range(50):
        view.clusters[f"c{i}"] = Stored(Cluster(name=f"c{i}"), 1, 1)
    view.listeners["http"] = Stored(Listener(name="http", port=10000), 1, 1)
    view.routes["r"] = Stored(Route(name="r", listener="http", backends=[{"cluster": "c1"}]), 1, 1)
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell(set())
    before = cache.snapshot("")
    view.clusters["new"] = Stored(Cluster(name="new"), 2, 2)
    view.tell({Ref(Kind.CLUSTER, "new")})
    after = cache.snapshot("")
    assert cache.stats.rebuilt == {"cds": 1, "eds": 1, "lds": 0, "rds": 0}
    for t in (res.LISTENER_TYPE, res.ROUTE_TYPE, res.RUNTIME_TYPE, res.EXTENSION_TYPE):
        assert after.of(t) is before.of(t)  # not rebuilt, not even copied
    for t in (res.CLUSTER_TYPE, res.ENDPOINT_TYPE):
        table = after.of(t)
        assert isinstance(table, Table) and table.changed_since(before.of(t)) == {"new"}
        assert table.version == set_version(dict(table.items()))  # kept as it changed
        assert "new" not in before.of(t)  # the published snapshot did not change
