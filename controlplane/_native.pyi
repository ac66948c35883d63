"""lbcp's native xDS core (the Rust crate in native/, built with PyO3 and maturin).

Python decides what every node gets; the core serves the gRPC streams. The seam is
`controlplane/xds/native.py`: publishes go in once per fleet and change, events come out in
batches through `event_fd`, admission crosses once per stream.
"""

from typing import Any

# (name, version, mix, sotw chunk, delta chunk): a `controlplane.xds.snapshot.Entry`.
EntryRow = tuple[str, str, int, bytes, bytes]
# (type_url, reset, entries, removed names, pending names or None)
TypeChange = tuple[str, bool, list[EntryRow], list[str], list[str] | None]
# ("open", sid, protocol, only_type, node bytes, peer, client certificate DER or None)
# ("close", sid, grpc code, message)
# ("nack", sid, type_url, version, message, at (unix), revision)
# ("names", sid, type_url, names, wildcard)
# ("want", fleet)
Event = tuple[object, ...]
# per type: (type_url, pushes, bytes, resources, (ack buckets, ack sum), (queue buckets, queue sum))
TypeMetrics = tuple[str, int, int, int, tuple[list[int], float], tuple[list[int], float]]

class Core:
    """The native xDS server: binds at construction, serves until `stop`."""

    port: int
    event_fd: int
    live: int

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: tuple[bytes, bytes, bytes | None] | None = None,
        reuse_port: bool = False,
        threads: int = 2,
        max_streams: int = 20_000,
        max_request_bytes: int = 4 << 20,
        write_timeout: float = 30.0,
        ack_timeout: float = 60.0,
        warming_hold: float = 1.0,
        max_connection_age: float = 1800.0,
        max_connection_age_grace: float = 60.0,
        keepalive: float = 10.0,
        max_names_per_type: int = 20_000,
        max_types: int = 16,
        max_nack_message: int = 4096,
        watched: dict[str, str] = ...,
        short_names: dict[str, str] = ...,
    ) -> None: ...
    def events(self) -> tuple[list[Event], list[tuple[int, int, float, int]]]:
        """Everything queued since the last call: (events, [(stream id, synced revision or 0,
        when (time.monotonic()), types ACKed: bit i is TYPE_ORDER[i], bit 31 any other)])."""
    def publish(self, fleet: str, revision: int, types: list[TypeChange], change_at: float | None = None) -> None:
        """Publish `fleet` at `revision`: per type, the entries that changed and the names
        removed (`reset`: the entries are the whole table)."""
    def admit(self, verdicts: list[tuple[int, int, str]]) -> None:
        """(stream id, gRPC status code (0: admitted), message) for streams waiting on admission."""
    def evict(self, sid: int, code_: int, message: str) -> None: ...
    def settle(self, sid: int, type_url: str) -> None:
        """Python answered a stream's watched subscription of `type_url`: it may be sent now."""
    def set_overlay(self, sid: int, type_url: str, entries: list[EntryRow]) -> None:
        """Replace a stream's own entries of one type (empty: it is served its fleet's)."""
    def stream_states(self, sids: list[int]) -> list[dict[str, Any] | None]: ...
    def records(self, sids: list[int]) -> list[bytes | None]:
        """Each stream's protocol state as the inside of a JSON object (for the registry)."""
    def metrics(self) -> list[TypeMetrics]: ...
    def stop(self, grace: float = 1.0) -> None: ...

def latency_buckets() -> list[float]: ...
