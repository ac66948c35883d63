"""Issue 28: the intent at scale.

1. Write rate per kind (clusters, backends, listeners, routes) through the admin API (a
   separate process, uvicorn, over a real etcd), `concurrency` requests in flight from one
   asyncio client, with `size` objects of that kind already there (seeded by `POST
   /v1/batch`, thousands of operations a transaction: etcd runs with --max-txn-ops 16384,
   api.localcluster.procs). Each (kind, size) gets a fresh stack; then `writes` NEW objects
   of that kind are created, as many as fit in `budget` seconds (partial rates are reported
   as such). Existing objects: clusters `{}`; backends of one cluster; listeners on
   127.0.0.1, distinct high ports; routes on one http listener over 4 clusters.
2. Propagation at scale: a `clusters` x `backends` intent with `routes` routes (loaded by
   batches), one replica, `envoys` real Envoys on it; `changes` backend additions one at a
   time: API 2xx -> every Envoy's admin shows the new endpoint (its EDS config dump, name
   filtered), p50/p99, beside the same on a small intent; the replica's CPU per change (its
   /proc stat, with its idle CPU over the same time subtracted as well), API and replica RSS,
   and a fresh replica process's time from exec to its first client holding the full config
   (one simulated delta Envoy, bench.fleetsim.client, in its own process).

Every loop is bounded in count and in time: a slow system gives partial numbers, not a hang.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx

from bench.fleetsim.fleet import Fleet, specs
from bench.fleetsim.stack import Stack, cpu_seconds, listening, rss_bytes

KINDS = ("clusters", "backends", "listeners", "routes")
SEED_CHUNK = 5000  # operations per POST /v1/batch (the API takes 10,000; bodies stay < 8 MiB)
LISTENER_PORT0 = 20000  # listeners get ports from here, wrapping onto 127.0.1.1, 127.0.2.1, ...
LISTENER_PORTS = 40000
ROUTE_CLUSTERS = 4
PROP_CLUSTER = "c00000"  # the propagation benchmark adds its backends here (route r00000 uses it)
PROP_PORT0 = 20000  # ...on 127.0.0.1, ports from here


def pct_ms(xs: list[float], p: float) -> float | None:
    """The p-th percentile of `xs` (seconds) in milliseconds; None if there is none."""
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1e3, 1) if xs else None


def _listener_addr(i: int) -> tuple[str, int]:
    return f"127.0.{i // LISTENER_PORTS}.1", LISTENER_PORT0 + i % LISTENER_PORTS


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# -- what is written --------------------------------------------------------------------------


def _setup_ops(kind: str) -> list[dict]:
    """What each kind's objects need to exist first."""
    if kind == "backends":
        return [{"op": "put", "kind": "cluster", "name": "big", "body": {}}]
    if kind == "routes":
        port = LISTENER_PORT0 + LISTENER_PORTS  # not one of the listeners' ports
        return [{"op": "put", "kind": "cluster", "name": f"rc{c}", "body": {}} for c in range(ROUTE_CLUSTERS)] + [
            {"op": "put", "kind": "listener", "name": "http", "body": {"address": "127.0.0.1", "port": port}}
        ]
    return []


def _object(kind: str, name: str, i: int) -> tuple[str, dict]:
    """Object number i of `kind` (unique over a stack: its name, port, prefix): path, body."""
    if kind == "clusters":
        return f"/v1/clusters/{name}", {}
    if kind == "backends":
        return f"/v1/clusters/big/backends/{name}", {"address": _ip(i), "port": 8080}
    if kind == "listeners":
        addr, port = _listener_addr(i)
        return f"/v1/listeners/{name}", {"address": addr, "port": port}
    if kind == "routes":
        body = {
            "listener": "http",
            "match": {"prefix": f"/{name}"},
            "backends": [{"cluster": f"rc{i % ROUTE_CLUSTERS}"}],
        }
        return f"/v1/routes/{name}", body
    raise ValueError(kind)


def _seed_op(kind: str, i: int) -> dict:
    """The batch operation for existing object number i of `kind`."""
    name = f"s{i:06d}"
    _, body = _object(kind, name, i)
    op = {"op": "put", "kind": kind[:-1], "name": name, "body": body}
    if kind == "backends":
        op["cluster"] = "big"
    return op


