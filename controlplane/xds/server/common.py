"""What the replica knows of an xDS stream (the native core serves it): the node, its
identity, what the pollers attach, its own entries (gate, variants), NACK records, observers."""

from __future__ import annotations

import ipaddress
import itertools
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from controlplane.xds.identity import MAX_NODE_ID, NODE_ID, Identity
from controlplane.xds.resources import (
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SHORT_NAMES,
    gate_assignment,
)
from controlplane.xds.snapshot import Entry, RouteBase, Snapshot, encoded_entry, make_entry, share_of

# The node metadata keys lbcp reads; everything else a client sends is dropped on arrival.
KEPT_METADATA = ("ops_port", "public_address")


class StreamRejected(Exception):
    """A client went past a bound or failed a check: its stream ends with this gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RequestBounds:
    """What one client may make a replica hold for it (docs/security.md, "Bounds")."""

    max_metadata_bytes: int = 8192  # node metadata as sent (protobuf bytes)
    max_names_per_type: int = 20_000  # subscribed (and, delta, initially held) names per type
    max_types: int = 16  # resource types per stream
    max_nack_message: int = 4096  # characters of a NACK's message kept (the rest is cut, and said so)


def _ip_literal(value: Any) -> str | None:
    try:
        return str(ipaddress.ip_address(value)) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass
class Nack:
    version: str
    message: str
    at: float
    revision: int

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "message": self.message, "at": self.at, "revision": self.revision}


@dataclass
class TypeState:
    """One resource type on one stream, as the native core reports it."""

    requested: bool = False
    wildcard: bool = False
    in_flight: str | None = None  # nonce of the response awaiting ACK/NACK
    sent_version: str | None = None
    acked_version: str | None = None
    nack: Nack | None = None
    pushes: int = 0
    bytes_sent: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent_version": self.sent_version,
            "acked_version": self.acked_version,
            "pushes": self.pushes,
            "bytes_sent": self.bytes_sent,
            "last_nack": self.nack.as_dict() if self.nack else None,
        }


@dataclass
class NodeInfo:
    id: str
    fleet: str
    locality: dict[str, str]
    user_agent: str
    metadata: dict[str, Any]
    peer: str

    @classmethod
    def from_proto(cls, node: Any, peer: str, bounds: RequestBounds | None = None) -> NodeInfo:
        """The node a stream's first request names, or StreamRejected (INVALID_ARGUMENT) when
        its id, fleet or metadata is out of bounds. Only `KEPT_METADATA` keys are kept."""
        bounds = bounds or RequestBounds()
        for what, value in (("node.id", node.id), ("node.cluster (the fleet)", node.cluster or "default")):
            if not NODE_ID.fullmatch(value):
                raise StreamRejected(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{what} {value[:64]!r}{'…' if len(value) > 64 else ''} is not valid: 1 to {MAX_NODE_ID} "
                    "characters of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit",
                )
        size = node.metadata.ByteSize() if node.HasField("metadata") else 0
        if size > bounds.max_metadata_bytes:
            raise StreamRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node {node.id!r}: node metadata is {size} bytes; this replica accepts at most "
                f"{bounds.max_metadata_bytes} (lbcp reads only {', '.join(KEPT_METADATA)})",
            )
        loc = {
            k: v
            for k, v in (
                ("region", node.locality.region),
                ("zone", node.locality.zone),
                ("sub_zone", node.locality.sub_zone),
            )
            if v
        }
        version = node.user_agent_build_version.version
        ua = node.user_agent_name + (
            f"/{version.major_number}.{version.minor_number}.{version.patch}"
            if node.HasField("user_agent_build_version")
            else ""
        )
        meta = json_format.MessageToDict(node.metadata) if size else {}
        kept = {k: meta[k] for k in KEPT_METADATA if k in meta}
        return cls(node.id, node.cluster, {k: v[:128] for k, v in loc.items()}, ua[:128], kept, peer)

    @property
    def peer_host(self) -> str:
        """The host part of the gRPC peer: "ipv4:10.0.0.5:51234" -> "10.0.0.5", "ipv6:[::1]:51234"
        (or its %-encoded form) -> "::1"; "" for a peer without an IP (a Unix socket)."""
        kind, _, rest = urllib.parse.unquote(self.peer).partition(":")
        if kind == "ipv6":
            return rest.rpartition("]")[0].lstrip("[").split("%")[0]
        return rest.rpartition(":")[0] if kind == "ipv4" else ""


class StreamObserver(Protocol):
    """Told about every stream's life (the fleet registry and metrics implement it)."""

    def connected(self, stream: BaseStream) -> None: ...
    def changed(self, stream: BaseStream) -> None: ...
    def disconnected(self, stream: BaseStream) -> None: ...
    def nacked(self, stream: BaseStream, type_url: str, nack: Nack) -> None: ...
    def acked(self, stream: BaseStream, type_url: str, latency: float) -> None: ...


