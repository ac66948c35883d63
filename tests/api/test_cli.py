"""The CLI's own plumbing: global flags before or after the subcommand, and completion
scripts generated from the parser (checked by the shell that loads them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from api.cli import build_parser


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
