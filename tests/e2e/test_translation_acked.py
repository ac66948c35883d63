"""Every intent feature, translated, is accepted (ACKed) by a real Envoy — no NACKs."""

from __future__ import annotations

import asyncio

from api.localcluster.procs import free_port


async def test_kitchen_sink_is_acked(api, replica, backends, envoys) -> None:
    p = [b.port for b in backends]
    # Three distinct listener ports: free_port() can hand out the same port twice, and Envoy
    # NACKs two listeners on one address (a fresh-clone CI run hit it once).
    lp: list[int] = []
    while len(lp) < 3:
        port = free_port()
        if port not in lp and port not in p:
            lp.append(port)
    ops = [
        {
            "op": "put",
            "kind": "cluster",
            "name": "rr",
            "body": {
                "protocol": "http1",
                "connect_timeout": "250ms",
                "health_check": {
                    "active": {
                        "type": "http",
                        "path": "/healthz",
                        "host": "svc.local",
                        "expected_statuses": [200, 204],
                        "interval": "2s",
                        "timeout": "1s",
                    },
                    "passive": {"consecutive_5xx": 3, "base_ejection_time": "10s", "max_ejection_percent": 50},
                },
                "circuit_breakers": {
                    "max_connections": 50000,
                    "max_pending_requests": 1000,
                    "max_requests": 100000,
                    "max_retries": 3,
                },
            },
        },
        {
            "op": "put",
            "kind": "cluster",
            "name": "lr",
            "body": {
                "protocol": "http2",
                "load_balancer": {"type": "least_request", "choice_count": 3},
                "health_check": {"active": {"type": "tcp", "interval": "3s", "timeout": "1s"}},
            },
        },
        {"op": "put", "kind": "cluster", "name": "rnd", "body": {"load_balancer": {"type": "random"}}},
        {
            "op": "put",
            "kind": "cluster",
            "name": "mag",
            "body": {"load_balancer": {"type": "maglev", "table_size": 655373}},
        },
        {
            "op": "put",
            "kind": "cluster",
            "name": "ring",
            "body": {
                "load_balancer": {
                    "type": "ring_hash",
                    "minimum_ring_size": 512,
                    "maximum_ring_size": 4096,
                    "hash_function": "murmur_hash_2",
                }
            },
        },
        {"op": "put", "kind": "cluster", "name": "dns", "body": {"discovery": "dns"}},
        {"op": "put", "kind": "cluster", "name": "raw", "body": {"protocol": "tcp"}},
        {
            "op": "replace_backends",
            "cluster": "rr",
            "body": [
                {"name": "a", "address": "127.0.0.1", "port": p[0], "zone": "z1", "metadata": {"rack": "r1", "gen": 2}},
                {"name": "b", "address": "127.0.0.1", "port": p[1], "zone": "z2", "priority": 1, "weight": 5},
                {"name": "c", "address": "127.0.0.1", "port": p[2], "admin_state": "drain"},
                {"name": "d", "address": "::1", "port": p[3], "admin_state": "maint"},
            ],
        },
        {
            "op": "replace_backends",
            "cluster": "mag",
            "body": [{"name": f"m{i}", "address": "127.0.0.1", "port": p[i], "weight": i + 1} for i in range(3)],
        },
        {
            "op": "replace_backends",
            "cluster": "ring",
            "body": [{"name": f"r{i}", "address": "127.0.0.1", "port": p[i]} for i in range(3)],
        },
        {"op": "replace_backends", "cluster": "dns", "body": [{"name": "h", "address": "localhost", "port": p[0]}]},
        {"op": "replace_backends", "cluster": "raw", "body": [{"name": "t", "address": "127.0.0.1", "port": p[1]}]},
        {
            "op": "put",
            "kind": "listener",
            "name": "web",
            "body": {"address": "127.0.0.1", "port": lp[0], "max_connections": 100000},
        },
        {
            "op": "put",
            "kind": "listener",
            "name": "tcp",
            "body": {"address": "127.0.0.1", "port": lp[1], "protocol": "tcp", "cluster": "raw"},
        },
        {
            "op": "put",
            "kind": "listener",
            "name": "other-fleet",
            "body": {"address": "127.0.0.1", "port": lp[2], "fleets": ["nobody"]},
        },
        {
            "op": "put",
            "kind": "route",
            "name": "exact",
            "body": {
                "listener": "web",
                "domains": ["api.example.com", "*.example.org"],
                "match": {
                    "path": "/exact",
                    "headers": [
                        {"name": "x-env", "exact": "prod"},
                        {"name": "x-debug", "present": True, "invert": True},
                    ],
                },
                "backends": [{"cluster": "rr", "weight": 90}, {"cluster": "lr", "weight": 10}],
                "timeout": None,
                "idle_timeout": "5m",
            },
        },
        {
            "op": "put",
            "kind": "route",
            "name": "regex",
            "body": {
                "listener": "web",
                "match": {
                    "regex": "^/v[0-9]+/.*",
                    "headers": [{"name": "x-tenant", "regex": "^t-[a-z]+$"}, {"name": "x-p", "prefix": "a"}],
                },
                "backends": [{"cluster": "rnd"}],
            },
        },
        {
            "op": "put",
            "kind": "route",
            "name": "maglev",
            "body": {
                "listener": "web",
                "match": {"prefix": "/m"},
                "backends": [{"cluster": "mag"}],
                "websocket": True,
                "hash_policies": [{"type": "header", "name": "x-user-id", "terminal": True}, {"type": "source_ip"}],
            },
        },
        {
            "op": "put",
            "kind": "route",
            "name": "ring",
            "body": {
                "listener": "web",
                "match": {"prefix": "/r"},
                "backends": [{"cluster": "ring"}],
                "order": -1,
                "hash_policies": [
                    {"type": "cookie", "name": "sid", "ttl": "1h", "path": "/"},
                    {"type": "query_parameter", "name": "u"},
                ],
            },
        },
        {
            "op": "put",
            "kind": "route",
            "name": "dns",
            "body": {"listener": "web", "match": {"prefix": "/dns"}, "backends": [{"cluster": "dns"}]},
        },
    ]
    r = await api.post("/v1/batch", json={"operations": ops})
    assert r.status_code == 200, r.text
    for delta in (True, False):
        e = await asyncio.to_thread(envoys, f"sink-{delta}", [("127.0.0.1", replica.port)], "default", delta)
        status = None
        for _ in range(100):
            status = (await api.get(f"/v1/rollouts/{r.json()['revision']}")).json()
            if f"sink-{delta}" in status["acked"] or status["rejected"]:
                break
            await asyncio.sleep(0.1)
        assert not status["rejected"], status["rejected"]
        assert f"sink-{delta}" in status["acked"], status
        stats = e.stats("update_rejected")
        assert not any(v for v in stats.values()), stats
        clusters = e.stats("cluster_manager.active_clusters")
        assert (
            clusters["cluster_manager.active_clusters"] == 7 + 3
        )  # ours + lbcp_xds + lbcp_admin + lbcp_gate (ops listener)
        listeners = e.stats("listener_manager.total_listeners_active")
        # ours (other-fleet's listener is not for this fleet) + the bootstrap's ops listener
        assert listeners["listener_manager.total_listeners_active"] == 2 + 1
        e.stop()
