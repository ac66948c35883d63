"""The OpenAPI document describes every operation, every status it answers (errors as
problem+json), its parameters' rules, and holds up against schemathesis run on a real API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from pydantic import BaseModel

from api.localcluster.cluster import http_ok
from api.localcluster.procs import Proc, free_port, wait_until
from api.openapi import OPERATIONS, RULES
from controlplane.etcd import EtcdConfig
from controlplane.intent.model import MODELS


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
    for name in ("Cluster", "Backend", "Listener", "Route", "Maglev", "RingHash", "HashPolicy", "Problem"):
        assert name in schemas, name
    assert "HTTPValidationError" not in schemas  # FastAPI's 422 shape: the API never answers it
    body = paths["/v1/clusters/{name}"]["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Cluster"}
    assert (await api.get("/docs")).status_code == 200


async def test_every_status_is_declared_with_the_problem_schema(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    assert {"instance", "errors"} <= set(problem["properties"])
    put = doc["paths"]["/v1/clusters/{cluster}/backends/{name}"]["put"]["responses"]
    assert {"200", "201", "400", "401", "403", "404", "408", "409", "412", "413", "415", "422", "503"} <= set(put)
    for status, resp in put.items():
        if status.startswith(("4", "5")):
            assert resp["content"] == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert "Retry-After" in put["503"]["headers"]
    assert "ETag" in put["412"]["headers"]
    listing = doc["paths"]["/v1/clusters"]["get"]["responses"]
    assert {"400", "410"} <= set(listing) and "404" not in listing
    # Every operation, whatever it is, says it may be refused for auth or load.
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert {"401", "403", "503", "431"} <= set(op["responses"]), (method, path)
            assert "422" not in op["responses"] or "problem" in str(op["responses"]["422"]["content"])


async def test_every_operation_is_described(api: httpx.AsyncClient) -> None:
    """`api/openapi.OPERATIONS` names what each /v1 operation answers: a route added without
    an entry there fails here (and would fail to build the document)."""
    doc = (await api.get("/openapi.json")).json()
    served = {(m, p) for p, ops in doc["paths"].items() for m in ops if p.startswith("/v1/")}
    assert served == set(OPERATIONS), served ^ set(OPERATIONS)


async def test_parameters_carry_their_rules(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()

    def param(path: str, method: str, name: str) -> dict:
        return next(p["schema"] for p in doc["paths"][path][method]["parameters"] if p["name"] == name)

    cluster = param("/v1/clusters/{name}", "get", "name")
    assert cluster["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" and cluster["maxLength"] == 63
    assert param("/v1/clusters/{cluster}/backends/{name}", "get", "cluster") == cluster
    backend = param("/v1/clusters/{cluster}/backends/{name}", "get", "name")
    assert backend["maxLength"] == 128 and backend["pattern"].startswith("^[A-Za-z0-9]")
    assert param("/v1/fleets/{fleet}/rebalance", "post", "fleet")["maxLength"] == 128
    limit = param("/v1/clusters", "get", "limit")
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    assert param("/v1/clusters/{name}", "put", "wait")["enum"] == ["acked"]
    assert "pattern" in param("/v1/clusters/{name}", "put", "timeout")
    assert param("/v1/frontdoor/{fmt}", "get", "fmt")["enum"] == ["json", "dns", "iptables", "nftables", "bird"]
    assert param("/v1/rollouts/{revision}", "get", "revision")["minimum"] == 0
    ttl = param("/v1/frontdoor/{fmt}", "get", "ttl")
    assert (ttl["minimum"], ttl["maximum"]) == (1, 86400)
    # What the schema says is what the API enforces: a name off the pattern is a 4xx.
    for bad in ("Web", "-web", "a" * 64):
        assert (await api.get(f"/v1/clusters/{bad}")).status_code == 422
    assert (await api.get("/v1/clusters/web/ring")).status_code == 404
    assert (await api.get("/v1/clusters/We_b/ring")).status_code == 422
    assert (await api.get("/v1/fleets/bad%20name/rebalance")).status_code == 422
    assert (await api.get("/v1/rollouts/-1")).status_code == 422


def _models_with_rules() -> set[str]:
    """Every model (nested ones too) with a validator across fields or beyond its schema."""
    seen: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = list(MODELS.values())
    while todo:
        m = todo.pop()
        if m.__name__ in seen:
            continue
        seen[m.__name__] = m
        for f in m.model_fields.values():
            for t in re.findall(r"[A-Za-z_]+", repr(f.annotation)):
                sub = getattr(sys.modules[m.__module__], t, None)
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    todo.append(sub)
    decorated = set()
    for name, m in seen.items():
        d = m.__pydantic_decorators__
        if d.model_validators or d.field_validators:
            decorated.add(name)
    return decorated


async def test_rules_across_fields_are_described(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    missing = _models_with_rules() - set(RULES)
    assert not missing, f"models with validators and no rule text in api/openapi.RULES: {sorted(missing)}"
    for name in RULES:
        assert "Rules beyond the schema" in schemas[name]["description"], name


async def test_405_says_which_methods_are_allowed(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/clusters/web")
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["allow"] == "DELETE, GET, PATCH, PUT"
    assert r.json()["code"] == "method-not-allowed"
    r = await api.delete("/v1/clusters")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = await api.patch("/v1/clusters/web/backends")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST, PUT"
    r = await api.put("/v1/fleet/envoy-1/drain")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, POST"
    r = await api.post("/metrics")  # a route outside the document
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = await api.put("/v1/certificates/site/x")
    assert r.status_code == 404


CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_nothing_undeclared(tmp_path: Path, etcd_config: EtcdConfig) -> None:
    """schemathesis (its examples, coverage and fuzzing phases, at most 5 examples per
    operation: ~5,000 requests, 30 s on a quiet machine) against `lbcp api` on a real etcd: no
    5xx, and every status, content type, body and 405 `Allow` is one the document declares.
    Against the document FastAPI built alone, this run stops at 75 violations (49 undocumented
    statuses, 26 undocumented content types)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "api.cli", "api", "--port", str(port), "--etcd", ",".join(etcd_config.endpoints)]
    api = Proc(
        [*argv, "--prefix", etcd_config.prefix, "--log-level", "warning"], tmp_path / "api.log", env=dict(os.environ)
    )
    api.start()
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), 30, what="admin API")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{url}/openapi.json",
                "--checks",
                CHECKS + ",allow_header_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "5",
                "--workers",
                "1",
                "--request-timeout",
                "10",
                "--exclude-path",
                "/v1/events",  # a stream that never ends by itself: tests/api/test_events.py
                "--no-shrink",
                "--output-truncate",
                "false",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        api.stop()
    out = run.stdout + run.stderr
    counts = re.search(r"(\d+) generated, (\d+) (?:passed|found)", out)
    assert counts, out[-3000:]
    assert run.returncode == 0, out[-6000:]
    assert int(counts.group(1)) >= 1000, out[-2000:]  # every operation was exercised, many times
    assert "Traceback" not in api.log_path.read_text()
