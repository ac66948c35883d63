"""Every Envoy bootstrap in the repo, and the renderer's output, passes `envoy --mode validate`."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from api.localcluster.procs import envoy_binary
from controlplane.xds.bootstrap import XdsEndpoint, render
from tests.certs import with_test_certificates

ROOT = Path(__file__).resolve().parents[2]


def _validate(path: Path) -> subprocess.CompletedProcess:
    """`envoy --mode validate` of a bootstrap; certificate files it names (paths on the Envoy's
    host, e.g. the compose `pki` volume) are swapped for real ones made here."""
    text = path.read_text()
    swapped = with_test_certificates(text)
    if swapped != text:
        path = Path(tempfile.mkdtemp(prefix="lbcp-validate-")) / path.name
        path.write_text(swapped)
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _repo_bootstraps() -> list[Path]:
    """Every Envoy bootstrap file under deploy/ (a YAML document with node and static_resources)."""
    out = []
    for p in sorted((ROOT / "deploy").rglob("*.yaml")):
        doc = next(iter(yaml.safe_load_all(p.read_text())), None)
        if isinstance(doc, dict) and "node" in doc and "static_resources" in doc:
            out.append(p)
    return out


def test_bootstraps_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in _repo_bootstraps()}
    assert {"deploy/envoy/bootstrap.yaml", "deploy/compose/envoy-0.yaml"} <= names


@pytest.mark.parametrize("path", _repo_bootstraps(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repo_bootstraps_validate(path: Path) -> None:
    r = _validate(path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("delta", [True, False])
def test_rendered_bootstrap_validates(tmp_path: Path, delta: bool) -> None:
    doc = render(
        "n1", "edge", [XdsEndpoint("127.0.0.1", 18000), XdsEndpoint("127.0.0.2", 18000)], zone="a", delta=delta
    )
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = _validate(path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("seconds", "accepted"), [(0.001, True), (299.999, True), (300, False), (0.0009, False)])
def test_stats_flush_interval_bounds_are_envoys(tmp_path: Path, seconds: float, accepted: bool) -> None:
    """What `render` (and `lbcp bootstrap --stats-flush-interval`) takes is what Envoy takes."""
    from controlplane.xds.bootstrap import STATS_FLUSH_INTERVAL_RANGE

    low, high = STATS_FLUSH_INTERVAL_RANGE
    assert (low <= seconds <= high) is accepted
    doc = render("n1", "edge", [XdsEndpoint("127.0.0.1", 18000)])
    doc["stats_flush_interval"] = f"{seconds}s"
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = _validate(path)
    assert (r.returncode == 0) is accepted, r.stdout + r.stderr


def test_validate_catches_a_broken_bootstrap(tmp_path: Path) -> None:
    doc = render("n1", "edge", [XdsEndpoint("127.0.0.1", 18000)])
    doc["static_resources"]["clusters"][0]["lb_policy"] = "NOT_A_POLICY"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert _validate(path).returncode != 0


def test_render_n_instances(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "bootstrap",
            "--node-id",
            "edge",
            "--xds",
            "127.0.0.1:1,127.0.0.1:2",
            "--count",
            "3",
            "-o",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    docs = [yaml.safe_load((tmp_path / f"edge-{i}.yaml").read_text()) for i in range(3)]
    assert [d["node"]["id"] for d in docs] == ["edge-0", "edge-1", "edge-2"]
    first = [
        d["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"
        ]["socket_address"]["port_value"]
        for d in docs
    ]
    assert first == [1, 2, 1]
    assert _validate(tmp_path / "edge-1.yaml").returncode == 0


@pytest.mark.parametrize("path", _repo_bootstraps(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repo_bootstrap_is_what_the_renderer_makes(path: Path, tmp_path: Path) -> None:
    """A rendered bootstrap does not drift from `lbcp bootstrap` (its first line says how)."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Rendered by: lbcp "), f"{path}: first line must say how it was rendered"
    command = first.removeprefix("# Rendered by: lbcp ").split()
    if "--count" in command:  # renders a folder: render into tmp_path, compare the same file
        command[command.index("-o") + 1] = str(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "api.cli", *command], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    rendered = (tmp_path / path.name).read_text() if "--count" in command else r.stdout
    assert yaml.safe_load(rendered) == yaml.safe_load(path.read_text()), f"re-render {path.relative_to(ROOT)}"


