"""Hitless churn: hundreds of persistent connections (HTTP/1.1 keep-alive, HTTP/2, WebSocket)
through 2 real Envoys survive 100 configuration changes that do not target them, nor the
route policies of the routes carrying them (retries, rewrites, rate limits and header
changes added, changed and removed: RDS only), and a drained backend keeps its WebSockets
while getting no new requests."""

from __future__ import annotations

import asyncio
import random

import httpx
from websockets.asyncio.client import connect as ws_connect

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from tests.conftest import http_ok, wait_for

H1, H2, WS = 60, 10, 30  # connections per Envoy (HTTP/2 ones carry several streams each)

# The policies of the routes carrying the connections, one step per tenth change: added,
# changed, then removed. Each step's responses carry `x-churn` (or none): a round trip right
# after the change sees it on every connection, so the new RDS was applied to the
# connections held, not only acked. Limits stay far above the test's own rate.
POLICY_STEPS: list[dict] = [
    {"retries": {"attempts": 2}, "response_headers": {"set": {"x-churn": "0"}}},
    {
        "retries": {"attempts": 3, "on": ["5xx", "reset", "connect-failure"], "per_try_timeout": "5s"},
        "rewrite": {"prefix": "/churn/"},
        "response_headers": {"set": {"x-churn": "1"}},
    },
    {
        "retries": {"attempts": 3, "on": ["5xx", "reset", "connect-failure"], "per_try_timeout": "5s"},
        "rewrite": {"prefix": "/churn/", "host": "web.internal"},
        "rate_limit": {"requests": 100_000, "burst": 10_000},
        "request_headers": {"set": {"x-step": "2"}},
        "response_headers": {"set": {"x-churn": "2"}, "remove": ["server"]},
    },
    {
        "retries": {"attempts": 1, "on": ["retriable-status-codes"], "status_codes": [503]},
        "rewrite": {"regex": {"pattern": "^/(.*)$", "substitution": "/re/\\1"}},
        "rate_limit": {"requests": 1_000_000, "per": "1m", "key": {"header": "x-tenant"}},
        "request_headers": {"add": {"x-step": "3"}, "remove": ["x-forwarded-proto"]},
        "response_headers": {"set": {"x-churn": "3"}, "add": {"x-extra": "a"}},
    },
    {
        "retries": {"attempts": 1, "on": ["retriable-status-codes"], "status_codes": [503]},
        "rewrite": {"host": "web.internal"},
        "rate_limit": {"requests": 100_000, "key": {"source_ip": True}},
        "response_headers": {"set": {"x-churn": "4"}},
    },
    {
        "rewrite": {"host": "web.internal"},
        "rate_limit": {"requests": 100_000},
        "response_headers": {"set": {"x-churn": "5"}},
    },
    {"rate_limit": {"requests": 100_000}, "response_headers": {"set": {"x-churn": "6"}}},
    {"response_headers": {"set": {"x-churn": "7"}}},
    {"request_headers": {"set": {"x-step": "8"}}},
    {},
]


