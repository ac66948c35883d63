"""Envoy's MAGLEV and RING_HASH host selection, reimplemented bit for bit (Envoy 1.40).

The reference is ../shared/ring-spec.md, checked against vectors recorded from a real Envoy
(tests/controlplane/ring/test_tables.py). In short: XXH64 everywhere (seed 0; Maglev's skip uses
seed 1); a host's key is its `envoy.lb/hash_key` metadata string, else "ip:port"; per
priority, a table over the healthy hosts (all hosts in panic); the priority is chosen from
the same request hash before the table lookup.

Pure functions over plain data (`RingHost`), so the admin API can answer "where does key K
go?" and "what moves if …?" for any intent, and the xDS server can publish the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.intent.model import Backend, Cluster

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import xxhash

HEALTHY_STATES = ("HEALTHY", "UNKNOWN")
_M64 = (1 << 64) - 1


def xxh64(data: bytes, seed: int = 0) -> int:
    return xxhash.xxh64_intdigest(data, seed)


def murmur2_64(data: bytes, seed: int = 0xC70F6907) -> int:
    """libstdc++'s 64-bit MurmurHash2 (_Hash_bytes), which Envoy's MURMUR_HASH_2 uses."""
    mul = (0xC6A4A793 << 32) + 0x5BD1E995

    def shift_mix(v: int) -> int:
        return v ^ (v >> 47)

    n = len(data)
    aligned = n & ~7
    h = (seed ^ (n * mul)) & _M64
    for i in range(0, aligned, 8):
        d = (shift_mix((int.from_bytes(data[i : i + 8], "little") * mul) & _M64) * mul) & _M64
        h = ((h ^ d) * mul) & _M64
    if n & 7:
        d = int.from_bytes(data[aligned:], "little")
        h = ((h ^ d) * mul) & _M64
    h = (shift_mix(h) * mul) & _M64
    return shift_mix(h)


@dataclass(frozen=True)
class RingHost:
    """A host as Envoy sees it. `name` is what lookups return (lbcp: the backend name)."""

    name: str
    address: str
    port: int
    weight: int = 1
    hash_key: str | None = None
    health: str = "HEALTHY"  # HEALTHY UNKNOWN DEGRADED UNHEALTHY TIMEOUT DRAINING
    priority: int = 0
    locality: tuple[str, str, str] = ("", "", "")

    @property
    def key(self) -> bytes:
        if isinstance(self.hash_key, str) and self.hash_key:
            return self.hash_key.encode()
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}".encode()


@dataclass(frozen=True)
class RingConfig:
    algorithm: str  # "maglev" | "ring_hash"
    table_size: int = 65537
    minimum_ring_size: int = 1024
    maximum_ring_size: int = 8_388_608
    hash_function: str = "xx_hash"
    panic_threshold: float = 50.0
    overprovisioning: int = 140
    locality_weighted: bool = False
    locality_weights: dict[tuple[str, str, str], int] = field(default_factory=dict)
    node_locality: tuple[str, str, str] | None = None


# -- tables ----------------------------------------------------------------------------------


class Table:
    """One priority's lookup structure. `pick(h)` → host name."""

    def pick(self, h: int) -> str:
        raise NotImplementedError

    def shares(self) -> dict[str, float]:
        raise NotImplementedError


class MaglevTable(Table):
    def __init__(self, weighted: Sequence[tuple[RingHost, float]], max_w: float, size: int) -> None:
        self.size = size
        entries = sorted(weighted, key=lambda hw: hw[0].key)
        names = [h.name for h, _ in entries]
        offsets = [xxh64(h.key) % size for h, _ in entries]
        skips = [xxh64(h.key, 1) % (size - 1) + 1 for h, _ in entries]
        weights = [w for _, w in entries]
        nexts = [0] * len(entries)
        targets = [0.0] * len(entries)
        table = [-1] * size
        filled = 0
        iteration = 1
        n = len(entries)
        while filled < size and n:
            for i in range(n):
                if filled >= size:
                    break
                if iteration * weights[i] < targets[i]:
                    continue
                targets[i] += max_w
                off, skip, nxt = offsets[i], skips[i], nexts[i]
                c = (off + skip * nxt) % size
                while table[c] >= 0:
                    nxt += 1
                    c = (off + skip * nxt) % size
                table[c] = i
                nexts[i] = nxt + 1
                filled += 1
            iteration += 1
        self.names = names
        self.table = table

    def pick(self, h: int) -> str:
        return self.names[self.table[h % self.size]]

    def shares(self) -> dict[str, float]:
        counts = [0] * len(self.names)
        for i in self.table:
            counts[i] += 1
        return {n: c / self.size for n, c in zip(self.names, counts, strict=False)}


