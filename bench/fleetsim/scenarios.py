"""The fleet-scale scenarios. Each starts its own stack, prints one summary line and returns
a JSON-able dict (the CLI writes it to bench/results/fleetsim-<scenario>.json)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from bench.fleetsim.fleet import Fleet, specs
from bench.fleetsim.peer import PeerStack
from bench.fleetsim.stack import Stack, cpu_seconds, rss_bytes

CHANGE_PORT = 20000  # changed/added backends get ports from here: how clients recognise them


@contextlib.contextmanager
def _running(
    replicas: int = 1, registry_interval: float = 0.2, xds_workers: int = 1, api_workers: int = 1, against: str = "lbcp"
) -> Iterator[tuple[Any, httpx.Client, list[Fleet]]]:
    """A started stack (lbcp's, or with `against` a peer's: `PeerStack`) and an API client;
    fleets appended to the list are stopped first."""
    stack: Stack | PeerStack
    if against == "lbcp":
        stack = Stack(replicas, registry_interval=registry_interval, xds_workers=xds_workers, api_workers=api_workers)
    else:
        stack = PeerStack(against)
    stack.start()
    fleets: list[Fleet] = []
    try:
        with httpx.Client(base_url=stack.api_url, timeout=120) as api:
            yield stack, api, fleets
    finally:
        for f in fleets:
            f.stop()
        stack.stop()


def _started_fleet(stack: Stack, fleets: list[Fleet], n: int, workers: int) -> Fleet:
    """`n` clients (half delta) on the first replica, configured and settled."""
    fleet = Fleet(stack.targets[0], specs(n, 0.5), workers)
    fleets.append(fleet)
    fleet.start(timeout=600)
    time.sleep(1.0)
    return fleet


def scrape(stack: Stack) -> dict[str, float]:
    """Every replica's lbcp_ metrics, summed over replicas and labels (but `type`)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = "\n".join(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text for p in stack.all_metrics_ports)
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            key = smp.name + ("{type=" + smp.labels["type"] + "}" if "type" in smp.labels else "")
            out[key] = out.get(key, 0.0) + smp.value
    return out


def _mean(m0: dict, m1: dict, name: str) -> float:
    base, _, label = name.partition("{")
    label = "{" + label if label else ""
    count = m1.get(f"{base}_count{label}", 0) - m0.get(f"{base}_count{label}", 0)
    total = m1.get(f"{base}_sum{label}", 0) - m0.get(f"{base}_sum{label}", 0)
    return total / count if count else float("nan")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def seed(api: httpx.Client, clusters: int, backends: int) -> None:
    """`clusters` maglev clusters sharing `backends` backends, a listener and a route per cluster."""
    per = backends // clusters
    ops: list[dict] = []
    for c in range(clusters):
        name = f"c{c:03d}"
        ops.append({"op": "put", "kind": "cluster", "name": name, "body": {"load_balancer": {"type": "maglev"}}})
        ops.append(
            {
                "op": "replace_backends",
                "cluster": name,
                "body": [
                    {
                        "name": f"{name}-b{i:04d}",
                        "address": f"10.{c // 250}.{c % 250}.{i % 250 + 1}",
                        "port": 8000 + i // 250,
                    }
                    for i in range(per)
                ],
            }
        )
    ops.append({"op": "put", "kind": "listener", "name": "http", "body": {"address": "127.0.0.1", "port": 10000}})
    for c in range(clusters):
        ops.append(
            {
                "op": "put",
                "kind": "route",
                "name": f"r{c:03d}",
                "body": {
                    "listener": "http",
                    "match": {"prefix": f"/c{c:03d}"},
                    "backends": [{"cluster": f"c{c:03d}"}],
                    "hash_policies": [{"type": "header", "name": "x-user-id"}],
                },
            }
        )
    api.post("/v1/batch", json={"operations": ops}).raise_for_status()


