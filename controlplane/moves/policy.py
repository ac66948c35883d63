"""What to shed, and when: the mover's decisions, with no IO (time and samples passed in), so
that the mover (controller.py) and the fleet model (bench/fleetmodel.py) run the same code.

- **Evacuate** a node at `rate`: shed its shards one after another, one shard per
  `connections / SHARDS / rate` seconds, round and round until it holds none.
- **Rebalance** a fleet: while some Envoy is more than `tolerance` percent away from the
  fleet's mean, those above the mean give up shards, fleet-wide at most `rate` connections per
  second, the most loaded first; a shard is not moved again within `min_age`.
- Connections already asked to go count as gone until a load sample taken one drain time
  (the Envoy's own) after the shed, so a stale sample never sheds twice.
- The fleet's mean is of the most it held within the last PENDING_SECONDS: clients of a shed
  shard are away (back-off, resolving, connecting) before they land elsewhere, and the dip
  that makes in the sum must not make the Envoys that gave look above the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from controlplane.xds.resources import SHARDS

# Without the Envoy's drain time, a shed counts as pending until the count dropped by half
# of it, or for this long at most.
PENDING_SECONDS = 10.0
# A sample this long after a shed's drain time shows its connections gone (the closes, the
# sample's own read).
SETTLE = 0.3


@dataclass(frozen=True)
class Sample:
    """One Envoy's load as the mover sees it: its connections, when that was sampled, and the
    Envoy's drain time (None when unknown)."""

    connections: int
    at: float
    drain_time: float | None = None

    @classmethod
    def of(cls, doc: dict[str, Any] | None) -> Sample | None:
        """From a fleet-registry record; None without a load sample."""
        load = (doc or {}).get("load") or {}
        n = load.get("connections")
        if not isinstance(n, (int, float)):
            return None
        drain = (load.get("drain") or {}).get("time")
        return cls(int(n), float(load.get("at") or 0.0), float(drain) if drain is not None else None)


@dataclass(frozen=True)
class Shed:
    node: str
    shard: int
    estimate: int  # connections it is expected to move
    connections: int  # the node's connections when it was decided


@dataclass
class Move:
    """One evacuation or rebalance in progress."""

    rate: float
    started: float
    initial: int = 0
    budget: float = 0.0
    moved: int = 0  # connections asked to go (sum of shard estimates)
    last_tick: float = 0.0
    totals: list[tuple[float, int]] = field(default_factory=list)  # (at, the fleet's sum) recently
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class Progress:
    move: Move
    state: str
    remaining: int
    extra: dict[str, float] = field(default_factory=dict)
    done: bool = False  # a one-off request is fulfilled


@dataclass
class _Donor:
    """What was asked of one Envoy: shards shed and when, connections still to go."""

    shed_at: dict[int, float] = field(default_factory=dict)
    next_shard: int = 0
    pending: list[tuple[float, int, int]] = field(default_factory=list)  # (at, connections then, estimate)


