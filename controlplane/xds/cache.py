"""The snapshot cache: turns the intent view into published per-fleet snapshots.

It listens to the view and publishes a change that follows a quiet spell at once (leading
edge); changes within `debounce` of the last build are coalesced into the next one (a window
that stretches, bounded, while the previous snapshot is still being fanned out to the streams),
rebuilds only what the changes touch (a backend change rebuilds that cluster's endpoints,
never a listener), checks each fleet's snapshot for consistency and publishes it. Streams
register a wake-up callback and read `snapshot(fleet)` when woken.

Hash rings (lbcp.v1.HashRing) are built on demand: only for clusters some stream subscribed
to, one at a time in a worker thread (a 655,373-slot Maglev table takes over a second), from
the intent each published snapshot was built from. A finished ring is published as a new
snapshot of the same revision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controlplane.intent.certificates import KeyUnavailable, keyring
from controlplane.intent.integrity import sni_names
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind, Route
from controlplane.intent.view import IntentView
from controlplane.xds import resources as res
from controlplane.xds.snapshot import Entry, InconsistentSnapshot, Snapshot, make_entry

log = logging.getLogger(__name__)

ALL_FLEETS = ""


@dataclass
class BuildStats:
    builds: int = 0
    last_build_seconds: float = 0.0
    last_debounce_seconds: float = 0.0
    rejected: int = 0
    last_error: str | None = None
    rebuilt: dict[str, int] = field(default_factory=dict)
    ring_builds: int = 0
    last_ring_build_seconds: float = 0.0


# What one build produces, in the order `_swap_built` takes it.
_BUILT = (
    "_clusters",
    "_endpoints",
    "_eds_clusters",
    "_listeners",
    "_routes",
    "_rings",
    "_secrets",
    "_listener_secrets",
    "_cluster_secrets",
)


class SnapshotCache:
    def __init__(self, view: IntentView, debounce: float = 0.01, max_delay: float = 0.1, max_hold: float = 1.0) -> None:
        self.view = view
        self.debounce = debounce
        self.max_delay = max_delay
        self.max_hold = max_hold
        # Set by the server: True while some stream has not yet taken the last published
        # snapshot. The next publish waits for that (up to `max_hold`), so under load each
        # fan-out carries every change that arrived during the previous one.
        self.fanout_busy: Callable[[], bool] = lambda: False
        self.revision = 0
        self.stats = BuildStats()
        self._clusters: dict[str, Entry] = {}
        self._endpoints: dict[str, Entry] = {}
        self._eds_clusters: set[str] = set()
        # entry, fleets, rds name, what per-Envoy variants start from
        self._listeners: dict[str, tuple[Entry, tuple[str, ...], str | None, res.ListenerBase]] = {}
        self._routes: dict[str, tuple[Entry, frozenset[str]]] = {}  # by route config name: entry, clusters
        self._secrets: dict[str, Entry] = {}  # certificate name -> SDS Secret
        self._listener_secrets: dict[str, frozenset[str]] = {}  # listener -> certificates it serves
        self._cluster_secrets: dict[str, str] = {}  # cluster -> client certificate it presents upstream
        self._sni: dict[str, tuple[int, tuple[str, ...]]] = {}  # certificate -> (mod revision, SNI names)
        self._dirty_secrets: set[str] = set()
        self._rings: dict[str, Entry] = {}
        self._ring_interest: dict[object, frozenset[str]] = {}  # subscriber -> cluster names, "*" = all
        self._ring_queue: dict[
            str, tuple[Cluster, list[Backend], int]
        ] = {}  # cluster -> (cluster, backends, revision) to build
        self._ring_worker: asyncio.Task[None] | None = None
        self._fleet_snapshots: dict[str, Snapshot] = {}
        self._drained: frozenset[str] = frozenset()
        self._sheds: dict[str, tuple[int, ...]] = {}
        self._dirty_clusters: set[str] = set()
        self._dirty_listeners = False
        self._first_dirty: float | None = None
        self._last_build = -float("inf")  # monotonic start of the last build (leading edge)
        self._pending: asyncio.Task[None] | None = None
        self._watchers: set[Callable[[], None]] = set()
        # Told (algorithm, seconds) after every ring build (metrics).
        self.ring_observers: list[Callable[[str, float], None]] = []
        # When the first change behind the published revision was seen (monotonic).
        self.first_change_at: float | None = None
        self._built = asyncio.Event()
        self.published = 0
        view.subscribe(self._on_change)

    # -- public ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._built.is_set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._built.wait(), timeout)

    def add_watcher(self, fn: Callable[[], None]) -> None:
        self._watchers.add(fn)

    def remove_watcher(self, fn: Callable[[], None]) -> None:
        self._watchers.discard(fn)

    def snapshot(self, fleet: str) -> Snapshot:
        snap = self._fleet_snapshots.get(fleet)
        if snap is None or snap.revision != self.revision:
            snap = self._fleet_snapshot(fleet)
            self._fleet_snapshots[fleet] = snap
        return snap

    def set_ring_interest(self, subscriber: object, names: set[str]) -> None:
        """The HashRing names `subscriber` wants ("*": every hashing cluster); empty to leave."""
        before = self._wanted_rings()
        if names:
            self._ring_interest[subscriber] = frozenset(names)
        else:
            self._ring_interest.pop(subscriber, None)
        added = self._wanted_rings() - before
        if "*" in added:
            added = set(self.view.clusters)
        v = self.view
        for name in added:
            stored = v.clusters.get(name)
            if stored is not None and name not in self._rings and res.hashes(stored.obj):
                self._queue_ring(name, stored.obj, [s.obj for s in v.backends.get(name, {}).values()], v.revision)

    def _wanted_rings(self) -> set[str]:
        return set().union(*self._ring_interest.values())

    def _queue_ring(self, name: str, cluster: Cluster, backends: list[Backend], revision: int) -> None:
        self._ring_queue[name] = (cluster, backends, revision)
        if self._ring_worker is None or self._ring_worker.done():
            self._ring_worker = asyncio.get_running_loop().create_task(self._build_rings())

    async def _build_rings(self) -> None:
        while self._ring_queue:
            name = next(iter(self._ring_queue))
            inputs = self._ring_queue[name]
            started = time.monotonic()
            try:
                entry = await asyncio.to_thread(_ring_entry, *inputs)
            except Exception:
                log.exception("hash ring build for cluster %r failed", name)
                entry = None
            if self._ring_queue.get(name) is not inputs:
                continue  # intent changed while building: the newer inputs are queued
            del self._ring_queue[name]
            self.stats.ring_builds += 1
            self.stats.last_ring_build_seconds = took = time.monotonic() - started
            for observe in self.ring_observers:
                observe(inputs[0].load_balancer.type, took)
            if entry is None or name not in self.view.clusters:
                continue
            old = self._rings.get(name)
            if old is not None and old.version == entry.version:
                continue  # same ring: nothing to send anyone
            self._rings = {**self._rings, name: entry}
            self._republish()

    def _swap_built(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """Install a build's parts (in `_BUILT` order) and return the ones they replace."""
        previous = tuple(getattr(self, name) for name in _BUILT)
        for name, value in zip(_BUILT, values, strict=True):
            setattr(self, name, value)
        return previous

    def _republish(self) -> None:
        """Publish the current resources again at the same revision (a ring finished)."""
        fleets = set(self._fleet_snapshots) | {ALL_FLEETS}
        self._fleet_snapshots = {f: self._fleet_snapshot(f) for f in fleets}
        for fn in list(self._watchers):
            fn()

    # -- change intake ---------------------------------------------------------------------

    def _on_change(self, revision: int, changed: set[Ref]) -> None:
        for ref in changed:
            if ref.kind == Kind.CLUSTER:
                self._dirty_clusters.add(ref.name)
                self._dirty_listeners = True  # routes' consistency depends on clusters
            elif ref.kind == Kind.BACKEND:
                self._dirty_clusters.add(ref.cluster or "")
            elif ref.kind == Kind.CERTIFICATE:
                self._dirty_secrets.add(ref.name)
                self._dirty_listeners = True  # SNI names come from certificates
            elif ref.kind == Kind.FLEET:
                pass  # its runtime layer is built with each fleet's snapshot at publish
            else:
                self._dirty_listeners = True
        if self._first_dirty is None:
            self._first_dirty = time.monotonic()
        if not self.ready:
            # The first build happens at once: Envoys are waiting for any config at all.
            self._rebuild()
            return
        if self._pending is None or self._pending.done():
            if time.monotonic() - self._last_build >= self.debounce and not self.fanout_busy():
                # Leading edge: after a quiet spell a change is published at once (the view
                # calls this once per applied watch response, at a consistent revision);
                # only what follows within the window is coalesced behind it.
                self._build()
                return
            self._pending = asyncio.get_running_loop().create_task(self._debounced())

    async def _debounced(self) -> None:
        # Coalesce a burst: wait out the window since the last build (`debounce`, no longer
        # than `max_delay`), then build once from everything accumulated.
        assert self._first_dirty is not None
        window = min(self.debounce, self.max_delay)
        await asyncio.sleep(max(0.0, self._last_build + window - time.monotonic()))
        # Adaptive coalescing: while the fleet is still taking the previous snapshot,
        # publishing another would only queue work behind it; keep collecting changes.
        deadline = self._first_dirty + self.max_hold
        while self.fanout_busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self._build()

    def _build(self) -> None:
        try:
            self._rebuild()
        except Exception:
            # Keep serving the last good snapshot; the next change tries again.
            log.exception("snapshot build failed")
            self.stats.rejected += 1

    # -- building --------------------------------------------------------------------------

    def _rebuild(self) -> None:
        started = self._last_build = time.monotonic()
        if self._first_dirty is not None:
            self.stats.last_debounce_seconds = started - self._first_dirty
        full = not self.ready
        v = self.view
        dirty = set(v.clusters) | set(self._clusters) if full else self._dirty_clusters
        clusters, endpoints, eds = dict(self._clusters), dict(self._endpoints), set(self._eds_clusters)
        cluster_secrets = dict(self._cluster_secrets)
        rings, ring_inputs = dict(self._rings), {}
        wanted = self._wanted_rings()
        rebuilt = {"cds": 0, "eds": 0, "lds": 0, "rds": 0}
        for name in dirty:
            stored = v.clusters.get(name)
            if stored is None or not res.hashes(stored.obj):
                rings.pop(name, None)
                self._ring_queue.pop(name, None)
            cluster_secrets.pop(name, None)
            if stored is None:
                clusters.pop(name, None)
                endpoints.pop(name, None)
                eds.discard(name)
                continue
            if stored.obj.tls is not None and stored.obj.tls.client_certificate:
                cluster_secrets[name] = stored.obj.tls.client_certificate
            members = [s.obj for s in v.backends.get(name, {}).values()]
            if res.hashes(stored.obj) and (name in wanted or "*" in wanted):
                ring_inputs[name] = (stored.obj, members, v.revision)
            c = res.cluster_resource(stored.obj, members)
            e = make_entry(res.CLUSTER_TYPE, name, c)
            if clusters.get(name) is None or clusters[name].version != e.version:
                clusters[name] = e
                rebuilt["cds"] += 1
            if res.uses_dns(stored.obj, members):
                endpoints.pop(name, None)
                eds.discard(name)
            else:
                ee = make_entry(res.ENDPOINT_TYPE, name, res.load_assignment(name, members))
                if endpoints.get(name) is None or endpoints[name].version != ee.version:
                    endpoints[name] = ee
                    rebuilt["eds"] += 1
                eds.add(name)
        secrets = dict(self._secrets)
        for name in set(v.certificates) | set(self._secrets) if full else self._dirty_secrets:
            stored_cert = v.certificates.get(name)
            if stored_cert is None:
                secrets.pop(name, None)
                continue
            try:
                key = keyring().open(name, stored_cert.obj.private_key)
            except KeyUnavailable as exc:
                # Not servable here (wrong or missing KEK): listeners that need it make the
                # snapshot inconsistent, and the last good one stays published.
                log.error("%s", exc)
                secrets.pop(name, None)
                continue
            secrets[name] = make_entry(res.SECRET_TYPE, name, res.secret_resource(stored_cert.obj, key))
        listeners, routes, listener_secrets = self._listeners, self._routes, self._listener_secrets
        if full or self._dirty_listeners:
            listeners, routes, listener_secrets = {}, {}, {}
            by_listener: dict[str, list[Route]] = {}
            for stored_route in v.routes.values():
                by_listener.setdefault(stored_route.obj.listener, []).append(stored_route.obj)
            for name, stored_listener in v.listeners.items():
                lst = stored_listener.obj
                sni = None
                if lst.tls is not None:
                    listener_secrets[name] = frozenset(lst.tls.certificates)
                    sni = {c: self._sni_names(c) for c in lst.tls.certificates if c in v.certificates}
                msg = res.listener_resource(lst, sni)
                e = make_entry(res.LISTENER_TYPE, name, msg)
                rds = res.route_config_name(name) if lst.protocol == "http" else None
                listeners[name] = (e, tuple(lst.fleets), rds, res.listener_base(lst, msg))
                old = self._listeners.get(name)
                rebuilt["lds"] += old is None or old[0].version != e.version
                if rds is not None:
                    rs = by_listener.get(name, [])
                    re_ = make_entry(res.ROUTE_TYPE, rds, res.route_configuration(name, rs))
                    routes[rds] = (re_, frozenset(b.cluster for r in rs for b in r.backends))
                    old_r = self._routes.get(rds)
                    rebuilt["rds"] += old_r is None or old_r[0].version != re_.version
        # Check every fleet this cache serves before publishing anything.
        previous = self._swap_built(
            (clusters, endpoints, eds, listeners, routes, rings, secrets, listener_secrets, cluster_secrets)
        )
        revision = v.revision
        previous_drained, self._drained = self._drained, frozenset(v.drained)
        previous_sheds, self._sheds = self._sheds, dict(v.shed)
        try:
            fleets = set(self._fleet_snapshots) | {ALL_FLEETS}
            snaps = {f: self._fleet_snapshot(f, revision) for f in fleets}
            for snap in snaps.values():
                snap.check()
        except InconsistentSnapshot as exc:
            # Keep serving the last good snapshot; a later change may complete the picture.
            self._swap_built(previous)
            self._drained = previous_drained
            self._sheds = previous_sheds
            self.stats.rejected += 1
            self.stats.last_error = str(exc)
            log.error("not publishing revision %d: %s", revision, exc)
            self._dirty_clusters |= dirty
            return
        self.revision = revision
        self._fleet_snapshots = snaps
        self._dirty_clusters = set()
        self._dirty_listeners = False
        self._dirty_secrets = set()
        self.first_change_at = self._first_dirty
        self._first_dirty = None
        self.stats.builds += 1
        self.stats.rebuilt = rebuilt
        self.stats.last_build_seconds = time.monotonic() - started
        self.published += 1
        self._built.set()
        for name, inputs in ring_inputs.items():
            self._queue_ring(name, *inputs)
        for fn in list(self._watchers):
            fn()

    def _sni_names(self, certificate: str) -> tuple[str, ...]:
        """A certificate's SNI names, parsed once per stored revision (listeners are rebuilt
        on every cluster change; certificates rarely change)."""
        stored = self.view.certificates[certificate]
        hit = self._sni.get(certificate)
        if hit is None or hit[0] != stored.mod_revision:
            hit = self._sni[certificate] = (stored.mod_revision, sni_names(stored.obj))
        return hit[1]

    def _fleet_snapshot(self, fleet: str, revision: int | None = None) -> Snapshot:
        snap = Snapshot(fleet=fleet, revision=self.revision if revision is None else revision)
        lds = {n: e for n, (e, fleets, _, _) in self._listeners.items() if not fleets or fleet in fleets}
        rds_names = {self._listeners[n][2] for n in lds if self._listeners[n][2]}
        rds = {n: self._routes[n][0] for n in rds_names if n in self._routes}
        # A fleet gets the certificates (and keys) of its own listeners only.
        needed = {n: self._listener_secrets[n] for n in lds if n in self._listener_secrets}
        # Every fleet gets every cluster, and so the client certificates clusters present.
        needed |= {f"cluster {n}": frozenset({c}) for n, c in self._cluster_secrets.items()}
        sds = {c: self._secrets[c] for cs in needed.values() for c in cs if c in self._secrets}
        fleet_intent = self.view.fleets.get(fleet)
        limits = {n: self.view.listeners[n].obj.max_connections for n in lds if n in self.view.listeners}
        runtime = res.runtime_resource(fleet_intent.obj if fleet_intent else None, limits)
        admission = res.admission_resource(fleet_intent.obj if fleet_intent else None)
        snap.resources = {
            res.RUNTIME_TYPE: {res.RUNTIME_LAYER: make_entry(res.RUNTIME_TYPE, res.RUNTIME_LAYER, runtime)},
            res.EXTENSION_TYPE: {res.ADMISSION: make_entry(res.EXTENSION_TYPE, res.ADMISSION, admission)},
            res.CLUSTER_TYPE: self._clusters,
            res.ENDPOINT_TYPE: self._endpoints,
            res.LISTENER_TYPE: lds,
            res.ROUTE_TYPE: rds,
            res.HASH_RING_TYPE: self._rings,
            res.SECRET_TYPE: sds,
        }
        snap.pending = {res.HASH_RING_TYPE: self._ring_queue.keys()}
        snap.drained = self._drained
        snap.listener_bases = {n: self._listeners[n][3] for n in lds}
        snap.sheds = self._sheds
        snap.references = {
            res.CLUSTER_TYPE: {n: {n} for n in self._eds_clusters},
            res.LISTENER_TYPE: {n: {rds_name} for n in lds if (rds_name := self._listeners[n][2])},
            res.ROUTE_TYPE: {n: set(self._routes[n][1]) for n in rds},
            res.SECRET_TYPE: {n: set(cs) for n, cs in needed.items()},
        }
        return snap


def _ring_entry(cluster: Cluster, backends: list[Backend], revision: int) -> Entry:
    msg, version = res.hash_ring(cluster, backends, revision)
    return make_entry(res.HASH_RING_TYPE, cluster.name, msg, version)
