"""Fleet-scope rate limit accuracy: `python -m bench.ratelimit [--seconds 60 --limit 200]`.

Three real Envoys of one fleet, each bound at its own loopback address (127.0.1.N,
`bind_public_address`) to one HTTP listener whose one route has `rate_limit: {requests: L,
per: 1s, scope: fleet}`. Keep-alive HTTP/1.1 clients (`--connections`, over `--processes`
client processes) are spread over the Envoys by `--split` (60/30/10), and every connection
asks at `--rate` requests a second (by default so that the fleet's demand is 2 x L). The
mover's leader (in the replica) divides L by each Envoy's share of live connections and the
replica serves each Envoy its share (controlplane/moves/shares.py).

Phases, each counted by the clients in 0.1 s bins of wall-clock time:

1. `fleet`: `--seconds` with the division settled: requests admitted (200) per second, for
   the fleet and per Envoy, against L; the 429s and whether each carried retry-after; the
   shares the mover wrote; each Envoy's token bucket as its /config_dump shows it.
2. `drain`: POST /v1/fleet/{node}/drain (the 30 % Envoy; its clients stay on it): the time
   until the mover wrote the new shares, until the others' buckets add up to L, and when
   the Envoys applied them (their config_dump's `last_updated`); the fleet's admitted rate
   over the `--drain-seconds` (20) after the drain. Then `--drains - 1` more undrain/drain
   cycles (`redrain`), each drain timed the same way: what every division costs in requests
   admitted beyond the limit (Envoy rebuilds a bucket full when its route changes).
3. `envoy`: the same route with `scope: envoy` (the node undrained): each Envoy enforces the
   whole L on its own, the peer this measures against; `--seconds` again.

Writes bench/results/ratelimit.json (and ratelimit.png with matplotlib). Every client loop
is bounded in count and in time; the clients stop by themselves after the run's length.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from api.localcluster.procs import EnvoyProcess, free_port, wait_until
from bench.fleetsim.stack import Stack, listening
from bench.plotting import pyplot
from controlplane.intent.model import RateLimit
from controlplane.moves.shares import TOLERANCE
from controlplane.xds.resources.routes import limit_for

RESULTS = Path(__file__).parent / "results"
NODES = ("rl-0", "rl-1", "rl-2")
ADDRESSES = {"rl-0": "127.0.1.111", "rl-1": "127.0.1.112", "rl-2": "127.0.1.113"}
DRAINED = "rl-1"  # the 30 % Envoy
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
BIN = 0.1  # seconds per client count bin
OK, LIMITED, NO_RETRY_AFTER, OTHER, ERRORS = range(5)  # a bin's counters
FIELDS = ("ok", "limited", "limited_without_retry_after", "other", "errors")
MAX_FDS = 20_000  # connections one client process may hold
WARMUP = 3.0  # seconds after a division settles before a phase is counted (its buckets start full)


# -- the client processes --------------------------------------------------------------------


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, str | None, bool]:
    """One GET on a keep-alive connection: (status, retry-after or None, connection closes)."""
    writer.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers.get("retry-after"), headers.get("connection", "").lower() == "close"


async def _clients(targets: list[tuple[str, int, int]], rate: float, seconds: float) -> None:
    """Hold `n` keep-alive connections to each (address, port, n) and send `rate` requests a
    second on each, for `seconds`. Every second, prints a JSON line of the finished bins:
    {"bins": {bin: {address: [ok, limited, limited without retry-after, other, errors]}}},
    with the retry-after values seen and the reconnections so far."""
    bins: dict[int, dict[str, list[int]]] = {}
    retry_after: set[str] = set()
    reconnects = 0
    deadline = time.monotonic() + seconds

    def count(address: str, field: int) -> None:
        bins.setdefault(int(time.time() / BIN), {}).setdefault(address, [0] * len(FIELDS))[field] += 1

    async def one(address: str, port: int) -> None:
        nonlocal reconnects
        io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        opened = 0
        # All connect at once (a load sample sees them all or none), then ask spread over a period.
        with contextlib.suppress(OSError, TimeoutError):
            io = await asyncio.wait_for(asyncio.open_connection(address, port), 3)
            opened = 1
        start = time.monotonic() + random.random() / rate
        try:
            for k in range(int(seconds * rate) + 2):  # bounded in count ...
                at = start + k / rate
                now = time.monotonic()
                if at >= deadline:  # ... and in time
                    return
                if at < now - 1 / rate:  # a slot missed (a slow answer): skipped, not caught up
                    continue
                await asyncio.sleep(max(0.0, at - now))
                if io is None:
                    if opened >= 50:
                        return
                    try:
                        io = await asyncio.wait_for(asyncio.open_connection(address, port), 3)
                    except (OSError, TimeoutError):
                        count(address, ERRORS)
                        continue
                    reconnects += opened > 0
                    opened += 1
                try:
                    status, after, closes = await asyncio.wait_for(_get(*io), 5)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    count(address, ERRORS)
                    io[1].close()
                    io = None
                    continue
                if status == 200:
                    count(address, OK)
                elif status == 429:
                    count(address, LIMITED)
                    if after is None:
                        count(address, NO_RETRY_AFTER)
                    else:
                        retry_after.add(after)
                else:
                    count(address, OTHER)
                if closes:
                    io[1].close()
                    io = None
        finally:
            if io is not None:
                io[1].close()

    def flush(everything: bool) -> None:
        now = int(time.time() / BIN)
        done = {b: bins.pop(b) for b in sorted(bins) if everything or b < now}
        print(json.dumps({"bins": done, "retry_after": sorted(retry_after), "reconnects": reconnects}), flush=True)

    async def report() -> None:
        while time.monotonic() < deadline + 6:
            await asyncio.sleep(1.0)
            flush(False)

    reporter = asyncio.create_task(report())
    await asyncio.gather(*(one(a, p) for a, p, n in targets for _ in range(n)))
    reporter.cancel()
    flush(True)


class _ClientProcs:
    """Client processes, and what they counted so far (read as they report)."""

    def __init__(self, argvs: list[list[str]]) -> None:
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "bench.ratelimit", *a], stdout=subprocess.PIPE) for a in argvs
        ]
        self.bins: dict[int, dict[str, list[int]]] = {}
        self.retry_after: set[str] = set()
        self.reconnects = [0] * len(self.procs)
        self._buf = [b""] * len(self.procs)
        for p in self.procs:
            assert p.stdout is not None
            os.set_blocking(p.stdout.fileno(), False)

    def poll(self) -> None:
        for i, p in enumerate(self.procs):
            assert p.stdout is not None
            for _ in range(100):  # bounded: what the pipe holds now
                try:
                    chunk = os.read(p.stdout.fileno(), 1 << 20)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                self._buf[i] += chunk
            *lines, self._buf[i] = self._buf[i].split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                doc = json.loads(line)
                merge(self.bins, {int(b): v for b, v in doc["bins"].items()})
                self.retry_after.update(doc["retry_after"])
                self.reconnects[i] = doc["reconnects"]

    def kill(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(5)


def merge(into: dict[int, dict[str, list[int]]], bins: Mapping[int, Mapping[str, list[int]]]) -> None:
    """Add one report's bins to the totals."""
    for b, per in bins.items():
        row = into.setdefault(b, {})
        for address, counts in per.items():
            old = row.setdefault(address, [0] * len(FIELDS))
            for i, c in enumerate(counts):
                old[i] += c