def _bytes_by_protocol(before: list[dict], after: list[dict], changes: int) -> dict[str, float]:
    b0 = {c["node_id"]: c["bytes"] for c in before}
    out: dict[str, list[float]] = {"delta": [], "sotw": []}
    for c in after:
        out["delta" if c["delta"] else "sotw"].append((c["bytes"] - b0[c["node_id"]]) / max(changes, 1))
    return {k: statistics.mean(v) if v else 0.0 for k, v in out.items()}


def _responses(before: list[dict], after: list[dict]) -> float:
    b0 = {c["node_id"]: c["responses"] for c in before}
    return statistics.mean(c["responses"] - b0[c["node_id"]] for c in after)


# -- 1. convergence ------------------------------------------------------------------------------


def convergence(
    n: int,
    changes: int = 200,
    rate: float = 20.0,
    clusters: int = 50,
    backends: int = 1000,
    delta_share: float = 0.5,
    workers: int = 2,
    registry_interval: float = 0.2,
    replicas: int = 1,
    xds_workers: int = 1,
    against: str = "lbcp",
) -> dict:
    """`against`: "lbcp", or a peer control plane (bench/fleetsim/peer.py) in its place: one
    process, no etcd, no lbcp metrics (the result has none of lbcp's metrics for it)."""
    with _running(replicas, registry_interval, xds_workers, against=against) as (stack, api, fleets):
        lbcp = against == "lbcp"
        seed(api, clusters, backends)
        pids, api_pid = [r.pid for r in stack.replicas], stack.api.pid if lbcp else None
        time.sleep(1.0)
        rss0 = sum(rss_bytes(p) for p in pids)
        fleet = Fleet(stack.targets, specs(n, delta_share), workers)
        fleets.append(fleet)
        connect = fleet.start(timeout=600)
        time.sleep(2.0)
        rss1 = sum(rss_bytes(p) for p in pids)
        c0, cpu0 = fleet.counters(), sum(cpu_seconds(p) for p in pids)
        api0, m0 = (cpu_seconds(api_pid), scrape(stack)) if api_pid is not None else (0.0, {})
        t2xx: dict[int, float] = {}
        start = time.monotonic()
        for i in range(changes):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            port = CHANGE_PORT + i
            r = api.put(
                f"/v1/clusters/c{i % clusters:03d}/backends/chg-{i:05d}", json={"address": "127.0.0.2", "port": port}
            )
            r.raise_for_status()
            t2xx[port] = time.monotonic()
        ports = list(t2xx)
        converged = fleet.wait_seen(ports, timeout=300)
        cpu1, c1 = sum(cpu_seconds(p) for p in pids), fleet.counters()
        api1, m1 = (cpu_seconds(api_pid), scrape(stack)) if api_pid is not None else (0.0, {})
        seen = fleet.seen(ports)
        per_change = [max(t for t in seen[p] if t is not None) - t2xx[p] for p in ports if any(seen[p])]
        per_client = [t - t2xx[p] for p in ports for t in seen[p] if t is not None]
        result = {
            "scenario": "convergence",
            "against": against,
            "clients": n,
            "replicas": replicas,
            "xds_workers": xds_workers,
            "delta_share": delta_share,
            "clusters": clusters,
            "backends": backends,
            "changes": changes,
            "rate_per_s": rate,
            "converged": converged,
            "connect_seconds": connect,
            "last_client_ms": {
                "p50": pct(per_change, 50) * 1e3,
                "p99": pct(per_change, 99) * 1e3,
                "max": max(per_change) * 1e3,
            },
            "per_client_ms": {"p50": pct(per_client, 50) * 1e3, "p99": pct(per_client, 99) * 1e3},
            "replica_cpu_ms_per_change": (cpu1 - cpu0) / changes * 1e3,
            "replica_cpu_us_per_client_change": (cpu1 - cpu0) / changes / n * 1e6,
            "api_cpu_ms_per_change": (api1 - api0) / changes * 1e3 if lbcp else None,
            "rss_idle_mb": rss0 / 2**20,
            "rss_with_clients_mb": rss1 / 2**20,
            "rss_per_client_kb": (rss1 - rss0) / n / 1024,
            "bytes_per_change_per_client": _bytes_by_protocol(c0, c1, changes),
            "violations": sum(c["violations"] for c in c1),
            "responses_per_client": _responses(c0, c1),  # as the clients counted them, every type
        }
        if not lbcp:  # the rest is lbcp's own metrics
            return _print_peer(result)
        result |= {
            "snapshots_published": (m1["lbcp_snapshot_builds_total"] - m0["lbcp_snapshot_builds_total"]) / replicas,
            "eds_pushes_per_client": (m1["lbcp_xds_pushes_total{type=eds}"] - m0["lbcp_xds_pushes_total{type=eds}"])
            / n,
            # Where the time goes, from the replica's own histograms (means over the run).
            "replica_means_ms": {
                k: _mean(m0, m1, name) * 1e3
                for k, name in (
                    ("debounce", "lbcp_snapshot_debounce_seconds"),
                    ("build", "lbcp_snapshot_build_seconds"),
                    ("publish_to_write_eds", "lbcp_xds_push_queue_seconds{type=eds}"),
                    ("write_to_ack_eds", "lbcp_xds_ack_seconds{type=eds}"),
                    ("change_to_synced", "lbcp_xds_convergence_seconds"),
                )
            },
        }
        lc = result["last_client_ms"]
        b = result["bytes_per_change_per_client"]
        print(
            f"convergence N={n} on {replicas} replica(s): API 2xx -> last client p50 {lc['p50']:.0f} ms, p99 "
            f"{lc['p99']:.0f} ms, max {lc['max']:.0f} ms; "
            f"replica CPU {result['replica_cpu_ms_per_change']:.1f} ms/change "
            f"({result['replica_cpu_us_per_client_change']:.0f} µs per client); RSS {result['rss_per_client_kb']:.0f} "
            "KB/client; "
            f"bytes/change/client delta {b['delta']:.0f}, SotW {b['sotw']:.0f}; {result['snapshots_published']:.0f} "
            "snapshots, "
            f"{result['eds_pushes_per_client']:.0f} EDS pushes/client for {changes} changes; violations "
            f"{result['violations']}; "
            f"replica means (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in result["replica_means_ms"].items()),
            flush=True,
        )
        return result


