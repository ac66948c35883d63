"""Fleet commands: the fleet at a glance (`lbcp fleet`), rebalancing it (`lbcp fleet rebalance`),
and draining a node out of the front tier, or evacuating it (`lbcp node drain --evacuate`)."""

from __future__ import annotations

import argparse
import time
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.cli._common import client_for, emit
from api.cli.client import ApiProblem, Client


def cmd_node_drain(args: argparse.Namespace) -> int:
    c = client_for(args)
    params: dict[str, Any] = {"force": "true"} if args.force else {}
    if args.wait and not args.evacuate:
        params |= {"wait": "withdrawn", "timeout": f"{args.wait}s"}
    body: dict[str, Any] = {"reason": args.reason} if args.reason else {}
    if args.evacuate:
        body["evacuate"] = {"connections_per_second": args.rate}
    r = c.request("POST", f"/v1/fleet/{quote(args.node, safe='')}/drain", json_body=body or None, params=params).json()
    if args.evacuate:
        print(f"node {args.node} drained (revision {r['revision']}); evacuating at {args.rate} connections/s")
        return _follow_evacuation(c, args.node, args.wait) if args.wait else 0
    line = f"node {args.node} drained (revision {r['revision']})"
    if "withdrawal" in r:
        w = r["withdrawal"]
        line += ": withdrawn from the front tier" if w["complete"] else f": not yet withdrawn after {args.wait}s ({w})"
    print(line)
    return 0 if "withdrawal" not in r or r["withdrawal"]["complete"] else 1


def _follow_evacuation(c: Client, node: str, timeout: float) -> int:
    """Show the node's connections going, until it holds none (0) or `timeout` passes (1)."""

    def held() -> tuple[int | None, dict[str, Any]]:
        try:
            doc = c.get(f"/v1/fleet/{quote(node, safe='')}")
        except ApiProblem as exc:
            if exc.status == 404:
                return 0, {}  # it disconnected: nothing left on it
            raise
        return (doc.get("load") or {}).get("connections"), doc.get("evacuation") or {}

    start = time.monotonic()
    first, _ = held()
    total = max(1, first or 1)
    with _progress() as bar:
        task = bar.add_task(f"evacuating {node}", total=total)
        while time.monotonic() - start < timeout:
            left, status = held()
            if left is not None:
                bar.update(task, completed=max(0, total - left), description=f"evacuating {node}: {left} left")
                if left == 0:
                    break
            time.sleep(0.25)
    left, status = held()
    elapsed = time.monotonic() - start
    if left == 0:
        rate = f", {total / elapsed:.0f}/s" if first else ""
        print(f"node {node} evacuated: no connections left after {elapsed:.1f}s{rate}; it can be stopped")
        return 0
    print(f"node {node}: {left} connections left after {timeout:.0f}s ({status.get('state', 'no status yet')})")
    return 1


