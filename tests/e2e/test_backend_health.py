"""Per-backend health as the Envoys see it: real Envoys actively health-check a cluster with
a live backend, a dead one, a drained one and one in maintenance; `GET .../backends?health=true`
(and `/v1/fleet`'s `hosts`) show the dead one failing on every Envoy, the drained one
draining, and the rest as they are; a backend brought back to life turns healthy."""

from __future__ import annotations

import asyncio

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from tests.conftest import wait_for

CHECK = {"type": "http", "path": "/", "interval": "0.5s", "timeout": "0.4s", "unhealthy_threshold": 1}


async def test_each_backend_shows_what_every_envoy_sees(api, make_replica, envoys) -> None:
    replica = await make_replica("health", load_interval=0.2)
    live, draining = DemoBackend("h-live"), DemoBackend("h-drain")
    dead_port = free_port()  # nothing listens here (yet)
    members = [
        {"name": "live", "address": "127.0.0.1", "port": live.port},
        {"name": "dead", "address": "127.0.0.1", "port": dead_port},
        {"name": "drained", "address": "127.0.0.1", "port": draining.port, "admin_state": "drain"},
        {"name": "maint", "address": "127.0.0.1", "port": live.port, "admin_state": "maint", "weight": 2},
    ]
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {"health_check": {"active": CHECK}}},
        {"op": "replace_backends", "cluster": "web", "body": members},
        {"op": "put", "kind": "cluster", "name": "quiet", "body": {}},  # no checks: all healthy
        {"op": "replace_backends", "cluster": "quiet", "body": [{"name": "q", "address": "127.0.0.1", "port": 9}]},
    ]
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    nodes = ["hc-0", "hc-1"]
    for n in nodes:
        envoys(n, [("127.0.0.1", replica.port)])
    revived = None

    async def health(cluster: str = "web") -> dict[str, dict]:
        r = await api.get(f"/v1/clusters/{cluster}/backends", params={"health": "true"})
        assert r.status_code == 200, r.text
        return {b["name"]: b["health"] for b in r.json()["items"]}

    def seen(want: dict[str, str]):
        async def ok() -> bool:
            got = await health()
            return all(got[b]["state"] == st and sorted(got[b]["envoys"]) == nodes for b, st in want.items())

        return ok

    try:
        want = {"live": "healthy", "dead": "failing", "drained": "draining"}
        await wait_for(seen(want), timeout=30, what="every Envoy's view of each backend")
        got = await health()
        assert got["dead"] == {"state": "failing", "envoys": dict.fromkeys(nodes, "failing"), "counts": {"failing": 2}}
        assert got["maint"] == {"state": "unknown", "envoys": {}, "counts": {}}  # in no Envoy's endpoints
        one = await api.get("/v1/clusters/web/backends/dead", params={"health": "true"})
        assert one.json()["health"]["state"] == "failing" and one.headers["etag"]
        assert "health" not in (await api.get("/v1/clusters/web/backends/dead")).json()  # only when asked
        assert {b: h["state"] for b, h in (await health("quiet")).items()} == {"q": "healthy"}

        # /v1/fleet: each Envoy lists the hosts it does not see as healthy.
        fleet = {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}
        for n in nodes:
            assert fleet[n]["hosts"]["web"][f"127.0.0.1:{dead_port}"] == "failing"
            assert fleet[n]["hosts"]["quiet"] == {} and fleet[n]["hosts_at"] > 0

        # The dead backend comes to life on its port: every Envoy sees it healthy again.
        revived = DemoBackend("h-dead", port=dead_port)
        await wait_for(seen({"dead": "healthy"}), timeout=20, what="the revived backend healthy on every Envoy")
    finally:
        for b in (live, draining, revived):
            if b is not None:
                b.stop()
        await asyncio.sleep(0)
