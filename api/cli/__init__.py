"""`lbcp`: serve the admin API, start a local cluster, and manage intent without curl.

Client commands find the API through --api / LBCP_API (default: .lbcp/cluster.json from
`lbcp up`, else http://127.0.0.1:8080) and the token through --token / LBCP_TOKEN. Each
noun's commands live in a module of their own (intent, fleet, ring, frontdoor, servers,
local) and register their subparsers.

How it ends, the same for every command: an error is one `error: ...` line on stderr (the
API's problem detail, then a `hint:` where the CLI knows what to do about it), exit 1;
Ctrl-C ends a command that follows or waits at once, with no traceback and at most one
line saying what carries on without it, exit 130; a reader that goes away (`lbcp config
envoy-0 | head`) ends it quietly, exit 141, as a SIGPIPE would.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

# The top-level help lists the commands in these groups, in this order (a command that is
# in none is listed under "Other commands", so none is ever hidden).
COMMAND_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Intent (what the fleet serves)", ("get", "apply", "cluster", "backend", "listener", "route")),
    ("Fleet (the Envoys serving it)", ("fleet", "node", "config", "watch", "ring", "frontdoor")),
    ("Setup and keys", ("bootstrap", "pki", "kek", "certificates", "completion")),
    ("Servers (daemons: they run until stopped)", ("api", "xds", "dns", "up", "down", "demo-backend")),
)


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


class _Parser(argparse.ArgumentParser):
    """Usage errors as every other error: `error: ...`, then where the usage is (as kubectl
    does), not the whole usage block; exit 2 as argparse does."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\nhint: `{self.prog} --help` shows the usage\n")


class _TopParser(_Parser):
    """`lbcp --help` with the commands in groups (operators' commands apart from the
    daemons), laid out by argparse's own formatter. Completion (shtab) reads the parser's
    actions, not this text, so it is unaffected."""

    def format_help(self) -> str:
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        commands: dict[str, argparse.Action] = {}
        for group in self._action_groups:
            shown = [a for a in group._group_actions if not isinstance(a, argparse._SubParsersAction)]
            for a in group._group_actions:
                if isinstance(a, argparse._SubParsersAction):
                    commands |= {c.dest: c for c in a._get_subactions()}
            if shown:
                formatter.start_section(group.title)
                formatter.add_arguments(shown)
                formatter.end_section()
        listed: set[str] = set()
        for title, names in (*COMMAND_GROUPS, ("Other commands", tuple(commands))):
            actions = [commands[n] for n in names if n in commands and n not in listed]
            listed |= {a.dest for a in actions}
            if actions:
                formatter.start_section(title)
                formatter.add_arguments(actions)
                formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()


def build_parser() -> argparse.ArgumentParser:
    from api.cli import fleet, frontdoor, intent, local, pki, ring, servers, watch

    p = _TopParser(
        prog="lbcp",
        description="lbcp: a control plane for Envoy fleets",
        epilog="Run `lbcp COMMAND --help` for a command's flags; `lbcp get` lists what there is to get.",
    )
    _global_flags(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for module in (servers, local, intent, ring, frontdoor, fleet, pki, watch):
        module.register(sub)
    c = sub.add_parser("completion", help='print a shell completion script: eval "$(lbcp completion bash)"')
    c.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    c.set_defaults(func=_completion)
    for child in _subparsers(p):
        _global_flags(child, defaults=False)
        for action in child._actions:
            if isinstance(action, argparse._SubParsersAction) and action.metavar is None:
                # "required: {show,rebalance}" rather than the attribute's name ("action")
                action.metavar = "{" + ",".join(action.choices) + "}"
    return p


def _completion(args: argparse.Namespace) -> int:
    import shtab  # builds the script from this very parser, so it never goes stale

    print(shtab.complete(build_parser(), args.shell))
    return 0


# Long-running servers log their own progress at INFO; client commands print their results
# and log only warnings. Library request lines (httpx) appear only with -v.
_SERVERS = {"api", "xds", "dns", "up", "demo-backend"}


def main(argv: list[str] | None = None) -> int:
    """Run one command. Everything, imports included, runs inside the handlers below, so
    Ctrl-C and a closed pipe end it the same way wherever they come."""
    args: Any = None
    try:
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else argv):
            parser.print_help()  # `lbcp` alone: what there is to run
            return 0
        args = parser.parse_args(argv)
        server = args.command in _SERVERS
        level = logging.INFO if args.verbose or server else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if not args.verbose:
            logging.getLogger("httpx").setLevel(logging.WARNING)
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except KeyboardInterrupt:
        from api.cli._common import interrupt_note

        note = interrupt_note()
        if note:
            _stderr(note)
        return 130
    except BrokenPipeError:
        return _pipe_closed()
    except SystemExit as exc:
        if isinstance(exc.code, str):  # raise SystemExit("message"): a usage error of ours
            _stderr(exc.code if exc.code.startswith("error:") else f"error: {exc.code}")
            return 1
        raise
    except Exception as exc:
        from api.cli._common import problem_lines
        from api.cli.client import ApiProblem

        if isinstance(exc, ApiProblem):
            for line in problem_lines(exc, args):
                _stderr(line)
            return 1
        if isinstance(exc, OSError):
            _stderr(f"error: {exc}")
            return 1
        raise


def _stderr(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _pipe_closed() -> int:
    """The reader of stdout went away. Point stdout at /dev/null (so the interpreter's last
    flush finds nowhere to fail) and exit as a process killed by SIGPIPE does (128 + 13)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141
