"""The fleet model against a real fleet: `python -m bench.rebalance [--per-envoy 2000 --rate 500]`.

A real run of the model's `grow` scenario at machine scale: three Envoys, each at its own
127.0.1.N, hold `--per-envoy` persistent TCP connections from clients that resolve
`www.model.test` through `lbcp dns` (its own process) on every (re)connect and back off as
the model's clients do (0.5–1.5 × 1 s, doubling); a fourth Envoy joins and the fleet is
rebalanced at `--rate` connections/s. The same scenario then runs in bench/fleetmodel.py
(lbcp's own front tier and mover code, the real run's drain time and sample interval, no
churn), and both are written side by side to bench/results/rebalance.json (plot .png).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import httpx

from api.localcluster.procs import EnvoyProcess, free_port, wait_until
from bench.fleetmodel import DT, Envoy, Model
from bench.fleetsim.stack import Stack, listening
from bench.plotting import pyplot
from controlplane.intent.model import Capacity
from controlplane.xds.resources import SHARDS

RESULTS = Path(__file__).parent / "results"
ADDRESSES = ["127.0.1.101", "127.0.1.102", "127.0.1.103", "127.0.1.104"]
NAME = "www.model.test"
LOAD_INTERVAL = 1.0
DRAIN_TIME = 1.0  # EnvoyProcess runs --drain-time-s 1


async def _clients(dns_port: int, port: int, first: str, n: int, seconds: float) -> None:
    """`n` clients that stay connected: first to `first`, then wherever lbcp dns says."""
    held = 0
    deadline = time.monotonic() + seconds

    async def resolve() -> str | None:
        try:
            q = dns.message.make_query(NAME, "A")
            r = await dns.asyncquery.udp(q, "127.0.0.1", port=dns_port, timeout=2)
        except (OSError, dns.exception.DNSException):
            return None
        return r.answer[0][0].address if r.answer else None

    async def one(i: int) -> None:
        nonlocal held
        address: str | None = first
        level = 0
        await asyncio.sleep(i / 1000)  # a ramp of 1,000/s per process
        while time.monotonic() < deadline:
            if address is not None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 3)
                    held += 1
                    level = 0
                    await reader.read()  # held until Envoy closes it
                    held -= 1
                    writer.close()
                except (OSError, TimeoutError):
                    pass
            base = min(30.0, 2.0**level)
            await asyncio.sleep(base * random.uniform(0.5, 1.5))
            level += 1
            address = await resolve()

    async def report() -> None:
        while time.monotonic() < deadline:
            print(held, flush=True)
            await asyncio.sleep(0.1)

    await asyncio.gather(report(), *(one(i) for i in range(n)))


def real(per_envoy: int, rate: int) -> dict[str, Any]:
    stack = Stack(replicas=1, replica_args=("--front-cidr", "*=127.0.0.0/8", "--load-interval", str(LOAD_INTERVAL)))
    stack.start()
    sink_port, port, dns_port = free_port(), free_port(), free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.storm", "--serve-sink", str(sink_port)])
    front = stack.front_door(dns_port, "model.test")
    envoys: list[EnvoyProcess] = []
    clients: list[subprocess.Popen[bytes]] = []
    pool = ThreadPoolExecutor(4)
    try:
        ops = [
            {"op": "put", "kind": "cluster", "name": "sink", "body": {}},
            {"op": "put", "kind": "backend", "cluster": "sink", "name": "s0",
             "body": {"address": "127.0.0.1", "port": sink_port}},
            {"op": "put", "kind": "listener", "name": "edge",
             "body": {"address": "127.0.0.1", "port": port, "protocol": "tcp", "cluster": "sink",
                      "bind_public_address": True}},
            {"op": "put", "kind": "fleet", "name": "default",
             "body": {"capacity": {"max_connections_per_envoy": 4 * per_envoy}}},
        ]  # fmt: skip
        httpx.post(f"{stack.api_url}/v1/batch", json={"operations": ops}, timeout=10).raise_for_status()
        xds = [("127.0.0.1", int(t.rsplit(":", 1)[1])) for t in stack.targets]

        def envoy(i: int) -> None:
            e = EnvoyProcess(stack.root / "envoy", f"rb-{i}", "default", xds, public_address=ADDRESSES[i])
            e.start()
            envoys.append(e)
            wait_until(lambda: listening(port, ADDRESSES[i]), 30, what=f"rb-{i}")

        for i in range(3):
            envoy(i)
        for a in ADDRESSES[:3]:
            argv = ["--serve-clients", str(dns_port), str(port), a, str(per_envoy), "900"]
            clients.append(subprocess.Popen([sys.executable, "-m", "bench.rebalance", *argv], stdout=subprocess.PIPE))
        active = f"listener.127.0.0.1_{port}.downstream_cx_active"
        total = f"listener.127.0.0.1_{port}.downstream_cx_total"

        def read(e: EnvoyProcess) -> tuple[int, int]:
            s = e.stats(f"^listener.127.0.0.1_{port}.downstream_cx_(active|total)$")
            return s.get(active, 0), s.get(total, 0)

        timeline: list[dict[str, Any]] = []
        started = time.monotonic()

        def sample() -> dict[str, Any]:
            reads = list(pool.map(read, envoys))
            row = {"t": round(time.monotonic() - started, 2), "connections": [r[0] for r in reads],
                   "total": [r[1] for r in reads]}  # fmt: skip
            timeline.append(row)
            return row

        wait_until(lambda: sum(sample()["connections"]) >= 3 * per_envoy, 120, what="the clients connected")
        envoy(3)
        time.sleep(2 * LOAD_INTERVAL)  # its first samples are in
        joined = sample()["t"]
        r = httpx.post(f"{stack.api_url}/v1/fleets/default/rebalance", json={"rate": rate}, timeout=10)
        r.raise_for_status()
        asked = r.json()["requested"]["at"]  # the request's own stamp, which the mover's status names
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sample()
            st = httpx.get(f"{stack.api_url}/v1/fleets/default/rebalance", timeout=5).json().get("status") or {}
            if st.get("state") == "balanced" and st.get("request") == round(asked, 3):
                break
            time.sleep(0.1)
        for _ in range(30):
            sample()
            time.sleep(0.1)
        return _result(timeline, joined, 3 * per_envoy)
    finally:
        for c in clients:
            c.kill()
        for e in envoys:
            e.stop()
        front.kill()
        sink.kill()
        stack.stop()


def _result(timeline: list[dict[str, Any]], since: float, held: int) -> dict[str, Any]:
    rows = [r for r in timeline if r["t"] >= since]
    n = len(rows[0]["connections"])

    def spread(r: dict[str, Any]) -> float:
        c = r["connections"][:n]
        mean = sum(c) / len(c)
        return max(abs(x - mean) for x in c) / mean if mean else 0.0

    within = next((r["t"] - since for r in rows if spread(r) <= 0.1), None)
    peak = 0.0
    for i in range(n):
        for j, a in enumerate(rows):
            for b in rows[j + 1 :]:
                if b["t"] - a["t"] >= 1.0:
                    peak = max(peak, (b["total"][i] - a["total"][i]) / (b["t"] - a["t"]))
                    break
    forced = sum(rows[0]["connections"][i] - min(r["connections"][i] for r in rows) for i in range(n - 1))
    return {
        "seconds_until_within_tolerance": round(within, 1) if within is not None else None,
        "peak_new_connections_per_second": round(peak),
        "moved_off_the_old_envoys": forced,
        "final": rows[-1]["connections"],
        "held": held,
        "timeline": [{"t": round(r["t"] - since, 2), "connections": r["connections"]} for r in rows],
    }


def model(per_envoy: int, rate: int) -> dict[str, Any]:
    envoys = [Envoy(f"rb-{i}") for i in range(4)]
    for e in envoys[:3]:
        e.shards = [per_envoy / SHARDS] * SHARDS
    envoys[3].alive = False
    m = Model(envoys, Capacity(max_connections_per_envoy=4 * per_envoy), drain_time=DRAIN_TIME,
              sample_interval=LOAD_INTERVAL, session_seconds=1e12, sessions=0)  # fmt: skip

    def grow(model: Model) -> None:
        model.envoys[3].alive = True
        model.rebalance = (float(rate), 10.0)

    m.run(2.0 + 120, {2.0: grow})
    rows = [{"t": r["t"], "connections": r["connections"], "total": [0] * 4} for r in m.timeline]
    out = _result(rows, 2.0, 3 * per_envoy)
    # New connections per second on one Envoy: the model counts them itself.
    out["peak_new_connections_per_second"] = max(
        round(sum(r["new_per_second"][3] * DT for r in m.timeline[k : k + 10])) for k in range(len(m.timeline) - 10)
    )
    return out


def _plot(result: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("real", "-"), ("model", "--")):
        tl = result[key]["timeline"]
        for i in range(4):
            ax.plot([r["t"] for r in tl], [r["connections"][i] for r in tl], style, label=f"{key} rb-{i}")
    ax.set_xlim(-1, 30)
    ax.set(xlabel="seconds after the rebalance was asked", ylabel="connections",
           title=f"3 -> 4 Envoys, rebalance at {result['rate']}/s: real (solid) and model (dashed)")  # fmt: skip
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "rebalance.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--per-envoy", type=int, default=2000)
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--serve-clients", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_clients:
        dns_port, port, first, n, seconds = args.serve_clients
        asyncio.run(_clients(int(dns_port), int(port), first, int(n), float(seconds)))
        return
    result = {"per_envoy": args.per_envoy, "rate": args.rate, "model": model(args.per_envoy, args.rate)}
    result["real"] = real(args.per_envoy, args.rate)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rebalance.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result)
    for key in ("real", "model"):
        shown = {k: v for k, v in result[key].items() if k != "timeline"}
        print(key, json.dumps(shown))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # A SIGTERM (e.g. from `timeout`) unwinds through the `finally`s that stop the stack.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
