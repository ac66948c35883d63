"""The go-control-plane peer of the fleet simulator (bench/gocp, bench/fleetsim/peer.py): it takes
the scenarios' writes through its REST surface and serves them to simulated Envoys; one
backend change reaches every client."""

from __future__ import annotations

import httpx
import pytest

from bench.fleetsim.fleet import Fleet, specs
from bench.fleetsim.peer import PeerStack, go_tool
from bench.fleetsim.scenarios import CHANGE_PORT, seed

pytestmark = pytest.mark.skipif(
    go_tool() is None, reason="go is not installed: the go-control-plane peer (bench/gocp) cannot be built"
)


def test_gocp_peer_serves_a_backend_change_to_every_client() -> None:
    stack = PeerStack(quiet=True).start()  # builds bench/gocp/bin/gocp first when missing
    fleet: Fleet | None = None
    try:
        with httpx.Client(base_url=stack.api_url, timeout=30) as api:
            seed(api, 2, 6)  # the scenarios' own seed: maglev clusters, backends, a listener, routes
            # 4 delta clients (the fan-out scenario's kind) and 2 on state of the world.
            fleet = Fleet(stack.targets[0], specs(6, delta_share=4 / 6, prefix="gocp"), 2)
            fleet.start(timeout=15)
            assert fleet.unseen([8000]) == 0  # the seeded endpoints arrived
            api.put(
                "/v1/clusters/c001/backends/added", json={"address": "127.0.0.2", "port": CHANGE_PORT}
            ).raise_for_status()
            assert fleet.wait_seen([CHANGE_PORT], timeout=10), "not every client saw the new endpoint"
            counters = fleet.counters()
        assert sorted(c["delta"] for c in counters) == [False] * 2 + [True] * 4
        assert all(c["violations"] == 0 and c["reconnects"] == 0 and c["nacks"] == 0 for c in counters), counters
        # Each client got exactly the change it needed: one EDS response (the cluster's) after its config.
        assert {c["responses"] for c in counters if c["delta"]} == {5}, counters
    finally:
        if fleet is not None:
            fleet.stop()
        stack.stop()
