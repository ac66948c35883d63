"""Ring commands: a cluster's key-space shares, key lookups, and a live watch over xDS."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from api.cli._common import client_for, table


def cmd_ring_show(args: argparse.Namespace) -> int:
    r = client_for(args).get(f"/v1/clusters/{args.cluster}/ring")
    if args.output == "json":
        print(json.dumps(r, indent=2))
        return 0
    size = f"table {r['table_size']}" if r["table_size"] else f"ring {r['ring_size']} points"
    print(f"{r['cluster']}: {r['algorithm']}, {size}, revision {r['revision']}, max/avg {r['max_over_avg']:.3f}")
    print(
        table(
            [[b["name"], f"{b['share'] * 100:.2f}%", f"{(b['ideal_share'] or 0) * 100:.2f}%"] for b in r["backends"]],
            ["BACKEND", "SHARE", "IDEAL"],
        )
    )
    return 0


def cmd_ring_lookup(args: argparse.Namespace) -> int:
    r = client_for(args).post(f"/v1/clusters/{args.cluster}/ring/lookup", {"keys": args.keys})
    for k in args.keys:
        print(f"{k}\t{r['backends'][k]}")
    return 0


def _xds_target(args: argparse.Namespace) -> str:
    if args.xds:
        return str(args.xds)
    state = Path(args.state_dir) / "cluster.json"
    try:
        return str(json.loads(state.read_text())["xds"][0])
    except (OSError, ValueError, KeyError, IndexError):
        raise SystemExit(f"no --xds given and no local cluster in {state}") from None


def cmd_ring_watch(args: argparse.Namespace) -> int:
    """Subscribe to the cluster's lbcp.v1.HashRing over delta ADS and print every version."""
    import asyncio
    import socket
    import time

    import grpc

    from controlplane.ring.tables import header_hash
    from controlplane.ring.watch import watch

    async def run() -> None:
        node = args.node_id or f"ring-watch-{socket.gethostname()}-{id(args):x}"
        async for u in watch(_xds_target(args), args.cluster, node, limit=args.count):
            stamp = time.strftime("%H:%M:%S")
            if u.ring is None:
                print(f"{stamp} {u.cluster}: no ring (cluster gone or not hashing)", flush=True)
                continue
            r = u.ring.ring
            size = len(r.priorities[0].maglev_table) or len(r.priorities[0].ring_hashes) if r.priorities else 0
            algorithm = "maglev" if r.algorithm == r.MAGLEV else "ring_hash"
            print(
                f"{stamp} {u.cluster}: {algorithm} revision {r.revision} version {u.version} "
                f"{len(r.backends)} backends, {size} slots",
                flush=True,
            )
            for name, share in sorted(u.ring.shares().items()):
                print(f"    {name:<24} {share * 100:6.2f}%")
            for key in args.key or ():
                h = header_hash([key])
                print(f"    key {key!r} -> {u.ring.pick(h) if h is not None else None}")

    try:
        asyncio.run(run())  # Ctrl-C: `main` ends it quietly, exit 130, as every follow does
    except grpc.aio.AioRpcError as exc:
        raise SystemExit(f"xDS stream failed: {exc.code().name}: {exc.details()}") from None
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rg = sub.add_parser("ring", help="the consistent-hash ring every Envoy builds for a cluster")
    rs = rg.add_subparsers(dest="action", required=True)
    x = rs.add_parser("show", help="backends' shares of the key space")
    x.add_argument("cluster")
    x.add_argument("-o", "--output", choices=("table", "json"), default="table")
    x.set_defaults(func=cmd_ring_show)
    x = rs.add_parser("lookup", help="which backend each key goes to (the hash-policy value: header, cookie, ...)")
    x.add_argument("cluster")
    x.add_argument("keys", nargs="+")
    x.set_defaults(func=cmd_ring_lookup)
    x = rs.add_parser("watch", help="follow the ring live over xDS (lbcp.v1.HashRing), as a non-Envoy consumer would")
    x.add_argument("cluster")
    x.add_argument("--xds", help="an xDS replica HOST:PORT (default: the local cluster's first)")
    x.add_argument("--key", action="append", help="also show where this hash-header value goes (repeatable)")
    x.add_argument("--count", type=int, help="stop after this many updates")
    x.add_argument("--node-id", help="node id to present (default ring-watch-HOST-…)")
    x.set_defaults(func=cmd_ring_watch)
