"""docker-compose.yml and the Dockerfile: valid against the Compose specification, every file
they use exists, every lbcp command parses, and the pieces point at each other correctly
(no Docker engine runs here, so this is what can be checked without one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml

from api.cli import build_parser
from api.cli.intent import _apply_ops
from api.localcluster.procs import ETCD_AUTO_COMPACTION_MODE, ETCD_AUTO_COMPACTION_RETENTION, ETCD_QUOTA_BACKEND_BYTES

ROOT = Path(__file__).resolve().parents[2]
SPEC = Path(__file__).resolve().parent / "data" / "compose-spec.json"  # copy of ../shared/compose-spec.json


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _validator() -> jsonschema.Draft7Validator:
    # The spec declares draft 07 (as "https://json-schema.org/draft-07/schema", a URL the
    # library does not recognise); say so explicitly.
    spec = json.loads(SPEC.read_text())
    jsonschema.Draft7Validator.check_schema(spec)
    return jsonschema.Draft7Validator(spec)


def test_valid_against_the_compose_spec() -> None:
    _validator().validate(_compose())


def test_the_spec_rejects_a_broken_file() -> None:
    """The schema check can fail: a service with an unknown key is refused."""
    doc = _compose()
    doc["services"]["api"]["no_such_key"] = 1
    try:
        _validator().validate(doc)
    except jsonschema.ValidationError:
        return
    raise AssertionError("the Compose schema accepted an unknown service key")


def test_what_the_issue_asks_for_is_there() -> None:
    services = _compose()["services"]
    images = {n: s.get("image", "") for n, s in services.items()}
    assert sum(i.startswith("gcr.io/etcd-development/etcd") for i in images.values()) == 3
    lbcp = {n: s["command"][0] for n, s in services.items() if s.get("image") == "lbcp:dev"}
    assert list(lbcp.values()).count("api") == 1 and list(lbcp.values()).count("xds") == 2
    assert list(lbcp.values()).count("demo-backend") == 3
    assert sum(i.startswith("envoyproxy/envoy:") for i in images.values()) == 3
    assert any(i.startswith("prom/prometheus:") for i in images.values())


def test_mounted_files_and_build_context_exist() -> None:
    doc = _compose()
    for name, s in doc["services"].items():
        for v in s.get("volumes", []):
            source = v.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in doc.get("volumes", {}), f"{name} uses undeclared volume {source}"
        if "build" in s:
            assert (ROOT / s["build"] / "Dockerfile").is_file()


def test_lbcp_commands_parse() -> None:
    for s in _compose()["services"].values():
        if s.get("image") == "lbcp:dev":
            build_parser().parse_args([str(a) for a in s["command"]])  # SystemExit on a bad flag


def test_services_point_at_each_other() -> None:
    services = _compose()["services"]
    etcd_names = {n for n, s in services.items() if s.get("image", "").startswith("gcr.io/etcd")}
    xds = {n: s["command"] for n, s in services.items() if s.get("command", [None])[0] == "xds"}
    api = next(s["command"] for s in services.values() if s.get("command", [None])[0] == "api")
    for cmd in [api, *xds.values()]:
        assert {e.split(":")[0] for e in _flag(cmd, "--etcd").split(",")} == etcd_names
    # Envoys reach the xDS replicas by service name and port.
    for name, s in services.items():
        if not s.get("image", "").startswith("envoyproxy/envoy:"):
            continue
        boot = yaml.safe_load((ROOT / s["volumes"][0].split(":")[0]).read_text())
        xds_cluster = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "lbcp_xds")
        targets = {
            (
                e["endpoint"]["address"]["socket_address"]["address"],
                e["endpoint"]["address"]["socket_address"]["port_value"],
            )
            for e in xds_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        }
        assert targets == {(n, int(_flag(c, "--port"))) for n, c in xds.items()}, name
        assert boot["node"]["id"] == name
        assert s["ports"][0].endswith(":10000")
    # Prometheus scrapes what runs: the API port, the replicas' metrics ports, Envoys' ops port.
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: set(j["static_configs"][0]["targets"]) for j in prom["scrape_configs"]}
    assert jobs["lbcp-api"] == {f"api:{_flag(api, '--port')}"}
    assert jobs["lbcp-xds"] == {f"{n}:{_flag(c, '--metrics-port')}" for n, c in xds.items()}
    envoys = [n for n, s in services.items() if s.get("image", "").startswith("envoyproxy/envoy:")]
    ops = {
        yaml.safe_load((ROOT / services[n]["volumes"][0].split(":")[0]).read_text())["static_resources"]["listeners"][
            0
        ]["address"]["socket_address"]["port_value"]
        for n in envoys
    }
    assert jobs["envoy"] == {f"{n}:{p}" for n in envoys for p in ops}


def test_etcd_compacts_like_lbcp_up() -> None:
    """Every etcd member compacts its history and has a quota, with the values `lbcp up` uses
    (api/localcluster/procs.py): without compaction etcd's database only grows (issue 27)."""
    etcds = {n: s for n, s in _compose()["services"].items() if s.get("image", "").startswith("gcr.io/etcd")}
    assert len(etcds) == 3
    for name, s in etcds.items():
        argv = [str(a) for a in [*s["entrypoint"], *s["command"]]]
        assert argv[0] == "etcd", name
        flags = dict(a.split("=", 1) for a in argv[1:])
        assert len(flags) == len(argv) - 1, f"{name}: a flag given twice, or not as --flag=value"
        assert flags["--auto-compaction-mode"] == ETCD_AUTO_COMPACTION_MODE, name
        assert flags["--auto-compaction-retention"] == ETCD_AUTO_COMPACTION_RETENTION, name
        assert int(flags["--quota-backend-bytes"]) == ETCD_QUOTA_BACKEND_BYTES, name


async def test_demo_intent_is_valid_and_names_the_demo_backends(api) -> None:
    services = _compose()["services"]
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "compose" / "demo.yaml").read_text()) if d]
    r = await api.post("/v1/batch", params={"dry_run": "true"}, json={"operations": _apply_ops(docs, None)})
    assert r.status_code == 200, r.text
    backends = next(d for d in docs if d["kind"] == "cluster")["backends"]
    for b in backends:
        cmd = services[b["address"]]["command"]
        assert cmd[:2] == ["demo-backend", b["name"]] and int(_flag(cmd, "--port")) == b["port"]
    listener = next(d for d in docs if d["kind"] == "listener")
    assert all(
        s["ports"][0].endswith(f":{listener['port']}")
        for s in services.values()
        if s.get("image", "").startswith("envoyproxy/envoy:")
    )


def test_dockerfile_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        if src.startswith("--from="):
            continue  # from an earlier stage, not the build context
        for part in src.split():
            assert (ROOT / part).exists(), part
    assert 'ENTRYPOINT ["lbcp"]' in text and "-c constraints.txt" in text