class Planner:
    def __init__(self) -> None:
        self.evacuations: dict[str, Move] = {}
        self.rebalances: dict[str, Move] = {}
        self.donors: dict[str, _Donor] = {}

    def effective(self, node: str, sample: Sample, now: float) -> int:
        """Connections, less those already asked to go that the samples cannot show gone."""
        donor = self.donors.get(node)
        if donor is None:
            return sample.connections
        kept = []
        for at, then, estimate in donor.pending:
            if now - at >= PENDING_SECONDS:
                continue
            if sample.drain_time is not None:
                settled = sample.at >= at + sample.drain_time + SETTLE
            else:
                settled = sample.connections <= then - estimate // 2
            if not settled:
                kept.append((at, then, estimate))
        donor.pending = kept
        return max(0, sample.connections - sum(e for _, _, e in kept))

    def _take_shard(self, node: str, connections: int, estimate: int, now: float, min_age: float) -> Shed | None:
        donor = self.donors.setdefault(node, _Donor())
        for i in range(SHARDS):
            shard = (donor.next_shard + i) % SHARDS
            if now - donor.shed_at.get(shard, -math.inf) >= min_age:
                break
        else:
            return None  # every shard moved too recently
        donor.shed_at[shard] = now
        donor.next_shard = (shard + 1) % SHARDS
        donor.pending.append((now, connections, estimate))
        return Shed(node, shard, estimate, connections)

    def evacuate(
        self, node: str, rate: float, sample: Sample | None, present: bool, now: float
    ) -> tuple[list[Shed], Progress]:
        """One tick of evacuating `node` (`present`: it is connected at all)."""
        move = self.evacuations.get(node)
        connections = sample.connections if sample is not None else None
        if move is None or move.rate != rate:
            started = move.started if move is not None else now
            move = self.evacuations[node] = Move(rate=rate, started=started, initial=connections or 0, last_tick=now)
        if not present or sample is None:
            return [], Progress(move, "waiting" if present else "evacuated", connections or 0)
        out = []
        effective = self.effective(node, sample, now)
        estimate = max(1, math.ceil(max(move.initial, sample.connections) / SHARDS))
        # The first round sheds every shard at the rate; after it, a shard again only for
        # connections that arrived meanwhile (once the samples show the round's gone).
        donor = self.donors.get(node)
        first_round = donor is None or sum(t >= move.started for t in donor.shed_at.values()) < SHARDS
        if effective > 0 or (first_round and sample.connections > 0):
            move.budget = min(move.budget + rate * (now - move.last_tick), 2 * estimate) if move.moved else estimate
            if move.budget >= estimate:
                shed = self._take_shard(node, sample.connections, estimate, now, 0.0)
                if shed is not None:
                    out.append(shed)
                    move.budget -= estimate
                    move.moved += estimate
        move.last_tick = now
        return out, Progress(move, "evacuating" if sample.connections else "evacuated", sample.connections)

    def rebalance(
        self, fleet: str, rate: float, tolerance: float, min_age: float, members: dict[str, Sample], now: float
    ) -> tuple[list[Shed], Progress]:
        """One tick of rebalancing `fleet` over `members` (its Envoys in front of clients)."""
        move = self.rebalances.get(fleet)
        if move is None or move.rate != rate:
            move = self.rebalances[fleet] = Move(rate=rate, started=now, last_tick=now)
        if len(members) < 2:
            return [], Progress(move, "idle", 0)
        # The mean is of what the fleet holds, including the clients on their way from one
        # Envoy to another (the recent peak of the sum); a giver counts without what it was
        # already asked to give.
        total = sum(s.connections for s in members.values())
        move.totals = [(t, n) for t, n in move.totals if now - t < PENDING_SECONDS] + [(now, total)]
        peak = max(n for _, n in move.totals)
        mean = peak / len(members)
        effective = {n: self.effective(n, s, now) for n, s in members.items()}
        moving = any(self.donors[n].pending for n in members if n in self.donors)
        # Within tolerance: every Envoy within `tolerance` of the mean, above and below (an
        # empty new Envoy is as much out of balance as a full old one), with nothing still on
        # its way. Until then, those above the mean give.
        spread = mean * tolerance / 100
        balanced = not moving and all(abs(s.connections - mean) <= spread for s in members.values())
        excess = {} if balanced else {n: c - mean for n, c in effective.items() if c > mean + spread / 2}
        if balanced:
            return [], Progress(move, "balanced", 0, {"mean": mean}, done=True)
        nudge = False
        if not excess:
            if moving or peak - total > spread / 2:
                return [], Progress(move, "rebalancing", 0, {"mean": mean})  # what moves has yet to land
            # Settled, one Envoy out of tolerance below the mean, and none far enough above it
            # to give by the rule above (with four Envoys, one 11 % low leaves the other three
            # only ~4 % high). One shard off the fullest still helps if it brings that pair
            # closer to the mean; if it cannot, this is as balanced as a shard's size allows.
            donor = max(effective, key=lambda n: effective[n])
            low = min(effective.values())
            estimate = math.ceil(members[donor].connections / SHARDS)
            after = max(abs(effective[donor] - estimate - mean), abs(low + estimate - mean))
            if after >= max(effective[donor] - mean, mean - low):
                return [], Progress(move, "balanced", 0, {"mean": mean, "shard_bound": 1.0}, done=True)
            excess, nudge = {donor: effective[donor] - mean}, True
        biggest = max(s.connections for s in members.values())
        move.budget = min(move.budget + rate * (now - move.last_tick), 2 * max(1, biggest // SHARDS))
        move.last_tick = now
        out = []
        for node in sorted(excess, key=lambda n: -excess[n]):
            connections = members[node].connections
            estimate = max(1, math.ceil(connections / SHARDS))
            if move.budget < estimate:
                break
            if estimate > 2 * excess[node] and not nudge:
                continue  # one more shard would overshoot the mean by more than it fixes
            shed = self._take_shard(node, connections, estimate, now, min_age)
            if shed is not None:
                out.append(shed)
                move.budget -= estimate
                move.moved += estimate
        return out, Progress(move, "rebalancing", round(sum(excess.values())), {"mean": mean})
