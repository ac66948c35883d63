"""`lbcp`: serve the admin API, start a local cluster, and manage intent without curl.

Client commands find the API through --api / LBCP_API (default: .lbcp/cluster.json from
`lbcp up`, else http://127.0.0.1:8080) and the token through --token / LBCP_TOKEN. Errors
print the problem's title and detail and exit 1. Each noun's commands live in a module of
their own (intent, fleet, ring, frontdoor, servers, local) and register their subparsers.
"""

from __future__ import annotations

import argparse
import logging
import sys

from api.cli import fleet, frontdoor, intent, local, pki, ring, servers, watch
from api.cli.client import ApiProblem


def _global_flags(p: argparse.ArgumentParser, defaults: bool) -> None:
    """The flags every command takes. The top-level parser holds their defaults; each
    subcommand repeats them with no default of its own, so `lbcp --api URL fleet` and `lbcp
    fleet --api URL` mean the same and a flag given before the subcommand is not reset."""

    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--api", default=d(None), help="admin API URL (env LBCP_API)")
    p.add_argument("--token", default=d(None), help="bearer token (env LBCP_TOKEN)")
    p.add_argument("--state-dir", default=d(".lbcp"), help="where `lbcp up` keeps its state (default .lbcp)")
    p.add_argument(
        "-v", "--verbose", action="store_true", default=d(False), help="log at INFO, libraries' request lines included"
    )


def _subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [child, *_subparsers(child)]
    return found


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lbcp", description="lbcp: a control plane for Envoy fleets")
    _global_flags(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True)
    for module in (servers, local, intent, ring, frontdoor, fleet, pki, watch):
        module.register(sub)
    c = sub.add_parser("completion", help='print a shell completion script: eval "$(lbcp completion bash)"')
    c.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    c.set_defaults(func=_completion)
    for child in _subparsers(p):
        _global_flags(child, defaults=False)
    return p


def _completion(args: argparse.Namespace) -> int:
    import shtab  # builds the script from this very parser, so it never goes stale

    print(shtab.complete(build_parser(), args.shell))
    return 0


# Long-running servers log their own progress at INFO; client commands print their results
# and log only warnings. Library request lines (httpx) appear only with -v.
_SERVERS = {"api", "xds", "dns", "up", "demo-backend"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = args.command in _SERVERS
    level = logging.INFO if args.verbose or server else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ApiProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
