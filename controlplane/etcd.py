"""A connection to an etcd v3 cluster over aetcd's generated stubs.

aetcd's `Client` talks to one host:port without TLS; lbcp needs a list of endpoints (a
3-node cluster) with failover, optional TLS and user/password. So this module owns the
gRPC channels and uses aetcd's `rpc` stubs and messages for the calls themselves.

Contract: every call either returns etcd's response or raises a `StoreError` subclass
(`StoreUnavailable` when no endpoint answers). Reads move to the next endpoint on a
connection failure; writes never retry on their own, so an unacknowledged write is
reported as failed, never applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from aetcd import rpc

from controlplane.errors import PageTokenExpired, StoreError, StoreUnavailable, TooLarge

if TYPE_CHECKING:
    from controlplane.metrics import EtcdMetrics

log = logging.getLogger(__name__)
# aetcd's stubs are untyped: a Watch call streams rpc.WatchRequest out and rpc.WatchResponse in.
WatchCall = grpc.aio.StreamStreamCall[Any, Any]

T = TypeVar("T")

# etcd's own default request limit is 1.5 MiB; lbcp's launcher raises it, and the client
# must accept the largest responses (full-prefix reads of big clusters).
_MAX_MESSAGE = 64 * 1024 * 1024


@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how to talk to it."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = "/lbcp/v1/"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    connect_timeout: float = 1.0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if not self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise ValueError(f"the key prefix must start and end with '/', got {self.prefix!r}")
        if (self.username is None) != (self.password is None):
            raise ValueError("etcd username and password go together")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("etcd client certificate and key go together")

    @property
    def tls(self) -> bool:
        return bool(self.ca_file or self.cert_file) or any(e.startswith("https://") for e in self.endpoints)

    @classmethod
    def from_env(cls, endpoints: str | None = None, prefix: str | None = None) -> EtcdConfig:
        """Read LBCP_ETCD_ENDPOINTS (comma-separated), LBCP_ETCD_PREFIX, LBCP_ETCD_CA/CERT/KEY,
        LBCP_ETCD_USER and LBCP_ETCD_PASSWORD; explicit arguments win."""
        env = os.environ
        raw = endpoints or env.get("LBCP_ETCD_ENDPOINTS", "127.0.0.1:2379")
        return cls(
            endpoints=tuple(e.strip() for e in raw.split(",") if e.strip()),
            prefix=prefix or env.get("LBCP_ETCD_PREFIX", "/lbcp/v1/"),
            ca_file=env.get("LBCP_ETCD_CA") or None,
            cert_file=env.get("LBCP_ETCD_CERT") or None,
            key_file=env.get("LBCP_ETCD_KEY") or None,
            username=env.get("LBCP_ETCD_USER") or None,
            password=env.get("LBCP_ETCD_PASSWORD") or None,
        )


def _target(endpoint: str) -> str:
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :].rstrip("/")
    return endpoint


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix`."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


def translate_error(exc: grpc.aio.AioRpcError) -> StoreError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return PageTokenExpired(f"etcd: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT and ("too many operations" in details or "too large" in details):
        return TooLarge(f"etcd refused the request: {details}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return StoreUnavailable(f"etcd is unavailable: {details or code.name}")
    return StoreError(f"etcd error {code.name}: {details}")


class Etcd:
    """gRPC channels to the configured endpoints, with the current one tried first."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._targets = [_target(e) for e in config.endpoints]
        self._channels: list[grpc.aio.Channel | None] = [None] * len(self._targets)
        self._current = 0
        self._token: str | None = None
        self._lock = asyncio.Lock()
        self.metrics: EtcdMetrics | None = None  # set by an owner that exports metrics

    # -- channels ------------------------------------------------------------------------

    def _make_channel(self, target: str) -> grpc.aio.Channel:
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Reconnect quickly after an etcd restart; gRPC's default backoff grows to 120 s.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self.config.tls:

            def _read(path: str | None) -> bytes | None:
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(self.config.ca_file),
                private_key=_read(self.config.key_file),
                certificate_chain=_read(self.config.cert_file),
            )
            return grpc.aio.secure_channel(target, creds, options=options)
        return grpc.aio.insecure_channel(target, options=options)

    def _channel_at(self, i: int) -> grpc.aio.Channel:
        ch = self._channels[i]
        if ch is None:
            ch = self._channels[i] = self._make_channel(self._targets[i])
        return ch

    async def channel(self) -> grpc.aio.Channel:
        """A connected channel, moving to the next endpoint when the current one is down."""
        ch = self._channel_at(self._current)
        if ch.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return ch
        async with self._lock:
            for _ in range(len(self._targets)):
                ch = self._channel_at(self._current)
                if ch.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
                    return ch
                try:
                    await asyncio.wait_for(ch.channel_ready(), self.config.connect_timeout)
                    return ch
                except TimeoutError:
                    log.info("etcd endpoint %s not reachable, trying the next", self._targets[self._current])
                    self._current = (self._current + 1) % len(self._targets)
        raise StoreUnavailable(f"no etcd endpoint reachable ({', '.join(self._targets)})")

    async def _metadata(self, ch: grpc.aio.Channel, refresh: bool = False) -> tuple[tuple[str, str], ...] | None:
        if self.config.username is None:
            return None
        if self._token is None or refresh:
            resp = await rpc.AuthStub(ch).Authenticate(
                rpc.AuthenticateRequest(name=self.config.username, password=self.config.password),
                timeout=self.config.timeout,
            )
            self._token = resp.token
        return (("token", self._token),)

    async def _call(
        self, make: Callable[[grpc.aio.Channel, object], Awaitable[T]], *, idempotent: bool, op: str = "other"
    ) -> T:
        started = time.perf_counter()
        try:
            result = await self._call_once(make, idempotent=idempotent)
        except StoreError as exc:
            if self.metrics is not None:
                self.metrics.observe(op, time.perf_counter() - started, exc.code)
            raise
        if self.metrics is not None:
            self.metrics.observe(op, time.perf_counter() - started, None)
        return result

    async def _call_once(self, make: Callable[[grpc.aio.Channel, object], Awaitable[T]], *, idempotent: bool) -> T:
        attempts = len(self._targets) if idempotent else 1
        last: StoreError | None = None
        for _ in range(attempts):
            ch = await self.channel()
            reauthed = False
            while True:
                try:
                    return await make(ch, await self._metadata(ch))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED and not reauthed and self.config.username:
                        # etcd's simple tokens expire; authenticate again once.
                        await self._metadata(ch, refresh=True)
                        reauthed = True
                        continue
                    last = translate_error(exc)
                    if not isinstance(last, StoreUnavailable):
                        raise last from exc
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        self._current = (self._current + 1) % len(self._targets)
                    break
        assert last is not None
        raise last

    # -- KV --------------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        serializable: bool = False,
    ) -> rpc.RangeResponse:
        req = rpc.RangeRequest(
            key=key,
            range_end=range_end or b"",
            revision=revision,
            limit=limit,
            keys_only=keys_only,
            count_only=count_only,
            serializable=serializable,
        )
        return await self._call(
            lambda ch, md: rpc.KVStub(ch).Range(req, timeout=self.config.timeout, metadata=md),
            idempotent=True,
            op="range",
        )

    async def txn(self, req: rpc.TxnRequest, *, read_only: bool = False) -> rpc.TxnResponse:
        return await self._call(
            lambda ch, md: rpc.KVStub(ch).Txn(req, timeout=self.config.timeout, metadata=md),
            idempotent=read_only,
            op="txn",
        )

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> rpc.PutResponse:
        req = rpc.PutRequest(key=key, value=value, lease=lease)
        return await self._call(
            lambda ch, md: rpc.KVStub(ch).Put(req, timeout=self.config.timeout, metadata=md), idempotent=False, op="put"
        )

    async def delete(self, key: bytes, range_end: bytes | None = None) -> rpc.DeleteRangeResponse:
        req = rpc.DeleteRangeRequest(key=key, range_end=range_end or b"")
        return await self._call(
            lambda ch, md: rpc.KVStub(ch).DeleteRange(req, timeout=self.config.timeout, metadata=md),
            idempotent=False,
            op="delete",
        )

    # -- leases ----------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        req = rpc.LeaseGrantRequest(TTL=ttl)
        resp = await self._call(
            lambda ch, md: rpc.LeaseStub(ch).LeaseGrant(req, timeout=self.config.timeout, metadata=md),
            idempotent=False,
            op="lease_grant",
        )
        return int(resp.ID)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its remaining TTL (0 or less: the lease is gone)."""

        async def _once(ch: grpc.aio.Channel, md: object) -> int:
            call = rpc.LeaseStub(ch).LeaseKeepAlive(metadata=md, timeout=self.config.timeout)
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
            call.cancel()
            return int(resp.TTL)

        return await self._call(_once, idempotent=True, op="lease_keepalive")

    async def lease_revoke(self, lease_id: int) -> None:
        req = rpc.LeaseRevokeRequest(ID=lease_id)
        await self._call(
            lambda ch, md: rpc.LeaseStub(ch).LeaseRevoke(req, timeout=self.config.timeout, metadata=md),
            idempotent=True,
            op="lease_revoke",
        )

    # -- watch -----------------------------------------------------------------------------

    async def watch(self, key: bytes, range_end: bytes, start_revision: int) -> WatchCall:
        """Open a raw Watch stream with one watcher (progress notifications on, prev_kv off).

        The caller reads `WatchResponse`s and cancels the call when done.
        """
        ch = await self.channel()
        md = await self._metadata(ch)
        call: WatchCall = rpc.WatchStub(ch).Watch(metadata=md)
        await call.write(
            rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=key, range_end=range_end, start_revision=start_revision, progress_notify=True
                )
            )
        )
        return call

    async def status_ok(self) -> bool:
        """True when some endpoint answers a linearizable read."""
        try:
            await self.range(b"\0", count_only=True)
            return True
        except StoreError:
            return False

    async def close(self) -> None:
        for i, ch in enumerate(self._channels):
            if ch is not None:
                await ch.close()
                self._channels[i] = None
