"""The ring API: shares, lookups and what-if simulation, computed from stored intent."""

from __future__ import annotations

import functools

import httpx
import xxhash


async def _cluster(api: httpx.AsyncClient, lb: dict, n: int = 10) -> None:
    await api.put("/v1/clusters/c", json={"load_balancer": lb})
    await api.put(
        "/v1/clusters/c/backends", json=[{"name": f"b{i}", "address": "10.0.0.1", "port": 1000 + i} for i in range(n)]
    )


@functools.cache
def _maglev_table(names: tuple[str, ...], size: int = 65537) -> tuple[list[str], list[int]]:
    """Envoy's Maglev table over equal-weight hosts whose hash keys are `names` (lbcp's
    hash_key is the backend name), written from ../shared/ring-spec.md alone, independently
    of controlplane/ring: XXH64 seed 0 (seed 1 for the skip), hosts sorted by key, one slot
    per host per round."""
    keys = sorted(names)
    offsets = [xxhash.xxh64_intdigest(k.encode(), 0) % size for k in keys]
    skips = [xxhash.xxh64_intdigest(k.encode(), 1) % (size - 1) + 1 for k in keys]
    nexts = [0] * len(keys)
    table = [-1] * size
    filled = 0
    while filled < size:  # equal weights: every host takes a slot every round
        for i in range(len(keys)):
            if filled == size:
                break
            c = (offsets[i] + skips[i] * nexts[i]) % size
            while table[c] >= 0:
                nexts[i] += 1
                c = (offsets[i] + skips[i] * nexts[i]) % size
            table[c] = i
            nexts[i] += 1
            filled += 1
    return keys, table


def _maglev_pick(names: list[str], key: str) -> str:
    """The host Envoy picks for hash-policy value `key` (one header value: h = XXH64(key))."""
    keys, table = _maglev_table(tuple(names))
    return keys[table[xxhash.xxh64_intdigest(key.encode(), 0) % len(table)]]


KEYS = ["alice", "bob", *(f"user-{i}" for i in range(40))]


async def test_show_and_lookup(api: httpx.AsyncClient) -> None:
    await _cluster(api, {"type": "maglev", "table_size": 65537})
    ring = (await api.get("/v1/clusters/c/ring")).json()
    assert ring["algorithm"] == "maglev" and ring["table_size"] == 65537 and len(ring["backends"]) == 10
    assert abs(sum(b["share"] for b in ring["backends"]) - 1) < 1e-9
    assert ring["max_over_avg"] < 1.01
    one = (await api.get("/v1/clusters/c/ring/lookup", params={"key": "alice"})).json()
    many = (await api.post("/v1/clusters/c/ring/lookup", json={"keys": KEYS})).json()
    everyone = [f"b{i}" for i in range(10)]
    assert one["backend"] == _maglev_pick(everyone, "alice")
    assert one["hash"] == xxhash.xxh64_intdigest(b"alice")
    want = {k: _maglev_pick(everyone, k) for k in KEYS}
    assert many["backends"] == want
    assert len(set(want.values())) >= 8  # the keys reach most backends: a constant answer fails
    # Draining a backend takes it out of the ring: its keys go elsewhere, the others stay.
    await api.patch("/v1/clusters/c/backends/b0", json={"admin_state": "drain"})
    ring = (await api.get("/v1/clusters/c/ring")).json()
    assert "b0" not in {b["name"] for b in ring["backends"]}
    after = (await api.post("/v1/clusters/c/ring/lookup", json={"keys": KEYS})).json()["backends"]
    assert after == {k: _maglev_pick(everyone[1:], k) for k in KEYS}
    assert "b0" not in after.values() and "b0" in want.values()


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
