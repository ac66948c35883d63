"""The admin API's Prometheus metrics: requests, writes, etcd and ring builds; `GET /metrics`."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.metrics import LATENCY_BUCKETS, EtcdMetrics, RingMetrics


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "lbcp_api_requests_total", "admin API requests", ["method", "route", "status"], registry=r
        )
        self.seconds = Histogram(
            "lbcp_api_request_seconds",
            "admin API request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "lbcp_api_shed_total",
            "requests and connections the API's limits refused or closed, by reason (overloaded, "
            "header-timeout, body-timeout, evicted, head-too-large)",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge("lbcp_api_requests_in_flight", "requests counted against --max-concurrency", registry=r)
        self.open_connections = Gauge("lbcp_api_open_connections", "open HTTP connections", registry=r)
        self.etcd = EtcdMetrics(r)
        self.ring = RingMetrics(r)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every request by its route template (never the raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.seconds.labels(method, route).observe(time.perf_counter() - started)
