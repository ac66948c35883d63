"""The intent store: typed reads and all-or-nothing writes of intent in etcd.

Every write, single or batch, follows one path:

1. read what it depends on in one read-only transaction (a consistent snapshot at etcd
   revision R): the target keys, the clusters its backends belong to and, when the write
   touches clusters, listeners or routes, those three (small) folders whole;
2. apply the operations in memory, in order, checking create-only / If-Match / existence;
3. validate the resulting world (`integrity.check`);
4. commit one transaction whose compares assert that nothing it read has changed since R
   (key by key, and "no key newer than R" over each folder read whole). If another writer
   got in between, go back to 1 (a few times), so a conflicting write is never committed
   on stale facts.

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
from controlplane.intent import integrity
from controlplane.intent.commit import GroupCommit, Planned
from controlplane.intent.errors import (
    AlreadyExists,
    FieldError,
    InvalidPageToken,
    NotFound,
    PreconditionFailed,
    StoreError,
    ValidationFailed,
    WriteConflict,
)
from controlplane.intent.keyspace import Keyspace, Ref, Stored
from controlplane.intent.model import Backend, Certificate, Cluster, Fleet, Intent, Kind, Listener, Route

_MAX_ATTEMPTS = 8
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
    obj: Intent | None
    mod_revision: int = 0
    create_revision: int = 0


@dataclass(frozen=True)
class _ReadSpec:
    """What a write depends on: single keys, folders read whole (the world's when it
    touches clusters, listeners, routes or certificates)."""

    need_world: bool
    keys: dict[bytes, Kind]
    folders: tuple[tuple[bytes, Kind], ...]


_ReadState = tuple[int, dict[bytes, "_Entry"]]  # a read's revision and what it found


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
        self._commits: GroupCommit[Sequence[AnyOp], WriteResult] = GroupCommit(
            self._read_for, self._plan_for, self.etcd.txn, _MAX_ATTEMPTS, _conflicted
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
            spec = self._spec(ops)
            plan = self._plan(ops, spec, await self._read([spec]))
            return WriteResult(plan.revision, plan.results, dry_run)
        return await self._commits.submit(ops)

    async def _read_for(self, batch: builtins.list[Sequence[AnyOp]]) -> _ReadState:
        return await self._read([self._spec(ops) for ops in batch])

    def _plan_for(self, ops: Sequence[AnyOp], state: object, attempts: int) -> Planned[WriteResult] | WriteResult:
        plan = self._plan(ops, self._spec(ops), state)  # type: ignore[arg-type]
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

    def _spec(self, ops: Sequence[AnyOp]) -> _ReadSpec:
        need_world = any(isinstance(op, Op) and op.ref.kind in _WORLD_KINDS for op in ops)
        keys: dict[bytes, Kind] = {}
        folders: list[tuple[bytes, Kind]] = []
        if need_world:
            folders += [(self.keys.folder(k), k) for k in _WORLD_KINDS]
        for op in ops:
            if isinstance(op, ReplaceBackends):
                keys[self.keys.key(Ref(Kind.CLUSTER, op.cluster))] = Kind.CLUSTER
                folders.append((self.keys.folder(Kind.BACKEND, op.cluster), Kind.BACKEND))
            else:
                keys[self.keys.key(op.ref)] = op.ref.kind
                if isinstance(op.obj, Cluster) and op.obj.discovery == "eds":
                    # An EDS cluster may hold no hostname backend: its members are checked.
                    folders.append((self.keys.folder(Kind.BACKEND, op.ref.name), Kind.BACKEND))
                if op.ref.kind == Kind.BACKEND:
                    keys[self.keys.key(Ref(Kind.CLUSTER, op.ref.cluster))] = Kind.CLUSTER  # type: ignore[arg-type]
        return _ReadSpec(need_world, keys, tuple(folders))

    async def _read(self, specs: builtins.list[_ReadSpec]) -> _ReadState:
        """One consistent read of everything the writes of `specs` depend on."""
        folders: dict[bytes, Kind] = {}
        keys: dict[bytes, Kind] = {}
        for spec in specs:
            folders.update(spec.folders)
            keys.update(spec.keys)
        reads = [rpc.RequestOp(request_range=rpc.RangeRequest(key=f, range_end=prefix_end(f))) for f in folders]
        reads += [rpc.RequestOp(request_range=rpc.RangeRequest(key=k)) for k in keys]
        resp = await self.etcd.txn(rpc.TxnRequest(success=reads), read_only=True)
        state: dict[bytes, _Entry] = {}
        kinds = [*folders.values(), *keys.values()]
        for kind, r in zip(kinds, resp.responses, strict=False):
            for kv in r.response_range.kvs:
                state[kv.key] = _Entry(self.keys.decode(kind, kv.value), kv.mod_revision, kv.create_revision)
        return resp.header.revision, state

    def _plan(self, ops: Sequence[AnyOp], spec: _ReadSpec, read: _ReadState) -> _Plan:
        # `seen` may hold more than `spec` asks for (the round's other writes' reads): only
        # the keys and folders of `spec` become this write's compares.
        revision, seen = read
        need_world, folders, relied = spec.need_world, [f for f, _ in spec.folders], set(spec.keys)
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

        for op in ops:
            if isinstance(op, Op) and isinstance(op.obj, Cluster) and final.get(key := self.keys.key(op.ref)) is op.obj:
                folder = self.keys.folder(Kind.BACKEND, op.ref.name)
                named = sorted(
                    v.name for k, v in final.items() if k.startswith(folder) and isinstance(v, Backend) and not v.is_ip
                )
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
        if need_world:
            world = integrity.World()
            pointers: dict[tuple[Kind, str], str] = {}
            for k, v in final.items():
                at = self.keys.ref(k)
                if v is None or at is None:
                    continue
                if isinstance(v, Cluster):
                    world.clusters[at.name] = v
                elif isinstance(v, Listener):
                    world.listeners[at.name] = v
                elif isinstance(v, Route):
                    world.routes[at.name] = v
                elif isinstance(v, Certificate):
                    world.certificates[at.name] = v
            for op in ops:
                if isinstance(op, Op) and op.ref.kind in _WORLD_KINDS:
                    pointers[(op.ref.kind, op.ref.name)] = op.pointer
            touched = {
                (r.kind, r.name) for r in map(self.keys.ref, changed) if r is not None and r.kind in _WORLD_KINDS
            }
            integrity.check(world, touched, pointers)

        # Keys this write relies on must be exactly as read (0: still absent): the targets,
        # the clusters of backends, and whatever the changed routes and listeners reference
        # (a concurrent delete of those would not show in the folder compares below).
        for k in changed:
            v = final[k]
            if isinstance(v, Route):
                relied.add(self.keys.key(Ref(Kind.LISTENER, v.listener)))
                relied.update(self.keys.key(Ref(Kind.CLUSTER, b.cluster)) for b in v.backends)
            elif isinstance(v, Cluster) and v.tls is not None and v.tls.client_certificate:
                relied.add(self.keys.key(Ref(Kind.CERTIFICATE, v.tls.client_certificate)))
            elif isinstance(v, Listener):
                if v.cluster is not None:
                    relied.add(self.keys.key(Ref(Kind.CLUSTER, v.cluster)))
                if v.tls is not None:
                    relied.update(self.keys.key(Ref(Kind.CERTIFICATE, c)) for c in v.tls.certificates)
        compares = [_cmp_mod(k, rpc.Compare.EQUAL, seen[k].mod_revision if k in seen else 0) for k in sorted(relied)]
        # Nothing in a folder read whole may be newer than the read (catches new keys too).
        compares += [_cmp_mod(f, rpc.Compare.LESS, revision + 1, prefix_end(f)) for f in folders]

        writes: list[rpc.RequestOp] = []
        cascade = [self.keys.folder(Kind.BACKEND, c) for c in sorted(deleted_clusters)]
        for key in sorted(changed):
            if any(key.startswith(f) for f in cascade):
                continue
            value = final[key]
            if value is None:
                writes.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
            else:
                kind = self.keys.ref(key).kind  # type: ignore[union-attr]
                writes.append(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=self.keys.encode(kind, value))))
        for f in cascade:
            writes.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=f, range_end=prefix_end(f))))
        return _Plan(revision, results, compares, writes)

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