def post_batches(api: httpx.Client, ops: list[dict], deadline: float, chunk: int = SEED_CHUNK) -> int:
    """POST `ops` in batches of `chunk`; returns how many were applied before `deadline`."""
    done = 0
    for i in range(0, len(ops), chunk):
        if time.monotonic() > deadline:
            break
        part = ops[i : i + chunk]
        r = api.post("/v1/batch", json={"operations": part})
        if r.status_code != 200:
            raise RuntimeError(f"seeding batch {i // chunk}: {r.status_code} {r.text[:500]}")
        done += len(part)
    return done


# -- 1. write rate per kind -------------------------------------------------------------------


async def _timed_writes(
    api_url: str, kind: str, first: int, writes: int, concurrency: int, budget: float
) -> dict[str, Any]:
    """`writes` PUTs of new objects (numbers `first`, `first` + 1, ...), `concurrency` in
    flight, none started after `budget` seconds."""
    todo = iter(range(first, first + writes))
    lat: list[float] = []
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(max(30.0, budget), connect=10.0)
    async with httpx.AsyncClient(base_url=api_url, limits=limits, timeout=timeout) as client:
        t0 = time.monotonic()
        deadline = t0 + budget
        last = t0

        async def writer() -> None:
            nonlocal last
            for i in todo:
                if time.monotonic() >= deadline:
                    return
                path, body = _object(kind, f"n{i:06d}", i)
                s = time.monotonic()
                try:
                    code = str((await client.put(path, json=body)).status_code)
                except httpx.HTTPError as e:
                    code = type(e).__name__
                now = time.monotonic()
                statuses[code] = statuses.get(code, 0) + 1
                if code.startswith("2"):
                    lat.append(now - s)
                    last = now

        await asyncio.gather(*(writer() for _ in range(concurrency)))
        ended = time.monotonic()
    ok = len(lat)
    elapsed = (last if ok else ended) - t0
    return {
        "attempted": sum(statuses.values()),
        "ok": ok,
        "statuses": statuses,
        "partial": ok < writes,
        "seconds": round(elapsed, 3),
        "writes_per_s": round(ok / elapsed, 2) if ok and elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": pct_ms(lat, 50),
            "p99": pct_ms(lat, 99),
        },
    }


class _KindStack:
    """One stack for one kind, reused over ascending sizes: `count` objects of the kind exist,
    `next` numbers the next object (names, ports and prefixes never repeat)."""

    def __init__(self, kind: str, replicas: int) -> None:
        self.kind, self.replicas = kind, replicas
        self.stack: Stack | None = None
        self.count = self.next = 0

    def fresh(self) -> Stack:
        self.close()
        self.stack = Stack(self.replicas).start()
        self.count = self.next = 0
        with httpx.Client(base_url=self.stack.api_url, timeout=60) as api:
            post_batches(api, _setup_ops(self.kind), time.monotonic() + 60)
        return self.stack

    def close(self) -> None:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None


