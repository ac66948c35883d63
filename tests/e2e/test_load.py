"""Live load per Envoy: the replica's samples of each Envoy's ops listener (`/lbcp/load`) match
the Envoy's own admin, for real HTTP/1.1 keep-alive, HTTP/2 and WebSocket connections."""

from __future__ import annotations

import asyncio

import httpx
from websockets.asyncio.client import connect as ws_connect

from api.localcluster.procs import free_port
from controlplane.xds.load import cluster_health, parse_load
from tests.conftest import http_ok, wait_for
from tests.e2e.test_hitless import KeepAlive

FLEETS = {"a": "127.0.0.31", "b": "127.0.0.32", "c": "127.0.0.33"}
H1, H2, WS = 34, 33, 33  # per Envoy: 100 connections each, 300 in all


async def _admin_connections(envoy, port: int) -> int:
    stats = await asyncio.to_thread(envoy.stats, f"listener.127.0.0.1_{port}.downstream_cx_active")
    return stats[f"listener.127.0.0.1_{port}.downstream_cx_active"]


async def test_load_matches_each_envoys_admin(api, replica, envoys, backends) -> None:
    ports = {f: free_port() for f in FLEETS}
    members = [{"name": f"b{i}", "address": "127.0.0.1", "port": b.port} for i, b in enumerate(backends[:2])]
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {}},
        {"op": "replace_backends", "cluster": "web", "body": members},
    ]
    for f, p in ports.items():
        ops.append(
            {
                "op": "put",
                "kind": "listener",
                "name": f"l-{f}",
                "body": {"address": "127.0.0.1", "port": p, "fleets": [f]},
            }
        )
        ops.append(
            {
                "op": "put",
                "kind": "route",
                "name": f"r-{f}",
                "body": {"listener": f"l-{f}", "websocket": True, "timeout": None, "backends": [{"cluster": "web"}]},
            }
        )
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    fleet = {
        f: envoys(f"load-{f}", [("127.0.0.1", replica.port)], fleet=f, public_address=a) for f, a in FLEETS.items()
    }
    for p in ports.values():
        await wait_for(http_ok(f"http://127.0.0.1:{p}/"), timeout=30, what="the listeners serving")

    h1: list[KeepAlive] = []
    h2: list[httpx.AsyncClient] = []
    ws = []
    try:
        for p in ports.values():
            for _ in range(H1):
                c = KeepAlive(p)
                await c.open()
                await c.get()
                h1.append(c)
            for _ in range(H2):
                c2 = httpx.AsyncClient(http2=True, http1=False, base_url=f"http://127.0.0.1:{p}", timeout=5)
                assert (await c2.get("/")).http_version == "HTTP/2"
                h2.append(c2)
            for _ in range(WS):
                w = await ws_connect(f"ws://127.0.0.1:{p}/", open_timeout=5, close_timeout=1)
                await w.recv()  # the greeting: the upgrade went through to the backend
                ws.append(w)

        async def nodes() -> dict:
            return {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}

        async def settled() -> bool:
            got = await nodes()
            return all((got.get(f"load-{f}", {}).get("load") or {}).get("connections") == H1 + H2 + WS for f in FLEETS)

        await wait_for(settled, timeout=3 * replica.sampler.interval + 10, what="the load of every Envoy sampled")
        got = await nodes()
        for f, p in ports.items():
            load = got[f"load-{f}"]["load"]
            assert load["connections"] == await _admin_connections(fleet[f], p) == H1 + H2 + WS
            assert load["listeners"] == {f"127.0.0.1_{p}": H1 + H2 + WS}
            assert load["http2_connections"] == H2
            assert load["overloaded"] is False and load["at"] > 0
            assert set(load) >= {
                "connections_per_second",
                "tls_handshakes_per_second",
                "http2_streams",
                "http2_streams_per_connection",
            }
        # The replica's own metrics carry the same numbers.
        text = httpx.get(f"http://127.0.0.1:{replica.metrics_port}/metrics").text
        for f in FLEETS:
            assert f'lbcp_fleet_connections{{fleet="{f}"}} {float(H1 + H2 + WS)}' in text
            assert f'lbcp_node_connections{{fleet="{f}",node="load-{f}"}} {float(H1 + H2 + WS)}' in text

        # Close a third of one Envoy's connections: the next sample says so.
        for c in h1[:H1]:
            c.close()

        async def dropped() -> bool:
            load = (await nodes())["load-a"]["load"]
            return load["connections"] == H2 + WS == await _admin_connections(fleet["a"], ports["a"])

        await wait_for(dropped, timeout=3 * replica.sampler.interval + 10, what="load-a's closed connections")
    finally:
        for c in h1:
            c.close()
        await asyncio.gather(*(c2.aclose() for c2 in h2), *(w.close() for w in ws))


def test_parse_load_leaves_out_admin_ops_and_workers() -> None:
    stats = [
        {"name": "listener.127.0.0.1_10000.downstream_cx_active", "value": 7},
        {"name": "listener.127.0.0.1_10000.worker_0.downstream_cx_active", "value": 4},
        {"name": "listener.127.0.0.1_10000.downstream_cx_total", "value": 70},
        {"name": "listener.127.0.0.1_10443.downstream_cx_active", "value": 3},
        {"name": "listener.127.0.0.1_10443.ssl.handshake", "value": 30},
        {"name": "listener.127.0.0.1_8081.downstream_cx_active", "value": 1},  # the ops listener
        {"name": "listener.admin.downstream_cx_active", "value": 1},
        {"name": "http.edge.downstream_cx_http2_active", "value": 2},
        {"name": "http.lbcp_ops.downstream_cx_http2_active", "value": 5},
        {"name": "http2.streams_active", "value": 9},
        {"name": "overload.envoy.overload_actions.stop_accepting_requests.active", "value": 1},
        {"name": "overload.envoy.overload_actions.shrink_heap.active", "value": 0},
        {"name": "cluster.web.membership_healthy", "value": 3},
        {"name": "cluster.web.membership_total", "value": 3},
        {"name": "cluster.api.v2.membership_healthy", "value": 1},  # a dotted name
        {"name": "cluster.api.v2.membership_total", "value": 2},
        {"name": "cluster.lbcp_xds.membership_healthy", "value": 0},  # the bootstrap's own
        {"name": "cluster.lbcp_xds.membership_total", "value": 2},
    ]
    got = parse_load(stats, 8081)
    assert got["members"] == {"web": {"healthy": 3, "total": 3}, "api.v2": {"healthy": 1, "total": 2}}
    assert cluster_health(got["members"]) == {"healthy": 1, "degraded": {"api.v2": {"healthy": 1, "total": 2}}}
    assert got["connections"] == 10 and got["listeners"] == {"127.0.0.1_10000": 7, "127.0.0.1_10443": 3}
    assert got["cx_total"] == 70 and got["tls_handshakes_total"] == 30
    assert got["http2_connections"] == 2 and got["http2_streams"] == 9
    assert got["overload_actions"] == ["envoy.overload_actions.stop_accepting_requests"]
