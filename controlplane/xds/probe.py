"""Front health: each replica probes the `/healthz` of the Envoys connected to it.

The front tier may only send clients to an Envoy whose own health check passes: that
check fails when the Envoy was drained (its gate, see resources.gate_assignment), when an
operator ran `/healthcheck/fail` on its admin, or when it has no config yet. So the replica
that holds an Envoy's xDS stream asks it, every `interval` seconds, at the stream's peer
address and the `ops_port` the bootstrap put in node metadata, and records the answer on
the stream (`front_health`). The fleet registry carries it to etcd, where the front-door
renders and `lbcp dns` read it. A record is rewritten only when the verdict changes.

Probes are plain HTTP/1.1 on a fresh connection (what a DNS health checker or a load
balancer does), at most `concurrency` at a time, each bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from controlplane.xds.resources import ENDPOINT_TYPE
from controlplane.xds.server.common import BaseStream, Nack

log = logging.getLogger(__name__)

# Envoy applies an EDS update to its worker threads just after it ACKs: give it that long.
_AFTER_ACK = 0.05


async def probe(host: str, port: int, timeout: float = 1.0, path: str = "/healthz") -> tuple[bool, int | None, str]:
    """GET `path` once: (passes, HTTP status or None, error text)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return False, None, f"connect: {exc or type(exc).__name__}"
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: lbcp-frontprobe\r\n\r\n".encode()
        )
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        if status is None:
            return False, None, f"bad status line {line[:80]!r}"
        return status == 200, status, ""
    except (OSError, TimeoutError) as exc:
        return False, None, f"read: {exc or type(exc).__name__}"
    finally:
        writer.close()


def _target(stream: BaseStream) -> tuple[str, int] | None:
    port = (stream.node.metadata or {}).get("ops_port")
    if not isinstance(port, (int, float)) or not 0 < int(port) < 65536:
        return None
    kind, _, rest = stream.node.peer.partition(":")
    host = rest.rpartition("]")[0].lstrip("[") if kind == "ipv6" else rest.rpartition(":")[0]
    return (host, int(port)) if host else None


class FrontProber:
    """A StreamObserver that probes every connected Envoy with an ops port."""

    def __init__(self, interval: float = 2.0, timeout: float = 1.0, concurrency: int = 64) -> None:
        self.interval = interval
        self.timeout = timeout
        self._sem = asyncio.Semaphore(concurrency)
        self._streams: dict[int, BaseStream] = {}
        self._task: asyncio.Task[None] | None = None
        self._soon: set[int] = set()
        self._pending: set[asyncio.Future[None]] = set()
        self._latest: dict[
            int, float
        ] = {}  # stream id -> start of the probe last recorded  # streams with a probe scheduled outside the rounds
        self.rounds = 0

    async def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="front-prober")

    async def stop(self) -> None:
        for t in list(self._pending):
            t.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- StreamObserver --------------------------------------------------------------------

    def connected(self, stream: BaseStream) -> None:
        if _target(stream) is None:
            return
        if self.interval <= 0:
            # Probing is off on this replica: the front tier trusts the stream alone.
            stream.front_health = {"ok": True, "status": None, "error": "not probed (probing off)", "checked": None}
            return
        self._streams[stream.id] = stream

    def disconnected(self, stream: BaseStream) -> None:
        self._streams.pop(stream.id, None)
        self._latest.pop(stream.id, None)

    def changed(self, stream: BaseStream) -> None:
        pass

    def pushed(self, stream: BaseStream, type_url: str, nbytes: int, resources: int) -> None:
        pass

    def nacked(self, stream: BaseStream, type_url: str, nack: Nack) -> None:
        pass

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
            task = asyncio.ensure_future(self._probe(stream))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    # -- probing ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.probe_all()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def probe_all(self) -> None:
        streams = list(self._streams.values())
        await asyncio.gather(*(self._probe(s) for s in streams))
        self.rounds += 1

    async def _probe(self, stream: BaseStream) -> None:
        target = _target(stream)
        if target is None:
            return
        async with self._sem:
            started = time.monotonic()
            ok, status, error = await probe(*target, timeout=self.timeout)
        # A round's probe and an after-ACK probe may overlap: keep the verdict of the later one.
        if self._latest.get(stream.id, 0.0) > started:
            return
        self._latest[stream.id] = started
        before = stream.front_health
        stream.front_health = {"ok": ok, "status": status, "error": error, "checked": time.time()}
        if before is None or before["ok"] != ok or before["status"] != status:
            if before is not None:
                log.info(
                    "node %s front health: %s (%s)", stream.node.id, "passing" if ok else "failing", status or error
                )
            stream.changed_front_health()
