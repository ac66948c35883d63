"""deploy/prometheus and deploy/grafana: rules that load and fire as intended, and only metric
names that exist (Envoy's checked on a real Envoy's /stats/prometheus, lbcp's in docs/metrics.md)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import promql_parser
import yaml

from api.localcluster.procs import EnvoyProcess, free_port
from tests.certs import CA
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "lbcp-fleet.json"
_SUFFIXES = ("_bucket", "_count", "_sum")


def _promtool() -> str | None:
    here = Path(sys.executable).parent / "promtool"
    return str(here) if here.exists() else shutil.which("promtool")


def _names(expr: str) -> set[str]:
    """Metric names an expression selects (parsing it: a syntax error fails here)."""
    out: set[str] = set()

    def walk(node) -> None:
        if type(node).__name__ == "VectorSelector":
            out.add(node.name)
            return
        for attr in ("lhs", "rhs", "expr", "args", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is None:
                continue
            if type(child).__name__ in ("FunctionArgs", "list", "tuple"):
                for c in child:
                    walk(c)
            else:
                walk(child)

    walk(promql_parser.parse(expr))
    return out


def _rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def _all_names() -> set[str]:
    names: set[str] = set()
    for expr in [r["expr"] for r in _rules()] + _dashboard_exprs():
        names |= _names(expr)
    return names


def _base(name: str) -> str:
    for s in _SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def test_rules_and_config_with_promtool() -> None:
    promtool = _promtool()
    assert promtool is not None, (
        "promtool is missing: `make` unpacks it from Debian's prometheus package (apt-get download)"
    )
    for args in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        r = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_rules_structure() -> None:
    """What promtool checks, in Python too (so a machine without promtool still checks it)."""
    rules = _rules()
    assert len({r["alert"] for r in rules}) == len(rules), "alert names repeat"
    required = {
        "EnvoyNewConnectionRateHigh",
        "EnvoyTLSHandshakeRateHigh",
        "EnvoyHTTP2StreamsPerConnectionHigh",
        "EnvoyNearConnectionLimit",
        "EnvoyRejectingConnections",
        "EnvoyListenerDraining",
        "EnvoyDisconnectedFromXds",
        "LbcpXdsNacks",
        "LbcpConvergenceSlow",
    }
    assert required <= {r["alert"] for r in rules}
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        if "for" in r:
            assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert _names(r["expr"]), r["alert"]
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["alerts.yml"]
    assert {j["job_name"] for j in prom["scrape_configs"]} == {"lbcp-api", "lbcp-xds", "envoy"}
    # The jobs the rules name exist.
    jobs = set(re.findall(r'job="([^"]+)"', (PROM / "alerts.yml").read_text()))
    assert jobs <= {j["job_name"] for j in prom["scrape_configs"]}


def test_lbcp_names_are_documented() -> None:
    documented = set(re.findall(r"^\| `(lbcp_[a-z_]+)` \|", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    used = {_base(n) for n in _all_names() if n.startswith("lbcp_")}
    assert used and used <= documented, used - documented


async def test_envoy_names_exist_on_a_real_envoy(tmp_path: Path, replica) -> None:
    """An Envoy with a TLS listener (handshakes), a connection limit and HTTP/2 clients, on
    the production bootstrap: every envoy_* name the rules and the dashboard use is on its
    /stats/prometheus (scraped through the ops listener, as Prometheus does)."""
    cert, key = CA().issue("edge.test", ["127.0.0.1"]).write(tmp_path, "edge")
    tls_port = free_port()
    hcm = {
        "@type": (
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        ),
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
            },
        },
    }
    listener = {
        "name": "tls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": tls_port}},
        "filter_chains": [
            {
                "transport_socket": tls,
                "filters": [
                    {
                        "name": "envoy.filters.network.connection_limit",
                        "typed_config": {
                            "@type": (
                                "type.googleapis.com/envoy.extensions.filters.network.connection_limit."
                                "v3.ConnectionLimit"
                            ),
                            "stat_prefix": "tls_limit",
                            "max_connections": 1000,
                        },
                    },
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm},
                ],
            }
        ],
    }
    e = EnvoyProcess(
        tmp_path / "envoy", "names-probe", "default", [("127.0.0.1", replica.port)], extra_listeners=[listener]
    )
    await asyncio.to_thread(e.start)
    try:
        async with httpx.AsyncClient(verify=False, http2=True, timeout=5) as c:

            async def listening() -> bool:
                try:
                    await c.get(f"https://127.0.0.1:{tls_port}/")
                    return True
                except httpx.ConnectError:
                    return False

            await wait_for(listening, what="the TLS listener")
            for _ in range(3):
                r = await c.get(f"https://127.0.0.1:{tls_port}/")
                assert r.status_code == 200 and r.http_version == "HTTP/2"
        async with httpx.AsyncClient(timeout=5) as c:
            text = (await c.get(f"http://127.0.0.1:{e.ops_port}/stats/prometheus")).text
    finally:
        e.stop()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    used = {n for n in _all_names() if n.startswith("envoy_")}
    missing = sorted(n for n in used if n not in exposed)
    assert used and not missing, missing


def test_dashboard_is_valid() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["panels"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for expr in _dashboard_exprs():
        assert _names(expr), expr
