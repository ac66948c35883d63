"""A model of a 2M-connection fleet, driven by lbcp's own code: `python -m bench.fleetmodel`.

Time-stepped (0.1 s). What is lbcp's, called as the replicas and `lbcp dns` call it:

- the front tier's choice: `controlplane.frontdoor.render.by_headroom` over the Envoys in
  service (not drained, not `full`), answered like `lbcp dns` (the most-free band first,
  rotated within it), from load samples that are `--sample-interval` old at worst;
- capacity and hysteresis: `controlplane.xds.load._fill` with the fleet's `Capacity`;
- the mover's decisions: `controlplane.moves.policy.Planner` (evacuation, rebalance), on the
  same stale samples, every 0.25 s.

What is modelled (Envoy and the clients): each Envoy's admission bucket (the fleet's
`max_new_connections_per_second`, burst one second's worth, refilled continuously), its
connection limit, its 10 shards (new connections land on one at random), a shed shard's
connections closing one drain time after the shed; clients that reconnect after a close or a
refusal with jittered exponential back-off (0.5–1.5 × 1 s doubling to 30 s); a churn of
sessions (new ones arriving, old ones ending, 2M held in steady state).

Scenarios: `die` (one of 40 Envoys × 50k is killed), `grow` (40 → 50 Envoys, rebalance off
and at several rates), `maintenance` (Envoys evacuated one after another). Each writes
bench/results/fleetmodel-<scenario>.json and a plot .png, and prints peaks of new connections/s
and TLS handshakes/s per Envoy against the 10k/s and 5k/s thresholds operators alert on, the
time until every Envoy is within the tolerance, and the forced reconnects.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.plotting import pyplot
from controlplane.frontdoor.render import Member, by_headroom
from controlplane.intent.model import Capacity
from controlplane.moves.policy import Planner, Sample
from controlplane.xds.load import _fill
from controlplane.xds.resources import SHARDS

RESULTS = Path(__file__).parent / "results"
DT = 0.1
NEW_CX_ALERT, HANDSHAKE_ALERT = 10_000, 5_000


@dataclass
class Envoy:
    name: str
    shards: list[float] = field(default_factory=lambda: [0.0] * SHARDS)
    alive: bool = True
    drained: bool = False
    tokens: float = 0.0
    full: bool = False
    admitted: float = 0.0  # this tick
    closing: list[tuple[float, int]] = field(default_factory=list)  # (closes at, shard)

    @property
    def connections(self) -> float:
        return sum(self.shards)


@dataclass
class Model:
    envoys: list[Envoy]
    capacity: Capacity
    drain_time: float = 5.0
    sample_interval: float = 2.0
    # The real paths the model would otherwise skip: a sample reaches the DNS answer after the
    # registry flush and lbcp dns's read (0.2 s + 0.2 s by default); a shed reaches the Envoy
    # after the watch, the snapshot and its LDS update (~0.1 s measured in test_shed).
    front_lag: float = 0.4
    shed_lag: float = 0.1
    # From a client's back-off end to its connection (resolving, connecting, the handshake),
    # spread like the back-off (0.5–1.5 ×): 0 is instant; bench/rebalance.py measures it.
    reconnect_delay: float = 0.0
    session_seconds: float = 3600.0
    sessions: float = 2_000_000  # held in steady state: fresh ones arrive at sessions / session_seconds
    seed: int = 1
    now: float = 0.0
    planner: Planner = field(default_factory=Planner)
    wheel: dict[int, dict[int, float]] = field(default_factory=dict)  # tick -> back-off level -> clients
    forced: float = 0.0
    samples: dict[str, Sample] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    turn: int = 0
    next_sample: float = 0.0
    next_mover: float = 0.0
    evacuate: dict[str, float] = field(default_factory=dict)  # node -> connections per second
    rebalance: tuple[float, float] | None = None  # (rate, tolerance percent)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    _pending_members: list[tuple[float, list[Member]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for e in self.envoys:
            e.tokens = self._burst()

    def _rate(self) -> float:
        return float(self.capacity.max_new_connections_per_second or 1e12)

    def _burst(self) -> float:
        return float(self.capacity.new_connections_burst or self._rate())

    # -- the clients -------------------------------------------------------------------------

    def _later(self, clients: float, level: int) -> None:
        """`clients` retry after a jittered back-off of level `level` (spread over its window)."""
        base = min(30.0, 1.0 * 2**level)
        lo = int(0.5 * (base + self.reconnect_delay) / DT)
        hi = max(lo + 1, int(1.5 * (base + self.reconnect_delay) / DT))
        tick = round(self.now / DT)
        per = clients / (hi - lo)
        for k in range(lo, hi):
            slot = self.wheel.setdefault(tick + k, {})
            slot[level] = slot.get(level, 0.0) + per

    def _arrivals(self) -> dict[int, float]:
        due = self.wheel.pop(round(self.now / DT), {})
        new = self.sessions / self.session_seconds * DT  # fresh sessions of the churn
        due[0] = due.get(0, 0.0) + new
        return due

    # -- one tick ----------------------------------------------------------------------------

    def step(self) -> None:
        if self.now >= self.next_sample:
            self._sample()
            self.next_sample += self.sample_interval
        self._front()
        if self.now >= self.next_mover:
            self._mover()
            self.next_mover += 0.25
        for e in self.envoys:
            e.admitted = 0.0
            if not e.alive:
                continue
            # Sessions end; shed shards close one drain time after their shed.
            for s in range(SHARDS):
                e.shards[s] -= e.shards[s] * DT / self.session_seconds
            for at, shard in [c for c in e.closing if c[0] <= self.now]:
                e.closing.remove((at, shard))
                self.forced += e.shards[shard]
                self._later(e.shards[shard], 0)
                e.shards[shard] = 0.0
            e.tokens = min(self._burst(), e.tokens + self._rate() * DT)
        band = by_headroom(self.members)[0] if self.members else []
        by_name = {e.name: e for e in self.envoys}
        for level, clients in self._arrivals().items():
            if not band:
                self._later(clients, min(level + 1, 5))
                continue
            # lbcp dns rotates within the most-free band: each client takes the first answer.
            share = clients / len(band)
            refused = 0.0
            for m in band:
                e = by_name[m.node_id]
                if not e.alive:
                    refused += share  # resolved to a dead Envoy (the sample is stale)
                    continue
                room = max(0.0, self.capacity.max_connections_per_envoy - e.connections)
                take = min(share, e.tokens, room)
                e.tokens -= take
                e.admitted += take
                for s in range(SHARDS):
                    e.shards[s] += take / SHARDS
                refused += share - take
            if refused > 1e-9:
                self._later(refused, min(level + 1, 5))
        self._record()
        self.now = round(self.now + DT, 6)

    def _sample(self) -> None:
        """The replicas' load samples, and what `lbcp dns` answers from them until the next."""
        self.samples = {}
        members = []
        for e in self.envoys:
            if not e.alive:
                continue
            conns = round(e.connections)
            fill = _fill(self.capacity, {"edge": conns}, e.full)
            e.full = bool(fill["full"])
            self.samples[e.name] = Sample(conns, self.now, self.drain_time)
            if not e.drained and not e.full:
                members.append(Member(e.name, f"10.0.{len(members) // 250}.{len(members) % 250 + 1}", fill["headroom"]))
        self._pending_members.append((self.now + self.front_lag, members))

    def _front(self) -> None:
        while self._pending_members and self._pending_members[0][0] <= self.now:
            self.members = self._pending_members.pop(0)[1]

    def _mover(self) -> None:
        for node, rate in self.evacuate.items():
            e = next(x for x in self.envoys if x.name == node)
            sheds, _ = self.planner.evacuate(node, rate, self.samples.get(node), e.alive, self.now)
            for s in sheds:
                e.closing.append((self.now + self.shed_lag + self.drain_time, s.shard))
        if self.rebalance is not None:
            rate, tolerance = self.rebalance
            in_front = {m.node_id for m in self.members}
            members = {n: s for n, s in self.samples.items() if n in in_front}
            sheds, _ = self.planner.rebalance("fleet", rate, tolerance, 30.0, members, self.now)
            by_name = {e.name: e for e in self.envoys}
            for s in sheds:
                by_name[s.node].closing.append((self.now + self.shed_lag + self.drain_time, s.shard))

    def _record(self) -> None:
        alive = [e for e in self.envoys if e.alive and not e.drained]
        conns = [e.connections for e in alive]
        mean = sum(conns) / len(conns) if conns else 0.0
        self.timeline.append(
            {
                "t": self.now,
                "connections": [round(e.connections) for e in self.envoys],
                "new_per_second": [round(e.admitted / DT) for e in self.envoys],
                "spread": round(max(abs(c - mean) for c in conns) / mean, 4) if mean else 0.0,
                "waiting": round(sum(sum(v.values()) for v in self.wheel.values())),
            }
        )

    def run(self, seconds: float, events: dict[float, Any] | None = None) -> None:
        events = dict(events or {})
        while self.now < seconds:
            for t in [t for t in events if t <= self.now]:
                events.pop(t)(self)
            self.step()


