"""Intent written over REST reaches a real Envoy, and traffic follows it."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from api.localcluster.procs import free_port
from tests.conftest import http_ok, wait_for


async def _spread(port: int, n: int = 60) -> Counter:
    seen: Counter = Counter()
    async with httpx.AsyncClient(timeout=5) as c:
        for _ in range(n):
            r = await c.get(f"http://127.0.0.1:{port}/", headers={"connection": "close"})
            seen[r.text.strip() if r.status_code == 200 else f"status-{r.status_code}"] += 1
    return seen


async def test_rest_to_envoy_traffic(api: httpx.AsyncClient, replica, backends, envoys) -> None:
    port = free_port()
    assert (await api.put("/v1/clusters/web", json={"connect_timeout": "1s"})).status_code == 201
    for b in backends[:3]:
        r = await api.put(f"/v1/clusters/web/backends/{b.name}", json={"address": "127.0.0.1", "port": b.port})
        assert r.status_code == 201
    assert (await api.put("/v1/listeners/http", json={"address": "127.0.0.1", "port": port})).status_code == 201
    assert (
        await api.put("/v1/routes/main", json={"listener": "http", "backends": [{"cluster": "web"}]})
    ).status_code == 201

    envoy = await asyncio.to_thread(envoys, "envoy-1", [("127.0.0.1", replica.port)])

    serving = http_ok(f"http://127.0.0.1:{port}/")

    await wait_for(serving, what="envoy serving the listener")
    seen = await _spread(port)
    assert set(seen) == {"b0", "b1", "b2"}, seen

    # Add a backend: it starts receiving traffic.
    b3 = backends[3]
    await api.put(f"/v1/clusters/web/backends/{b3.name}", json={"address": "127.0.0.1", "port": b3.port})

    async def b3_gets_traffic() -> bool:
        return "b3" in await _spread(port, 20)

    await wait_for(b3_gets_traffic, what="new backend receiving traffic")

    # Drain one: it gets no new requests.
    await api.patch("/v1/clusters/web/backends/b1", json={"admin_state": "drain"})

    async def b1_drained() -> bool:
        return "b1" not in await _spread(port, 20)

    await wait_for(b1_drained, what="drained backend out of rotation")
    assert set(await _spread(port, 60)) == {"b0", "b2", "b3"}

    # Delete one: gone from Envoy's /clusters.
    await api.delete("/v1/clusters/web/backends/b2")

    async def b2_gone() -> bool:
        async with httpx.AsyncClient(timeout=2) as c:
            text = (await c.get(f"{envoy.admin}/clusters")).text
        return f":{backends[2].port}::" not in text and f":{backends[0].port}::" in text

    await wait_for(b2_gone, what="deleted backend gone from /clusters")
    # No listener was ever replaced: endpoint changes never touch LDS.
    stats = envoy.stats("listener_manager")
    assert stats.get("listener_manager.listener_modified", 0) == 0
    assert stats.get("listener_manager.lds.update_rejected", 0) == 0
    assert envoy.stats("cluster_manager.cds").get("cluster_manager.cds.update_rejected", 0) == 0