def _print_peer(result: dict[str, Any]) -> dict[str, Any]:
    lc, b = result["last_client_ms"], result["bytes_per_change_per_client"]
    print(
        f"convergence N={result['clients']} against {result['against']}: API 2xx -> last client p50 {lc['p50']:.0f} "
        f"ms, p99 {lc['p99']:.0f} ms, max {lc['max']:.0f} ms; CPU {result['replica_cpu_ms_per_change']:.1f} "
        f"ms/change ({result['replica_cpu_us_per_client_change']:.0f} µs per client); RSS "
        f"{result['rss_per_client_kb']:.0f} KB/client, idle {result['rss_idle_mb']:.1f} MB; bytes/change/client "
        f"delta {b['delta']:.0f}, SotW {b['sotw']:.0f}; {result['responses_per_client']:.1f} responses/client for "
        f"{result['changes']} changes; violations {result['violations']}",
        flush=True,
    )
    return result


# What `versus` compares, from each run's result: (label, key path, unit).
_VERSUS_METRICS = (
    ("convergence p50", ("last_client_ms", "p50"), "ms"),
    ("convergence p99", ("last_client_ms", "p99"), "ms"),
    ("CPU per client per change", ("replica_cpu_us_per_client_change",), "µs"),
    ("RSS per client", ("rss_per_client_kb",), "KB"),
    ("idle RSS", ("rss_idle_mb",), "MB"),
)


