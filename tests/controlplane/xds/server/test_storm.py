"""A fleet connecting at once: every stream gets its full initial config on its first try.

gRPC core keeps the calls a grpc.aio server has not taken yet in a pending queue, and above
its default soft limit (1,000) rejects new ones at random: the client sees its stream end
with a bare CANCELLED, and lbcp never saw the call. Here the replica falls behind on
purpose: its event loop (this process's) is held while the simulated Envoys connect, so all
their calls wait in that queue at once, as after a replica restart on a busy host.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.fleetsim.fleet import Fleet, specs
from controlplane.intent.store import Store
from tests.conftest import seed_web

N = 1500  # above the soft limit by enough that the old default dropped ~60 streams per run


def _established(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is `port`."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC may listen on a v4-mapped socket
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


async def test_connect_storm_ends_no_stream_early(store: Store, replica) -> None:
    await seed_web(store)
    fleet = await asyncio.to_thread(Fleet, f"127.0.0.1:{replica.port}", specs(N, delta_share=0.5), 2)
    started = asyncio.get_running_loop().run_in_executor(None, fleet.start, 120)
    try:
        # Hold the loop (no call is taken from gRPC core meanwhile) until every client is
        # connected and has had time to open its stream.
        deadline = time.monotonic() + 60
        while _established(replica.port) < N and time.monotonic() < deadline:
            time.sleep(0.1)  # blocking the loop is the point
        assert _established(replica.port) >= N, "the simulated fleet did not connect"
        time.sleep(1.0)
        await started  # every client holds CDS, EDS, LDS and RDS
        counters = await asyncio.to_thread(fleet.counters)
        ended = {c["node_id"]: c["ended"] for c in counters if c["reconnects"]}
        assert not ended, f"{len(ended)} of {N} streams ended before their client was configured: {ended}"
    finally:
        await asyncio.gather(started, return_exceptions=True)  # the workers' pipes are not shared
        await asyncio.to_thread(fleet.stop)
