"""`GET /v1/fleet/{node}/config` (controlplane/xds/served.py) against a real Envoy: what lbcp
says it serves is what the Envoy's /config_dump holds, resource for resource; secrets never
show; bad input is a problem."""

from __future__ import annotations

from typing import Any

import httpx

from api.cli.fleet import envoy_resources
from api.localcluster.procs import free_port
from controlplane.intent.model import Backend, Cluster, Listener, Route
from tests.conftest import wait_for


async def test_node_config_is_what_envoy_holds(store: Any, replica: Any, envoys: Any, api: httpx.AsyncClient) -> None:
    await store.put(Cluster(name="web", load_balancer={"type": "ring_hash"}))
    await store.put(Backend(name="a", address="10.0.0.1", port=80, weight=3), cluster="web")
    await store.put(Listener(name="http", address="127.0.0.1", port=free_port(), bind_public_address=True))
    await store.put(Route(name="r", listener="http", backends=[{"cluster": "web"}]))
    envoy = envoys("insp-0", [("127.0.0.1", replica.port)], public_address="127.0.1.71")

    async def synced() -> bool:
        doc = (await api.get("/v1/fleet/insp-0")).json()
        return doc.get("acked_revision", 0) >= store_revision

    store_revision = (await api.get("/v1/clusters/web")).json()["revision"]
    await wait_for(synced, 20, "insp-0 acked the intent")
    r = await api.get("/v1/fleet/insp-0/config")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["fleet"] == "default" and set(doc["types"]) == {"cds", "eds", "lds", "rds"}
    dumped = envoy_resources(envoy.config_dump())
    for short in ("cds", "lds", "rds"):
        ours = {x["name"]: x["resource"] for x in doc["types"][short]["resources"]}
        assert ours == dumped[short], short  # field for field, as Envoy itself prints it
        assert doc["types"][short]["envoy"]["acked_version"]
    # The listener is this Envoy's own variant: it also binds its public address.
    [listener] = doc["types"]["lds"]["resources"]
    extra = [a["address"]["socket_address"]["address"] for a in listener["resource"]["additional_addresses"]]
    assert extra == ["127.0.1.71"]
    [eds] = doc["types"]["eds"]["resources"]
    assert eds["resource"]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] == 3

    only = (await api.get("/v1/fleet/insp-0/config", params={"type": "cds,rds"})).json()
    assert set(only["types"]) == {"cds", "rds"}
    bad = await api.get("/v1/fleet/insp-0/config", params={"type": "sds"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/query/type"
    gone = await api.get("/v1/fleet/nobody/config")
    assert gone.status_code == 404 and gone.json()["code"] == "node-not-found"
