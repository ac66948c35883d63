"""REST resources: clusters, backends, listeners, routes and batch, over the intent store.

Shapes (same for every kind):
- `GET /v1/{kinds}` → `{"items": [...], "revision": R, "next_page_token": ...}`
- `GET /v1/{kinds}/{name}` → the object plus `revision` (its ETag, etcd's mod_revision)
- `POST /v1/{kinds}` creates (409 if it exists); `PUT` creates or replaces; `PATCH` is a JSON
  merge patch (RFC 7386); `DELETE` removes. Writes answer with the object (or what was
  deleted), the new etcd revision in `revision` and in the `Lbcp-Revision` header.
- `If-Match: "R"` / `*`, `If-None-Match: *`, or a `revision` field in the body (as If-Match).
- `?dry_run=true` validates fully and writes nothing (`Lbcp-Dry-Run: true`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from api._request import json_body, parse, wait_for_rollout, wait_timeout
from api.auth import Role, require
from api.problems import ApiError, field_errors
from controlplane.etcd import prefix_end
from controlplane.intent.certificates import info as cert_info
from controlplane.intent.certificates import validate as validate_certificate
from controlplane.intent.errors import FieldError, PreconditionFailed, TooLarge, ValidationFailed, WriteConflict
from controlplane.intent.keyspace import Ref, Stored
from controlplane.intent.model import MODELS, Backend, Certificate, Kind
from controlplane.intent.store import AnyOp, Op, ReplaceBackends, Store, WriteResult
from controlplane.moves.controller import read_status
from controlplane.xds.load import backend_health
from controlplane.xds.registry import fleet_prefix, fleet_view

PLURAL = {
    Kind.CLUSTER: "clusters",
    Kind.LISTENER: "listeners",
    Kind.ROUTE: "routes",
    Kind.BACKEND: "backends",
    Kind.CERTIFICATE: "certificates",
    Kind.FLEET: "fleets",
}
MAX_BATCH_OPS = 10_000


async def _check_wait(request: Request) -> None:
    """`?wait=acked&timeout=` of a write, checked before anything is written (a 422 after
    the commit would be a rejected request that wrote)."""
    wait = request.query_params.get("wait")
    if wait is not None:
        if wait != "acked":
            raise ValidationFailed([FieldError("/query/wait", "wait takes only 'acked'")])
        wait_timeout(request, "5s")


_readers = [Depends(require(Role.READER))]
_writers = [Depends(require(Role.WRITER)), Depends(_check_wait)]


# -- helpers ---------------------------------------------------------------------------------


def public(obj: Any) -> dict[str, Any]:
    """An object as the API shows it: a certificate without its private key, with the
    leaf's facts (subject, SANs, issuer, validity, fingerprint) instead."""
    if isinstance(obj, Certificate):
        doc = {"name": obj.name, "certificate_chain": obj.certificate_chain}
        try:
            doc |= cert_info(obj.certificate_chain).as_dict()
        except ValueError:
            pass  # validated on write; a hand-edited value still lists, without facts
        return doc
    return dict(obj.model_dump(mode="json"))


def present(stored: Stored[Any]) -> dict[str, Any]:
    doc = public(stored.obj)
    doc["revision"] = stored.mod_revision
    return doc


def checked(obj: Any, base: str = "") -> Any:
    """Write-time checks a model cannot make alone: a certificate's chain, key and validity."""
    if isinstance(obj, Certificate):
        if not isinstance(obj.private_key, str):
            raise ValidationFailed([FieldError(f"{base}/private_key", "send the private key as PEM text")])
        errors = validate_certificate(obj.certificate_chain, obj.private_key)
        if errors:
            raise ValidationFailed([FieldError(base + e.pointer, e.detail) for e in errors])
    return obj


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _pop_revision(doc: Any, base: str = "") -> int | None:
    if not isinstance(doc, dict) or "revision" not in doc:
        return None
    rev = doc.pop("revision")
    if rev is None:
        return None
    if not isinstance(rev, int) or isinstance(rev, bool) or rev < 0:
        raise ValidationFailed([FieldError(f"{base}/revision", "revision must be a non-negative integer")])
    return rev


@functools.cache
def _name_model(kind: Kind) -> type[BaseModel]:
    # Built once per kind: creating a pydantic model per request cost a fifth of the API's CPU.
    field = MODELS[kind].model_fields["name"]
    return type(f"_{kind}Name", (BaseModel,), {"__annotations__": {"name": field.annotation}, "name": field})


