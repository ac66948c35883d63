"""The snapshot cache: turns the intent view into published per-fleet snapshots.

It listens to the view and publishes a change that follows a quiet spell at once (leading
edge); changes within `debounce` of the last build are coalesced into the next one (a window
that stretches, bounded, while the previous snapshot is still being fanned out to the streams),
rebuilds only what the changes touch and checks only the references they touch, then publishes
each fleet's snapshot. Streams register a wake-up callback and read `snapshot(fleet)` when woken.

A build costs what changed, not what exists: every part it keeps is a persistent map (a
`Table` of entries per type, reverse indexes), derived from the last build's by the changes.
A new cluster builds its CDS and EDS entries and checks the route configurations that send
to it (a reverse index finds them); a backend change rebuilds that cluster's endpoints; a
route change rebuilds its listener's route configuration; a certificate change rebuilds the
listeners serving it. Each fleet's share (its listeners, route configurations, certificates,
runtime layer) is derived the same way.

Hash rings (lbcp.v1.HashRing) are built on demand: only for clusters some stream subscribed
to, one at a time in a worker thread (a 655,373-slot Maglev table takes over a second), from
the intent each published snapshot was built from. A finished ring is published as a new
snapshot of the same revision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from controlplane.intent.certificates import KeyUnavailable, keyring
from controlplane.intent.integrity import sni_names
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Backend, Cluster, Kind
from controlplane.intent.view import IntentView
from controlplane.xds import resources as res
from controlplane.xds.snapshot import (
    Entry,
    InconsistentSnapshot,
    PMap,
    PMapEdit,
    RouteBase,
    Snapshot,
    Table,
    fleet_limited,
    make_entry,
)

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


# -- what a build keeps ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Listener:
    entry: Entry
    fleets: tuple[str, ...]
    rds: str | None  # its route configuration's name (http listeners)
    base: res.ListenerBase  # what per-Envoy variants start from
    certificates: frozenset[str]  # what it serves (TLS)
    max_connections: int | None

    def serves(self, fleet: str) -> bool:
        return not self.fleets or fleet in self.fleets


@dataclass(frozen=True, slots=True)
class _RouteConfig:
    name: str
    entry: Entry
    clusters: frozenset[str]  # the clusters its routes send to


@dataclass(frozen=True, slots=True)
class _State:
    """Everything one build produced; each build derives the next from it by what changed
    (every part is persistent: a rejected build leaves this one as it was)."""

    clusters: Table = field(default_factory=Table)
    endpoints: Table = field(default_factory=Table)
    rings: Table = field(default_factory=Table)
    secrets: Table = field(default_factory=Table)  # certificate -> SDS Secret
    listeners: PMap[str, _Listener] = field(default_factory=PMap)
    routes: PMap[str, _RouteConfig] = field(default_factory=PMap)  # by listener name
    route_listener: PMap[str, str] = field(default_factory=PMap)  # route -> its listener
    listener_routes: PMap[str, frozenset[str]] = field(default_factory=PMap)  # listener -> its routes
    cluster_users: PMap[str, frozenset[str]] = field(default_factory=PMap)  # cluster -> listeners routing to it
    cluster_secrets: PMap[str, str] = field(default_factory=PMap)  # cluster -> client certificate it presents
    cluster_secret_refs: PMap[str, frozenset[str]] = field(default_factory=PMap)  # "cluster NAME" -> {certificate}
    cluster_cert_uses: PMap[str, int] = field(default_factory=PMap)  # certificate -> clusters presenting it
    cert_users: PMap[str, frozenset[str]] = field(default_factory=PMap)  # certificate -> listeners, "cluster NAME"
    limited: PMap[str, RouteBase] = field(default_factory=PMap)  # RDS name -> its routes, if fleet-scope limited


@dataclass(frozen=True, slots=True)
class _Fleet:
    """One fleet's share of the resources (its listeners, their route configurations and
    certificates, its runtime layer and admission filter), derived like `_State`."""

    listeners: Table = field(default_factory=Table)
    routes: Table = field(default_factory=Table)
    secrets: Table = field(default_factory=Table)
    runtime: Table = field(default_factory=Table)
    admission: Table = field(default_factory=Table)
    bases: PMap[str, res.ListenerBase] = field(default_factory=PMap)
    listener_refs: PMap[str, tuple[str, ...]] = field(default_factory=PMap)  # listener -> (route config,)
    route_refs: PMap[str, frozenset[str]] = field(default_factory=PMap)  # route config -> clusters
    secret_refs: PMap[str, frozenset[str]] = field(default_factory=PMap)  # listener -> certificates
    cert_uses: PMap[str, int] = field(default_factory=PMap)  # certificate -> this fleet's listeners serving it


class _SelfRefs(Mapping[str, tuple[str]]):
    """Each EDS cluster references the endpoints of its own name: a view, not a copy."""

    __slots__ = ("endpoints",)

    def __init__(self, endpoints: Mapping[str, Entry]) -> None:
        self.endpoints = endpoints

    def __getitem__(self, key: str) -> tuple[str]:
        if key not in self.endpoints:
            raise KeyError(key)
        return (key,)

    def __contains__(self, key: object) -> bool:
        return key in self.endpoints

    def __iter__(self) -> Iterator[str]:
        return iter(self.endpoints)

    def __len__(self) -> int:
        return len(self.endpoints)


class _Both(Mapping[str, frozenset[str]]):
    """Two reference maps with distinct keys read as one (a fleet's listeners' certificates
    and every cluster's client certificate)."""

    __slots__ = ("a", "b")

    def __init__(self, a: Mapping[str, frozenset[str]], b: Mapping[str, frozenset[str]]) -> None:
        self.a, self.b = a, b

    def __getitem__(self, key: str) -> frozenset[str]:
        hit = self.a.get(key)
        return self.b[key] if hit is None else hit

    def __contains__(self, key: object) -> bool:
        return key in self.a or key in self.b

    def __iter__(self) -> Iterator[str]:
        return itertools.chain(self.a, self.b)

    def __len__(self) -> int:
        return len(self.a) + len(self.b)


def _index(edit: PMapEdit[str, frozenset[str]], keys: Iterable[str], user: str, add: bool) -> None:
    """Add `user` to (or take it from) the users of each of `keys` in a reverse index."""
    for k in keys:
        users = edit.get(k, frozenset())
        users = users | {user} if add else users - {user}
        if users:
            edit[k] = users
        else:
            edit.pop(k)


def _count(edit: PMapEdit[str, int], key: str, delta: int) -> None:
    n = edit.get(key, 0) + delta
    if n:
        edit[key] = n
    else:
        edit.pop(key)


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
        self._state = _State()
        self._fleets: dict[str, _Fleet] = {}
        self._sni: dict[str, tuple[int, tuple[str, ...]]] = {}  # certificate -> (mod revision, SNI names)
        self._ring_interest: dict[object, frozenset[str]] = {}  # subscriber -> cluster names, "*" = all
        self._ring_queue: dict[
            str, tuple[Cluster, list[Backend], int]
        ] = {}  # cluster -> (cluster, backends, revision) to build
        self._ring_worker: asyncio.Task[None] | None = None
        self._fleet_snapshots: dict[str, Snapshot] = {}
        self._drained: frozenset[str] = frozenset()
        self._sheds: dict[str, tuple[int, ...]] = {}
        # What changed since the last published build (kept when a build is rejected).
        self._dirty_clusters: set[str] = set()
        self._dirty_listeners: set[str] = set()
        self._dirty_routes: set[str] = set()
        self._dirty_secrets: set[str] = set()
        self._dirty_fleets: set[str] = set()
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
            if fleet not in self._fleets:
                self._fleets[fleet] = self._derive_fleet(fleet, None, self._state, self._state)
            snap = self._fleet_snapshot(fleet, self._fleets[fleet], self._state)
            self._fleet_snapshots[fleet] = snap
        return snap

    @property
    def _listeners(self) -> Mapping[str, _Listener]:
        return self._state.listeners

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
            if stored is not None and name not in self._state.rings and res.hashes(stored.obj):
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
            old = self._state.rings.get(name)
            if old is not None and old.version == entry.version:
                continue  # same ring: nothing to send anyone
            rings = self._state.rings.edit()
            rings[name] = entry
            self._state = dataclasses.replace(self._state, rings=rings.done())
            self._republish()

    def _republish(self) -> None:
        """Publish the current resources again at the same revision (a ring finished)."""
        self._fleet_snapshots = {f: self._fleet_snapshot(f, fs, self._state) for f, fs in self._fleets.items()}
        for fn in list(self._watchers):
            fn()

    # -- change intake ---------------------------------------------------------------------

    def _on_change(self, revision: int, changed: set[Ref]) -> None:
        for ref in changed:
            if ref.kind == Kind.CLUSTER:
                self._dirty_clusters.add(ref.name)  # route configurations sending to it are checked
            elif ref.kind == Kind.BACKEND:
                self._dirty_clusters.add(ref.cluster or "")
            elif ref.kind == Kind.CERTIFICATE:
                self._dirty_secrets.add(ref.name)  # and the listeners serving it (SNI names)
            elif ref.kind == Kind.FLEET:
                self._dirty_fleets.add(ref.name)
            elif ref.kind == Kind.LISTENER:
                self._dirty_listeners.add(ref.name)
            elif ref.kind == Kind.ROUTE:
                self._dirty_routes.add(ref.name)
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
        v = self.view
        if self.ready:
            old = self._state
            clusters, listeners, routes = self._dirty_clusters, set(self._dirty_listeners), self._dirty_routes
            certificates, fleets_changed = self._dirty_secrets, self._dirty_fleets
        else:  # the first build: everything, from nothing
            old = _State()
            clusters, listeners, routes = set(v.clusters), set(v.listeners), set(v.routes)
            certificates, fleets_changed = set(v.certificates), set(v.fleets)
        s = _Edits(old)
        rebuilt = {"cds": 0, "eds": 0, "lds": 0, "rds": 0}
        ring_inputs = self._build_clusters(s, clusters, rebuilt)
        secrets_touched = self._build_secrets(s, certificates)
        # Listeners serving a changed certificate carry its SNI names: rebuilt too.
        for c in certificates:
            listeners.update(u for u in old.cert_users.get(c, ()) if not u.startswith(_CLUSTER_USER))
        route_configs = self._build_listeners(s, listeners, rebuilt)
        route_configs |= self._move_routes(s, routes)
        self._build_route_configs(s, route_configs, rebuilt)
        new = s.done()
        # The references this build can have broken: those of what it rebuilt, and those
        # pointing at what it changed (found through the reverse indexes).
        users = {_CLUSTER_USER + c for c in clusters}
        for c in certificates:
            users.update(new.cert_users.get(c, ()))
        parents = {
            res.CLUSTER_TYPE: clusters,
            res.LISTENER_TYPE: listeners | route_configs,
            res.SECRET_TYPE: users | listeners,
            res.ROUTE_TYPE: {
                rc.name
                for name in itertools.chain(route_configs, *(new.cluster_users.get(c, ()) for c in clusters))
                if (rc := new.routes.get(name)) is not None
            },
        }
        revision = v.revision
        drained, sheds = frozenset(v.drained), dict(v.shed)
        # Derive and check every fleet this cache serves before publishing anything.
        certs_changed = certificates | secrets_touched | s.cluster_certs_touched
        fleets: dict[str, _Fleet] = {}
        snaps: dict[str, Snapshot] = {}
        try:
            for f in set(self._fleet_snapshots) | {ALL_FLEETS}:
                prior = self._fleets.get(f) if self.ready else None
                touched = (listeners | route_configs, certs_changed, f in fleets_changed)
                fleets[f] = fs = self._derive_fleet(f, prior, old, new, *touched)
                snaps[f] = snap = self._fleet_snapshot(f, fs, new, revision, drained, sheds)
                snap.check(None if prior is None else parents)
        except InconsistentSnapshot as exc:
            # Keep serving the last good snapshot (the changes stay pending): a later change
            # may complete the picture.
            self.stats.rejected += 1
            self.stats.last_error = str(exc)
            log.error("not publishing revision %d: %s", revision, exc)
            return
        self._state, self._fleets = new, fleets
        self._drained, self._sheds = drained, sheds
        self.revision = revision
        self._fleet_snapshots = snaps
        self._dirty_clusters, self._dirty_listeners, self._dirty_routes = set(), set(), set()
        self._dirty_secrets, self._dirty_fleets = set(), set()
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

    def _build_clusters(
        self, s: _Edits, names: Iterable[str], rebuilt: dict[str, int]
    ) -> dict[str, tuple[Cluster, list[Backend], int]]:
        """CDS and EDS entries (and client certificates) of the changed clusters; returns the
        hash rings to build once published."""
        v = self.view
        wanted = self._wanted_rings()
        ring_inputs = {}
        for name in names:
            stored = v.clusters.get(name)
            if stored is None or not res.hashes(stored.obj):
                s.rings.pop(name)
                self._ring_queue.pop(name, None)
            cert = stored.obj.tls.client_certificate if stored is not None and stored.obj.tls is not None else None
            old_cert = s.cluster_secrets.get(name)
            if cert != old_cert:
                s.cluster_certs_touched.update(c for c in (cert, old_cert) if c is not None)
                user = _CLUSTER_USER + name
                if old_cert is not None:
                    s.cluster_secrets.pop(name)
                    s.cluster_secret_refs.pop(user)
                    _count(s.cluster_cert_uses, old_cert, -1)
                    _index(s.cert_users, (old_cert,), user, add=False)
                if cert is not None:
                    s.cluster_secrets[name] = cert
                    s.cluster_secret_refs[user] = frozenset({cert})
                    _count(s.cluster_cert_uses, cert, 1)
                    _index(s.cert_users, (cert,), user, add=True)
            if stored is None:
                s.clusters.pop(name)
                s.endpoints.pop(name)
                continue
            members = [m.obj for m in v.backends.get(name, {}).values()]
            if res.hashes(stored.obj) and (name in wanted or "*" in wanted):
                ring_inputs[name] = (stored.obj, members, v.revision)
            e = make_entry(res.CLUSTER_TYPE, name, res.cluster_resource(stored.obj, members))
            old = s.clusters.get(name)
            if old is None or old.version != e.version:
                s.clusters[name] = e
                rebuilt["cds"] += 1
            if res.uses_dns(stored.obj, members):
                s.endpoints.pop(name)
            else:
                ee = make_entry(res.ENDPOINT_TYPE, name, res.load_assignment(name, members))
                old = s.endpoints.get(name)
                if old is None or old.version != ee.version:
                    s.endpoints[name] = ee
                    rebuilt["eds"] += 1
        return ring_inputs

    def _build_secrets(self, s: _Edits, names: Iterable[str]) -> set[str]:
        """SDS entries of the changed certificates; returns those whose entry changed."""
        v = self.view
        for name in names:
            stored = v.certificates.get(name)
            if stored is None:
                s.secrets.pop(name)
                continue
            try:
                key = keyring().open(name, stored.obj.private_key)
            except KeyUnavailable as exc:
                # Not servable here (wrong or missing KEK): listeners that need it make the
                # snapshot inconsistent, and the last good one stays published.
                log.error("%s", exc)
                s.secrets.pop(name)
                continue
            s.secrets[name] = make_entry(res.SECRET_TYPE, name, res.secret_resource(stored.obj, key))
        return set(s.secrets.changed)

    def _build_listeners(self, s: _Edits, names: Iterable[str], rebuilt: dict[str, int]) -> set[str]:
        """LDS entries of the changed listeners; returns the listeners whose route
        configuration must be built or dropped with them."""
        v = self.view
        route_configs: set[str] = set()
        for name in names:
            stored = v.listeners.get(name)
            old = s.listeners.get(name)
            if old is not None:
                _index(s.cert_users, old.certificates, name, add=False)
            if stored is None:
                s.listeners.pop(name)
                route_configs.add(name)
                continue
            lst = stored.obj
            sni = None
            certificates: frozenset[str] = frozenset()
            if lst.tls is not None:
                certificates = frozenset(lst.tls.certificates)
                sni = {c: self._sni_names(c) for c in lst.tls.certificates if c in v.certificates}
            msg = res.listener_resource(lst, sni)
            e = make_entry(res.LISTENER_TYPE, name, msg)
            rds = res.route_config_name(name) if lst.protocol == "http" else None
            if old is None or old.entry.version != e.version:
                rebuilt["lds"] += 1
            if old is not None and old.entry.version == e.version and old.fleets == tuple(lst.fleets):
                e = old.entry  # the same: shared, so tables see no change
            s.listeners[name] = _Listener(
                e, tuple(lst.fleets), rds, res.listener_base(lst, msg), certificates, lst.max_connections
            )
            _index(s.cert_users, certificates, name, add=True)
            if old is None or old.rds != rds or (rds is not None and name not in s.routes):
                route_configs.add(name)
        return route_configs

    def _move_routes(self, s: _Edits, names: Iterable[str]) -> set[str]:
        """Index the changed routes by listener; returns the listeners they left or joined."""
        v = self.view
        touched: set[str] = set()
        for name in names:
            stored = v.routes.get(name)
            before = s.route_listener.get(name)
            after = stored.obj.listener if stored is not None else None
            touched.update(n for n in (before, after) if n is not None)
            if before == after:
                continue
            if before is not None:
                s.route_listener.pop(name)
                _index(s.listener_routes, (before,), name, add=False)
            if after is not None:
                s.route_listener[name] = after
                _index(s.listener_routes, (after,), name, add=True)
        return touched

    def _build_route_configs(self, s: _Edits, listeners: Iterable[str], rebuilt: dict[str, int]) -> None:
        """RDS entries of the listeners whose routes (or protocol) changed."""
        v = self.view
        for name in listeners:
            old = s.routes.get(name)
            if old is not None:
                _index(s.cluster_users, old.clusters, name, add=False)
                s.limited.pop(old.name)
            lst = s.listeners.get(name)
            if lst is None or lst.rds is None:
                s.routes.pop(name)
                continue
            rs = [v.routes[r].obj for r in sorted(s.listener_routes.get(name, ())) if r in v.routes]
            e = make_entry(res.ROUTE_TYPE, lst.rds, res.route_configuration(name, rs))
            if fleet_limited(rs):
                s.limited[lst.rds] = RouteBase(name, tuple(rs))
            clusters = frozenset(c for r in rs for c in r.clusters)
            if old is None or old.entry.version != e.version:
                rebuilt["rds"] += 1
            elif old.name == lst.rds:
                e = old.entry
            s.routes[name] = _RouteConfig(lst.rds, e, clusters)
            _index(s.cluster_users, clusters, name, add=True)

    def _sni_names(self, certificate: str) -> tuple[str, ...]:
        """A certificate's SNI names, parsed once per stored revision."""
        stored = self.view.certificates[certificate]
        hit = self._sni.get(certificate)
        if hit is None or hit[0] != stored.mod_revision:
            hit = self._sni[certificate] = (stored.mod_revision, sni_names(stored.obj))
        return hit[1]

    def _derive_fleet(
        self,
        fleet: str,
        prior: _Fleet | None,
        old: _State,
        new: _State,
        listeners: Iterable[str] = (),
        certificates: Iterable[str] = (),
        intent_changed: bool = False,
    ) -> _Fleet:
        """`fleet`'s share of `new`, from its share of `old` (`prior`) and what changed
        between them: listeners (with their route configurations), certificates, its own
        intent. Without a prior share, everything."""
        if prior is None:
            prior, old, listeners = _Fleet(), _State(), new.listeners
            certificates = itertools.chain(new.cluster_cert_uses, new.cert_users)
            intent_changed = True
        lds, rds, sds = prior.listeners.edit(), prior.routes.edit(), prior.secrets.edit()
        bases, lrefs, rrefs = prior.bases.edit(), prior.listener_refs.edit(), prior.route_refs.edit()
        srefs, uses = prior.secret_refs.edit(), prior.cert_uses.edit()
        certs = set(certificates)
        limits_changed = intent_changed
        for name in listeners:
            before, after = old.listeners.get(name), new.listeners.get(name)
            was = before is not None and before.serves(fleet)
            now = after is not None and after.serves(fleet)
            if not was and not now:
                continue
            if was:
                assert before is not None
                for c in before.certificates:
                    _count(uses, c, -1)
                certs |= before.certificates
                if before.rds is not None and not (now and after is not None and after.rds == before.rds):
                    rds.pop(before.rds)
                    rrefs.pop(before.rds)
            if now:
                assert after is not None
                lds[name] = after.entry
                bases[name] = after.base
                for c in after.certificates:
                    _count(uses, c, 1)
                certs |= after.certificates
                if after.certificates:
                    srefs[name] = after.certificates
                else:
                    srefs.pop(name)
                if after.rds is not None:
                    lrefs[name] = (after.rds,)
                    rc = new.routes.get(name)
                    if rc is not None and rc.name == after.rds:
                        rds[after.rds] = rc.entry
                        rrefs[after.rds] = rc.clusters
                    else:
                        rds.pop(after.rds)
                        rrefs.pop(after.rds)
                else:
                    lrefs.pop(name)
            else:
                for edit in (lds, bases, lrefs, srefs):
                    edit.pop(name)
            limits_changed = limits_changed or (
                was != now or before is None or after is None or before.max_connections != after.max_connections
            )
        for c in certs:
            e = new.secrets.get(c)
            if e is not None and (uses.get(c, 0) > 0 or new.cluster_cert_uses.get(c, 0) > 0):
                sds[c] = e
            else:
                sds.pop(c)
        lds_done = lds.done()
        runtime, admission = prior.runtime, prior.admission
        if limits_changed:
            stored = self.view.fleets.get(fleet)
            intent = stored.obj if stored is not None else None
            limits = {n: new.listeners[n].max_connections for n in lds_done}
            rt = runtime.edit()
            rt[res.RUNTIME_LAYER] = make_entry(
                res.RUNTIME_TYPE, res.RUNTIME_LAYER, res.runtime_resource(intent, limits)
            )
            runtime = rt.done()
            if intent_changed:
                ad = admission.edit()
                ad[res.ADMISSION] = make_entry(res.EXTENSION_TYPE, res.ADMISSION, res.admission_resource(intent))
                admission = ad.done()
        return _Fleet(
            lds_done,
            rds.done(),
            sds.done(),
            runtime,
            admission,
            bases.done(),
            lrefs.done(),
            rrefs.done(),
            srefs.done(),
            uses.done(),
        )

    def _fleet_snapshot(
        self,
        fleet: str,
        fs: _Fleet,
        state: _State,
        revision: int | None = None,
        drained: frozenset[str] | None = None,
        sheds: dict[str, tuple[int, ...]] | None = None,
    ) -> Snapshot:
        snap = Snapshot(fleet=fleet, revision=self.revision if revision is None else revision)
        snap.resources = {
            res.RUNTIME_TYPE: fs.runtime,
            res.EXTENSION_TYPE: fs.admission,
            res.CLUSTER_TYPE: state.clusters,
            res.ENDPOINT_TYPE: state.endpoints,
            res.LISTENER_TYPE: fs.listeners,
            res.ROUTE_TYPE: fs.routes,
            res.HASH_RING_TYPE: state.rings,
            res.SECRET_TYPE: fs.secrets,
        }
        snap.pending = {res.HASH_RING_TYPE: self._ring_queue.keys()}
        snap.drained = self._drained if drained is None else drained
        snap.listener_bases = fs.bases
        snap.sheds = self._sheds if sheds is None else sheds
        if state.limited:
            snap.route_bases = {n: b for n, b in state.limited.items() if n in fs.routes}
        snap.shares = dict(self.view.shares)  # (each fleet's division is replaced whole, never edited)
        snap.references = {
            res.CLUSTER_TYPE: _SelfRefs(state.endpoints),
            res.LISTENER_TYPE: fs.listener_refs,
            res.ROUTE_TYPE: fs.route_refs,
            res.SECRET_TYPE: _Both(fs.secret_refs, state.cluster_secret_refs),
        }
        return snap


_CLUSTER_USER = "cluster "  # how a cluster is named among a certificate's users


class _Edits:
    """One build's edits of every part of a `_State`."""

    def __init__(self, base: _State) -> None:
        self.clusters = base.clusters.edit()
        self.endpoints = base.endpoints.edit()
        self.rings = base.rings.edit()
        self.secrets = base.secrets.edit()
        self.listeners = base.listeners.edit()
        self.routes = base.routes.edit()
        self.route_listener = base.route_listener.edit()
        self.listener_routes = base.listener_routes.edit()
        self.cluster_users = base.cluster_users.edit()
        self.cluster_secrets = base.cluster_secrets.edit()
        self.cluster_secret_refs = base.cluster_secret_refs.edit()
        self.cluster_cert_uses = base.cluster_cert_uses.edit()
        self.cert_users = base.cert_users.edit()
        self.limited = base.limited.edit()
        # Certificates some cluster started or stopped presenting: every fleet looks again.
        self.cluster_certs_touched: set[str] = set()

    def done(self) -> _State:
        return _State(**{f.name: getattr(self, f.name).done() for f in dataclasses.fields(_State)})


def _ring_entry(cluster: Cluster, backends: list[Backend], revision: int) -> Entry:
    msg, version = res.hash_ring(cluster, backends, revision)
    return make_entry(res.HASH_RING_TYPE, cluster.name, msg, version)
