"""Fleet commands: the fleet at a glance (`lbcp fleet`), rebalancing it (`lbcp fleet rebalance`),
and draining a node out of the front tier, or evacuating it (`lbcp node drain --evacuate`)."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from api.cli._common import client_for, emit, on_interrupt, progress, table
from api.cli.client import ApiProblem, Client


def cmd_node_drain(args: argparse.Namespace) -> int:
    c = client_for(args)
    params: dict[str, Any] = {"force": "true"} if args.force else {}
    if args.wait and not args.evacuate:
        params |= {"wait": "withdrawn", "timeout": f"{args.wait}s"}
        on_interrupt(
            f"interrupted: {args.node} may be drained already (`lbcp fleet show {args.node}` says, "
            f"`lbcp node undrain {args.node}` undoes it)"
        )
    body: dict[str, Any] = {"reason": args.reason} if args.reason else {}
    if args.evacuate:
        body["evacuate"] = {"connections_per_second": args.rate}
    try:
        r = c.request("POST", f"/v1/fleet/{quote(args.node, safe='')}/drain", json_body=body or None, params=params)
    except ApiProblem as exc:
        if exc.body.get("override") == "force":  # the API would do it if told to: say how, in this CLI's terms
            verb = "evacuate" if args.evacuate else "drain"
            exc.hint = (
                f"add --force to {verb} it before it connects"
                if exc.code == "node-not-found"
                else f"add --force to {verb} anyway"
            )
        raise
    r = r.json()
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
    on_interrupt(f"stopped following: {node} stays drained and goes on evacuating")
    first, _ = held()
    total = max(1, first or 1)
    with progress() as bar:
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
    on_interrupt(f"stopped following: fleet {args.fleet} goes on rebalancing")
    with progress() as bar:
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


def _moving(evacuation: dict[str, Any] | None, none: str = "-") -> str:
    if not evacuation:
        return none
    return f"{evacuation.get('state')} ({evacuation.get('remaining', 0)} left at {evacuation.get('rate', 0):.0f}/s)"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


SYNC_TYPES = ("cds", "lds", "eds", "rds")


def sync_state(node: dict[str, Any], short: str) -> str:
    """Like `istioctl proxy-status`: REJECTED (its last NACK of this type is newer than what it
    acked), STALE (sent and not acked yet), SYNCED, or NOT SENT (it never asked for it)."""
    st = (node.get("types") or {}).get(short)
    if not st or not st.get("sent_version"):
        return "NOT SENT"
    nack = st.get("last_nack")
    if nack and nack.get("revision", 0) > node.get("acked_revision", 0):
        return "REJECTED"
    return "SYNCED" if st.get("acked_version") == st.get("sent_version") else "STALE"


def _acked(node: dict[str, Any], latest: int) -> str:
    r = node.get("acked_revision", 0)
    return f"r{r}" if not latest or r >= latest else f"r{r} of r{latest}"


def sync_summary(node: dict[str, Any]) -> str:
    """The four types' sync states in one word, for the narrow table: SYNCED when all are,
    else the worst state with the types in it (`STALE eds,rds`, `REJECTED cds`)."""
    states = {t: sync_state(node, t) for t in SYNC_TYPES}
    for worst in ("REJECTED", "STALE", "NOT SENT"):
        types = [t for t, st in states.items() if st == worst]
        if types:
            return f"{worst} {','.join(types)}"
    return "SYNCED"


def cmd_fleet(args: argparse.Namespace) -> int:
    """One row per connected Envoy: where it is, what it holds, and whether it is in front
    of clients. The default table fits 80 columns; `-o wide` has every column (kubectl's way)."""
    doc = client_for(args).get("/v1/fleet")
    latest = doc.get("intent_revision", 0)
    nodes = doc["nodes"]
    if args.fleet:
        nodes = [n for n in nodes if n.get("fleet") == args.fleet]
    nodes.sort(key=lambda n: (n.get("fleet", ""), n["node_id"]))

    def headroom(load: dict[str, Any]) -> str:
        return "-" if load.get("headroom") is None else f"{load['headroom'] * 100:.0f}%"

    def row(n: dict[str, Any]) -> list[Any]:
        load = n.get("load") or {}
        return [n["node_id"], n.get("fleet"), n.get("front_state"), sync_summary(n), _acked(n, latest),
                load.get("connections", "-"), headroom(load)]  # fmt: skip

    def wide_row(n: dict[str, Any]) -> list[Any]:
        load = n.get("load") or {}
        return [
            n["node_id"],
            n.get("fleet"),
            n.get("replica"),
            (n.get("front") or {}).get("address") or "-",
            n.get("front_state"),
            *(sync_state(n, t) for t in SYNC_TYPES),
            _acked(n, latest),
            load.get("connections", "-"),
            _rate(load.get("connections_per_second")),
            _rate(load.get("tls_handshakes_per_second")),
            load.get("http2_streams", "-"),
            headroom(load),
            "yes" if load.get("overloaded") else ("no" if load else "-"),
            _moving(n.get("evacuation")),
        ]

    headers = ["NODE", "FLEET", "FRONT", "SYNC", "ACKED", "CONNS", "HEADROOM"]
    wide = ["NODE", "FLEET", "REPLICA", "ADDRESS", "FRONT", *(t.upper() for t in SYNC_TYPES), "ACKED"]
    wide += ["CONNS", "NEW/S", "TLS/S", "H2", "HEADROOM", "OVERLOAD", "MOVING"]
    emit(nodes, args.output, headers, row, wide=(wide, wide_row))
    if args.output in ("table", "wide"):
        for fleet, st in sorted((doc.get("rebalances") or {}).items()):
            if (not args.fleet or fleet == args.fleet) and st.get("state") == "rebalancing":
                print(
                    f"fleet {fleet}: rebalancing at {st.get('rate', 0):.0f}/s, {st.get('moved', 0)} moved, "
                    f"{st.get('remaining', 0)} over the mean"
                )
        if args.output == "table":
            moving = [n["node_id"] for n in nodes if n.get("evacuation")]
            if moving:
                print(f"evacuating: {', '.join(moving)} (-o wide: how far)")
    return 0


def cmd_fleet_show(args: argparse.Namespace) -> int:
    """Everything lbcp knows of one Envoy, per xDS type and in front of clients (as `kubectl
    describe` shows an object: one field a line, then the per-type table, each column said)."""
    node = args.node
    c = client_for(args)
    doc = c.get(f"/v1/fleet/{quote(node, safe='')}")
    if args.output != "table":
        emit([doc], args.output, [], lambda d: [])
        return 0
    load = doc.get("load") or {}
    front = doc.get("front") or {}
    health = doc.get("front_health") or {}
    acked = doc.get("acked_revision", 0)
    fields = [
        ("Node", doc["node_id"]),
        ("Fleet", doc.get("fleet")),
        ("Replica", f"{doc.get('replica')} ({doc.get('protocol')} xDS, {_count(doc.get('streams', 1), 'stream')})"),
        ("Peer", doc.get("peer")),
        ("Identity", doc.get("identity") or "none (no client certificate)"),
        ("Connected", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc.get("connected_since", 0)))),
        ("Acked", f"r{acked} (the etcd revision of the newest config it acked)"),
        ("Front", f"{doc.get('front_state')}, at {front.get('address') or 'no address yet'}"),
        ("Health check", _health(health)),
        ("Drain", _drain(doc.get("drain"))),
        ("Moving", _moving(doc.get("evacuation"), none="no")),
        ("Load", _load(load)),
    ]
    error = doc.get("load_error")
    if error:
        # The last good sample stays above; this is why there is no newer one.
        fields.append(("Load sampling", f"failing: {error.get('reason')} ({error.get('error')}), "
                                        f"{_count(error.get('failures', 1), 'time')} in a row"))  # fmt: skip
    width = max(len(k) for k, _ in fields) + 2
    for k, v in fields:
        print(f"{k + ':':<{width}}{v}")
    print()
    print("xDS, per type: the version sent and the version acked (an etcd revision, or a hash for this")
    print("Envoy's own listener variants), responses sent and their bytes (counts), the last NACK")
    rows = []
    for short, st in sorted((doc.get("types") or {}).items()):
        nack = st.get("last_nack") or {}
        rows.append([short.upper(), sync_state(doc, short), st.get("sent_version") or "none",
                     st.get("acked_version") or "none", st.get("pushes", 0), st.get("bytes_sent", 0),
                     nack.get("message") or "none"])  # fmt: skip
    print(table(rows, ["TYPE", "STATE", "SENT VERSION", "ACKED VERSION", "RESPONSES", "BYTES", "LAST NACK"]))
    return 0