def window(bins: Mapping[int, Mapping[str, list[int]]], t0: float, t1: float) -> tuple[float, dict[str, list[int]]]:
    """Counts per address over the bins that start in [t0, t1) (wall-clock seconds), and the
    length those bins cover."""
    lo, hi = math.ceil(t0 / BIN), math.ceil(t1 / BIN)  # the first bin starting at or after each
    out: dict[str, list[int]] = {}
    for b in range(lo, hi):
        for address, counts in bins.get(b, {}).items():
            row = out.setdefault(address, [0] * len(FIELDS))
            for i, c in enumerate(counts):
                row[i] += c
    return (hi - lo) * BIN, out


def per_second(bins: Mapping[int, Mapping[str, list[int]]], t0: float, t1: float, field: int = OK) -> list[int]:
    """The fleet's count of `field` in each whole second of [t0, t1)."""
    out = []
    t = t0
    for _ in range(int(t1 - t0)):
        out.append(sum(c[field] for c in window(bins, t, t + 1)[1].values()))
        t += 1
    return out


# -- reading the control plane and the Envoys ------------------------------------------------


def buckets(config_dump: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fleet-limited route's token bucket in an Envoy's dynamic route configuration, with
    the configuration's version and when the Envoy applied it (Unix time)."""
    for rc in config_dump.get("configs", []):
        for vh in rc.get("route_config", {}).get("virtual_hosts", []):
            for route in vh.get("routes", []):
                limit = route.get("typed_per_filter_config", {}).get(RATE_LIMIT_FILTER)
                if not limit:
                    continue
                bucket = limit.get("config", limit)["token_bucket"]  # (a FilterConfig that enables the filter)
                updated = rc.get("last_updated")
                return {
                    "max_tokens": int(bucket["max_tokens"]),
                    "tokens_per_fill": int(bucket.get("tokens_per_fill", 1)),
                    "fill_interval": bucket.get("fill_interval"),
                    "version": rc.get("version_info"),
                    "last_updated": datetime.fromisoformat(updated).timestamp() if updated else None,
                }
    return None


def _bucket(e: EnvoyProcess) -> dict[str, Any] | None:
    try:
        return buckets(e.config_dump("dynamic_route_configs"))
    except (httpx.HTTPError, ValueError):
        return None


def _fills(held: Mapping[str, dict[str, Any] | None]) -> dict[str, int | None]:
    """Each Envoy's tokens_per_fill (None: no limited route seen)."""
    return {n: b["tokens_per_fill"] if b else None for n, b in held.items()}


def _counters(e: EnvoyProcess) -> dict[str, int]:
    """Envoy's own local rate limit counters."""
    return e.stats("http_local_rate_limit")


def summarize(
    bins: Mapping[int, Mapping[str, list[int]]],
    t0: float,
    t1: float,
    limit: int,
    held: Mapping[str, dict[str, Any] | None],
) -> dict[str, Any]:
    """A phase: admitted per second for the fleet and per Envoy, against the limit and each
    Envoy's bucket (`held`: its bucket during the phase)."""
    seconds, counts = window(bins, t0, t1)
    total = [sum(c[i] for c in counts.values()) for i in range(len(FIELDS))]
    admitted = total[OK] / seconds
    every = per_second(bins, t0, t1)
    per_envoy = {}
    for node, address in ADDRESSES.items():
        c = counts.get(address, [0] * len(FIELDS))
        bucket = held.get(node)
        row: dict[str, Any] = {
            "admitted_per_second": round(c[OK] / seconds, 2),
            "limited_per_second": round(c[LIMITED] / seconds, 2),
            "demand_per_second": round((c[OK] + c[LIMITED] + c[OTHER] + c[ERRORS]) / seconds, 2),
            "bucket": bucket and {k: bucket[k] for k in ("max_tokens", "tokens_per_fill", "fill_interval")},
        }
        if bucket:
            row["admitted_over_bucket"] = round(c[OK] / seconds / bucket["tokens_per_fill"], 4)
        per_envoy[node] = row
    return {
        "seconds": round(seconds, 1),
        "admitted": total[OK],
        "admitted_per_second": round(admitted, 2),
        "admitted_over_limit": round(admitted / limit, 4),
        "demand_per_second": round((total[OK] + total[LIMITED] + total[OTHER] + total[ERRORS]) / seconds, 2),
        **{f: total[i] for i, f in enumerate(FIELDS) if i != OK},
        "per_second_admitted": {
            "min": min(every, default=0),
            "median": statistics.median(every) if every else 0,
            "max": max(every, default=0),
        },
        "per_envoy": per_envoy,
    }


# -- the run ---------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpus": os.cpu_count(), "cpu": model, "loadavg_at_start": os.getloadavg()[0]}


def run(
    seconds: float,
    limit: int,
    split: list[int],
    connections: int,
    rate: float,
    processes: int,
    drain_seconds: float,
    load_interval: float,
    drains: int,
) -> dict[str, Any]:
    per_node = dict(zip(NODES, _spread(connections, split), strict=True))
    replica_args = ("--front-cidr", "*=127.0.0.0/8", "--load-interval", str(load_interval))
    stack = Stack(replicas=1, replica_args=replica_args).start()
    api = httpx.Client(base_url=stack.api_url, timeout=10)
    backend_port, port = free_port(), free_port()
    backend = subprocess.Popen(  # quiet: Envoys going away at the end break its connections
        [sys.executable, "-m", "bench.ratelimit", "--serve-backend", str(backend_port)], stderr=subprocess.DEVNULL
    )
    envoys: dict[str, EnvoyProcess] = {}
    clients: _ClientProcs | None = None
    timeline: list[dict[str, Any]] = []
    machine = _machine()
    origin = time.time()

    def route(scope: str) -> dict[str, Any]:
        return {
            "listener": "edge",
            "backends": [{"cluster": "web"}],
            "rate_limit": {"requests": limit, "per": "1s", "scope": scope},
        }

    def fleet() -> dict[str, Any]:
        doc: dict[str, Any] = api.get("/v1/fleet").json()
        return doc

    def shares() -> dict[str, Any]:
        record: dict[str, Any] = fleet().get("rate_limit_shares", {}).get("default", {})
        return record

    def held() -> dict[str, dict[str, Any] | None]:
        return {n: _bucket(e) for n, e in envoys.items()}

    def sample(phase: str) -> dict[str, Any]:
        assert clients is not None
        clients.poll()
        record = shares()
        now = held()
        row = {
            "t": round(time.time() - origin, 2),
            "phase": phase,
            "shares": record.get("shares"),
            "shares_at": record.get("at"),
            "buckets": _fills(now),
            "versions": {n: (b or {}).get("version") for n, b in now.items()},
        }
        timeline.append(row)
        return row

    def hold(phase: str, until: float) -> None:
        """Sample once a second until `until` (wall clock)."""
        for _ in range(int(until - time.time()) + 2):
            if time.time() >= until:
                return
            sample(phase)
            time.sleep(max(0.0, min(1.0, until - time.time())))

    def counters() -> dict[str, dict[str, int]]:
        return {n: _counters(e) for n, e in envoys.items()}

    def phase(t0: float, t1: float, before: dict[str, dict[str, int]]) -> dict[str, Any]:
        """What the Envoys and the control plane showed over [t0, t1); the clients' counts
        are added at the end of the run (they report once a second)."""
        after = counters()
        rows = [r for r in timeline if t0 - origin <= r["t"] < t1 - origin]
        return {
            "window": (t0, t1),
            "held": held(),
            "envoy_counters": {n: {k: v - before[n].get(k, 0) for k, v in after[n].items()} for n in envoys},
            # in the once-a-second samples: new records of the mover (`at` changed) and route
            # configuration changes of each Envoy (a quicker flip and back is not seen)
            "divisions_seen": _changes(r["shares_at"] for r in rows),
            "route_changes_seen": {n: _changes(r["versions"][n] for r in rows) for n in envoys},
            "shares": rows[-1]["shares"] if rows else None,
        }

    def counted(ph: dict[str, Any]) -> dict[str, Any]:
        assert clients is not None
        t0, t1 = ph.pop("window")
        return {**summarize(clients.bins, t0, t1, limit, ph.pop("held")), **ph}

    try:
        ops = [
            {"op": "put", "kind": "cluster", "name": "web", "body": {}},
            {"op": "replace_backends", "cluster": "web",
             "body": [{"name": "b", "address": "127.0.0.1", "port": backend_port}]},
            {"op": "put", "kind": "listener", "name": "edge",
             "body": {"address": "127.0.0.1", "port": port, "bind_public_address": True}},
            {"op": "put", "kind": "route", "name": "all", "body": route("fleet")},
        ]  # fmt: skip
        api.post("/v1/batch", json={"operations": ops}).raise_for_status()
        xds = [("127.0.0.1", int(t.rsplit(":", 1)[1])) for t in stack.targets]
        for n in NODES:
            e = EnvoyProcess(stack.root / "envoy", n, "default", xds, public_address=ADDRESSES[n])
            e.start()
            envoys[n] = e
        for address in ADDRESSES.values():
            wait_until(functools.partial(listening, port, address), 30, what=f"the listener at {address}")

        def in_service(expected: Iterable[str]) -> bool:
            nodes = fleet()["nodes"]
            return sorted(x["node_id"] for x in nodes if x["front_state"] == "in") == sorted(expected)

        wait_until(lambda: in_service(NODES), 40, interval=0.2, what="the three Envoys in service")

        # The client processes: each takes whole Envoys' connections where it can, at most
        # MAX_FDS connections each; they run for the whole run and stop by themselves.
        length = seconds * 2 + drain_seconds + 40 * drains + 180
        targets = [(ADDRESSES[n], port, k) for n, k in per_node.items() if k]
        argvs = [["--serve-clients", json.dumps({"targets": t, "rate": rate, "seconds": length})]
                 for t in _deal(targets, processes)]  # fmt: skip
        clients = _ClientProcs(argvs)
        split_shares = {n: k / connections for n, k in per_node.items()}

        def divided(expected: Mapping[str, float], tolerance: float = 0.02) -> bool:
            procs.poll()
            now = shares().get("shares") or {}
            return now.keys() == expected.keys() and all(abs(now[n] - s) <= tolerance for n, s in expected.items())

        def served(expected: Mapping[str, int]) -> bool:
            got = _fills(held())
            return all(abs((got[n] or -10) - v) <= 1 for n, v in expected.items())

        settle_t0 = time.time()
        procs = clients
        # The mover re-divides only when a share moves by more than its tolerance: a division
        # made from a sample taken while the clients were still connecting may stay.
        wait_until(lambda: divided(split_shares, TOLERANCE + 0.001), 60, interval=0.5, what="shares by the split")
        wanted = {n: limit_for(RateLimit(requests=limit, scope="fleet"), s)[0] for n, s in shares()["shares"].items()}
        wait_until(lambda: served(wanted), 30, interval=0.2, what="each Envoy enforcing its share")
        settled = time.time() - settle_t0
        hold("settle", time.time() + WARMUP)

        # 1. fleet scope, `seconds` long.
        before = counters()
        t0 = time.time()
        hold("fleet", t0 + seconds)
        t1 = time.time()
        fleet_phase = phase(t0, t1, before)

        # 2. drain the 30 % Envoy: its clients stay (a drain keeps serving the connections an
        # Envoy has), its share goes to the others.
        rest = [n for n in NODES if n != DRAINED]

        def redivide() -> dict[str, Any]:
            """Drain DRAINED; time the mover's new shares and the others' buckets adding up
            to the limit (polled, and as the Envoys' own `last_updated` tells)."""
            old = {n: (b or {}).get("version") for n, b in held().items()}
            td = time.time()
            api.post(f"/v1/fleet/{DRAINED}/drain", json={"reason": "bench"}).raise_for_status()
            posted = time.time() - td
            seen = None
            for _ in range(300):  # 0.05 s apart at least: 15 s at most
                if time.time() - td > 15:
                    break
                fills = _fills({n: _bucket(envoys[n]) for n in rest})
                if abs(sum(v or 0 for v in fills.values()) - limit) <= 1:
                    seen = time.time() - td  # when the answer showing it came
                    break
                time.sleep(0.05)
            got = held()
            record = shares()
            applied = {
                n: round(b["last_updated"] - td, 3)
                for n, b in got.items()
                if b is not None and b["last_updated"] is not None and b["version"] != old[n]
            }
            return {
                "at": td,
                "post_seconds": round(posted, 3),
                "shares_written_s": round(record["at"] - td, 3) if record.get("at") else None,
                "buckets_seen_s": round(seen, 3) if seen is not None else None,
                "envoys_applied_s": applied,
                "drain_to_redivided_s": max(applied[n] for n in rest) if all(n in applied for n in rest) else None,
                "shares": record.get("shares"),
                "connections": record.get("connections"),
                "buckets": _fills(got),
            }

        def undrain() -> float:
            """Put DRAINED back; the time until its share is back in its bucket."""
            t = time.time()
            api.delete(f"/v1/fleet/{DRAINED}/drain").raise_for_status()
            wait_until(lambda: (_fills({DRAINED: _bucket(envoys[DRAINED])})[DRAINED] or 0) > 1, 30, what="share back")
            return round(time.time() - t, 3)

        before = counters()
        drain = {"node": DRAINED, **redivide()}
        td = drain.pop("at")
        hold("drain", td + drain_seconds)
        drain_phase = phase(td, td + drain_seconds, before)
        # Again, a few times: drain -> re-divided is up to the mover's interval (1 s) plus
        # the registry's and the Envoys' lag, so one drain is one draw from it.
        repeats, undrains = [], []
        before, t0 = counters(), time.time()
        for _ in range(drains - 1):
            undrains.append(undrain())
            hold("redrain", time.time() + 2 + random.random())  # at a random point of the mover's 1 s
            repeats.append(redivide())
            repeats[-1].pop("at")
            hold("redrain", time.time() + 1)
        churn_phase = phase(t0, time.time(), before) if repeats else None
        drain["repeats"] = repeats
        drain["undrain_to_share_back_s"] = undrains
        times = [d["drain_to_redivided_s"] for d in [drain, *repeats] if d["drain_to_redivided_s"] is not None]
        drain["drain_to_redivided_all_s"] = times
        drain["drain_to_redivided_median_s"] = statistics.median(times) if times else None

        # 3. scope envoy: the same clients, every Envoy enforcing the whole limit.
        api.put("/v1/routes/all", json=route("envoy")).raise_for_status()
        api.delete(f"/v1/fleet/{DRAINED}/drain").raise_for_status()  # back, though it holds no share now
        wait_until(lambda: served(dict.fromkeys(NODES, limit)), 30, interval=0.2, what="every Envoy at the whole limit")
        wait_until(lambda: in_service(NODES), 30, interval=0.2, what=f"{DRAINED} back in service")
        hold("settle", time.time() + WARMUP)
        before = counters()
        t0 = time.time()
        hold("envoy", t0 + seconds)
        t1 = time.time()
        envoy_phase = phase(t0, t1, before)
        time.sleep(1.5)  # the clients' last report of the phase
        clients.poll()
        fleet_phase, drain_phase, envoy_phase = (counted(p) for p in (fleet_phase, drain_phase, envoy_phase))
        phases = {"fleet": fleet_phase, "drain": drain_phase}
        if churn_phase is not None:
            # Every division rebuilds the re-divided Envoys' buckets full: what each one added.
            churn = phases["redrain"] = counted(churn_phase)
            churn["divisions"] = 2 * len(repeats)
            extra = churn["admitted"] - limit * churn["seconds"]
            churn["admitted_beyond_limit_per_division"] = round(extra / churn["divisions"], 1)
        phases["envoy"] = envoy_phase
        drain_phase["per_second_admitted_timeline"] = per_second(clients.bins, td - 3, td + drain_seconds)
        fleet_phase["within_15_percent"] = abs(fleet_phase["admitted_over_limit"] - 1) <= 0.15  # the bar
        demand = envoy_phase["per_envoy"]
        bound = sum(min(limit, demand[n]["demand_per_second"]) for n in NODES)
        envoy_phase["demand_bound_over_limit"] = round(bound / limit, 4)  # what min(demand, L) per Envoy allows

        seconds_all = int(time.time() - origin)
        return {
            "limit": limit,
            "per": "1s",
            "seconds": seconds,
            "drain_seconds": drain_seconds,
            "split": split,
            "connections": per_node,
            "rate_per_connection": rate,
            "demand_over_limit": round(connections * rate / limit, 3),
            "client_processes": len(clients.procs),
            "load_interval": load_interval,
            "envoys": ADDRESSES,
            "machine": {**machine, "loadavg_at_end": os.getloadavg()[0]},
            "settle_seconds": round(settled, 2),
            "retry_after_values": sorted(clients.retry_after),
            "reconnects": sum(clients.reconnects),
            "phases": phases,
            "drain": drain,
            "timeline": timeline,
            "admitted_per_second": {
                n: per_second(
                    {b: {a: c for a, c in v.items() if a == ADDRESSES[n]} for b, v in clients.bins.items()},
                    origin,
                    origin + seconds_all,
                )
                for n in NODES
            },  # fmt: skip
        }
    finally:
        if clients is not None:
            clients.kill()
        for e in envoys.values():
            e.stop()
        backend.kill()
        backend.wait(5)
        api.close()
        stack.stop()


def _changes(values: Iterable[Any]) -> int:
    """How many times a sequence changed value."""
    seen = list(values)
    return sum(a != b for a, b in zip(seen, seen[1:], strict=False))


def _spread(connections: int, split: list[int]) -> list[int]:
    """`connections` over the Envoys in proportion to `split` (largest remainders)."""
    total = sum(split)
    raw = [connections * s / total for s in split]
    out = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[: connections - sum(out)]:
        out[i] += 1
    return out


def _deal(targets: list[tuple[str, int, int]], processes: int) -> list[list[tuple[str, int, int]]]:
    """The connections over `processes` client processes (more if one would hold more than
    MAX_FDS), each target's connections split evenly."""
    total = sum(n for _, _, n in targets)
    processes = max(processes, -(-total // MAX_FDS))
    out: list[list[tuple[str, int, int]]] = [[] for _ in range(processes)]
    for address, port, n in targets:
        for i in range(processes):
            k = n // processes + (i < n % processes)
            if k:
                out[i].append((address, port, k))
    return [t for t in out if t]


def _serve_backend(port: int) -> None:
    from api.localcluster.demo import DemoBackend

    DemoBackend("rl-backend", port=port)
    time.sleep(3600)  # killed by the run; gone by itself after an hour at most


def _plot(result: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    limit = result["limit"]
    per = result["admitted_per_second"]
    t = list(range(len(per[NODES[0]])))
    fleet = [sum(per[n][i] for n in NODES) for i in t]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, fleet, label="fleet", color="black", linewidth=1.5)
    for n in NODES:
        ax.plot(t, per[n], label=f"{n} ({result['connections'][n]} connections)", linewidth=0.8)
    ax.axhline(limit, color="red", linestyle="--", linewidth=0.8, label=f"limit {limit}/s")
    starts: dict[str, float] = {}
    for row in result["timeline"]:
        starts.setdefault(row["phase"], row["t"])
    labels = {"fleet": "scope fleet", "drain": f"drain {DRAINED}", "redrain": "undrain/drain", "envoy": "scope envoy"}
    for name, label in labels.items():
        if name in starts:
            ax.axvline(starts[name], color="grey", linestyle=":")
            ax.text(starts[name] + 0.5, ax.get_ylim()[1] * 0.96, label, fontsize=7)
    f, e = result["phases"]["fleet"], result["phases"]["envoy"]
    ax.set(
        xlabel="seconds",
        ylabel="requests admitted per second",
        title=f"admitted / limit: scope fleet {f['admitted_over_limit']:.2f}, envoy {e['admitted_over_limit']:.2f}",
    )
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(RESULTS / "ratelimit.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60.0, help="length of each scope's measured phase")
    p.add_argument("--limit", type=int, default=200, help="the fleet's limit, requests per second")
    p.add_argument("--split", default="60,30,10", help="how the connections spread over the 3 Envoys")
    p.add_argument("--connections", type=int, default=100, help="keep-alive client connections in all")
    p.add_argument("--rate", type=float, help="requests per second per connection (default: fleet demand 2 x limit)")
    p.add_argument("--processes", type=int, default=1, help="client processes (more if one would pass 20,000 fds)")
    p.add_argument("--drain-seconds", type=float, default=20.0, help="the fleet's admitted rate after the drain, over")
    p.add_argument("--drains", type=int, default=6, help="drains timed (the first one also counted for 20 s)")
    p.add_argument("--load-interval", type=float, default=0.5, help="the replica's load sample interval")
    p.add_argument("--serve-clients", help=argparse.SUPPRESS)
    p.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_backend:
        _serve_backend(args.serve_backend)
        return
    if args.serve_clients:
        spec = json.loads(args.serve_clients)
        targets = [(str(a), int(port), int(n)) for a, port, n in spec["targets"]]
        asyncio.run(_clients(targets, float(spec["rate"]), float(spec["seconds"])))
        return
    split = [int(x) for x in args.split.split(",")]
    if len(split) != len(NODES) or min(split) < 0 or sum(split) <= 0:
        p.error("--split takes three non-negative weights, e.g. 60,30,10")
    rate = args.rate or 2 * args.limit / args.connections
    result = run(
        args.seconds,
        args.limit,
        split,
        args.connections,
        rate,
        args.processes,
        args.drain_seconds,
        args.load_interval,
        args.drains,
    )
    result["command"] = "python -m bench.ratelimit " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ratelimit.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result)
    f, d, e = (result["phases"][k] for k in ("fleet", "drain", "envoy"))
    every = result["drain"]["drain_to_redivided_all_s"]
    print(
        f"ratelimit: limit {result['limit']}/s, {result['connections']} connections, demand "
        f"{result['demand_over_limit']} x limit.\n"
        f"  fleet scope: {f['admitted_per_second']}/s admitted = {f['admitted_over_limit']:.3f} x limit over "
        f"{f['seconds']} s; per Envoy {[f['per_envoy'][n]['admitted_per_second'] for n in NODES]}\n"
        f"  drain {DRAINED}: shares written {result['drain']['shares_written_s']} s, buckets re-divided "
        f"{result['drain']['drain_to_redivided_s']} s (seen {result['drain']['buckets_seen_s']} s; over "
        f"{len(every)} drains {every}); next "
        f"{d['seconds']} s: {d['admitted_over_limit']:.3f} x limit\n"
        + (
            f"  {r['divisions']} more divisions (undrain/drain): {r['admitted_beyond_limit_per_division']} admitted "
            "beyond the limit each\n"
            if (r := result["phases"].get("redrain"))
            else ""
        )
        + f"  envoy scope: {e['admitted_per_second']}/s = {e['admitted_over_limit']:.3f} x limit "
        f"(min(demand, limit) per Envoy allows {e['demand_bound_over_limit']} x)\n"
        f"  429s without retry-after: {f['limited_without_retry_after'] + e['limited_without_retry_after']}, "
        f"retry-after values {result['retry_after_values']}"
    )


if __name__ == "__main__":
    main()
