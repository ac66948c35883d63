"""When etcd is down the API answers 503 store-unavailable; it recovers with no restart."""

from __future__ import annotations

import asyncio

import httpx

from api.localcluster.procs import EtcdCluster
from controlplane.etcd import EtcdConfig
from tests.conftest import make_app


async def test_503_while_etcd_is_down_then_recovers(private_etcd: EtcdCluster) -> None:
    cfg = EtcdConfig(endpoints=tuple(private_etcd.endpoints), timeout=2.0, connect_timeout=0.5)
    app = make_app(cfg)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
            assert (await api.put("/v1/clusters/web", json={})).status_code == 201
            assert (await api.get("/readyz")).status_code == 200

            await asyncio.to_thread(private_etcd.stop)
            r = await api.put("/v1/clusters/down", json={})
            assert r.status_code == 503 and r.json()["code"] == "store-unavailable"
            assert r.headers["content-type"] == "application/problem+json" and r.headers["retry-after"]
            assert (await api.get("/v1/clusters/web")).status_code == 503
            assert (await api.get("/readyz")).status_code == 503
            assert (await api.get("/healthz")).status_code == 200

            await asyncio.to_thread(private_etcd.start)
            for _ in range(50):  # the channel reconnects with a short back-off
                r = await api.put("/v1/clusters/down", json={})
                if r.status_code != 503:
                    break
                await asyncio.sleep(0.2)
            assert r.status_code == 201, r.text
            assert (await api.get("/v1/clusters/web")).status_code == 200
