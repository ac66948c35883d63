"""Live load: each replica samples the Envoys connected to it, through their ops listener.

Once per `interval` (default 2 s) the replica reads `GET /lbcp/load` (bootstrap.LOAD_PATH:
the admin's `/stats?format=json&usedonly&filter=…` for a fixed set of stats) from each
Envoy, at the front address it verified (controlplane.xds.probe) and the node's ops port,
on a kept-alive connection: one request per Envoy per interval. From it:

- `connections`: active downstream connections of every traffic listener (the admin's
  listener and the ops listener excluded), and `listeners`: the same per listener, keyed
  by Envoy's stat name (`127.0.0.1_10000`);
- `connections_per_second`, `tls_handshakes_per_second`: the growth of
  `downstream_cx_total` and `ssl.handshake` since the previous sample, per second;
- `http2_streams` (the HTTP/2 codec's active streams), `http2_connections`, and
  `http2_streams_per_connection`;
- `overloaded`: an overload action is active (`overload_actions`: which);
- `clusters`: what the Envoy sees of its upstream hosts (its health checks and outlier
  ejections): `healthy`, the number of clusters with every host healthy, and `degraded`,
  `{cluster: {healthy, total}}` for the others (at most 100 by name);
- `hosts`: per host, every `HOSTS_EVERY` samples (`GET /lbcp/hosts`: the admin's /clusters):
  `{cluster: {"address:port": state}}` for every cluster of intent the Envoy has, listing the
  hosts it does not see as healthy (`host_state`: failing, ejected, degraded, draining,
  pending); `hosts_revision`, the revision the Envoy had acked when it was read (a backend
  written later is not in it yet); `hosts_truncated` past MAX_HOSTS hosts or clusters;
- with a fleet capacity (`/v1/fleets/{fleet}`): `fill` (the fullest traffic listener's
  connections over `max_connections_per_envoy`), `headroom` (1 - fill), and `full`, with
  hysteresis: it turns true at `high_water_percent` and false again only below
  `low_water_percent`, so an Envoy at the boundary does not flap in and out of the front tier;
- `at`: when the sample was taken (Unix time).

The result lands on the stream (`load`) and, through the registry, in `/v1/fleet`. A record
is rewritten only when a value changed. Load is only ever read from the Envoy itself at a
verified address, never taken from what a client says about itself.

What answers at that address is still untrusted: every read is bounded in time and size
(`_KeepAlive`, MAX_HEAD, MAX_LOAD_BODY, MAX_JSON_OBJECTS...), an answer lbcp cannot use is
an OpsError with a reason, recorded on the stream (`load_error`, the last good `load` kept)
and counted, and a node whose samples keep failing is sampled less often (probe.Poller).
docs/frontdoor.md, "Hostile ops listeners".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from controlplane.intent.model import Capacity
from controlplane.xds.bootstrap import HOSTS_PATH, LOAD_PATH, SERVER_INFO_PATH
from controlplane.xds.probe import OpsError, Poller, ops_port, parse_status, read_line
from controlplane.xds.server.common import BaseStream

log = logging.getLogger(__name__)


def parse_load(stats: list[dict[str, Any]], ops_listener_port: int | None) -> dict[str, Any]:
    """Totals from the admin's JSON stats: connections (all, per listener), counters, HTTP/2
    and overload. Per-worker stats and the admin's and ops listener's own are left out."""
    listeners: dict[str, int] = {}
    members: dict[str, dict[str, int]] = {}  # cluster -> {"healthy": n, "total": n}
    cx_total = handshakes = h2_connections = h2_streams = 0
    actions: list[str] = []
    ops_suffix = f"_{ops_listener_port}" if ops_listener_port else None
    for s in stats:
        # Whatever does not look like one of Envoy's stats is left out (an ops listener may lie).
        if not isinstance(s, dict):
            continue
        name, value = s.get("name"), s.get("value", 0)
        if not isinstance(name, str) or len(name) > MAX_NAME or not _counter(value):
            continue
        value = int(value)
        if name.startswith("listener."):
            where, _, stat = name[len("listener.") :].rpartition(".")
            if stat == "handshake" and where.endswith(".ssl"):
                where, stat = where[: -len(".ssl")], "ssl.handshake"
            if ".worker_" in where or ".main_thread" in where or where == "admin":
                continue
            if ops_suffix and where.endswith(ops_suffix):
                continue
            if stat == "downstream_cx_active" and (where in listeners or len(listeners) < MAX_LISTENERS):
                listeners[where] = value
            elif stat == "downstream_cx_total":
                cx_total += value
            elif stat == "ssl.handshake":
                handshakes += value
        elif name.startswith("http.") and name.endswith(".downstream_cx_http2_active"):
            prefix = name[len("http.") : -len(".downstream_cx_http2_active")]
            if prefix not in ("admin", "lbcp_ops"):
                h2_connections += value
        elif name == "http2.streams_active":
            h2_streams = value
        elif name.startswith("overload.") and name.endswith(".active") and value > 0 and len(actions) < MAX_ACTIONS:
            actions.append(name[len("overload.") : -len(".active")])
        elif name.startswith("cluster.") and ".membership_" in name:
            cluster, _, stat = name[len("cluster.") :].rpartition(".membership_")
            if not cluster.startswith(_INTERNAL_CLUSTERS) and (cluster in members or len(members) < MAX_CLUSTERS):
                members.setdefault(cluster, {})[stat] = value
    return {
        "connections": sum(listeners.values()),
        "listeners": dict(sorted(listeners.items())),
        "cx_total": cx_total,
        "tls_handshakes_total": handshakes,
        "http2_connections": h2_connections,
        "http2_streams": h2_streams,
        "overload_actions": sorted(actions),
        "members": members,
    }


def _counter(value: Any) -> bool:
    """A stat's value as Envoy gives it: a finite number in uint64's range (not a bool)."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value < 2**64
    )


