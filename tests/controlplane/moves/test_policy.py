"""The mover's decisions, in simulated time (the same Planner the mover and the fleet model run)."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("back_off", [0.0, 1.5])
def test_rebalance_until_within_tolerance_without_double_shedding(back_off: float) -> None:
    """`back_off`: the clients of a shed shard are away this long before they reconnect, so
    the fleet's sum dips meanwhile; that must not make the Envoys that gave look above the mean."""
    p = Planner()
    load = {"a": 300, "b": 300, "c": 0}
    shed_total, now = 0, 0.0
    in_flight: list[tuple[float, str, int]] = []  # (closes at, node, connections)
    away: list[tuple[float, int]] = []  # (reconnects at, connections)
    state = ""
    while now < 30 and state != "balanced":
        for item in [x for x in in_flight if x[0] <= now]:  # closed after the drain time
            in_flight.remove(item)
            load[item[1]] -= item[2]
            away.append((now + back_off, item[2]))
        for item in [x for x in away if x[0] <= now]:
            away.remove(item)
            load[min(load, key=lambda n: load[n])] += item[1]  # the front tier: the emptiest
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
    assert 3.0 <= now <= 8.0 + back_off, now  # ~200 at 50/s, plus the drain time and the back-off


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


def _settled_rebalance(load: dict[str, int], tolerance: int) -> tuple[dict[str, int], str, int]:
    """Rebalance `load` where every shed lands at once on the emptiest; (load, state, sheds)."""
    p = Planner()
    load, state, sheds = dict(load), "", 0
    for step in range(200):
        now = step * 0.5  # each tick two drain times after the last: every shed has settled
        out, progress = p.rebalance("f", 1000, tolerance, 0, {n: Sample(c, now, 0.1) for n, c in load.items()}, now)
        for s in out:
            load[s.node] -= s.estimate
            load[min(load, key=lambda n: load[n])] += s.estimate
        sheds += len(out)
        state = progress.state
        if progress.done:
            break
    return load, state, sheds


def test_one_envoy_low_with_none_far_enough_above_still_gets_a_shard() -> None:
    # bench.rebalance's drain-6 run 1 stopped here for 120 s: mean 1,500, 1,343 is out of the
    # 10 % tolerance, and no Envoy is above mean + 5 % to give by the usual rule.
    load, state, sheds = _settled_rebalance({"a": 1554, "b": 1541, "c": 1562, "d": 1343}, 10)
    mean = sum(load.values()) / 4
    assert state == "balanced" and sheds == 1, (load, state, sheds)
    assert all(abs(c - mean) <= 0.1 * mean for c in load.values()), load


def test_balanced_as_a_shard_allows_when_no_shard_would_help() -> None:
    # Tolerance 5 %: the low one is 8 % under, but a shard (a tenth, 102) off the fullest
    # would leave that one 8.2 % under: nothing to gain, so the move ends rather than spin.
    start = {"a": 1020, "b": 1020, "c": 1020, "d": 1020, "e": 920}
    load, state, sheds = _settled_rebalance(start, 5)
    assert state == "balanced" and sheds == 0 and load == start, (load, state, sheds)
