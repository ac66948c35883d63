"""The intent store: typed reads and all-or-nothing writes of intent in etcd.

Every write, single or batch, follows one path, and reads only what it touches (its cost does
not grow with the number of objects of a kind):

1. read what it depends on at one etcd revision R, in a few rounds (`_needs`): the target
   keys, what their new versions reference, the clusters its backends belong to; then, where
   the stored objects say it matters, the users of a changed object and the listeners on a
   changed port, found through the reference index (`index.py`), and those objects;
2. apply the operations in memory, in order, checking create-only / If-Match / existence;
3. validate the result on what was read (`integrity.check`);
4. commit one transaction, which also updates the reference index, whose compares assert that
   nothing it read has changed since R (key by key, and "no key newer than R" under each
   prefix read). If another writer got in between, go back to 1 (a few times), so a
   conflicting write is never committed on stale facts.

Writes that arrive together share steps 1 and 4 (`commit.py`, group commit): one read for
all, one transaction in which each is a nested transaction with its own compares.

Unchanged objects are not rewritten, so a no-op PUT produces no watch event and no push.
"""

from __future__ import annotations

import base64
import builtins
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aetcd import rpc

from controlplane.etcd import Etcd, prefix_end
from controlplane.intent import index, integrity
from controlplane.intent.commit import GroupCommit, Planned
from controlplane.intent.errors import (
    AlreadyExists,
    FieldError,
    InvalidPageToken,
    NotFound,
    PageTokenExpired,
    PreconditionFailed,
    StoreError,
    ValidationFailed,
    WriteConflict,
)
from controlplane.intent.keyspace import Keyspace, Ref, Stored
from controlplane.intent.model import Backend, Certificate, Cluster, Fleet, Intent, Kind, Listener, Protocol, Route

_MAX_ATTEMPTS = 8
_READ_ROUNDS = 6  # a write's reads settle in four (`_needs`)
_WORLD_KINDS = (Kind.CLUSTER, Kind.LISTENER, Kind.ROUTE, Kind.CERTIFICATE)


Outcome = Literal["created", "updated", "unchanged", "deleted", "replaced"]


@dataclass(frozen=True)
class Op:
    """One change. `put` creates or replaces, `create` only creates, `replace` only
    replaces, `delete` removes.

    `if_match` is the mod_revision the caller last saw (its ETag); 0 means "must not exist".
    """

    action: Literal["create", "put", "replace", "delete"]
    ref: Ref
    obj: Intent | None = None
    if_match: int | None = None
    pointer: str = ""

    def __post_init__(self) -> None:
        if (self.action == "delete") != (self.obj is None):
            raise ValueError("delete takes no object; create and put need one")


@dataclass(frozen=True)
class ReplaceBackends:
    """Make a cluster's member set exactly `backends` (adds, updates and removes)."""

    cluster: str
    backends: tuple[Backend, ...]
    pointer: str = ""


AnyOp = Op | ReplaceBackends


@dataclass
class OpResult:
    ref: Ref | None
    outcome: Outcome
    obj: Intent | None = None
    mod_revision: int = 0
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


@dataclass
class WriteResult:
    revision: int
    results: list[OpResult]
    dry_run: bool = False


@dataclass
class Page:
    items: list[Stored[Any]]
    revision: int
    next_page_token: str | None


@dataclass
class _Entry:
    obj: Intent
    mod_revision: int = 0


@dataclass
class _State:
    """What a round of writes read, all at `revision`: the objects found (by key), the
    mod_revision of every key found, which single keys were read (found or not) and the
    keys each prefix read held."""

    revision: int = 0
    entries: dict[bytes, _Entry] = field(default_factory=dict)
    mods: dict[bytes, int] = field(default_factory=dict)
    keys: set[bytes] = field(default_factory=set)
    prefixes: dict[bytes, builtins.list[bytes]] = field(default_factory=dict)

    def obj(self, key: bytes) -> Intent | None:
        e = self.entries.get(key)
        return e.obj if e is not None else None


