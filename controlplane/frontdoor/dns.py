"""`lbcp dns`: a small authoritative DNS server for the front door's name.

It answers for one name in one zone (`www.example.com`) with an A/AAAA record per in-service
Envoy (controlplane.frontdoor.render.in_service, read from etcd every `interval` seconds), over
UDP and TCP. The answer is rotated per query, so resolvers and clients that take the first
record still spread over the fleet. Anything else in the zone is NXDOMAIN (with the SOA, so
resolvers cache the negative answer for `ttl`); names outside the zone are REFUSED.

With no Envoy in service the name has no records (NODATA): better than sending clients to a
drained or dead proxy. TTLs are short on purpose (default 30 s): a withdrawn Envoy stops
getting new clients within a TTL after it leaves the set.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import xxhash
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

from controlplane.etcd import Etcd
from controlplane.frontdoor.render import STALE_HOLD, Member, StableFront, by_headroom, follow

log = logging.getLogger(__name__)


@dataclass
class DnsConfig:
    zone: str = "example.com"
    name: str = "www"
    ttl: int = 30
    fleet: str | None = None
    host: str = "127.0.0.1"
    port: int = 5353
    interval: float = 0.5
    stale_hold: float = STALE_HOLD  # an Envoy whose record vanished without evidence stays this long
    metrics_port: int | None = None  # serve Prometheus /metrics on host:metrics_port (0: any free port)


class FrontDoorDns:
    """Answers queries from the current in-service set (`members`, kept by `run`)."""

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self.zone = dns.name.from_text(config.zone)
        self.fqdn = dns.name.from_text(config.name, origin=self.zone)
        self.members: list[Member] = []
        self.front = StableFront(config.stale_hold)
        self.queries = 0
        self.registry = CollectorRegistry()
        self._in_service = Gauge(
            "lbcp_frontdoor_members",
            "Envoys in the answer: in (their records say so) or stale (kept: records gone without evidence)",
            ["state"],
            registry=self.registry,
        )
        self._answered = Counter("lbcp_frontdoor_queries_total", "DNS queries answered", registry=self.registry)
        self.metrics_port: int | None = None
        self._metrics: WSGIServer | None = None
        self._turn = itertools.count()
        self._servers: list[asyncio.BaseTransport | asyncio.AbstractServer] = []
        self.port = config.port

    # -- answering --------------------------------------------------------------------------

    def answer(self, wire: bytes, udp: bool = False) -> bytes | None:
        """The response to one query in wire format (None: not a DNS query, drop it). Over
        UDP a response larger than the client's buffer (512 bytes without EDNS) is sent
        truncated (TC), and the client retries over TCP."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        if query.flags & dns.flags.QR:
            return None
        resp = self._respond(query)
        limit = max(512, query.payload if query.edns >= 0 else 512) if udp else 65535
        try:
            return resp.to_wire(max_size=limit, want_shuffle=False)  # the rotation is the order
        except dns.exception.TooBig:
            resp.answer.clear()
            resp.authority.clear()
            resp.flags |= dns.flags.TC
            return resp.to_wire()

    def _respond(self, query: dns.message.Message) -> dns.message.Message:
        self.queries += 1
        self._answered.inc()
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        resp.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            resp.set_rcode(dns.rcode.FORMERR)
            return resp
        q = query.question[0]
        if not q.name.is_subdomain(self.zone) or q.rdclass != dns.rdataclass.IN:
            resp.flags &= ~dns.flags.AA
            resp.set_rcode(dns.rcode.REFUSED)
            return resp
        if q.name != self.fqdn and q.name != self.zone:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(self._soa())
            return resp
        answered = False
        if q.name == self.fqdn:
            for family, rdtype in ((4, dns.rdatatype.A), (6, dns.rdatatype.AAAA)):
                if q.rdtype not in (rdtype, dns.rdatatype.ANY):
                    continue
                bands = by_headroom([m for m in self.members if m.family == family])
                if bands:
                    # Most headroom first; rotated within each band of similar headroom.
                    k = next(self._turn)
                    rotated = [m.address for b in bands for m in b[k % len(b) :] + b[: k % len(b)]]
                    resp.answer.append(dns.rrset.from_text_list(self.fqdn, self.config.ttl, "IN", rdtype, rotated))
                    answered = True
        elif q.rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            resp.answer.append(self._soa())
            answered = True
        if not answered:
            resp.authority.append(self._soa())  # NODATA: the name exists, not this type (or no Envoy)
        return resp

    def _soa(self) -> dns.rrset.RRset:
        # The serial is a hash of the in-service set: it changes exactly when the answer does.
        serial = xxhash.xxh32_intdigest(repr(self.members).encode()) % (2**31)
        return dns.rrset.from_text(
            self.zone,
            self.config.ttl,
            "IN",
            "SOA",
            f"ns.{self.zone} hostmaster.{self.zone} {serial} 60 30 86400 {self.config.ttl}",
        )

    # -- serving ----------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class _Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                # A datagram endpoint's transport (typeshed types the hook with the base class).
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                out = server.answer(data, udp=True)
                if out is not None:
                    self.transport.sendto(out, addr)

        # UDP and TCP on one port. Asked for any free port (0), the UDP one may be taken for
        # TCP (a client's ephemeral port, say): then try another.
        for attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(self.config.host, self.config.port))
            self.port = transport.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._tcp, self.config.host, self.port)
            except OSError as exc:
                transport.close()
                if self.config.port or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
                continue
            self._servers = [transport, tcp]
            return

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
                out = self.answer(await asyncio.wait_for(reader.readexactly(size), 10))
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        self._servers = []
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None

    async def follow(self, etcd: Etcd) -> None:
        """Keep `members` current from etcd until cancelled."""
        stale: list[Member] = []
        async for members in follow(etcd, self.config.fleet, self.config.interval, self.front):
            if members != self.members:
                log.info(
                    "%s: %d in service: %s", self.fqdn, len(members), ", ".join(m.address for m in members) or "none"
                )
            if self.front.stale != stale:
                stale = self.front.stale
                log.warning(
                    "%s: keeping %d Envoys whose registry records vanished without evidence (a lapsed lease or a"
                    " replica re-registering; at most %.0f s): %s",
                    self.fqdn,
                    len(stale),
                    self.config.stale_hold,
                    ", ".join(m.node_id for m in stale) or "none",
                )
            self._in_service.labels("stale").set(len(stale))
            self._in_service.labels("in").set(len(members) - len(stale))
            self.members = members

    async def run(self, etcd: Etcd) -> None:
        await self.start()
        if self.config.metrics_port is not None:
            self._metrics, _ = start_http_server(self.config.metrics_port, self.config.host, registry=self.registry)
            self.metrics_port = self._metrics.server_port
            log.info("metrics on http://%s:%d/metrics", self.config.host, self.metrics_port)
        log.info("answering for %s on %s:%d (UDP and TCP)", self.fqdn, self.config.host, self.port)
        try:
            await self.follow(etcd)
        finally:
            with contextlib.suppress(Exception):
                await self.stop()
