"""What the command modules share: output tables, the API client, address and TLS flags."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from api.cli.client import ApiProblem, Client, discover

# What carries on when Ctrl-C stops the command now running (one line, or None: nothing to
# say). Set by a command just before it starts to follow or wait; `main` prints it.
_interrupt_note: str | None = None


def on_interrupt(note: str | None) -> None:
    """Say `note` if Ctrl-C stops the command from here on (what the interruption leaves)."""
    global _interrupt_note
    _interrupt_note = note


def interrupt_note() -> str | None:
    return _interrupt_note


def problem_lines(exc: ApiProblem, args: argparse.Namespace | None = None) -> list[str]:
    """An API problem as the CLI prints it: `error: DETAIL (code)` once (a 422's field
    errors are its detail: each printed once, one per line when there are several), then
    a `hint:` naming this CLI's flag, never the API's query parameter."""
    errors = [f"{e.get('pointer') or '/'}: {e.get('detail')}" for e in exc.body.get("errors") or []]
    detail = exc.detail.replace("?force=true", "--force")
    suffix = f" ({exc.code})" if exc.status else ""
    if len(errors) > 1 and all(e in detail for e in errors):
        lines = [f"error: {len(errors)} invalid fields{suffix}:", *(f"  {e}" for e in errors)]
    else:
        lines = [f"error: {detail}{suffix}", *(f"  {e}" for e in errors if e not in detail)]
    hint = exc.hint
    if hint is None and exc.body.get("override") == "force" and args is not None and hasattr(args, "force"):
        hint = "add --force to do it anyway"
    if hint is None and exc.status == 0:
        hint = "is the admin API running? `lbcp up` starts one; --api or LBCP_API points at another"
    if hint is None and exc.status in (401, 403):
        hint = "give a token with --token or LBCP_TOKEN" + (
            " (a writer's, to change things)" if exc.status == 403 else ""
        )
    if hint:
        lines.append(f"hint: {hint}")
    return lines


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """Rows under headers in aligned columns (Rich): bold headers and colour on a terminal,
    plain text otherwise, and never wrapped or cut (a pipe gets every column whole)."""
    t = Table(box=None, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for h in headers:
        t.add_column(h, no_wrap=True, overflow="ignore")
    for r in rows:
        t.add_row(*[_cell(c) for c in r])
    terminal = Console().is_terminal
    out = io.StringIO()
    Console(file=out, width=10_000, force_terminal=terminal, highlight=False).print(t)
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


# Colour on a terminal, by a cell's first word (`failing (2/2)`, `STALE eds`, `mixed: ...`).
_STYLES = {
    "SYNCED": "green",
    "STALE": "yellow",
    "REJECTED": "bold red",
    "in": "green",
    "drained": "yellow",
    "healthy": "green",
    "failing": "bold red",
    "ejected": "bold red",
    "degraded": "yellow",
    "draining": "yellow",
    "pending": "yellow",
    "mixed:": "yellow",
}


def _cell(value: Any) -> Text:
    s = "" if value is None else str(value)
    return Text(s, style=_STYLES.get(s.split(" ", 1)[0], ""))


@contextmanager
def progress() -> Iterator[Progress]:
    """A progress bar on stderr (on a terminal live; otherwise its last state, once, at the
    end). Stopped by Ctrl-C it leaves nothing behind: the interruption's note says it all."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with bar:
        try:
            yield bar
        except KeyboardInterrupt:
            bar.live.transient = True  # a terminal's bar is cleared
            if not bar.console.is_terminal:
                bar.console.file = io.StringIO()  # and elsewhere none is written, not even its newline
            raise


def follow_rollout(c: Client, revision: int, timeout: float) -> int:
    """Show a write's rollout (`/v1/rollouts/R`) until every connected Envoy has acked it (0),
    one rejected it (1, with Envoy's message) or `timeout` seconds passed (1)."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    on_interrupt(f"stopped waiting: r{revision} is written and rolls out all the same (`lbcp watch` follows it)")
    with progress() as bar:
        task = bar.add_task(f"rolling out r{revision}", total=None)
        while True:
            status = c.get(f"/v1/rollouts/{revision}")
            bar.update(task, total=max(status["nodes"], 1), completed=len(status["acked"]))
            if status["complete"] or status["rejected"] or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    if status["rejected"]:
        for r in status["rejected"]:
            print(f"r{revision} rejected by {r['node_id']} ({r['type']}): {r.get('message')}", file=sys.stderr)
        return 1
    if not status["complete"]:
        print(f"r{revision}: pending on {', '.join(status['pending'])} after {timeout:.0f}s", file=sys.stderr)
        return 1
    print(f"r{revision} acked by every Envoy ({status['nodes']})")
    return 0


def wait_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", type=float, metavar="SECONDS", help="then show the rollout until every Envoy acked it (exit 1 if not)"
    )


def emit(
    items: list[dict[str, Any]],
    output: str,
    headers: list[str],
    row: Callable[[dict[str, Any]], list[Any]],
    wide: tuple[list[str], Callable[[dict[str, Any]], list[Any]]] | None = None,
) -> None:
    """Items as JSON, YAML or a table; `-o wide` is the table with `wide`'s columns."""
    if output == "wide" and wide is not None:
        headers, row = wide
    if output == "json":
        print(json.dumps(items, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(items, sort_keys=False), end="")
    else:
        print(table([row(i) for i in items], headers))


def client_for(args: argparse.Namespace) -> Client:
    url, token = discover(args.state_dir)
    return Client(args.api or url, args.token or token)


def split_hostport(value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"expected ADDRESS:PORT (IPv6 as [::1]:8080), got {value!r}")
    return host, int(port)


def server_flags(s: argparse.ArgumentParser, port: int) -> None:
    """Where a server listens and which etcd it reads (shared by `lbcp api` and `lbcp xds`)."""
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=port)
    s.add_argument("--etcd", help="etcd endpoints, comma-separated (env LBCP_ETCD_ENDPOINTS)")
    s.add_argument("--prefix", help="etcd key prefix (env LBCP_ETCD_PREFIX, default /lbcp/v1/)")
    s.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    s.add_argument("--tls-key", help="the certificate's private key (PEM)")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")


def tls_files(args: argparse.Namespace) -> tuple[str, str, str | None] | None:
    if not args.tls_cert and not args.tls_key:
        if args.tls_client_ca:
            raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (args.tls_cert and args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    return args.tls_cert, args.tls_key, args.tls_client_ca


def read_tls(files: tuple[str, str, str | None] | None) -> tuple[bytes, bytes, bytes | None] | None:
    if files is None:
        return None
    cert, key, ca = files
    return Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes() if ca else None
