"""Snapshots: each fleet's resources at one intent revision, serialised once.

Every resource is encoded once into an `Entry` holding the wire bytes that responses are
made of (protobuf allows concatenating fields), so a response to any number of streams is
byte concatenation, never protobuf work per stream. Versions are content hashes: the same
intent gives the same versions on every replica, so an Envoy moving between replicas sees
no change and gets nothing resent.

A snapshot's resources of one type are a `Table`: an immutable map that the next build
derives from the last in time proportional to what changed (it copies only the shards it
touches and shares the rest), that keeps its set version as it changes (an order-free sum
of its entries' hashes, the same for the same content on every replica), and that can say
which names changed since an earlier table of its line, so a delta stream diffs only those.
"""

from __future__ import annotations

import itertools
from collections.abc import (
    Collection,
    Container,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import xxhash
from google.protobuf.message import Message

from controlplane.intent.model import Route
from controlplane.xds.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    TYPE_ORDER,
    ListenerBase,
    route_configuration,
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


_MIX_BITS = 128
_MIX_MASK = (1 << _MIX_BITS) - 1


def _mix(name: str, version: str) -> int:
    """One entry's share of a set version: a 128-bit hash of its name and version."""
    return xxhash.xxh3_128_intdigest(f"{name}\0{version}".encode())


def _set_hex(total: int) -> str:
    return format(total & _MIX_MASK, "032x")


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource: its name, content version and pre-encoded response fragments."""

    name: str
    version: str
    sotw_chunk: bytes  # DiscoveryResponse.resources (field 2): Any{type_url, value}
    delta_chunk: bytes  # DeltaDiscoveryResponse.resources (field 2): Resource{version, resource, name}
    mix: int = 0  # its share of a set version (`_mix(name, version)`)
    size: int = field(init=False)  # bytes in a response (an attribute: read per entry, per publish)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", len(self.sotw_chunk))


def make_entry(type_url: str, name: str, msg: Message, version: str | None = None) -> Entry:
    """Encode `msg` once. Its version is the hash of its bytes unless the caller knows better."""
    return encoded_entry(type_url, name, msg.SerializeToString(deterministic=True), version)


def encoded_entry(type_url: str, name: str, value: bytes, version: str | None = None) -> Entry:
    """`make_entry` for a message already serialised (`value`)."""
    version = version or xxhash.xxh64_hexdigest(value)
    any_bytes = ld(1, type_url.encode()) + ld(2, value)
    # Resource: version = 1, resource = 2, name = 3
    resource = ld(1, version.encode()) + ld(2, any_bytes) + ld(3, name.encode())
    return Entry(name, version, ld(2, any_bytes), ld(2, resource), _mix(name, version))


def set_version(entries: Mapping[str, Entry], names: Iterable[str] | None = None) -> str:
    """A version for a set of resources (all of `entries`, or those of `names` it has): an
    order-free sum of a hash of each one's name and version. A `Table` keeps its own."""
    if names is None:
        if isinstance(entries, Table):
            return entries.version
        return _set_hex(sum(e.mix for e in entries.values()))
    total = 0
    for n in set(names):
        e = entries.get(n)
        if e is not None:
            total += e.mix
    return _set_hex(total)


# -- persistent maps -------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_SHARDS = 64
_EMPTY: dict[Any, Any] = {}  # shared by every empty shard: never written (edits copy first)


class PMap(Mapping[K, V]):
    """An immutable mapping derived from another in time proportional to the changes (`edit`):
    its items live in shards by key hash; a derived map copies only the shards it changes
    and shares the rest with the map it came from."""

    __slots__ = ("_len", "_shards")

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        self._shards: tuple[dict[K, V], ...] = (_EMPTY,) * _SHARDS
        self._len = 0
        if items:
            e = self.edit()
            for k, v in items.items():
                e[k] = v
            self._shards, self._len = e._shards_tuple(), e._len

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) % _SHARDS][key]

    def get(self, key: K, default: Any = None) -> Any:
        return self._shards[hash(key) % _SHARDS].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) % _SHARDS]

    def __iter__(self) -> Iterator[K]:
        return itertools.chain.from_iterable(self._shards)

    def __len__(self) -> int:
        return self._len

    def keys(self) -> KeysView[K]:
        return _Keys(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def edit(self) -> PMapEdit[K, V]:
        return PMapEdit(self)

    def _derived(self, shards: tuple[dict[K, V], ...], length: int) -> PMap[K, V]:
        out = object.__new__(type(self))
        out._shards, out._len = shards, length
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"


class _Keys(KeysView[K]):
    def __iter__(self) -> Iterator[K]:
        return iter(self._mapping)  # type: ignore[attr-defined]


class _Values(ValuesView[V]):
    def __iter__(self) -> Iterator[V]:
        shards: tuple[dict[Any, V], ...] = self._mapping._shards  # type: ignore[attr-defined]
        return itertools.chain.from_iterable(map(dict.values, shards))


class _Items(ItemsView[K, V]):
    def __iter__(self) -> Iterator[tuple[K, V]]:
        shards: tuple[dict[K, V], ...] = self._mapping._shards  # type: ignore[attr-defined]
        return itertools.chain.from_iterable(map(dict.items, shards))


class PMapEdit(Generic[K, V]):
    """A map being derived from `base`: reads see the edits; `done()` gives the new map (the
    base itself when nothing changed). Each shard is copied at most once, on its first write."""

    def __init__(self, base: PMap[K, V]) -> None:
        self.base = base
        self._shards = list(base._shards)
        self._owned: set[int] = set()
        self._len = base._len

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) % _SHARDS][key]

    def get(self, key: K, default: Any = None) -> Any:
        return self._shards[hash(key) % _SHARDS].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) % _SHARDS]

    def _own(self, i: int) -> dict[K, V]:
        if i not in self._owned:
            self._shards[i] = dict(self._shards[i])
            self._owned.add(i)
        return self._shards[i]

    def __setitem__(self, key: K, value: V) -> None:
        i = hash(key) % _SHARDS
        shard = self._shards[i]
        if key in shard:
            if shard[key] is value:
                return
        else:
            self._len += 1
        self._own(i)[key] = value

    def pop(self, key: K, default: Any = None) -> Any:
        i = hash(key) % _SHARDS
        if key not in self._shards[i]:
            return default
        self._len -= 1
        return self._own(i).pop(key)

    def _shards_tuple(self) -> tuple[dict[K, V], ...]:
        return tuple(self._shards)

    def done(self) -> PMap[K, V]:
        if not self._owned:
            return self.base
        return self.base._derived(self._shards_tuple(), self._len)


