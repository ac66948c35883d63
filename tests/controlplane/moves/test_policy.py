"""The mover's decisions, in simulated time (the same Planner the mover and the fleet model run)."""

from __future__ import annotations

from controlplane.moves.policy import Planner, Sample
from controlplane.xds.resources import SHARDS


def test_evacuation_sheds_one_shard_per_its_share_of_the_rate() -> None:
    p = Planner()
    times: list[float] = []
    held, closing = 400, []
    for step in range(80):  # 8 s in ticks of 0.1 s; each shard closes one drain time (1 s) after
        now = step * 0.1
        held -= sum(n for t, n in closing if t <= now)
        closing = [(t, n) for t, n in closing if t > now]
        sheds, progress = p.evacuate("a", 100, Sample(held, now, drain_time=1.0), True, now)
        times += [now for _ in sheds]
        closing += [(now + 1.0, s.estimate) for s in sheds]
    # 400 connections, 40 a shard, 100/s: a shard every 0.4 s (the 0.1 s tick), each shard once.
    assert len(times) == SHARDS and sorted(p.donors["a"].shed_at) == list(range(SHARDS))
    assert all(abs(t - 0.4 * i) <= 0.11 for i, t in enumerate(times)), times
    assert held == 0 and progress.state == "evacuated"


def test_rebalance_until_within_tolerance_without_double_shedding() -> None:
    p = Planner()
    load = {"a": 300, "b": 300, "c": 0}
    shed_total, now = 0, 0.0
    in_flight: list[tuple[float, str, int]] = []  # (closes at, node, connections)
    state = ""
    while now < 30 and state != "balanced":
        for item in [x for x in in_flight if x[0] <= now]:  # closed after the drain time
            in_flight.remove(item)
            load[item[1]] -= item[2]
            load[min(load, key=lambda n: load[n])] += item[2]  # the front tier: the emptiest
        samples = {n: Sample(c, now, drain_time=1.0) for n, c in load.items()}
        sheds, progress = p.rebalance("f", 50, 10, 30, samples, now)
        for s in sheds:
            shed_total += s.estimate
            in_flight.append((now + 1.0, s.node, s.estimate))
        state = progress.state
        now = round(now + 0.1, 1)
    assert state == "balanced", (load, now)
    mean = sum(load.values()) / 3
    assert all(abs(c - mean) <= 0.1 * mean for c in load.values()), load
    assert shed_total <= 250, shed_total  # about the 200 that had to move (shard-sized steps), not 300+
    assert 3.0 <= now <= 8.0, now  # ~200 at 50/s, plus the drain time


def test_a_shard_is_not_moved_again_within_min_age() -> None:
    p = Planner()
    first, _ = p.rebalance("f", 1000, 10, 30, {"a": Sample(1000, 0.0), "b": Sample(0, 0.0)}, 0.0)
    shards = {s.shard for s in first}
    later: set[int] = set()
    for step in range(1, 200):
        now = step * 0.1  # 20 s: no shard twice, however far from balanced the samples say
        sheds, _ = p.rebalance("f", 1000, 10, 30, {"a": Sample(1000, now, 0.1), "b": Sample(0, now, 0.1)}, now)
        assert not ({s.shard for s in sheds} & (shards | later))
        later |= {s.shard for s in sheds}
    assert shards | later == set(range(SHARDS))
