"""`lbcp fleet` fits 80 columns (every column with `-o wide`, as kubectl does), `fleet show`
says what its columns count and prints no bare `-`, and `lbcp node drain` below the fleet's
floor says why, then how to do it anyway in this CLI's terms (--force), never the API's."""

from __future__ import annotations

import json
from typing import Any

from controlplane.intent.model import Backend, Cluster, Listener, Route
from tests.api.test_cli import lbcp
from tests.conftest import acked_client, wait_for


async def test_fleet_fits_80_columns_and_wide_has_every_column(
    serve_api: Any, make_replica: Any, store: Any, envoys: Any
) -> None:
    from api.localcluster.procs import free_port

    replica = await make_replica("cols", load_interval=0.2)
    await store.put(Cluster(name="web"))
    await store.put(Backend(name="web-0", address="127.0.0.1", port=free_port()), cluster="web")
    await store.put(Listener(name="http", address="127.0.0.1", port=free_port()))
    await store.put(Route(name="r", listener="http", backends=[{"cluster": "web"}]))
    url = await serve_api()
    for i in range(2):
        envoys(f"envoy-{i}", [("127.0.0.1", replica.port)], fleet="production-eu-west")

    async def ready() -> bool:
        nodes = json.loads((await lbcp(url, "fleet", "-o", "json")).out)
        return len(nodes) == 2 and all(n.get("front_state") == "in" and n.get("load") for n in nodes)

    await wait_for(ready, 30, "two Envoys in service, reporting load")

    r = await lbcp(url, "fleet")
    lines = r.out.splitlines()
    assert r.code == 0 and r.err == "" and len(lines) == 3, r
    assert max(len(line) for line in lines) <= 80, "\n" + r.out
    assert lines[0].split() == ["NODE", "FLEET", "FRONT", "SYNC", "ACKED", "CONNS", "HEADROOM"]
    for line in lines[1:]:
        node, fleet, front, sync, *_ = line.split()
        assert (fleet, front, sync) == ("production-eu-west", "in", "SYNCED"), line

    wide = await lbcp(url, "fleet", "-o", "wide")
    header = wide.out.splitlines()[0].split()
    assert header[:5] == ["NODE", "FLEET", "REPLICA", "ADDRESS", "FRONT"] and header[-1] == "MOVING"
    assert header[5:10] == ["CDS", "LDS", "EDS", "RDS", "ACKED"]
    assert all(row.split()[5:9] == ["SYNCED"] * 4 for row in wide.out.splitlines()[1:]), wide.out

    shown = await lbcp(url, "fleet", "show", "envoy-0")
    assert shown.code == 0 and shown.err == "", shown
    assert "-" not in shown.out.split(), "\n" + shown.out  # every field says what it is, none a bare dash
    out = shown.out
    assert "Identity:     none (no client certificate)" in out and "Moving:       no" in out, out
    types = out.splitlines()[out.splitlines().index("") + 3 :]
    header_line = out.splitlines()[out.splitlines().index("") + 3]
    assert header_line.split() == ["TYPE", "STATE", "SENT", "VERSION", "ACKED", "VERSION", "RESPONSES", "BYTES",
                                   "LAST", "NACK"], out  # fmt: skip
    assert "an etcd revision" in out and "(counts)" in out  # what the numbers are
    assert any(t.split()[:2] == ["CDS", "SYNCED"] and t.split()[-1] == "none" for t in types), out


async def test_drain_below_the_floor_says_why_and_how(serve_api: Any, make_replica: Any, store: Any) -> None:
    replica = await make_replica("floor", front_cidrs=("edge=127.0.0.0/8",), front_unprobed=("edge",))
    await store.put(Cluster(name="web"))
    url = await serve_api()
    clients = [await acked_client(replica, f"edge-{i}", public_address=f"127.0.0.{20 + i}") for i in range(2)]

    def in_service(n: int):
        async def check() -> bool:
            doc = json.loads((await lbcp(url, "frontdoor", "render", "--format", "json", "--fleet", "edge")).out)
            return len(doc["in_service"]) == n

        return check

    try:
        await wait_for(in_service(2), 20, "both clients in service")
        r = await lbcp(url, "node", "drain", "edge-0")
        assert r.code == 0 and r.out.startswith("node edge-0 drained"), r
        await wait_for(in_service(1), 20, "edge-0 out of service")

        r = await lbcp(url, "node", "drain", "edge-1", "--reason", "kernel")
        first, hint = r.err.splitlines()
        assert r.code == 1 and r.out == "", r
        assert first.startswith(
            "error: draining edge-1 would leave fleet 'edge' with 0 of 2 Envoys in service, below its floor of 1"
        ), r.err
        assert hint == "hint: add --force to drain anyway"
        assert "?force" not in r.err and "Traceback" not in r.err

        r = await lbcp(url, "node", "drain", "edge-1", "--evacuate", "--rate", "10")
        first, hint = r.err.splitlines()
        assert r.code == 1 and first.startswith("error: evacuating edge-1 would leave fleet 'edge'"), r.err
        assert hint == "hint: add --force to evacuate anyway"

        r = await lbcp(url, "node", "drain", "nobody")
        first, hint = r.err.splitlines()
        assert r.code == 1 and first.startswith("error: no connected Envoy has node id 'nobody'"), r.err
        assert hint == "hint: add --force to drain it before it connects" and "?force" not in r.err

        r = await lbcp(url, "node", "drain", "edge-1", "--force")
        assert r.code == 0 and r.out.startswith("node edge-1 drained"), r
        await wait_for(in_service(0), 20, "edge-1 out of service too")
    finally:
        for c in clients:
            await c.close()


def test_fleet_show_says_why_a_health_check_fails() -> None:
    from api.cli.fleet import _health

    assert _health({}) == "not probed"
    assert _health({"probed": True, "ok": True, "status": 200}) == "passing"
    assert _health({"probed": True, "ok": False, "status": 503}) == "failing (HTTP 503)"
    bad = {"probed": True, "ok": False, "status": None, "reason": "bad-head", "error": "no status line"}
    assert _health(bad) == "failing: bad-head (no status line)"
