"""PATCH under concurrency: a merge patch that states no precondition is re-applied on a
lost compare (it never fails with a 412 it did not ask for); one with If-Match (or a body
`revision`) stays conditional."""

from __future__ import annotations

import asyncio

import httpx

N = 30


async def _backend(api: httpx.AsyncClient) -> str:
    assert (await api.put("/v1/clusters/web", json={})).status_code == 201
    r = await api.put("/v1/clusters/web/backends/b1", json={"address": "10.0.0.1", "port": 80})
    assert r.status_code == 201
    return str(r.headers["etag"])


async def test_concurrent_unconditional_patches_all_apply(api: httpx.AsyncClient) -> None:
    await _backend(api)
    answers = await asyncio.gather(
        *(
            api.patch(
                "/v1/clusters/web/backends/b1",
                json={"metadata": {f"k{i}": f"v{i}"}},
                headers={"content-type": "application/merge-patch+json"},
            )
            for i in range(N)
        )
    )
    statuses = [r.status_code for r in answers]
    assert statuses == [200] * N, [(r.status_code, r.text[:160]) for r in answers if r.status_code != 200]
    stored = (await api.get("/v1/clusters/web/backends/b1")).json()
    assert stored["metadata"] == {f"k{i}": f"v{i}" for i in range(N)}
    # Every patch committed its own revision on top of the one before.
    assert len({r.json()["revision"] for r in answers}) == N


async def test_concurrent_conditional_patches_stay_conditional(api: httpx.AsyncClient) -> None:
    etag = await _backend(api)
    answers = await asyncio.gather(
        *(
            api.patch("/v1/clusters/web/backends/b1", json={"metadata": {f"k{i}": "x"}}, headers={"if-match": etag})
            for i in range(N)
        )
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] + [412] * (N - 1)
    for r in answers:
        if r.status_code == 412:
            assert r.json()["code"] == "precondition-failed"
            assert r.headers["content-type"] == "application/problem+json"
    assert len((await api.get("/v1/clusters/web/backends/b1")).json()["metadata"]) == 1
    # A `revision` in the body is a precondition too.
    rev = int(etag.strip('"'))
    r = await api.patch("/v1/clusters/web/backends/b1", json={"revision": rev, "weight": 5})
    assert r.status_code == 412


async def test_unconditional_patch_of_a_missing_object_is_404(api: httpx.AsyncClient) -> None:
    await _backend(api)
    r = await api.patch("/v1/clusters/web/backends/nope", json={"weight": 2})
    assert r.status_code == 404
    assert r.json()["code"] == "backend-not-found"