class RingHashTable(Table):
    def __init__(self, weighted: Sequence[tuple[RingHost, float]], min_w: float, cfg: RingConfig) -> None:
        hash_fn = murmur2_64 if cfg.hash_function == "murmur_hash_2" else xxh64
        scale = min(math.ceil(min_w * cfg.minimum_ring_size) / min_w, float(cfg.maximum_ring_size))
        ring: list[tuple[int, str]] = []
        current = target = 0.0
        for host, w in weighted:
            target += scale * w
            i = 0
            key = host.key + b"_"
            while current < target:
                ring.append((hash_fn(key + str(i).encode()), host.name))
                i += 1
                current += 1.0
        ring.sort(key=lambda e: e[0])
        self.hashes = [h for h, _ in ring]
        self.names = [n for _, n in ring]

    def pick(self, h: int) -> str:
        i = bisect.bisect_left(self.hashes, h)
        return self.names[i if i < len(self.hashes) else 0]

    def shares(self) -> dict[str, float]:
        """Fraction of the 64-bit hash space each host owns (arc ending at each point)."""
        out: dict[str, float] = {}
        prev = self.hashes[-1] - (1 << 64) if self.hashes else 0
        for h, n in zip(self.hashes, self.names, strict=False):
            out[n] = out.get(n, 0.0) + (h - prev) / float(1 << 64)
            prev = h
        return out


# -- the whole load balancer -----------------------------------------------------------------


def _normalize(hosts: Sequence[RingHost], cfg: RingConfig) -> tuple[list[tuple[RingHost, float]], float, float]:
    min_w, max_w = 1.0, 0.0
    out: list[tuple[RingHost, float]] = []

    def add(group: Sequence[RingHost], locality_w: float) -> None:
        nonlocal min_w, max_w
        total = sum(h.weight for h in group)
        for h in group:
            w = h.weight * locality_w / total
            out.append((h, w))
            min_w, max_w = min(min_w, w), max(max_w, w)

    if cfg.locality_weighted:
        by_loc: dict[tuple[str, str, str], list[RingHost]] = {}
        for h in hosts:
            by_loc.setdefault(h.locality, []).append(h)
        order = sorted(by_loc)
        if cfg.node_locality is not None and cfg.node_locality in by_loc:
            order.remove(cfg.node_locality)
            order.insert(0, cfg.node_locality)
        weights = [cfg.locality_weights.get(loc, 0) for loc in order]
        total = sum(weights)
        for loc, lw in zip(order, weights, strict=False):
            if lw:
                add(by_loc[loc], lw / total)
    elif hosts:
        add(hosts, 1.0)
    return out, min_w, max_w