# The bootstrap's own clusters (admin, xDS) and lbcp's per-Envoy resources are not intent.
_INTERNAL_CLUSTERS = ("lbcp_", "lbcp.")
MAX_DEGRADED = 100  # clusters listed by name in a record; the rest are counted
# Bounds on what one Envoy's answer may put in its record (an ops listener may lie): longer
# names are left out, listeners, clusters and overload actions past these are not read.
MAX_NAME = 512
MAX_LISTENERS = 1000
MAX_CLUSTERS = 100_000
MAX_ACTIONS = 64


HOSTS_EVERY = 3  # load samples per read of the hosts' health (a larger answer than the stats)
MAX_HOSTS = 1000  # hosts not healthy, and clusters, kept per Envoy record
MAX_BODY = 32 << 20  # the largest ops answer read; a larger one is that Envoy's error


def host_state(status: dict[str, Any]) -> str | None:
    """One host's state from the admin's `health_status`, the first that applies: `draining`
    (EDS said so, or it was removed and still has connections), `failing` (active health
    check, or EDS unhealthy), `ejected` (outlier detection), `degraded`, `pending` (not
    checked yet); None when healthy."""
    eds = status.get("eds_health_status", "HEALTHY")
    if eds == "DRAINING" or status.get("pending_dynamic_removal"):
        return "draining"
    if status.get("pending_active_hc"):
        return "pending"
    if status.get("failed_active_health_check") or eds in ("UNHEALTHY", "TIMEOUT"):
        return "failing"
    if status.get("failed_outlier_check"):
        return "ejected"
    if status.get("failed_active_degraded_check") or eds == "DEGRADED":
        return "degraded"
    return None


def host_key(address: str, port: int) -> str:
    """How a host is named in `hosts`, and how a backend finds itself there."""
    return f"{address}:{port}"


