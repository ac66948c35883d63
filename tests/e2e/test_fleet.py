"""Several Envoys on several replicas, SotW and delta: same config, fleet view, rollouts, etcd outage."""

from __future__ import annotations

import asyncio

import httpx

from api.localcluster.procs import EtcdCluster, free_port
from controlplane.etcd import EtcdConfig
from controlplane.xds.replica import ReplicaConfig, XdsReplica
from tests.conftest import http_ok, wait_for


def _dynamic(envoy) -> dict:
    """(kind, name) -> (version, resource) from Envoy's /config_dump."""
    out = {}
    for cfg in envoy.config_dump()["configs"]:
        for key, kind in (
            ("dynamic_active_clusters", "cluster"),
            ("dynamic_listeners", "listener"),
            ("dynamic_route_configs", "route"),
        ):
            for item in cfg.get(key, []):
                if kind == "listener":
                    item = item.get("active_state", {})
                res = item.get("cluster") or item.get("listener") or item.get("route_config")
                if res:
                    out[(kind, res["name"])] = (item.get("version_info"), res)
    return out


async def _setup(api, backends, port: int) -> None:
    await api.put("/v1/clusters/web", json={"load_balancer": {"type": "maglev"}})
    await api.put(
        "/v1/clusters/web/backends",
        json=[{"name": b.name, "address": "127.0.0.1", "port": b.port} for b in backends[:3]],
    )
    await api.put("/v1/listeners/http", json={"address": "127.0.0.1", "port": port})
    await api.put(
        "/v1/routes/main",
        json={
            "listener": "http",
            "backends": [{"cluster": "web"}],
            "hash_policies": [{"type": "header", "name": "x-user"}],
        },
    )


async def test_two_replicas_sotw_and_delta_converge(api, replica, replica2, backends, envoys) -> None:
    await _setup(api, backends, free_port())
    a = await asyncio.to_thread(envoys, "envoy-a", [("127.0.0.1", replica.port)], "default", True)
    b = await asyncio.to_thread(envoys, "envoy-b", [("127.0.0.1", replica2.port)], "default", False)
    c = await asyncio.to_thread(envoys, "envoy-c", [("127.0.0.1", replica2.port)], "default", True)

    async def all_connected() -> bool:
        r = await api.get("/v1/fleet")
        return {n["node_id"] for n in r.json()["nodes"]} == {"envoy-a", "envoy-b", "envoy-c"}

    await wait_for(all_connected, what="three Envoys in /v1/fleet")
    # A write that waits for the fleet to ack it.
    r = await api.put(
        "/v1/clusters/web/backends/b3?wait=acked&timeout=10s",
        json={"address": "127.0.0.1", "port": backends[3].port, "weight": 3},
    )
    assert r.status_code == 201 and r.headers["lbcp-rollout"] == "complete", r.json()
    assert sorted(r.json()["rollout"]["acked"]) == ["envoy-a", "envoy-b", "envoy-c"]
    rev = r.json()["revision"]
    status = (await api.get(f"/v1/rollouts/{rev}")).json()
    assert status["complete"] and status["nodes"] == 3

    node = (await api.get("/v1/fleet/envoy-b")).json()
    assert node["protocol"] == "sotw" and node["replica"] == "test-replica-2" and node["acked_revision"] >= rev
    assert (await api.get("/v1/fleet/nobody")).json()["code"] == "node-not-found"

    da, db, dc = _dynamic(a), _dynamic(b), _dynamic(c)
    assert set(da) == set(db) == set(dc) == {("cluster", "web"), ("listener", "http"), ("route", "http")}
    # Identical resources everywhere; identical versions across replicas for the same protocol.
    assert {k: v[1] for k, v in da.items()} == {k: v[1] for k, v in db.items()} == {k: v[1] for k, v in dc.items()}
    assert {k: v[0] for k, v in da.items()} == {k: v[0] for k, v in dc.items()}


async def test_updated_cluster_rewarms_without_waiting(api, replica, backends, envoys) -> None:
    """After a CDS update Envoy re-warms the cluster and needs EDS again: lbcp resends it at once."""
    port = free_port()
    await _setup(api, backends, port)
    for delta in (True, False):
        e = await asyncio.to_thread(envoys, f"rewarm-{delta}", [("127.0.0.1", replica.port)], "default", delta)

        async def serving(e=e) -> bool:
            return (
                e.stats("cluster_manager").get("cluster_manager.warming_clusters", 1) == 0
                and e.stats("cluster_manager").get("cluster_manager.active_clusters", 0) >= 2
            )

        await wait_for(serving, what="cluster active")
        r = await api.patch("/v1/clusters/web?wait=acked&timeout=5s", json={"connect_timeout": f"{2 + delta}s"})
        assert r.headers["lbcp-rollout"] == "complete", r.json()
        # Without the EDS resend the cluster would sit warming for initial_fetch_timeout (15 s).
        await wait_for(serving, timeout=3, what="updated cluster warmed")
        e.stop()


