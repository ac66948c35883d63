"""Front health: each replica probes the `/healthz` of the Envoys connected to it, at the
address the front tier would send clients to.

The front tier may only send clients to an Envoy whose own health check passes: that
check fails when the Envoy was drained (its gate, see resources.gate_assignment), when an
operator ran `/healthcheck/fail` on its admin, or when it has no config yet. And it may
only send them to an address that is verified to be that Envoy. So for each stream the
replica decides a *front address* from trusted facts only (`FrontPolicy.front_of`): the
stream's peer address, or the node's `public_address` metadata when it lies inside a CIDR
the operator allowed for the node's fleet (`--front-cidr FLEET=CIDR`). It then asks, every
`interval` seconds, that address's `ops_port` for `/healthz`, and records the address
(`front`) and the answer (`front_health`) on the stream. The fleet registry carries both to
etcd, where the front-door renders and `lbcp dns` read them. A node that cannot be probed
(no ops port, or probing off) is not in service, unless its fleet opts out explicitly
(`--front-unprobed FLEET`: a fleet without ops listeners, where the front tier trusts the
stream alone). A record is rewritten only when the verdict changes.

Probes are plain HTTP/1.1 on a fresh connection (what a DNS health checker or a load
balancer does), at most `concurrency` at a time, each bounded by `timeout` and reading the
status line only (MAX_LINE bytes at most). Whatever answers at a node's ops port is
untrusted: an answer that is not a status line is that node's failure, with a `reason`
(REASONS) in its `front_health`, counted in the metrics; a node that keeps failing is probed
less often (`Poller`: each node on its own schedule, with back-off, in a supervised loop).
docs/frontdoor.md, "Hostile ops listeners".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.xds.resources import ENDPOINT_TYPE
from controlplane.xds.server.common import BaseStream, QuietObserver

log = logging.getLogger(__name__)

# Envoy applies an EDS update to its worker threads just after it ACKs: give it that long.
_AFTER_ACK = 0.05

MAX_LINE = 8192  # the longest status line a probe reads (the rest of the answer is not read)

# Why an ops listener gave no usable answer: the `reason` of an OpsError, of `front_health`
# and `load_error` in a node's record, and the label of the failure metrics.
REASONS = (
    "connect",  # nothing accepts the connection
    "timeout",  # no whole answer within the time bound
    "closed",  # the connection closed (or was reset) before the answer was whole
    "bad-head",  # the status line or a header is not HTTP/1.x
    "too-long",  # a line (status, header, chunk size) over its bound
    "too-big",  # a body over its bound (or with more JSON objects than its bound)
    "bad-chunk",  # invalid chunked encoding
    "status",  # an HTTP status other than the one expected
    "bad-json",  # the body is not the JSON document asked for
    "internal",  # lbcp failed on the answer (a bug: logged with its traceback)
)


class OpsError(Exception):
    """An ops listener's answer lbcp cannot use: `reason` (one of REASONS) and what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message[:300]


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n?")


def parse_status(line: bytes) -> int:
    """The status code of an HTTP/1.x status line, or OpsError("bad-head")."""
    m = _STATUS_LINE.fullmatch(line)
    if m is None:
        raise OpsError("bad-head", f"bad status line {line[:80]!r}")
    return int(m.group(1))


async def read_line(reader: asyncio.StreamReader, limit: int, what: str = "line") -> bytes:
    """One line (up to its `\\n`) from a reader opened with `limit`, or OpsError."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise OpsError("too-long", f"a {what} longer than {limit} bytes") from None
    except asyncio.IncompleteReadError as exc:
        raise OpsError("closed", f"closed after {len(exc.partial)} bytes of a {what}") from None


@dataclass(frozen=True)
class ProbeResult:
    ok: bool  # the status was 200
    status: int | None  # the HTTP status, None without a well-formed status line
    error: str  # what went wrong ("" on a well-formed answer)
    reason: str | None  # why there was no well-formed answer (REASONS), None when there was


async def check(host: str, port: int, timeout: float = 1.0, path: str = "/healthz") -> ProbeResult:
    """GET `path` once on a fresh connection, the whole exchange within `timeout`. Only the
    status line is read, at most MAX_LINE bytes of it; any answer that is not one is that
    node's failure (`reason`), never an exception."""
    try:
        status = await asyncio.wait_for(_status_of(host, port, path), timeout)
    except OpsError as exc:
        return ProbeResult(False, None, exc.message, exc.reason)
    except TimeoutError:
        return ProbeResult(False, None, f"timeout: no status line within {timeout} s", "timeout")
    except OSError as exc:
        return ProbeResult(False, None, f"closed: {exc or type(exc).__name__}", "closed")
    return ProbeResult(status == 200, status, "", None)


