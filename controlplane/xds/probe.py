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
balancer does), at most `concurrency` at a time, each bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controlplane.xds.resources import ENDPOINT_TYPE
from controlplane.xds.server.common import BaseStream, QuietObserver

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


class FrontProber(QuietObserver):
    """A StreamObserver that probes every connected Envoy with an ops port."""

    def __init__(
        self, interval: float = 2.0, timeout: float = 1.0, concurrency: int = 64, policy: FrontPolicy | None = None
    ) -> None:
        self.interval = interval
        self.policy = policy or FrontPolicy()
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
        stream.front_health = _health(ok, status, error, probed=True)
        if before is None or before["ok"] != ok or before["status"] != status:
            if before is not None:
                log.info(
                    "node %s front health: %s (%s)", stream.node.id, "passing" if ok else "failing", status or error
                )
            stream.mark_changed()


def _health(ok: bool, status: int | None, error: str, *, probed: bool) -> dict[str, Any]:
    return {"ok": ok, "status": status, "error": error, "probed": probed, "checked": time.time() if probed else None}
