"""Every Envoy sends a key where `ring/lookup` says, for maglev and ring-hash, before and after a change."""

from __future__ import annotations

import asyncio
import http.client
import random
import urllib.parse

import pytest

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from controlplane.ring.tables import header_hash
from controlplane.ring.watch import watch
from tests.conftest import http_ok, stop_backends, wait_for

KEYS = 1000


def _get_all(
    port: int, requests: list[tuple[str, dict[str, str]]], source: str | None = None
) -> list[tuple[str, http.client.HTTPMessage]]:
    """GET each (path, headers) from the Envoy on 127.0.0.1:`port`, one after the other on
    one keep-alive connection (from `source` if given): each answer's body, stripped, and
    headers. http.client, not httpx: a fifth of the cost per request, which here is most of
    the time (the demo backends answer from this process too)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0) if source else None)
    try:
        out = []
        for path, headers in requests:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            out.append((r.read().decode().strip(), r.headers))
        return out
    finally:
        conn.close()


async def _through(port: int, keys: list[str]) -> dict[str, str]:
    got = await asyncio.to_thread(_get_all, port, [("/", {"x-user-id": k}) for k in keys])
    return {k: body for k, (body, _) in zip(keys, got, strict=True)}


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
        stop_backends(demo)


# Envoy hashes a cookie's value, the downstream source IP as a string ("127.0.0.5") and a
# query parameter's value, each with XXH64 seed 0 (../shared/ring-spec.md); the recorded
# vectors cover headers only, so these three are checked here against a real Envoy.
VALUE_POLICIES = {
    "cookie": {"type": "cookie", "name": "sid", "ttl": "1h", "path": "/"},
    "source_ip": {"type": "source_ip"},
    "query_parameter": {"type": "query_parameter", "name": "u"},
}
SOURCE_IPS = [f"127.0.{i // 200}.{2 + i % 200}" for i in range(120)]  # loopback: 127/8 is all local


async def _through_value(port: int, policy: str, values: list[str]) -> dict[str, str]:
    """The backend the Envoy on `port` picked for each policy value, sent the way the policy
    reads it: as cookie `sid`, as the client's own source address, as query parameter `u`."""
    if policy == "source_ip":  # one connection per source address, bound to it

        def each() -> list[str]:
            return [_get_all(port, [("/", {"connection": "close"})], source=ip)[0][0] for ip in values]

        return dict(zip(values, await asyncio.to_thread(each), strict=True))
    if policy == "cookie":
        requests = [("/", {"cookie": f"sid={v}"}) for v in values]
    else:
        requests = [("/?" + urllib.parse.urlencode({"u": v}), {}) for v in values]
    got = await asyncio.to_thread(_get_all, port, requests)
    if policy == "cookie":
        assert all("set-cookie" not in h for _, h in got), "Envoy generated a cookie although one was sent"
    return {v: body for v, (body, _) in zip(values, got, strict=True)}


@pytest.mark.parametrize("lb", [{"type": "maglev"}, {"type": "ring_hash", "minimum_ring_size": 4096}])
async def test_cookie_source_ip_and_query_parameter_go_where_the_ring_says(api, replica, envoys, lb) -> None:
    """For each of the cookie, source IP and query parameter hash policies, a real Envoy
    sends each key to the backend lbcp's central ring (controlplane/ring) predicts from the
    intent, and the ring API's lookup of that value says the same."""
    from controlplane.intent.model import Backend, Cluster
    from controlplane.ring.tables import combine, ring_for, value_hash

    demo = [DemoBackend(f"node-{i}") for i in range(8)]
    try:
        ports = {policy: free_port() for policy in VALUE_POLICIES}
        members = [
            {"name": d.name, "address": "127.0.0.1", "port": d.port, "weight": 1 + (i % 4)} for i, d in enumerate(demo)
        ]
        r = await api.post(
            "/v1/batch",
            json={
                "operations": [
                    {"op": "put", "kind": "cluster", "name": "ring", "body": {"load_balancer": lb}},
                    {"op": "replace_backends", "cluster": "ring", "body": members},
                    *(
                        {
                            "op": "put",
                            "kind": "listener",
                            "name": f"http-{policy.replace('_', '-')}",
                            "body": {"address": "127.0.0.1", "port": port},
                        }
                        for policy, port in ports.items()
                    ),
                    *(
                        {
                            "op": "put",
                            "kind": "route",
                            "name": f"r-{policy.replace('_', '-')}",
                            "body": {
                                "listener": f"http-{policy.replace('_', '-')}",
                                "backends": [{"cluster": "ring"}],
                                "hash_policies": [hp],
                            },
                        }
                        for policy, hp in VALUE_POLICIES.items()
                    ),
                ]
            },
        )
        assert r.status_code == 200, r.text
        await asyncio.to_thread(envoys, f"ring-values-{lb['type']}", [("127.0.0.1", replica.port)], "default", True)

        async def acked() -> bool:
            s = (await api.get(f"/v1/rollouts/{r.json()['revision']}")).json()
            return s["complete"] and s["nodes"] >= 1

        await wait_for(acked, what="the Envoy acked")
        for port in ports.values():
            await wait_for(http_ok(f"http://127.0.0.1:{port}/"), what="Envoy serving")

        # lbcp's central ring, built from the intent as sent.
        ring = ring_for(
            Cluster.model_validate({"name": "ring", "load_balancer": lb}),
            [Backend.model_validate(m) for m in members],
        )
        rnd = random.Random(11)
        keys = [f"k-{rnd.getrandbits(48):x}" for _ in range(300)]
        for policy in VALUE_POLICIES:
            values = SOURCE_IPS if policy == "source_ip" else keys
            want = {v: ring.pick(combine([(value_hash(v), False)])) for v in values}
            looked_up = (await api.post("/v1/clusters/ring/ring/lookup", json={"keys": values})).json()["backends"]
            assert looked_up == want, f"{policy}: the ring API disagrees with controlplane/ring"
            assert len(set(want.values())) >= 6, (policy, sorted(set(want.values())))  # keys reach most backends
            got = await _through_value(ports[policy], policy, values)
            wrong = [v for v in values if got[v] != want[v]]
            assert not wrong, (
                f"{lb['type']} {policy}: Envoy disagrees with the ring on {len(wrong)}/{len(values)} keys, e.g. "
                f"{[(v, got[v], want[v]) for v in wrong[:3]]}"
            )
    finally:
        stop_backends(demo)
