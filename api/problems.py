"""RFC 9457 problem details: every error the API returns, with a stable `code`."""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from controlplane.etcd import translate_error
from controlplane.intent.errors import FieldError, StoreError, ValidationFailed

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TAG_VALUES = {"round_robin", "least_request", "random", "maglev", "ring_hash"}
_UNION_MEMBERS = {"str", "int", "float", "bool", "OriginRegex", "SealedKey"}


class ApiError(StoreError):
    """An error raised by the API layer itself (auth, content type, JSON syntax, …)."""

    def __init__(self, status: int, code: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.status, self.code, self.title = status, code, title


def problem_body(
    status: int, code: str, title: str, detail: str, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:lbcp:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem(status: int, code: str, title: str, detail: str, instance: str | None = None, **extra: Any) -> JSONResponse:
    body = problem_body(status, code, title, detail, instance, **extra)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="lbcp"'
    if status == 412 and extra.get("current_revision"):
        headers["ETag"] = f'"{extra["current_revision"]}"'
    if status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def pointer_from_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts: list[str] = []
    for i, p in enumerate(loc):
        s = str(p)
        # Discriminated unions put the tag into the location; it is not part of the document.
        if s in _TAG_VALUES and i > 0 and str(loc[i - 1]) == "load_balancer":
            continue
        if s.startswith(("function-", "constrained-")) or s == "[key]":
            continue  # ("[key]": pydantic's mark of a refused dict key; the pointer names the key)
        # A union names the member it tried (str | OriginRegex -> "OriginRegex", "str"): not
        # part of the document either.
        if s in _UNION_MEMBERS:
            continue
        parts.append(s.replace("~", "~0").replace("/", "~1"))
    return "/" + "/".join(parts) if parts else ""


def _clean_msg(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def field_errors(exc: ValidationError | RequestValidationError, base: str = "") -> list[FieldError]:
    out = []
    for e in exc.errors():
        out.append(FieldError(base + pointer_from_loc(e.get("loc", ())), _clean_msg(str(e.get("msg", "invalid")))))
    return out


def _store_error(request: Request, exc: StoreError) -> JSONResponse:
    extra = dict(exc.extra)
    if isinstance(exc, ValidationFailed):
        extra["errors"] = [{"pointer": e.pointer, "detail": e.detail} for e in exc.errors]
    if exc.status >= 500 and exc.status != 503:
        log.error("store error on %s %s: %s", request.method, request.url.path, exc.detail)
    return problem(exc.status, exc.code, exc.title, exc.detail, request.url.path, **extra)


_HTTP_CODES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Unauthenticated"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


@functools.cache
def _template(path: str) -> re.Pattern[str]:
    return re.compile("".join(r"[^/]+" if p.startswith("{") else re.escape(p) for p in re.split(r"(\{[^}]+\})", path)))


def allowed_methods(request: Request) -> list[str]:
    """Every method the API takes at this path: from its OpenAPI document (Starlette's own
    Allow names only the first route of a path, and FastAPI nests the included routers), and
    the routes outside it (/metrics, /docs)."""
    methods: set[str] = set()
    path = request.url.path
    for template, ops in request.app.openapi()["paths"].items():
        if _template(template).fullmatch(path):
            methods |= {m.upper() for m in ops}
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches({**request.scope, "method": "OPTIONS"})
            if match != Match.NONE:
                methods |= route.methods
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Route every error, FastAPI's own included, to a problem+json response."""

    @app.exception_handler(StoreError)
    async def _on_store_error(request: Request, exc: StoreError) -> JSONResponse:
        return _store_error(request, exc)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _on_grpc(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        return _store_error(request, translate_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = field_errors(exc)
        return _store_error(request, ValidationFailed(errs))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _HTTP_CODES.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = allowed_methods(request) or sorted(m.strip() for m in headers.get("Allow", "").split(","))
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed on {request.url.path}; it takes {', '.join(allowed)}"
        resp = problem(exc.status_code, code, title, detail, request.url.path)
        resp.headers.update(headers)
        return resp

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500,
            "internal-error",
            "Internal error",
            "an unexpected error occurred; see the server log",
            request.url.path,
        )
