"""A `scope: fleet` rate limit holds for the whole fleet with no rate-limit service: three
real Envoys with clients spread 60/30/10 get shares of the limit in proportion to their live
connections (divided by the mover, served to each Envoy as its own route configuration), the
fleet admits about the limit, and a drained Envoy's share goes to the others within seconds.
(The minute-long accuracy run is a benchmark: bench/ratelimit.py, docs/benchmarks.md.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter

import httpx

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from controlplane.intent.keyspace import Keyspace
from tests.conftest import apply_edge, wait_for

ADDRESSES = {"rl-0": "127.0.1.91", "rl-1": "127.0.1.92", "rl-2": "127.0.1.93"}
SPLIT = {"rl-0": 12, "rl-1": 6, "rl-2": 2}  # keep-alive connections per Envoy: 60/30/10
LIMIT = 40  # requests per second, for the whole fleet
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"


class Client:
    """One keep-alive HTTP/1.1 connection to one Envoy, counting answers by status."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.seen: Counter[int] = Counter()
        self.retry_after: set[str] = set()
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> None:
        self._io = await asyncio.open_connection(self.address, self.port)

    async def get(self) -> int:
        assert self._io is not None
        reader, writer = self._io
        writer.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        await reader.readexactly(int(headers.get("content-length", "0")))
        status = int(lines[0].split()[1])
        self.seen[status] += 1
        if status == 429 and "retry-after" in headers:
            self.retry_after.add(headers["retry-after"])
        return status

    def close(self) -> None:
        if self._io is not None:
            self._io[1].close()


async def _run(clients: list[Client], seconds: float, per_client_rate: float) -> None:
    """Every client sends `per_client_rate` requests a second for `seconds` (bounded)."""

    async def one(c: Client) -> None:
        end = time.monotonic() + seconds
        for _ in range(int(seconds * per_client_rate) + 1):
            if time.monotonic() >= end:
                return
            await c.get()
            await asyncio.sleep(1 / per_client_rate)

    await asyncio.gather(*(one(c) for c in clients))


async def _buckets(envoy) -> list[int]:
    """tokens_per_fill of every fleet-limited route in this Envoy's live route configuration."""
    r = await asyncio.to_thread(httpx.get, f"{envoy.admin}/config_dump?resource=dynamic_route_configs", timeout=5)
    out = []
    for rc in r.json().get("configs", []):
        for vh in rc.get("route_config", {}).get("virtual_hosts", []):
            for route in vh.get("routes", []):
                limit = route.get("typed_per_filter_config", {}).get(RATE_LIMIT_FILTER)
                if limit:
                    out.append(int(limit["config"]["token_bucket"]["tokens_per_fill"]))  # (FilterConfig)
    return out


