"""What the CLI says: every error one `error:` line (a 422's field errors once each, not
twice), a `hint:` in the CLI's own terms where there is something to do; `lbcp get` alone
lists the kinds; `backend drain` says "draining" and `backend undrain` undoes it; `lbcp
--help` lists operators' commands apart from the daemons."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from api.cli import COMMAND_GROUPS, build_parser
from api.localcluster.procs import free_port
from tests.api.test_cli import ROOT, _env, lbcp


async def test_a_422_prints_each_message_once(serve_api: Any, tmp_path: Any) -> None:
    url = await serve_api()
    doc = tmp_path / "bad.yaml"
    doc.write_text("kind: cluster\nname: web\n")
    assert (await lbcp(url, "apply", "-f", str(doc))).code == 0

    r = await lbcp(url, "backend", "add", "web", "a", "10.0.0.1:99999")
    assert r.code == 1 and r.out == "" and r.err.count("less than or equal to 65535") == 1, r.err
    assert r.err == "error: /port: Input should be less than or equal to 65535 (validation-failed)\n", r.err

    doc.write_text("kind: cluster\nname: web\nprotocol: bogus\nconnect_timeout: -1\n")
    r = await lbcp(url, "apply", "-f", str(doc))
    lines = r.err.splitlines()
    assert r.code == 1 and lines[0] == "error: 2 invalid fields (validation-failed):", r.err
    assert sorted(lines[1:]) == sorted(
        [
            "  /operations/0/body/protocol: Input should be 'http1', 'http2' or 'tcp'",
            "  /operations/0/body/connect_timeout: a duration must be greater than 0 and at most 365 days",
        ]
    ), r.err
    assert r.err.count("protocol") == 1


async def test_every_error_starts_with_error(serve_api: Any) -> None:
    url = await serve_api()
    # The API's problem: its detail, then its code.
    r = await lbcp(url, "backend", "add", "nope", "x", "127.0.0.1:1")
    assert (r.code, r.err) == (1, "error: cluster 'nope' does not exist (cluster-not-found)\n")
    # One of the CLI's own (was a bare message).
    r = await lbcp(url, "get", "backends")
    assert (r.code, r.err) == (1, "error: which cluster's backends? lbcp get backends CLUSTER [NAME]\n")
    r = await lbcp(url, "bootstrap", "--node-id", "n", "--xds", "nowhere")
    assert r.code == 1 and r.err.startswith("error: expected ADDRESS:PORT"), r.err
    # A usage error: one line and where the usage is (was the usage block, then "lbcp get: error:").
    r = await lbcp(url, "get", "foo")
    assert r.code == 2 and r.err.startswith("error: argument KIND: invalid choice: 'foo'"), r.err
    assert r.err.splitlines()[1] == "hint: `lbcp get --help` shows the usage"
    # No API there: what to do about it.
    r = await lbcp(f"http://127.0.0.1:{free_port()}", "get", "clusters")
    first, hint = r.err.splitlines()
    assert r.code == 1 and first.startswith("error: no answer from the admin API at http://127.0.0.1:"), r.err
    assert hint.startswith("hint: is the admin API running?")


async def test_get_with_no_kind_lists_the_kinds(serve_api: Any) -> None:
    url = await serve_api()
    r = await lbcp(url, "get")
    assert r.code == 0 and r.err == "", r.err
    rows = r.out.splitlines()
    assert rows[0].split() == ["KIND", "USAGE", "WHAT"]
    assert [row.split()[0] for row in rows[1:]] == [
        "clusters", "backends", "listeners", "routes", "certificates", "fleets"
    ]  # fmt: skip
    assert "lbcp get backends CLUSTER [NAME]" in r.out
    # Singular or plural, as before.
    assert (await lbcp(url, "get", "cluster")).out.split() == ["NAME", "PROTOCOL", "LB", "BACKENDS", "REVISION"]


async def test_backend_drain_says_draining_and_undrain_undoes_it(serve_api: Any, store: Any) -> None:
    from controlplane.intent.model import Backend, Cluster

    url = await serve_api()
    await store.put(Cluster(name="web"))
    await store.put(Backend(name="a", address="10.0.0.1", port=80), cluster="web")
    r = await lbcp(url, "backend", "drain", "web", "a")
    assert r.code == 0 and re.fullmatch(r"backend web/a is draining \(revision \d+\)\n", r.out), r.out
    assert _admin(await lbcp(url, "get", "backends", "web")) == "drain"
    r = await lbcp(url, "backend", "undrain", "web", "a")
    assert r.code == 0 and re.fullmatch(r"backend web/a is ready \(revision \d+\)\n", r.out), r.out
    assert _admin(await lbcp(url, "get", "backends", "web")) == "ready"
    r = await lbcp(url, "backend", "maint", "web", "a")
    assert "is in maintenance" in r.out
    # A missing cluster or backend: the API's word for it.
    for verb in ("drain", "undrain"):
        r = await lbcp(url, "backend", verb, "nope", "a")
        assert (r.code, r.err) == (1, "error: cluster 'nope' does not exist (cluster-not-found)\n"), r.err
    r = await lbcp(url, "backend", "drain", "web", "nobody")
    assert (r.code, r.err) == (1, "error: backend 'web/nobody' does not exist (backend-not-found)\n"), r.err


def _admin(r: Any) -> str:
    header, row = r.out.splitlines()
    return str(row.split()[header.split().index("ADMIN")])


def test_help_lists_operators_commands_apart_from_the_daemons() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "api.cli", "--help"], cwd=ROOT, capture_output=True, text=True, check=True, env=_env()
    ).stdout
    sections = _sections(out)
    daemons = sections["Servers (daemons: they run until stopped)"]
    assert daemons == ["api", "xds", "dns", "up", "down", "demo-backend"], out
    intent = sections["Intent (what the fleet serves)"]
    fleet = sections["Fleet (the Envoys serving it)"]
    assert intent[:2] == ["get", "apply"] and {"fleet", "node", "watch", "config"} <= set(fleet), out
    assert not set(daemons) & set(intent + fleet)
    # Every command is listed once, none hidden.
    listed = [c for title, names in sections.items() if title not in ("options",) for c in names]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(listed) == sorted(sub.choices), out  # type: ignore[arg-type]
    assert [t for t, _ in COMMAND_GROUPS] == [t for t in sections if t != "options"]
    assert "usage: lbcp [-h] [--api API] [--token TOKEN] [--state-dir STATE_DIR] [-v]" in out.replace("\n   ", "")


def _sections(help_text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in help_text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            out[current] = []
        elif current and line.startswith("  ") and not line.startswith("   "):
            out[current].append(line.split()[0])
        elif not line:
            current = None
    return out


def test_completion_knows_the_new_commands_and_kinds() -> None:
    script = subprocess.run(
        [sys.executable, "-m", "api.cli", "completion", "bash"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    probe = (
        script
        + """
