"""Hitless churn at machine scale: as many persistent connections as this machine allows
through 2 real Envoys, while 100 configuration changes happen.

    .venv/bin/python -m bench.churn [--connections 8000] [--processes 4] [--changes 100]

Starts etcd, the admin API, 2 xDS replicas, 4 demo backends (`lbcp demo-backend`) and 2
Envoys (one per replica, each with its own listener), all as processes. Client processes
(each under the 20,000-descriptors-per-process limit) hold HTTP/1.1 keep-alive connections,
half to each Envoy, and send one request on every connection after every 10 changes. The
changes are the e2e test's (tests/e2e/test_hitless.py): backends added, reweighted, a
cluster's health check and timeouts changed, routes added and changed, another cluster's
load balancer changed, new listeners added. Reports failed requests, connections Envoy
closed (downstream_cx_destroy_local) or drained, and listeners modified; writes
bench/results/churn.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx

from api.localcluster.procs import EnvoyProcess, EtcdCluster, Proc, free_port, wait_until

RESULTS = Path(__file__).resolve().parent / "results"


# -- client processes ------------------------------------------------------------------------


async def _client_main(conn, port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    socks: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(count):
        socks.append(await asyncio.open_connection("127.0.0.1", port))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # do not flood the accept queue

    async def one(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> str:
        try:
            w.write(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            await r.readexactly(int(headers.get("content-length", "0")))
            if headers.get("connection", "").lower() == "close":
                return "asked-to-close"
            return "ok" if lines[0].startswith("HTTP/1.1 200") else lines[0][9:12]
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            return type(exc).__name__

    conn.send(("opened", len(socks)))
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "round":
            results = await asyncio.gather(*(one(r, w) for r, w in socks))
            counts: dict[str, int] = {}
            for x in results:
                counts[x] = counts.get(x, 0) + 1
            conn.send(("round", counts))
        else:
            for _, w in socks:
                w.close()
            conn.send(("closed", None))
            return


def _client(conn, port: int, count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 1000)), hard))
    asyncio.run(_client_main(conn, port, count))


# -- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=8000)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lbcp-churn-"))
    etcd = EtcdCluster(root / "etcd", 1)
    procs: list[Proc] = []
    envoys: list[EnvoyProcess] = []
    clients = []
    try:
        etcd.start()
        eps = ",".join(etcd.endpoints)
        api_port, xds = free_port(), [free_port(), free_port()]
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
        for i, p in enumerate(xds):
            procs.append(
                Proc(
                    [sys.executable, "-m", "api.cli", "xds", "--port", str(p), "--etcd", eps, "--replica-id", f"x{i}"],
                    root / f"xds{i}.log",
                )
            )
        backend_ports = [free_port() for _ in range(6)]
        for i, p in enumerate(backend_ports):
            procs.append(
                Proc(
                    [sys.executable, "-m", "api.cli", "demo-backend", f"web-{i}", "--port", str(p)],
                    root / f"web-{i}.log",
                )
            )
        for p in procs:
            p.start()
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
        wait_until(lambda: _ok(api, "/readyz"), 30, what="API")
        ports = {"a": free_port(), "b": free_port()}
        api.post(
            "/v1/batch",
            json={
                "operations": [
                    {"op": "put", "kind": "cluster", "name": "web", "body": {"connect_timeout": "2s"}},
                    {
                        "op": "replace_backends",
                        "cluster": "web",
                        "body": [
                            {"name": f"web-{i}", "address": "127.0.0.1", "port": p}
                            for i, p in enumerate(backend_ports[:4])
                        ],
                    },
                    {"op": "put", "kind": "cluster", "name": "spare", "body": {}},
                    *(
                        {
                            "op": "put",
                            "kind": "listener",
                            "name": f"http-{f}",
                            "body": {"address": "127.0.0.1", "port": p, "fleets": [f]},
                        }
                        for f, p in ports.items()
                    ),
                    *(
                        {
                            "op": "put",
                            "kind": "route",
                            "name": f"r-{f}",
                            "body": {"listener": f"http-{f}", "backends": [{"cluster": "web"}]},
                        }
                        for f in ports
                    ),
                ]
            },
        ).raise_for_status()
        for i, f in enumerate(ports):
            e = EnvoyProcess(root / "envoy", f"churn-{f}", f, [("127.0.0.1", xds[i])], delta=(i == 0))
            e.start()
            envoys.append(e)
        with httpx.Client() as probe:
            for f, p in ports.items():
                wait_until(lambda p=p: _ok(probe, f"http://127.0.0.1:{p}/"), 30, what=f"Envoy {f}")

        per = args.connections // args.processes
        ctx = mp.get_context("spawn")
        t0 = time.monotonic()
        for i in range(args.processes):
            parent, child = ctx.Pipe()
            port = list(ports.values())[i % 2]
            proc = ctx.Process(target=_client, args=(child, port, per), daemon=True)
            proc.start()
            clients.append((proc, parent))
        opened = sum(conn.recv()[1] for _, conn in clients)
        print(f"{opened} keep-alive connections open through 2 Envoys in {time.monotonic() - t0:.1f} s", flush=True)

        def round_() -> dict[str, int]:
            for _, conn in clients:
                conn.send("round")
            total: dict[str, int] = {}
            for _, conn in clients:
                for k, v in conn.recv()[1].items():
                    total[k] = total.get(k, 0) + v
            return total

        first = round_()
        stats0 = [_stats(e) for e in envoys]
        rnd = random.Random(5)
        rounds = [first]
        changes_s: list[float] = []
        for n in range(args.changes):
            k = n % 10
            t = time.monotonic()
            if k == 0:
                i = 4 + (n // 10) % 2
                r = api.put(
                    f"/v1/clusters/web/backends/web-{i}?wait=acked&timeout=20s",
                    json={"address": "127.0.0.1", "port": backend_ports[i]},
                )
            elif k in (1, 7):
                r = api.patch(
                    f"/v1/clusters/web/backends/web-{rnd.randrange(4)}?wait=acked&timeout=20s",
                    json={"weight": rnd.randint(1, 9)},
                )
            elif k == 2:
                r = api.put(
                    f"/v1/clusters/spare/backends/s{n}?wait=acked&timeout=20s",
                    json={"address": "10.9.0.1", "port": 1000 + n},
                )
            elif k == 3:
                r = api.put(
                    "/v1/clusters/web?wait=acked&timeout=20s",
                    json={
                        "connect_timeout": f"{rnd.randint(2, 4)}s",
                        "health_check": {"active": {"type": "http", "path": "/", "interval": f"{rnd.randint(5, 10)}s"}},
                    },
                )
            elif k == 4:
                r = api.put(
                    f"/v1/routes/extra-{n}?wait=acked&timeout=20s",
                    json={"listener": "http-a", "match": {"prefix": f"/x{n}"}, "backends": [{"cluster": "spare"}]},
                )
            elif k == 5:
                r = api.put(
                    "/v1/clusters/spare?wait=acked&timeout=20s",
                    json={"load_balancer": {"type": rnd.choice(["round_robin", "random"])}},
                )
            elif k == 6:
                r = api.put(
                    f"/v1/listeners/new-{n}?wait=acked&timeout=20s",
                    json={"address": "127.0.0.1", "port": free_port(), "fleets": ["a", "b"]},
                )
            elif k == 8:
                r = api.delete(f"/v1/clusters/spare/backends/s{n - 6}?wait=acked&timeout=20s")
            else:
                r = api.put(
                    f"/v1/routes/extra-{n - 5}?wait=acked&timeout=20s",
                    json={
                        "listener": "http-a",
                        "match": {"prefix": f"/x{n - 5}"},
                        "backends": [{"cluster": "web"}],
                        "timeout": f"{rnd.randint(5, 30)}s",
                    },
                )
            r.raise_for_status()
            changes_s.append(time.monotonic() - t)
            if n % 10 == 9:
                rounds.append(round_())
        stats1 = [_stats(e) for e in envoys]
        requests = sum(sum(r.values()) for r in rounds)
        failed = sum(v for r in rounds for k, v in r.items() if k != "ok")
        destroyed = sum(
            s1.get(k, 0) - s0.get(k, 0)
            for s0, s1 in zip(stats0, stats1, strict=False)
            for k in s1
            if k.endswith("downstream_cx_destroy_local") and k.startswith("http.http-")
        )
        drained = sum(
            s1.get(k, 0) - s0.get(k, 0)
            for s0, s1 in zip(stats0, stats1, strict=False)
            for k in s1
            if k.endswith("downstream_cx_drain_close")
        )
        modified = sum(
            s1["listener_manager.listener_modified"] - s0["listener_manager.listener_modified"]
            for s0, s1 in zip(stats0, stats1, strict=False)
        )
        result = {
            "connections": opened,
            "envoys": 2,
            "changes": args.changes,
            "requests": requests,
            "failed_requests": failed,
            "failures": {k: v for r in rounds for k, v in r.items() if k != "ok"},
            "connections_closed_by_envoy": destroyed,
            "drain_closes": drained,
            "listeners_modified": modified,
            "change_acked_seconds_p50": sorted(changes_s)[len(changes_s) // 2],
            "change_acked_seconds_max": max(changes_s),
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "churn.json").write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"churn: {opened} persistent connections, {args.changes} changes (each acked by both Envoys, p50 "
            f"{result['change_acked_seconds_p50'] * 1000:.0f} ms): {requests} requests, {failed} failed, "
            f"{destroyed} connections closed by Envoy, {drained} drain-closes, {modified} listeners modified",
            flush=True,
        )
        return 0 if failed == destroyed == drained == modified == 0 else 1
    finally:
        for proc, conn in clients:
            try:
                conn.send("close")
                conn.recv()
            except (OSError, EOFError):
                pass
            proc.join(10)
        for e in envoys:
            e.stop()
        for p in procs:
            p.stop()
        etcd.stop()


def _ok(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stats(e: EnvoyProcess) -> dict[str, int]:
    return e.stats("")


if __name__ == "__main__":
    raise SystemExit(main())
