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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from controlplane.intent.model import Capacity
from controlplane.xds.bootstrap import HOSTS_PATH, LOAD_PATH, SERVER_INFO_PATH
from controlplane.xds.probe import ops_port
from controlplane.xds.server.common import BaseStream, QuietObserver

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
        name, value = s.get("name", ""), s.get("value", 0)
        if not isinstance(value, int | float):
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
            if stat == "downstream_cx_active":
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
        elif name.startswith("overload.") and name.endswith(".active") and value > 0:
            actions.append(name[len("overload.") : -len(".active")])
        elif name.startswith("cluster.") and ".membership_" in name:
            cluster, _, stat = name[len("cluster.") :].rpartition(".membership_")
            if not cluster.startswith(_INTERNAL_CLUSTERS):
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


# The bootstrap's own clusters (admin, xDS) and lbcp's per-Envoy resources are not intent.
_INTERNAL_CLUSTERS = ("lbcp_", "lbcp.")
MAX_DEGRADED = 100  # clusters listed by name in a record; the rest are counted


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
    `/clusters?format=json`, and whether MAX_HOSTS cut it."""
    out: dict[str, dict[str, str]] = {}
    kept, truncated = 0, False
    for cluster in doc.get("cluster_statuses") or []:
        if len(out) >= MAX_HOSTS:
            truncated = True
            break
        hosts = out.setdefault(str(cluster.get("name", "")), {})
        for h in cluster.get("host_statuses") or []:
            state = host_state(h.get("health_status") or {})
            if state is None:
                continue
            if kept >= MAX_HOSTS:
                truncated = True
                break
            sock = (h.get("address") or {}).get("socket_address") or {}
            # DNS clusters name their hosts: a backend given by hostname finds itself by it.
            address = h.get("hostname") or sock.get("address", "")
            hosts[host_key(str(address), int(sock.get("port_value", 0)))] = state
            kept += 1
    return out, truncated


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


class _KeepAlive:
    """One HTTP/1.1 connection kept open to an Envoy's ops listener (GET only)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a kept-alive connection the other side closed: reconnect once
            try:
                return await asyncio.wait_for(self._get(path), self.timeout)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self._io is None:
            self._io = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._io
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nUser-Agent: lbcp-load\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
                if len(body) > MAX_BODY:
                    raise ValueError(f"answer over {MAX_BODY} bytes")
            await reader.readuntil(b"\r\n")
        else:
            length = int(headers.get("content-length", "0"))
            if length > MAX_BODY:
                raise ValueError(f"answer of {length} bytes, over {MAX_BODY}")
            body = bytearray(await reader.readexactly(length))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, bytes(body)

    def close(self) -> None:
        if self._io is not None:
            self._io[1].close()
            self._io = None


async def _drain_of(conn: _KeepAlive) -> dict[str, Any]:
    """The Envoy's `--drain-time-s` and `--drain-strategy` from its /server_info, or {} when
    its ops listener does not serve it (a bootstrap older than this)."""
    status, body = await conn.get(SERVER_INFO_PATH)
    if status != 200:
        return {}
    options = json.loads(body).get("command_line_options", {})
    seconds = str(options.get("drain_time", "")).rstrip("s")
    try:
        return {"time": float(seconds), "strategy": str(options.get("drain_strategy", "")).lower()}
    except ValueError:
        return {}


class LoadSampler(QuietObserver):
    """A StreamObserver that samples the live load of every connected Envoy it can verify."""

    def __init__(
        self,
        interval: float = 2.0,
        timeout: float = 1.0,
        concurrency: int = 64,
        capacity: Callable[[str], Capacity | None] | None = None,
    ) -> None:
        self.interval = interval
        self.capacity = capacity or (lambda fleet: None)  # a fleet's capacity intent, if any
        self.timeout = timeout
        self._sem = asyncio.Semaphore(concurrency)
        self.streams: dict[int, BaseStream] = {}
        self._conns: dict[int, _KeepAlive] = {}
        self._last: dict[int, tuple[float, int, int]] = {}  # stream -> (monotonic, cx_total, handshakes)
        # stream -> the Envoy's drain time and strategy ({} when its ops listener cannot say)
        self._drain: dict[int, dict[str, Any]] = {}
        # stream -> (samples taken, the hosts' health as last read: `hosts`... keys of `load`)
        self._hosts: dict[int, tuple[int, dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.samples = 0

    async def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="load-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for c in self._conns.values():
            c.close()

    # -- StreamObserver --------------------------------------------------------------------

    def connected(self, stream: BaseStream) -> None:
        self.streams[stream.id] = stream

    def disconnected(self, stream: BaseStream) -> None:
        self.streams.pop(stream.id, None)
        self._last.pop(stream.id, None)
        self._drain.pop(stream.id, None)
        self._hosts.pop(stream.id, None)
        conn = self._conns.pop(stream.id, None)
        if conn is not None:
            conn.close()

    # -- sampling --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.sample_all()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def sample_all(self) -> None:
        await asyncio.gather(*(self._sample(s) for s in list(self.streams.values())))

    async def _read_hosts(self, stream: BaseStream, conn: _KeepAlive, last: dict[str, Any]) -> dict[str, Any]:
        """The hosts' health (the `hosts*` keys of a sample); {} when the Envoy's ops listener
        does not serve it (a bootstrap older than this); the last reading when it fails."""
        revision = stream.acked_revision  # what the Envoy had acked before it answered
        try:
            status, body = await conn.get(HOSTS_PATH)
            if status == 404:
                return {}
            if status != 200:
                raise ValueError(f"HTTP {status}")
            hosts, truncated = parse_hosts(json.loads(body))
        except (OSError, ValueError, TypeError, AttributeError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("hosts of %s not read: %s", stream.node.id, exc)
            return last
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
            conn = self._conns[stream.id] = _KeepAlive(address, port, self.timeout)
        return conn

    async def _sample(self, stream: BaseStream) -> None:
        conn = self._connection(stream)
        if conn is None:
            return
        async with self._sem:
            try:
                status, body = await conn.get(LOAD_PATH)
                sampled_at, mono = time.time(), time.monotonic()
                if status != 200:
                    raise ValueError(f"HTTP {status}")
                raw = parse_load(json.loads(body).get("stats", []), ops_port(stream))
                if stream.id not in self._drain:
                    self._drain[stream.id] = await _drain_of(conn)
            except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("load of %s not read: %s", stream.node.id, exc)
                return
            taken, hosts = self._hosts.get(stream.id, (0, {}))
            if taken % HOSTS_EVERY == 0:
                hosts = await self._read_hosts(stream, conn, hosts)
            self._hosts[stream.id] = (taken + 1, hosts)
        self.samples += 1
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