async def _status_of(host: str, port: int, path: str) -> int:
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
    except OSError as exc:
        raise OpsError("connect", f"connect: {exc or type(exc).__name__}") from None
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: lbcp-frontprobe\r\n\r\n".encode()
        )
        return parse_status(await read_line(reader, MAX_LINE, "status line"))
    finally:
        writer.close()


async def probe(host: str, port: int, timeout: float = 1.0, path: str = "/healthz") -> tuple[bool, int | None, str]:
    """GET `path` once: (passes, HTTP status or None, error text); see `check`."""
    r = await check(host, port, timeout, path)
    return r.ok, r.status, r.error


@dataclass
class _Schedule:
    due: float = 0.0  # monotonic time of the next poll
    failures: int = 0  # consecutive polls that failed
    reason: str | None = None  # the last failure's
    task: asyncio.Task[None] | None = None  # the poll in progress


class Poller(QuietObserver):
    """A StreamObserver that polls each of its streams on a schedule of the stream's own.

    Every `interval` a round starts the polls that are due and not still running, and does
    not wait for them: a slow or hostile node holds only its own poll (and one of
    `concurrency` slots, for at most its time bound), never the others'. A poll that fails
    (`_poll` returns a reason) is retried after `interval`, then after twice as long each
    time, up to `max_backoff` (a refused connection does not count); one that succeeds puts
    the node back on `interval`. A poll that raises is that node's failure ("internal",
    logged with its traceback), and a crash of the loop itself is logged, counted
    (`restarts`) and the loop started again: nothing a node answers ends the polling of the
    others."""

    loop_name = "poller"

    def __init__(self, interval: float, timeout: float, concurrency: int, max_backoff: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._sem = asyncio.Semaphore(concurrency)
        self._schedules: dict[int, _Schedule] = {}
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.restarts = 0  # crashes of the loop (each one logged and restarted)
        self.failures: Counter[str] = Counter()  # reason -> failed polls, for the metrics

    def _polled(self) -> Mapping[int, BaseStream]:
        raise NotImplementedError

    async def _poll(self, stream: BaseStream) -> str | None:
        """Poll one node: None when it answered, else why not (REASONS)."""
        raise NotImplementedError

    def _crashed(self, stream: BaseStream, exc: Exception) -> None:
        """Record an exception `_poll` raised on the node (a bug in lbcp, never the node's)."""

    def _min_gap(self, stream: BaseStream) -> float:
        """The least time from one poll of the node to the next, whatever `interval` says
        (a poller that must not take more than a share of what it polls says so here)."""
        return 0.0

    async def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=self.loop_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        running = [s.task for s in self._schedules.values() if s.task is not None]
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def disconnected(self, stream: BaseStream) -> None:
        s = self._schedules.pop(stream.id, None)
        if s is not None and s.task is not None:
            s.task.cancel()

    def backoff(self, failures: int) -> float:
        """The wait before the next poll of a node after `failures` failed ones in a row."""
        if failures <= 1:
            return self.interval
        return min(max(self.max_backoff, self.interval), self.interval * 2.0 ** min(failures - 1, 30))

    async def _supervise(self) -> None:
        for restart in range(1_000_000):  # bounded, though one restart a second lasts 11 days
            try:
                await self._run()
            except Exception:
                self.restarts += 1
                log.exception("%s loop crashed (%d times now): starting it again", self.loop_name, restart + 1)
                await asyncio.sleep(min(max(self.interval, 0.01), 1.0))
        log.error("%s loop crashed too often: not restarted", self.loop_name)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            self._launch_due(started)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def _launch_due(self, now: float) -> list[asyncio.Task[None]]:
        """Start the polls that are due (within a tenth of an interval) and not running."""
        self.rounds += 1
        launched = []
        for sid, stream in list(self._polled().items()):
            s = self._schedules.get(sid)
            if s is None:
                s = self._schedules[sid] = _Schedule()
            if s.task is None and s.due <= now + self.interval / 10:
                s.task = asyncio.create_task(self._guarded(stream, s), name=f"{self.loop_name}-{stream.node.id}")
                launched.append(s.task)
        return launched

    async def poll_all(self) -> None:
        """One round now: start every due poll and wait for them."""
        await asyncio.gather(*self._launch_due(time.monotonic()))

    async def _guarded(self, stream: BaseStream, s: _Schedule) -> None:
        started = time.monotonic()
        try:
            reason = await self._poll(stream)
        except Exception as exc:
            reason = "internal"
            if s.reason != "internal":  # once per run of crashes of a node, not once a poll
                log.exception("%s: polling node %s failed", self.loop_name, stream.node.id)
            with contextlib.suppress(Exception):
                self._crashed(stream, exc)
        finally:
            s.task = None
        if reason is not None:
            self.failures[reason] += 1
        self.schedule(s, started, reason, self._min_gap(stream))

    def schedule(self, s: _Schedule, started: float, reason: str | None, min_gap: float = 0.0) -> None:
        """Set a node's next poll after one that started at `started` ended with `reason`.
        A refused connection costs nothing to retry and is how every Envoy's ops listener
        answers until it is up: it neither grows the back-off nor ends it."""
        if reason is None:
            s.failures = 0
        elif reason != "connect":
            s.failures += 1
        s.reason = reason
        s.due = started + max(self.backoff(s.failures), min_gap)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FrontPolicy:
    """Which addresses a fleet's Envoys may be put in front of clients at, and which fleets
    are in service without a probe. Fleet `*` applies to every fleet."""

    cidrs: tuple[tuple[str, tuple[Network, ...]], ...] = ()
    unprobed: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, cidrs: Iterable[str] = (), unprobed: Iterable[str] = ()) -> FrontPolicy:
        """From `FLEET=CIDR` items (repeatable) and fleet names; ValueError on a bad one."""
        out: dict[str, list[Network]] = {}
        for item in cidrs:
            fleet, sep, cidr = item.partition("=")
            if not sep or not fleet:
                raise ValueError(f"--front-cidr takes FLEET=CIDR (FLEET may be *), got {item!r}")
            try:
                out.setdefault(fleet, []).append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as exc:
                raise ValueError(f"--front-cidr {item!r}: {exc}") from None
        return cls(tuple((f, tuple(n)) for f, n in out.items()), frozenset(unprobed))

    def allows(self, fleet: str, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for f, nets in self.cidrs if f in ("*", fleet) for net in nets)

    def probes(self, fleet: str) -> bool:
        return not ({"*", fleet} & self.unprobed)

    def front_of(self, stream: BaseStream) -> dict[str, Any]:
        """The address clients may be sent to for this stream's Envoy, and where it came from."""
        claimed = stream.node.metadata.get("public_address")
        if claimed:
            if isinstance(claimed, str) and self.allows(stream.fleet, claimed):
                return {"address": claimed, "source": "public_address"}
            return {
                "address": None,
                "source": "public_address",
                "reason": f"public_address {str(claimed)[:64]!r} is not inside a --front-cidr allowed for fleet "
                f"{stream.fleet!r}",
            }
        peer = stream.node.peer_host
        try:
            ipaddress.ip_address(peer)
        except ValueError:
            return {"address": None, "source": "peer", "reason": f"peer {stream.node.peer!r} has no IP address"}
        return {"address": peer, "source": "peer"}


