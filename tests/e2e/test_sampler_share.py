"""The load sampler takes a bounded share of an Envoy's time (issue 28).

An Envoy renders admin answers on its main thread, the one that applies xDS: with 10,000
clusters its load answer takes ~177 ms and its hosts' health ~2.6 s, and config waits behind
them. So the sampler spaces each read by its own cost (load.LOAD_SHARE, load.HOSTS_SHARE).
Here a real Envoy's ops listener sits behind a relay that makes its answers slow, as a big
Envoy's are; the reads are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from controlplane.intent.store import Store
from controlplane.xds.bootstrap import HOSTS_PATH, LOAD_PATH
from controlplane.xds.load import HOSTS_SHARE, LOAD_SHARE
from tests.conftest import wait_for
from tests.e2e.test_hostile_ops import HOSTILE_ADDRESS, _attacker, _intent, _Listener

INTERVAL = 0.05  # the replica's load interval here: a read every 50 ms if nothing spaced them
DELAY = {LOAD_PATH: 0.5, HOSTS_PATH: 0.05}  # how slowly the "big" Envoy answers


class SlowRelay(_Listener):
    """Passes requests to a real Envoy's ops listener, each after DELAY[path]; counts them."""

    def __init__(self, host: str, upstream: tuple[str, int]) -> None:
        super().__init__(host)
        self.upstream = upstream
        self.asked: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._conns.add(up_writer)
        back = asyncio.create_task(_relay(up_reader, writer))
        try:
            for _ in range(10_000):  # requests on one kept-alive connection (GETs: no bodies)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                path = head.split(b" ", 2)[1].decode()
                self.asked[path] += 1
                self.times.setdefault(path, []).append(time.monotonic())
                await asyncio.sleep(DELAY.get(path, 0.0))
                up_writer.write(head)
                await up_writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            back.cancel()
            self._conns.discard(writer)
            self._conns.discard(up_writer)
            writer.close()
            up_writer.close()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(1_000_000):
        data = await reader.read(65536)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def test_slow_answers_are_read_less_often(store: Store, make_replica, envoys, backends) -> None:
    await _intent(store, backends[0].port)
    replica = await make_replica("share", load_interval=INTERVAL, probe_interval=1.0)
    real = envoys("real", [("127.0.0.1", replica.port)])
    relay = SlowRelay(HOSTILE_ADDRESS, ("127.0.0.1", real.ops_port))
    await relay.start()
    node = None
    try:
        node = await _attacker(replica.port, "slow", relay.port)

        async def sampled() -> bool:
            return relay.asked[LOAD_PATH] >= 1 and relay.asked[HOSTS_PATH] >= 1

        await wait_for(sampled, timeout=20, what="the slow node sampled once")
        first = time.monotonic()
        await asyncio.sleep(4.0)
        loads = [t for t in relay.times[LOAD_PATH] if t >= first]
        hosts = [t for t in relay.times[HOSTS_PATH] if t > first]
        gap = DELAY[LOAD_PATH] / LOAD_SHARE  # 2 s: a 500 ms answer may take 25 % of the Envoy
        print(f"in 4 s: {len(loads)} load reads, {len(hosts)} hosts reads (a read every {gap} s allowed)")
        # Unspaced, the load would be read every 550 ms (7 or 8 times in 4 s) and its hosts'
        # health every third sample; spaced, the load every 2 s and the hosts every 5 s.
        assert 1 <= len(loads) <= 3, relay.times[LOAD_PATH]
        assert len(hosts) <= 1, relay.times[HOSTS_PATH]
        assert DELAY[HOSTS_PATH] / HOSTS_SHARE >= 4.0  # what the hosts count above relies on
    finally:
        if node is not None:
            await node.close()
        await relay.stop()
