"""Who may have a stream: node ids a fleet admits, and one stream per node id (on this replica
first, then fleet-wide through the registry's claims). Shared by every transport."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Protocol

import grpc

from controlplane.xds.server.common import BaseStream, NodeInfo, RequestBounds, StreamRejected

# The server pings every connection this often (and drops it when a ping goes unanswered for
# half as long): how soon a silently dead Envoy connection ends its stream and frees its node id.
KEEPALIVE_SECONDS = 10


@dataclass(frozen=True)
class ServerLimits:
    max_streams: int = 20_000
    # Stream admission by node id per fleet: {fleet: [regex, ...]}; a fleet not listed is open.
    node_allow: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # How long one write to a stream may block before the stream is considered stuck.
    write_timeout: float = 30.0
    # How long a response may go unanswered (no ACK, no NACK) before the stream is considered
    # stuck. Envoy answers each response as soon as it has applied it; a client that stops
    # reading never answers, and would otherwise hold its stream (and memory) forever.
    ack_timeout: float = 60.0
    # How long listeners and routes wait for the client to subscribe to the endpoints of
    # clusters it was just sent (make before break) before they go anyway.
    warming_hold: float = 1.0
    # What one client may make a replica hold (node, metadata, subscriptions, NACK messages).
    bounds: RequestBounds = RequestBounds()
    # Largest request message accepted (gRPC answers RESOURCE_EXHAUSTED above it).
    max_request_bytes: int = 4 * 1024 * 1024


class NodeClaims(Protocol):
    """Who decides, fleet-wide, whether a stream may speak for its node id (the registry)."""

    async def claim(self, stream: BaseStream) -> str | None: ...


class Admission:
    def __init__(self, limits: ServerLimits, claims: NodeClaims | None) -> None:
        self.streams: dict[int, BaseStream] = {}
        self.by_node: dict[str, BaseStream] = {}  # node id -> its one stream on this replica
        self.claims = claims
        self._allow = {fleet: [re.compile(p) for p in pats] for fleet, pats in limits.node_allow}

    def _admitted(self, node: NodeInfo) -> str | None:
        if not node.id:
            return "node.id is required"
        pats = self._allow.get(node.fleet)
        if pats is not None and not any(p.fullmatch(node.id) for p in pats):
            return f"node {node.id!r} is not allowed in fleet {node.fleet!r}"
        return None

    async def _claim(self, s: BaseStream) -> str | None:
        """One stream per node id: on this replica first, then fleet-wide (`claims`). A
        newer stream replaces the one it finds only with the same node-bound identity."""
        node_id = s.node.id
        old = self.by_node.get(node_id)
        if old is not None:
            same = s.identity is not None and s.identity.node_bound and old.identity == s.identity
            if not same:
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(old.connected_since))
                return (
                    f"node {node_id!r} already has a live xDS stream on this replica (from {old.node.peer!r}, "
                    f"since {since}); a second stream is refused unless it presents the same node-bound "
                    f"client certificate identity. A dead connection is closed within {KEEPALIVE_SECONDS * 1.5:.0f}s "
                    "by the server's keepalive, and the Envoy's next retry then gets in"
                )
        self.by_node[node_id] = s
        refusal = await self.claims.claim(s) if self.claims is not None else None
        if refusal is not None:
            if self.by_node.get(node_id) is s:
                if old is not None and old.id in self.streams:
                    self.by_node[node_id] = old
                else:
                    del self.by_node[node_id]
            return refusal
        if old is not None and old.id in self.streams:
            old.evict(
                StreamRejected(
                    grpc.StatusCode.ABORTED,
                    f"node {node_id!r} was replaced by a newer stream with the same identity from {s.node.peer!r}",
                )
            )
        return None
