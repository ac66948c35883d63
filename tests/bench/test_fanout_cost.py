"""A push costs each stream work of its own, not work in proportion to the fleet.

Counted, not timed: the Python calls the replica's own code (controlplane/) makes while one
backend change reaches every simulated Envoy, per client, at 16 and at 64 clients. Linear
fan-out keeps calls per client about flat; a push that walked the fleet once per stream
(O(fleet) per stream, O(fleet²) per change) makes them grow with the fleet.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from bench.fleetsim.fleet import Fleet, specs
from controlplane.intent.model import Backend
from controlplane.intent.store import Store
from tests.conftest import seed_web, wait_for

CONTROLPLANE = str(Path(__file__).resolve().parents[2] / "controlplane")


async def _calls_per_client(store: Store, port: int, n: int, prefix: str, change_port: int) -> float:
    fleet = await asyncio.to_thread(Fleet, f"127.0.0.1:{port}", specs(n, delta_share=0.5, prefix=prefix), 2)
    try:
        await asyncio.to_thread(fleet.start, 60)
        await asyncio.sleep(0.5)  # registry writes of the connects are done
        calls = 0

        def count(frame: FrameType, event: str, arg: Any) -> None:
            nonlocal calls
            if event == "call" and frame.f_code.co_filename.startswith(CONTROLPLANE):
                calls += 1

        async def everyone_saw_it() -> bool:
            return all(t is not None for t in (await asyncio.to_thread(fleet.seen, [change_port]))[change_port])

        sys.setprofile(count)  # this thread only: the replica's event loop
        try:
            await store.put(Backend(name=f"chg-{prefix}", address="10.0.0.9", port=change_port), cluster="web")
            await wait_for(everyone_saw_it, 30, f"{n} clients saw the change")
        finally:
            sys.setprofile(None)
        return calls / n
    finally:
        await asyncio.to_thread(fleet.stop)


async def test_a_push_costs_each_stream_its_own_work(store: Store, make_replica) -> None:
    await seed_web(store)
    replica = await make_replica("cost", probe_interval=0, load_interval=0, moves_interval=0)
    small = await _calls_per_client(store, replica.port, 16, "s", 40001)
    large = await _calls_per_client(store, replica.port, 64, "l", 40002)
    # Measured: 0.8-0.9x (the fixed costs of a change spread over more clients). One walk over
    # the fleet per push (a loop over every stream on each write) made it 1.9x.
    assert large < 1.5 * small, f"calls per client: {small:.0f} at 16 clients, {large:.0f} at 64"
