"""Fleet commands: the fleet at a glance (`lbcp fleet`), and draining a node out of the front tier."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from api.cli._common import client_for, emit


def cmd_node_drain(args: argparse.Namespace) -> int:
    c = client_for(args)
    params: dict[str, Any] = {"force": "true"} if args.force else {}
    if args.wait:
        params |= {"wait": "withdrawn", "timeout": f"{args.wait}s"}
    body = {"reason": args.reason} if args.reason else None
    r = c.request("POST", f"/v1/fleet/{quote(args.node, safe='')}/drain", json_body=body, params=params).json()
    line = f"node {args.node} drained (revision {r['revision']})"
    if "withdrawal" in r:
        w = r["withdrawal"]
        line += ": withdrawn from the front tier" if w["complete"] else f": not yet withdrawn after {args.wait}s ({w})"
    print(line)
    return 0 if "withdrawal" not in r or r["withdrawal"]["complete"] else 1


def cmd_node_undrain(args: argparse.Namespace) -> int:
    r = client_for(args).request("DELETE", f"/v1/fleet/{quote(args.node, safe='')}/drain").json()
    print(f"node {args.node} back in service (revision {r['revision']})")
    return 0


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def cmd_fleet(args: argparse.Namespace) -> int:
    """One row per connected Envoy: where it is, what it holds, and whether it is in front of clients."""
    nodes = client_for(args).get("/v1/fleet")["nodes"]
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
        ]

    headers = ["NODE", "FLEET", "REPLICA", "ADDRESS", "FRONT", "CONNS", "NEW/S", "TLS/S", "H2", "HEADROOM", "OVERLOAD"]
    headers.append("ACKED")
    emit(nodes, args.output, headers, row)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    x = sub.add_parser("fleet", help="the connected Envoys: front state, live load, acked revision")
    x.add_argument("--fleet", help="only this fleet")
    x.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    x.set_defaults(func=cmd_fleet)
    nd = sub.add_parser("node", help="one Envoy of the fleet: drain it out of the front tier, or put it back")
    nds = nd.add_subparsers(dest="action", required=True)
    x = nds.add_parser("drain", help="fail its /healthz so DNS, anycast and L4 withdraw it; connections stay")
    x.add_argument("node")
    x.add_argument("--reason")
    x.add_argument("--force", action="store_true", help="drain a node id that is not connected (yet)")
    x.add_argument("--wait", type=float, help="seconds to wait until it is withdrawn (exit 1 if not)")
    x.set_defaults(func=cmd_node_drain)
    x = nds.add_parser("undrain", help="put a drained node back in service")
    x.add_argument("node")
    x.set_defaults(func=cmd_node_undrain)