async def test_a_fleet_limit_is_divided_by_live_connections(api, etcd, make_replica, envoys) -> None:
    replica = await make_replica("rl", load_interval=0.3)
    demo = DemoBackend("rl-b")
    port = free_port()
    await apply_edge(api, demo.port, port)
    route = {
        "listener": "edge",
        "backends": [{"cluster": "web"}],
        "rate_limit": {"requests": LIMIT, "per": "1s", "scope": "fleet"},
    }
    assert (await api.put("/v1/routes/all", json=route)).status_code == 200
    xds = [("127.0.0.1", replica.port)]
    # rl-2 speaks state-of-the-world ADS, the others delta: both serve each Envoy its own share.
    started = {n: envoys(n, xds, public_address=a, delta=n != "rl-2") for n, a in ADDRESSES.items()}
    clients = [Client(ADDRESSES[n], port) for n, k in SPLIT.items() for _ in range(k)]
    key = Keyspace(etcd.config.prefix).share_key("default")

    async def shares() -> dict[str, float]:
        got = await etcd.range(key)
        return json.loads(got.kvs[0].value)["shares"] if got.kvs else {}

    def divided(expected: dict[str, float]):
        async def ok() -> bool:
            now = await shares()
            return now.keys() == expected.keys() and all(abs(now[n] - s) <= 0.05 for n, s in expected.items())

        return ok

    try:

        async def all_in() -> bool:
            nodes = (await api.get("/v1/fleet")).json()["nodes"]
            return sorted(n["node_id"] for n in nodes if n["front_state"] == "in") == sorted(ADDRESSES)

        await wait_for(all_in, timeout=40, what="the three Envoys in service")
        for c in clients:
            await c.open()
        await wait_for(divided({"rl-0": 0.6, "rl-1": 0.3, "rl-2": 0.1}), timeout=30, what="shares of 60/30/10")

        async def served_shares() -> bool:
            got = [await _buckets(started[n]) for n in ADDRESSES]
            return got == [[24], [12], [4]] or all(
                len(b) == 1 and abs(b[0] - LIMIT * s) <= 2 for b, s in zip(got, (0.6, 0.3, 0.1), strict=True)
            )

        await wait_for(served_shares, timeout=15, what="each Envoy enforcing its share")
        # The API shows what each Envoy is served: its own share (GET /v1/fleet/{node}/config).
        got = (await api.get("/v1/fleet/rl-0/config", params={"type": "rds"})).json()
        [rc] = [r["resource"] for r in got["types"]["rds"]["resources"]]
        [limited] = [
            r
            for vh in rc["virtual_hosts"]
            for r in vh["routes"]
            if RATE_LIMIT_FILTER in r.get("typed_per_filter_config", {})
        ]
        assert (
            limited["typed_per_filter_config"][RATE_LIMIT_FILTER]["config"]["token_bucket"]["tokens_per_fill"]
            == (await _buckets(started["rl-0"]))[0]
        )

        # Every client asks 4 requests a second (80/s for the fleet, twice the limit). After
        # the buckets' first second, the fleet admits the limit, whatever Envoy a client is on.
        await _run(clients, 2.0, 4.0)
        before = sum(c.seen[200] for c in clients)
        seconds = 6.0
        await _run(clients, seconds, 4.0)
        admitted = sum(c.seen[200] for c in clients) - before
        limited = sum(c.seen[429] for c in clients)
        assert limited > 0
        assert set().union(*(c.retry_after for c in clients)) == {"1"}  # every 429 says when to come back
        # Token buckets refill once a second each, at their own moments: a window of `seconds`
        # sees between `seconds - 1` and `seconds + 1` refills; ±15 % of the limit beyond that.
        assert LIMIT * (seconds - 1) * 0.85 <= admitted <= LIMIT * (seconds + 1) * 1.15, admitted
        print(f"admitted {admitted} in {seconds} s at a limit of {LIMIT}/s")
        assert set().union(*(set(c.seen) for c in clients)) <= {200, 429}

        # Drained, rl-1 gives its share back: the others take the whole limit within seconds.
        modified = [await asyncio.to_thread(started[n].stats, "listener_manager.listener_modified") for n in ADDRESSES]
        t0 = time.monotonic()
        assert (await api.post("/v1/fleet/rl-1/drain", json={"reason": "test"})).status_code == 201
        await wait_for(divided({"rl-0": 0.857, "rl-1": 0.0, "rl-2": 0.143}), timeout=20, what="rl-1's share given back")

        async def others_take_it() -> bool:
            a, c = await _buckets(started["rl-0"]), await _buckets(started["rl-2"])
            return len(a) == len(c) == 1 and abs(a[0] + c[0] - LIMIT) <= 2

        await wait_for(others_take_it, timeout=15, what="rl-0 and rl-2 enforcing the whole limit")
        print(f"drain -> the others enforce the whole limit: {time.monotonic() - t0:.1f} s")
        # Hitless: every client still has its connection (a 200 or a 429 on the same socket),
        # and no listener was modified by the re-divisions (they are RDS updates only).
        for c in clients:
            assert await c.get() in (200, 429)
        after = [await asyncio.to_thread(started[n].stats, "listener_manager.listener_modified") for n in ADDRESSES]
        assert after == modified
    finally:
        for c in clients:
            c.close()
        with contextlib.suppress(Exception):
            demo.stop()
