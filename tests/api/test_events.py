"""`GET /v1/events` against real etcd, a real xDS replica and a real Envoy: the snapshot, then
intent writes, node changes and rollouts as they happen; one etcd watch however many viewers;
an etcd outage is reported on the open stream and the stream recovers by itself."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from controlplane.etcd import EtcdConfig
from tests.conftest import seed_web, wait_for

WRITER = "writer-token-0123456789"
READER = "reader-token-0123456789"


class Events:
    """An open event stream: `await next_event(name, pred)` skips events until one matches."""

    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp
        self._lines = resp.aiter_lines()
        self.seen: list[tuple[str, Any]] = []

    async def _one(self) -> tuple[str, Any]:
        name, data = "message", ""
        async for line in self._lines:
            if line == "":
                if data:
                    return name, json.loads(data)
                continue
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        raise EOFError("the event stream ended")

    async def next_event(self, name: str, pred: Any = lambda d: True, timeout: float = 15.0) -> Any:
        async def find() -> Any:
            while True:
                ev = await self._one()
                self.seen.append(ev)
                if ev[0] == name and pred(ev[1]):
                    return ev[1]

        return await asyncio.wait_for(find(), timeout)


@asynccontextmanager
async def events(url: str, token: str | None = None) -> AsyncIterator[Events]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as c:
        async with c.stream("GET", f"{url}/v1/events", headers=headers) as resp:
            assert resp.status_code == 200, await resp.aread()
            assert resp.headers["content-type"].startswith("text/event-stream")
            yield Events(resp)


async def test_snapshot_then_writes_nodes_and_rollouts(store: Any, replica: Any, envoys: Any, serve_api: Any) -> None:
    await seed_web(store)
    url = await serve_api()
    async with events(url) as ev:
        snap = await ev.next_event("snapshot")
        assert snap["etcd"] == "ok" and snap["nodes"] == []
        envoys("ev-0", [("127.0.0.1", replica.port)], public_address="127.0.1.41")
        node = await ev.next_event("node", lambda d: d["node_id"] == "ev-0" and d.get("acked_revision", 0) > 0)
        assert node["replica"] == "test-replica" and node["front_state"] != "drained"

        async with httpx.AsyncClient(base_url=url) as api:
            r = await api.post("/v1/clusters/web/backends", json={"name": "web-9", "address": "10.0.0.9", "port": 80})
            assert r.status_code == 201, r.text
            rev = r.json()["revision"]
            write = await ev.next_event("intent", lambda d: d["revision"] == rev)
            [change] = write["changes"]
            assert {k: change[k] for k in ("kind", "name", "cluster", "deleted")} == {
                "kind": "backend",
                "name": "web-9",
                "cluster": "web",
                "deleted": False,
            }
            assert change["object"]["address"] == "10.0.0.9" and change["object"]["port"] == 80
            done = await ev.next_event("rollout", lambda d: d["revision"] == rev and d["complete"])
            assert done["acked"] == ["ev-0"]

            # ev-0 is its fleet's only Envoy: the floor (min_in_service 1) needs force.
            r = await api.post("/v1/fleet/ev-0/drain", json={"reason": "events test"}, params={"force": "true"})
            assert r.status_code == 201, r.text
            drained = await ev.next_event("node", lambda d: d["node_id"] == "ev-0" and d["draining"])
            assert drained["front_state"] == "drained" and drained["drain"]["reason"] == "events test"

    # A new viewer's snapshot holds the write, its finished rollout and the drained node.
    async with events(url) as ev2:
        snap = await ev2.next_event("snapshot")
        assert [n["node_id"] for n in snap["nodes"]] == ["ev-0"] and snap["nodes"][0]["draining"]
        assert "ev-0" in snap["drained"]
        change = next(c for c in snap["changes"] if c["revision"] == rev)
        assert change["rollout"]["complete"] and change["rollout"]["acked"] == ["ev-0"]


async def test_readers_may_watch_and_nobody_else(serve_api: Any) -> None:
    url = await serve_api(tokens=f"writer:{WRITER},reader:{READER}")
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{url}/v1/events")).status_code == 401
        bad = await c.get(f"{url}/v1/events", headers={"authorization": "Bearer not-a-token-at-all-here"})
        assert bad.status_code == 401 and bad.json()["code"] == "unauthenticated"
    async with events(url, READER) as ev:
        assert (await ev.next_event("snapshot"))["etcd"] == "ok"


def _etcd_gauge(endpoint: str, name: str) -> float:
    text = httpx.get(f"http://{endpoint}/metrics", timeout=5).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"etcd exports no {name}"
    return float(m.group(1))


async def test_many_viewers_share_one_watch(etcd_cluster: Any, serve_api: Any, store: Any) -> None:
    url = await serve_api()
    endpoint = etcd_cluster.endpoints[0]
    base = _etcd_gauge(endpoint, "etcd_debugging_mvcc_watcher_total")
    async with events(url) as first:
        await first.next_event("snapshot")  # the hub's load; its watch opens right after
        await wait_for(_watchers_are(endpoint, base + 1), 10, "the hub's one watch")
        watchers = _etcd_gauge(endpoint, "etcd_debugging_mvcc_watcher_total")
        ranges = _etcd_gauge(endpoint, "etcd_debugging_mvcc_range_total")
        async with contextlib_stack(url, 20) as viewers:
            for v in viewers:
                await v.next_event("snapshot")
            assert _etcd_gauge(endpoint, "etcd_debugging_mvcc_watcher_total") == watchers
            # Twenty snapshots came from memory: no etcd read per viewer.
            assert _etcd_gauge(endpoint, "etcd_debugging_mvcc_range_total") - ranges < 5
            from controlplane.intent.model import Cluster

            result = await store.put(Cluster(name="seen-by-all"))
            for v in viewers:
                got = await v.next_event("intent", lambda d: d["revision"] == result.revision)
                assert got["changes"][0]["name"] == "seen-by-all"


def _watchers_are(endpoint: str, n: float) -> Any:
    async def check() -> bool:
        return _etcd_gauge(endpoint, "etcd_debugging_mvcc_watcher_total") == n

    return check


@asynccontextmanager
async def contextlib_stack(url: str, n: int) -> AsyncIterator[list[Events]]:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(events(url)) for _ in range(n)]


@pytest.mark.timeout(90)
async def test_etcd_outage_is_reported_and_the_stream_recovers(private_etcd: Any, serve_api: Any) -> None:
    config = EtcdConfig(endpoints=tuple(private_etcd.endpoints), prefix="/lbcp-events/v1/", timeout=2.0)
    url = await serve_api(etcd=config)
    async with events(url) as ev:
        assert (await ev.next_event("snapshot"))["etcd"] == "ok"
        member = private_etcd.members[0]
        private_etcd.stop_member(member)
        down = await ev.next_event("etcd", lambda d: d["state"] == "unavailable", timeout=30)
        assert down["detail"]
        async with httpx.AsyncClient() as c:
            r = await c.put(f"{url}/v1/clusters/x", json={})
            assert r.status_code == 503 and r.json()["code"] == "store-unavailable"
        await asyncio.to_thread(private_etcd.restart_member, member)
        await ev.next_event("etcd", lambda d: d["state"] == "ok", timeout=30)
        assert (await ev.next_event("snapshot"))["etcd"] == "ok"
        async with httpx.AsyncClient() as c:
            r = await c.put(f"{url}/v1/clusters/after", json={})
            assert r.status_code in (200, 201), r.text
        await ev.next_event("intent", lambda d: d["revision"] == r.json()["revision"])


async def test_lbcp_watch_prints_the_stream(serve_api: Any, store: Any) -> None:
    import sys

    url = await serve_api()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "--api", url, "watch", "-o", "json", "--count", "2", "--timeout", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
    assert first["event"] == "snapshot"
    from controlplane.intent.model import Cluster

    result = await store.put(Cluster(name="watched"))
    second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
    assert second == {"event": "intent", "data": second["data"]} and second["data"]["revision"] == result.revision
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0 and err == b""  # no library log lines without -v

    text = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "watch", "--count", "1", "--api", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(text.communicate(), 20)
    assert text.returncode == 0, err
    assert re.match(rb"\d\d:\d\d:\d\d snapshot  revision \d+, 0 Envoys, 0 drained, etcd ok\n$", out), out


async def test_the_watch_runs_only_while_someone_watches(
    etcd_cluster: Any, serve_api: Any, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.events
    from controlplane.intent.model import Backend, Cluster

    monkeypatch.setattr(api.events, "IDLE_SECONDS", 0.5)
    endpoint = etcd_cluster.endpoints[0]
    url = await serve_api()
    before = _etcd_gauge(endpoint, "etcd_debugging_mvcc_watcher_total")
    # Writes made while nobody watched are in the first viewer's snapshot (from etcd).
    first = await store.put(Cluster(name="early"))
    second = await store.put(Backend(name="b", address="10.0.0.1", port=1), cluster="early")
    async with events(url) as ev:
        snap = await ev.next_event("snapshot")
        await wait_for(_watchers_are(endpoint, before + 1), 10, "the hub's one watch")
    listed = {c["revision"]: c["changes"] for c in snap["changes"]}
    [early] = listed[first.revision]
    assert (early["kind"], early["name"], early["cluster"], early["deleted"]) == ("cluster", "early", None, False)
    assert early["object"]["name"] == "early"
    assert listed[second.revision][0]["name"] == "b" and listed[second.revision][0]["cluster"] == "early"
    assert snap["intent_revision"] == second.revision

    await wait_for(_watchers_are(endpoint, before), 10, "the hub to stop watching after its last viewer left")
    async with events(url) as ev:  # and it starts again for the next one
        assert (await ev.next_event("snapshot"))["intent_revision"] == second.revision
