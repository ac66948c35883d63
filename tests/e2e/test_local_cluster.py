"""A new user's first minutes: `lbcp up`, apply intent with the CLI, list it, stop cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _lbcp(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "api.cli", "--state-dir", str(state), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"lbcp {' '.join(args)} failed: {r.stdout}\n{r.stderr}")
    return r


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def local_cluster(tmp_path: Path):
    state = tmp_path / "state"
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "--state-dir", str(state), "up"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: (state / "cluster.json").exists() or proc.poll() is not None, 60, what="cluster.json")
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        yield state, proc, tmp_path / "up.log"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_up_apply_get_down(local_cluster) -> None:
    state, proc, log = local_cluster
    doc = json.loads((state / "cluster.json").read_text())
    assert doc["admin_api"].startswith("http://127.0.0.1:") and doc["etcd"]

    out = _lbcp(state, "apply", "-f", "docs/examples/demo.yaml").stdout
    assert "cluster web created" in out and "backends of web: +3" in out and "route web created" in out
    _lbcp(state, "backend", "add", "web", "web-4", "127.0.0.1:9004", "--weight", "2")
    _lbcp(state, "backend", "drain", "web", "web-2")

    table = _lbcp(state, "get", "clusters").stdout.splitlines()
    assert table[0].split() == ["NAME", "PROTOCOL", "LB", "BACKENDS", "REVISION"]
    assert table[1].split()[:4] == ["web", "http1", "maglev", "4"]
    backends = json.loads(_lbcp(state, "get", "backends", "web", "-o", "json").stdout)
    assert {b["name"]: b["admin_state"] for b in backends} == {"web-1": "ready", "web-2": "drain", "web-3": "ready", "web-4": "ready"}

    bad = _lbcp(state, "backend", "add", "nope", "x", "127.0.0.1:1", check=False)
    assert bad.returncode == 1 and "cluster-not-found" in bad.stderr

    pids = [doc["pids"]["admin_api"], *doc["pids"]["etcd"]]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    assert not (state / "cluster.json").exists()