def _health(health: dict[str, Any]) -> str:
    """The replica's last probe of the Envoy's /healthz, with why it failed."""
    if not health.get("probed"):
        return "not probed"
    if health.get("ok"):
        return "passing"
    why = health.get("reason") or ""
    detail = health.get("error") or (f"HTTP {health['status']}" if health.get("status") else "")
    return "failing" + (f": {why}" if why else "") + (f" ({detail})" if detail else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_config(args: argparse.Namespace) -> int:
    """What lbcp serves one Envoy; with --diff, how the Envoy's own /config_dump differs."""
    c = client_for(args)
    types = args.type or "cds,eds,lds,rds"
    doc = c.get(f"/v1/fleet/{quote(args.node, safe='')}/config", type=types)
    if not args.diff:
        if args.output == "yaml":
            print(yaml.safe_dump(doc, sort_keys=False), end="")
        else:
            print(json.dumps(doc, indent=2))
        return 0
    admin = args.admin or _local_admin(args.state_dir, args.node)
    if not admin:
        print(f"error: where is {args.node}'s admin? Give --admin URL (a local cluster's are in cluster.json)",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        dump = httpx.get(f"{admin.rstrip('/')}/config_dump", params={"include_eds": "true"}, timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"error: {args.node}'s admin at {admin} did not answer: {exc}", file=sys.stderr)
        return 1
    from controlplane.xds.resources import GATE_PREFIX  # (envoy's protos: loaded only when needed)

    envoy = envoy_resources(dump)
    differs = 0
    for short, got in doc["types"].items():
        ours = {r["name"]: r["resource"] for r in got["resources"]}
        theirs = envoy.get(short, {})
        if short == "eds":
            # Envoy dumps the hosts it holds (with their health), not the assignment it was
            # sent; both sides are compared as endpoints with weight and priority. The health
            # gate is lbcp's per-Envoy resource, not part of what the fleet is served.
            ours = {n: _endpoints(r) for n, r in ours.items()}
            theirs = {n: _endpoints(r) for n, r in theirs.items() if not n.startswith(GATE_PREFIX)}
        for name in sorted(ours.keys() | theirs.keys()):
            a = _lines(ours.get(name))
            b = _lines(theirs.get(name))
            if a == b:
                continue
            differs += 1
            sys.stdout.writelines(
                difflib.unified_diff(a, b, f"lbcp/{short}/{name}", f"envoy/{short}/{name}", lineterm="\n")
            )
    if not differs:
        kinds = ", ".join(f"{len(g['resources'])} {s.upper()}" for s, g in doc["types"].items())
        print(f"{args.node}: its config dump matches what lbcp serves ({kinds})")
    return 1 if differs else 0


def _load(load: dict[str, Any]) -> str:
    if not load:
        return "not reported"
    headroom = (
        "no capacity set for its fleet" if load.get("headroom") is None else f"{load['headroom'] * 100:.0f}% headroom"
    )
    return (
        f"{_count(load.get('connections', 0), 'connection')} ({_rate(load.get('connections_per_second'))}/s new, "
        f"{_rate(load.get('tls_handshakes_per_second'))} TLS handshakes/s), "
        f"{_count(load.get('http2_streams', 0), 'HTTP/2 stream')}, {headroom}"
        f"{', OVERLOADED' if load.get('overloaded') else ''}"
    )


def _drain(drain: dict[str, Any] | None) -> str:
    if not drain:
        return "no"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(drain.get("since", 0)))
    return f"since {since}" + (f": {drain['reason']}" if drain.get("reason") else " (no reason given)")


def _endpoints(assignment: dict[str, Any]) -> dict[str, Any]:
    hosts = []
    for group in assignment.get("endpoints", []):
        for lb in group.get("lb_endpoints", []):
            sock = ((lb.get("endpoint") or {}).get("address") or {}).get("socket_address") or {}
            hosts.append(
                {
                    "address": f"{sock.get('address')}:{sock.get('port_value')}",
                    "weight": lb.get("load_balancing_weight", 1),
                    "priority": group.get("priority", 0),
                    "zone": (group.get("locality") or {}).get("zone", ""),
                }
            )
    return {"cluster_name": assignment.get("cluster_name"), "hosts": sorted(hosts, key=lambda h: h["address"])}


def _lines(resource: dict[str, Any] | None) -> list[str]:
    if resource is None:
        return []
    return [line + "\n" for line in json.dumps(resource, indent=2, sort_keys=True).splitlines()]


# Where each xDS type lives in Envoy's /config_dump, and the field holding the resource.
_DUMP = {
    "cds": ("ClustersConfigDump", "dynamic_active_clusters", "cluster"),
    "lds": ("ListenersConfigDump", "dynamic_listeners", "active_state"),
    "rds": ("RoutesConfigDump", "dynamic_route_configs", "route_config"),
    "eds": ("EndpointsConfigDump", "dynamic_endpoint_configs", "endpoint_config"),
}


def envoy_resources(dump: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dynamic resources of an Envoy's /config_dump, by type and name (lbcp's JSON form)."""
    out: dict[str, dict[str, Any]] = {}
    for section in dump.get("configs", []):
        kind = section.get("@type", "").rsplit(".", 1)[-1]
        for short, (dump_kind, field, inner) in _DUMP.items():
            if kind != dump_kind:
                continue
            for item in section.get(field, []):
                res = item.get(inner) or {}
                if short == "lds":
                    res = res.get("listener") or {}
                res = {k: v for k, v in res.items() if k != "@type"}
                name = res.get("name") or res.get("cluster_name")
                if name:
                    out.setdefault(short, {})[name] = res
    return out


def _local_admin(state_dir: str, node: str) -> str | None:
    """A local cluster's Envoy admin URL, from `lbcp up`'s cluster.json."""
    try:
        doc = json.loads((Path(state_dir) / "cluster.json").read_text())
    except (OSError, ValueError):
        return None
    return next((e["admin"] for e in doc.get("envoys", []) if e.get("node_id") == node), None)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    x = sub.add_parser(
        "fleet", help="the connected Envoys: per-type sync (SYNCED/STALE/REJECTED), front state, live load"
    )
    x.add_argument("--fleet", help="only this fleet")
    x.add_argument(
        "-o", "--output", choices=("table", "wide", "json", "yaml"), default="table", help="wide: every column"
    )
    x.set_defaults(func=cmd_fleet, node=None)
    fl = x.add_subparsers(dest="action")
    y = fl.add_parser("show", help="one Envoy in full: per-type versions and NACKs, front, drain, load")
    y.add_argument("node")
    y.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    y.set_defaults(func=cmd_fleet_show)
    y = sub.add_parser("config", help="what lbcp serves one Envoy (--diff: against its own /config_dump)")
    y.add_argument("node")
    y.add_argument("--type", help="cds, eds, lds, rds or a comma-separated list (default: all four)")
    y.add_argument("--diff", action="store_true", help="diff against the Envoy's /config_dump (exit 1 if it differs)")
    y.add_argument("--admin", help="the Envoy's admin URL (default: from a local cluster's cluster.json)")
    y.add_argument("-o", "--output", choices=("json", "yaml"), default="json")
    y.set_defaults(func=cmd_config)
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
