"""Where each object lives in etcd, and how it is encoded.

Layout under the configured prefix P (default `/lbcp/v1/`), one key per object:

    P clusters/{cluster}
    P backends/{cluster}/{backend}
    P listeners/{listener}
    P routes/{route}
    P certificates/{certificate}     the private key sealed with the KEK when one is set
    P drains/{node id, %-quoted}      an operator's drain of one Envoy (see drain_key)
    P shares/{fleet, %-quoted}        each Envoy's share of the fleet's rate limits (see share_key)
    P sheds/{node id, %-quoted}       connections being moved off one Envoy (see shed_key)

Values are compact JSON: `{"schema": 1, "kind": "...", "spec": {...}}`. Names cannot
contain `/` (the model's patterns forbid it), so a name never escapes its folder.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from controlplane.intent.model import MODELS, SCHEMA_VERSION, Intent, Kind

T = TypeVar("T", bound=BaseModel)

_FOLDERS = {
    Kind.CLUSTER: "clusters",
    Kind.BACKEND: "backends",
    Kind.LISTENER: "listeners",
    Kind.ROUTE: "routes",
    Kind.CERTIFICATE: "certificates",
    Kind.FLEET: "fleets",
}
_KINDS = {v: k for k, v in _FOLDERS.items()}


@dataclass(frozen=True, order=True)
class Ref:
    """The identity of one object. Backends are named within their cluster."""

    kind: Kind
    name: str
    cluster: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == Kind.BACKEND) != (self.cluster is not None):
            raise ValueError("a backend ref needs its cluster, and only a backend ref has one")

    def __str__(self) -> str:
        return f"{self.kind} {self.cluster}/{self.name}" if self.cluster else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Stored(Generic[T]):
    """An object as stored, with etcd's revisions (mod_revision is its ETag)."""

    obj: T
    mod_revision: int
    create_revision: int


def _node_key(folder: bytes, node_id: str) -> bytes:
    """A per-node key: node ids may hold `/`, so they are %-quoted."""
    return folder + urllib.parse.quote(node_id, safe="").encode()


def _node_of(folder: bytes, key: bytes) -> str | None:
    return urllib.parse.unquote(key[len(folder) :].decode()) if key.startswith(folder) else None


class Keyspace:
    """Key names and value codec under one prefix."""

    def __init__(self, prefix: str = "/lbcp/v1/") -> None:
        self.prefix = prefix
        self.root = prefix.encode()

    def key(self, ref: Ref) -> bytes:
        if ref.kind == Kind.BACKEND:
            return self.root + f"backends/{ref.cluster}/{ref.name}".encode()
        return self.root + f"{_FOLDERS[ref.kind]}/{ref.name}".encode()

    def folder(self, kind: Kind, cluster: str | None = None) -> bytes:
        """The prefix holding every object of a kind (of one cluster, for backends)."""
        if kind == Kind.BACKEND and cluster is not None:
            return self.root + f"backends/{cluster}/".encode()
        return self.root + f"{_FOLDERS[kind]}/".encode()

    # Node drains are operator intent about one Envoy, not config: the view keeps them apart
    # from the four kinds, and the xDS replicas turn them into that Envoy's health gate.
    @property
    def drains(self) -> bytes:
        return self.root + b"drains/"

    def drain_key(self, node_id: str) -> bytes:
        return _node_key(self.drains, node_id)

    def drained_node(self, key: bytes) -> str | None:
        """The node id a drain key names, or None for any other key."""
        return _node_of(self.drains, key)

    # Which shards of one Envoy's connections lbcp has asked it to let go of (rebalance,
    # evacuation): `{"generations": [int per shard], ...}`, served to that Envoy alone.
    @property
    def sheds(self) -> bytes:
        return self.root + b"sheds/"

    def shed_key(self, node_id: str) -> bytes:
        return _node_key(self.sheds, node_id)

    def shed_node(self, key: bytes) -> str | None:
        """The node id a shed key names, or None for any other key."""
        return _node_of(self.sheds, key)

    # Each Envoy's share of its fleet's `scope: fleet` rate limits, divided by the mover
    # (controlplane/moves/shares.py): `{"shares": {node id: share}, ...}`, one key per fleet.
    @property
    def shares(self) -> bytes:
        return self.root + b"shares/"

    def share_key(self, fleet: str) -> bytes:
        return _node_key(self.shares, fleet)

    def shares_fleet(self, key: bytes) -> str | None:
        """The fleet a shares key names, or None for any other key."""
        return _node_of(self.shares, key)

    def ref(self, key: bytes) -> Ref | None:
        """The object a key names, or None for keys that are not intent (fleet registry, …)."""
        if not key.startswith(self.root):
            return None
        parts = key[len(self.root) :].decode().split("/")
        kind = _KINDS.get(parts[0])
        if kind is None:
            return None
        if kind == Kind.BACKEND:
            return Ref(kind, parts[2], parts[1]) if len(parts) == 3 else None
        return Ref(kind, parts[1]) if len(parts) == 2 else None

    @staticmethod
    def encode(kind: Kind, obj: Intent) -> bytes:
        spec = obj.model_dump(mode="json")
        if kind == Kind.CERTIFICATE and isinstance(spec.get("private_key"), str):
            from controlplane.intent.certificates import keyring

            spec["private_key"] = keyring().seal(spec["name"], spec["private_key"])
        doc = {"schema": SCHEMA_VERSION, "kind": str(kind), "spec": spec}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @staticmethod
    def decode(kind: Kind, value: bytes) -> Intent:
        doc = json.loads(value)
        if doc.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema version {doc.get('schema')!r} (this lbcp reads {SCHEMA_VERSION})")
        return MODELS[kind].model_validate(doc["spec"])  # type: ignore[return-value]
