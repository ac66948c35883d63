"""A worker process of the fleet simulator: runs its share of simulated Envoys and answers
the coordinator's commands over a pipe (so the simulator spreads over several cores)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from bench.fleetsim.client import SimEnvoy


async def _serve(conn) -> None:
    loop = asyncio.get_running_loop()
    clients: list[SimEnvoy] = []
    while True:
        cmd, arg = await loop.run_in_executor(None, conn.recv)
        if cmd == "start":
            started = time.monotonic()
            for spec in arg["clients"]:
                c = SimEnvoy(
                    spec["target"],
                    spec["node_id"],
                    spec.get("fleet", "default"),
                    delta=spec["delta"],
                    nack_first=spec.get("nack_first", False),
                )
                c.start()
                clients.append(c)
            try:
                await asyncio.wait_for(asyncio.gather(*(c.configured.wait() for c in clients)), arg.get("timeout", 120))
                conn.send(("ok", time.monotonic() - started))
            except TimeoutError:
                conn.send(("timeout", sum(c.configured.is_set() for c in clients)))
        elif cmd == "counters":
            conn.send(("ok", [{"node_id": c.node.id, "delta": c.delta, **asdict(c.counters)} for c in clients]))
        elif cmd == "unseen":
            conn.send(("ok", sum(1 for c in clients for p in arg if p not in c.seen_ports)))
        elif cmd == "seen":
            ports = arg
            conn.send(("ok", {p: [c.seen_ports.get(p) for c in clients] for p in ports}))
        elif cmd == "stop":
            await asyncio.gather(*(c.stop() for c in clients))
            conn.send(("ok", None))
            return


def main(conn) -> None:
    asyncio.run(_serve(conn))