def parse_hosts(doc: dict[str, Any]) -> tuple[dict[str, dict[str, str]], bool]:
    """`{cluster: {host_key: state}}` (hosts not healthy only) from the admin's
    `/clusters?format=json`, and whether MAX_HOSTS cut it. What does not look like the
    admin's answer (an ops listener may lie) is left out."""
    out: dict[str, dict[str, str]] = {}
    kept, truncated = 0, False
    clusters = doc.get("cluster_statuses") or []
    for cluster in clusters if isinstance(clusters, list) else []:
        if not isinstance(cluster, dict) or not _name(cluster.get("name", "")):
            continue
        if len(out) >= MAX_HOSTS:
            truncated = True
            break
        hosts = out.setdefault(str(cluster.get("name", "")), {})
        statuses = cluster.get("host_statuses") or []
        for h in statuses if isinstance(statuses, list) else []:
            if not isinstance(h, dict) or not isinstance(h.get("health_status") or {}, dict):
                continue
            state = host_state(h.get("health_status") or {})
            if state is None:
                continue
            if kept >= MAX_HOSTS:
                truncated = True
                break
            address = h.get("address") or {}
            sock = (address.get("socket_address") if isinstance(address, dict) else None) or {}
            if not isinstance(sock, dict):
                continue
            # DNS clusters name their hosts: a backend given by hostname finds itself by it.
            name, port = h.get("hostname") or sock.get("address", ""), sock.get("port_value", 0)
            if not _name(name) or isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
                continue
            hosts[host_key(name, port)] = state
            kept += 1
    return out, truncated


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


HOST_STATES = ("healthy", "failing", "ejected", "degraded", "draining", "pending", "unknown")


