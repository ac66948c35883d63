"""The bootstrap's stats flush: set on purpose (a main-thread stall every interval that grows
with the stats), changeable per render and per `lbcp bootstrap`, within Envoy's bounds.
A real Envoy accepts it: tests/e2e/test_bootstrap.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from api.cli import build_parser
from controlplane.xds.bootstrap import STATS_FLUSH_INTERVAL, XdsEndpoint, render

XDS = [XdsEndpoint("127.0.0.1", 18000)]


def test_default_flush_is_60s_with_no_sinks_and_not_on_admin() -> None:
    doc = render("n1", "edge", XDS)
    assert STATS_FLUSH_INTERVAL == 60.0
    assert doc["stats_flush_interval"] == "60s"
    # On-admin flushing would run the flush on every /stats read, the load route's included.
    assert "stats_flush_on_admin" not in doc
    assert "stats_sinks" not in doc


@pytest.mark.parametrize(
    ("seconds", "want"), [(5, "5s"), (60, "60s"), (0.5, "0.5s"), (0.001, "0.001s"), (299.999, "299.999s")]
)
def test_the_option_sets_it(seconds: float, want: str) -> None:
    assert render("n1", "edge", XDS, stats_flush_interval=seconds)["stats_flush_interval"] == want


@pytest.mark.parametrize("seconds", [0, 0.0004, 300, 299.9996, -1])
def test_outside_what_envoy_takes_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="stats_flush_interval"):
        render("n1", "edge", XDS, stats_flush_interval=seconds)


def _cli(tmp_path: Path, *flags: str) -> dict[str, Any]:
    out = tmp_path / "b.yaml"
    args = build_parser().parse_args(
        ["bootstrap", "--node-id", "n1", "--xds", "127.0.0.1:18000", "-o", str(out), *flags]
    )
    assert args.func(args) == 0
    doc: dict[str, Any] = yaml.safe_load(out.read_text())
    return doc


def test_lbcp_bootstrap_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(tmp_path)["stats_flush_interval"] == "60s"
    assert _cli(tmp_path, "--stats-flush-interval", "30")["stats_flush_interval"] == "30s"
    assert _cli(tmp_path, "--stats-flush-interval", "5")["stats_flush_interval"] == "5s"
    with pytest.raises(SystemExit):
        _cli(tmp_path, "--stats-flush-interval", "300")
    assert "0.001 to 299.999 seconds" in capsys.readouterr().err
