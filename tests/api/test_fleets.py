"""Fleets as intent: `capacity` with the same contract as every kind (CRUD, batch, dry-run,
ETags, problem+json with pointers)."""

from __future__ import annotations


async def test_fleet_crud_and_validation(api) -> None:
    body = {"capacity": {"max_connections_per_envoy": 1000, "max_new_connections_per_second": 200}}
    r = await api.put("/v1/fleets/edge", json=body)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["capacity"] == {
        "max_connections_per_envoy": 1000,
        "high_water_percent": 90,
        "low_water_percent": 75,
        "max_new_connections_per_second": 200,
        "new_connections_burst": None,
    }
    etag = r.headers["etag"]
    assert (await api.get("/v1/fleets/edge")).json()["capacity"]["max_connections_per_envoy"] == 1000
    stale = await api.patch(
        "/v1/fleets/edge",
        json={"capacity": {"max_connections_per_envoy": 5}},
        headers={"if-match": '"1"', "content-type": "application/merge-patch+json"},
    )
    assert stale.status_code == 412
    ok = await api.patch(
        "/v1/fleets/edge",
        json={"capacity": {"max_connections_per_envoy": 2000}},
        headers={"if-match": etag, "content-type": "application/merge-patch+json"},
    )
    assert ok.status_code == 200 and ok.json()["capacity"]["max_connections_per_envoy"] == 2000
    for bad, pointer in (
        ({"capacity": {"max_connections_per_envoy": 0}}, "/capacity/max_connections_per_envoy"),
        (
            {"capacity": {"max_connections_per_envoy": 10, "high_water_percent": 50, "low_water_percent": 60}},
            "/capacity",
        ),
        ({"capacity": {"max_connections_per_envoy": 10, "surprise": 1}}, "/capacity/surprise"),
    ):
        r = await api.put("/v1/fleets/edge", json=bad)
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == "application/problem+json"
        assert any(e["pointer"] == pointer for e in r.json()["errors"]), r.json()
    dry = await api.put("/v1/fleets/other", json={}, params={"dry_run": "true"})
    assert (
        dry.status_code == 200
        and dry.headers["lbcp-dry-run"] == "true"
        and (await api.get("/v1/fleets/other")).status_code == 404
    )
    batch = await api.post(
        "/v1/batch", json={"operations": [{"op": "put", "kind": "fleet", "name": "b", "body": {"capacity": None}}]}
    )
    assert batch.status_code == 200, batch.text
    names = [f["name"] for f in (await api.get("/v1/fleets")).json()["items"]]
    assert names == ["b", "edge"]
    assert (await api.delete("/v1/fleets/b")).status_code == 200
