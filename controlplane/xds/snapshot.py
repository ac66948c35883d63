"""Snapshots: each fleet's resources at one intent revision, serialised once.

Every resource is encoded once into an `Entry` holding the wire bytes that responses are
made of (protobuf allows concatenating fields), so a response to any number of streams is
byte concatenation, never protobuf work per stream. Versions are content hashes: the same
intent gives the same versions on every replica, so an Envoy moving between replicas sees
no change and gets nothing resent.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

import xxhash
from google.protobuf.message import Message

from controlplane.xds.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    TYPE_ORDER,
    ListenerBase,
)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field_number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (strings, bytes, embedded messages)."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource: its name, content version and pre-encoded response fragments."""

    name: str
    version: str
    sotw_chunk: bytes  # DiscoveryResponse.resources (field 2): Any{type_url, value}
    delta_chunk: bytes  # DeltaDiscoveryResponse.resources (field 2): Resource{version, resource, name}

    @property
    def size(self) -> int:
        return len(self.sotw_chunk)


def make_entry(type_url: str, name: str, msg: Message, version: str | None = None) -> Entry:
    """Encode `msg` once. Its version is the hash of its bytes unless the caller knows better."""
    return encoded_entry(type_url, name, msg.SerializeToString(deterministic=True), version)


def encoded_entry(type_url: str, name: str, value: bytes, version: str | None = None) -> Entry:
    """`make_entry` for a message already serialised (`value`)."""
    version = version or xxhash.xxh64_hexdigest(value)
    any_bytes = ld(1, type_url.encode()) + ld(2, value)
    # Resource: version = 1, resource = 2, name = 3
    resource = ld(1, version.encode()) + ld(2, any_bytes) + ld(3, name.encode())
    return Entry(name, version, ld(2, any_bytes), ld(2, resource))


def set_version(entries: Mapping[str, Entry], names: list[str] | None = None) -> str:
    """A version for a set of resources: a hash of their names and versions."""
    h = xxhash.xxh64()
    for n in sorted(entries if names is None else names):
        e = entries.get(n)
        if e is not None:
            h.update(n.encode())
            h.update(b"\0")
            h.update(e.version.encode())
            h.update(b"\n")
    return h.hexdigest()


class InconsistentSnapshot(Exception):
    pass


@dataclass
class Snapshot:
    """What one fleet should have at `revision`. Treat as immutable once published."""

    fleet: str
    revision: int
    resources: dict[str, dict[str, Entry]] = field(default_factory=dict)
    # Which EDS/RDS names each CDS/LDS resource needs (for the consistency check).
    references: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    # Names that exist but whose resource is still being built (hash rings), by type. Live:
    # the cache's own view of its build queue, so it is current whenever a stream looks.
    pending: dict[str, Container[str]] = field(default_factory=dict)
    # Node ids an operator has drained: their streams serve a failing health gate.
    drained: frozenset[str] = frozenset()
    # What per-Envoy listener variants are built from (public addresses, shed shards).
    listener_bases: dict[str, ListenerBase] = field(default_factory=dict)
    # Envoys asked to let go of shards of their connections: node id -> generation per shard.
    sheds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _versions: dict[str, str] = field(default_factory=dict, repr=False)

    def of(self, type_url: str) -> dict[str, Entry]:
        return self.resources.get(type_url, {})

    def version(self, type_url: str) -> str:
        v = self._versions.get(type_url)
        if v is None:
            v = self._versions[type_url] = set_version(self.of(type_url))
        return v

    def check(self) -> None:
        """Every EDS and RDS name that a Cluster or Listener references exists (go-control-plane's Consistent)."""
        for parent, child in ((CLUSTER_TYPE, ENDPOINT_TYPE), (LISTENER_TYPE, ROUTE_TYPE)):
            have = self.of(child)
            for name, needs in self.references.get(parent, {}).items():
                missing = needs - have.keys()
                if missing:
                    raise InconsistentSnapshot(
                        f"{parent.rsplit('.', 1)[-1]} {name!r} references missing {sorted(missing)}"
                    )
        for listener, secrets in self.references.get(SECRET_TYPE, {}).items():
            missing = secrets - self.of(SECRET_TYPE).keys()
            if missing:
                raise InconsistentSnapshot(f"{listener!r} needs certificates that cannot be served: {sorted(missing)}")
        for rc_name, clusters in self.references.get(ROUTE_TYPE, {}).items():
            missing = clusters - self.of(CLUSTER_TYPE).keys()
            if missing:
                raise InconsistentSnapshot(
                    f"RouteConfiguration {rc_name!r} references missing clusters {sorted(missing)}"
                )

    def total_bytes(self) -> int:
        return sum(e.size for t in TYPE_ORDER for e in self.of(t).values())