# -- scenarios ---------------------------------------------------------------------------------


def _fleet(n: int, each: float) -> list[Envoy]:
    out = [Envoy(f"envoy-{i}") for i in range(n)]
    for e in out:
        e.shards = [each / SHARDS] * SHARDS
    return out


def _summary(m: Model, since: float, tolerance: float = 0.1) -> dict[str, Any]:
    rows = [r for r in m.timeline if r["t"] >= since]
    peaks = [0] * len(m.envoys)  # per Envoy, the most admitted in any 1 s
    window = int(1 / DT)
    for i in range(len(m.envoys)):
        series = [r["new_per_second"][i] * DT for r in rows]
        best, acc = 0.0, 0.0
        for k, v in enumerate(series):
            acc += v - (series[k - window] if k >= window else 0.0)
            best = max(best, acc)
        peaks[i] = round(best)
    within = next((r["t"] - since for r in rows if r["spread"] <= tolerance), None)
    busy = [r["t"] for r in rows if r["waiting"] >= 1]
    reconnected = round(busy[-1] - since + DT, 1) if busy else 0.0
    return {
        "peak_new_connections_per_second": max(peaks),
        "peak_tls_handshakes_per_second": max(peaks),  # every new connection is a TLS handshake
        "over_new_connection_alert": sum(p > NEW_CX_ALERT for p in peaks),
        "over_handshake_alert": sum(p > HANDSHAKE_ALERT for p in peaks),
        "seconds_until_within_tolerance": round(within, 1) if within is not None else None,
        "forced_reconnects": round(m.forced),
        "seconds_until_all_reconnected": reconnected,
        "final_spread": rows[-1]["spread"] if rows else None,
    }


