"""Capacity as intent, enforced by each Envoy itself: `PUT /v1/fleets/{fleet}` sets every
traffic listener's connection limit through the fleet's runtime layer (RTDS). Connections
over the limit are refused at once, and changing the limit modifies and drains no listener."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from api.localcluster.procs import free_port
from tests.conftest import http_ok, wait_for
from tests.e2e.test_hitless import KeepAlive

LIMIT_KEY = "envoy.resource_limits.listener.edge.connection_limit"
LISTENER_STATS = ("listener_manager.listener_modified", "listener_manager.listener_removed")


async def _runtime(envoy) -> dict:
    r = await asyncio.to_thread(httpx.get, f"{envoy.admin}/runtime")
    return r.json()["entries"]


async def _open(port: int, n: int) -> tuple[list[KeepAlive], int]:
    """Open `n` keep-alive connections and use each once: (the ones served, how many refused)."""
    served, refused = [], 0
    for _ in range(n):
        c = KeepAlive(port)
        try:
            await c.open()
            await c.get()
            served.append(c)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            c.close()
            refused += 1
    return served, refused


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_capacity_limits_connections_without_touching_listeners(api, replica, envoys, backends, delta) -> None:
    port = free_port()
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {}},
        {
            "op": "replace_backends",
            "cluster": "web",
            "body": [{"name": "b0", "address": "127.0.0.1", "port": backends[0].port}],
        },
        {"op": "put", "kind": "listener", "name": "edge", "body": {"address": "127.0.0.1", "port": port}},
        {"op": "put", "kind": "route", "name": "all", "body": {"listener": "edge", "backends": [{"cluster": "web"}]}},
    ]
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    e = envoys("cap-0", [("127.0.0.1", replica.port)], delta=delta)
    await wait_for(http_ok(f"http://127.0.0.1:{port}/"), timeout=30, what="the listener serving")
    assert LIMIT_KEY not in await _runtime(e)  # no fleet object: no limit from lbcp

    conns: list[KeepAlive] = []
    try:
        put = await api.put("/v1/fleets/default", json={"capacity": {"max_connections_per_envoy": 20}})
        assert put.status_code == 201, put.text

        async def limit_is(n: int):
            async def ok() -> bool:
                entry = (await _runtime(e)).get(LIMIT_KEY) or {}
                return entry.get("final_value") == str(n)

            return ok

        await wait_for(await limit_is(20), what="the limit in Envoy's runtime")
        before = await asyncio.to_thread(e.stats, "listener_manager")
        served, refused = await _open(port, 25)
        conns += served
        assert len(served) == 20 and refused == 5, (len(served), refused)
        overflow = f"listener.127.0.0.1_{port}.downstream_cx_overflow"
        assert (await asyncio.to_thread(e.stats, overflow))[overflow] == 5

        # A higher limit admits more at once; the listener is neither modified nor drained.
        assert (await api.patch(
            "/v1/fleets/default",
            json={"capacity": {"max_connections_per_envoy": 30}},
            headers={"content-type": "application/merge-patch+json"},
        )).status_code == 200  # fmt: skip
        await wait_for(await limit_is(30), what="the new limit")
        served, refused = await _open(port, 12)
        conns += served
        assert len(served) == 10 and refused == 2, (len(served), refused)
        for c in conns[:3]:
            assert await c.get()  # the first connections were never touched
        after = await asyncio.to_thread(e.stats, "listener_manager")
        for key in LISTENER_STATS:
            assert after[key] == before[key], key
        assert after.get("listener_manager.total_filter_chains_draining", 0) == 0

        # A new-connection rate (a token bucket of 10, 10 per second): a burst past it is refused
        # at once; again no listener changes.
        rate = {"max_connections_per_envoy": 1000, "max_new_connections_per_second": 10, "new_connections_burst": 10}
        assert (await api.put("/v1/fleets/default", json={"capacity": rate})).status_code == 200

        async def admission_applied() -> bool:
            stats = await asyncio.to_thread(e.stats, "extension_config_discovery")
            return any(k.endswith("lbcp.admission.config_reload") and v >= 2 for k, v in stats.items())

        await wait_for(admission_applied, what="the admission rate in Envoy")
        await wait_for(await limit_is(1000), what="the raised limit")
        await asyncio.sleep(1.1)  # a full bucket
        started = asyncio.get_running_loop().time()
        served, refused = await _open(port, 40)
        took = asyncio.get_running_loop().time() - started
        conns += served
        allowed = 10 + int(took * 10) + 1  # the burst, plus what refilled while we connected
        assert 10 <= len(served) <= allowed and refused == 40 - len(served), (len(served), refused, took)
        limited = await asyncio.to_thread(e.stats, "listener_local_ratelimit")
        print(f"admission: {len(served)} of 40 in {took:.2f}s admitted, {limited}")
        assert sum(limited.values()) >= refused
        after = await asyncio.to_thread(e.stats, "listener_manager")
        for key in LISTENER_STATS:
            assert after[key] == before[key], key

        # No capacity: no limit.
        assert (await api.delete("/v1/fleets/default")).status_code == 200

        async def unlimited() -> bool:
            return LIMIT_KEY not in await _runtime(e)

        await wait_for(unlimited, what="the limit gone")

        async def admission_default() -> bool:
            stats = await asyncio.to_thread(e.stats, "extension_config_discovery")
            return any(k.endswith("lbcp.admission.config_reload") and v >= 3 for k, v in stats.items())

        await wait_for(admission_default, what="the unlimited admission back")
        served, refused = await _open(port, 40)
        conns += served
        assert refused == 0
    finally:
        for c in conns:
            c.close()


async def test_a_full_envoy_leaves_the_front_tier_with_hysteresis(api, make_replica, envoys, backends, etcd) -> None:
    """Two Envoys share a listener (SO_REUSEPORT). The one pushed to high water (8 of 10)
    leaves the in-service set and the DNS answer within two samples, stays out at 6 (above
    low water, 5), and returns at 4; while both serve, the emptier one is answered first."""
    from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns
    from controlplane.frontdoor.render import follow

    replica = await make_replica("cap", load_interval=0.3, probe_interval=0.3)
    port = free_port()
    b0 = {"name": "b0", "address": "127.0.0.1", "port": backends[0].port}
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {}},
        {"op": "replace_backends", "cluster": "web", "body": [b0]},
        {"op": "put", "kind": "listener", "name": "edge", "body": {"address": "127.0.0.1", "port": port}},
        {"op": "put", "kind": "route", "name": "all", "body": {"listener": "edge", "backends": [{"cluster": "web"}]}},
        {"op": "put", "kind": "fleet", "name": "default", "body": {"capacity": {
            "max_connections_per_envoy": 10, "high_water_percent": 80, "low_water_percent": 50}}},
    ]  # fmt: skip
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    pair = {"a": envoys("hw-a", [("127.0.0.1", replica.port)], public_address="127.0.0.41"),
            "b": envoys("hw-b", [("127.0.0.1", replica.port)], public_address="127.0.0.42")}  # fmt: skip
    await wait_for(http_ok(f"http://127.0.0.1:{port}/"), timeout=30, what="the shared listener serving")
    stat = f"listener.127.0.0.1_{port}.downstream_cx_active"

    async def counts() -> dict[str, int]:
        return {k: (await asyncio.to_thread(e.stats, stat)).get(stat, 0) for k, e in pair.items()}

    async def states() -> dict[str, str]:
        nodes = {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}
        return {k: nodes.get(f"hw-{k}", {}).get("front_state", "?") for k in pair}

    async def both_in() -> bool:
        return await states() == {"a": "in", "b": "in"}

    await wait_for(both_in, timeout=30, what="both Envoys in service")
    held: dict[str, list[KeepAlive]] = {"a": [], "b": []}
    try:
        # Open connections one at a time, each attributed to the Envoy that took it, until
        # "a" holds 8 (high water) and "b" 1.
        for _ in range(200):
            if len(held["a"]) >= 8 and len(held["b"]) >= 1:
                break
            before = await counts()
            c = KeepAlive(port)
            await c.open()
            await c.get()
            after = await counts()
            who = next(k for k in pair if after[k] > before[k])
            if (who == "a" and len(held["a"]) < 8) or (who == "b" and len(held["b"]) < 1):
                held[who].append(c)
            else:
                c.close()
        assert len(held["a"]) == 8 and len(held["b"]) == 1

        async def a_is(state: str):
            async def ok() -> bool:
                return (await states())["a"] == state

            return ok

        await wait_for(await a_is("full"), timeout=2 * 0.3 + 5, what="hw-a full")
        members = [m.node_id async for m in _first(follow(etcd, "default", 0.1))]
        assert members == ["hw-b"]
        # Down to 6 (60 %, above low water): still out.
        for c in held["a"][6:]:
            c.close()
        del held["a"][6:]
        await asyncio.sleep(1.0)  # three samples
        assert (await states())["a"] == "full"
        # Down to 4 (40 %): back in, and answered after the emptier hw-b.
        for c in held["a"][4:]:
            c.close()
        del held["a"][4:]
        await wait_for(await a_is("in"), timeout=5, what="hw-a back below low water")
        server = FrontDoorDns(DnsConfig(zone="example.com", name="www", ttl=5, port=0, interval=0.1))
        await server.start()
        follower = asyncio.create_task(server.follow(etcd))
        try:
            import dns.asyncresolver

            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers, resolver.port, resolver.cache = ["127.0.0.1"], server.port, None

            async def two() -> bool:
                return len(server.members) == 2

            await wait_for(two, what="the DNS server following both")
            for _ in range(4):
                answer = [r.address for r in await resolver.resolve("www.example.com", "A")]
                assert answer == ["127.0.0.42", "127.0.0.41"], answer  # most headroom first, every time
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await server.stop()
    finally:
        for cs in held.values():
            for c in cs:
                c.close()


async def _first(it):
    async for members in it:
        for m in members:
            yield m
        return
