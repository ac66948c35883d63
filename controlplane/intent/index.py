"""The reference index: who uses which object, and which listeners share a port.

So that a write reads what it touches, never a whole kind, etcd holds, next to the intent
and written in the same transaction as it, one empty key per reference and per listener
port:

    P _index/version                                   "1" once the index is complete
    P _index/refs/{kind}/{name}/{user kind}/{user}     `user` references `kind name`
    P _index/ports/{port, 5 digits}/{listener}         a listener bound to that port

A write that could break the users of an object (deleting a cluster, making it tcp) reads
`refs/{kind}/{name}/` (keys only) and then just those users; a new listener reads the
listeners of its port. Because index keys are written with the intent they describe, a
compare "nothing under this prefix is newer than my read" guards a write against a
concurrent new user exactly as a compare over a whole folder used to, at the cost of the
object's users instead of the whole kind.

`_index/` sorts before every intent folder, outside the range the xDS replicas watch, so
index writes never wake a replica. An etcd written by an lbcp older than the index gets its
index built once, by the first write that needs it (`build`).
"""

from __future__ import annotations

from collections.abc import Iterable

from aetcd import rpc

from controlplane.etcd import Etcd, prefix_end
from controlplane.intent.keyspace import Keyspace, Ref
from controlplane.intent.model import Cluster, Intent, Kind, Listener, Route

VERSION = b"1"
# Kinds whose users are indexed, and kinds whose objects are (one key per reference).
USED_KINDS = (Kind.CLUSTER, Kind.LISTENER, Kind.CERTIFICATE)
USER_KINDS = (Kind.CLUSTER, Kind.LISTENER, Kind.ROUTE)
_CHUNK = 1000  # operations per transaction while building (lbcp starts etcd with --max-txn-ops 65536)


def targets(obj: Intent) -> set[Ref]:
    """The objects `obj` references (each must exist while it does)."""
    if isinstance(obj, Route):
        return {Ref(Kind.LISTENER, obj.listener)} | {Ref(Kind.CLUSTER, c) for c in obj.clusters}
    if isinstance(obj, Listener):
        out = {Ref(Kind.CERTIFICATE, c) for c in (obj.tls.certificates if obj.tls else ())}
        return out | {Ref(Kind.CLUSTER, c) for c in obj.clusters}
    if isinstance(obj, Cluster) and obj.tls is not None and obj.tls.client_certificate:
        return {Ref(Kind.CERTIFICATE, obj.tls.client_certificate)}
    return set()


class Index:
    """Key names of the index under one keyspace."""

    def __init__(self, keys: Keyspace) -> None:
        self.keys = keys
        self.root = keys.root + b"_index/"
        self.version = self.root + b"version"
        self._refs = self.root + b"refs/"
        self._ports = self.root + b"ports/"

    def users(self, ref: Ref) -> bytes:
        """The prefix under which the users of `ref` are listed."""
        return self._refs + f"{ref.kind}/{ref.name}/".encode()

    def port(self, port: int) -> bytes:
        """The prefix under which the listeners bound to `port` are listed."""
        return self._ports + f"{port:05d}/".encode()

    def is_users(self, prefix: bytes) -> bool:
        return prefix.startswith(self._refs)

    def is_port(self, prefix: bytes) -> bool:
        return prefix.startswith(self._ports)

    def user_of(self, key: bytes) -> Ref:
        """The object an entry of a users prefix (or a ports prefix) names."""
        if key.startswith(self._ports):
            return Ref(Kind.LISTENER, key.rsplit(b"/", 1)[1].decode())
        kind, name = key[len(self._refs) :].decode().split("/")[2:4]
        return Ref(Kind(kind), name)

    def entries(self, ref: Ref, obj: Intent | None) -> set[bytes]:
        """The index keys `obj`, stored at `ref`, contributes (none when it is absent)."""
        if obj is None or ref.kind not in USER_KINDS:
            return set()
        out = {self.users(t) + f"{ref.kind}/{ref.name}".encode() for t in targets(obj)}
        if isinstance(obj, Listener):
            out.add(self.port(obj.port) + ref.name.encode())
        return out

    async def build(self, etcd: Etcd, attempts: int = 8) -> None:
        """Make the index match the stored intent, then mark it complete.

        Entries are written in chunks; the last transaction, which sets `version`, commits
        only if no clusters, listeners or routes changed since they were read (writers that
        maintain the index wait for `version`; an interrupted build is simply run again)."""
        for _ in range(attempts):
            revision, wanted = await self._wanted(etcd)
            existing = set(await _keys(etcd, self._refs, revision)) | set(await _keys(etcd, self._ports, revision))
            ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k)) for k in sorted(wanted - existing)]
            ops += [
                rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in sorted(existing - wanted)
            ]
            for i in range(0, len(ops), _CHUNK):
                await etcd.txn(rpc.TxnRequest(success=ops[i : i + _CHUNK]))
            folders = [self.keys.folder(k) for k in USER_KINDS]
            compares = [
                rpc.Compare(
                    key=f,
                    range_end=prefix_end(f),
                    target=rpc.Compare.MOD,
                    result=rpc.Compare.LESS,
                    mod_revision=revision + 1,
                )
                for f in folders
            ]
            done = rpc.RequestOp(request_put=rpc.PutRequest(key=self.version, value=VERSION))
            if (await etcd.txn(rpc.TxnRequest(compare=compares, success=[done]))).succeeded:
                return
        raise RuntimeError("intent kept changing while its reference index was built")

    async def _wanted(self, etcd: Etcd) -> tuple[int, set[bytes]]:
        head = await etcd.range(self.keys.root, count_only=True)
        revision = int(head.header.revision)
        wanted: set[bytes] = set()
        for kind in USER_KINDS:
            for kv in await _kvs(etcd, self.keys.folder(kind), revision):
                ref = self.keys.ref(kv.key)
                try:
                    obj = self.keys.decode(kind, kv.value)
                except ValueError:
                    continue  # not served either (the replicas skip it too): it references nothing
                if ref is not None:
                    wanted |= self.entries(ref, obj)
        return revision, wanted


async def _kvs(etcd: Etcd, prefix: bytes, revision: int, keys_only: bool = False) -> list[rpc.KeyValue]:
    """Everything under `prefix` at `revision`, read in pages."""
    out: list[rpc.KeyValue] = []
    start, end = prefix, prefix_end(prefix)
    while True:
        resp = await etcd.range(start, end, revision=revision, limit=_CHUNK * 10, keys_only=keys_only)
        out.extend(resp.kvs)
        if not resp.more or not resp.kvs:
            return out
        start = resp.kvs[-1].key + b"\0"


async def _keys(etcd: Etcd, prefix: bytes, revision: int) -> Iterable[bytes]:
    return [kv.key for kv in await _kvs(etcd, prefix, revision, keys_only=True)]