def backend_health(
    cluster: str, address: str, port: int, revision: int, nodes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One backend as the Envoys see it, from their registry records (`read_fleet().nodes`):
    `envoys`, each Envoy that has the cluster → its state (HOST_STATES; `unknown` when its
    last reading predates the backend's `revision` and did not list it, or was cut short);
    `counts` per state; and `state`, the one state every Envoy that knows agrees on,
    `mixed` when they disagree, `unknown` when none knows."""
    key = host_key(address, port)
    envoys: dict[str, str] = {}
    for node_id in sorted(nodes):
        load = nodes[node_id].get("load") or {}
        hosts = load.get("hosts")
        if not isinstance(hosts, dict) or not isinstance(hosts.get(cluster), dict):
            continue  # not read from this Envoy, or it does not have the cluster
        state = hosts[cluster].get(key)
        if state is None:
            # Not listed: healthy, if the reading was whole and late enough to include it.
            seen = load.get("hosts_revision", 0) >= revision and not load.get("hosts_truncated")
            state = "healthy" if seen else "unknown"
        envoys[node_id] = state
    counts: dict[str, int] = {}
    for state in envoys.values():
        counts[state] = counts.get(state, 0) + 1
    known = {st for st in envoys.values() if st != "unknown"}
    summary = known.pop() if len(known) == 1 else ("mixed" if known else "unknown")
    return {"state": summary, "envoys": envoys, "counts": counts}


def cluster_health(members: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What this Envoy sees of its clusters' hosts: how many clusters have every host
    healthy, and by name (at most MAX_DEGRADED) those that do not."""
    degraded = {
        name: {"healthy": m.get("healthy", 0), "total": m.get("total", 0)}
        for name, m in sorted(members.items())
        if m.get("total", 0) > m.get("healthy", 0)
    }
    names = list(degraded)[:MAX_DEGRADED]
    return {
        "healthy": len(members) - len(degraded),
        "degraded": {n: degraded[n] for n in names},
        **({"degraded_not_listed": len(degraded) - len(names)} if len(degraded) > len(names) else {}),
    }


def _fill(capacity: Capacity | None, listeners: dict[str, int], was_full: bool) -> dict[str, Any]:
    if capacity is None:
        return {}
    fill = max(listeners.values(), default=0) / capacity.max_connections_per_envoy
    if was_full:
        full = fill * 100 >= capacity.low_water_percent
    else:
        full = fill * 100 >= capacity.high_water_percent
    return {"fill": round(fill, 4), "headroom": round(max(0.0, 1.0 - fill), 4), "full": full}


MAX_HEAD = 16 << 10  # an answer's status line and headers; also any one chunk-size or trailer line
MAX_HEADERS = 64  # header (or trailer) lines in one answer
MAX_LOAD_BODY = 4 << 20  # the load answer (/lbcp/load: a few KiB for a real Envoy)
MAX_INFO_BODY = 1 << 20  # the server info answer (/lbcp/server_info)
BIG_BODY = 1 << 20  # bodies past this are read BIG_READS at a time, over every Envoy
BIG_READS = 2
# A JSON document with more objects and arrays than this is not parsed: the objects Python
# builds cost up to 30 times the bytes (`[{},{},...]`), so the bound is on them.
MAX_JSON_OBJECTS = {LOAD_PATH: 100_000, SERVER_INFO_PATH: 10_000, HOSTS_PATH: 1_000_000}
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class _KeepAlive:
    """One HTTP/1.1 connection kept open to an Envoy's ops listener (GET only).

    Every read is bounded, in time (`timeout` for the whole answer, connect included) and in
    size (MAX_HEAD for the head and each line, `max_body` for the body, however framed:
    Content-Length, chunked, or up to the close). An answer that is not HTTP/1.1, or is past
    a bound, raises OpsError with the reason and closes the connection."""

    def __init__(self, host: str, port: int, timeout: float, big: asyncio.Semaphore | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._big = big or asyncio.Semaphore(BIG_READS)
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str, max_body: int = MAX_BODY) -> tuple[int, bytes]:
        """(status, body) of `GET path`, or OpsError."""
        deadline = time.monotonic() + self.timeout
        for attempt in (0, 1):
            reused = self._io is not None
            try:
                return await asyncio.wait_for(self._get(path, max_body), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self.close()
                raise OpsError("timeout", f"no whole answer to {path} within {self.timeout} s") from None
            except OpsError as exc:
                self.close()
                # A kept-alive connection the other side closed since: once more on a new one.
                if attempt or not reused or exc.reason != "closed":
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    async def _get(self, path: str, max_body: int) -> tuple[int, bytes]:
        if self._io is None:
            try:
                self._io = await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)
            except OSError as exc:
                raise OpsError("connect", f"connect: {exc or type(exc).__name__}") from None
        reader, writer = self._io
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nUser-Agent: lbcp-load\r\n\r\n".encode())
            status, headers = await _read_head(reader)
            close = "close" in headers.get("connection", "").lower()
            if 100 <= status < 200:
                raise OpsError("bad-head", f"an interim answer (HTTP {status}) nobody asked for")
            if status in (204, 304):
                body = b""
            elif "transfer-encoding" in headers:
                if headers["transfer-encoding"].strip().lower() != "chunked":
                    raise OpsError("bad-head", f"transfer-encoding {headers['transfer-encoding'][:40]!r}")
                body = await self._chunked(reader, max_body)
            elif "content-length" in headers:
                length = headers["content-length"].strip()
                if not length.isascii() or not length.isdigit() or len(length) > 18:
                    raise OpsError("bad-head", f"content-length {length[:40]!r}")
                if int(length) > max_body:
                    raise OpsError("too-big", f"an answer of {int(length)} bytes, over {max_body}")
                body = await self._exactly(reader, int(length))
            else:
                body, close = await self._until_close(reader, max_body), True
        except ConnectionError as exc:
            raise OpsError("closed", f"connection lost: {exc or type(exc).__name__}") from None
        except OSError as exc:
            raise OpsError("closed", f"connection failed: {exc or type(exc).__name__}") from None
        if close:
            self.close()
        return status, body

    async def _exactly(self, reader: asyncio.StreamReader, n: int) -> bytes:
        if n <= BIG_BODY:
            return await _readexactly(reader, n)
        async with self._big:
            return await _readexactly(reader, n)

    async def _chunked(self, reader: asyncio.StreamReader, max_body: int) -> bytes:
        body = bytearray()
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(max_body + 1):  # every chunk but the last carries a byte at least
                line = await read_line(reader, MAX_HEAD, "chunk size line")
                size_text = line.split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size_text):
                    raise OpsError("bad-chunk", f"bad chunk size line {line[:40]!r}")
                size = int(size_text, 16)
                if size == 0:
                    break
                if len(body) + size > max_body:
                    raise OpsError("too-big", f"chunks of {len(body) + size} bytes or more, over {max_body}")
                if len(body) + size > BIG_BODY and len(body) <= BIG_BODY:
                    await stack.enter_async_context(self._big)
                body += await _readexactly(reader, size)
                if await _readexactly(reader, 2) != b"\r\n":
                    raise OpsError("bad-chunk", "a chunk not ended by CRLF")
            for _ in range(MAX_HEADERS + 1):  # trailers, up to the empty line
                if (await read_line(reader, MAX_HEAD, "trailer line")).strip() == b"":
                    return bytes(body)
            raise OpsError("bad-chunk", f"over {MAX_HEADERS} trailer lines")
        raise AssertionError("unreachable")

    async def _until_close(self, reader: asyncio.StreamReader, max_body: int) -> bytes:
        body = bytearray()
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(max_body + 1):  # each read brings a byte at least
                data = await reader.read(64 << 10)
                if not data:
                    return bytes(body)
                if len(body) <= BIG_BODY < len(body) + len(data):
                    await stack.enter_async_context(self._big)
                body += data
                if len(body) > max_body:
                    raise OpsError("too-big", f"an answer of more than {max_body} bytes (up to the close)")
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._io is not None:
            self._io[1].close()
            self._io = None


async def _readexactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise OpsError("closed", f"closed after {len(exc.partial)} of {n} bytes") from None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers (names in lower case) of an answer, at most MAX_HEAD bytes."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise OpsError("too-long", f"no end of the answer's head within {MAX_HEAD} bytes") from None
    except asyncio.IncompleteReadError as exc:
        raise OpsError("closed", f"closed after {len(exc.partial)} bytes of the answer's head") from None
    lines = head[:-4].split(b"\r\n")
    status = parse_status(lines[0])
    if len(lines) > MAX_HEADERS + 1:
        raise OpsError("bad-head", f"{len(lines) - 1} header lines, over {MAX_HEADERS}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b"\n" in line:
            raise OpsError("bad-head", f"bad header line {line[:80]!r}")
        key, text = name.decode("latin-1").lower(), value.decode("latin-1").strip()
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return status, headers


def parse_json(body: bytes, max_objects: int) -> Any:
    """A JSON body, or OpsError: `too-big` with more objects and arrays than `max_objects`
    (counted before parsing), `bad-json` when it is not JSON."""
    objects = body.count(b"{") + body.count(b"[")
    if objects > max_objects:
        raise OpsError("too-big", f"{objects} JSON objects and arrays or more, over {max_objects}")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise OpsError("bad-json", f"not JSON: {exc}") from None


def _json_object(body: bytes, path: str) -> dict[str, Any]:
    doc = parse_json(body, MAX_JSON_OBJECTS[path])
    if not isinstance(doc, dict):
        raise OpsError("bad-json", f"{path} answered a JSON {type(doc).__name__}, not an object")
    return doc


async def _drain_of(conn: _KeepAlive) -> dict[str, Any]:
    """The Envoy's `--drain-time-s` and `--drain-strategy` from its /server_info, or {} when
    its ops listener does not serve it (a bootstrap older than this)."""
    status, body = await conn.get(SERVER_INFO_PATH, MAX_INFO_BODY)
    if status != 200:
        return {}
    options = _json_object(body, SERVER_INFO_PATH).get("command_line_options", {})
    if not isinstance(options, dict):
        return {}
    seconds = str(options.get("drain_time", ""))[:32].rstrip("s")
    try:
        drain = float(seconds)
    except ValueError:
        return {}
    if not math.isfinite(drain):
        return {}
    return {"time": drain, "strategy": str(options.get("drain_strategy", ""))[:32].lower()}


HOSTS_BACKOFF = 5  # after failed reads of the hosts' health, the next one waits 2**n as long, n up to this
# An Envoy answers its admin (which the ops listener forwards to) on its main thread, the one
# that also applies xDS: while it renders an answer, config waits. Measured on one holding
# 10,000 clusters x 10 backends: the load answer takes 177 ms (its stats filter walks every
# stat), the hosts' health 2.6 s (79 MB of /clusters). So each read is spaced by its own cost:
# the sampler takes at most these shares of an Envoy's time, whatever its interval says. The
# cost is the read's wall time, which also holds this replica's own delays: the load share is
# loose, as the connection plane (moves, the front door's fill) paces itself by load samples.
LOAD_SHARE = 0.25
HOSTS_SHARE = 0.01


class LoadSampler(Poller):
    """A StreamObserver that samples the live load of every connected Envoy it can verify (a
    Poller: each node on its own schedule, backing off from one whose sample fails). A
    failed sample leaves the last good one and records `load_error` on the stream."""

    loop_name = "load-sampler"

    def __init__(
        self,
        interval: float = 2.0,
        timeout: float = 1.0,
        concurrency: int = 64,
        capacity: Callable[[str], Capacity | None] | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(interval, timeout, concurrency, max_backoff)
        self.capacity = capacity or (lambda fleet: None)  # a fleet's capacity intent, if any
        self._big = asyncio.Semaphore(BIG_READS)
        self.streams: dict[int, BaseStream] = {}
        # Those with an ops listener to sample: the rest cost nothing per round (a fleet of
        # clients without one, such as other control planes' consumers, is not polled).
        self._sampled: dict[int, BaseStream] = {}
        self._conns: dict[int, _KeepAlive] = {}
        self._last: dict[int, tuple[float, int, int]] = {}  # stream -> (monotonic, cx_total, handshakes)
        # stream -> the Envoy's drain time and strategy ({} when its ops listener cannot say)
        self._drain: dict[int, dict[str, Any]] = {}
        # stream -> (samples taken, the hosts' health as last read: `hosts`... keys of `load`,
        # failed reads of it in a row)
        self._hosts: dict[int, tuple[int, dict[str, Any], int]] = {}
        # stream -> how long its last load answer took; when its hosts may be read again
        self._took: dict[int, float] = {}
        self._hosts_due: dict[int, float] = {}
        self.samples = 0

    async def stop(self) -> None:
        await super().stop()
        for c in self._conns.values():
            c.close()

    # -- StreamObserver --------------------------------------------------------------------

    def connected(self, stream: BaseStream) -> None:
        self.streams[stream.id] = stream
        if ops_port(stream) is not None:
            self._sampled[stream.id] = stream

    def disconnected(self, stream: BaseStream) -> None:
        super().disconnected(stream)
        self.streams.pop(stream.id, None)
        self._sampled.pop(stream.id, None)
        self._last.pop(stream.id, None)
        self._drain.pop(stream.id, None)
        self._hosts.pop(stream.id, None)
        self._took.pop(stream.id, None)
        self._hosts_due.pop(stream.id, None)
        conn = self._conns.pop(stream.id, None)
        if conn is not None:
            conn.close()

    # -- sampling --------------------------------------------------------------------------

    def _polled(self) -> Mapping[int, BaseStream]:
        return self._sampled

    async def sample_all(self) -> None:
        await self.poll_all()

    async def _poll(self, stream: BaseStream) -> str | None:
        return await self._sample(stream)

    def _crashed(self, stream: BaseStream, exc: Exception) -> None:
        self._failed(stream, OpsError("internal", f"internal: {exc!r}"))

    def _min_gap(self, stream: BaseStream) -> float:
        return self._took.get(stream.id, 0.0) / LOAD_SHARE

    def _failed(self, stream: BaseStream, exc: OpsError) -> None:
        """Record a failed sample on the stream (`load_error`). The registry rewrites the
        record when the reason changes and at the 2nd, 4th, 8th... failure in a row, not on
        every one (with the back-off, a node failing for good costs a write per doubling)."""
        before = stream.load_error
        same = before is not None and before["reason"] == exc.reason
        failures = (before or {}).get("failures", 0) + 1
        stream.load_error = {
            "reason": exc.reason,
            "error": exc.message,
            "failures": failures,
            "since": before["since"] if before is not None else time.time(),
            "at": time.time(),
        }
        if same and failures & (failures - 1) == 0:
            stream.mark_changed()
        elif not same:
            # Once per change of reason, not per failure: a node answering garbage is news once
            # (and an ops listener not up yet refuses the first sample of every Envoy).
            if before is not None or exc.reason != "connect":
                log.info("node %s load not read: %s", stream.node.id, exc.message)
            stream.mark_changed()

    async def _read_hosts(self, stream: BaseStream, conn: _KeepAlive, last: dict[str, Any]) -> dict[str, Any]:
        """The hosts' health (the `hosts*` keys of a sample); {} when the Envoy's ops listener
        does not serve it (a bootstrap older than this); the last reading, with `hosts_error`,
        when it fails."""
        revision = stream.acked_revision  # what the Envoy had acked before it answered
        try:
            status, body = await conn.get(HOSTS_PATH)
            if status == 404:
                return {}
            if status != 200:
                raise OpsError("status", f"{HOSTS_PATH} answered HTTP {status}")
            hosts, truncated = parse_hosts(_json_object(body, HOSTS_PATH))
        except OpsError as exc:
            self.failures[exc.reason] += 1
            log.debug("hosts of %s not read: %s", stream.node.id, exc.message)
            kept = {k: v for k, v in last.items() if k != "hosts_error"}
            return {**kept, "hosts_error": {"reason": exc.reason, "error": exc.message}}
        return {"hosts": hosts, "hosts_revision": revision, **({"hosts_truncated": True} if truncated else {})}

    def _connection(self, stream: BaseStream) -> _KeepAlive | None:
        address = (stream.front or {}).get("address")
        port = ops_port(stream)
        if not address or port is None:
            return None  # no verified address or no ops listener: no load to read
        conn = self._conns.get(stream.id)
        if conn is None or (conn.host, conn.port) != (address, port):
            if conn is not None:
                conn.close()
            conn = self._conns[stream.id] = _KeepAlive(address, port, self.timeout, self._big)
        return conn

    async def _sample(self, stream: BaseStream) -> str | None:
        """Sample one Envoy: None when its load was read, else why not (and `load_error` says)."""
        conn = self._connection(stream)
        if conn is None:
            return None
        async with self._sem:
            try:
                asked = time.monotonic()
                try:
                    status, body = await conn.get(LOAD_PATH, MAX_LOAD_BODY)
                finally:
                    self._took[stream.id] = time.monotonic() - asked
                sampled_at, mono = time.time(), time.monotonic()
                if status != 200:
                    raise OpsError("status", f"{LOAD_PATH} answered HTTP {status}")
                stats = _json_object(body, LOAD_PATH).get("stats", [])
                if not isinstance(stats, list):
                    raise OpsError("bad-json", f"{LOAD_PATH}: stats is a JSON {type(stats).__name__}, not a list")
                del body
                raw = parse_load(stats, ops_port(stream))
                del stats
                if stream.id not in self._drain:
                    self._drain[stream.id] = await _drain_of(conn)
            except OpsError as exc:
                self._failed(stream, exc)
                return exc.reason
            taken, hosts, failed = self._hosts.get(stream.id, (0, {}, 0))
            due = taken % (HOSTS_EVERY * 2 ** min(failed, HOSTS_BACKOFF)) == 0
            if due and time.monotonic() >= self._hosts_due.get(stream.id, 0.0):
                asked = time.monotonic()
                hosts = await self._read_hosts(stream, conn, hosts)
                self._hosts_due[stream.id] = asked + (time.monotonic() - asked) / HOSTS_SHARE
                failed = failed + 1 if "hosts_error" in hosts else 0
            self._hosts[stream.id] = (taken + 1, hosts, failed)
        self.samples += 1
        if stream.load_error is not None:
            log.info("node %s load read again (after %d failures)", stream.node.id, stream.load_error["failures"])
            stream.load_error = None
            stream.mark_changed()
        previous = self._last.get(stream.id)
        self._last[stream.id] = (mono, raw["cx_total"], raw["tls_handshakes_total"])
        if previous is None:
            cps = tls = 0.0
        else:
            dt = max(mono - previous[0], 1e-6)
            # A counter that went down means the Envoy restarted under the same stream: no rate.
            cps = max(0, raw["cx_total"] - previous[1]) / dt
            tls = max(0, raw["tls_handshakes_total"] - previous[2]) / dt
        h2c = raw["http2_connections"]
        load = {
            "connections": raw["connections"],
            "connections_per_second": round(cps, 1),
            "tls_handshakes_per_second": round(tls, 1),
            "http2_streams": raw["http2_streams"],
            "http2_connections": h2c,
            "http2_streams_per_connection": round(raw["http2_streams"] / h2c, 2) if h2c else 0.0,
            "overloaded": bool(raw["overload_actions"]),
            "overload_actions": raw["overload_actions"],
            "listeners": raw["listeners"],
            "clusters": cluster_health(raw["members"]),
            **({"drain": self._drain[stream.id]} if self._drain.get(stream.id) else {}),
            **hosts,
            **_fill(self.capacity(stream.fleet), raw["listeners"], (stream.load or {}).get("full", False)),
        }
        before = stream.load
        stream.load = {**load, "at": sampled_at}
        if before is None or {k: v for k, v in before.items() if k != "at"} != load:
            stream.mark_changed()  # tells the observers (the registry) the record changed
        return None
