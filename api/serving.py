"""The admin API's defences at the connection level, under uvicorn.

uvicorn has a keep-alive timeout (an idle connection *after* a response) but no deadline for
a request head: a client that sends half a head keeps its socket forever, and enough of them
exhaust the process's descriptors. Its `limit_concurrency` counts connections too, so the
same flood would turn every real request into a plain-text 503. What is added here:

- a **head deadline** (`header_timeout`): a connection must send a whole request head within
  it, counted from when it opened or from its previous response; bytes that trickle in do not
  extend it. Past it the connection is closed.
- a **head size** bound (`max_head_bytes`, httptools has none): 431 and close.
- a **connection cap** (`max_connections`): beyond it the connection that has waited longest
  for its head is closed (a half-sent head of a flood, or an idle keep-alive), so a client
  that sends its request at once is served while the flood churns. Requests in progress are
  never closed for it.
- the **descriptor limit** is raised to fit the cap (or the cap lowered to fit it), so the
  process does not reach EMFILE by its connections.
- **loop errors** (asyncio's "socket.accept() out of system resource", once per accepted
  socket it could not take) are logged at most once a second per message, with a count.

The request-level limits (in-flight requests, body deadline) are ASGI middleware: `api.app`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from api.problems import PROBLEM_JSON, problem_body

if TYPE_CHECKING:
    import uvicorn

    from api.metrics import ApiMetrics

log = logging.getLogger(__name__)

DESCRIPTOR_RESERVE = 128  # etcd channels, logs, the listening socket and whatever else the process opens
MAX_BACKLOG = 2048  # uvicorn's default listen backlog (also how many sockets asyncio accepts at once)


class RateLimitedLog:
    """Log a repeated message at most once per `interval` per key: the first at once, then
    one line saying how many more there were, when the interval has passed."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self.logger, self.interval = logger, interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, tuple[int, int, str]] = {}  # key -> (count, level, message)
        self._flushing: set[str] = set()

    def allow(self, key: str, level: int, message: str) -> bool:
        """True for the first `key` of an interval (the caller logs it); else counted, and
        `message` with the count is logged once the interval has passed."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or now - last >= self.interval:
            self._flush(key)
            self._last[key] = now
            return True
        count, _, _ = self._suppressed.get(key, (0, level, message))
        self._suppressed[key] = (count + 1, level, message)
        if key not in self._flushing:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
            self._flushing.add(key)
            loop.call_later(self.interval - (now - last), self._flush_later, key)
        return False

    def log(self, key: str, level: int, message: str) -> None:
        if self.allow(key, level, message):
            self.logger.log(level, "%s", message)

    def _flush_later(self, key: str) -> None:
        self._flushing.discard(key)
        if key in self._suppressed:
            self._flush(key)
            self._last[key] = time.monotonic()

    def _flush(self, key: str) -> None:
        entry = self._suppressed.pop(key, None)
        if entry is None:
            return
        count, level, message = entry
        self.logger.log(level, "%s (%d more like it in the last %.0f s)", message, count, self.interval)


def limit_loop_errors(loop: asyncio.AbstractEventLoop, interval: float = 1.0) -> Callable[[], None]:
    """Route the loop's error reports through a RateLimitedLog; returns the undo."""
    previous = loop.get_exception_handler()
    limited = RateLimitedLog(logging.getLogger("asyncio"), interval)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled exception in the event loop")
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in message:
            # EMFILE and its kind: one line, no traceback (always the same lines of asyncio).
            text = f"{message}: {exc}"
            if limited.allow(f"{message}:{exc.errno}", logging.ERROR, text):
                limited.logger.error("%s", text)
            return
        if limited.allow(f"{message}:{type(exc).__name__}", logging.ERROR, message):
            # The first of a burst goes where it went before, traceback and all.
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_connections: int = 2048
    max_head_bytes: int = 64 * 1024