# Table generations: where each came from and which names changed on the way (bounded).
_generations = itertools.count(1)
_LOG_SIZE = 4096


class _Log:
    __slots__ = ("links",)

    def __init__(self) -> None:
        self.links: dict[int, tuple[int, frozenset[str]]] = {}

    def add(self, generation: int, parent: int, changed: frozenset[str]) -> None:
        self.links[generation] = (parent, changed)
        if len(self.links) > _LOG_SIZE:
            del self.links[next(iter(self.links))]


class Table(PMap[str, Entry]):
    """The resources of one type: a PMap of entries with its set version kept as it changes,
    and a bounded record of which names each derivation changed (`changed_since`)."""

    __slots__ = ("_gen", "_log", "_sum")

    def __init__(self, items: Mapping[str, Entry] | None = None) -> None:
        self._sum = 0
        self._gen = next(_generations)
        self._log = _Log()
        super().__init__()
        if items:
            e = self.edit()
            for k, v in items.items():
                e[k] = v
            derived = e.done()
            self._shards, self._len, self._sum = derived._shards, derived._len, derived._sum
            self._gen, self._log = derived._gen, derived._log

    @property
    def version(self) -> str:
        return _set_hex(self._sum)

    def edit(self) -> TableEdit:
        return TableEdit(self)

    def changed_since(self, earlier: Mapping[str, Entry] | None) -> set[str] | None:
        """The names whose entries differ between `earlier` (a table this one was derived
        from) and this one, or None when that is not known (another line, too far back):
        then compare everything. Costs the number of changes between the two."""
        if earlier is self:
            return set()
        if not isinstance(earlier, Table) or earlier._log is not self._log or earlier._gen > self._gen:
            return None
        names: set[str] = set()
        gen, links, limit = self._gen, self._log.links, max(64, self._len // 4)
        while gen != earlier._gen:
            link = links.get(gen)
            if link is None or gen < earlier._gen:
                return None
            gen, changed = link
            names.update(changed)
            if len(names) > limit:
                return None  # about as cheap to compare everything
        return names


class TableEdit(PMapEdit[str, Entry]):
    def __init__(self, base: Table) -> None:
        super().__init__(base)
        self.table = base
        self._sum = base._sum
        self.changed: set[str] = set()

    def __setitem__(self, key: str, value: Entry) -> None:
        old = self.get(key)
        if old is value or (old is not None and old.version == value.version and old.mix == value.mix):
            return
        self._sum += value.mix - (old.mix if old is not None else 0)
        self.changed.add(key)
        super().__setitem__(key, value)

    def pop(self, key: str, default: Any = None) -> Any:
        old = super().pop(key, None)
        if old is None:
            return default
        self._sum -= old.mix
        self.changed.add(key)
        return old

    def done(self) -> Table:
        if not self._owned:
            return self.table
        out = object.__new__(Table)
        out._shards, out._len = self._shards_tuple(), self._len
        out._sum, out._log, out._gen = self._sum & _MIX_MASK, self.table._log, next(_generations)
        out._log.add(out._gen, self.table._gen, frozenset(self.changed))
        return out


EMPTY_TABLE = Table()


class InconsistentSnapshot(Exception):
    pass


_MAX_VARIANTS = 4096


@dataclass(frozen=True, slots=True)
class RouteBase:
    """A route configuration holding `scope: fleet` rate limits. Each Envoy is served its own
    variant, every fleet-scope limit scaled by that Envoy's share (controlplane/moves/shares.py);
    a variant is translated and encoded once per share, and Envoys with the same share share it."""

    listener: str
    routes: tuple[Route, ...]
    _variants: dict[float, bytes] = field(default_factory=dict, compare=False, repr=False)

    def variant(self, share: float) -> bytes:
        hit = self._variants.get(share)
        if hit is None:
            if len(self._variants) >= _MAX_VARIANTS:
                self._variants.clear()
            msg = route_configuration(self.listener, self.routes, share)
            hit = self._variants[share] = msg.SerializeToString(deterministic=True)
        return hit


def fleet_limited(routes: Iterable[Route]) -> bool:
    return any(r.rate_limit is not None and r.rate_limit.scope == "fleet" for r in routes)


def share_of(shares: Mapping[str, Mapping[str, float]], fleet: str, node_id: str) -> float | None:
    """What share of its fleet's `scope: fleet` limits `node_id` enforces: None (the whole
    limit) until the fleet was first divided; a node the division does not list yet (it just
    connected) gets an even share beside the Envoys in service."""
    division = shares.get(fleet)
    if division is None:
        return None
    share = division.get(node_id)
    if share is None:
        share = round(1 / (1 + sum(1 for v in division.values() if v > 0)), 4)
    return share


# What each parent type's references point at: clusters -> endpoints, listeners -> route
# configs, secret users -> secrets, route configs -> clusters (the order they are checked in).
_CHECKS = (
    (CLUSTER_TYPE, ENDPOINT_TYPE),
    (LISTENER_TYPE, ROUTE_TYPE),
    (SECRET_TYPE, SECRET_TYPE),
    (ROUTE_TYPE, CLUSTER_TYPE),
)


@dataclass
class Snapshot:
    """What one fleet should have at `revision`. Treat as immutable once published."""

    fleet: str
    revision: int
    resources: dict[str, Mapping[str, Entry]] = field(default_factory=dict)
    # Which names each resource needs (for the consistency check): by type of the needing
    # resource, its name -> the EDS names (clusters), RDS names (listeners), certificates
    # (listeners and "cluster NAME"), cluster names (route configurations) it needs.
    references: dict[str, Mapping[str, Collection[str]]] = field(default_factory=dict)
    # Names that exist but whose resource is still being built (hash rings), by type. Live:
    # the cache's own view of its build queue, so it is current whenever a stream looks.
    pending: dict[str, Container[str]] = field(default_factory=dict)
    # Node ids an operator has drained: their streams serve a failing health gate.
    drained: frozenset[str] = frozenset()
    # What per-Envoy listener variants are built from (public addresses, shed shards).
    listener_bases: Mapping[str, ListenerBase] = field(default_factory=dict)
    # Envoys asked to let go of shards of their connections: node id -> generation per shard.
    sheds: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Route configurations with fleet-scope rate limits (by RDS name), and each fleet's
    # division of them: fleet -> node id -> share (see `share_of`).
    route_bases: Mapping[str, RouteBase] = field(default_factory=dict)
    shares: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    _versions: dict[str, str] = field(default_factory=dict, repr=False)
    _binds_public: bool | None = field(default=None, repr=False)

    def binds_public(self) -> bool:
        """Some listener binds each Envoy's public address too (looked at once per snapshot)."""
        if self._binds_public is None:
            self._binds_public = any(b.bind_public for b in self.listener_bases.values())
        return self._binds_public

    def of(self, type_url: str) -> Mapping[str, Entry]:
        return self.resources.get(type_url, EMPTY_TABLE)

    def version(self, type_url: str) -> str:
        entries = self.of(type_url)
        if isinstance(entries, Table):
            return entries.version
        v = self._versions.get(type_url)
        if v is None:
            v = self._versions[type_url] = set_version(entries)
        return v

    def check(self, parents: Mapping[str, Iterable[str]] | None = None) -> None:
        """Every name a resource references exists (go-control-plane's Consistent): the EDS
        name of each cluster, the RDS name of each listener, the certificates of each secret
        user, the clusters of each route configuration. `parents`: check only these
        referencing resources, by type (what a build changed); None: all of them."""
        for parent, child in _CHECKS:
            refs = self.references.get(parent, {})
            have = self.of(child)
            for name in refs if parents is None else parents.get(parent, ()):
                needs = refs.get(name)
                if not needs:
                    continue
                missing = [n for n in needs if n not in have]
                if missing:
                    raise InconsistentSnapshot(_inconsistency(parent, name, sorted(missing)))

    def total_bytes(self) -> int:
        return sum(e.size for t in TYPE_ORDER for e in self.of(t).values())


def _inconsistency(parent: str, name: str, missing: list[str]) -> str:
    if parent == SECRET_TYPE:
        return f"{name!r} needs certificates that cannot be served: {missing}"
    if parent == ROUTE_TYPE:
        return f"RouteConfiguration {name!r} references missing clusters {missing}"
    return f"{parent.rsplit('.', 1)[-1]} {name!r} references missing {missing}"
