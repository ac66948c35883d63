"""Filling the emptiest Envoy at machine scale: `python -m bench.fill [--old 4000 --new 6000]`.

Three real Envoys of one fleet, each bound at its own loopback address (127.0.1.N,
`bind_public_address`) to one TCP listener, with `lbcp dns` (its own process) answering for
the front door's name. Two Envoys first hold `--old` persistent connections each (clients
connect to their addresses directly); then the third joins, and `--new` clients arrive at
`--rate` per second over `--processes` client processes, each resolving the name through
`lbcp dns` and connecting to the first answer, as most clients do. The Envoys' admin is
sampled every 0.1 s throughout.

Writes bench/results/fill.json (the timeline, where the new clients landed, the spread at
the end) and bench/results/fill.png (connections per Envoy over time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.asyncquery
import dns.message
import httpx

from api.localcluster.procs import EnvoyProcess, free_port, wait_until
from bench.fleetsim.stack import Stack, listening
from bench.plotting import pyplot

RESULTS = Path(__file__).parent / "results"
ADDRESSES = ["127.0.1.71", "127.0.1.72", "127.0.1.73"]
NAME = "www.fill.test"


# -- the client processes --------------------------------------------------------------------


async def _clients(target: str, port: int, n: int, rate: float, seconds: float) -> None:
    """Open `n` connections at `rate` per second and hold them. `target` is an address, or
    `dns=PORT`: resolve NAME at that `lbcp dns` first and connect to its first answer. Prints
    how many are held every 0.1 s, and at the end a JSON line of where they landed."""
    held = 0
    landed: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    writers: list[asyncio.StreamWriter] = []

    async def one(i: int, start: float) -> None:
        nonlocal held
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        for _ in range(20):  # bounded: a refused connection resolves again after a pause
            address = target
            try:
                if target.startswith("dns="):
                    q = dns.message.make_query(NAME, "A")
                    r = await dns.asyncquery.udp(q, "127.0.0.1", port=int(target[4:]), timeout=2)
                    address = r.answer[0][0].address
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 3)
            except (OSError, TimeoutError, IndexError, dns.exception.DNSException):
                await asyncio.sleep(0.2)
                continue
            writers.append(writer)
            landed[address] = landed.get(address, 0) + 1
            held += 1
            return

    async def report() -> None:
        while time.monotonic() < deadline and held < n:
            print(held, flush=True)
            await asyncio.sleep(0.1)
        print(held, flush=True)
        print(json.dumps(landed), flush=True)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))  # hold them until killed

    start = time.monotonic()
    await asyncio.gather(report(), *(one(i, start) for i in range(n)))


class _ClientProcs:
    """Client processes, their held counts (read as they report) and, once done, where their
    connections landed."""

    def __init__(self, argvs: list[list[str]]) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-m", "bench.fill", *a], stdout=subprocess.PIPE) for a in argvs]
        self.held = [0] * len(self.procs)
        self.landed: list[dict[str, int] | None] = [None] * len(self.procs)
        self._buf = [b""] * len(self.procs)
        for p in self.procs:
            assert p.stdout is not None
            os.set_blocking(p.stdout.fileno(), False)

    def poll(self) -> int:
        for i, p in enumerate(self.procs):
            assert p.stdout is not None
            try:
                self._buf[i] += os.read(p.stdout.fileno(), 1 << 20)
            except BlockingIOError:
                pass
            *lines, self._buf[i] = self._buf[i].split(b"\n")
            for line in lines:
                if line.startswith(b"{"):
                    self.landed[i] = json.loads(line)
                elif line.strip():
                    self.held[i] = int(line)
        return sum(self.held)

    def done(self) -> bool:
        self.poll()
        return all(x is not None for x in self.landed)

    def kill(self) -> None:
        for p in self.procs:
            p.kill()


# -- the run ---------------------------------------------------------------------------------


def run(old: int, new: int, rate: float, processes: int, limit: int, load_interval: float) -> dict:
    replica_args = ("--front-cidr", "*=127.0.0.0/8", "--load-interval", str(load_interval))
    stack = Stack(replicas=1, replica_args=replica_args).start()
    sink_port, port, dns_port = free_port(), free_port(), free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.storm", "--serve-sink", str(sink_port)])
    front = stack.front_door(dns_port, "fill.test")
    envoys: list[EnvoyProcess] = []
    groups: list[_ClientProcs] = []
    pool = ThreadPoolExecutor(3)
    try:
        ops = [
            {"op": "put", "kind": "cluster", "name": "sink", "body": {}},
            {"op": "put", "kind": "backend", "cluster": "sink", "name": "s0",
             "body": {"address": "127.0.0.1", "port": sink_port}},
            {"op": "put", "kind": "listener", "name": "edge",
             "body": {"address": "127.0.0.1", "port": port, "protocol": "tcp", "cluster": "sink",
                      "bind_public_address": True}},
            {"op": "put", "kind": "fleet", "name": "default",
             "body": {"capacity": {"max_connections_per_envoy": limit}}},
        ]  # fmt: skip
        httpx.post(f"{stack.api_url}/v1/batch", json={"operations": ops}, timeout=10).raise_for_status()
        xds = [("127.0.0.1", int(t.rsplit(":", 1)[1])) for t in stack.targets]

        def envoy(i: int) -> EnvoyProcess:
            e = EnvoyProcess(
                stack.root / "envoy", f"fill-{i}", "default", xds, max_heap_bytes=2 * 1024**3,
                public_address=ADDRESSES[i],
            )  # fmt: skip
            e.start()
            envoys.append(e)
            wait_until(lambda: listening(port, ADDRESSES[i]), 30, what=f"fill-{i} at {ADDRESSES[i]}")
            return e

        active = f"listener.127.0.0.1_{port}.downstream_cx_active"
        timeline: list[dict] = []
        started = time.monotonic()

        def read(e: EnvoyProcess) -> int:
            return e.stats(f"^{active}$").get(active, 0) if e.proc.alive() else 0

        def sample(phase: str) -> dict:
            row = {
                "t": round(time.monotonic() - started, 3),
                "phase": phase,
                "active": list(pool.map(read, envoys)) + [0] * (3 - len(envoys)),
                "held": sum(g.poll() for g in groups),
            }
            timeline.append(row)
            return row

        envoy(0), envoy(1)
        wait_until(lambda: listening(port), 30, what="the shared listener")
        groups.append(
            _ClientProcs([["--serve-clients", a, str(port), str(old), str(old / 4), "900"] for a in ADDRESSES[:2]])
        )
        deadline = time.monotonic() + 120
        while not groups[0].done() and time.monotonic() < deadline:
            sample("old")
            time.sleep(0.1)
        envoy(2)
        wait_until(lambda: ADDRESSES[2] in _answer(dns_port), 30, what="the new Envoy in lbcp dns's answer")
        for _ in range(5):
            sample("joined")
            time.sleep(0.1)
        joined_t = timeline[-1]["t"]
        per = new // processes
        groups.append(
            _ClientProcs(
                [["--serve-clients", f"dns={dns_port}", str(port), str(per), str(rate / processes), "900"]] * processes
            )
        )
        deadline = time.monotonic() + 120
        while not groups[1].done() and time.monotonic() < deadline:
            sample("new")
            time.sleep(0.1)
        for _ in range(10):
            sample("after")
            time.sleep(0.1)
        landed: dict[str, int] = {}
        for part in groups[1].landed:
            for a, n in (part or {}).items():
                landed[a] = landed.get(a, 0) + n
        final = timeline[-1]["active"]
        arrived = per * processes
        return {
            "old_per_envoy": old,
            "new": arrived,
            "rate": rate,
            "limit": limit,
            "load_interval": load_interval,
            "landed": {f"fill-{ADDRESSES.index(a)}": n for a, n in sorted(landed.items())},
            "new_share_on_new_envoy": round(landed.get(ADDRESSES[2], 0) / arrived, 3),
            "even_split_share": round(((2 * old + arrived) / 3) / arrived, 3),
            "final": final,
            "spread": max(final) - min(final),
            "old_peak": max(max(r["active"][:2]) for r in timeline),
            "joined_at": joined_t,
            "timeline": timeline,
        }
    finally:
        for g in groups:
            g.kill()
        for e in envoys:
            e.stop()
        front.kill()
        sink.kill()
        stack.stop()


def _answer(dns_port: int) -> list[str]:
    import dns.query

    try:
        r = dns.query.udp(dns.message.make_query(NAME, "A"), "127.0.0.1", port=dns_port, timeout=1)
    except (OSError, dns.exception.DNSException):
        return []
    return [a.address for a in r.answer[0]] if r.answer else []


def _plot(result: dict) -> None:
    plt = pyplot()
    if plt is None:
        return
    tl = result["timeline"]
    t = [r["t"] for r in tl]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(3):
        ax.plot(t, [r["active"][i] for r in tl], label=f"fill-{i}" + (" (joins)" if i == 2 else ""))
    ax.axvline(result["joined_at"], color="grey", linestyle=":", label="new clients start")
    high = result["limit"] * 0.9
    ax.axhline(high, color="red", linestyle="--", linewidth=0.8, label="high water")
    ax.set(
        xlabel="seconds",
        ylabel="connections held",
        title=f"{result['new']} new clients via lbcp dns: {result['new_share_on_new_envoy']:.0%} on the new Envoy",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "fill.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old", type=int, default=4000, help="connections each of the two first Envoys holds")
    p.add_argument("--new", type=int, default=6000, help="new clients arriving through lbcp dns")
    p.add_argument("--rate", type=float, default=600.0, help="new clients per second")
    p.add_argument("--processes", type=int, default=3, help="client processes for the new clients")
    p.add_argument("--limit", type=int, default=8000, help="max_connections_per_envoy")
    p.add_argument("--load-interval", type=float, default=1.0, help="the replica's load sample interval")
    p.add_argument("--serve-clients", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_clients:
        target, port, n, rate, seconds = args.serve_clients
        asyncio.run(_clients(target, int(port), int(n), float(rate), float(seconds)))
        return
    result = run(args.old, args.new, args.rate, args.processes, args.limit, args.load_interval)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fill.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result)
    print(
        f"fill: 2 Envoys × {result['old_per_envoy']}, a third joins; {result['new']} clients through lbcp dns at "
        f"{result['rate']:.0f}/s: {result['new_share_on_new_envoy']:.0%} on the new one (an even split is "
        f"{result['even_split_share']:.0%}); landed {result['landed']}; now {result['final']} "
        f"(spread {result['spread']}); old Envoys peaked at {result['old_peak']}"
    )


if __name__ == "__main__":
    main()