@dataclass
class _Needs:
    """What one write depends on. Kind None: not an object (index keys)."""

    keys: dict[bytes, Kind | None] = field(default_factory=dict)
    prefixes: dict[bytes, Kind | None] = field(default_factory=dict)
    users: dict[Ref, bytes] = field(default_factory=dict)  # a changed object -> its users' prefix
    ports: dict[str, bytes] = field(default_factory=dict)  # a changed listener -> its port's prefix


def _may_break_users(old: Intent | None, new: Intent | None) -> bool:
    """Could replacing `old` by `new` break an object that uses it?"""
    if old is None:
        return False  # nothing uses what does not exist
    if new is None:
        return True
    if isinstance(old, Cluster) and isinstance(new, Cluster):
        # (an http2 cluster turning http1 breaks a listener tracing to it)
        return (
            (new.protocol == Protocol.TCP != old.protocol)
            or (old.hashing and not new.hashing)
            or (old.protocol == Protocol.HTTP2 != new.protocol)
        )
    if isinstance(old, Listener) and isinstance(new, Listener):
        return old.protocol != new.protocol
    return old != new  # a certificate: the names it serves by SNI may change


def _moved(old: Intent | None, new: Listener) -> bool:
    """Does `new` bind anywhere `old` did not (so its port must be checked again)?"""
    if not isinstance(old, Listener):
        return True
    return (old.address, old.port, sorted(old.fleets)) != (new.address, new.port, sorted(new.fleets))


@dataclass
class _Plan:
    revision: int
    results: list[OpResult]
    compares: list[rpc.Compare]
    writes: list[rpc.RequestOp]


def _conflicted() -> WriteConflict:
    return WriteConflict("the objects kept changing under this write; retry it")


def _check_discovery(cluster: Cluster | None, backend: Backend, pointer: str) -> None:
    """A hostname backend needs a DNS cluster: EDS carries IP addresses only."""
    if cluster is not None and cluster.discovery == "eds" and not backend.is_ip:
        raise ValidationFailed(
            [
                FieldError(
                    pointer,
                    f"{backend.address!r} is a hostname and cluster {cluster.name!r} uses EDS, which carries IP"
                    " addresses only: give an IP address, or make the cluster a DNS cluster"
                    ' (PUT the cluster with "discovery": "dns"; Envoy then resolves its backends itself)',
                )
            ]
        )


def _cmp_mod(key: bytes, op: int, revision: int, range_end: bytes = b"") -> rpc.Compare:
    return rpc.Compare(key=key, range_end=range_end, target=rpc.Compare.MOD, result=op, mod_revision=revision)


