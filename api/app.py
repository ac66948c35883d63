"""The admin API application: `create_app(settings)` wires store, auth, errors and routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.auth import Tokens, is_loopback
from api.console import install_console
from api.events import EventHub, events_router
from api.fleet import fleet_router
from api.frontdoor import frontdoor_router
from api.metrics import ApiMetrics, MetricsMiddleware
from api.openapi import build as build_openapi
from api.resources import backends_router, batch_router, kind_router
from api.ring import ring_router
from api.serving import RateLimitedLog, limit_loop_errors
from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.errors import StoreError
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
    # Defences against floods (docs/security.md): a request head must arrive whole within
    # header_timeout, its body within body_timeout; at most max_concurrency requests are in
    # flight (503 `overloaded` beyond) and max_connections connections open.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_concurrency: int = 256
    max_connections: int = 2048
    max_head_bytes: int = 64 * 1024

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


# Not counted against --max-concurrency: the liveness probe and Prometheus must answer under
# load, and an event stream lasts as long as its viewer (bounded by --max-connections).
UNLIMITED_PATHS = frozenset({"/healthz", "/metrics", "/v1/events"})


class _Admission:
    """At most `max_concurrency` requests in flight (503 `overloaded`, `Retry-After: 1`
    beyond: the requests already in flight go on), and a request body must arrive whole
    within `body_timeout` of its head (408 `body-timeout`, and the connection closes)."""

    def __init__(self, app: ASGIApp, max_concurrency: int, body_timeout: float, metrics: ApiMetrics) -> None:
        self.app, self.max_concurrency, self.body_timeout, self.metrics = app, max_concurrency, body_timeout, metrics
        self.in_flight = 0
        self.log = RateLimitedLog(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        counted = scope["path"] not in UNLIMITED_PATHS
        if counted and self.in_flight >= self.max_concurrency:
            resp = self._shed(
                scope,
                503,
                "overloaded",
                "Overloaded",
                f"admin API: {self.in_flight} requests in flight, the --max-concurrency: answering 503 overloaded",
                f"the API is answering {self.in_flight} requests, the most it takes at once; retry in a moment",
            )
            return await resp(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        body_done = started = False

        async def _receive() -> Message:
            nonlocal body_done
            if body_done:  # e.g. waiting for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    msg = await receive()
            except TimeoutError:
                raise _BodyTimeout() from None
            body_done = msg["type"] != "http.request" or not msg.get("more_body", False)
            return msg

        async def _send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        if counted:
            self.in_flight += 1
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, _receive, _send)
        except _BodyTimeout:
            if started:
                raise
            resp = self._shed(
                scope,
                408,
                "body-timeout",
                "Request body timeout",
                f"admin API: a request body did not arrive within --body-timeout ({self.body_timeout:g} s): 408",
                f"the request body did not arrive within {self.body_timeout:g} s",
            )
            resp.headers["connection"] = "close"
            await resp(scope, receive, send)
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()

    def _shed(self, scope: Scope, status: int, code: str, title: str, logged: str, detail: str) -> JSONResponse:
        """A request refused by a limit: counted, logged at most once a second, a problem."""
        self.metrics.shed.labels(code).inc()
        self.log.log(code, logging.WARNING, logged)
        return problems.problem(status, code, title, detail, scope.get("path"))


class _BodyTimeout(Exception):
    pass


PREPARE_WAIT = 5.0  # seconds the API's start waits for the store's one-time work


async def _prepare(store: Store) -> None:
    """The store's one-time work (the reference index of an older etcd), at start, best
    effort: with etcd down, the first write that needs it does it instead."""
    try:
        await store.prepare()
    except StoreError as exc:
        log.info("reference index not checked at start (%s): the first write will", exc)


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
        prepared = asyncio.create_task(_prepare(app.state.store), name="store-prepare")
        # Serve once it is done (a fresh or indexed etcd: one read), or after a few seconds of
        # building an older etcd's index, which then goes on in the background.
        await asyncio.wait({prepared}, timeout=PREPARE_WAIT)
        if not settings.tokens.enabled:
            log.warning("admin API: no tokens configured; dev mode, every request may write (loopback only)")
        # asyncio reports every socket it could not accept (EMFILE): at most once a second.
        undo_loop_errors = limit_loop_errors(asyncio.get_running_loop())
        try:
            yield
        finally:
            prepared.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prepared
            undo_loop_errors()
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
    app.add_middleware(
        _Admission, max_concurrency=settings.max_concurrency, body_timeout=settings.body_timeout, metrics=metrics
    )
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
        if not app.openapi_schema:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
