"""The ring API: shares, lookups and what-if simulation, computed from stored intent."""

from __future__ import annotations

import httpx


async def _cluster(api: httpx.AsyncClient, lb: dict, n: int = 10) -> None:
    await api.put("/v1/clusters/c", json={"load_balancer": lb})
    await api.put(
        "/v1/clusters/c/backends", json=[{"name": f"b{i}", "address": "10.0.0.1", "port": 1000 + i} for i in range(n)]
    )


async def test_show_and_lookup(api: httpx.AsyncClient) -> None:
    await _cluster(api, {"type": "maglev", "table_size": 65537})
    ring = (await api.get("/v1/clusters/c/ring")).json()
    assert ring["algorithm"] == "maglev" and ring["table_size"] == 65537 and len(ring["backends"]) == 10
    assert abs(sum(b["share"] for b in ring["backends"]) - 1) < 1e-9
    assert ring["max_over_avg"] < 1.01
    one = (await api.get("/v1/clusters/c/ring/lookup", params={"key": "alice"})).json()
    many = (await api.post("/v1/clusters/c/ring/lookup", json={"keys": ["alice", "bob"]})).json()
    assert many["backends"]["alice"] == one["backend"] and one["backend"].startswith("b")
    # Draining a backend takes it out of the ring.
    await api.patch("/v1/clusters/c/backends/b0", json={"admin_state": "drain"})
    ring = (await api.get("/v1/clusters/c/ring")).json()
    assert "b0" not in {b["name"] for b in ring["backends"]}


async def test_simulate(api: httpx.AsyncClient) -> None:
    await _cluster(api, {"type": "maglev"})
    sim = (
        await api.post(
            "/v1/clusters/c/ring/simulate", json={"add": [{"name": "new", "address": "10.0.0.2", "port": 1}]}
        )
    ).json()
    # Adding one of 11 equal backends: ~1/11 of keys move, close to the minimum.
    assert abs(sim["minimum_fraction"] - 1 / 11) < 0.01
    assert sim["minimum_fraction"] <= sim["moved_fraction"] < sim["minimum_fraction"] + 0.02
    # The new backend takes its fair share; Maglev also reshuffles a little among the others.
    assert abs(sim["per_backend"]["new"]["moved_in"] - sim["per_backend"]["new"]["share_after"]) < 1e-9
    assert sim["per_backend"]["new"]["moved_in"] <= sim["moved_fraction"]
    r = await api.post("/v1/clusters/c/ring/simulate", json={"remove": ["nope"], "reweight": {"b1": 0}})
    assert r.status_code == 422 and {e["pointer"] for e in r.json()["errors"]} == {"/remove/0", "/reweight/b1"}
    sim = (await api.post("/v1/clusters/c/ring/simulate", json={"reweight": {"b1": 3}})).json()
    assert sim["moved_fraction"] > 0 and "exact" in sim["method"]


async def test_ring_needs_hashing_cluster(api: httpx.AsyncClient) -> None:
    await _cluster(api, {"type": "round_robin"}, 2)
    r = await api.get("/v1/clusters/c/ring")
    assert r.status_code == 422 and r.json()["errors"][0]["pointer"] == "/load_balancer/type"
    assert (await api.get("/v1/clusters/none/ring")).json()["code"] == "cluster-not-found"


async def test_ring_hash_cluster(api: httpx.AsyncClient) -> None:
    await _cluster(api, {"type": "ring_hash", "minimum_ring_size": 1024})
    ring = (await api.get("/v1/clusters/c/ring")).json()
    assert ring["algorithm"] == "ring_hash" and ring["ring_size"] >= 1024
    sim = (await api.post("/v1/clusters/c/ring/simulate", json={"remove": ["b1"]})).json()
    assert "sampled" in sim["method"] and 0.05 < sim["moved_fraction"] < 0.2