def scenario_die(rate: int) -> dict[str, Any]:
    cap = Capacity(max_connections_per_envoy=60_000, max_new_connections_per_second=rate)
    m = Model(_fleet(40, 50_000), cap)

    def kill(model: Model) -> None:
        victim = model.envoys[0]
        victim.alive = False
        model.forced += victim.connections
        model._later(victim.connections, 0)
        victim.shards = [0.0] * SHARDS

    m.run(120, {10.0: kill})
    return {"scenario": "die", "rate": rate, **_summary(m, 10.0), "timeline": m.timeline[::5]}


def scenario_grow(rate: float | None) -> dict[str, Any]:
    cap = Capacity(max_connections_per_envoy=60_000, max_new_connections_per_second=5_000)
    envoys = _fleet(40, 50_000) + [Envoy(f"envoy-{i}") for i in range(40, 50)]
    for e in envoys[40:]:
        e.alive = False
    m = Model(envoys, cap)

    def grow(model: Model) -> None:
        for e in model.envoys[40:]:
            e.alive = True
            e.tokens = model._burst()
        if rate is not None:
            model.rebalance = (rate, 10.0)

    m.run(900 if rate is None or rate < 2000 else 400, {10.0: grow})
    return {"scenario": "grow", "rate": rate, **_summary(m, 10.0), "timeline": m.timeline[::10]}


