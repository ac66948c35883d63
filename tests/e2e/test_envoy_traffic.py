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


async def test_each_envoy_binds_its_own_public_address(api: httpx.AsyncClient, replica, backends, envoys) -> None:
    """A `bind_public_address` listener: every Envoy listens on the shared address and on its
    own public_address (same port), delta and SotW alike; turning the flag off closes the
    per-Envoy sockets and leaves the shared one serving."""
    port = free_port()
    await api.put("/v1/clusters/web", json={})
    await api.put(
        f"/v1/clusters/web/backends/{backends[0].name}", json={"address": "127.0.0.1", "port": backends[0].port}
    )
    body = {"address": "127.0.0.1", "port": port, "bind_public_address": True}
    assert (await api.put("/v1/listeners/http", json=body)).status_code == 201
    await api.put("/v1/routes/main", json={"listener": "http", "backends": [{"cluster": "web"}]})
    xds = [("127.0.0.1", replica.port)]
    delta = await asyncio.to_thread(envoys, "pub-delta", xds, public_address="127.0.1.41")
    sotw = await asyncio.to_thread(envoys, "pub-sotw", xds, delta=False, public_address="127.0.1.42")
    plain = await asyncio.to_thread(envoys, "pub-none", xds)  # no public address: the shared one only

    def requests(e) -> int:
        return e.stats("^http.http.downstream_rq_total$").get("http.http.downstream_rq_total", 0)

    for address, e in (("127.0.1.41", delta), ("127.0.1.42", sotw)):
        await wait_for(http_ok(f"http://{address}:{port}/"), timeout=20, what=f"{e.node_id} on {address}")
        before = [await asyncio.to_thread(requests, x) for x in (delta, sotw, plain)]
        async with httpx.AsyncClient(timeout=5) as c:
            for _ in range(5):
                r = await c.get(f"http://{address}:{port}/", headers={"connection": "close"})
                assert r.status_code == 200 and r.text.strip() == "b0"
        after = [await asyncio.to_thread(requests, x) for x in (delta, sotw, plain)]
        # Only the Envoy at that address served them.
        assert [a - b for a, b in zip(after, before, strict=True)] == [5 * (x is e) for x in (delta, sotw, plain)]
    await wait_for(http_ok(f"http://127.0.0.1:{port}/"), what="the shared address")
    fleet = (await api.get("/v1/fleet")).json()["nodes"]
    assert all(not any(st.get("last_nack") for st in n["types"].values()) for n in fleet), fleet

    # Off again: the per-Envoy sockets close (their listener is replaced), the shared one stays.
    body["bind_public_address"] = False
    assert (await api.put("/v1/listeners/http", json=body)).status_code == 200

    async def own_closed() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as c:
                await c.get(f"http://127.0.1.41:{port}/", headers={"connection": "close"})
            return False
        except httpx.HTTPError:
            return True

    await wait_for(own_closed, timeout=20, what="the per-Envoy socket closing")
    # A delta Envoy without a public address was sent nothing: its listener did not change.
    nodes = {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}
    assert nodes["pub-none"]["types"]["lds"]["pushes"] == 1, nodes["pub-none"]
    await wait_for(http_ok(f"http://127.0.0.1:{port}/"), what="the shared address after the change")