class HashLB:
    """Envoy's thread-aware hashing LB for one cluster: priorities, panic, per-priority tables."""

    def __init__(self, hosts: Iterable[RingHost], cfg: RingConfig) -> None:
        self.cfg = cfg
        by_prio: dict[int, list[RingHost]] = {}
        for h in hosts:
            by_prio.setdefault(h.priority, []).append(h)
        n = max(by_prio, default=-1) + 1
        self.priorities = [by_prio.get(p, []) for p in range(n)]
        health, degraded = [], []
        for group in self.priorities:
            total = sum(1 for h in group if h.health != "DRAINING")
            healthy = sum(1 for h in group if h.health in HEALTHY_STATES)
            deg = sum(1 for h in group if h.health == "DEGRADED")
            health.append(min(100, cfg.overprovisioning * healthy // total) if total else 0)
            degraded.append(min(100, cfg.overprovisioning * deg // total) if total else 0)
        availability = min(100, sum(health) + sum(degraded))
        self.panic = [availability != 100 and self._in_panic(g) for g in self.priorities]
        self.healthy_load, self.degraded_load = self._loads(health, degraded, availability)
        self.tables: list[Table | None] = []
        for p, group in enumerate(self.priorities):
            members = group if self.panic[p] else [h for h in group if h.health in HEALTHY_STATES]
            weighted, min_w, max_w = _normalize(members, cfg)
            if not weighted:
                self.tables.append(None)
            elif cfg.algorithm == "maglev":
                self.tables.append(MaglevTable(weighted, max_w, cfg.table_size))
            else:
                self.tables.append(RingHashTable(weighted, min_w, cfg))

    def _in_panic(self, group: Sequence[RingHost]) -> bool:
        count = sum(1 for h in group if h.health != "DRAINING")
        if count == 0:
            return True
        healthy = 100.0 * sum(1 for h in group if h.health in HEALTHY_STATES) / count
        deg = 100.0 * sum(1 for h in group if h.health == "DEGRADED") / count
        return healthy + deg < self.cfg.panic_threshold

    def _loads(self, health: list[int], degraded: list[int], availability: int) -> tuple[list[int], list[int]]:
        n = len(self.priorities)
        hl, dl = [0] * n, [0] * n
        if availability == 0:
            total_hosts = sum(len(g) for g in self.priorities)
            if total_hosts == 0:
                return hl, dl
            left, first = 100, -1
            for i, g in enumerate(self.priorities):
                if first < 0 and g:
                    first = i
                hl[i] = 100 * len(g) // total_hosts
                left -= hl[i]
            hl[first] += left
            return hl, dl

        def distribute(load: list[int], avail: list[int], total: int) -> tuple[int | None, int]:
            first = None
            for i in range(n):
                if first is None and avail[i] > 0:
                    first = i
                load[i] = min(total, avail[i] * 100 // availability)
                total -= load[i]
            return first, total

        first_h, left = distribute(hl, health, 100)
        first_d, left = distribute(dl, degraded, left)
        if left:
            if first_h is not None:
                hl[first_h] += left
            elif first_d is not None:
                dl[first_d] += left
        return hl, dl

    def choose_priority(self, h: int) -> int:
        x = h % 100 + 1
        acc = 0
        for p, load in enumerate(self.healthy_load):
            acc += load
            if x <= acc:
                return p
        for p, load in enumerate(self.degraded_load):
            acc += load
            if x <= acc:
                return p
        return 0

    def pick(self, h: int) -> str | None:
        table = self.tables[self.choose_priority(h)] if self.tables else None
        return table.pick(h) if table is not None else None


# -- request hashing -------------------------------------------------------------------------


def header_hash(values: Sequence[str]) -> int | None:
    """Envoy's hash of one header policy: every value, sorted bytewise, chained through XXH64 seeds."""
    if not values:
        return None
    h = 0
    for v in sorted(v.encode() for v in values):
        h = xxh64(v, h)
    return h


def value_hash(value: str | None) -> int | None:
    """Cookie, source IP and query parameter policies hash their value with XXH64, seed 0."""
    return None if value is None else xxh64(value.encode())


def combine(hashes: Iterable[tuple[int | None, bool]]) -> int | None:
    """Fold per-policy hashes (hash or None, terminal) as Envoy's HashPolicyImpl does."""
    acc: int | None = None
    for h, terminal in hashes:
        if h is not None:
            old = (((acc << 1) | (acc >> 63)) & _M64) if acc is not None else 0
            acc = old ^ h
        if terminal and acc is not None:
            break
    return acc


# -- from lbcp intent ------------------------------------------------------------------------


def ring_for(cluster: Cluster, backends: Sequence[Backend]) -> HashLB:
    """The ring every Envoy builds for `cluster` from lbcp's translation of it.

    Matches controlplane/xds/resources/endpoints.py: hash_key = backend name, DRAINING for drain, maint
    left out, zone as locality (lbcp does not enable locality weighting). Runtime health
    (active checks, outlier ejection) is each Envoy's own and is not known here: the answer
    is for Envoys that see every backend healthy (see docs/ring.md).
    """
    lb = cluster.load_balancer
    if lb.type == "maglev":
        cfg = RingConfig("maglev", table_size=lb.table_size)
    elif lb.type == "ring_hash":
        cfg = RingConfig(
            "ring_hash",
            minimum_ring_size=lb.minimum_ring_size,
            maximum_ring_size=lb.maximum_ring_size,
            hash_function=lb.hash_function,
        )
    else:
        raise ValueError(f"cluster {cluster.name!r} uses {lb.type}, which has no ring")
    # Ring-hash depends on host order: lbcp sends hosts grouped by (priority, zone), each by name.
    ordered = sorted(
        (b for b in backends if b.admin_state != "maint"), key=lambda b: (b.priority, b.zone or "", b.name)
    )
    hosts = [
        RingHost(
            b.name,
            b.address,
            b.port,
            b.weight,
            b.name,
            "DRAINING" if b.admin_state == "drain" else "HEALTHY",
            b.priority,
            ("", b.zone or "", ""),
        )
        for b in ordered
    ]
    return HashLB(hosts, cfg)


def sample_hashes(n: int, seed: int = 0x5EED) -> list[int]:
    """`n` well-spread 64-bit request hashes (deterministic) for share and movement estimates."""
    return [xxh64(i.to_bytes(8, "little"), seed) for i in range(n)]
