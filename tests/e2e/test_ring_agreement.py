"""Every Envoy sends a key where `ring/lookup` says, for maglev and ring-hash, before and after a change."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from controlplane.ring.tables import header_hash
from controlplane.ring.watch import watch
from tests.conftest import wait_for

KEYS = 1000


async def _through(port: int, keys: list[str]) -> dict[str, str]:
    out = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        for k in keys:
            out[k] = (await c.get("/", headers={"x-user-id": k})).text.strip()
    return out


@pytest.mark.parametrize("lb", [{"type": "maglev"}, {"type": "ring_hash", "minimum_ring_size": 4096}])
async def test_envoys_agree_with_lookup(api, replica, replica2, envoys, lb) -> None:
    demo = [DemoBackend(f"node-{i}") for i in range(10)]
    try:
        ports = {"a": free_port(), "b": free_port()}
        rnd = random.Random(7)
        members = [
            {"name": d.name, "address": "127.0.0.1", "port": d.port, "weight": 1 + (i % 4)}
            for i, d in enumerate(demo[:8])
        ]
        r = await api.post(
            "/v1/batch",
            json={
                "operations": [
                    {"op": "put", "kind": "cluster", "name": "ring", "body": {"load_balancer": lb}},
                    {"op": "replace_backends", "cluster": "ring", "body": members},
                    # One listener per Envoy (fleets a and b), so traffic provably crosses each Envoy.
                    *(
                        {
                            "op": "put",
                            "kind": "listener",
                            "name": f"http-{f}",
                            "body": {"address": "127.0.0.1", "port": p, "fleets": [f]},
                        }
                        for f, p in ports.items()
                    ),
                    *(
                        {
                            "op": "put",
                            "kind": "route",
                            "name": f"r-{f}",
                            "body": {
                                "listener": f"http-{f}",
                                "backends": [{"cluster": "ring"}],
                                "hash_policies": [{"type": "header", "name": "x-user-id"}],
                            },
                        }
                        for f in ports
                    ),
                ]
            },
        )
        assert r.status_code == 200, r.text
        # Envoy a: delta ADS on replica 1; Envoy b: SotW on replica 2.
        await asyncio.to_thread(envoys, f"ring-a-{lb['type']}", [("127.0.0.1", replica.port)], "a", True)
        await asyncio.to_thread(envoys, f"ring-b-{lb['type']}", [("127.0.0.1", replica2.port)], "b", False)

        async def acked(rev: int) -> bool:
            s = (await api.get(f"/v1/rollouts/{rev}")).json()
            return s["complete"] and s["nodes"] >= 2

        await wait_for(lambda: acked(r.json()["revision"]), what="both Envoys acked")
        keys = [f"user-{rnd.getrandbits(48):x}" for _ in range(KEYS)]

        # A non-Envoy consumer of the same ring: lbcp.v1.HashRing over delta ADS.
        rings = watch(f"127.0.0.1:{replica2.port}", "ring", f"ring-watch-{lb['type']}")
        ring = (await asyncio.wait_for(anext(rings), 10)).ring

        async def check() -> dict[str, str]:
            want = (await api.post("/v1/clusters/ring/ring/lookup", json={"keys": keys})).json()["backends"]
            for fleet, port in ports.items():
                got = await _through(port, keys)
                wrong = [k for k in keys if got[k] != want[k]]
                assert not wrong, (
                    f"Envoy {fleet}: {len(wrong)}/{KEYS} keys disagree, e.g. "
                    f"{[(k, got[k], want[k]) for k in wrong[:3]]}"
                )
            wrong = [k for k in keys if ring.pick(header_hash([k])) != want[k]]
            assert not wrong, f"HashRing subscriber: {len(wrong)}/{KEYS} keys disagree"
            return want

        before = await check()
        sim = (
            await api.post(
                "/v1/clusters/ring/ring/simulate",
                json={
                    "add": [{"name": demo[8].name, "address": "127.0.0.1", "port": demo[8].port, "weight": 2}],
                    "remove": ["node-3"],
                },
            )
        ).json()
        r = await api.post(
            "/v1/batch?wait=acked&timeout=10s",
            json={
                "operations": [
                    {
                        "op": "put",
                        "kind": "backend",
                        "cluster": "ring",
                        "name": demo[8].name,
                        "body": {"address": "127.0.0.1", "port": demo[8].port, "weight": 2},
                    },
                    {"op": "delete", "kind": "backend", "cluster": "ring", "name": "node-3"},
                ]
            },
        )
        assert r.headers["lbcp-rollout"] == "complete", r.json()
        ring = (await asyncio.wait_for(anext(rings), 10)).ring
        await rings.aclose()
        after = await check()
        moved = sum(before[k] != after[k] for k in keys) / KEYS
        assert abs(moved - sim["moved_fraction"]) < 0.05, (moved, sim["moved_fraction"])
        assert sim["moved_fraction"] >= sim["minimum_fraction"] - 0.01
    finally:
        for d in demo:
            d.stop()