def write_rate_one(ks: _KindStack, size: int, writes: int, budget: float, concurrency: int = 16) -> dict[str, Any]:
    """Grow the kind to `size` objects (a fresh stack if it already has more), then time
    `writes` new ones."""
    kind = ks.kind
    stack = ks.stack if ks.stack is not None and ks.count <= size else ks.fresh()
    with httpx.Client(base_url=stack.api_url, timeout=max(120.0, budget)) as api:
        t = time.monotonic()
        ops = [_seed_op(kind, ks.next + i) for i in range(size - ks.count)]
        seeded = post_batches(api, ops, t + max(300.0, 5 * budget))
        ks.next += seeded
        ks.count += seeded
        seed_s = time.monotonic() - t
    if ks.count < size:
        return {"kind": kind, "existing": size, "error": f"seeding stopped at {ks.count} of {size} objects"}
    assert stack.api is not None and stack.api.pid is not None
    cpu0 = cpu_seconds(stack.api.pid)
    r = asyncio.run(_timed_writes(stack.api_url, kind, ks.next, writes, concurrency, budget))
    api_cpu = cpu_seconds(stack.api.pid) - cpu0
    ks.next += r["attempted"]
    ks.count += r["attempted"]  # an attempt that failed may still have been written: never fewer
    out = {
        "kind": kind,
        "existing": size,
        "existing_after": ks.count,
        "seed_seconds": round(seed_s, 2),
        "writes": writes,
        "concurrency": concurrency,
        "budget_s": budget,
        **r,
        "api_cpu_ms_per_write": round(api_cpu / r["ok"] * 1e3, 2) if r["ok"] else None,
        "api_rss_mb": round(rss_bytes(stack.api.pid) / 2**20, 1),
    }
    print(
        f"  {kind:9s} existing {size:>6,}: {out['writes_per_s']:>8.1f} writes/s "
        f"({r['ok']}/{writes} in {r['seconds']:.1f} s{', PARTIAL (budget)' if r['partial'] else ''}; "
        f"p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms; seeded in {seed_s:.1f} s; "
        f"API CPU {out['api_cpu_ms_per_write']} ms/write; statuses {r['statuses']})",
        flush=True,
    )
    return out


# -- 2. propagation at scale ------------------------------------------------------------------


def intent_ops(clusters: int, backends: int, routes: int, listener_port: int) -> list[list[dict]]:
    """The intent as groups of batch operations (each group after the one before)."""
    cs = [{"op": "put", "kind": "cluster", "name": f"c{c:05d}", "body": {}} for c in range(clusters)]
    bs = [
        {
            "op": "put",
            "kind": "backend",
            "cluster": f"c{c:05d}",
            "name": f"b{j}",
            "body": {"address": _ip(c * backends + j), "port": 8080},
        }
        for c in range(clusters)
        for j in range(backends)
    ]
    lst = [{"op": "put", "kind": "listener", "name": "http", "body": {"address": "127.0.0.1", "port": listener_port}}]
    rs = [
        {
            "op": "put",
            "kind": "route",
            "name": f"r{i:05d}",
            "body": {
                "listener": "http",
                "match": {"prefix": "/" if i == 0 else f"/r{i}"},
                "backends": [{"cluster": f"c{i % clusters:05d}"}],
            },
        }
        for i in range(max(1, routes))
    ]
    return [cs, bs, lst, rs]


def _endpoints(admin: httpx.Client, cluster: str = PROP_CLUSTER) -> set[str]:
    """The endpoints ("ip:port") an Envoy holds for `cluster`: its EDS config dump, filtered
    by name in Envoy (cheap with 10,000 clusters, unlike /clusters)."""
    import json

    try:
        r = admin.get(
            "/config_dump",
            params={"resource": "dynamic_endpoint_configs", "name_regex": f"^{cluster}$", "include_eds": ""},
        )
        doc = json.loads(r.text) if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return set()
    out = set()
    for cfg in doc.get("configs", []):
        for group in cfg.get("endpoint_config", {}).get("endpoints", []):
            for ep in group.get("lb_endpoints", []):
                sa = ep.get("endpoint", {}).get("address", {}).get("socket_address", {})
                out.add(f"{sa.get('address')}:{sa.get('port_value')}")
    return out


def _all_have(admins: list[httpx.Client], needle: str) -> bool:
    return all(needle in _endpoints(a) for a in admins)


def _histograms(url: str) -> dict[tuple[str, str], float]:
    """(sample name, its `type`/`fleet` label) -> value, for the replica's histogram sums and counts."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return out
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count", "_bucket")):
                label = sample.labels.get("type") or sample.labels.get("fleet") or ""
                name = sample.name + (f"@{sample.labels['le']}" if sample.name.endswith("_bucket") else "")
                out[(name, label)] = out.get((name, label), 0.0) + sample.value
    return out


def _quantile_ms(
    h0: dict[tuple[str, str], float], h1: dict[tuple[str, str], float], name: str, q: float
) -> float | None:
    """Histogram `name`'s q-quantile over what was observed between h0 and h1, every label
    summed, interpolated within a bucket as Prometheus's histogram_quantile does."""
    prefix = name + "_bucket@"
    bounds: dict[float, float] = {}
    for (n, label), v in h1.items():
        if n.startswith(prefix):
            le = float(n[len(prefix) :])
            bounds[le] = bounds.get(le, 0.0) + v - h0.get((n, label), 0.0)
    edges = sorted(bounds)
    if not edges or bounds[edges[-1]] <= 0:
        return None
    rank, lower, below = q * bounds[edges[-1]], 0.0, 0.0
    for le in edges:
        if bounds[le] >= rank:
            if le == float("inf"):
                return round(lower * 1e3, 1)
            return round((lower + (le - lower) * (rank - below) / max(bounds[le] - below, 1e-9)) * 1e3, 1)
        lower, below = le, bounds[le]
    return None


