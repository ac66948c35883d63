"""Every Envoy bootstrap in the repo, and the renderer's output, passes `envoy --mode validate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controlplane.bootstrap import XdsEndpoint, render
from controlplane.procs import envoy_binary

ROOT = Path(__file__).resolve().parents[2]


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", sorted((ROOT / "deploy").rglob("bootstrap*.yaml")), ids=lambda p: p.name)
def test_repo_bootstraps_validate(path: Path) -> None:
    r = _validate(path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("delta", [True, False])
def test_rendered_bootstrap_validates(tmp_path: Path, delta: bool) -> None:
    doc = render("n1", "edge", [XdsEndpoint("127.0.0.1", 18000), XdsEndpoint("127.0.0.2", 18000)], zone="a", delta=delta)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = _validate(path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_validate_catches_a_broken_bootstrap(tmp_path: Path) -> None:
    doc = render("n1", "edge", [XdsEndpoint("127.0.0.1", 18000)])
    doc["static_resources"]["clusters"][0]["lb_policy"] = "NOT_A_POLICY"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert _validate(path).returncode != 0


def test_render_n_instances(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "api.cli", "bootstrap", "--node-id", "edge", "--xds", "127.0.0.1:1,127.0.0.1:2",
                        "--count", "3", "-o", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [yaml.safe_load((tmp_path / f"edge-{i}.yaml").read_text()) for i in range(3)]
    assert [d["node"]["id"] for d in docs] == ["edge-0", "edge-1", "edge-2"]
    first = [d["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] for d in docs]
    assert first == [1, 2, 1]
    assert _validate(tmp_path / "edge-1.yaml").returncode == 0