def versus(run: Callable[[str], dict[str, Any]], against: str, rounds: int = 2) -> dict[str, Any]:
    """`run(system)` (a scenario for one system: "lbcp" or the peer) `rounds` times each,
    interleaved (lbcp, peer, lbcp, peer, ...) on the same simulator and cores; prints each
    system's medians over the rounds and the ratios lbcp / peer."""
    runs: dict[str, list[dict[str, Any]]] = {"lbcp": [], against: []}
    for i in range(rounds):
        for system in runs:
            print(f"-- round {i + 1}/{rounds}: {system}", flush=True)
            runs[system].append(run(system))

    def value(r: dict[str, Any], path: tuple[str, ...]) -> float:
        v: Any = r
        for k in path:
            v = v[k]
        return float(v)

    medians = {
        system: {label: statistics.median(value(r, path) for r in rs) for label, path, _ in _VERSUS_METRICS}
        for system, rs in runs.items()
    }
    ratios = {
        label: medians["lbcp"][label] / medians[against][label] if medians[against][label] else float("nan")
        for label, _, _ in _VERSUS_METRICS
    }
    width = max(len(label) for label, _, _ in _VERSUS_METRICS)
    print(f"{'median of ' + str(rounds) + ' rounds':<{width + 5}} {'lbcp':>12} {against:>18} {'lbcp/peer':>10}")
    for label, _, unit in _VERSUS_METRICS:
        lb, peer = medians["lbcp"][label], medians[against][label]
        print(f"{label + ' (' + unit + ')':<{width + 5}} {lb:>12.1f} {peer:>18.1f} {ratios[label]:>9.2f}x", flush=True)
    return {"against": against, "rounds": rounds, "medians": medians, "ratios_lbcp_over_peer": ratios, "runs": runs}


# -- 2. burst ------------------------------------------------------------------------------------


def burst(
    n: int = 500, writes: int = 5000, clusters: int = 50, backends: int = 1000, workers: int = 2, concurrency: int = 16
) -> dict:
    with _running() as (stack, api, fleets):
        seed(api, clusters, backends)
        fleet = _started_fleet(stack, fleets, n, workers)
        out: dict = {"scenario": "burst", "clients": n, "writes": writes}

        # (a) one batch of `writes` backend puts: one etcd transaction.
        c0 = fleet.counters()
        ports = [CHANGE_PORT + i for i in range(writes)]
        ops = [
            {
                "op": "put",
                "kind": "backend",
                "cluster": f"c{i % clusters:03d}",
                "name": f"burst-{i:05d}",
                "body": {"address": "127.0.0.2", "port": p},
            }
            for i, p in enumerate(ports)
        ]
        t0 = time.monotonic()
        api.post("/v1/batch", json={"operations": ops}).raise_for_status()
        t_2xx = time.monotonic()
        ok = fleet.wait_seen(ports, timeout=300)
        t_all = time.monotonic()
        c1 = fleet.counters()
        out["batch"] = {
            "api_ms": (t_2xx - t0) * 1e3,
            "converged_after_2xx_ms": (t_all - t_2xx) * 1e3,
            "converged": ok,
            "responses_per_client": _responses(c0, c1),
        }

        # (b) the same number of separate writes, `concurrency` at a time.
        ports2 = [CHANGE_PORT + writes + i for i in range(writes)]

        async def write_all() -> float:
            sem = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=120) as ac:

                async def one(i: int, p: int) -> None:
                    async with sem:
                        r = await ac.put(
                            f"/v1/clusters/c{i % clusters:03d}/backends/single-{i:05d}",
                            json={"address": "127.0.0.3", "port": p},
                        )
                        r.raise_for_status()

                await asyncio.gather(*(one(i, p) for i, p in enumerate(ports2)))
            return time.monotonic()

        t0 = time.monotonic()
        t_last = asyncio.run(write_all())
        ok = fleet.wait_seen(ports2, timeout=600)
        t_all = time.monotonic()
        c2 = fleet.counters()
        out["separate"] = {
            "writes_seconds": t_last - t0,
            "writes_per_s": writes / (t_last - t0),
            "converged_after_last_2xx_ms": (t_all - t_last) * 1e3,
            "converged": ok,
            "responses_per_client": _responses(c1, c2),
        }
        out["violations"] = sum(c["violations"] for c in c2)
        a, s = out["batch"], out["separate"]
        print(
            f"burst N={n}: one batch of {writes}: API {a['api_ms']:.0f} ms, all clients "
            f"{a['converged_after_2xx_ms']:.0f} ms later, "
            f"{a['responses_per_client']:.1f} responses/client; {writes} writes: {s['writes_per_s']:.0f}/s, all "
            "clients "
            f"{s['converged_after_last_2xx_ms']:.0f} ms after the last, {s['responses_per_client']:.0f} "
            "responses/client "
            f"(coalescing: {writes / max(s['responses_per_client'], 1):.0f} writes per push)",
            flush=True,
        )
        return out


