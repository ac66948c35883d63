"""The fleet's floor in the in-service set (`front_states`): when every Envoy of a fleet is
out for being full, the least full stay in front as `kept-full`, up to `min_in_service`;
an Envoy out on other evidence (drained, unhealthy) is never kept."""

from __future__ import annotations

from controlplane.frontdoor.render import front_states, in_service
from tests.controlplane.frontdoor.test_render import _node


def _full(fill: float, **extra: object) -> dict:
    return _node("edge", 5, f"10.0.0.{int(fill * 100)}", load={"fill": fill, "full": True}, **extra)


def test_a_fleet_all_at_high_water_keeps_its_least_full() -> None:
    nodes = {"a": _full(0.97), "b": _full(0.91), "c": _full(0.95), "x": _node("other", 5, "10.0.1.1")}
    assert front_states(nodes) == {"a": "full", "b": "kept-full", "c": "full", "x": "in"}
    assert [m.node_id for m in in_service(nodes, fleet="edge")] == ["b"]
    assert front_states(nodes, floors={"edge": 2}) == {"a": "full", "b": "kept-full", "c": "kept-full", "x": "in"}
    assert front_states(nodes, floors={"edge": 0})["b"] == "full"  # floor 0: nothing kept


def test_envoys_in_count_toward_the_floor_and_others_are_never_kept() -> None:
    nodes = {"a": _full(0.97), "b": _node("edge", 5, "10.0.0.2")}
    assert front_states(nodes) == {"a": "full", "b": "in"}  # one in: the floor of 1 holds
    assert front_states(nodes, floors={"edge": 2})["a"] == "kept-full"
    out = {
        "d": _node("edge", 5, "10.0.0.3", draining=True),
        "u": _node("edge", 5, "10.0.0.4", ok=False),
        "n": _node("edge", 0, "10.0.0.5"),
    }
    assert front_states(out, floors={"edge": 3}) == {"d": "drained", "u": "unhealthy", "n": "unconfigured"}
    assert in_service(out, floors={"edge": 3}) == []