class QuietObserver:
    """A StreamObserver that ignores every event: subclasses override the ones they use."""

    def connected(self, stream: BaseStream) -> None:
        pass

    def changed(self, stream: BaseStream) -> None:
        pass

    def disconnected(self, stream: BaseStream) -> None:
        pass

    def nacked(self, stream: BaseStream, type_url: str, nack: Nack) -> None:
        pass

    def acked(self, stream: BaseStream, type_url: str, latency: float) -> None:
        pass


_stream_ids = itertools.count(1)


class _Overlay(Mapping[str, Entry]):
    """A snapshot's entries of one type with one stream's own entries over them (its health
    gate, its listeners' public-address variants), read-only and without copying the base."""

    __slots__ = ("base", "own")

    def __init__(self, base: Mapping[str, Entry], own: Mapping[str, Entry]) -> None:
        self.base, self.own = base, own

    def __getitem__(self, key: str) -> Entry:
        entry = self.own.get(key)
        return self.base[key] if entry is None else entry

    def __contains__(self, key: object) -> bool:
        return key in self.own or key in self.base

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from (n for n in self.own if n not in self.base)

    def __len__(self) -> int:
        return len(self.base) + sum(n not in self.base for n in self.own)


class BaseStream:
    protocol = "?"

    def __init__(
        self,
        node: NodeInfo,
        only_type: str | None,
        observers: list[StreamObserver],
        bounds: RequestBounds | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.id = next(_stream_ids)
        self.node = node
        self.bounds = bounds or RequestBounds()
        self.identity = identity  # what the client certificate proved (mTLS), else None
        # Where the front tier may send clients for this node, decided by the replica from
        # trusted facts only (controlplane.xds.probe): {"address", "source", "reason"}.
        self.front: dict[str, Any] | None = None
        self.evicted: StreamRejected | None = None  # set to end this stream with that status
        self.load: dict[str, Any] | None = None  # the last live-load sample (controlplane.xds.load)
        self.load_error: dict[str, Any] | None = None  # why the latest sample failed, if it did
        self.only_type = only_type
        self.observers = observers
        self.types: dict[str, TypeState] = {}
        self.connected_since = time.time()
        self.acked_revision = 0
        self.front_health: dict[str, Any] | None = None  # the last /healthz probe (controlplane.xds.probe)
        # The health-gate name this stream subscribed to (bootstraps name it after the node,
        # but an Envoy started with --service-node keeps the bootstrap's name): its content
        # always follows this stream's own node id.
        self.gate: str | None = None
        self._gate: tuple[str, bool, Entry] | None = None  # (name, drained, entry) last built
        # Where this Envoy binds `bind_public_address` listeners too (its public_address, an
        # IP literal, else None), and its listener variants last built:
        # name -> (fleet bytes, shard generations, entry).
        self.bind_address = _ip_literal(node.metadata.get("public_address"))
        self._variants: dict[str, tuple[bytes, tuple[int, ...] | None, Entry]] = {}
        # Its route configurations with its share of fleet-scope rate limits: name -> (base, share, entry).
        self._route_own: dict[str, tuple[RouteBase, float, Entry]] = {}

    @property
    def fleet(self) -> str:
        return self.node.fleet

    def entries(self, snap: Snapshot, type_url: str) -> Mapping[str, Entry]:
        """What this stream may be sent of `type_url`: the fleet's snapshot with this node's
        own entries over it (`own_entries`)."""
        base = snap.of(type_url)
        own = self.own_entries(snap, type_url)
        return _Overlay(base, own) if own else base

    def own_entries(self, snap: Snapshot, type_url: str) -> Mapping[str, Entry]:
        """This node's own entries of `type_url`: for endpoints its health gate once it
        subscribed to it, for listeners its variants of those that bind its public address
        (or its shed shards), for route configurations its share of fleet rate limits."""
        if type_url == LISTENER_TYPE:
            return self._listener_variants(snap) if self._needs_variants(snap) else {}
        if type_url == ROUTE_TYPE:
            return self._route_variants(snap) if snap.route_bases else {}
        if type_url != ENDPOINT_TYPE or self.gate is None:
            return {}
        drained = self.node.id in snap.drained
        if self._gate is None or self._gate[:2] != (self.gate, drained):
            self._gate = (self.gate, drained, make_entry(ENDPOINT_TYPE, self.gate, gate_assignment(self.gate, drained)))
        return {self.gate: self._gate[2]}

    def _needs_variants(self, snap: Snapshot) -> bool:
        if self.node.id in snap.sheds:
            return True
        return self.bind_address is not None and snap.binds_public()

    def _listener_variants(self, snap: Snapshot) -> dict[str, Entry]:
        """This node's own variants of the snapshot's listeners (its public address, its shed
        shards), each built once per listener content and generations."""
        generations = snap.sheds.get(self.node.id)
        own, built = {}, {}
        for name, base in snap.listener_bases.items():
            if not (generations or (base.bind_public and self.bind_address is not None)):
                continue
            hit = self._variants.get(name)
            if hit is None or hit[0] != base.value or hit[1] != generations:
                value = base.variant(self.bind_address, generations)
                hit = (base.value, generations, encoded_entry(LISTENER_TYPE, name, value))
            built[name] = hit
            own[name] = hit[2]
        self._variants = built
        return own

    def _route_variants(self, snap: Snapshot) -> dict[str, Entry]:
        """This node's own variants of the route configurations with fleet-scope rate limits
        (its share of each limit), each built once per configuration and share."""
        share = share_of(snap.shares, self.node.fleet, self.node.id)
        if share is None:
            self._route_own = {}
            return {}
        own, built = {}, {}
        for name, base in snap.route_bases.items():
            hit = self._route_own.get(name)
            if hit is None or hit[0] is not base or hit[1] != share:
                hit = (base, share, encoded_entry(ROUTE_TYPE, name, base.variant(share)))
            built[name] = hit
            own[name] = hit[2]
        self._route_own = built
        return own

    def evict(self, reason: StreamRejected) -> None:
        """End this stream with `reason` (a takeover, or a claim refused once etcd answered)."""
        self.evicted = reason

    def mark_changed(self) -> None:
        """Something the registry records (front health, load) changed: observers hear of it."""
        self._emit("changed")

    def _emit(self, event: str, *args: Any) -> None:
        for o in self.observers:
            getattr(o, event)(self, *args)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.facts(),
            "protocol": self.protocol,
            "acked_revision": self.acked_revision,
            "types": {SHORT_NAMES.get(t, t): st.as_dict() for t, st in self.types.items()},
        }

    def facts(self) -> dict[str, Any]:
        """What the registry records of this stream besides its protocol state: the node,
        its identity, and what the replica's pollers attach (front, load, health)."""
        return {
            "node_id": self.node.id,
            "fleet": self.node.fleet,
            "locality": self.node.locality,
            "user_agent": self.node.user_agent,
            "peer": self.node.peer,
            "metadata": self.node.metadata,
            **({"identity": self.identity.name} if self.identity is not None else {}),
            **({"front": self.front} if self.front is not None else {}),
            **({"load": self.load} if self.load is not None else {}),
            **({"load_error": self.load_error} if self.load_error is not None else {}),
            "connected_since": self.connected_since,
            **({"front_health": self.front_health} if self.front_health is not None else {}),
        }

    def record(self, replica: str, now: float) -> bytes | None:
        """The registry record as JSON bytes, if this stream can make it cheaper than
        `as_dict` (None: the registry builds it from `as_dict`)."""
        return None
