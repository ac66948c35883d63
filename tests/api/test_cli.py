"""The CLI's own plumbing: global flags before or after the subcommand, and completion
scripts generated from the parser (checked by the shell that loads them). `lbcp()` runs the
CLI as a subprocess for the other CLI tests (tests/api/test_cli_*.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def lbcp(url: str, *args: str, state_dir: Path | None = None, timeout: float = 60) -> Ran:
    """`python -m api.cli --api URL ARGS...` without blocking the event loop (the API under
    test may be served by this very loop)."""
    state = ["--state-dir", str(state_dir)] if state_dir else ["--state-dir", str(ROOT / ".no-such-lbcp-state")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "--api", url, *state, *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("LBCP_API", "LBCP_TOKEN", "COLUMNS")}


@pytest.mark.parametrize(
    "argv",
    [
        ["--api", "http://a:1", "--token", "t" * 16, "--state-dir", "s", "node", "drain", "n1"],
        ["node", "drain", "n1", "--api", "http://a:1", "--token", "t" * 16, "--state-dir", "s"],
        ["--api", "http://a:1", "node", "drain", "--token", "t" * 16, "n1", "--state-dir", "s"],
    ],
)
def test_global_flags_anywhere(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.api, args.token, args.state_dir, args.node) == ("http://a:1", "t" * 16, "s", "n1")


def test_a_flag_before_the_subcommand_is_not_reset_by_it() -> None:
    args = build_parser().parse_args(["--state-dir", "elsewhere", "-v", "fleet"])
    assert args.state_dir == "elsewhere" and args.verbose and args.api is None
    assert build_parser().parse_args(["fleet"]).state_dir == ".lbcp"


def test_bash_completion_loads_and_knows_the_commands() -> None:
    script = subprocess.run(
        [sys.executable, "-m", "api.cli", "completion", "bash"], capture_output=True, text=True, check=True
    ).stdout
    # Load it in a real bash and ask it what `lbcp fl<TAB>` and `lbcp fleet <TAB>` complete to.
    probe = (
        script
        + """
COMP_WORDS=(lbcp fl); COMP_CWORD=1; COMP_LINE="lbcp fl"; COMP_POINT=${#COMP_LINE}
_shtab_lbcp; echo "top: ${COMPREPLY[*]}"
COMP_WORDS=(lbcp fleet ""); COMP_CWORD=2; COMP_LINE="lbcp fleet "; COMP_POINT=${#COMP_LINE}
_shtab_lbcp; echo "fleet: ${COMPREPLY[*]}"
"""
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "top: fleet" in out, out
    assert "show" in out.split("fleet:")[1] and "rebalance" in out.split("fleet:")[1], out


def test_apply_reads_yaml_1_2_booleans(tmp_path: Path) -> None:
    """A retry policy's `on:` key stays the string "on" (YAML 1.1 would make it True, and
    the API would refuse the document); true/false are still booleans."""
    from api.cli.intent import _load_docs

    doc = tmp_path / "route.yaml"
    doc.write_text("kind: route\nretries: {attempts: 2, on: [5xx]}\nredirect: {strip_query: yes}\nwebsocket: true\n")
    [d] = _load_docs(str(doc))
    assert d["retries"] == {"attempts": 2, "on": ["5xx"]}
    assert d["redirect"] == {"strip_query": "yes"} and d["websocket"] is True


def test_a_refused_dict_key_points_at_the_key() -> None:
    from api.problems import pointer_from_loc

    assert pointer_from_loc(("request_headers", "set", "host", "[key]")) == "/request_headers/set/host"