COMP_WORDS=(lbcp backend un); COMP_CWORD=2; COMP_LINE="lbcp backend un"; COMP_POINT=${#COMP_LINE}
_shtab_lbcp; echo "backend: ${COMPREPLY[*]}"
COMP_WORDS=(lbcp get ""); COMP_CWORD=2; COMP_LINE="lbcp get "; COMP_POINT=${#COMP_LINE}
_shtab_lbcp; echo "get: ${COMPREPLY[*]}"
"""
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "backend: undrain" in out, out
    assert set(out.split("get:")[1].split()) >= {"clusters", "backends", "fleets"}, out


async def test_get_routes_says_how_each_answers_and_its_policies(serve_api: Any, tmp_path: Any) -> None:
    url = await serve_api()
    doc = tmp_path / "routes.yaml"
    doc.write_text(
        """kind: cluster
name: web
---
kind: listener
name: http
port: 18080
---
kind: route
name: api
listener: http
match: {prefix: /api}
backends: [{cluster: web, weight: 3}]
retries: {attempts: 2, on: [5xx]}
rate_limit: {requests: 100, scope: fleet}
---
kind: route
name: old
listener: http
match: {prefix: /old}
redirect: {host: new.example, status: 308}
---
kind: route
name: health
listener: http
match: {path: /health}
direct_response: {status: 200, body: ok}
"""
    )
    assert (await lbcp(url, "apply", "-f", str(doc))).code == 0
    rows = (await lbcp(url, "get", "routes")).out.splitlines()
    assert rows[0].split() == ["NAME", "LISTENER", "DOMAINS", "MATCH", "BACKENDS", "POLICY", "REVISION"]
    by_name = {row.split()[0]: row.split()[1:-1] for row in rows[1:]}
    assert by_name == {
        "api": ["http", "*", "prefix=/api", "web:3", "retries,rate_limit(fleet)"],
        "health": ["http", "*", "path=/health", "direct:200", "-"],
        "old": ["http", "*", "prefix=/old", "redirect:308", "-"],
    }
