"""Propagation: admin API 2xx → every Envoy has the change, versus etcd's put → watch floor.

    .venv/bin/python -m bench.propagation [--changes 100] [--sotw]

Starts etcd, the admin API and two xDS replicas as processes (as `lbcp up` does), two real
Envoys (one per replica), then adds backends one at a time through the API and polls both
Envoys' /clusters until the new endpoint is there. The floor is a raw etcd put and the
watch event it produces, on the same machine. Writes bench/results/propagation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from api.localcluster.procs import EnvoyProcess, EtcdCluster, Proc, free_port, wait_until
from controlplane.etcd import Etcd, EtcdConfig, prefix_end


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def etcd_floor(endpoints: list[str], n: int) -> list[float]:
    etcd = Etcd(EtcdConfig(endpoints=tuple(endpoints)))
    key = b"/bench/floor/"
    call = await etcd.watch(key, prefix_end(key), 0)
    await call.read()  # created
    out = []
    for i in range(n):
        t0 = time.perf_counter()  # from issuing the put: the whole etcd round trip to the watcher
        await etcd.put(key + str(i).encode(), b"x")
        while True:
            resp = await call.read()
            if resp.events:
                break
        out.append(time.perf_counter() - t0)
    call.cancel()
    await etcd.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--sotw", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lbcp-bench-"))
    etcd = EtcdCluster(root / "etcd", 1)
    procs: list[Proc] = []
    envoys: list[EnvoyProcess] = []
    try:
        etcd.start()
        eps = ",".join(etcd.endpoints)
        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        procs.append(
            Proc(
                [
                    sys.executable,
                    "-m",
                    "api.cli",
                    "api",
                    "--port",
                    str(api_port),
                    "--etcd",
                    eps,
                    "--log-level",
                    "warning",
                ],
                root / "api.log",
            )
        )
        xds = [free_port(), free_port()]
        for i, p in enumerate(xds):
            procs.append(
                Proc(
                    [sys.executable, "-m", "api.cli", "xds", "--port", str(p), "--etcd", eps, "--replica-id", f"x{i}"],
                    root / f"xds{i}.log",
                )
            )
        for p in procs:
            p.start()
        wait_until(lambda: httpx.get(f"{api}/readyz").status_code == 200 if _up(api) else False, 30, what="api")
        c = httpx.Client(base_url=api, timeout=10)
        lport = free_port()
        c.post(
            "/v1/batch",
            json={
                "operations": [
                    {"op": "put", "kind": "cluster", "name": "bench", "body": {}},
                    {
                        "op": "put",
                        "kind": "backend",
                        "cluster": "bench",
                        "name": "seed",
                        "body": {"address": "127.0.0.1", "port": 1},
                    },
                    {"op": "put", "kind": "listener", "name": "http", "body": {"address": "127.0.0.1", "port": lport}},
                    {
                        "op": "put",
                        "kind": "route",
                        "name": "r",
                        "body": {"listener": "http", "backends": [{"cluster": "bench"}]},
                    },
                ]
            },
        ).raise_for_status()
        for i, p in enumerate(xds):
            e = EnvoyProcess(root / "envoy", f"bench-{i}", "default", [("127.0.0.1", p)], delta=not args.sotw)
            e.start()
            envoys.append(e)
        polls = [httpx.Client(base_url=e.admin, timeout=5) for e in envoys]
        wait_until(lambda: all("127.0.0.1:1::" in p.get("/clusters").text for p in polls), 30, what="envoys configured")

        samples = []
        deadline = time.monotonic() + 600
        for i in range(args.changes):
            port = 20000 + i
            c.put(f"/v1/clusters/bench/backends/n{i}", json={"address": "127.0.0.1", "port": port}).raise_for_status()
            t0 = time.perf_counter()
            needle = f"127.0.0.1:{port}::"
            pending = list(polls)
            while pending and time.monotonic() < deadline:
                pending = [p for p in pending if needle not in p.get("/clusters").text]
            samples.append(time.perf_counter() - t0)
        floor = asyncio.run(etcd_floor(etcd.endpoints, args.changes))
        result = {
            "changes": args.changes,
            "protocol": "sotw" if args.sotw else "delta",
            "envoys": len(envoys),
            "replicas": len(xds),
            "propagation_ms": {
                "p50": _pct(samples, 50) * 1e3,
                "p99": _pct(samples, 99) * 1e3,
                "max": max(samples) * 1e3,
                "mean": statistics.mean(samples) * 1e3,
            },
            "etcd_floor_ms": {"p50": _pct(floor, 50) * 1e3, "p99": _pct(floor, 99) * 1e3},
        }
        result["ratio_p50"] = result["propagation_ms"]["p50"] / max(result["etcd_floor_ms"]["p50"], 1e-6)
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / f"propagation-{result['protocol']}.json").write_text(json.dumps(result, indent=2) + "\n")
        pm, fm = result["propagation_ms"], result["etcd_floor_ms"]
        print(
            f"propagation ({result['protocol']}, {args.changes} changes, 2 Envoys on 2 replicas): "
            f"p50 {pm['p50']:.1f} ms, p99 {pm['p99']:.1f} ms, max {pm['max']:.1f} ms; "
            f"etcd put->watch floor p50 {fm['p50']:.2f} ms, p99 {fm['p99']:.2f} ms; ratio p50 "
            f"{result['ratio_p50']:.0f}x"
        )
        return 0
    finally:
        for e in envoys:
            e.stop()
        for p in procs:
            p.stop()
        etcd.stop()


def _up(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
        return True
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