class Store:
    """Reads and writes intent under a keyspace. Safe for concurrent use."""

    def __init__(self, etcd: Etcd, keyspace: Keyspace | None = None) -> None:
        self.etcd = etcd
        self.keys = keyspace or Keyspace(etcd.config.prefix)
        self.index = index.Index(self.keys)
        self._commits: GroupCommit[Sequence[AnyOp], WriteResult] = GroupCommit(
            self._read, self._plan_for, self.etcd.txn, _MAX_ATTEMPTS, _conflicted
        )

    # -- reads -----------------------------------------------------------------------------

    async def get(self, ref: Ref) -> Stored[Any]:
        resp = await self.etcd.range(self.keys.key(ref))
        if not resp.kvs:
            if ref.cluster is not None:
                # A backend of a cluster that does not exist: say which is missing.
                cluster = await self.etcd.range(self.keys.key(Ref(Kind.CLUSTER, ref.cluster)), count_only=True)
                if cluster.count == 0:
                    raise NotFound("cluster", ref.cluster)
            raise NotFound(str(ref.kind), ref.name if ref.cluster is None else f"{ref.cluster}/{ref.name}")
        kv = resp.kvs[0]
        return Stored(self.keys.decode(ref.kind, kv.value), kv.mod_revision, kv.create_revision)

    async def revision(self) -> int:
        resp = await self.etcd.range(self.keys.root, count_only=True)
        return int(resp.header.revision)

    async def list(
        self, kind: Kind, *, cluster: str | None = None, limit: int = 100, page_token: str | None = None
    ) -> Page:
        """One page of a kind in name order, all pages read at the first page's revision."""
        folder = self.keys.folder(kind, cluster)
        start, revision = folder, 0
        if page_token:
            start, revision = self._parse_token(page_token, folder)
        if kind == Kind.BACKEND:
            assert cluster is not None
            # The cluster and its members at one revision: a missing cluster is a 404, not [].
            req = rpc.TxnRequest(
                success=[
                    rpc.RequestOp(
                        request_range=rpc.RangeRequest(
                            key=self.keys.key(Ref(Kind.CLUSTER, cluster)), revision=revision, count_only=True
                        )
                    ),
                    rpc.RequestOp(
                        request_range=rpc.RangeRequest(
                            key=start, range_end=prefix_end(folder), revision=revision, limit=limit
                        )
                    ),
                ]
            )
            txn = await self.etcd.txn(req, read_only=True)
            if txn.responses[0].response_range.count == 0:
                raise NotFound("cluster", cluster)
            resp = txn.responses[1].response_range
            header_rev = txn.header.revision
        else:
            resp = await self.etcd.range(start, prefix_end(folder), revision=revision, limit=limit)
            header_rev = resp.header.revision
        read_rev = revision or header_rev
        items = [Stored(self.keys.decode(kind, kv.value), kv.mod_revision, kv.create_revision) for kv in resp.kvs]
        token = None
        if resp.more and resp.kvs:
            token = self._make_token(resp.kvs[-1].key + b"\0", read_rev, folder)
        return Page(items, read_rev, token)

    @staticmethod
    def _make_token(start: bytes, revision: int, folder: bytes) -> str:
        doc = {"s": start[len(folder) :].decode(), "r": revision}
        return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode().rstrip("=")

    @staticmethod
    def _parse_token(token: str, folder: bytes) -> tuple[bytes, int]:
        try:
            doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            start, rev = doc["s"], doc["r"]
            if not isinstance(start, str) or not isinstance(rev, int) or rev <= 0 or "/" in start.rstrip("\0"):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise InvalidPageToken("page_token is not one this API issued for this listing") from None
        return folder + start.encode(), rev

    # -- writes ----------------------------------------------------------------------------

    async def apply(self, ops: Sequence[AnyOp], *, dry_run: bool = False) -> WriteResult:
        """Apply `ops` atomically (all or none) and return etcd's new revision."""
        if not ops:
            return WriteResult(await self.revision(), [], dry_run)
        if dry_run:
            plan = self._plan(ops, await self._read([ops]))
            return WriteResult(plan.revision, plan.results, dry_run)
        return await self._commits.submit(ops)

    def _plan_for(self, ops: Sequence[AnyOp], state: object, attempts: int) -> Planned[WriteResult] | WriteResult:
        assert isinstance(state, _State)
        plan = self._plan(ops, state)
        if not plan.writes:
            # Nothing changed: the revision that holds this intent is the objects' own, not
            # etcd's head (which may only have moved for unrelated keys).
            return WriteResult(max((r.mod_revision for r in plan.results), default=0) or plan.revision, plan.results)

        def answer(revision: int) -> WriteResult:
            for r in plan.results:
                if r.outcome in ("created", "updated", "replaced"):
                    r.mod_revision = revision
            return WriteResult(revision, plan.results)

        return Planned(plan.compares, plan.writes, answer)

    def _needs(self, ops: Sequence[AnyOp], st: _State) -> _Needs:
        """What `ops` depend on, given what has been read so far (`st`).

        Reading goes in rounds at one revision (`_read`): first the targets, what their new
        versions reference and the index's version; then, where the stored objects say it may
        matter, the users of a changed object and the listeners of a changed port (index
        prefixes, keys only); then those objects themselves and, for a listener that uses a
        changed certificate, its other certificates. Never a whole kind."""
        need = _Needs()
        keys, prefixes = need.keys, need.prefixes
        last: dict[bytes, Op] = {}  # the last operation on each key of the cross-referencing kinds
        for op in ops:
            if isinstance(op, ReplaceBackends):
                keys[self.keys.key(Ref(Kind.CLUSTER, op.cluster))] = Kind.CLUSTER
                prefixes[self.keys.folder(Kind.BACKEND, op.cluster)] = Kind.BACKEND
                continue
            key = self.keys.key(op.ref)
            keys[key] = op.ref.kind
            if op.ref.kind == Kind.BACKEND:
                keys[self.keys.key(Ref(Kind.CLUSTER, op.ref.cluster))] = Kind.CLUSTER  # type: ignore[arg-type]
            elif op.ref.kind in _WORLD_KINDS:
                last[key] = op
                for target in index.targets(op.obj) if op.obj is not None else ():
                    keys[self.keys.key(target)] = target.kind
        if last:
            keys[self.index.version] = None
        for key, op in last.items():
            if key not in st.keys:
                continue  # what is stored decides what else to read: next round
            old, new = st.obj(key), op.obj
            if op.ref.kind in index.USED_KINDS and _may_break_users(old, new):
                prefixes[need.users.setdefault(op.ref, self.index.users(op.ref))] = None
            if isinstance(new, Listener) and _moved(old, new):
                prefixes[need.ports.setdefault(op.ref.name, self.index.port(new.port))] = None
            if (
                isinstance(new, Cluster)
                and new.discovery == "eds"
                and isinstance(old, Cluster)
                and old.discovery != "eds"
            ):
                # A DNS cluster turning EDS may hold no hostname backend: its members are checked.
                prefixes[self.keys.folder(Kind.BACKEND, op.ref.name)] = Kind.BACKEND
        for prefix in [p for p, kind in prefixes.items() if kind is None]:
            for entry in st.prefixes.get(prefix, ()):
                user = self.index.user_of(entry)
                user_key = self.keys.key(user)
                keys[user_key] = user.kind
                lst = st.obj(user_key)
                if isinstance(lst, Listener) and lst.tls is not None:
                    # Its TLS side is checked whole (two certificates may not claim one name).
                    for c in lst.tls.certificates:
                        keys[self.keys.key(Ref(Kind.CERTIFICATE, c))] = Kind.CERTIFICATE
        return need

    async def _read(self, batch: builtins.list[Sequence[AnyOp]]) -> _State:
        """One consistent read (at one revision, in a few rounds) of what `batch` depends on."""
        for _ in range(_MAX_ATTEMPTS):
            st = _State()
            try:
                for _round in range(_READ_ROUNDS):
                    keys: dict[bytes, Kind | None] = {}
                    prefixes: dict[bytes, Kind | None] = {}
                    for ops in batch:
                        need = self._needs(ops, st)
                        keys.update((k, v) for k, v in need.keys.items() if k not in st.keys)
                        prefixes.update((p, v) for p, v in need.prefixes.items() if p not in st.prefixes)
                    if not keys and not prefixes:
                        return st
                    await self._read_into(st, keys, prefixes)
                    if self.index.version in st.keys and self.index.version not in st.mods:
                        break  # an etcd written before the index: build it, then read again
                else:
                    raise StoreError(f"a write's reads did not settle in {_READ_ROUNDS} rounds")
            except PageTokenExpired:
                continue  # etcd compacted the revision between two rounds: read again
            await self.index.build(self.etcd)
        raise _conflicted()

    async def _read_into(self, st: _State, keys: dict[bytes, Kind | None], prefixes: dict[bytes, Kind | None]) -> None:
        reads = [
            rpc.RequestOp(
                request_range=rpc.RangeRequest(
                    key=p, range_end=prefix_end(p), revision=st.revision, keys_only=kind is None
                )
            )
            for p, kind in prefixes.items()
        ]
        reads += [rpc.RequestOp(request_range=rpc.RangeRequest(key=k, revision=st.revision)) for k in keys]
        resp = await self.etcd.txn(rpc.TxnRequest(success=reads), read_only=True)
        st.revision = st.revision or resp.header.revision
        kinds = [*prefixes.values(), *keys.values()]
        found = [(kind, r.response_range.kvs) for kind, r in zip(kinds, resp.responses, strict=True)]
        for prefix, (_, kvs) in zip(prefixes, found, strict=False):
            st.prefixes[prefix] = [kv.key for kv in kvs]
        st.keys.update(keys)
        for kind, kvs in found:
            for kv in kvs:
                st.mods[kv.key] = kv.mod_revision
                if kind is not None:
                    st.entries[kv.key] = _Entry(self.keys.decode(kind, kv.value), kv.mod_revision)

    def _plan(self, ops: Sequence[AnyOp], st: _State) -> _Plan:
        # `st` may hold more than this write needs (the round's other writes' reads): the
        # write sees, and its compares name, only what `_needs` names.
        need = self._needs(ops, st)
        revision = st.revision
        mine = [*need.keys, *(k for p in need.prefixes for k in st.prefixes[p])]
        seen = {k: st.entries[k] for k in mine if k in st.entries}
        final: dict[bytes, Intent | None] = {k: e.obj for k, e in seen.items()}
        deleted_clusters: set[str] = set()
        results: list[OpResult] = []

        def current(ref: Ref) -> Intent | None:
            return final.get(self.keys.key(ref))

        def label(ref: Ref) -> str:
            return ref.name if ref.cluster is None else f"{ref.cluster}/{ref.name}"

        for op in ops:
            if isinstance(op, ReplaceBackends):
                cref = Ref(Kind.CLUSTER, op.cluster)
                if current(cref) is None:
                    raise NotFound("cluster", op.cluster)
                folder = self.keys.folder(Kind.BACKEND, op.cluster)
                wanted = {self.keys.key(Ref(Kind.BACKEND, b.name, op.cluster)): b for b in op.backends}
                if len(wanted) != len(op.backends):
                    raise ValidationFailed([FieldError(op.pointer, "backend names must be unique in a cluster")])
                res = OpResult(None, "replaced")
                for key in [k for k in final if k.startswith(folder)]:
                    if key not in wanted and final[key] is not None:
                        res.removed.append(final[key].name)  # type: ignore[union-attr]
                        final[key] = None
                for i, b in enumerate(op.backends):
                    _check_discovery(current(cref), b, f"{op.pointer}/{i}/address")  # type: ignore[arg-type]
                for key, b in wanted.items():
                    old = final.get(key)
                    if old is None:
                        res.added.append(b.name)
                    elif old != b:
                        res.updated.append(b.name)
                    final[key] = b
                for lst in (res.added, res.removed, res.updated):
                    lst.sort()
                results.append(res)
                continue

            ref, key = op.ref, self.keys.key(op.ref)
            if ref.kind == Kind.BACKEND and current(Ref(Kind.CLUSTER, ref.cluster)) is None:  # type: ignore[arg-type]
                raise NotFound("cluster", ref.cluster)  # type: ignore[arg-type]
            existing = final.get(key)
            stored_rev = seen[key].mod_revision if key in seen and seen[key].obj is not None else 0
            if op.if_match is not None and op.if_match != stored_rev:
                if op.if_match == 0:
                    raise AlreadyExists(f"{ref} already exists")
                raise PreconditionFailed(
                    f"{ref} is at revision {stored_rev or 'none (it does not exist)'}, not {op.if_match}",
                    stored_rev or None,
                )
            if op.action == "create" and existing is not None:
                raise AlreadyExists(f"{ref} already exists")
            if op.action == "replace" and existing is None:
                raise NotFound(str(ref.kind), label(ref))
            if op.action == "delete":
                if existing is None:
                    raise NotFound(str(ref.kind), label(ref))
                final[key] = None
                if ref.kind == Kind.CLUSTER:
                    deleted_clusters.add(ref.name)
                results.append(OpResult(ref, "deleted", existing))
                continue
            assert op.obj is not None
            if op.obj.name != ref.name:
                raise ValidationFailed(
                    [FieldError(op.pointer + "/name", f"name {op.obj.name!r} does not match {ref.name!r}")]
                )
            if isinstance(op.obj, Backend):
                _check_discovery(current(Ref(Kind.CLUSTER, ref.cluster)), op.obj, op.pointer + "/address")  # type: ignore[arg-type]
            outcome: Outcome = "created" if existing is None else ("unchanged" if existing == op.obj else "updated")
            final[key] = op.obj
            if ref.kind == Kind.CLUSTER:
                deleted_clusters.discard(ref.name)
            results.append(OpResult(ref, outcome, op.obj, stored_rev if outcome == "unchanged" else 0))

        hostnames: dict[str, list[str]] = {}  # cluster -> its backends named by hostname (read or written)
        for k, v in final.items():
            if isinstance(v, Backend) and not v.is_ip and (at := self.keys.ref(k)) is not None and at.cluster:
                hostnames.setdefault(at.cluster, []).append(v.name)
        for op in ops:
            if isinstance(op, Op) and isinstance(op.obj, Cluster) and final.get(key := self.keys.key(op.ref)) is op.obj:
                named = sorted(hostnames.get(op.ref.name, ()))
                if op.obj.discovery == "eds" and named:
                    shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
                    raise ValidationFailed(
                        [
                            FieldError(
                                op.pointer + "/discovery",
                                f"cluster {op.ref.name!r} has backends named by hostname ({shown}); Envoy cannot"
                                " take hostnames over EDS: keep discovery dns, or give those backends IP addresses",
                            )
                        ]
                    )

        # Backends written after their cluster was deleted in the same batch were refused
        # above; backends of a cluster deleted later in the batch go with the cascade.
        changed = [k for k, v in final.items() if (seen[k].obj if k in seen else None) != v]
        world_refs = {k: r for k in need.keys if (r := self.keys.ref(k)) is not None and r.kind in _WORLD_KINDS}
        if any(k in world_refs for k in changed):
            self._check_world(ops, st, need, final, changed, world_refs)

        # Everything this write relied on must be exactly as read (0: still absent), and no
        # prefix it read may hold anything newer than the read (catches new keys too).
        compares = [_cmp_mod(k, rpc.Compare.EQUAL, st.mods.get(k, 0)) for k in sorted(need.keys)]
        compares += [_cmp_mod(p, rpc.Compare.LESS, revision + 1, prefix_end(p)) for p in sorted(need.prefixes)]

        writes: list[rpc.RequestOp] = []
        cascade = [self.keys.folder(Kind.BACKEND, c) for c in sorted(deleted_clusters)]
        stale: set[bytes] = set()
        fresh: set[bytes] = set()
        for key in sorted(changed):
            at = self.keys.ref(key)
            assert at is not None
            if at.kind in index.USER_KINDS:
                before = self.index.entries(at, seen[key].obj if key in seen else None)
                after = self.index.entries(at, final[key])
                stale |= before - after
                fresh |= after - before
            if any(key.startswith(f) for f in cascade):
                continue
            value = final[key]
            if value is None:
                writes.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
            else:
                put = rpc.PutRequest(key=key, value=self.keys.encode(at.kind, value))
                writes.append(rpc.RequestOp(request_put=put))
        for f in cascade:
            writes.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=f, range_end=prefix_end(f))))
        writes += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in sorted(stale - fresh)]
        writes += [rpc.RequestOp(request_put=rpc.PutRequest(key=k)) for k in sorted(fresh - stale)]
        return _Plan(revision, results, compares, writes)

    def _check_world(
        self,
        ops: Sequence[AnyOp],
        st: _State,
        need: _Needs,
        final: dict[bytes, Intent | None],
        changed: builtins.list[bytes],
        world_refs: dict[bytes, Ref],
    ) -> None:
        """The cross-object rules (`integrity.check`) on what this write read."""

        def known(kind: Kind) -> integrity.Known[Any]:
            return integrity.Known(r.name for r in world_refs.values() if r.kind == kind)

        world = integrity.World(known(Kind.CLUSTER), known(Kind.LISTENER), known(Kind.ROUTE), known(Kind.CERTIFICATE))
        tables: dict[Kind, dict[str, Any]] = {
            Kind.CLUSTER: world.clusters,
            Kind.LISTENER: world.listeners,
            Kind.ROUTE: world.routes,
            Kind.CERTIFICATE: world.certificates,
        }
        for k, at in world_refs.items():
            if (v := final.get(k)) is not None:
                dict.__setitem__(tables[at.kind], at.name, v)
        pointers = {
            (op.ref.kind, op.ref.name): op.pointer for op in ops if isinstance(op, Op) and op.ref.kind in _WORLD_KINDS
        }
        related = integrity.Related()
        for ref, prefix in need.users.items():
            users = {(u.kind, u.name) for u in map(self.index.user_of, st.prefixes[prefix])}
            related.users[(ref.kind, ref.name)] = users
        written: dict[int, set[str]] = {}  # port -> listeners this write leaves on it
        for op in ops:
            if isinstance(op, Op) and isinstance(lst := final.get(self.keys.key(op.ref)), Listener):
                written.setdefault(lst.port, set()).add(op.ref.name)
        for name, prefix in need.ports.items():
            port = world.listeners[name].port if name in world.listeners else 0
            stored = {self.index.user_of(k).name for k in st.prefixes[prefix]}
            related.neighbours[name] = stored | written.get(port, set())
        touched = {(r.kind, r.name) for k in changed if (r := world_refs.get(k)) is not None}
        integrity.check(world, touched, pointers, related)

    async def prepare(self) -> None:
        """Build the reference index now if this etcd has none (intent written by an lbcp
        from before it). The first write that needs the index builds it otherwise; doing it
        at start keeps that cost, and its etcd revisions, off writes (even rejected ones)."""
        if not (await self.etcd.range(self.index.version, count_only=True)).count:
            await self.index.build(self.etcd)

    async def reseal_certificates(self) -> builtins.list[str]:
        """Rewrite every certificate whose key is not sealed with the current KEK (after a
        KEK rotation, or when a KEK is first configured). Each rewrite is guarded by the
        revision it read, so a concurrent PUT wins. Returns the names rewritten."""
        from controlplane.intent.certificates import keyring

        done: list[str] = []
        token = None
        while True:
            page = await self.list(Kind.CERTIFICATE, limit=100, page_token=token)
            for stored in page.items:
                cert = stored.obj
                if keyring().sealed_with_current(cert.private_key):
                    continue
                plain = Certificate(
                    name=cert.name,
                    certificate_chain=cert.certificate_chain,
                    private_key=keyring().open(cert.name, cert.private_key),
                )
                await self.apply([Op("replace", Ref(Kind.CERTIFICATE, cert.name), plain, stored.mod_revision)])
                done.append(cert.name)
            token = page.next_page_token
            if not token:
                return done

    # -- convenience -----------------------------------------------------------------------

    async def put(
        self,
        obj: Cluster | Listener | Route | Backend | Certificate | Fleet,
        *,
        cluster: str | None = None,
        if_match: int | None = None,
    ) -> WriteResult:
        kind = {
            Cluster: Kind.CLUSTER,
            Listener: Kind.LISTENER,
            Route: Kind.ROUTE,
            Backend: Kind.BACKEND,
            Certificate: Kind.CERTIFICATE,
            Fleet: Kind.FLEET,
        }[type(obj)]
        return await self.apply([Op("put", Ref(kind, obj.name, cluster), obj, if_match)])

    async def delete(self, ref: Ref, *, if_match: int | None = None) -> WriteResult:
        return await self.apply([Op("delete", ref, None, if_match)])


__all__ = ["Op", "ReplaceBackends", "Store", "StoreError", "WriteResult", "OpResult", "Page"]