def scenario_maintenance(rate: float, count: int, admit: int = 5_000, burst: int | None = None) -> dict[str, Any]:
    cap = Capacity(max_connections_per_envoy=60_000, max_new_connections_per_second=admit, new_connections_burst=burst)
    m = Model(_fleet(40, 50_000), cap)
    per = 50_000 / rate + m.drain_time + 5.0
    events = {}
    for k in range(count):

        def evacuate(model: Model, k: int = k) -> None:
            if k:
                prev = model.envoys[k - 1]  # done: stopped, and back after its maintenance
                prev.drained = False
                model.evacuate.pop(prev.name, None)
            model.envoys[k].drained = True
            model.evacuate[model.envoys[k].name] = rate

        events[10.0 + k * per] = evacuate
    m.run(10.0 + count * per + 20, events)
    return {"scenario": "maintenance", "rate": rate, "count": count, "admit": admit, "burst": burst,
            **_summary(m, 10.0, 1.0), "timeline": m.timeline[::10]}  # fmt: skip


def _plot(name: str, runs: list[dict[str, Any]]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for run in runs:
        t = [r["t"] for r in run["timeline"]]
        label = f"rate {run['rate']:.0f}" if run.get("rate") is not None else "rebalance off"
        if run.get("burst"):
            label += f", admit {run['admit']}/s burst {run['burst']}"
        if name == "grow":
            axes[0].plot(t, [r["spread"] * 100 for r in run["timeline"]], label=label)
        else:
            axes[0].plot(t, [min(r["connections"]) for r in run["timeline"]], label=f"{label}: least")
            axes[0].plot(t, [max(r["connections"]) for r in run["timeline"]], label=f"{label}: most")
        axes[1].plot(t, [max(r["new_per_second"]) for r in run["timeline"]], label=label)
    axes[0].set(xlabel="seconds", ylabel="spread from the mean, %" if name == "grow" else "connections per Envoy")
    axes[1].axhline(HANDSHAKE_ALERT, color="red", linestyle="--", linewidth=0.8, label="5k handshakes/s alert")
    axes[1].set(xlabel="seconds", ylabel="new connections/s, busiest Envoy")
    for a in axes:
        a.legend(fontsize=7)
    fig.suptitle(f"fleet model: {name}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"fleetmodel-{name}.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=("die", "grow", "maintenance", "all"), nargs="?", default="all")
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    todo = ["die", "grow", "maintenance"] if args.scenario == "all" else [args.scenario]
    for name in todo:
        if name == "die":
            runs = [scenario_die(r) for r in (1_000, 2_000, 100_000)]
        elif name == "grow":
            runs = [scenario_grow(r) for r in (None, 1_000.0, 5_000.0, 20_000.0)]
        else:
            runs = [scenario_maintenance(r, 4) for r in (2_000.0, 10_000.0)]
            runs.append(scenario_maintenance(2_000.0, 4, admit=3_000, burst=500))
        (RESULTS / f"fleetmodel-{name}.json").write_text(json.dumps(runs, indent=1) + "\n")
        _plot(name, runs)
        for run in runs:
            shown = {k: v for k, v in run.items() if k != "timeline"}
            print(json.dumps(shown))


if __name__ == "__main__":
    main()
