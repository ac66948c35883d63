"""What lbcp's idle HTTP filters cost Envoy per request.

    .venv/bin/python -m bench.http_filters [--rounds 20] [--seconds 6] [--slice 2]

Every http listener's HttpConnectionManager carries CORS, fault and local rate-limit filters
before the router, idle until a route configures them (`listeners._http_filters`), so that a
route gaining such a policy changes only RDS. This bench measures what they cost.

Three variants of the same Envoy 1.40, each a static bootstrap (no xDS) whose listener is
lbcp's own `listener_resource` output (its admission filter's default config inlined in
place of ECDS) with lbcp's own `route_configuration` inlined in place of RDS:

  A  router only: the three filters taken out of the HCM
  B  lbcp as it is: the three idle filters, then the router
  C  B with the policies on the route: CORS (the request's origin allowed), a fault (delay
     and abort at 0 %), a local rate limit of 1e9/s (never reached)

and two kinds of route, so each variant runs twice:

  direct  the route answers 200 itself (direct_response): no upstream, so the ratio is the
          largest it can be. lbcp (like Envoy's CORS filter) has no CORS on a direct
          response, so C here carries the fault and the rate limit only.
  proxy   the route forwards to an upstream (another Envoy answering 200, on the load
          generator's core): what a request through lbcp usually does; C has all three.

Each Envoy under test runs with `--concurrency 1` pinned to core 0; wrk (keep-alive HTTP/1.1,
`-t1 -c32`, every request with an Origin header) and the upstream share core 1. Every round
starts its own Envoys (one per kind and variant; an instance's own layout moves its CPU per
request by a few %, so new instances each round make that round-to-round noise instead of a
bias), warms each, then gives each variant `--seconds` of load in `--slice`-second wrk runs,
interleaved: A, B, C, A, B, C... per kind, each triple starting one variant later. Per
slice: Envoy's CPU seconds (utime + stime of the whole process from /proc, and of its
worker thread alone) and the requests it completed (its own counter); a round's variant is
the sum of its slices -> microseconds of Envoy CPU per request, and requests per second.
The machine is shared: a triple during which other work took more than `--max-others`
(10 %) of either core is made again, 5 s later (at most `--retries`, 3, times; then kept,
marked). Writes bench/results/http_filters.json and prints medians and spreads, and the
ratios B/A and C/A: of the medians, per round, and per triple.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from api.localcluster.procs import envoy_binary, free_port
from controlplane.intent.model import (
    Cors,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    Listener,
    RateLimit,
    Route,
    WeightedBackend,
)
from controlplane.xds.resources import listener_resource, route_configuration
from controlplane.xds.resources._shared import CORS_FILTER, FAULT_FILTER, RATE_LIMIT_FILTER, RATE_LIMIT_STAT_PREFIX
from tests.envoy_validate import inline_routes

HCM = "envoy.filters.network.http_connection_manager"
IDLE = (CORS_FILTER, FAULT_FILTER, RATE_LIMIT_FILTER)
LISTENER = "bench"
UPSTREAM = "upstream"
ORIGIN = "https://app.example.com"
VARIANTS = {
    "A": "router only",
    "B": "idle filters (lbcp)",
    "C": "policies on the route",
}
KINDS = ("direct", "proxy")
ENVOY_CORE = "0"
LOAD_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RETRY_PAUSE = 5.0


# -- configuration ---------------------------------------------------------------------------


def _route(kind: str, variant: str) -> Route:
    policies: dict[str, Any] = {}
    if variant == "C":
        policies["fault"] = Fault(
            delay=FaultDelay(duration=1.0, percent=0.0), abort=FaultAbort(status=503, percent=0.0)
        )
        policies["rate_limit"] = RateLimit(requests=1_000_000_000, per="1s")
        if kind == "proxy":
            policies["cors"] = Cors(allow_origins=[ORIGIN], allow_methods=["GET", "POST"])
    if kind == "direct":
        return Route(name="r", listener=LISTENER, direct_response=DirectResponse(status=200, body="ok"), **policies)
    return Route(name="r", listener=LISTENER, backends=[WeightedBackend(cluster=UPSTREAM)], **policies)


def listener_config(kind: str, variant: str, port: int) -> dict[str, Any]:
    """lbcp's listener for 127.0.0.1:`port`, routes inlined, as Envoy's JSON."""
    out: listener_pb2.Listener = listener_resource(Listener(name=LISTENER, address="127.0.0.1", port=port))
    # The admission filter comes over ECDS and the listener would warm until it came: its
    # default (a bucket no connection rate can empty) goes inline instead.
    for lf in out.listener_filters:
        if lf.HasField("config_discovery"):
            lf.typed_config.CopyFrom(lf.config_discovery.default_config)
    inline_routes(out, route_configuration(LISTENER, [_route(kind, variant)]))
    names: list[list[str]] = []
    for chain in out.filter_chains:
        for f in chain.filters:
            if f.name != HCM:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            if variant == "A":
                kept = [h for h in hcm.http_filters if h.name not in IDLE]
                del hcm.http_filters[:]
                hcm.http_filters.extend(kept)
                f.typed_config.Pack(hcm)
            names.append([h.name for h in hcm.http_filters])
    want = ["envoy.filters.http.router"] if variant == "A" else [*IDLE, "envoy.filters.http.router"]
    assert names and all(n == want for n in names), names
    return json_format.MessageToDict(out, preserving_proto_field_name=True)


def _admin(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def bootstrap(kind: str, variant: str, port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    clusters = []
    if kind == "proxy":
        clusters.append(
            {
                "name": UPSTREAM,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": UPSTREAM,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": "127.0.0.1", "port_value": upstream_port}
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    return {
        "node": {"id": f"bench-{kind}-{variant}", "cluster": "bench"},
        "admin": _admin(admin_port),
        "static_resources": {"listeners": [listener_config(kind, variant, port)], "clusters": clusters},
    }


def upstream_bootstrap(port: int, admin_port: int) -> dict[str, Any]:
    """A plain Envoy answering 200 "ok" to everything (the proxy routes' backend)."""
    hcm = {
        "@type": "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name,
        "stat_prefix": "upstream",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    listener = {
        "name": "upstream",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}],
    }
    return {
        "node": {"id": "bench-upstream", "cluster": "bench"},
        "admin": _admin(admin_port),
        "static_resources": {"listeners": [listener]},
    }


