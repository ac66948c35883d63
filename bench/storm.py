"""A reconnect storm at machine scale: `python -m bench.storm [--connections 10000]`.

Three real Envoys share one TCP listener (SO_REUSEPORT) of a fleet whose capacity admits
`--rate` new connections per second per Envoy (burst `--burst`). `--processes` client
processes hold `--connections` persistent TCP connections through them to a sink backend,
reconnecting with jittered exponential back-off (50 ms doubling to 1 s) whenever a
connection ends, as WebSocket clients do. Once all are held, Envoy 0 is killed with SIGKILL;
the survivors' admin stats are sampled every 0.1 s until every client is connected again.

Writes bench/results/storm.json (the timeline, peaks, re-homing time against the rate's
prediction) and bench/results/storm.png (connections per Envoy over time; admissions per
second of each survivor), with `pip install -e '.[bench]'` for the plot.
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

import httpx

from api.localcluster.procs import EnvoyProcess, free_port, wait_until
from bench.fleetsim.stack import Stack, listening
from bench.plotting import pyplot

RESULTS = Path(__file__).parent / "results"


# -- the client and backend processes ---------------------------------------------------------


async def _sink(port: int) -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def _clients(port: int, n: int, seconds: float) -> None:
    connected = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal connected
        backoff = 0.05
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
                writer.write(b"x")
                await writer.drain()
                # Envoy closes a connection over the rate at once: only one that lasts counts.
                if not await _lasts(reader, 0.3):
                    raise ConnectionError("closed at once")
                connected += 1
                backoff = 0.05
                await reader.read()  # held until the Envoy (or the backend) goes away
                connected -= 1
                writer.close()
            except (OSError, TimeoutError, ConnectionError):
                pass
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(1.0, backoff * 2)

    async def report() -> None:
        while time.monotonic() < deadline:
            print(connected, flush=True)
            await asyncio.sleep(0.1)

    await asyncio.gather(report(), *(one() for _ in range(n)))


async def _lasts(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    return bool(data)


# -- the run ---------------------------------------------------------------------------------


def _stat(e: EnvoyProcess, name: str) -> int:
    return e.stats(name).get(name, 0)


def run(connections: int, processes: int, rate: int, burst: int, limit: int) -> dict:
    stack = Stack(replicas=1).start()
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.storm", "--serve-sink", str(sink_port)])
    envoys: list[EnvoyProcess] = []
    clients: list[subprocess.Popen[bytes]] = []
    try:
        capacity = {"max_connections_per_envoy": limit, "max_new_connections_per_second": rate}
        capacity["new_connections_burst"] = burst
        ops = [
            {"op": "put", "kind": "cluster", "name": "sink", "body": {}},
            {"op": "put", "kind": "backend", "cluster": "sink", "name": "s0",
             "body": {"address": "127.0.0.1", "port": sink_port}},
            {"op": "put", "kind": "listener", "name": "edge",
             "body": {"address": "127.0.0.1", "port": port, "protocol": "tcp", "cluster": "sink"}},
            {"op": "put", "kind": "fleet", "name": "default", "body": {"capacity": capacity}},
        ]  # fmt: skip
        httpx.post(f"{stack.api_url}/v1/batch", json={"operations": ops}, timeout=10).raise_for_status()
        xds = [("127.0.0.1", int(t.rsplit(":", 1)[1])) for t in stack.targets]
        for i in range(3):
            e = EnvoyProcess(stack.root / f"envoy-{i}", f"storm-{i}", "default", xds, max_heap_bytes=2 * 1024**3)
            e.start()
            envoys.append(e)
        active, total = (
            f"listener.127.0.0.1_{port}.downstream_cx_active",
            f"listener.127.0.0.1_{port}.downstream_cx_total",
        )
        wait_until(lambda: all(_stat(e, f"listener.127.0.0.1_{port}.downstream_cx_active") >= 0 for e in envoys), 30)
        wait_until(lambda: listening(port), 30, what="the listener")
        per = connections // processes
        seconds = 600.0
        for _ in range(processes):
            clients.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.storm", "--serve-clients", str(port), str(per), str(seconds)],
                    stdout=subprocess.PIPE,
                )
            )
        counts = [0] * processes
        fds = [c.stdout.fileno() for c in clients if c.stdout is not None]
        for fd in fds:
            os.set_blocking(fd, False)

        def connected() -> int:
            # Each client process prints how many of its connections it holds, every 0.1 s.
            for i, fd in enumerate(fds):
                try:
                    lines = os.read(fd, 1 << 20).split()
                except BlockingIOError:
                    continue
                if lines:
                    counts[i] = int(lines[-1])
            return sum(counts)

        timeline: list[dict] = []
        started = time.monotonic()

        pool = ThreadPoolExecutor(len(envoys))

        def read(e: EnvoyProcess) -> tuple[float, int, int]:
            # One admin read per Envoy, in parallel, each stamped when it was answered: under
            # load a read takes a while, and the windows below use each Envoy's own stamps.
            if not e.proc.alive():
                return time.monotonic() - started, 0, 0
            stats = e.stats(f"^listener.127.0.0.1_{port}.downstream_cx_(active|total)$")
            return time.monotonic() - started, stats.get(active, 0), stats.get(total, 0)

        def sample() -> dict:
            reads = list(pool.map(read, envoys))
            row = {
                "t": round(max(r[0] for r in reads), 3),
                "ts": [round(r[0], 3) for r in reads],
                "held": connected(),
                "active": [r[1] for r in reads],
                "total": [r[2] for r in reads],
            }
            timeline.append(row)
            return row

        ramp_deadline = time.monotonic() + 120
        while sample()["held"] < per * processes and time.monotonic() < ramp_deadline:
            time.sleep(0.1)
        held_before = timeline[-1]["active"]
        killed_t = timeline[-1]["t"]
        os.kill(envoys[0].proc.pid, signal.SIGKILL)
        time.sleep(0.2)
        storm_deadline = time.monotonic() + 120
        while sample()["held"] < per * processes and time.monotonic() < storm_deadline:
            time.sleep(0.1)
        for _ in range(10):
            sample()
            time.sleep(0.1)
        rehomed = next(
            (r["t"] - killed_t for r in timeline if r["t"] > killed_t + 0.2 and r["held"] >= per * processes), None
        )
        storm = [r for r in timeline if r["t"] >= killed_t]
        peaks = []
        for i in (1, 2):
            peak = 0
            for j, a in enumerate(storm):
                for b in storm[j + 1 :]:
                    if b["ts"][i] - a["ts"][i] > 1.0:
                        break
                    peak = max(peak, b["total"][i] - a["total"][i])
            peaks.append(peak)
        orphans = held_before[0]
        predicted = max(0.0, (orphans - 2 * burst) / (2 * rate))
        return {
            "connections": per * processes,
            "processes": processes,
            "rate": rate,
            "burst": burst,
            "limit": limit,
            "held_before": held_before,
            "orphans": orphans,
            "rehomed_seconds": round(rehomed, 2) if rehomed is not None else None,
            "predicted_seconds": round(predicted, 2),
            "survivor_peak_per_second": peaks,
            "survivors_after": timeline[-1]["active"][1:],
            "killed_at": killed_t,
            "timeline": timeline,
        }
    finally:
        for c in clients:
            c.kill()
        for e in envoys:
            e.stop()
        sink.kill()
        stack.stop()


def _plot(result: dict) -> None:
    plt = pyplot()
    if plt is None:
        return
    tl = result["timeline"]
    t = [r["t"] for r in tl]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i in range(3):
        a.plot(t, [r["active"][i] for r in tl], label=f"storm-{i}" + (" (killed)" if i == 0 else ""))
    a.axvline(result["killed_at"], color="grey", linestyle=":")
    a.axhline(result["limit"], color="red", linestyle="--", linewidth=0.8, label="max_connections_per_envoy")
    a.set(xlabel="seconds", ylabel="connections held", title=f"{result['connections']} connections, 3 Envoys")
    a.legend(fontsize=8)
    for i in (1, 2):
        rates = []
        for j, row in enumerate(tl):  # admissions over the last second (sliding), per second
            k = next(k for k in range(j + 1) if tl[k]["ts"][i] >= row["ts"][i] - 1.0)
            span = row["ts"][i] - tl[k]["ts"][i]
            rates.append((row["total"][i] - tl[k]["total"][i]) / span if span > 0.5 else 0.0)
        b.plot(t, rates, label=f"storm-{i}")
    b.axhline(result["rate"], color="red", linestyle="--", linewidth=0.8, label="max_new_connections_per_second")
    b.axvline(result["killed_at"], color="grey", linestyle=":")
    b.set(xlabel="seconds", ylabel="new connections / s (over the last second)", title="admissions of each Envoy")
    b.axhline(result["rate"] + result["burst"], color="orange", linestyle=":", linewidth=0.8, label="rate + burst")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "storm.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--burst", type=int, default=500)
    p.add_argument("--limit", type=int, default=6000)
    p.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    p.add_argument("--serve-clients", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_sink:
        asyncio.run(_sink(args.serve_sink))
        return
    if args.serve_clients:
        port, n, seconds = args.serve_clients
        asyncio.run(_clients(int(port), int(n), float(seconds)))
        return
    result = run(args.connections, args.processes, args.rate, args.burst, args.limit)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "storm.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result)
    print(
        f"storm: {result['connections']} connections over 3 Envoys {result['held_before']}; killing storm-0 "
        f"orphaned {result['orphans']}, all re-homed in {result['rehomed_seconds']}s (rate predicts "
        f"{result['predicted_seconds']}s); survivors admitted at most {result['survivor_peak_per_second']}/s "
        f"(rate {result['rate']} + burst {result['burst']}); now {result['survivors_after']}"
    )


if __name__ == "__main__":
    main()