def _mean_ms(
    h0: dict[tuple[str, str], float], h1: dict[tuple[str, str], float], name: str, label: str | None
) -> float | None:
    """The mean of histogram `name` over what was observed between h0 and h1 (all labels if None)."""

    def total(h: dict[tuple[str, str], float], suffix: str) -> float:
        return sum(v for (n, lb), v in h.items() if n == name + suffix and (label is None or lb == label))

    count = total(h1, "_count") - total(h0, "_count")
    return round((total(h1, "_sum") - total(h0, "_sum")) / count * 1e3, 1) if count > 0 else None


def simulated_propagation(stack: Stack, api: httpx.Client, changes: int, port0: int, timeout: float) -> dict[str, Any]:
    """The control plane alone: `changes` backend additions, each timed from the API's 2xx to
    2 simulated delta Envoys (bench/fleetsim/client.py, their own process) holding it. No
    Envoy applies anything and nothing is polled: the clients note when a port first shows."""
    fleet = Fleet(f"127.0.0.1:{stack.xds_ports[0]}", specs(2, 1.0, prefix="cp"), 1)
    samples: list[float] = []
    try:
        fleet.start(timeout)
        for k in range(changes):
            port = port0 + k
            r = api.put(f"/v1/clusters/{PROP_CLUSTER}/backends/cp{k}", json={"address": "127.0.0.1", "port": port})
            if not r.is_success:
                return {"error": f"change {k}: {r.status_code} {r.text[:300]}"}
            t0 = time.monotonic()
            stop_at = t0 + 30
            while time.monotonic() < stop_at:
                seen = fleet.seen([port])[port]
                if all(t is not None for t in seen):
                    samples.append(max(t for t in seen if t is not None) - t0)
                    break
                time.sleep(0.002)
            else:
                return {"error": f"change {k} not seen within 30 s", "measured": len(samples)}
    finally:
        fleet.stop()
    return {"measured": len(samples), "p50_ms": pct_ms(samples, 50), "p99_ms": pct_ms(samples, 99)}


def fresh_replica_first_snapshot(stack: Stack, timeout: float) -> dict[str, Any]:
    """Start one more replica process on the stack's etcd; seconds from its exec to its
    port listening, and to one simulated delta Envoy holding its full initial config."""
    i = len(stack.replicas)
    from api.localcluster.procs import free_port

    stack.xds_ports.append(free_port())
    stack.metrics_ports.append(free_port())
    fleet = Fleet(f"127.0.0.1:{stack.xds_ports[i]}", specs(1, 1.0, prefix="fresh"), 1)  # worker up first
    proc = stack._replica(i, ",".join(stack.etcd.endpoints))
    try:
        t0 = time.monotonic()
        proc.start()
        stack.replicas.append(proc)
        deadline = t0 + timeout
        while not listening(stack.xds_ports[i]) and time.monotonic() < deadline:
            time.sleep(0.01)
        listen_s = time.monotonic() - t0
        if time.monotonic() >= deadline:
            return {"error": f"the fresh replica did not listen within {timeout} s", "listen_s": None}
        try:
            configured = fleet.start(timeout=max(1.0, deadline - time.monotonic()))
        except RuntimeError as e:
            return {"error": str(e), "listen_s": round(listen_s, 3)}
        total = time.monotonic() - t0
        counters = fleet.counters()[0]
        return {
            "listen_s": round(listen_s, 3),
            "client_configured_after_connect_s": round(configured, 3),
            "exec_to_first_full_config_s": round(total, 3),
            "first_client_bytes": counters["bytes"],
            "first_client_resources": counters["resources"],
            "fresh_replica_rss_mb": round(rss_bytes(proc.pid) / 2**20, 1) if proc.pid else None,
        }
    finally:
        fleet.stop()