def check_name(kind: Kind, name: str, pointer: str = "/name") -> None:
    try:
        _name_model(kind)(name=name)
    except ValidationError as exc:
        raise ValidationFailed([FieldError(pointer, f"{name!r}: {field_errors(exc)[0].detail}")]) from None


def _preconditions(request: Request, body_revision: int | None) -> tuple[str | None, int | None]:
    """(forced action, if_match) from If-Match / If-None-Match / body revision."""
    action, if_match = None, None
    im = request.headers.get("if-match")
    inm = request.headers.get("if-none-match")
    if im is not None:
        im = im.strip()
        if im == "*":
            action = "replace"
        else:
            try:
                if_match = int(im.removeprefix("W/").strip('"'))
            except ValueError:
                raise ApiError(
                    400, "invalid-precondition", "Invalid precondition", 'If-Match takes an ETag like "42", or *'
                ) from None
    elif body_revision is not None:
        if_match = body_revision
    if inm is not None:
        if inm.strip() != "*":
            raise ApiError(
                400, "invalid-precondition", "Invalid precondition", "If-None-Match takes only * (create-only)"
            )
        if action is not None or if_match is not None:
            raise ApiError(
                400, "invalid-precondition", "Invalid precondition", "If-Match and If-None-Match exclude each other"
            )
        action = "create"
    return action, if_match


def _headers(result: WriteResult, etag: int | None = None) -> dict[str, str]:
    h = {"Lbcp-Revision": str(result.revision)}
    if result.dry_run:
        h["Lbcp-Dry-Run"] = "true"
    if etag:
        h["ETag"] = f'"{etag}"'
    return h


async def _finish(
    request: Request, result: WriteResult, body: dict[str, Any], status: int, headers: dict[str, str]
) -> JSONResponse:
    """Answer a write; with `?wait=acked[&timeout=5s]`, only once the fleet has acked it."""
    wait = request.query_params.get("wait")
    if wait is not None and not result.dry_run:
        if wait != "acked":
            raise ValidationFailed([FieldError("/query/wait", "wait takes only 'acked'")])
        timeout = wait_timeout(request, "5s")
        rollout = await wait_for_rollout(request, result.revision, timeout)
        body["rollout"] = rollout
        headers["Lbcp-Rollout"] = (
            "complete" if rollout["complete"] else ("rejected" if rollout["rejected"] else "timeout")
        )
    return JSONResponse(body, status_code=status, headers=headers)


async def _object_response(request: Request, result: WriteResult, ref: Ref) -> JSONResponse:
    r = result.results[0]
    doc = public(r.obj) if r.obj is not None else {}
    rev = r.mod_revision or result.revision
    doc["revision"] = rev
    status = 201 if r.outcome == "created" and not result.dry_run else 200
    headers = _headers(result, None if result.dry_run else rev)
    headers["Lbcp-Outcome"] = r.outcome
    return await _finish(request, result, doc, status, headers)


