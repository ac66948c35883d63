"""The central ring reproduces every request recorded from a real Envoy.

The vectors are ../shared/ring-vectors.json (recorded from Envoy 1.40), copied into
tests/controlplane/ring/data so the suite does not depend on where shared/ is mounted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.ring.tables import HashLB, RingConfig, RingHost, combine, header_hash

VECTORS = Path(__file__).resolve().parent / "data" / "ring-vectors.json"
CASES = json.loads(VECTORS.read_text())["cases"]


def _loc(d: dict | None) -> tuple[str, str, str]:
    return ("", "", "") if not d else (d.get("region", ""), d.get("zone", ""), d.get("sub_zone", ""))


def _lb(case: dict) -> HashLB:
    hosts = [
        RingHost(
            h["name"],
            h["address"],
            h["port"],
            h["weight"],
            h["hash_key"] if isinstance(h["hash_key"], str) else None,
            h["health"],
            h["priority"],
            _loc(h["locality"]),
        )
        for h in case["hosts"]
    ]
    lw = {_loc(x["locality"]): x["weight"] for x in case.get("locality_weights") or []}
    cfg = RingConfig(
        algorithm="maglev" if case["lb_policy"] == "MAGLEV" else "ring_hash",
        table_size=case.get("table_size") or 65537,
        minimum_ring_size=case.get("minimum_ring_size") or 1024,
        maximum_ring_size=case.get("maximum_ring_size") or 8_388_608,
        hash_function=(case.get("hash_function") or "XX_HASH").lower(),
        panic_threshold=case["healthy_panic_threshold"],
        overprovisioning=case["overprovisioning_factor"],
        locality_weighted=case["locality_weighted"],
        locality_weights=lw,
        node_locality=_loc(case["node_locality"]) if case["node_locality"] else None,
    )
    return HashLB(hosts, cfg)


def test_vectors_are_present() -> None:
    assert len(CASES) >= 25, f"expected the shared ring vectors at {VECTORS}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_envoy(case: dict) -> None:
    lb = _lb(case)
    wrong = []
    for req in case["requests"]:
        h = combine((header_hash(req["headers"].get(p["header"], [])), p["terminal"]) for p in case["hash_policies"])
        got = lb.pick(h)
        if got != req["backend"]:
            wrong.append((req["headers"], req["backend"], got))
    assert not wrong, f"{len(wrong)}/{len(case['requests'])} differ, e.g. {wrong[:3]}"
