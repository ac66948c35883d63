"""`lbcp get backends CLUSTER` has a HEALTH column from `?health=true`: the state every
reporting Envoy agrees on (`healthy`; any other with how many say so of how many report,
`failing (2/2)`), what each says when they disagree (`mixed: 1 failing, 1 healthy`); `-o
json` is the API's JSON. Two real Envoys actively check a live and a dead backend."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.cli.intent import health_summary
from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from tests.api.test_cli import lbcp
from tests.conftest import wait_for

CHECK = {"type": "http", "path": "/", "interval": "0.5s", "timeout": "0.4s", "unhealthy_threshold": 1}


async def test_get_backends_shows_each_backends_health(
    api: Any, serve_api: Any, make_replica: Any, envoys: Any
) -> None:
    replica = await make_replica("cli-health", load_interval=0.2)
    live, draining = DemoBackend("cli-live"), DemoBackend("cli-drain")
    members = [
        {"name": "live", "address": "127.0.0.1", "port": live.port},
        {"name": "dead", "address": "127.0.0.1", "port": free_port()},  # nothing listens there
        {"name": "drained", "address": "127.0.0.1", "port": draining.port, "admin_state": "drain"},
        {"name": "maint", "address": "127.0.0.1", "port": free_port(), "admin_state": "maint"},
    ]
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {"health_check": {"active": CHECK}}},
        {"op": "replace_backends", "cluster": "web", "body": members},
    ]
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    url = await serve_api()
    for n in ("hc-0", "hc-1"):
        envoys(n, [("127.0.0.1", replica.port)])
    try:

        async def seen() -> bool:
            r = await lbcp(url, "get", "backends", "web", "-o", "json")
            got = {b["name"]: (b.get("health") or {}).get("state") for b in json.loads(r.out)}
            return got == {"live": "healthy", "dead": "failing", "drained": "draining", "maint": "unknown"}

        await wait_for(seen, 30, "both Envoys' view of each backend")
        r = await lbcp(url, "get", "backends", "web")
        assert r.code == 0 and r.err == "", r
        header, *rows = r.out.splitlines()
        at = header.index("HEALTH")
        assert header.split() == ["NAME", "ADDRESS", "PORT", "WEIGHT", "ZONE", "PRIORITY", "ADMIN", "HEALTH",
                                  "REVISION"]  # fmt: skip
        health = {row.split()[0]: row[at:].rsplit(None, 1)[0].strip() for row in rows}
        assert health == {
            "live": "healthy",
            "dead": "failing (2/2)",
            "drained": "draining (2/2)",
            "maint": "unknown",
        }, r.out

        # -o json: the API's own document, health included; one backend by name likewise.
        items = json.loads((await lbcp(url, "get", "backends", "web", "-o", "json")).out)
        dead = next(b for b in items if b["name"] == "dead")
        assert dead["health"] == {"state": "failing", "envoys": {"hc-0": "failing", "hc-1": "failing"},
                                  "counts": {"failing": 2}}  # fmt: skip
        [one] = json.loads((await lbcp(url, "get", "backends", "web", "dead", "-o", "json")).out)
        assert one["name"] == "dead" and one["health"]["state"] == "failing"
        r = await lbcp(url, "get", "backends", "web", "live")
        assert r.out.splitlines()[1].split()[7] == "healthy", r.out
    finally:
        live.stop()
        draining.stop()


@pytest.mark.parametrize(
    ("health", "shown"),
    [
        ({"state": "healthy", "envoys": {"a": "healthy", "b": "healthy"}, "counts": {"healthy": 2}}, "healthy"),
        ({"state": "failing", "envoys": {"a": "failing", "b": "failing"}, "counts": {"failing": 2}}, "failing (2/2)"),
        (
            {"state": "mixed", "envoys": {"a": "failing", "b": "healthy"}, "counts": {"healthy": 1, "failing": 1}},
            "mixed: 1 failing, 1 healthy",
        ),
        (
            {"state": "mixed", "envoys": {}, "counts": {"healthy": 1, "ejected": 2, "pending": 1}},
            "mixed: 2 ejected, 1 healthy, 1 pending",
        ),
        ({"state": "unknown", "envoys": {}, "counts": {}}, "unknown"),
        (None, "unknown"),  # an API that does not say
    ],
)
def test_health_column_text(health: dict[str, Any] | None, shown: str) -> None:
    assert health_summary(health) == shown