async def test_edge_envoy_health_listener_overload_and_edge_settings(api, replica, backends, envoys) -> None:
    """A real Envoy on the production bootstrap: the front tier's health check turns 503 when
    the Envoy is being drained, Prometheus can scrape it without reaching the admin, the
    overload manager runs, and lbcp's listeners carry the edge settings."""
    import asyncio

    import httpx

    from api.localcluster.procs import free_port
    from tests.conftest import http_ok, wait_for

    port = free_port()
    r = await api.post(
        "/v1/batch",
        json={
            "operations": [
                {"op": "put", "kind": "cluster", "name": "web", "body": {}},
                {
                    "op": "put",
                    "kind": "backend",
                    "cluster": "web",
                    "name": "b0",
                    "body": {"address": "127.0.0.1", "port": backends[0].port},
                },
                {"op": "put", "kind": "listener", "name": "http", "body": {"address": "127.0.0.1", "port": port}},
                {
                    "op": "put",
                    "kind": "route",
                    "name": "r",
                    "body": {"listener": "http", "backends": [{"cluster": "web"}]},
                },
            ]
        },
    )
    assert r.status_code == 200
    e = await asyncio.to_thread(envoys, "edge-0", [("127.0.0.1", replica.port)])
    await wait_for(http_ok(f"http://127.0.0.1:{port}/"), what="Envoy serving")
    health = f"http://127.0.0.1:{e.ops_port}/healthz"
    async with httpx.AsyncClient(timeout=5) as c:
        assert (await c.get(health)).status_code == 200
        assert (await c.get(f"http://127.0.0.1:{e.ops_port}/other")).status_code == 404
        # Step one of a drain: fail the health check. The front tier sees 503, traffic still flows.
        assert (await c.post(f"{e.admin}/healthcheck/fail")).status_code == 200
        assert (await c.get(health)).status_code == 503
        assert (await c.get(f"http://127.0.0.1:{port}/")).status_code == 200
        assert (await c.post(f"{e.admin}/healthcheck/ok")).status_code == 200
        assert (await c.get(health)).status_code == 200
        # Prometheus scrapes Envoy through the ops port; the admin's other endpoints stay private.
        scrape = await c.get(f"http://127.0.0.1:{e.ops_port}/stats/prometheus")
        assert scrape.status_code == 200 and "envoy_server_live" in scrape.text
        assert (await c.post(f"http://127.0.0.1:{e.ops_port}/healthcheck/fail")).status_code == 404
        assert (await c.post(f"http://127.0.0.1:{e.ops_port}/stats/prometheus")).status_code == 404
        assert (await c.get(health)).status_code == 200
    monitors = e.stats("overload.envoy.resource_monitors")
    assert "overload.envoy.resource_monitors.fixed_heap.pressure" in monitors, monitors
    assert "overload.envoy.resource_monitors.global_downstream_max_connections.pressure" in monitors, monitors
    assert "no configured limit" not in e.proc.log_path.read_text()
    # The stats flush as rendered (a main-thread stall every interval), taken by a running Envoy.
    boot = next(c for c in e.config_dump()["configs"] if c["@type"].endswith("BootstrapConfigDump"))
    assert boot["bootstrap"]["stats_flush_interval"] == "60s"
    dump = e.config_dump("dynamic_listeners")
    text = str(dump)
    for needle in (
        "'use_remote_address': True",
        "'max_concurrent_streams': 100",
        "'per_connection_buffer_limit_bytes': 32768",
        "'headers_with_underscores_action': 'REJECT_REQUEST'",
    ):
        assert needle in text, needle


def test_pki_bundle_issues_certificates_the_replicas_accept(tmp_path: Path) -> None:
    """`lbcp pki bundle` issues node-bound certificates; `lbcp bootstrap` refuses to render a
    bootstrap whose certificate names another node (the replicas would refuse it)."""
    from controlplane.xds.identity import IdentityRule, peer_sans

    def lbcp(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    pki = tmp_path / "pki"
    r = lbcp(
        "pki", "bundle", "--dir", str(pki), "--server", "xds-0=xds-0,127.0.0.1", "--envoy", "e-0", "--envoy", "e-1"
    )
    assert r.returncode == 0, r.stderr
    assert (pki / "e-0.key").stat().st_mode & 0o777 == 0o600
    rule = IdentityRule.parse("spiffe")
    assert rule.check((pki / "e-1.crt").read_bytes(), "e-1", "default").name == "spiffe://lbcp/fleet/default/node/e-1"
    assert peer_sans((pki / "xds-0.crt").read_bytes())[0] == ["xds-0"]
    again = lbcp("pki", "bundle", "--dir", str(pki), "--envoy", "e-0")
    assert again.returncode == 0 and "e-0.crt" not in again.stdout  # present files are kept
    tls = ["--xds-tls-cert", str(pki / "{node}.crt"), "--xds-tls-key", str(pki / "{node}.key")]
    tls += ["--xds-tls-ca", str(pki / "ca.crt")]
    ok = lbcp("bootstrap", "--node-id", "e", "--xds", "xds-0:18000", "--count", "2", "-o", str(tmp_path / "b"), *tls)
    assert ok.returncode == 0, ok.stderr
    assert str(pki / "e-1.crt") in (tmp_path / "b" / "e-1.yaml").read_text()
    wrong = lbcp("bootstrap", "--node-id", "e-1", "--xds", "xds-0:18000", *[t.replace("{node}", "e-0") for t in tls])
    assert wrong.returncode != 0 and "spiffe://lbcp/fleet/default/node/e-1" in wrong.stderr


@pytest.mark.parametrize("path", _repo_bootstraps(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repo_bootstraps_read_the_load_lbcp_samples(path: Path) -> None:
    """The load route of every committed bootstrap asks for the stats the replicas parse
    (bootstrap.LOAD_STATS): a file left behind would silently report less."""
    import urllib.parse

    from controlplane.xds.bootstrap import HOSTS_FILTER, HOSTS_PATH, LOAD_STATS

    text = path.read_text()
    assert urllib.parse.quote(LOAD_STATS, safe="") in text
    # ... and serves the hosts' health (per-backend health) for intent's clusters only.
    assert f"path: {HOSTS_PATH}" in text and "filter=" + urllib.parse.quote(HOSTS_FILTER, safe="") in text
