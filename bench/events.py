"""The console's liveness: admin API write → `intent` event, and → `rollout` complete event,
on `/v1/events`, with one viewer and with many.

    .venv/bin/python -m bench.events [--writes 50] [--viewers 1,50] [--envoys 2]

Starts a local cluster (`lbcp up --detach --envoys N`: etcd, the API, two xDS replicas, real
Envoys), opens V event streams, then makes `--writes` backend writes 0.2 s apart (each a new
weight, so each is a change every Envoy must ack) and times, per write, from sending it to the
`intent` event and to the `rollout` event that says every Envoy acked it, on every stream.
Also reports the API's CPU seconds over the run. Writes bench/results/events.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _viewer(api: str, seen: dict[int, dict[str, float]], ready: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=None) as c, c.stream("GET", f"{api}/v1/events") as r:
        name = ""
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                d = json.loads(line[5:])
                now = time.perf_counter()
                if name == "snapshot":
                    ready.set()
                elif name == "intent":
                    seen.setdefault(d["revision"], {}).setdefault("intent", now)
                elif name == "rollout" and d["complete"]:
                    seen.setdefault(d["revision"], {}).setdefault("acked", now)


async def run(api: str, api_pid: int, backend: str, writes: int, viewers: int) -> dict[str, Any]:
    host, port = backend.rsplit(":", 1)
    streams: list[dict[int, dict[str, float]]] = [{} for _ in range(viewers)]
    readies = [asyncio.Event() for _ in range(viewers)]
    tasks = [asyncio.create_task(_viewer(api, s, e)) for s, e in zip(streams, readies, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 30)
    cpu0 = _cpu_seconds(api_pid)
    sent: dict[int, float] = {}
    async with httpx.AsyncClient(base_url=api, timeout=30) as c:
        for i in range(writes):
            body = {"name": "bench-events", "address": host, "port": int(port), "weight": i + 1}
            t0 = time.perf_counter()
            r = await c.put("/v1/clusters/web/backends/bench-events", json=body)
            r.raise_for_status()
            sent[r.json()["revision"]] = t0
            await asyncio.sleep(0.2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(all("acked" in s.get(rev, {}) for rev in sent) for s in streams):
            await asyncio.sleep(0.1)
        await c.delete("/v1/clusters/web/backends/bench-events")
    cpu = _cpu_seconds(api_pid) - cpu0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    def latencies(kind: str) -> list[float]:
        return [(s[rev][kind] - t0) * 1000 for s in streams for rev, t0 in sent.items() if kind in s.get(rev, {})]

    to_intent, to_acked = latencies("intent"), latencies("acked")
    return {
        "viewers": viewers,
        "writes": writes,
        "intent_events": len(to_intent),
        "rollout_events": len(to_acked),
        "expected_per_kind": writes * viewers,
        "write_to_intent_ms": {"p50": statistics.median(to_intent), "p99": _pct(to_intent, 99), "max": max(to_intent)},
        "write_to_acked_ms": {"p50": statistics.median(to_acked), "p99": _pct(to_acked, 99), "max": max(to_acked)},
        "api_cpu_seconds": round(cpu, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=50)
    ap.add_argument("--viewers", default="1,50", help="comma-separated viewer counts, one run each")
    ap.add_argument("--envoys", type=int, default=2)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="lbcp-bench-events-"))
    lbcp = [sys.executable, "-m", "api.cli", "--state-dir", str(state)]
    subprocess.run([*lbcp, "up", "--detach", "--envoys", str(args.envoys), "--backends", "1"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        doc = json.loads((state / "cluster.json").read_text())
        results = [
            asyncio.run(run(doc["admin_api"], doc["pids"]["admin_api"], doc["backends"][0]["address"], args.writes, v))
            for v in (int(x) for x in args.viewers.split(","))
        ]
    finally:
        subprocess.run([*lbcp, "down"], stdout=subprocess.DEVNULL)
    out = {"envoys": args.envoys, "runs": results}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/events.json").write_text(json.dumps(out, indent=2) + "\n")
    for r in results:
        print(
            f"{r['viewers']:>3} viewers: write -> intent event p50 {r['write_to_intent_ms']['p50']:.0f} ms, "
            f"p99 {r['write_to_intent_ms']['p99']:.0f} ms; -> every Envoy acked p50 "
            f"{r['write_to_acked_ms']['p50']:.0f} ms, p99 {r['write_to_acked_ms']['p99']:.0f} ms "
            f"({r['intent_events']}/{r['expected_per_kind']} intent, {r['rollout_events']} rollout events); "
            f"API CPU {r['api_cpu_seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
