"""A raw xDS client for tests, the fleet simulator and non-Envoy subscribers.

It speaks ADS exactly as told (no automatic ACKs), so tests can ACK, NACK, send stale
nonces or unsubscribe at will.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2


class AdsClient:
    def __init__(
        self,
        target: str,
        node_id: str,
        fleet: str = "default",
        *,
        delta: bool = False,
        zone: str = "",
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.credentials = credentials
        self.target = target
        self.node = base_pb2.Node(id=node_id, cluster=fleet, user_agent_name="lbcp-xdsclient")
        if zone:
            self.node.locality.zone = zone
        self.delta = delta
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None  # a grpc.aio stream-stream call; None until open()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._first = True

    async def open(self) -> None:
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        self._channel = (
            grpc.aio.secure_channel(self.target, self.credentials, options=options)
            if self.credentials
            else grpc.aio.insecure_channel(self.target, options=options)
        )
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = stub.DeltaAggregatedResources() if self.delta else stub.StreamAggregatedResources()
        self._first = True
        self._queue = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        # Reading in a task of its own: cancelling a pending read() would cancel the RPC.
        try:
            async for resp in self._call:
                await self._queue.put(resp)
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            await self._queue.put(exc if isinstance(exc, grpc.aio.AioRpcError) else None)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if getattr(self, "_reader", None) is not None:
            self._reader.cancel()
        if self._channel is not None:
            await self._channel.close()

    def _with_node(self, req: Any) -> None:
        if self._first:
            req.node.CopyFrom(self.node)
            self._first = False

    async def request(
        self, type_url: str, names: Iterable[str] = (), *, version: str = "", nonce: str = "", error: str | None = None
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._with_node(req)
        await self._call.write(req)

    async def delta_request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        nonce: str = "",
        error: str | None = None,
        initial: dict[str, str] | None = None,
    ) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._with_node(req)
        await self._call.write(req)

    async def recv(self, timeout: float = 5.0) -> Any:
        """The next response, or None if none comes within `timeout`; raises if the stream failed."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        return item

    @staticmethod
    def decode(resp: Any) -> dict[str, Any]:
        """name -> decoded resource, for SotW (Any) and delta (Resource) responses alike."""
        from google.protobuf import any_pb2, symbol_database

        from controlplane.xds import resources  # noqa: F401  (registers Envoy's message types)

        db = symbol_database.Default()
        out = {}
        for item in resp.resources:
            any_msg, name = (item, "") if isinstance(item, any_pb2.Any) else (item.resource, item.name)
            msg = db.GetSymbol(any_msg.type_url.split("/", 1)[1])()
            any_msg.Unpack(msg)
            out[name or getattr(msg, "name", "") or getattr(msg, "cluster_name", "") or getattr(msg, "cluster", "")] = (
                msg
            )
        return out
