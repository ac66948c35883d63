"""deploy/k8s: structurally sound manifests (no cluster runs here): every object is complete,
selectors match their pods, Services reach named ports, lbcp commands parse, the Envoy
bootstrap in the ConfigMap validates with a real Envoy, and the wiring between them holds."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import yaml

from api.cli import build_parser
from api.localcluster.procs import (
    ETCD_AUTO_COMPACTION_MODE,
    ETCD_AUTO_COMPACTION_RETENTION,
    ETCD_QUOTA_BACKEND_BYTES,
    envoy_binary,
)
from tests.certs import with_test_certificates

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def _objects() -> list[dict]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kust["resources"]) == files, "kustomization.yaml must list every manifest"
    return [d for f in kust["resources"] for d in yaml.safe_load_all((K8S / f).read_text()) if d]


def _pod_containers(w: dict) -> list[dict]:
    return w["spec"]["template"]["spec"]["containers"]


def test_objects_are_complete() -> None:
    objs = _objects()
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(set(names)) == len(names)
    for o in objs:
        assert o["apiVersion"] and o["kind"] and o["metadata"]["name"]
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == "lbcp", o["metadata"]["name"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert {
        ("Deployment", "lbcp-api"),
        ("Service", "lbcp-api"),
        ("Deployment", "lbcp-xds"),
        ("Service", "lbcp-xds"),
        ("DaemonSet", "envoy"),
        ("ConfigMap", "envoy-bootstrap"),
    } <= kinds


def test_selectors_ports_and_volumes() -> None:
    objs = _objects()
    workloads = [o for o in objs if o["kind"] in WORKLOADS]
    for w in workloads:
        match = w["spec"]["selector"]["matchLabels"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert match.items() <= labels.items(), w["metadata"]["name"]
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"].get("volumes", [])}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        for c in _pod_containers(w):
            ports = {p["name"] for p in c.get("ports", [])}
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, (w["metadata"]["name"], m["name"])
            for probe in ("readinessProbe", "livenessProbe"):
                p = c.get(probe, {})
                port = (p.get("httpGet") or p.get("tcpSocket") or {}).get("port")
                assert port is None or port in ports, (w["metadata"]["name"], probe, port)
        for v in volumes.values():
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in {(o["kind"], o["metadata"]["name"]) for o in objs}
    for svc in (o for o in objs if o["kind"] == "Service"):
        targets = [
            w
            for w in workloads
            if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert targets, f"Service {svc['metadata']['name']} selects no pods"
        named = {p["name"] for w in targets for c in _pod_containers(w) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in named, (svc["metadata"]["name"], p["targetPort"])


def test_lbcp_commands_parse_and_reach_etcd_and_xds() -> None:
    objs = _objects()
    etcd = next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "etcd")
    etcd_hosts = {f"etcd-{i}.etcd:2379" for i in range(etcd["spec"]["replicas"])}
    for w in (o for o in objs if o["kind"] in WORKLOADS):
        for c in _pod_containers(w):
            if c["image"].startswith("lbcp:"):
                args = [str(a) for a in c["args"]]
                build_parser().parse_args(args)
                assert set(args[args.index("--etcd") + 1].split(",")) == etcd_hosts
    xds_svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "lbcp-xds")
    assert xds_svc["spec"]["clusterIP"] == "None"  # Envoys resolve every replica
    boot = _bootstrap()
    xds = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "lbcp_xds")
    addr = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert xds["type"] == "STRICT_DNS" and addr["address"] == "lbcp-xds.lbcp.svc.cluster.local"
    assert addr["port_value"] == next(p["port"] for p in xds_svc["spec"]["ports"] if p["name"] == "grpc")
    envoy = next(o for o in objs if o["kind"] == "DaemonSet")
    ops = next(p["containerPort"] for p in _pod_containers(envoy)[0]["ports"] if p["name"] == "ops")
    assert boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == ops


def _quantity(q: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
    return int(q[:-2]) * units[q[-2:]] if q[-2:] in units else int(q)


def test_etcd_compacts_like_lbcp_up_and_its_quota_fits_its_volume() -> None:
    """etcd compacts its history with the values `lbcp up` uses (api/localcluster/procs.py),
    and its volume holds a database at the quota plus its defragmented copy."""
    etcd = next(o for o in _objects() if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "etcd")
    (c,) = _pod_containers(etcd)
    assert c["command"][:2] == ["sh", "-c"]
    argv = shlex.split(c["command"][2])
    assert argv[:2] == ["exec", "etcd"]
    flags = dict(a.split("=", 1) for a in argv[2:])
    assert len(flags) == len(argv) - 2, "a flag given twice, or not as --flag=value"
    assert flags["--auto-compaction-mode"] == ETCD_AUTO_COMPACTION_MODE
    assert flags["--auto-compaction-retention"] == ETCD_AUTO_COMPACTION_RETENTION
    quota = int(flags["--quota-backend-bytes"])
    assert quota == ETCD_QUOTA_BACKEND_BYTES
    (claim,) = etcd["spec"]["volumeClaimTemplates"]
    assert 2 * quota < _quantity(claim["spec"]["resources"]["requests"]["storage"])


def _bootstrap() -> dict:
    cm = next(o for o in _objects() if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "envoy-bootstrap")
    return yaml.safe_load(cm["data"]["envoy.yaml"])


def test_configmap_bootstrap_validates_with_envoy(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(with_test_certificates(yaml.safe_dump(_bootstrap())))
    r = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_configmap_bootstrap_is_what_the_renderer_makes() -> None:
    from controlplane.xds.bootstrap import XdsEndpoint, XdsTLS, render

    tls = XdsTLS("/etc/lbcp/xds-tls/tls.crt", "/etc/lbcp/xds-tls/tls.key", "/etc/lbcp/xds-tls/ca.crt")
    want = render("envoy", "default", [XdsEndpoint("lbcp-xds.lbcp.svc.cluster.local", 18000)], xds_tls=tls)
    assert _bootstrap() == want
