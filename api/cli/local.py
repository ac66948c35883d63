"""Local-cluster commands: `lbcp up` (what `make run` runs) and `lbcp down`."""

from __future__ import annotations

import argparse
import sys

from api.localcluster.procs import MAX_ENVOYS


def cmd_up(args: argparse.Namespace) -> int:
    from api.localcluster.cluster import up, up_detached

    if args.detach:
        argv = [a for a in sys.argv[1:] if a != "--detach"]
        # --state-dir is a global flag: up_detached passes it before the subcommand itself.
        argv = argv[argv.index("up") :]
        return up_detached(argv, args.state_dir)
    return up(
        args.state_dir,
        etcd_nodes=args.etcd_nodes,
        api_port=args.api_port,
        envoys=args.envoys,
        backends=0 if args.no_demo else args.backends,
        demo_intent=not args.no_demo,
        restart=args.restart,
    )


def cmd_down(args: argparse.Namespace) -> int:
    from api.localcluster.cluster import down

    return down(args.state_dir)


def _envoy_count(text: str) -> int:
    n = int(text)
    if not 0 <= n <= MAX_ENVOYS:
        raise argparse.ArgumentTypeError(f"--envoys takes 0 to {MAX_ENVOYS} (one 127.0.1.N address each), not {n}")
    return n


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("up", help="start a local cluster on loopback (what `make run` runs)")
    s.add_argument("--etcd-nodes", type=int, choices=(1, 3), default=1)
    s.add_argument(
        "--envoys",
        type=_envoy_count,
        default=2,
        help="Envoys to start (1-254): each listens at its own 127.0.1.N and on the shared 127.0.0.1, same port",
    )
    s.add_argument("--backends", type=int, default=3, help="demo backends (HTTP + WebSocket) to start")
    s.add_argument("--no-demo", action="store_true", help="start no demo backends and apply no demo intent")
    s.add_argument("--api-port", type=int)
    s.add_argument("--detach", action="store_true", help="run in the background; stop with `lbcp down`")
    s.add_argument(
        "--restart",
        choices=("on-failure", "never"),
        default="on-failure",
        help="a component that dies is started again with back-off (default), or takes the cluster down (never)",
    )
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", help="stop a cluster started with `lbcp up --detach` (by the PIDs in --state-dir)")
    s.set_defaults(func=cmd_down)
