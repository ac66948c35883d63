"""python -m bench.fleetsim {convergence,fanout,connect-storm,burst,reconnect,big-eds,write-rate,idle,intent-scale,all}
[options]

`intent-scale` is issue 28's: write rate per kind with 100 / 1,000 / 10,000 objects of it
already there, and propagation on a 10,000-cluster intent (bench/fleetsim/intent_scale.py).

`fanout` is issue 18's scenario: delta clients only, one cluster, 10 backend additions 0.5 s
apart (each converges alone), the replica's CPU per client per change.

`fanout` and `convergence` take `--against go-control-plane`: the scenario runs on lbcp and
on go-control-plane (bench/gocp, built with `make -C bench/gocp` when missing), `--rounds`
times each, interleaved on the same simulator and cores, and prints both with the ratios
lbcp / go-control-plane (bench/results/fleetsim-<scenario>-vs-gocp-<clients>.json).

Writes bench/results/fleetsim-<scenario>.json and, where it makes sense, a PNG
(matplotlib, the `bench` extra; skipped with a note if it is not installed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.fleetsim import intent_scale, peer, scenarios
from bench.plotting import pyplot

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _save(name: str, data) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"fleetsim-{name}.json").write_text(json.dumps(data, indent=2) + "\n")


def _plot_convergence(rows: list[dict]) -> None:
    plt = pyplot()
    if plt is None:
        return
    ns = [r["clients"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ns, [r["last_client_ms"]["p99"] for r in rows], "o-", label="p99 (last client)")
    a.plot(ns, [r["last_client_ms"]["p50"] for r in rows], "o-", label="p50 (last client)")
    a.axhline(1000, color="grey", ls="--", lw=1, label="target 1 s")
    a.set_xlabel("simulated Envoys on one replica")
    a.set_ylabel("API 2xx → every client has it (ms)")
    a.set_title("Convergence per backend change")
    a.legend()
    b.plot(ns, [r["rss_per_client_kb"] for r in rows], "o-", label="replica RSS per client (KB)")
    b.plot(ns, [r["replica_cpu_ms_per_change"] for r in rows], "s-", label="replica CPU per change (ms)")
    b.axhline(100, color="grey", ls="--", lw=1, label="RSS target 100 KB")
    b.set_xlabel("simulated Envoys on one replica")
    b.set_title("Cost per client / per change")
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "fleetsim-convergence.png", dpi=110)
    print(f"wrote {RESULTS / 'fleetsim-convergence.png'}")


def _plot_bars(name: str, title: str, labels: list[str], values: list[float], ylabel: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, values)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    for i, v in enumerate(values):
        ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(RESULTS / f"fleetsim-{name}.png", dpi=110)
    print(f"wrote {RESULTS / f'fleetsim-{name}.png'}")


def _versus(scenario: str, args: argparse.Namespace) -> None:
    """The scenario on lbcp and on the peer, interleaved, for each --clients N."""
    rows = []
    for n in (int(x) for x in args.clients.split(",")):

        def run(system: str, n: int = n) -> dict[str, Any]:
            if scenario == "fanout":
                return scenarios.convergence(
                    n, 10, 2.0, clusters=1, backends=10, delta_share=1.0, workers=args.workers,
                    xds_workers=args.xds_workers if system == "lbcp" else 1, against=system,
                )  # fmt: skip
            return scenarios.convergence(
                n, args.changes, args.rate, workers=args.workers, delta_share=args.delta_share, against=system
            )

        print(f"{scenario} N={n}: lbcp vs {args.against}, {args.rounds} round(s) each, interleaved", flush=True)
        rows.append({"scenario": scenario, "clients": n, **scenarios.versus(run, args.against, args.rounds)})
    name = f"{scenario}-vs-gocp-" + "-".join(str(r["clients"]) for r in rows)
    _save(name, rows)
    print(f"wrote {RESULTS / f'fleetsim-{name}.json'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleetsim")
    ap.add_argument(
        "scenario",
        choices=[
            "convergence",
            "fanout",
            "connect-storm",
            "burst",
            "reconnect",
            "big-eds",
            "write-rate",
            "idle",
            "intent-scale",
            "all",
        ],
    )
    ap.add_argument("--clients", default="100,500,1000,2000", help="convergence: comma-separated N")
    ap.add_argument("-n", type=int, help="clients for burst / reconnect / big-eds")
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0, help="idle: the measured window")
    ap.add_argument("--runs", type=int, default=5, help="connect-storm: runs")
    ap.add_argument("--rate", type=float, default=20.0, help="convergence: changes per second")
    ap.add_argument("--workers", type=int, default=2, help="simulator processes")
    ap.add_argument("--xds-workers", type=int, default=1, help="fanout: `lbcp xds --workers` of the replica")
    ap.add_argument("--api-workers", type=int, default=1, help="write-rate: `lbcp api --workers`")
    ap.add_argument("--delta-share", type=float, default=0.5)
    ap.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="convergence: xDS replica processes (clients spread over them); write-rate: replicas running meanwhile",
    )
    ap.add_argument(
        "--against",
        choices=["lbcp", *peer.PEERS],
        default="lbcp",
        help="fanout, convergence: also run the scenario on this peer control plane, interleaved, and compare",
    )
    ap.add_argument("--rounds", type=int, default=2, help="--against: runs of each system, interleaved")
    g = ap.add_argument_group("intent-scale")
    g.add_argument("--sizes", default="100,1000,10000", help="objects of the kind already there")
    g.add_argument("--writes", type=int, default=500, help="new objects timed per kind and size")
    g.add_argument("--budget", type=float, default=120.0, help="seconds per kind and size for the timed writes")
    g.add_argument("--kinds", default=",".join(intent_scale.KINDS))
    g.add_argument("--concurrency", type=int, default=16, help="writes in flight")
    g.add_argument("--write-replicas", type=int, default=0, help="xDS replicas watching during the writes")
    g.add_argument("--max-size", default="", help="e.g. backends=1000,routes=1000: larger sizes skipped for them")
    g.add_argument("--prop-clusters", type=int, default=10_000, help="the big intent (0: only the small one)")
    g.add_argument("--prop-backends", type=int, default=10, help="backends per cluster")
    g.add_argument("--prop-routes", type=int, default=2000)
    g.add_argument("--small-clusters", type=int, default=10, help="the small intent to compare with")
    g.add_argument("--envoys", type=int, default=2, help="real Envoys (0: no propagation part)")
    g.add_argument("--prop-changes", type=int, default=20, help="backend changes timed per intent")
    g.add_argument("--prop-budget", type=float, default=1800.0, help="seconds per intent (load, Envoys, changes)")
    g.add_argument("--out", default="intent-scale", help="results name: bench/results/fleetsim-<out>.json")
    args = ap.parse_args(argv)
    todo = ["convergence", "burst", "reconnect", "big-eds", "write-rate"] if args.scenario == "all" else [args.scenario]
    if args.against != "lbcp":
        if args.scenario not in ("fanout", "convergence"):
            ap.error("--against is for fanout and convergence")
        if args.replicas != 1:
            ap.error("--against runs one replica of each system")
        peer.build()
    for s in todo:
        if s in ("fanout", "convergence") and args.against != "lbcp":
            _versus(s, args)
            continue
        if s == "intent-scale":
            max_size = {k: int(v) for k, _, v in (p.partition("=") for p in args.max_size.split(",") if p)}
            r = intent_scale.intent_scale(
                sizes=[int(n) for n in args.sizes.split(",")],
                writes=args.writes,
                budget=args.budget,
                kinds=args.kinds.split(","),
                concurrency=args.concurrency,
                write_replicas=args.write_replicas,
                prop_clusters=args.prop_clusters,
                prop_backends=args.prop_backends,
                prop_routes=args.prop_routes,
                small_clusters=args.small_clusters,
                changes=args.prop_changes,
                envoys=args.envoys,
                prop_budget=args.prop_budget,
                max_size=max_size,
            )
            _save(args.out, r)
            print(f"wrote {RESULTS / f'fleetsim-{args.out}.json'}")
        elif s == "convergence":
            rows = [
                scenarios.convergence(
                    int(n),
                    args.changes,
                    args.rate,
                    workers=args.workers,
                    delta_share=args.delta_share,
                    replicas=args.replicas,
                )
                for n in args.clients.split(",")
            ]
            suffix = "" if args.replicas == 1 else f"-{args.replicas}replicas"
            _save("convergence" + suffix, rows)
            if not suffix:
                _plot_convergence(rows)
        elif s == "fanout":
            rows = [
                scenarios.convergence(
                    int(n),
                    10,
                    2.0,
                    clusters=1,
                    backends=10,
                    delta_share=1.0,
                    workers=args.workers,
                    xds_workers=args.xds_workers,
                )  # fmt: skip
                for n in args.clients.split(",")
            ]
            _save("fanout" + ("" if args.xds_workers == 1 else f"-{args.xds_workers}workers"), rows)
        elif s == "connect-storm":
            n = args.n or 2000
            _save(f"connect-storm-{n}", scenarios.connect_storm(n, runs=args.runs, workers=args.workers))
        elif s == "idle":
            rows = [
                scenarios.idle(int(n), args.seconds, replicas=args.replicas, workers=args.workers)
                for n in args.clients.split(",")
            ]
            _save("idle", rows)
        elif s == "burst":
            r = scenarios.burst(args.n or 500, workers=args.workers)
            _save("burst", r)
            _plot_bars(
                "burst",
                f"{r['writes']} backend writes, {r['clients']} clients",
                ["writes", "pushes/client (batch)", "pushes/client (separate)"],
                [r["writes"], r["batch"]["responses_per_client"], r["separate"]["responses_per_client"]],
                "count",
            )
        elif s == "reconnect":
            r = scenarios.reconnect(args.n or 1000, workers=args.workers)
            _save("reconnect", r)
            _plot_bars(
                "reconnect",
                f"Reconnect storm, {r['clients']} clients",
                ["replica restart (s)", "all served after (s)"],
                [r["replica_restart_seconds"], r["all_served_after_restart_seconds"]],
                "seconds",
            )
        elif s == "big-eds":
            r = scenarios.big_eds(args.n or 200, workers=args.workers)
            _save("big-eds", r)
            big, small = r["big cluster +1 endpoint"], r["small cluster +1 endpoint"]
            _plot_bars(
                "big-eds",
                f"Bytes per client for one endpoint change ({r['endpoints']:,} endpoints)",
                ["big, delta", "big, SotW", "small, delta", "small, SotW"],
                [
                    big["bytes_per_client"]["delta"],
                    big["bytes_per_client"]["sotw"],
                    small["bytes_per_client"]["delta"],
                    small["bytes_per_client"]["sotw"],
                ],
                "bytes",
            )
        elif s == "write-rate":
            r = scenarios.write_rate(api_workers=args.api_workers, replicas=args.replicas)
            suffix = ("" if args.api_workers == 1 else f"-{args.api_workers}api") + (
                "" if args.replicas == 1 else f"-{args.replicas}replicas"
            )
            _save("write-rate" + suffix, r)
            _plot_bars(
                "write-rate",
                "Writes per second (16 concurrent)",
                ["admin API", "raw etcd put"],
                [r["api_writes_per_s"], r["etcd_puts_per_s"]],
                "per second",
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