# -- 3. reconnect storm ----------------------------------------------------------------------------


def reconnect(n: int = 1000, clusters: int = 50, backends: int = 1000, workers: int = 2) -> dict:
    with _running() as (stack, api, fleets):
        seed(api, clusters, backends)
        fleet = _started_fleet(stack, fleets, n, workers)
        c0 = fleet.counters()
        t_kill = time.monotonic()
        # The replica goes away; while it is down intent changes; it comes back on the same port.
        stack.replicas[0].kill()
        api.put(
            "/v1/clusters/c000/backends/during-outage", json={"address": "127.0.0.2", "port": CHANGE_PORT}
        ).raise_for_status()
        t_ready = stack.restart_replica(0)
        ok = fleet.wait_seen([CHANGE_PORT], timeout=300)
        t_all = time.monotonic()
        c1 = fleet.counters()
        result = {
            "scenario": "reconnect",
            "clients": n,
            "converged": ok,
            "replica_restart_seconds": t_ready - t_kill,
            "all_served_after_restart_seconds": t_all - t_ready,
            "reconnects": sum(c["reconnects"] for c in c1) - sum(c["reconnects"] for c in c0),
            "violations": sum(c["violations"] for c in c1),
            "bytes_per_client": _bytes_by_protocol(c0, c1, 1),
        }
        print(
            f"reconnect storm N={n}: replica back in {result['replica_restart_seconds']:.1f} s, all {n} clients served "
            f"{result['all_served_after_restart_seconds']:.2f} s later; {result['reconnects']} reconnects; "
            f"violations {result['violations']}; bytes/client delta {result['bytes_per_client']['delta']:.0f}, "
            f"SotW {result['bytes_per_client']['sotw']:.0f}",
            flush=True,
        )
        return result


# -- 4. big EDS ------------------------------------------------------------------------------------


def big_eds(n: int = 200, endpoints: int = 10_000, workers: int = 2) -> dict:
    with _running() as (stack, api, fleets):
        seed(api, 10, 100)
        api.put("/v1/clusters/big", json={"load_balancer": {"type": "maglev"}}).raise_for_status()
        api.put(
            "/v1/clusters/big/backends",
            json=[
                {"name": f"big-{i:05d}", "address": f"10.200.{i // 250}.{i % 250 + 1}", "port": 9000}
                for i in range(endpoints)
            ],
        ).raise_for_status()
        fleet = _started_fleet(stack, fleets, n, workers)
        out: dict = {"scenario": "big_eds", "clients": n, "endpoints": endpoints}
        for label, cluster, port in (
            ("big cluster +1 endpoint", "big", CHANGE_PORT),
            ("small cluster +1 endpoint", "c000", CHANGE_PORT + 1),
        ):
            c0 = fleet.counters()
            api.put(
                f"/v1/clusters/{cluster}/backends/x-{port}", json={"address": "127.0.0.2", "port": port}
            ).raise_for_status()
            t0 = time.monotonic()
            ok = fleet.wait_seen([port], timeout=120)
            took = time.monotonic() - t0
            c1 = fleet.counters()
            out[label] = {"converged": ok, "ms": took * 1e3, "bytes_per_client": _bytes_by_protocol(c0, c1, 1)}
        big, small = out["big cluster +1 endpoint"], out["small cluster +1 endpoint"]
        print(
            f"big EDS N={n}, {endpoints} endpoints: +1 endpoint in it -> "
            f"{big['bytes_per_client']['delta'] / 1024:.0f} KiB/client "
            f"(delta), {big['bytes_per_client']['sotw'] / 1024:.0f} KiB (SotW), all in {big['ms']:.0f} ms; +1 in a "
            "small "
            f"cluster -> {small['bytes_per_client']['delta']:.0f} B (delta), {small['bytes_per_client']['sotw']:.0f} "
            "B (SotW), "
            f"{small['ms']:.0f} ms",
            flush=True,
        )
        return out