def _progress() -> Progress:
    """A progress bar on stderr (plain when it is not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def cmd_fleet_rebalance(args: argparse.Namespace) -> int:
    c = client_for(args)
    body: dict[str, Any] = {}
    if args.rate:
        body["rate"] = args.rate
    if args.tolerance:
        body["tolerance_percent"] = args.tolerance
    path = f"/v1/fleets/{quote(args.fleet, safe='')}/rebalance"
    asked = c.post(path, body)["requested"]["at"]
    print(f"fleet {args.fleet}: rebalancing" + (f" at {args.rate} connections/s" if args.rate else ""))
    if not args.wait:
        return 0
    start = time.monotonic()
    status: dict[str, Any] = {}
    with _progress() as bar:
        task = bar.add_task(f"rebalancing {args.fleet}", total=None)
        while time.monotonic() - start < args.wait:
            status = c.get(path).get("status") or {}
            if status.get("request") == round(asked, 3):  # the mover's word on this request, not an older one
                moved, remaining = status.get("moved", 0), status.get("remaining", 0)
                bar.update(
                    task,
                    total=moved + remaining or 1,
                    completed=moved,
                    description=f"rebalancing {args.fleet}: {status.get('state')}, {remaining} over the mean",
                )
                if status.get("state") == "balanced":
                    break
            time.sleep(0.25)
    if status.get("state") == "balanced" and status.get("request") == round(asked, 3):
        took = time.monotonic() - start
        print(f"fleet {args.fleet} balanced: {status.get('moved', 0)} connections moved in {took:.1f}s")
        return 0
    print(f"fleet {args.fleet}: not balanced after {args.wait:.0f}s ({status or 'no status yet'})")
    return 1


def cmd_node_undrain(args: argparse.Namespace) -> int:
    r = client_for(args).request("DELETE", f"/v1/fleet/{quote(args.node, safe='')}/drain").json()
    print(f"node {args.node} back in service (revision {r['revision']})")
    return 0


def _moving(evacuation: dict[str, Any] | None) -> str:
    if not evacuation:
        return "-"
    return f"{evacuation.get('state')} ({evacuation.get('remaining', 0)} left at {evacuation.get('rate', 0):.0f}/s)"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def cmd_fleet(args: argparse.Namespace) -> int:
    """One row per connected Envoy: where it is, what it holds, and whether it is in front of clients."""
    doc = client_for(args).get("/v1/fleet")
    nodes = doc["nodes"]
    if args.fleet:
        nodes = [n for n in nodes if n.get("fleet") == args.fleet]
    nodes.sort(key=lambda n: (n.get("fleet", ""), n["node_id"]))

    def row(n: dict[str, Any]) -> list[Any]:
        load = n.get("load") or {}
        return [
            n["node_id"],
            n.get("fleet"),
            n.get("replica"),
            (n.get("front") or {}).get("address") or "-",
            n.get("front_state"),
            load.get("connections", "-"),
            _rate(load.get("connections_per_second")),
            _rate(load.get("tls_handshakes_per_second")),
            load.get("http2_streams", "-"),
            "-" if load.get("headroom") is None else f"{load['headroom'] * 100:.0f}%",
            "yes" if load.get("overloaded") else ("no" if load else "-"),
            n.get("acked_revision"),
            _moving(n.get("evacuation")),
        ]

    headers = ["NODE", "FLEET", "REPLICA", "ADDRESS", "FRONT", "CONNS", "NEW/S", "TLS/S", "H2", "HEADROOM", "OVERLOAD"]
    headers += ["ACKED", "MOVING"]
    emit(nodes, args.output, headers, row)
    if args.output == "table":
        for fleet, st in sorted((doc.get("rebalances") or {}).items()):
            if (not args.fleet or fleet == args.fleet) and st.get("state") == "rebalancing":
                print(
                    f"fleet {fleet}: rebalancing at {st.get('rate', 0):.0f}/s, {st.get('moved', 0)} moved, "
                    f"{st.get('remaining', 0)} over the mean"
                )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    x = sub.add_parser("fleet", help="the connected Envoys: front state, live load, acked revision")
    x.add_argument("--fleet", help="only this fleet")
    x.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    x.set_defaults(func=cmd_fleet)
    fl = x.add_subparsers(dest="action")
    y = fl.add_parser("rebalance", help="move connections off Envoys above the fleet's mean, at a paced rate")
    y.add_argument("fleet")
    y.add_argument("--rate", type=int, help="connections moved per second, fleet-wide (default: the fleet's own)")
    y.add_argument("--tolerance", type=int, help="percent around the mean that counts as balanced (default 10)")
    y.add_argument("--wait", type=float, help="seconds to show progress until balanced (exit 1 if not)")
    y.set_defaults(func=cmd_fleet_rebalance)
    nd = sub.add_parser("node", help="one Envoy of the fleet: drain it out of the front tier, or put it back")
    nds = nd.add_subparsers(dest="action", required=True)
    x = nds.add_parser("drain", help="fail its /healthz so DNS, anycast and L4 withdraw it; connections stay")
    x.add_argument("node")
    x.add_argument("--reason")
    x.add_argument("--force", action="store_true", help="drain a node id that is not connected (yet)")
    x.add_argument(
        "--wait", type=float, help="seconds to wait until it is withdrawn, or with --evacuate empty (exit 1 if not)"
    )
    x.add_argument("--evacuate", action="store_true", help="then close all its connections, paced (--rate)")
    x.add_argument("--rate", type=int, default=100, help="with --evacuate: connections closed per second")
    x.set_defaults(func=cmd_node_drain)
    x = nds.add_parser("undrain", help="put a drained node back in service")
    x.add_argument("node")
    x.set_defaults(func=cmd_node_undrain)
