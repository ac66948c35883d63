"""The admin API fuzzed from its own OpenAPI document (schemathesis, bounded): no 5xx, every
error is problem+json, and a rejected write writes nothing (etcd's revision does not move)."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.localcluster.cluster import http_ok
from api.localcluster.procs import Proc, free_port, wait_until

CASES_PER_OPERATION = 10


def _etcd_revision(etcd: httpx.Client) -> int:
    r = etcd.post("/v3/kv/range", json={"key": base64.b64encode(b"\0").decode(), "count_only": True})
    return int(r.json()["header"]["revision"])


def test_fuzz_the_admin_api(tmp_path: Path, etcd_config) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = Proc(
        [
            sys.executable,
            "-m",
            "api.cli",
            "api",
            "--port",
            str(port),
            "--etcd",
            ",".join(etcd_config.endpoints),
            "--prefix",
            etcd_config.prefix,
            "--log-level",
            "warning",
        ],
        tmp_path / "api.log",
        env=dict(os.environ),
    )
    api.start()
    # One client for the ~1,000 revision reads: a new one per read builds an SSL context
    # (loads the CA bundle) each time, most of this test's time.
    etcd = httpx.Client(base_url=f"http://{etcd_config.endpoints[0]}", timeout=5)
    try:
        wait_until(lambda: http_ok(f"{url}/readyz"), 30, what="admin API")
        schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json", timeout=5).json())
        seen: dict[str, int] = {}
        problems: list[tuple] = []
        for result in schema.get_all_operations():
            op = result.ok()
            if op.path == "/v1/events":
                continue  # a stream that never ends by itself: tests/api/test_events.py covers it

            @given(case=op.as_strategy())
            @settings(
                max_examples=CASES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
            )
            def run(case) -> None:
                before = _etcd_revision(etcd)
                r = case.call(base_url=url)
                after = _etcd_revision(etcd)
                key = f"{case.method} {op.path}"  # noqa: B023 (run is called in this iteration)
                seen[key] = seen.get(key, 0) + 1
                content_type = (r.headers.get("content-type") or [""])[0]
                if r.status_code >= 500:
                    problems.append(("5xx", key, r.status_code, r.text[:200]))
                elif r.status_code >= 400 and content_type != "application/problem+json":
                    problems.append(("not problem+json", key, r.status_code, content_type))
                elif r.status_code >= 400 and after != before:
                    problems.append(("rejected write changed etcd", key, r.status_code, before, after))

            run()
        assert len(seen) >= 25, sorted(seen)  # every operation was exercised
        assert sum(seen.values()) >= 200
        assert not problems, problems[:10]
        assert "Traceback" not in api.log_path.read_text()
    finally:
        etcd.close()
        api.stop()
