"""The fleet simulator at small N: every simulated Envoy converges, and its ACK/NACK
accounting agrees with the server's fleet registry."""

from __future__ import annotations

import asyncio
import dataclasses

from bench.fleetsim.fleet import Fleet, specs
from controlplane.intent.model import Backend, Cluster, Listener, Route
from controlplane.intent.store import Store
from tests.conftest import wait_for

N = 20


async def test_small_fleet_converges_and_accounting_matches(store: Store, api, replica) -> None:
    for c in ("web", "api"):
        await store.put(Cluster(name=c, load_balancer={"type": "maglev"} if c == "web" else {"type": "round_robin"}))
        for i in range(3):
            await store.put(
                Backend(name=f"{c}-{i}", address="10.0.0.1", port=30000 + i + (10 if c == "api" else 0)), cluster=c
            )
    await store.put(Listener(name="http", port=10000))
    await store.put(Route(name="r", listener="http", backends=[{"cluster": "web"}, {"cluster": "api"}]))
    clients = specs(N, delta_share=0.5)
    clients[3] = dataclasses.replace(clients[3], nack_first=True)
    fleet = await asyncio.to_thread(Fleet, f"127.0.0.1:{replica.port}", clients, 2)
    try:
        await asyncio.to_thread(fleet.start, 30)
        # A backend change reaches every client.
        rev = (await store.put(Backend(name="web-new", address="10.0.0.2", port=40001), cluster="web")).revision

        async def everyone_saw_it() -> bool:
            seen = (await asyncio.to_thread(fleet.seen, [40001]))[40001]
            return all(t is not None for t in seen)

        await wait_for(everyone_saw_it, what="all simulated Envoys converged")
        counters = await asyncio.to_thread(fleet.counters)
        assert len(counters) == N and sum(c["delta"] for c in counters) == N // 2
        assert all(c["violations"] == 0 for c in counters), [c for c in counters if c["violations"]]
        assert [c["node_id"] for c in counters if c["nacks"]] == [clients[3].node_id]

        async def registry_agrees() -> bool:
            nodes = {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}
            if set(nodes) != {c.node_id for c in clients}:
                return False
            by_node = {c["node_id"]: c for c in await asyncio.to_thread(fleet.counters)}
            for node_id, doc in nodes.items():
                pushes = sum(t["pushes"] for t in doc["types"].values())
                if pushes != by_node[node_id]["acks"] + by_node[node_id]["nacks"]:
                    return False
                # The NACKer still holds a rejected EDS resource (cluster api's first version,
                # never resent): it is not "in sync" at any revision; everyone else is at rev.
                if (doc["acked_revision"] >= rev) == (node_id == clients[3].node_id):
                    return False
            return True

        try:
            await wait_for(registry_agrees, what="registry pushes == client ACKs + NACKs, all at the latest revision")
        except AssertionError:
            nodes = {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}
            by_node = {c["node_id"]: c for c in await asyncio.to_thread(fleet.counters)}
            diffs = [
                (
                    n,
                    {t: v["pushes"] for t, v in d["types"].items()},
                    d["acked_revision"],
                    by_node[n]["acks"],
                    by_node[n]["nacks"],
                    rev,
                )
                for n, d in nodes.items()
            ]
            raise AssertionError(diffs[:5]) from None
        nacker = (await api.get(f"/v1/fleet/{clients[3].node_id}")).json()
        assert nacker["types"]["eds"]["last_nack"]["message"] == "fleetsim: NACK as told"
        rollout = (await api.get(f"/v1/rollouts/{rev}")).json()
        assert [r["node_id"] for r in rollout["rejected"]] == [clients[3].node_id] and len(rollout["acked"]) == N - 1
        assert all(c["reconnects"] == 0 for c in counters)
    finally:
        await asyncio.to_thread(fleet.stop)


def test_intent_scale_smoke() -> None:
    """Issue 28's benchmark at tiny sizes (every kind, one real Envoy, the small intent only):
    the result has its shape and every rate is a rate."""
    from bench.fleetsim.intent_scale import KINDS, intent_scale

    r = intent_scale(
        sizes=[5, 20],
        writes=10,
        budget=20,
        changes=3,
        envoys=1,
        prop_clusters=0,
        small_clusters=5,
        prop_backends=2,
        prop_routes=5,
        prop_budget=60,
        idle_window=0.1,
    )
    rows = r["write_rate"]
    assert [(w["kind"], w["existing"]) for w in rows] == [(k, n) for k in KINDS for n in (5, 20)]
    for w in rows:
        assert "error" not in w, w
        assert w["ok"] == 10 and not w["partial"] and w["writes_per_s"] > 0, w
        assert set(w["statuses"]) <= {"200", "201"}, w
        assert w["latency_ms"]["p50"] > 0 and w["api_rss_mb"] > 0
    [p] = r["propagation"]
    assert "error" not in p, p
    assert p["clusters"] == 5 and p["propagation"]["measured"] == 3 and p["propagation"]["p99_ms"] > 0
    assert p["replica_rss_mb"] > 0 and p["api_rss_mb"] > 0 and p["replica_cpu_ms_per_change"] >= 0
    fresh = p["fresh_replica"]
    assert "error" not in fresh, fresh
    assert 0 < fresh["listen_s"] <= fresh["exec_to_first_full_config_s"] and fresh["first_client_resources"] > 0
    assert r["code"]["controlplane"].endswith("controlplane/__init__.py")
