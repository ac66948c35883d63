"""The mover's leadership against a real etcd: one replica moves connections at a time, and
another takes over when it stops."""

from __future__ import annotations

from controlplane.intent.view import IntentView
from controlplane.moves.controller import Mover
from tests.conftest import wait_for


async def test_one_mover_leads_and_another_takes_over(etcd) -> None:
    movers = [Mover(etcd, IntentView(etcd), f"r{i}", interval=0.05) for i in range(2)]
    for m in movers:
        await m.start()
    try:

        async def one_leader() -> bool:
            return sum(m.leader for m in movers) == 1

        await wait_for(one_leader, timeout=5, what="one leader")
        leader = next(m for m in movers if m.leader)
        standby = next(m for m in movers if not m.leader)
        await leader.stop()  # revokes its lease: the seat is free at once

        async def took_over() -> bool:
            return standby.leader

        await wait_for(took_over, timeout=5, what="the standby taking over")
    finally:
        for m in movers:
            await m.stop()
