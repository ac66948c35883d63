"""`/metrics` on an xDS replica and on the admin API: the documented names, with sane values
after real intent reached a real Envoy and traffic went through it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.localcluster.procs import free_port
from controlplane.xds.client import AdsClient
from controlplane.xds.resources import CLUSTER_TYPE
from tests.conftest import http_ok, wait_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _documented(section: str) -> set[str]:
    text = DOC.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(lbcp_[a-z0-9_]+)` \|", text, re.M))


def _parse(text: str) -> tuple[set[str], dict[tuple[str, frozenset], float]]:
    names, samples = set(), {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("lbcp_"):
            continue
        names.add(fam.name + "_total" if fam.type == "counter" else fam.name)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return names, samples


def _value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def test_replica_and_api_metrics(api: httpx.AsyncClient, replica, backends, envoys) -> None:
    from tests.certs import CA

    port = free_port()
    leaf = CA().issue("www.example.com", ["www.example.com"], days=10)
    r = await api.post(
        "/v1/batch",
        json={
            "operations": [
                {
                    "op": "put",
                    "kind": "certificate",
                    "name": "site",
                    "body": {"certificate_chain": leaf.cert_pem.decode(), "private_key": leaf.key_pem.decode()},
                },
                {"op": "put", "kind": "cluster", "name": "web", "body": {"load_balancer": {"type": "maglev"}}},
                {
                    "op": "replace_backends",
                    "cluster": "web",
                    "body": [{"name": b.name, "address": "127.0.0.1", "port": b.port} for b in backends[:2]],
                },
                {"op": "put", "kind": "listener", "name": "http", "body": {"address": "127.0.0.1", "port": port}},
                {
                    "op": "put",
                    "kind": "route",
                    "name": "main",
                    "body": {"listener": "http", "backends": [{"cluster": "web"}]},
                },
            ]
        },
    )
    assert r.status_code == 200, r.text
    revision = r.json()["revision"]
    await asyncio.to_thread(envoys, "metrics-envoy", [("127.0.0.1", replica.port)])
    await wait_for(http_ok(f"http://127.0.0.1:{port}/"), what="Envoy serving")
    async with httpx.AsyncClient(timeout=5) as c:
        for i in range(20):
            assert (await c.get(f"http://127.0.0.1:{port}/", headers={"x-user-id": str(i)})).status_code == 200
    # A change while the Envoy is connected: a push that waited on a publish (queue time).
    r = await api.put(
        f"/v1/clusters/web/backends/{backends[2].name}", json={"address": "127.0.0.1", "port": backends[2].port}
    )
    assert r.status_code == 201
    revision = r.json()["revision"]
    # A raw client rejects the clusters once: a NACK to count.
    raw = AdsClient(f"127.0.0.1:{replica.port}", "nacker", "other")
    await raw.open()
    await raw.request(CLUSTER_TYPE)
    resp = await raw.recv()
    await raw.request(CLUSTER_TYPE, version="", nonce=resp.nonce, error="no thanks")

    scrape_url = f"http://127.0.0.1:{replica.metrics_port}/metrics"

    async def scrape() -> tuple[set[str], dict]:
        async with httpx.AsyncClient(timeout=5) as c:
            return _parse((await c.get(scrape_url)).text)

    async def settled() -> bool:
        _, s = await scrape()
        return (
            _value(s, "lbcp_xds_nacks_total", type="cds") == 1
            and _value(s, "lbcp_xds_convergence_seconds_count") >= 2
            and _value(s, "lbcp_xds_push_queue_seconds_count", type="eds") >= 1
        )

    await wait_for(settled, what="NACK and convergence recorded")
    names, s = await scrape()
    assert names == _documented("xDS replica"), names ^ _documented("xDS replica")
    assert 9 * 86400 < _value(s, "lbcp_certificate_expiry_seconds", certificate="site") <= 10 * 86400
    assert _value(s, "lbcp_xds_connected_streams", fleet="default", protocol="delta") == 1
    assert _value(s, "lbcp_xds_connected_streams", fleet="other", protocol="sotw") == 1
    for t in ("cds", "eds", "lds", "rds"):
        assert _value(s, "lbcp_xds_pushes_total", type=t) >= 1, t
        assert _value(s, "lbcp_xds_ack_seconds_count", type=t) >= 1, t
    assert _value(s, "lbcp_xds_push_bytes_total", type="eds") > 0
    assert _value(s, "lbcp_xds_pushed_resources_total", type="cds") >= 2  # Envoy's and the raw client's
    # Convergence: change seen → Envoy ACKed everything: positive and well under a minute.
    count, total = _value(s, "lbcp_xds_convergence_seconds_count"), _value(s, "lbcp_xds_convergence_seconds_sum")
    assert 0 < total / count < 60
    assert _value(s, "lbcp_snapshot_revision") == revision
    queued = _value(s, "lbcp_xds_push_queue_seconds_sum", type="eds") / _value(
        s, "lbcp_xds_push_queue_seconds_count", type="eds"
    )
    assert 0 <= queued < 10
    assert (
        _value(s, "lbcp_snapshot_resources", type="cds") == 1 and _value(s, "lbcp_snapshot_resources", type="eds") == 1
    )
    assert _value(s, "lbcp_snapshot_bytes", type="lds") > 0
    assert _value(s, "lbcp_snapshot_builds_total") >= 1 and _value(s, "lbcp_snapshot_build_seconds_count") >= 1
    assert _value(s, "lbcp_etcd_request_seconds_count", op="range") >= 1
    await raw.close()

    api_names, a = _parse((await api.get("/metrics")).text)
    assert api_names == _documented("Admin API"), api_names ^ _documented("Admin API")
    assert _value(a, "lbcp_api_requests_total", method="POST", route="/v1/batch", status="200") == 1
    assert _value(a, "lbcp_etcd_request_seconds_count", op="txn") >= 1
    # A ring lookup builds a ring once (cached for the revision).
    for _ in range(2):
        assert (await api.get("/v1/clusters/web/ring/lookup", params={"key": "alice"})).status_code == 200
    _, a = _parse((await api.get("/metrics")).text)
    assert _value(a, "lbcp_ring_build_seconds_count", algorithm="maglev") == 1
    assert _value(a, "lbcp_api_requests_total", route="/v1/clusters/{cluster}/ring/lookup", status="200") == 2