class KeepAlive:
    """One HTTP/1.1 keep-alive connection, used by hand so we know it is the same socket."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.headers: dict[str, str] = {}

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def get(self) -> str:
        """GET / on this connection: the body (the backend's name); its headers in `self.headers`."""
        assert self.reader and self.writer
        self.writer.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        self.headers = headers
        if not lines[0].startswith("HTTP/1.1 200"):
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            raise AssertionError(f"{lines[0]}: {body.decode(errors='replace')} {headers}")
        assert headers.get("connection", "").lower() != "close", "Envoy asked to close a keep-alive connection"
        body = await self.reader.readexactly(int(headers["content-length"]))
        return body.decode().strip()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


async def _stats(envoy, prefix: str) -> dict[str, int]:
    return await asyncio.to_thread(envoy.stats, prefix)


async def test_persistent_connections_survive_100_changes(api, replica, replica2, envoys) -> None:
    demo = [DemoBackend(f"web-{i}") for i in range(8)]
    conns: list[KeepAlive] = []
    h2_clients: list[httpx.AsyncClient] = []
    sockets = []
    try:
        ports = {"a": free_port(), "b": free_port()}
        members = [{"name": d.name, "address": "127.0.0.1", "port": d.port} for d in demo[:4]]
        r = await api.post(
            "/v1/batch",
            json={
                "operations": [
                    {"op": "put", "kind": "cluster", "name": "web", "body": {"connect_timeout": "1s"}},
                    {"op": "replace_backends", "cluster": "web", "body": members},
                    {"op": "put", "kind": "cluster", "name": "spare", "body": {}},
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
                            "body": {"listener": f"http-{f}", "backends": [{"cluster": "web"}], "websocket": True},
                        }
                        for f in ports
                    ),
                ]
            },
        )
        assert r.status_code == 200, r.text
        e_a = await asyncio.to_thread(envoys, "hitless-a", [("127.0.0.1", replica.port)], "a", True)
        e_b = await asyncio.to_thread(envoys, "hitless-b", [("127.0.0.1", replica2.port)], "b", False)
        for p in ports.values():
            await wait_for(http_ok(f"http://127.0.0.1:{p}/"), what="Envoy serving")

        # Open every connection, and use each once.
        for p in ports.values():
            for _ in range(H1):
                c = KeepAlive(p)
                await c.open()
                conns.append(c)
            for _ in range(H2):
                h2_clients.append(
                    httpx.AsyncClient(
                        base_url=f"http://127.0.0.1:{p}",
                        http1=False,
                        http2=True,
                        timeout=5,
                        limits=httpx.Limits(max_connections=1),
                    )
                )
            for _ in range(WS):
                sockets.append(await ws_connect(f"ws://127.0.0.1:{p}/ws", open_timeout=5))
        greetings = [await asyncio.wait_for(s.recv(), 5) for s in sockets]

        churn: str | None = None  # the x-churn the routes' current policy step sets

        async def round_trip() -> set[str]:
            names = set(await asyncio.gather(*(c.get() for c in conns)))
            seen = {c.headers.get("x-churn") for c in conns}
            rs = await asyncio.gather(*(cl.get("/") for cl in h2_clients for _ in range(3)))
            assert all(r.status_code == 200 and r.http_version == "HTTP/2" for r in rs)
            seen |= {r.headers.get("x-churn") for r in rs}
            assert seen == {churn}, (churn, seen)  # every connection took the routes' policy step
            names |= {r.text.strip() for r in rs}
            for s in sockets:
                await s.send("ping")
            assert all(m == "ping" for m in await asyncio.gather(*(asyncio.wait_for(s.recv(), 5) for s in sockets)))
            return names

        await round_trip()
        before = {e: await _stats(e, "downstream_cx") for e in (e_a, e_b)}
        lm_before = {e: await _stats(e, "listener_manager") for e in (e_a, e_b)}

        # 100 changes that do not target these connections' listeners, each waited for.
        rnd = random.Random(11)
        pool = list(demo[4:])
        changes = 0

        async def change(method: str, path: str, **kw) -> None:
            nonlocal changes
            r = await api.request(method, path + ("&" if "?" in path else "?") + "wait=acked&timeout=10s", **kw)
            assert r.status_code < 300, (path, r.status_code, r.text)
            assert r.headers["lbcp-rollout"] == "complete", (
                path,
                r.headers["lbcp-rollout"],
                r.text,
            )  # acked, not NACKed
            changes += 1

        while changes < 100:
            k = changes % 10
            if k == 0 and pool:
                d = pool.pop()
                await change(
                    "PUT", f"/v1/clusters/web/backends/{d.name}", json={"address": "127.0.0.1", "port": d.port}
                )
            elif k == 1:
                await change(
                    "PATCH", f"/v1/clusters/web/backends/web-{rnd.randrange(4)}", json={"weight": rnd.randint(1, 9)}
                )
            elif k == 2:
                await change(
                    "PUT",
                    f"/v1/clusters/spare/backends/s{changes}",
                    json={"address": "10.9.0.1", "port": 1000 + changes},
                )
            elif k == 3:
                await change(
                    "PUT",
                    "/v1/clusters/web",
                    json={
                        "connect_timeout": f"{rnd.randint(1, 3)}s",
                        "health_check": {"active": {"type": "http", "path": "/", "interval": f"{rnd.randint(2, 5)}s"}},
                    },
                )
            elif k == 4:
                await change(
                    "PUT",
                    f"/v1/routes/extra-{changes}",
                    json={
                        "listener": "http-a",
                        "match": {"prefix": f"/x{changes}"},
                        "backends": [{"cluster": "spare"}],
                    },
                )
            elif k == 5:
                await change(
                    "PUT",
                    "/v1/clusters/spare",
                    json={"load_balancer": {"type": rnd.choice(["round_robin", "least_request"])}},
                )
            elif k == 6:
                await change(
                    "PUT",
                    f"/v1/listeners/new-{changes}",
                    json={"address": "127.0.0.1", "port": free_port(), "fleets": ["a", "b"]},
                )
            elif k == 7:
                await change("PATCH", f"/v1/clusters/web/backends/web-{rnd.randrange(4)}", json={"weight": 1})
            elif k == 8:
                await change("DELETE", f"/v1/clusters/spare/backends/s{changes - 6}")
            else:
                # The routes carrying the connections take their next policy step, and a route
                # beside them on a listener that carries connections changes (RDS only, no drain).
                step = POLICY_STEPS[changes // 10]
                ops = [
                    {
                        "op": "put",
                        "kind": "route",
                        "name": f"r-{f}",
                        "body": {"listener": f"http-{f}", "backends": [{"cluster": "web"}], "websocket": True, **step},
                    }
                    for f in ports
                ]
                ops.append(
                    {
                        "op": "put",
                        "kind": "route",
                        "name": f"extra-{changes - 5}",
                        "body": {
                            "listener": "http-a",
                            "match": {"prefix": f"/x{changes - 5}"},
                            "backends": [{"cluster": "web"}],
                            "timeout": f"{rnd.randint(5, 30)}s",
                        },
                    }
                )
                await change("POST", "/v1/batch", json={"operations": ops})
                churn = step.get("response_headers", {}).get("set", {}).get("x-churn")
            if changes % 10 == 0:
                await round_trip()

        await round_trip()
        # Every connection is still the one opened before the changes (the sockets above
        # would have failed otherwise); Envoy closed none and drained none. Each Envoy serves
        # its own fleet's listener (http-a on e_a, http-b on e_b): its counters must be there,
        # before and after, and count the connections held (a stat that is missing or counts
        # nothing would make "unchanged" prove nothing).
        for e, own in ((e_a, "http-a"), (e_b, "http-b")):
            after = await _stats(e, "downstream_cx")
            assert before[e][f"http.{own}.downstream_cx_active"] >= H1 + H2 + WS, (e.node_id, before[e])
            assert after[f"http.{own}.downstream_cx_active"] == before[e][f"http.{own}.downstream_cx_active"]
            for stat in (f"http.{own}.downstream_cx_destroy", f"http.{own}.downstream_cx_drain_close"):
                assert stat in before[e] and stat in after, (e.node_id, stat, sorted(after))
                assert after[stat] == before[e][stat], (e.node_id, stat, before[e][stat], after[stat])
            lm = await _stats(e, "listener_manager")
            assert lm["listener_manager.total_listeners_draining"] == 0
            assert lm["listener_manager.listener_modified"] == lm_before[e]["listener_manager.listener_modified"]
            assert lm["listener_manager.listener_removed"] == lm_before[e]["listener_manager.listener_removed"]
            assert (
                lm["listener_manager.listener_added"] > lm_before[e]["listener_manager.listener_added"]
            )  # the new ones

        # Drain the backend holding the most WebSockets: they stay open, new requests avoid it.
        target = max(set(greetings), key=greetings.count)
        await change("PATCH", f"/v1/clusters/web/backends/{target}", json={"admin_state": "drain"})
        for _ in range(3):
            assert target not in await round_trip()  # round_trip also echoes on every WebSocket, the drained ones too
        held = [s for s, g in zip(sockets, greetings, strict=False) if g == target]
        assert held
        # Closed together: through Envoy each close takes about a second.
        await asyncio.gather(*(s.close() for s in held))
        # With its WebSockets closed, removing it drops nothing in flight.
        await change("DELETE", f"/v1/clusters/web/backends/{target}")
        sockets = [s for s, g in zip(sockets, greetings, strict=False) if g != target]
        assert target not in await round_trip()
    finally:
        for c in conns:
            c.close()
        await asyncio.gather(*(cl.aclose() for cl in h2_clients), *(s.close() for s in sockets))
        for d in demo:
            d.stop()