def ops_port(stream: BaseStream) -> int | None:
    """The node's ops listener port from its metadata, or None if absent or not a port."""
    port = stream.node.metadata.get("ops_port")
    if isinstance(port, bool) or not isinstance(port, (int, float)) or not 0 < int(port) < 65536:
        return None
    return int(port)


def _target(stream: BaseStream) -> tuple[str, int] | None:
    address = (stream.front or {}).get("address")
    port = ops_port(stream)
    return (address, port) if address and port else None


class FrontProber(Poller):
    """A StreamObserver that probes every connected Envoy with an ops port (a Poller: each
    node on its own schedule, backing off from one that gives no well-formed answer)."""

    loop_name = "front-prober"

    def __init__(
        self,
        interval: float = 2.0,
        timeout: float = 1.0,
        concurrency: int = 64,
        policy: FrontPolicy | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(interval, timeout, concurrency, max_backoff)
        self.policy = policy or FrontPolicy()
        self._streams: dict[int, BaseStream] = {}
        self._soon: set[int] = set()  # streams with a probe scheduled outside the rounds
        self._pending: set[asyncio.Future[None]] = set()
        self._latest: dict[int, float] = {}  # stream id -> start of the probe last recorded

    async def stop(self) -> None:
        for t in list(self._pending):
            t.cancel()
        await super().stop()

    # -- StreamObserver --------------------------------------------------------------------

    def connected(self, stream: BaseStream) -> None:
        stream.front = self.policy.front_of(stream)
        if not self.policy.probes(stream.fleet):
            # An explicit opt-out: the front tier trusts the stream alone (docs/security.md).
            verdict = stream.front["address"] is not None
            error = f"not probed (fleet {stream.fleet!r} opts out with --front-unprobed)"
            stream.front_health = _health(verdict, None, error if verdict else stream.front["reason"], probed=False)
            return
        if stream.front["address"] is None:
            stream.front_health = _health(False, None, stream.front["reason"], probed=False)
            return
        if ops_port(stream) is None or self.interval <= 0:
            why = "no ops_port in node metadata" if self.interval > 0 else "probing is off on this replica"
            stream.front_health = _health(
                False, None, f"{why}: not verified, so not in service (--front-unprobed FLEET opts out)", probed=False
            )
            return
        self._streams[stream.id] = stream

    def disconnected(self, stream: BaseStream) -> None:
        super().disconnected(stream)
        self._streams.pop(stream.id, None)
        self._latest.pop(stream.id, None)

    def acked(self, stream: BaseStream, type_url: str, latency: float) -> None:
        # An ACK of endpoints may carry a new gate (drained / undrained) or the first config
        # (an empty gate fails /healthz until then): probe soon rather than at the next round,
        # so the front tier hears of it in a fraction of a second.
        if type_url == ENDPOINT_TYPE and stream.id in self._streams and stream.id not in self._soon:
            self._soon.add(stream.id)
            asyncio.get_running_loop().call_later(_AFTER_ACK, self._probe_soon, stream)

    def _probe_soon(self, stream: BaseStream) -> None:
        self._soon.discard(stream.id)
        if stream.id in self._streams:
            task = asyncio.ensure_future(self._probe_after_ack(stream))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _probe_after_ack(self, stream: BaseStream) -> None:
        started = time.monotonic()
        try:
            reason = await self._probe(stream)
        except Exception:
            log.exception("front-prober: probing node %s after its ACK failed", stream.node.id)
            reason = "internal"
        if reason is not None:
            self.failures[reason] += 1
        elif stream.id in self._schedules and self._schedules[stream.id].failures:
            # A well-formed answer ends a back-off (an ops listener that was not up yet).
            self.schedule(self._schedules[stream.id], started, None)

    # -- probing ---------------------------------------------------------------------------

    def _polled(self) -> Mapping[int, BaseStream]:
        return self._streams

    async def probe_all(self) -> None:
        await self.poll_all()

    async def _poll(self, stream: BaseStream) -> str | None:
        return await self._probe(stream)

    def _crashed(self, stream: BaseStream, exc: Exception) -> None:
        self._record(stream, time.monotonic(), ProbeResult(False, None, f"internal: {exc!r}", "internal"))

    async def _probe(self, stream: BaseStream) -> str | None:
        """Probe one node and record the verdict: None on a well-formed answer, else why not."""
        target = _target(stream)
        if target is None:
            return None
        async with self._sem:
            started = time.monotonic()
            result = await check(*target, timeout=self.timeout)
        self._record(stream, started, result)
        return result.reason

    def _record(self, stream: BaseStream, started: float, r: ProbeResult) -> None:
        # A round's probe and an after-ACK probe may overlap: keep the verdict of the later one.
        if self._latest.get(stream.id, 0.0) > started:
            return
        self._latest[stream.id] = started
        before = stream.front_health
        stream.front_health = _health(r.ok, r.status, r.error, probed=True, reason=r.reason)
        if before is None or (before["ok"], before["status"], before.get("reason")) != (r.ok, r.status, r.reason):
            # The first verdict is news only when the node answered something odd (an ops
            # listener not up yet refuses the first probes of every Envoy).
            if before is not None or r.reason not in (None, "connect"):
                verdict = "passing" if r.ok else "failing"
                log.info("node %s front health: %s (%s)", stream.node.id, verdict, r.status or r.error)
            stream.mark_changed()


def _health(ok: bool, status: int | None, error: str, *, probed: bool, reason: str | None = None) -> dict[str, Any]:
    """A `front_health` record; `reason` (REASONS) when the probe got no well-formed answer."""
    return {
        "ok": ok,
        "status": status,
        "error": error,
        "probed": probed,
        "checked": time.time() if probed else None,
        **({"reason": reason} if reason is not None else {}),
    }