def _body_doc(schema: str | dict[str, Any], content: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    s = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    return {"requestBody": {"required": True, "content": {c: {"schema": s} for c in content}}}


# -- generic handlers ------------------------------------------------------------------------


async def _list(
    request: Request, kind: Kind, cluster: str | None, limit: int, page_token: str | None, health: bool = False
) -> JSONResponse:
    page = await _store(request).list(kind, cluster=cluster, limit=limit, page_token=page_token)
    items = [present(s) for s in page.items]
    if health and cluster is not None:
        await _add_health(request, cluster, items)
    return JSONResponse(
        {"items": items, "revision": page.revision, "next_page_token": page.next_page_token},
        headers={"Lbcp-Revision": str(page.revision)},
    )


async def _get(request: Request, ref: Ref, health: bool = False) -> JSONResponse:
    stored = await _store(request).get(ref)
    body = present(stored)
    if health and ref.cluster is not None:
        await _add_health(request, ref.cluster, [body])
    if ref.kind == Kind.FLEET:
        # What the mover is doing for it (not intent: PUT ignores it, as it does `revision`).
        rebalance = await read_status(_store(request).etcd, "fleet", ref.name)
        body["status"] = {"rebalance": rebalance}
    return JSONResponse(body, headers={"ETag": f'"{stored.mod_revision}"'})


async def _put(request: Request, ref: Ref, dry_run: bool, action: str = "put") -> JSONResponse:
    doc = await json_body(request)
    if isinstance(doc, dict) and "name" not in doc:
        doc["name"] = ref.name
    return await _put_doc(request, ref, doc, dry_run, action)


async def _put_doc(request: Request, ref: Ref, doc: Any, dry_run: bool, action: str) -> JSONResponse:
    body_rev = _pop_revision(doc)
    if ref.kind == Kind.FLEET and isinstance(doc, dict):
        doc.pop("status", None)  # as GET shows it: the mover's progress, not intent
    forced, if_match = _preconditions(request, body_rev)
    obj = checked(parse(MODELS[ref.kind], doc))
    if obj.name != ref.name:
        raise ValidationFailed([FieldError("/name", f"the body names {obj.name!r} but the path names {ref.name!r}")])
    result = await _store(request).apply([Op(forced or action, ref, obj, if_match)], dry_run=dry_run)  # type: ignore[arg-type]
    return await _object_response(request, result, ref)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, except that changing a tagged object's `type` replaces it
    (so `{"load_balancer": {"type": "round_robin"}}` drops maglev's table_size)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    if "type" in patch and out.get("type") != patch["type"]:
        out = {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


# A merge patch without a precondition is re-read and re-applied when another write got in
# between (as Kubernetes does): bounded in attempts and in time, with a short random pause.
PATCH_ATTEMPTS = 100
PATCH_RETRY_SECONDS = 10.0


async def _patch(request: Request, ref: Ref, dry_run: bool) -> JSONResponse:
    patch = await json_body(request, patch=True)
    if not isinstance(patch, dict):
        raise ValidationFailed([FieldError("", "a merge patch is a JSON object")])
    body_rev = _pop_revision(patch)
    forced, if_match = _preconditions(request, body_rev)
    if forced == "create":
        raise ApiError(
            400,
            "invalid-precondition",
            "Invalid precondition",
            "PATCH modifies an existing object; If-None-Match does not apply",
        )
    store = _store(request)
    deadline = time.monotonic() + PATCH_RETRY_SECONDS
    for attempt in range(1, PATCH_ATTEMPTS + 1):
        current = await store.get(ref)
        if if_match is not None and if_match != current.mod_revision:
            raise PreconditionFailed(
                f"{ref} is at revision {current.mod_revision}, not {if_match}", current.mod_revision
            )
        merged = _merge_patch(current.obj.model_dump(mode="json"), patch)
        obj = parse(MODELS[ref.kind], merged)
        if obj.name != ref.name:
            raise ValidationFailed([FieldError("/name", "a PATCH cannot rename an object")])
        # The patch was computed on `current`: commit only if it is still current.
        try:
            result = await store.apply([Op("replace", ref, obj, current.mod_revision)], dry_run=dry_run)
        except PreconditionFailed:
            # Another write got in. A caller who stated a revision asked for exactly this
            # 412; one who did not gets the patch applied to the newer object.
            if if_match is not None:
                raise
            if attempt == PATCH_ATTEMPTS or time.monotonic() >= deadline:
                # Never a 412 the caller did not ask for: the object kept changing under it.
                raise WriteConflict(
                    f"{ref} changed under this patch {attempt} times; it was not applied, send it again"
                ) from None
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
            continue
        return await _object_response(request, result, ref)
    raise AssertionError("unreachable")  # pragma: no cover


async def _delete(request: Request, ref: Ref, dry_run: bool) -> JSONResponse:
    forced, if_match = _preconditions(request, None)
    if forced == "create":
        raise ApiError(400, "invalid-precondition", "Invalid precondition", "If-None-Match does not apply to DELETE")
    result = await _store(request).apply([Op("delete", ref, None, if_match)], dry_run=dry_run)
    r = result.results[0]
    return await _finish(
        request,
        result,
        {"deleted": public(r.obj) if r.obj else None, "revision": result.revision},
        200,
        _headers(result),
    )


# -- routers ---------------------------------------------------------------------------------


def kind_router(kind: Kind) -> APIRouter:
    """CRUD for a top-level kind (cluster, listener, route, certificate). Certificates have
    no PATCH: a chain and its key change together, by PUT."""
    plural = PLURAL[kind]
    schema = MODELS[kind].__name__
    r = APIRouter(prefix=f"/v1/{plural}", tags=[plural])

    def ref(name: str) -> Ref:
        check_name(kind, name)
        return Ref(kind, name)

    @r.get("", dependencies=_readers, summary=f"List {plural}")
    async def list_(
        request: Request, limit: int = Query(100, ge=1, le=1000), page_token: str | None = Query(None, max_length=4096)
    ) -> JSONResponse:
        return await _list(request, kind, None, limit, page_token)

    @r.post("", dependencies=_writers, summary=f"Create a {kind}", openapi_extra=_body_doc(schema), status_code=201)
    async def create(request: Request, dry_run: bool = False) -> JSONResponse:
        doc = await json_body(request)
        name = doc.get("name") if isinstance(doc, dict) else None
        if not isinstance(name, str):
            raise ValidationFailed([FieldError("/name", "a name is required")])
        check_name(kind, name)
        return await _put_doc(request, Ref(kind, name), doc, dry_run, "create")

    @r.get("/{name}", dependencies=_readers, summary=f"Get a {kind}")
    async def get(request: Request, name: str) -> JSONResponse:
        return await _get(request, ref(name))

    @r.put("/{name}", dependencies=_writers, summary=f"Create or replace a {kind}", openapi_extra=_body_doc(schema))
    async def put(request: Request, name: str, dry_run: bool = False) -> JSONResponse:
        return await _put(request, ref(name), dry_run)

    if kind != Kind.CERTIFICATE:

        @r.patch(
            "/{name}",
            dependencies=_writers,
            summary=f"Merge-patch a {kind}",
            openapi_extra=_body_doc({"type": "object"}, ("application/merge-patch+json", "application/json")),
        )
        async def patch(request: Request, name: str, dry_run: bool = False) -> JSONResponse:
            return await _patch(request, ref(name), dry_run)

    @r.delete("/{name}", dependencies=_writers, summary=f"Delete a {kind}")
    async def delete(request: Request, name: str, dry_run: bool = False) -> JSONResponse:
        return await _delete(request, ref(name), dry_run)

    return r


_HEALTH_DOC = (
    "Add each backend's health as the Envoys see it (`health`: state, per Envoy, counts): healthy,"
    " failing (active health check), ejected (outlier detection), degraded, draining, pending"
    " (not checked yet), unknown; `mixed` when Envoys disagree."
)


async def _registry_nodes(request: Request) -> dict[str, dict[str, Any]]:
    """Each connected Envoy's newest registry record: the registry alone (what the Envoys see
    of their hosts), not the drains, fleets and replica heartbeats `read_fleet` adds. Its
    size follows the Envoys, never intent: each record's `load.hosts` is bounded (MAX_HOSTS)."""
    etcd = _store(request).etcd
    prefix = fleet_prefix(etcd.config.prefix)
    resp = await etcd.range(prefix, prefix_end(prefix))
    docs = []
    for kv in resp.kvs:
        try:
            doc = json.loads(kv.value)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("node_id"), str):
            docs.append(doc)
    return fleet_view(docs, {}, resp.header.revision).nodes


async def _add_health(request: Request, cluster: str, items: list[dict[str, Any]]) -> None:
    """`health` on each presented backend (a page at most), from one read of the registry."""
    if not items:
        return
    nodes = await _registry_nodes(request)
    for b in items:
        if b.get("admin_state") == "maint":
            # Out of the Envoys' endpoints on purpose: none of them has a view of it.
            b["health"] = {"state": "unknown", "envoys": {}, "counts": {}}
            continue
        b["health"] = backend_health(cluster, b["address"], b["port"], b["revision"], nodes)


def backends_router() -> APIRouter:
    r = APIRouter(prefix="/v1/clusters/{cluster}/backends", tags=["backends"])

    def ref(cluster: str, name: str) -> Ref:
        check_name(Kind.CLUSTER, cluster, "/cluster")
        check_name(Kind.BACKEND, name)
        return Ref(Kind.BACKEND, name, cluster)

    @r.get("", dependencies=_readers, summary="List a cluster's backends")
    async def list_(
        request: Request,
        cluster: str,
        limit: int = Query(100, ge=1, le=1000),
        page_token: str | None = Query(None, max_length=4096),
        health: bool = Query(False, description=_HEALTH_DOC),
    ) -> JSONResponse:
        check_name(Kind.CLUSTER, cluster, "/cluster")
        return await _list(request, Kind.BACKEND, cluster, limit, page_token, health)

    @r.post("", dependencies=_writers, summary="Add a backend", openapi_extra=_body_doc("Backend"), status_code=201)
    async def create(request: Request, cluster: str, dry_run: bool = False) -> JSONResponse:
        doc = await json_body(request)
        name = doc.get("name") if isinstance(doc, dict) else None
        if not isinstance(name, str):
            raise ValidationFailed([FieldError("/name", "a name is required")])
        return await _put_doc(request, ref(cluster, name), doc, dry_run, "create")

    @r.put(
        "",
        dependencies=_writers,
        summary="Replace the whole member set",
        openapi_extra=_body_doc({"type": "array", "items": {"$ref": "#/components/schemas/Backend"}}),
    )
    async def replace_all(request: Request, cluster: str, dry_run: bool = False) -> JSONResponse:
        check_name(Kind.CLUSTER, cluster, "/cluster")
        doc = await json_body(request)
        if isinstance(doc, dict) and isinstance(doc.get("backends"), list) and len(doc) == 1:
            doc = doc["backends"]
        if not isinstance(doc, list):
            raise ValidationFailed([FieldError("", "expected a JSON array of backends")])
        if len(doc) > MAX_BATCH_OPS:
            raise TooLarge(f"at most {MAX_BATCH_OPS} backends per request")
        backends = tuple(parse(Backend, d, f"/{i}") for i, d in enumerate(doc))
        result = await _store(request).apply([ReplaceBackends(cluster, backends)], dry_run=dry_run)
        r0 = result.results[0]
        return await _finish(
            request,
            result,
            {
                "revision": result.revision,
                "added": r0.added,
                "removed": r0.removed,
                "updated": r0.updated,
                "unchanged": len(backends) - len(r0.added) - len(r0.updated),
            },
            200,
            _headers(result),
        )

    @r.get("/{name}", dependencies=_readers, summary="Get a backend")
    async def get(
        request: Request, cluster: str, name: str, health: bool = Query(False, description=_HEALTH_DOC)
    ) -> JSONResponse:
        return await _get(request, ref(cluster, name), health)

    @r.put("/{name}", dependencies=_writers, summary="Create or replace a backend", openapi_extra=_body_doc("Backend"))
    async def put(request: Request, cluster: str, name: str, dry_run: bool = False) -> JSONResponse:
        return await _put(request, ref(cluster, name), dry_run)

    @r.patch(
        "/{name}",
        dependencies=_writers,
        summary="Merge-patch a backend",
        openapi_extra=_body_doc({"type": "object"}, ("application/merge-patch+json", "application/json")),
    )
    async def patch(request: Request, cluster: str, name: str, dry_run: bool = False) -> JSONResponse:
        return await _patch(request, ref(cluster, name), dry_run)

    @r.delete("/{name}", dependencies=_writers, summary="Delete a backend")
    async def delete(request: Request, cluster: str, name: str, dry_run: bool = False) -> JSONResponse:
        return await _delete(request, ref(cluster, name), dry_run)

    return r


_BATCH_SCHEMA = {
    "type": "object",
    "required": ["operations"],
    "properties": {
        "operations": {
            "type": "array",
            "maxItems": MAX_BATCH_OPS,
            "items": {
                "type": "object",
                "required": ["op"],
                "properties": {
                    "op": {"enum": ["create", "put", "replace", "delete", "replace_backends"]},
                    "kind": {"enum": ["cluster", "backend", "listener", "route"]},
                    "name": {"type": "string"},
                    "cluster": {"type": "string"},
                    "if_match": {"type": "integer", "minimum": 0},
                    "body": {},
                },
            },
        }
    },
}


def _batch_op(i: int, item: Any) -> AnyOp:
    base = f"/operations/{i}"
    if not isinstance(item, dict):
        raise ValidationFailed([FieldError(base, "an operation is a JSON object")])
    unknown = set(item) - {"op", "kind", "name", "cluster", "if_match", "body"}
    if unknown:
        raise ValidationFailed([FieldError(f"{base}/{sorted(unknown)[0]}", "unknown field")])
    action = item.get("op")
    if action == "replace_backends":
        cluster, body = item.get("cluster"), item.get("body")
        if not isinstance(cluster, str):
            raise ValidationFailed([FieldError(f"{base}/cluster", "replace_backends needs a cluster")])
        check_name(Kind.CLUSTER, cluster, f"{base}/cluster")
        if not isinstance(body, list):
            raise ValidationFailed([FieldError(f"{base}/body", "replace_backends takes an array of backends")])
        return ReplaceBackends(
            cluster, tuple(parse(Backend, d, f"{base}/body/{j}") for j, d in enumerate(body)), f"{base}/body"
        )
    if action not in ("create", "put", "replace", "delete"):
        raise ValidationFailed(
            [FieldError(f"{base}/op", "op is one of create, put, replace, delete, replace_backends")]
        )
    try:
        kind = Kind(str(item.get("kind")))
    except ValueError:
        raise ValidationFailed(
            [FieldError(f"{base}/kind", "kind is one of cluster, backend, listener, route, certificate")]
        ) from None
    body = item.get("body")
    name = item.get("name")
    if name is None and isinstance(body, dict):
        name = body.get("name")
    if not isinstance(name, str):
        raise ValidationFailed([FieldError(f"{base}/name", "a name is required")])
    check_name(kind, name, f"{base}/name")
    cluster = item.get("cluster")
    if kind == Kind.BACKEND:
        if not isinstance(cluster, str):
            raise ValidationFailed([FieldError(f"{base}/cluster", "a backend operation needs its cluster")])
        check_name(Kind.CLUSTER, cluster, f"{base}/cluster")
    elif cluster is not None:
        raise ValidationFailed([FieldError(f"{base}/cluster", f"a {kind} operation takes no cluster")])
    if_match = item.get("if_match")
    if if_match is not None and (not isinstance(if_match, int) or isinstance(if_match, bool) or if_match < 0):
        raise ValidationFailed([FieldError(f"{base}/if_match", "if_match is a non-negative integer")])
    ref = Ref(kind, name, cluster if kind == Kind.BACKEND else None)
    if action == "delete":
        if body is not None:
            raise ValidationFailed([FieldError(f"{base}/body", "delete takes no body")])
        return Op("delete", ref, None, if_match, f"{base}/body")
    if isinstance(body, dict) and "name" not in body:
        body = {**body, "name": name}
    obj = checked(parse(MODELS[kind], body, f"{base}/body"), f"{base}/body")
    if obj.name != name:
        raise ValidationFailed(
            [FieldError(f"{base}/body/name", f"the body names {obj.name!r}, the operation {name!r}")]
        )
    return Op(action, ref, obj, if_match, f"{base}/body")


def batch_router() -> APIRouter:
    r = APIRouter(tags=["batch"])

    @r.post(
        "/v1/batch",
        dependencies=_writers,
        summary="Apply several operations, all or nothing",
        openapi_extra=_body_doc(_BATCH_SCHEMA),
    )
    async def batch(request: Request, dry_run: bool = False) -> JSONResponse:
        doc = await json_body(request)
        if not isinstance(doc, dict) or not isinstance(doc.get("operations"), list):
            raise ValidationFailed([FieldError("/operations", 'expected {"operations": [...]}')])
        if set(doc) != {"operations"}:
            raise ValidationFailed([FieldError(f"/{sorted(set(doc) - {'operations'})[0]}", "unknown field")])
        items = doc["operations"]
        if len(items) > MAX_BATCH_OPS:
            raise TooLarge(f"a batch holds at most {MAX_BATCH_OPS} operations, got {len(items)}")
        ops = [_batch_op(i, item) for i, item in enumerate(items)]
        result = await _store(request).apply(ops, dry_run=dry_run)
        out: list[dict[str, object]] = []
        for op, res in zip(ops, result.results, strict=False):
            if isinstance(op, ReplaceBackends):
                out.append(
                    {
                        "op": "replace_backends",
                        "cluster": op.cluster,
                        "outcome": res.outcome,
                        "added": res.added,
                        "removed": res.removed,
                        "updated": res.updated,
                    }
                )
            else:
                entry: dict[str, object] = {
                    "op": op.action,
                    "kind": str(op.ref.kind),
                    "name": op.ref.name,
                    "outcome": res.outcome,
                    "revision": res.mod_revision or (result.revision if res.outcome != "deleted" else None),
                }
                if op.ref.cluster:
                    entry["cluster"] = op.ref.cluster
                out.append(entry)
        return await _finish(
            request,
            result,
            {"revision": result.revision, "dry_run": result.dry_run, "results": out},
            200,
            _headers(result),
        )

    return r
