"""The fill, headroom and high/low-water hysteresis a replica derives from a load sample."""

from __future__ import annotations

from controlplane.intent.model import Capacity
from controlplane.xds.load import _fill


def test_full_turns_on_at_high_water_and_off_only_below_low_water() -> None:
    cap = Capacity(max_connections_per_envoy=100, high_water_percent=90, low_water_percent=75)
    full = False
    seen = []
    for connections in (50, 89, 90, 95, 80, 76, 75, 74, 89, 90):
        got = _fill(cap, {"127.0.0.1_10000": connections, "127.0.0.1_10443": 3}, full)
        full = got["full"]
        seen.append(full)
    assert seen == [False, False, True, True, True, True, True, False, False, True]
    assert _fill(cap, {"l": 40}, False) == {"fill": 0.4, "headroom": 0.6, "full": False}
    assert _fill(None, {"l": 40}, False) == {}  # no capacity: no fill, never full
    assert _fill(cap, {"l": 250}, False)["headroom"] == 0.0