def propagation_one(
    clusters: int,
    backends: int,
    routes: int,
    changes: int,
    envoys: int,
    budget: float,
    change_timeout: float = 60.0,
    idle_window: float = 3.0,
) -> dict[str, Any]:
    from api.localcluster.procs import EnvoyProcess, free_port

    stack = Stack(1)
    stack.start()
    started: list[EnvoyProcess] = []
    out: dict[str, Any] = {"clusters": clusters, "backends_per_cluster": backends, "routes": routes, "envoys": envoys}
    api = httpx.Client(base_url=stack.api_url, timeout=max(300.0, budget))
    try:
        t = time.monotonic()
        deadline = t + budget
        for group in intent_ops(clusters, backends, routes, free_port()):
            n = post_batches(api, group, deadline)
            if n < len(group):
                out["error"] = "the intent did not load within the budget"
                return out
        out["load_seconds"] = round(time.monotonic() - t, 2)
        print(f"  intent {clusters:,} x {backends} + {routes:,} routes loaded in {out['load_seconds']} s", flush=True)
        assert stack.api is not None and stack.api.pid is not None
        replica_pid = stack.replicas[0].pid
        assert replica_pid is not None
        # Real Envoys on the one replica; configured once they hold PROP_CLUSTER's endpoints.
        t = time.monotonic()
        for i in range(envoys):
            e = EnvoyProcess(
                stack.root / "envoy",
                f"scale-{i}",
                "default",
                [("127.0.0.1", stack.xds_ports[0])],
                max_heap_bytes=8 * 1024**3,
            )
            e.start(timeout=120)
            started.append(e)
        admins = [httpx.Client(base_url=e.admin, timeout=30) for e in started]
        seed_needle = f"{_ip(0)}:8080"
        while time.monotonic() < deadline and not _all_have(admins, seed_needle):
            time.sleep(0.2)
        if not _all_have(admins, seed_needle):
            out["error"] = "the Envoys did not get the intent within the budget"
            return out
        out["envoys_configured_s"] = round(time.monotonic() - t, 2)
        print(f"  {envoys} Envoys configured in {out['envoys_configured_s']} s", flush=True)
        time.sleep(min(2.0, idle_window))  # let the ACK records and the registry settle
        # What observing costs: one poll of one Envoy's filtered EDS dump (Envoy walks every
        # EDS config to filter it), so a propagation figure is this much coarser per Envoy.
        polls = []
        for _ in range(10):
            p0 = time.monotonic()
            _endpoints(admins[0])
            polls.append(time.monotonic() - p0)
        out["poll_ms"] = pct_ms(polls, 50)
        # The replica's idle CPU, to subtract from its CPU over the changes.
        c0, w0 = cpu_seconds(replica_pid), time.monotonic()
        time.sleep(idle_window)
        idle_cpu_per_s = (cpu_seconds(replica_pid) - c0) / (time.monotonic() - w0)

        samples: list[float] = []
        missed = 0
        metrics_url = f"http://127.0.0.1:{stack.metrics_ports[0]}/metrics"
        h0 = _histograms(metrics_url)
        c0, w0 = cpu_seconds(replica_pid), time.monotonic()
        for k in range(changes):
            if time.monotonic() > deadline:
                break
            port = PROP_PORT0 + k
            r = api.put(f"/v1/clusters/{PROP_CLUSTER}/backends/p{k}", json={"address": "127.0.0.1", "port": port})
            if not r.is_success:
                out["error"] = f"change {k}: {r.status_code} {r.text[:300]}"
                break
            t0 = time.monotonic()
            needle = f"127.0.0.1:{port}"
            pending = list(admins)
            stop_at = min(t0 + change_timeout, deadline + change_timeout)
            while pending and time.monotonic() < stop_at:
                pending = [a for a in pending if needle not in _endpoints(a)]
                if pending:
                    time.sleep(0.005)
            if pending:
                missed += 1
                break
            samples.append(time.monotonic() - t0)
        window = time.monotonic() - w0
        cpu = cpu_seconds(replica_pid) - c0
        n = len(samples)
        time.sleep(0.5)  # the last ACKs observed
        h1 = _histograms(metrics_url)
        # Without polling anyone: the replica's own clocks. ACK = from writing the EDS response
        # to the Envoy's ACK (Envoy ACKs once it has applied it); convergence = from the
        # replica seeing the etcd change to an Envoy having ACKed it.
        out["envoy_eds_ack_ms_mean"] = _mean_ms(h0, h1, "lbcp_xds_ack_seconds", "eds")
        out["replica_convergence_ms_mean"] = _mean_ms(h0, h1, "lbcp_xds_convergence_seconds", None)
        # The same changes again, unobserved: polling an Envoy's admin takes its main thread,
        # which is also the one that applies xDS. Only the replica's clocks, 0.3 s apart.
        for k in range(changes):
            if time.monotonic() > deadline:
                break
            body = {"address": "127.0.0.1", "port": PROP_PORT0 + 500 + k}
            api.put(f"/v1/clusters/{PROP_CLUSTER}/backends/q{k}", json=body)
            time.sleep(0.3)
        h2 = _histograms(metrics_url)
        out["unobserved_envoy_eds_ack_ms_mean"] = _mean_ms(h1, h2, "lbcp_xds_ack_seconds", "eds")
        out["unobserved_replica_convergence_ms_mean"] = _mean_ms(h1, h2, "lbcp_xds_convergence_seconds", None)
        out["unobserved_replica_convergence_ms_p50"] = _quantile_ms(h1, h2, "lbcp_xds_convergence_seconds", 0.5)
        out["unobserved_envoy_eds_ack_ms_p50"] = _quantile_ms(h1, h2, "lbcp_xds_ack_seconds", 0.5)
        out["propagation"] = {
            "changes": changes,
            "measured": n,
            "missed": missed,
            "partial": n < changes,
            "p50_ms": pct_ms(samples, 50),
            "p99_ms": pct_ms(samples, 99),
            "max_ms": round(max(samples) * 1e3, 1) if samples else None,
            "mean_ms": round(statistics.mean(samples) * 1e3, 1) if samples else None,
        }
        out["replica_cpu_ms_per_change"] = round(cpu / n * 1e3, 1) if n else None
        out["replica_idle_cpu_pct"] = round(idle_cpu_per_s * 100, 1)
        out["replica_cpu_ms_per_change_net_of_idle"] = (
            round(max(0.0, cpu - idle_cpu_per_s * window) / n * 1e3, 1) if n else None
        )
        out["replica_rss_mb"] = round(rss_bytes(replica_pid) / 2**20, 1)
        out["api_rss_mb"] = round(rss_bytes(stack.api.pid) / 2**20, 1)
        out["envoy_rss_mb"] = [round(rss_bytes(e.proc.pid) / 2**20, 1) for e in started if e.proc.pid]
        p = out["propagation"]
        print(
            f"  propagation ({n}/{changes} changes): p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms; replica CPU "
            f"{out['replica_cpu_ms_per_change']} ms/change ({out['replica_cpu_ms_per_change_net_of_idle']} net of "
            f"idle {out['replica_idle_cpu_pct']} %); RSS replica {out['replica_rss_mb']} MB, "
            f"API {out['api_rss_mb']} MB; one poll of one Envoy {out['poll_ms']} ms; by the replica's clocks: EDS "
            f"push to ACK {out['envoy_eds_ack_ms_mean']} ms, change seen to ACKed {out['replica_convergence_ms_mean']}"
            f" ms (means); unobserved: {out['unobserved_envoy_eds_ack_ms_mean']} ms,"
            f" {out['unobserved_replica_convergence_ms_mean']} ms (p50s {out['unobserved_envoy_eds_ack_ms_p50']} ms,"
            f" {out['unobserved_replica_convergence_ms_p50']} ms)",
            flush=True,
        )
        for a in admins:
            a.close()
        for e in started:  # the fresh replica gets the cores to itself and its one client
            e.stop()
        started.clear()
        out["control_plane_alone"] = cp = simulated_propagation(
            stack, api, changes, PROP_PORT0 + 1000, timeout=max(60.0, deadline - time.monotonic())
        )
        print(
            f"  control plane alone (2 simulated delta Envoys): p50 {cp.get('p50_ms')} ms, p99 {cp.get('p99_ms')} ms"
            f" {cp.get('error', '')}",
            flush=True,
        )
        out["fresh_replica"] = fresh_replica_first_snapshot(stack, timeout=max(60.0, deadline - time.monotonic()))
        f = out["fresh_replica"]
        print(
            f"  fresh replica: listening after {f.get('listen_s')} s, first client fully configured "
            f"{f.get('exec_to_first_full_config_s')} s after exec {f.get('error', '')}",
            flush=True,
        )
        return out
    finally:
        api.close()
        for e in started:
            e.stop()
        stack.stop()


