"""The OpenAPI document describes every operation and its request bodies."""

from __future__ import annotations

import httpx


async def test_openapi_document(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    paths = doc["paths"]
    for p in (
        "/v1/clusters",
        "/v1/clusters/{name}",
        "/v1/clusters/{cluster}/backends",
        "/v1/clusters/{cluster}/backends/{name}",
        "/v1/listeners/{name}",
        "/v1/routes/{name}",
        "/v1/batch",
        "/healthz",
        "/readyz",
    ):
        assert p in paths, p
    assert set(paths["/v1/clusters/{name}"]) == {"get", "put", "patch", "delete"}
    schemas = doc["components"]["schemas"]
    for name in ("Cluster", "Backend", "Listener", "Route", "Maglev", "RingHash", "HashPolicy"):
        assert name in schemas, name
    body = paths["/v1/clusters/{name}"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Cluster"}
    assert (await api.get("/docs")).status_code == 200