def fit_descriptors(max_connections: int) -> tuple[int, int]:
    """(max_connections, backlog) that fit RLIMIT_NOFILE: the connections, a burst of
    `backlog` sockets accepted at once (asyncio takes up to that many before any is
    handled) and a reserve. The soft limit is raised as far as the hard one allows; if even
    that is too few, the cap is lowered, and the log says so."""
    backlog = backlog_for(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + backlog + DESCRIPTOR_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections, backlog
    room = max(2, soft - DESCRIPTOR_RESERVE)
    fitted = max(1, room // 2 if room <= 2 * MAX_BACKLOG else room - MAX_BACKLOG)
    log.warning(
        "admin API: %d descriptors allowed (RLIMIT_NOFILE); --max-connections lowered from %d to %d",
        soft,
        max_connections,
        fitted,
    )
    return fitted, backlog_for(fitted)


def backlog_for(max_connections: int) -> int:
    return max(16, min(MAX_BACKLOG, max_connections))


class _Pool:
    """One server's connections and the ones waiting for a request head, oldest first."""

    def __init__(self, limits: ConnectionLimits, metrics: ApiMetrics | None) -> None:
        self.limits, self.metrics = limits, metrics
        self.open: set[Any] = set()
        self.waiting: dict[Any, asyncio.TimerHandle] = {}  # insertion order: who waited longest
        self.log = RateLimitedLog(log)

    def opened(self, conn: Any) -> None:
        self.open.add(conn)
        self.wait_for_head(conn)
        if len(self.open) > self.limits.max_connections:
            victim = next(iter(self.waiting))  # never empty: `conn` itself is waiting
            self.shed(victim, "evicted")

    def closed(self, conn: Any) -> None:
        self.open.discard(conn)
        self.head_arrived(conn)

    def wait_for_head(self, conn: Any) -> None:
        self.head_arrived(conn)
        conn.head_bytes, conn.head_tail = 0, b""
        self.waiting[conn] = conn.loop.call_later(self.limits.header_timeout, self.shed, conn, "header-timeout")

    def head_arrived(self, conn: Any) -> None:
        timer = self.waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def shed(self, conn: Any, reason: str, response: bytes = b"") -> None:
        self.open.discard(conn)
        self.head_arrived(conn)
        if conn.transport.is_closing():
            return
        if response:
            conn.transport.write(response)
        conn.transport.close()
        if self.metrics is not None:
            self.metrics.shed.labels(reason).inc()
        what = {
            "evicted": f"over --max-connections ({self.limits.max_connections}): closed the connection that had "
            "waited longest for its request head",
            "header-timeout": f"no whole request head within --header-timeout ({self.limits.header_timeout:g} s): "
            "closed",
            "head-too-large": f"a request head over {self.limits.max_head_bytes} bytes: 431, closed",
        }[reason]
        self.log.log(reason, logging.WARNING, f"admin API: {what}")


def _head_too_large(limit: int) -> bytes:
    body = json.dumps(
        problem_body(431, "head-too-large", "Request head too large", f"a request head is limited to {limit} bytes")
    ).encode()
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: "
        + PROBLEM_JSON.encode()
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )


def guarded_protocol(
    base: type[asyncio.Protocol], limits: ConnectionLimits, metrics: ApiMetrics | None = None
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (`HttpToolsProtocol` or `H11Protocol`) with a head
    deadline, a head size bound and a connection cap, shared by every connection of the server."""
    pool = _Pool(limits, metrics)
    too_large = _head_too_large(limits.max_head_bytes)
    if metrics is not None:
        metrics.open_connections.set_function(lambda: len(pool.open))

    class Guarded(base):  # type: ignore[misc,valid-type]
        head_bytes = 0  # of the head being waited for, so far
        head_tail = b""  # its last 3 bytes: the blank line that ends it may span two reads

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            pool.opened(self)

        def connection_lost(self, exc: Exception | None) -> None:
            pool.closed(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self in pool.waiting:
                # Checked before the parser sees it: httptools takes a head of any size, and
                # fails a URL over 65,535 bytes with a plain-text 400 of uvicorn's.
                budget = limits.max_head_bytes - self.head_bytes
                window = self.head_tail + data[: budget + 4]
                if window.find(b"\r\n\r\n") < 0:
                    if len(data) > budget:
                        pool.shed(self, "head-too-large", too_large)
                        return
                    self.head_bytes += len(data)
                self.head_tail = window[-3:]
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:
                pool.head_arrived(self)  # uvicorn starts a request cycle once the head is whole

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Waiting for the next head unless one is already queued (pipelining).
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                pool.wait_for_head(self)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def http_protocol_base(name: str | None = None) -> type[asyncio.Protocol]:
    """httptools (C; a third less CPU per request than h11) when installed, else h11."""
    if name is None:
        name = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if name == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


class ServingSettings(Protocol):
    """What serving needs of `api.app.Settings` (named here, not imported: app imports this)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def header_timeout(self) -> float: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def max_head_bytes(self) -> int: ...


def uvicorn_config(app: Any, settings: ServingSettings, *, http: str | None = None, **options: Any) -> uvicorn.Config:
    """A uvicorn.Config for `app` (from `api.app.create_app(settings)`) with the connection
    guards of `settings` (call it in the process that serves: it sets RLIMIT_NOFILE)."""
    import uvicorn

    max_connections, backlog = fit_descriptors(settings.max_connections)
    backlog = options.pop("backlog", None) or backlog
    limits = ConnectionLimits(
        header_timeout=settings.header_timeout,
        max_connections=max_connections,
        max_head_bytes=settings.max_head_bytes,
    )
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(http_protocol_base(http), limits, metrics),
        ws="none",  # the API has no WebSocket routes
        h11_max_incomplete_event_size=settings.max_head_bytes,
        backlog=backlog,
        **options,
    )