def code_under_test() -> dict[str, Any]:
    """Which checkout the stack runs (its processes import from the same path)."""
    import subprocess
    from pathlib import Path

    import controlplane

    root = Path(controlplane.__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "controlplane": controlplane.__file__,
        "commit": git("rev-parse", "HEAD").strip(),
        "modified_files": len(
            git("status", "--porcelain", "--untracked-files=no", "--", "controlplane", "api").splitlines()
        ),
    }


# -- the scenario -------------------------------------------------------------------------------


def intent_scale(
    sizes: list[int] = (100, 1000, 10_000),  # type: ignore[assignment]
    writes: int = 500,
    budget: float = 120.0,
    kinds: list[str] = KINDS,  # type: ignore[assignment]
    concurrency: int = 16,
    write_replicas: int = 0,
    prop_clusters: int = 10_000,
    prop_backends: int = 10,
    prop_routes: int = 2000,
    small_clusters: int = 10,
    changes: int = 20,
    envoys: int = 2,
    prop_budget: float = 1800.0,
    max_size: dict[str, int] | None = None,
    idle_window: float = 3.0,
) -> dict[str, Any]:
    """`max_size`: per kind, the largest size to run (e.g. {"clusters": 2000}); larger ones are
    listed as skipped. `idle_window`: seconds of quiet over which the replica's idle CPU is
    measured before the changes."""
    import os

    kinds = [k for k in kinds if k]  # --kinds "": the propagation part alone
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}: the kinds are {', '.join(KINDS)}")
    result: dict[str, Any] = {
        "scenario": "intent_scale",
        "machine": {
            "cpus": os.cpu_count(),
            "mem_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30),
        },
        "code": code_under_test(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "sizes": sorted(sizes),
            "writes": writes,
            "budget_s": budget,
            "kinds": list(kinds),
            "concurrency": concurrency,
            "xds_replicas_during_writes": write_replicas,
            "max_size": max_size or {},
            "changes": changes,
            "envoys": envoys,
            "prop_budget_s": prop_budget,
        },
        "write_rate": [],
        "propagation": [],
    }
    print(f"code under test: {result['code']}")
    print(f"intent-scale: write rate, {concurrency} in flight, {writes} new objects per size, budget {budget} s")
    for kind in kinds:
        ks = _KindStack(kind, write_replicas)
        try:
            for size in sorted(sizes):
                if max_size and kind in max_size and size > max_size[kind]:
                    result["write_rate"].append({"kind": kind, "existing": size, "skipped": "over --max-size"})
                    continue
                result["write_rate"].append(write_rate_one(ks, size, writes, budget, concurrency))
        finally:
            ks.close()
    if envoys > 0 and changes > 0:
        for c, b, r in (
            (small_clusters, prop_backends, min(prop_routes, small_clusters)),
            (prop_clusters, prop_backends, prop_routes),
        ):
            if c <= 0:
                continue
            print(f"intent-scale: propagation, {c:,} clusters x {b} backends, {r:,} routes, {envoys} Envoys")
            result["propagation"].append(
                propagation_one(c, b, r, changes, envoys, prop_budget, idle_window=idle_window)
            )
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result
