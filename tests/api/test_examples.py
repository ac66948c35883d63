"""The `lbcp apply` examples in docs/examples are what the docs say: each is accepted by the
real API (on a real etcd) dry-run first, which writes nothing, then for real, and reads back as
the model reads it; what a replica would serve for it passes a real Envoy's `--mode validate`.

Together they use every traffic-policy field (docs/api.md, "Traffic policy") and every value
of each of their enumerations, and every such field is in the OpenAPI document with a
description and an example that the model accepts.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

from api.cli.intent import _apply_ops, _load_docs
from api.openapi import POLICY_FIELDS
from controlplane.etcd import Etcd
from controlplane.intent import model as m
from controlplane.xds import served
from tests.envoy_validate import bootstrap, validate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.yaml"))
KINDS = {"cluster": m.Cluster, "listener": m.Listener, "route": m.Route, "backend": m.Backend, "fleet": m.Fleet}
PLURAL = {"cluster": "clusters", "listener": "listeners", "route": "routes", "fleet": "fleets"}


def _objects(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(kind, body) of every object a file writes (a cluster's inline backends as backends)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for op in _apply_ops(_load_docs(str(path)), None):
        if op["op"] == "replace_backends":
            out += [("backend", {**b, "cluster": op["cluster"]}) for b in op["body"]]
        else:
            out.append((op["kind"], {**op["body"], **({"cluster": op["cluster"]} if op["kind"] == "backend" else {})}))
    return out


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"demo.yaml", "traffic-policy.yaml", "edge-answers.yaml", "observability.yaml"} <= names, names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
async def test_example_is_accepted_dry_run_then_for_real(
    api: httpx.AsyncClient, etcd: Etcd, path: Path, tmp_path: Path
) -> None:
    ops = _apply_ops(_load_docs(str(path)), None)
    dry = await api.post("/v1/batch", params={"dry_run": "true"}, json={"operations": ops})
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True and dry.headers["lbcp-dry-run"] == "true"
    for plural in ("clusters", "listeners", "routes"):  # a dry run writes nothing
        assert (await api.get(f"/v1/{plural}")).json()["items"] == [], plural

    real = await api.post("/v1/batch", json={"operations": ops})
    assert real.status_code == 200, real.text
    assert real.json()["dry_run"] is False

    # Each object reads back as the model reads what the file says (durations, header names
    # and the like in their canonical forms), nothing lost or added.
    for kind, body in _objects(path):
        if kind == "backend":
            url = f"/v1/clusters/{body.pop('cluster')}/backends/{body['name']}"
        else:
            url = f"/v1/{PLURAL[kind]}/{body['name']}"
        got = (await api.get(url)).json()
        got.pop("revision")
        assert got == KINDS[kind].model_validate(body).model_dump(mode="json"), (kind, body["name"])

    await _envoy_validates(etcd, path, tmp_path)


async def _envoy_validates(etcd: Etcd, path: Path, tmp_path: Path) -> None:
    """What a replica serves an Envoy of the default fleet for this intent (built as
    `GET /v1/fleet/{node}/config` builds it), as one static bootstrap (EDS and RDS inlined), is
    accepted by `envoy --mode validate`."""
    built = await served.node_config(etcd, "default", "validate", None, list(served.TYPES))
    res = {t: {r["name"]: r["resource"] for r in built["types"][t]["resources"]} for t in served.TYPES}
    clusters = []
    for name, c in res["cds"].items():
        c = dict(c)
        if c.get("type") == "EDS" or "eds_cluster_config" in c:
            c.pop("eds_cluster_config", None)
            c["type"] = "STATIC"
            c["load_assignment"] = res["eds"].get(name, {"cluster_name": name})
        clusters.append(c)
    listeners = []
    for lst in res["lds"].values():
        for chain in lst.get("filter_chains", []):
            for f in chain.get("filters", []):
                hcm = f.get("typed_config", {})
                if "rds" in hcm:
                    rds = hcm.pop("rds")
                    hcm["route_config"] = res["rds"][rds["route_config_name"]]
        listeners.append(lst)
    assert listeners
    r = validate(bootstrap(clusters, listeners, fleet="default"), tmp_path)
    assert r.returncode == 0, f"Envoy rejects what {path.name} makes lbcp serve:\n{r.stdout}{r.stderr}"


# -- coverage: every traffic-policy field, and every value of their enumerations ---------------


def _walk(obj: Any, seen: set[tuple[str, str]], values: set[tuple[str, str, Any]]) -> None:
    if isinstance(obj, BaseModel):
        for field in obj.model_fields_set:
            seen.add((type(obj).__name__, field))
            value = getattr(obj, field)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str | int | bool):
                    values.add((type(obj).__name__, field, v))
            _walk(value, seen, values)
    elif isinstance(obj, list | tuple):
        for x in obj:
            _walk(x, seen, values)


def _literals(annotation: Any) -> set[Any]:
    """The values of every Literal inside an annotation (through lists, unions, Annotated)."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return set().union(*(_literals(a) for a in typing.get_args(annotation))) if typing.get_args(annotation) else set()


def _used() -> tuple[set[tuple[str, str]], set[tuple[str, str, Any]]]:
    seen: set[tuple[str, str]] = set()
    values: set[tuple[str, str, Any]] = set()
    for path in EXAMPLES:
        for kind, body in _objects(path):
            body = {k: v for k, v in body.items() if not (kind == "backend" and k == "cluster")}
            _walk(KINDS[kind].model_validate(body), seen, values)
    return seen, values


def test_examples_use_every_policy_field_and_value() -> None:
    seen, values = _used()
    missing = sorted(f"{s}.{f}" for s, fields in POLICY_FIELDS.items() for f in fields if (s, f) not in seen)
    assert not missing, f"no example in docs/examples uses {missing}"
    unused = []
    for schema, fields in POLICY_FIELDS.items():
        if schema == "HashPolicy":  # the older hash policy types are in demo.yaml and docs/ring.md
            wanted = {("type", "path")}
        else:
            model = getattr(m, schema)
            wanted = {(f, v) for f in fields for v in _literals(model.model_fields[f].annotation)}
        unused += [f"{schema}.{f}={v!r}" for f, v in sorted(wanted, key=str) if (schema, f, v) not in values]
    assert not unused, f"no example in docs/examples uses {unused}"


# -- the OpenAPI document: every policy field described, with an example the model takes ------


def _adapter(model: type[BaseModel], field: str) -> TypeAdapter[Any]:
    info = model.model_fields[field]
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(annotation)


async def test_policy_fields_have_descriptions_and_valid_examples(api: httpx.AsyncClient) -> None:
    schemas = (await api.get("/openapi.json")).json()["components"]["schemas"]
    for schema, fields in POLICY_FIELDS.items():
        model = getattr(m, schema)
        if schema not in ("Route", "Cluster", "Listener", "CircuitBreakers", "HashPolicy"):
            # A policy's own schema: every field of it is listed (a new one needs an example).
            assert set(fields) == set(model.model_fields), (schema, set(fields) ^ set(model.model_fields))
        for field in fields:
            prop = schemas[schema]["properties"][field]
            assert prop.get("description"), f"{schema}.{field} has no description"
            assert prop.get("examples"), f"{schema}.{field} has no example"
            for example in prop["examples"]:
                _adapter(model, field).validate_python(example)  # raises if the model refuses it


def test_api_md_names_every_policy_field() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text[text.index("## Traffic policy") :]
    missing = sorted(f"{s}.{f}" for s, fields in POLICY_FIELDS.items() for f in fields if f"`{f}" not in section)
    assert not missing, f"docs/api.md's traffic policy section does not name {missing}"
