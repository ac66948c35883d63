"""NACKs reach the log bounded (issue 27: a 60 s NACK storm wrote 310 MB of replica logs):
one line per node, type and version, the message cut, at most 10 lines a second."""

from __future__ import annotations

import logging
import time

import pytest

from controlplane.xds.registry import NackLog
from controlplane.xds.server.common import Nack

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def test_one_line_per_node_type_and_version_and_the_message_cut(caplog: pytest.LogCaptureFixture) -> None:
    nacks = NackLog()
    big = Nack("v1", "x" * 4096, time.time(), 7)
    with caplog.at_level(logging.WARNING, logger="controlplane.xds.registry"):
        for _ in range(5):
            nacks.nacked("e-0", "edge", CDS, big)  # the same rejection again: logged once
        nacks.nacked("e-0", "edge", CDS, Nack("v2", "other", time.time(), 8))
        nacks.nacked("e-1", "edge", CDS, big)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("NACK from e-0 (edge) for") and lines[0].endswith("… [4096 characters]")
    assert len(lines[0]) < 600
    assert "version v2: other" in lines[1] and lines[2].startswith("NACK from e-1")


def test_a_storm_is_rate_limited_and_says_how_much_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    nacks = NackLog()
    with caplog.at_level(logging.WARNING, logger="controlplane.xds.registry"):
        second = int(time.monotonic())
        while int(time.monotonic()) == second:  # start at the beginning of a second
            time.sleep(0.005)
        for i in range(1000):
            nacks.nacked(f"e-{i}", "edge", CDS, Nack("v1", "bad", time.time(), 1))
        time.sleep(1.05)
        nacks.nacked("late", "edge", CDS, Nack("v1", "bad", time.time(), 1))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == NackLog.PER_SECOND + 2, lines[-3:]
    assert lines[-2] == "990 more NACKs not logged in the last second (see /v1/fleet)"
    assert lines[-1].startswith("NACK from late")