async def test_etcd_down_envoys_keep_serving(tmp_path, backends, envoys) -> None:
    from api.app import Settings, create_app

    etcd = EtcdCluster(tmp_path / "etcd", size=1)
    etcd.start()
    cfg = EtcdConfig(endpoints=tuple(etcd.endpoints), timeout=2.0, connect_timeout=0.5)
    rep = XdsReplica(ReplicaConfig(etcd=cfg, port=0, replica_id="r-outage", registry_flush_interval=0.05))
    await rep.start()
    app = create_app(Settings(etcd=cfg))
    port = free_port()
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
                await _setup(api, backends, port)
                e1 = await asyncio.to_thread(envoys, "outage-1", [("127.0.0.1", rep.port)])

                serving = http_ok(f"http://127.0.0.1:{port}/")

                await wait_for(serving, what="serving before the outage")
                await asyncio.to_thread(etcd.stop)
                # The API says 503; the replica keeps serving the last good config, to
                # connected Envoys and to a newly connecting one.
                assert (await api.put("/v1/clusters/x", json={})).status_code == 503
                e1.stop()
                await asyncio.to_thread(envoys, "outage-2", [("127.0.0.1", rep.port)])
                await wait_for(serving, what="a new Envoy configured while etcd is down")
                await asyncio.to_thread(etcd.start)
                # After etcd returns, new intent flows again with no restart of lbcp.
                for _ in range(50):
                    r = await api.put(
                        "/v1/clusters/web/backends/b3", json={"address": "127.0.0.1", "port": backends[3].port}
                    )
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(0.2)
                assert r.status_code == 201

                async def b3_seen() -> bool:
                    async with httpx.AsyncClient(timeout=2) as c:
                        for i in range(30):
                            if (
                                await c.get(f"http://127.0.0.1:{port}/", headers={"x-user": str(i)})
                            ).text.strip() == "b3":
                                return True
                    return False

                await wait_for(b3_seen, what="new backend after etcd returned")
    finally:
        await rep.stop(grace=0)
        etcd.stop()


async def test_replica_killed_envoys_move_without_churn_or_outage(tmp_path, api, etcd_config, backends, envoys) -> None:
    """kill -9 of the xDS replica an Envoy is connected to: the Envoy reconnects to the other
    replica within a bounded time, gets the same versions (nothing in /config_dump changes),
    and requests keep being served throughout."""
    import os
    import signal
    import sys
    import time

    from api.localcluster.procs import Proc

    port = free_port()
    await _setup(api, backends, port)
    xds_ports = [free_port(), free_port()]
    procs = [
        Proc(
            [
                sys.executable,
                "-m",
                "api.cli",
                "xds",
                "--port",
                str(p),
                "--etcd",
                ",".join(etcd_config.endpoints),
                "--prefix",
                etcd_config.prefix,
                "--replica-id",
                f"proc-{i}",
                "--registry-interval",
                "0.05",
            ],
            tmp_path / f"xds-{i}.log",
            env=dict(os.environ),
        )
        for i, p in enumerate(xds_ports)
    ]
    for p in procs:
        p.start()
    try:
        e = await asyncio.to_thread(envoys, "mover", [("127.0.0.1", p) for p in xds_ports], "default", True)
        await wait_for(http_ok(f"http://127.0.0.1:{port}/"), timeout=30, what="Envoy serving")

        async def on_replica() -> str | None:
            r = await api.get("/v1/fleet/mover")
            return r.json().get("replica") if r.status_code == 200 else None

        async def registered() -> bool:
            return await on_replica() is not None

        await wait_for(registered, what="Envoy in the fleet registry")
        first = await on_replica()
        before = _dynamic(e)
        victim = procs[int(first.split("-")[1])]

        # Traffic runs through the whole episode.
        statuses: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            async with httpx.AsyncClient(timeout=2) as c:
                while not stop.is_set():
                    try:
                        statuses.append(
                            (
                                await c.get(f"http://127.0.0.1:{port}/", headers={"x-user": str(len(statuses))})
                            ).status_code
                        )
                    except httpx.HTTPError:
                        statuses.append(0)
                    await asyncio.sleep(0.01)

        load = asyncio.create_task(traffic())
        await asyncio.sleep(0.3)
        killed_at = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)

        async def moved() -> bool:
            return (await on_replica()) not in (None, first) and (
                await asyncio.to_thread(e.stats, "control_plane.connected_state")
            ).get("control_plane.connected_state") == 1

        await wait_for(moved, timeout=20, what="Envoy reconnected to the other replica")
        reconnect_seconds = time.monotonic() - killed_at
        await asyncio.sleep(0.5)
        stop.set()
        await load
        assert statuses and all(s == 200 for s in statuses), {s: statuses.count(s) for s in set(statuses)}
        print(
            f"replica killed: Envoy on the other replica after {reconnect_seconds:.2f}s, {len(statuses)} requests "
            "all 200"
        )
        assert reconnect_seconds < 10, reconnect_seconds
        assert _dynamic(e) == before  # same versions, same resources: no churn from the move
        stats = await asyncio.to_thread(e.stats, "update_rejected")
        assert not any(stats.values()), stats
    finally:
        for p in procs:
            p.stop()