# -- 5. API write rate -----------------------------------------------------------------------------


def _api_writer(api_url: str, w: int, seconds: float, done: Any) -> None:
    """One writer process: sequential backend PUTs on one keep-alive connection (stdlib
    http.client: httpx's async pool, shared by 16 writers in one process, capped the rate
    at ~270/s however fast the API was)."""
    import http.client
    import json as _json

    host, port = api_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"content-type": "application/json"}
    i, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = _json.dumps({"address": "127.0.0.2", "port": 1000 + i % 50000})
        conn.request("PUT", f"/v1/clusters/w/backends/w{w}-{i}", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status not in (200, 201):
            raise RuntimeError(f"PUT answered {resp.status}")
        i += 1
    with done.get_lock():
        done.value += i


def write_rate(seconds: float = 10.0, concurrency: int = 16, api_workers: int = 1, replicas: int = 1) -> dict:
    """Backend PUTs per second through the API (16 writer processes); `replicas` xDS
    replicas watch and rebuild meanwhile on the same cores (0: the API and etcd alone)."""
    import multiprocessing

    with _running(replicas, api_workers=api_workers) as (stack, api, fleets):
        api.put("/v1/clusters/w", json={}).raise_for_status()

        def api_writes() -> int:
            ctx = multiprocessing.get_context("spawn")
            done = ctx.Value("i", 0)
            procs = [
                ctx.Process(target=_api_writer, args=(stack.api_url, w, seconds, done)) for w in range(concurrency)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join(seconds + 60)
            if any(p.exitcode != 0 for p in procs):
                raise RuntimeError("an API writer failed")
            return int(done.value)

        async def raw_puts() -> int:
            import aetcd

            host, port = stack.etcd.endpoints[0].split(":")
            done = 0
            deadline = time.monotonic() + seconds
            async with aetcd.Client(host=host, port=int(port)) as client:

                async def writer(w: int) -> None:
                    nonlocal done
                    i = 0
                    while time.monotonic() < deadline:
                        await client.put(f"/raw/w{w}-{i}".encode(), b'{"address":"127.0.0.2","port":1000}')
                        done += 1
                        i += 1

                await asyncio.gather(*(writer(w) for w in range(concurrency)))
            return done

        api_n = api_writes()
        raw_n = asyncio.run(raw_puts())
        result = {
            "scenario": "write_rate",
            "seconds": seconds,
            "concurrency": concurrency,
            "api_workers": api_workers,
            "xds_replicas_on_the_same_cores": replicas,
            "writer_processes": concurrency,
            "api_writes_per_s": api_n / seconds,
            "etcd_puts_per_s": raw_n / seconds,
        }
        result["ratio"] = result["api_writes_per_s"] / result["etcd_puts_per_s"]
        print(
            f"write rate ({concurrency} writer processes, {api_workers} API worker(s), {seconds:.0f} s): "
            f"API {result['api_writes_per_s']:.0f} backend "
            "writes/s, "
            f"raw etcd (aetcd) {result['etcd_puts_per_s']:.0f} puts/s: {result['ratio'] * 100:.0f}%",
            flush=True,
        )
        return result


# -- 6. connect storm ----------------------------------------------------------------------------


def connect_storm(n: int = 2000, runs: int = 5, workers: int = 2, timeout: float = 90.0) -> dict:
    """`n` clients (half delta) connect at once to a fresh replica serving the 50-cluster
    intent, `runs` times: the seconds until the last one is configured, and every stream
    that ended before (the simulator reconnects it; issue 18: none should), with why, as
    the client saw it."""
    out = []
    for _ in range(runs):
        with _running() as (stack, api, fleets):
            seed(api, 50, 1000)
            fleet = Fleet(stack.targets, specs(n, 0.5), workers)
            fleets.append(fleet)
            started = time.monotonic()
            try:
                configured: float | None = fleet.start(timeout=timeout)
            except Exception:  # the worker's timeout: some client never got its config
                configured = None
            counters = fleet.counters()
            ended: dict[str, int] = {}
            for c in counters:
                for why, k in c.get("ended", {}).items():
                    ended[why] = ended.get(why, 0) + k
            run = {
                "all_configured_seconds": configured,
                "waited_seconds": time.monotonic() - started,
                "streams_ended_early": sum(c["reconnects"] for c in counters),
                "ended": ended,
            }
            print(f"connect storm N={n}: {run}", flush=True)
            out.append(run)
    return {"scenario": "connect-storm", "clients": n, "runs": out}


def _etcd_counts(stack: Stack) -> dict[str, float]:
    """etcd's own counters of writes and its database size (its /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    endpoint = stack.etcd.endpoints[0]
    url = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
    text = httpx.get(f"{url}/metrics", timeout=10).text
    want = {"etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total", "etcd_mvcc_db_total_size_in_bytes"}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name in want:
                out[smp.name] = out.get(smp.name, 0.0) + smp.value
    return out


def idle(n: int = 2000, seconds: float = 60.0, replicas: int = 2, workers: int = 2) -> dict:
    """Issue 27's idle flood: `n` clients (half delta) spread over `replicas` replicas take
    their config and then only hold their streams. Over `seconds`: etcd's writes per second
    (puts, deletes, txns), the registry's lapses (lease or claims lost, from the replicas'
    logs), the fewest records `/v1/fleet` listed at any read (every record must stay), and
    the replicas' CPU and RSS."""
    with _running(replicas=replicas) as (stack, api, fleets):
        seed(api, 5, 10)
        fleet = Fleet(stack.targets, specs(n, 0.5), workers)
        fleets.append(fleet)
        started = time.monotonic()
        configured = fleet.start(timeout=600)
        time.sleep(5.0)  # the registry's first writes of every stream settle
        e0, c0 = _etcd_counts(stack), sum(cpu_seconds(r.pid) for r in stack.replicas)
        t0 = time.monotonic()
        fewest, reads = n, 0
        while time.monotonic() - t0 < seconds:
            nodes = api.get("/v1/fleet").json()["nodes"]
            fewest, reads = min(fewest, len(nodes)), reads + 1
            time.sleep(1.0)
        dt = time.monotonic() - t0
        e1, c1 = _etcd_counts(stack), sum(cpu_seconds(r.pid) for r in stack.replicas)
        logs = "".join((stack.root / f"xds{i}.log").read_text(errors="replace") for i in range(replicas))
        out = {
            "scenario": "idle",
            "clients": n,
            "replicas": replicas,
            "seconds": round(dt, 1),
            "configured_seconds": round(configured, 1),
            "connect_to_measure_seconds": round(t0 - started, 1),
            "etcd_puts_per_s": round((e1["etcd_mvcc_put_total"] - e0["etcd_mvcc_put_total"]) / dt, 1),
            "etcd_deletes_per_s": round((e1["etcd_mvcc_delete_total"] - e0["etcd_mvcc_delete_total"]) / dt, 1),
            "etcd_txns_per_s": round((e1["etcd_mvcc_txn_total"] - e0["etcd_mvcc_txn_total"]) / dt, 1),
            "etcd_db_mb": round(e1["etcd_mvcc_db_total_size_in_bytes"] / 2**20, 1),
            "lease_lapses": logs.count("fleet registry lease expired"),
            "claim_lapses": logs.count("node-id claims expired"),
            "fewest_records": fewest,
            "fleet_reads": reads,
            "replica_cpu_percent": round(100 * (c1 - c0) / dt, 1),
            "replica_rss_mb": round(sum(rss_bytes(r.pid) for r in stack.replicas) / 2**20, 1),
        }
        print(f"idle N={n}: {out}", flush=True)
        return out