# -- processes -------------------------------------------------------------------------------


@dataclass
class Envoy:
    name: str
    config: dict[str, Any]
    port: int
    admin_port: int
    core: str
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, root: Path) -> None:
        path = root / f"{self.name}.json"
        path.write_text(json.dumps(self.config))
        argv = ["taskset", "-c", self.core, envoy_binary(), "-c", str(path), "--concurrency", "1"]
        argv += ["--disable-hot-restart", "-l", "warning", "--drain-time-s", "0"]
        with open(root / f"{self.name}.log", "ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid  # taskset execs envoy: same pid

    def wait_ready(self, deadline_s: float = 30.0) -> None:
        """Until the admin says LIVE and the listener answers 200."""
        end = time.monotonic() + deadline_s
        while True:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"envoy {self.name} exited with {self.popen.returncode}")
            try:
                if _get(self.port, "/") == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"envoy {self.name} not serving after {deadline_s} s")
            time.sleep(0.2)

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?format=json", timeout=10) as r:
            body = json.load(r)
        return {s["name"]: int(s["value"]) for s in body["stats"] if "value" in s}

    def cpu(self) -> tuple[float, float]:
        """(process, worker thread) CPU seconds so far."""
        proc = _ticks(Path(f"/proc/{self.pid}/stat"))
        worker = 0.0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                if (task / "comm").read_text().strip().startswith("wrk:worker"):
                    worker += _ticks(task / "stat")
            except OSError:
                continue
        return proc, worker

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


