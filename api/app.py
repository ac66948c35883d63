"""The admin API application: `create_app(settings)` wires store, auth, errors and routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.auth import Tokens, is_loopback
from api.console import install_console
from api.events import EventHub, events_router
from api.fleet import fleet_router
from api.frontdoor import frontdoor_router
from api.metrics import ApiMetrics, MetricsMiddleware
from api.resources import backends_router, batch_router, kind_router
from api.ring import ring_router
from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.model import MODELS
from controlplane.intent.store import Store

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    tokens: Tokens = field(default_factory=Tokens)
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = DEFAULT_MAX_BODY

    def check(self) -> None:
        """Refuse an unauthenticated API on a non-loopback address."""
        if not self.tokens.enabled and not is_loopback(self.host):
            raise SystemExit(
                f"refusing to serve the admin API on {self.host} with no tokens: set LBCP_API_TOKENS "
                "or LBCP_API_TOKENS_FILE, or bind to 127.0.0.1"
            )


class _BodyLimit:
    """413 for request bodies over the limit, whether announced or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reject(scope, receive, send)
        seen = 0

        async def _receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        try:
            await self.app(scope, _receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = problems.problem(
            413,
            "payload-too-large",
            "Payload too large",
            f"request bodies are limited to {self.max_bytes} bytes",
            scope.get("path"),
        )
        await resp(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None, *, etcd: Etcd | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = etcd is None
        client = etcd or Etcd(settings.etcd)
        if client.metrics is None:
            client.metrics = metrics.etcd
        app.state.store = Store(client)
        app.state.events = EventHub(client)
        if not settings.tokens.enabled:
            log.warning("admin API: no tokens configured; dev mode, every request may write (loopback only)")
        try:
            yield
        finally:
            await app.state.events.close()
            if own:
                await client.close()

    app = FastAPI(
        title="lbcp admin API",
        version="1",
        description=(
            "Operators' intent for an Envoy fleet: clusters, backends, listeners, routes. "
            "Errors are RFC 9457 problem+json."
        ),
        lifespan=lifespan,
    )
    app.state.tokens = settings.tokens
    app.state.settings = settings
    problems.install(app)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    metrics = app.state.metrics = ApiMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)

    from controlplane.intent.model import Kind

    for kind in (Kind.CLUSTER, Kind.LISTENER, Kind.ROUTE, Kind.CERTIFICATE, Kind.FLEET):
        app.include_router(kind_router(kind))
    app.include_router(backends_router())
    app.include_router(batch_router())
    app.include_router(fleet_router())
    app.include_router(ring_router())
    app.include_router(frontdoor_router())
    app.include_router(events_router())
    install_console(app)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="etcd is reachable")
    async def readyz(request: Request) -> JSONResponse:
        ok = await request.app.state.store.etcd.status_ok()
        if not ok:
            return problems.problem(503, "store-unavailable", "Store unavailable", "etcd cannot be reached", "/readyz")
        return JSONResponse({"status": "ready"})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in MODELS.values():
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
