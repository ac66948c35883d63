"""Properties of the Maglev ring (hypothesis, bounded): low disruption, low imbalance."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.ring.tables import HashLB, MaglevTable, RingConfig, RingHost


def _table(names: list[str], size: int = 65537) -> MaglevTable:
    lb = HashLB([RingHost(n, "10.0.0.1", 1, hash_key=n) for n in names], RingConfig("maglev", table_size=size))
    return lb.tables[0]


names_st = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12), min_size=2, max_size=200, unique=True
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=names_st, extra=st.text("ABCDEFGHIJ", min_size=3, max_size=8))
def test_adding_one_of_n_moves_close_to_one_nth(names: list[str], extra: str) -> None:
    before, after = _table(names), _table(names + [extra])
    moved = (
        sum(before.names[a] != after.names[b] for a, b in zip(before.table, after.table, strict=False)) / before.size
    )
    ideal = 1 / (len(names) + 1)
    # Maglev is near-minimal: the new host takes ~1/(N+1), plus a small reshuffle among the others.
    assert ideal * 0.9 <= moved <= ideal + 0.02 + 0.1 * ideal, (len(names), moved, ideal)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.sampled_from([10, 100, 500, 1000]))
def test_imbalance_is_small(n: int) -> None:
    shares = _table([f"backend-{i}" for i in range(n)]).shares()
    avg = 1 / n
    # Each host gets floor or ceil of M/N slots, give or take a slot.
    assert max(shares.values()) / avg < 1 + 2 * n / 65537 + 0.001
    assert min(shares.values()) / avg > 1 - 2 * n / 65537 - 0.001