def _get(port: int, path: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Origin": ORIGIN})
    with urllib.request.urlopen(req, timeout=2) as r:
        return int(r.status)


def _ticks(stat: Path) -> float:
    # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    rest = stat.read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


# -- load ------------------------------------------------------------------------------------


def wrk(port: int, seconds: int, connections: int) -> dict[str, Any]:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    argv += ["-H", f"Origin: {ORIGIN}", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {
        "rps": float(m.group(1)) if m else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else None,
        "p50": lat.get("50"),
        "p99": lat.get("99"),
    }


# Counters whose deltas show what each variant did (cors and rate-limit ones only in C).
COUNTERS = {
    "completed": f"http.{LISTENER}.downstream_rq_completed",
    "rq_2xx": f"http.{LISTENER}.downstream_rq_2xx",
    "cors_origin_valid": f"http.{LISTENER}.cors.origin_valid",
    "rate_limit_ok": f"{RATE_LIMIT_STAT_PREFIX}.http_local_rate_limit.ok",
    "fault_delays": f"http.{LISTENER}.fault.delays_injected",
    "fault_aborts": f"http.{LISTENER}.fault.aborts_injected",
}


def _cores() -> dict[str, tuple[float, float, float]]:
    """Per core: (busy, steal, softirq) seconds so far, from /proc/stat (busy: user, nice,
    system, irq, softirq; not idle, iowait or steal)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name in (f"cpu{ENVOY_CORE}", f"cpu{LOAD_CORE}"):
            t = [int(x) for x in ticks]
            out[name[3:]] = ((t[0] + t[1] + t[2] + t[5] + t[6]) / CLK_TCK, t[7] / CLK_TCK, t[6] / CLK_TCK)
    return out


def measure(envoy: Envoy, seconds: int, connections: int, upstream: Envoy | None = None) -> dict[str, Any]:
    before = envoy.stats()
    up0 = upstream.cpu()[0] if upstream is not None else 0.0
    cores0 = _cores()
    cpu0, worker0 = envoy.cpu()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    t0 = time.monotonic()
    load = wrk(envoy.port, seconds, connections)
    wall = time.monotonic() - t0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, worker1 = envoy.cpu()
    cores1 = _cores()
    up1 = upstream.cpu()[0] if upstream is not None else 0.0
    after = envoy.stats()
    busy = {c: (cores1[c][0] - cores0[c][0]) / wall for c in cores1}
    steal = {c: (cores1[c][1] - cores0[c][1]) / wall for c in cores1}
    softirq = (cores1[ENVOY_CORE][2] - cores0[ENVOY_CORE][2]) / wall
    delta = {k: after.get(name, 0) - before.get(name, 0) for k, name in COUNTERS.items()}
    n = delta["completed"]
    cpu = cpu1 - cpu0
    wrk_busy = (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) / wall
    return {
        "requests": n,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "worker_cpu_s": round(worker1 - worker0, 3),
        "us_per_request": cpu / n * 1e6 if n else None,
        "worker_us_per_request": (worker1 - worker0) / n * 1e6 if n else None,
        "rps": n / wall,
        "envoy_core_busy": cpu / wall,
        # Each core: busy with anything but this bench (other processes, the idle Envoys'
        # timers), and stolen by the hypervisor. Softirqs (loopback packets) count as the
        # process they interrupt, mostly this bench's own.
        "envoy_core_others": busy[ENVOY_CORE] - cpu / wall,
        "envoy_core_softirq": softirq,
        "envoy_core_steal": steal[ENVOY_CORE],
        "load_core_busy": busy[LOAD_CORE],
        "load_core_others": busy[LOAD_CORE] - wrk_busy - (up1 - up0) / wall,
        "load_core_steal": steal[LOAD_CORE],
        "wrk_core_busy": wrk_busy,
        "upstream_core_busy": (up1 - up0) / wall,
        "counters": delta,
        "wrk": load,
        "loadavg_1m": _loadavg()[0],
    }


def contended(m: dict[str, Any], max_others: float) -> bool:
    return bool(
        max(m["envoy_core_others"], m["load_core_others"]) > max_others
        or max(m["envoy_core_steal"], m["load_core_steal"]) > max_others
    )


def triple(
    envoys: dict[tuple[str, str], Envoy],
    kind: str,
    order: list[str],
    slice_s: int,
    connections: int,
    upstream: Envoy | None,
    max_others: float,
    retries: int,
) -> tuple[list[dict[str, Any]], int]:
    """One slice of each variant, back to back in `order`; all three again (5 s later, at
    most `retries` times) while other work took more than `max_others` of either core during
    any of them: a neighbour on the Envoy's core takes its cycles and cache, one on the load
    core lowers the offered load; both raise Envoy's CPU per request. The last attempt is
    kept either way (marked). Returns the slices and the number of attempts dropped."""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(RETRY_PAUSE)  # a neighbour's burst often lasts a while
        slices = []
        for v in order:
            m = measure(envoys[kind, v], slice_s, connections, upstream)
            m.update(variant=v, contended=contended(m, max_others))
            slices.append(m)
        bad = [m for m in slices if m["contended"]]
        if not bad:
            return slices, attempt
        m = bad[0]
        print(
            f"  contended ({m['variant']}): others {m['envoy_core_others']:.2f} of the Envoy's core, "
            f"{m['load_core_others']:.2f} of the load core; steal {m['envoy_core_steal']:.2f}, "
            f"{m['load_core_steal']:.2f}",
            flush=True,
        )
    return slices, retries


# -- run -------------------------------------------------------------------------------------


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _with_ci(xs: list[float]) -> dict[str, Any]:
    """Spread, mean and a 95 % bootstrap interval of the mean (percentiles of 4,000 resampled
    means, seeded: the same data always gives the same interval)."""
    rng = random.Random(0)
    means = sorted(statistics.fmean(rng.choices(xs, k=len(xs))) for _ in range(4000))
    return _spread(xs) | {"mean": statistics.fmean(xs), "ci95": [means[99], means[3899]], "n": len(xs)}


def _quartiles(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": q[1], "p25": q[0], "p75": q[2], "min": min(xs), "max": max(xs), "n": len(xs)}


def aggregate(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's slices of one round, as one measurement."""
    n = sum(m["requests"] for m in slices)
    cpu = sum(m["cpu_s"] for m in slices)
    worker = sum(m["worker_cpu_s"] for m in slices)
    wall = sum(m["wall_s"] for m in slices)
    return {
        "requests": n,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "us_per_request": cpu / n * 1e6,
        "worker_us_per_request": worker / n * 1e6,
        "rps": n / wall,
        "envoy_core_busy": cpu / wall,
        "slices": len(slices),
        "slices_contended": sum(bool(m["contended"]) for m in slices),
        "non_2xx": sum(m["requests"] - m["counters"]["rq_2xx"] for m in slices),
        "counters": {k: sum(m["counters"][k] for m in slices) for k in COUNTERS},
    }


def summarise(rounds: list[dict[str, Any]], slices: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        rows = [r for r in rounds if r["kind"] == kind]
        if not rows:
            continue
        by: dict[str, dict[str, Any]] = {}
        for v in VARIANTS:
            mine = [r for r in rows if r["variant"] == v]
            by[v] = {
                "us_per_request": _spread([r["us_per_request"] for r in mine]),
                "worker_us_per_request": _spread([r["worker_us_per_request"] for r in mine]),
                "rps": _spread([r["rps"] for r in mine]),
                "envoy_core_busy": _spread([r["envoy_core_busy"] for r in mine]),
            }
        ratios: dict[str, Any] = {}
        for v in ("B", "C"):
            a = {r["round"]: r["us_per_request"] for r in rows if r["variant"] == "A"}
            per_round = [r["us_per_request"] / a[r["round"]] for r in rows if r["variant"] == v]
            a_t = {m["triple"]: m["us_per_request"] for m in slices if m["kind"] == kind and m["variant"] == "A"}
            per_triple = [
                m["us_per_request"] / a_t[m["triple"]] for m in slices if m["kind"] == kind and m["variant"] == v
            ]
            ratios[f"{v}/A"] = {
                "of_medians": by[v]["us_per_request"]["median"] / by["A"]["us_per_request"]["median"],
                "per_round": _with_ci(per_round),
                "per_triple": _quartiles(per_triple),
                # µs of Envoy CPU per request over A's, each round's own difference
                "us_added": _with_ci([r["us_per_request"] - a[r["round"]] for r in rows if r["variant"] == v]),
            }
        mine_slices = [m for m in slices if m["kind"] == kind]
        out[kind] = {
            "variants": by,
            "ratios": ratios,
            "triples_retried": sum(m["attempts_dropped"] for m in mine_slices if m["variant"] == "A"),
            "slices_kept_contended": sum(bool(m["contended"]) for m in mine_slices),
            "slices": len(mine_slices),
        }
    return out


def start_envoys(root: Path, kinds: tuple[str, ...], rnd: int, up_port: int) -> dict[tuple[str, str], Envoy]:
    """One Envoy per kind and variant, serving (stopped again if any fails to start)."""
    envoys: dict[tuple[str, str], Envoy] = {}
    for kind in kinds:
        for v in VARIANTS:
            port, admin = free_port(), free_port()
            cfg = bootstrap(kind, v, port, admin, up_port)
            envoys[kind, v] = Envoy(f"r{rnd}-{kind}-{v}", cfg, port, admin, ENVOY_CORE)
    try:
        for e in envoys.values():
            e.start(root)
        for e in envoys.values():
            e.wait_ready()
    except BaseException:
        stop_all(envoys.values())
        raise
    return envoys


def stop_all(envoys: Iterable[Envoy]) -> None:
    for e in envoys:
        e.stop()


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


SLICE_KEYS = (
    "requests",
    "wall_s",
    "cpu_s",
    "worker_cpu_s",
    "us_per_request",
    "worker_us_per_request",
    "rps",
    "envoy_core_busy",
    "envoy_core_others",
    "envoy_core_softirq",
    "envoy_core_steal",
    "load_core_busy",
    "load_core_others",
    "load_core_steal",
    "wrk_core_busy",
    "upstream_core_busy",
    "contended",
    "counters",
)


def _slim(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: round(m[k], 4) if isinstance(m[k], float) else m[k] for k in SLICE_KEYS}
    if m["wrk"]["non_2xx"] or m["wrk"]["socket_errors"]:
        out["wrk"] = m["wrk"]
    return out


def run(
    rounds: int,
    seconds: int,
    slice_s: int,
    connections: int,
    kinds: tuple[str, ...],
    max_others: float,
    retries: int,
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    per_round = max(1, round(seconds / slice_s))
    root = Path(tempfile.mkdtemp(prefix="lbcp-bench-filters-"))
    up_port, up_admin = free_port(), free_port()
    upstream = Envoy("upstream", upstream_bootstrap(up_port, up_admin), up_port, up_admin, LOAD_CORE)
    envoys: dict[tuple[str, str], Envoy] = {}
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    names = list(VARIANTS)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "loadavg_before": _loadavg(),
        },
        "envoy": version.strip().split("version: ")[-1],
        "setup": {
            "rounds": rounds,
            "seconds_per_variant_per_round": slice_s * per_round,
            "slice_s": slice_s,
            "wrk": f"taskset -c {LOAD_CORE} wrk -t1 -c{connections} -d{slice_s}s -H 'Origin: {ORIGIN}'",
            "envoy": f"taskset -c {ENVOY_CORE} envoy --concurrency 1",
            "variants": VARIANTS,
            "kinds": list(kinds),
            "order": "each round (fresh Envoys): per kind, triples of slices A, B, C, each starting one variant later",
            "max_others": max_others,
            "retries": retries,
        },
        "rounds": [],
        "slices": [],
    }
    try:
        if "proxy" in kinds:
            upstream.start(root)
            upstream.wait_ready()
        print(f"{rounds} rounds of {per_round} x {slice_s} s per variant and kind", flush=True)
        t = 0
        for rnd in range(rounds):
            # Fresh Envoys every round: one instance's own layout moves its CPU per request by
            # a few %, as much as some of what is measured; new instances make that round noise.
            envoys = start_envoys(root, kinds, rnd, up_port)
            for (kind, _v), e in envoys.items():  # warm-up, not recorded
                measure(e, slice_s, connections, upstream if kind == "proxy" else None)
            for kind in kinds:
                up = upstream if kind == "proxy" else None
                kept: list[dict[str, Any]] = []
                for _ in range(per_round):
                    # A, B, C, A, B, C...: each triple starts one variant later, so no variant
                    # is always first or last.
                    order = names[t % len(names) :] + names[: t % len(names)]
                    slices, dropped = triple(envoys, kind, order, slice_s, connections, up, max_others, retries)
                    for m in slices:
                        row = {"round": rnd, "kind": kind, "variant": m["variant"], "triple": t}
                        row |= _slim(m) | {"attempts_dropped": dropped}
                        kept.append(row)
                        result["slices"].append(row)
                    t += 1
                line = []
                for v in names:
                    agg = aggregate([m for m in kept if m["variant"] == v])
                    result["rounds"].append({"round": rnd, "kind": kind, "variant": v} | agg)
                    line.append(f"{v} {agg['us_per_request']:.2f} ({agg['rps']:,.0f}/s)")
                print(f"round {rnd} {kind:<6} us/req: " + ", ".join(line), flush=True)
            stop_all(envoys.values())
    finally:
        stop_all([*envoys.values(), upstream])
    result["machine"]["loadavg_after"] = _loadavg()
    result["summary"] = summarise(result["rounds"], result["slices"])
    shutil.rmtree(root, ignore_errors=True)
    return result


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'route':<7} {'variant':<24} {'us/req p50':>10} {'min..max':>14} {'req/s p50':>9} "
        f"{'x A: per round mean [95% CI]':>29} {'range':>11} {'per triple p50':>15} {'+us/req [95% CI]':>20}"
    ]
    for kind, s in result["summary"].items():
        for v, label in VARIANTS.items():
            d = s["variants"][v]
            us = d["us_per_request"]
            ratio = s["ratios"].get(f"{v}/A")
            per_s, range_s, tri_s, add_s = "1", "", "", ""
            if ratio:
                per = ratio["per_round"]
                per_s = f"{per['mean']:.3f} [{per['ci95'][0]:.3f}, {per['ci95'][1]:.3f}]"
                range_s = f"{per['min']:.2f}-{per['max']:.2f}"
                tri_s = f"{ratio['per_triple']['median']:.3f}"
                add = ratio["us_added"]
                add_s = f"{add['mean']:+.1f} [{add['ci95'][0]:+.1f}, {add['ci95'][1]:+.1f}]"
            lines.append(
                f"{kind:<7} {v + ' ' + label:<24} {us['median']:>10.2f} {us['min']:>6.2f}..{us['max']:<6.2f} "
                f"{d['rps']['median']:>9,.0f} {per_s:>29} {range_s:>11} {tri_s:>15} {add_s:>20}"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=20, help="each with fresh Envoys")
    ap.add_argument("--seconds", type=int, default=6, help="of load per variant and kind, each round")
    ap.add_argument(
        "--slice", type=int, default=2, help="seconds per wrk run: the rounds' seconds interleave in slices"
    )
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--kinds", default=",".join(KINDS), help="direct,proxy (default both)")
    ap.add_argument(
        "--max-others", type=float, default=0.10, help="measure again while other work takes more of a core"
    )
    ap.add_argument("--retries", type=int, default=3, help="at most this many times per triple")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "http_filters.json")
    args = ap.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or any(k not in KINDS for k in kinds):
        ap.error(f"--kinds: some of {','.join(KINDS)}")
    if args.rounds < 1 or args.seconds < 1 or not 1 <= args.slice <= args.seconds:
        ap.error("--rounds >= 1, --seconds >= 1, 1 <= --slice <= --seconds")
    # A SIGTERM ends the run through its `finally`, which stops every Envoy it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args.rounds, args.seconds, args.slice, args.connections, kinds, args.max_others, max(0, args.retries))
    out: Path = args.out
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    for kind, s in result["summary"].items():
        print(
            f"{kind}: {s['triples_retried']} triples measured again (contended), "
            f"{s['slices_kept_contended']} of {s['slices']} slices kept contended"
        )
    print(f"\nload average before {result['machine']['loadavg_before']}, after {result['machine']['loadavg_after']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
