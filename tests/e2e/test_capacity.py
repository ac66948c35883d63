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
