"""Delta streams that diff only what changed since the table they last compared against
still tell the client everything: driven directly (a DeltaStream over a SnapshotCache of a
view changed by hand; no etcd, no gRPC), what the client holds is tracked from the
responses and compared with what the snapshot says it should hold."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from controlplane.intent.keyspace import Ref, Stored
from controlplane.intent.model import Cluster, Kind, Listener
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import LISTENER_TYPE
from controlplane.xds.server.common import NodeInfo
from controlplane.xds.server.delta import DeltaStream
from tests.controlplane.xds.test_cache import _FakeView


class _Client:
    """One delta stream and what its client holds (name -> version), per type."""

    def __init__(self, cache: SnapshotCache, node: str = "n1", fleet: str = "default", **meta: Any) -> None:
        self.cache = cache
        self.fleet = fleet
        self.stream = DeltaStream(NodeInfo(node, fleet, {}, "", dict(meta), "ipv4:127.0.0.1:1"), None, [])
        self.held: dict[str, dict[str, str]] = {}
        self.values: dict[str, dict[str, bytes]] = {}

    def request(self, type_url: str, subscribe: list[str] | None = None, **kw: Any) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=subscribe or [], **kw)
        self.stream.on_request(req, self.cache.snapshot(self.fleet))

    async def flush(self, ack: bool = True) -> list[Any]:
        """Flush the stream and take every response (ACKing it unless told not to), until quiet."""
        got: list[Any] = []
        out: list[Any] = []

        async def write(body: bytes) -> None:
            out.append(discovery_pb2.DeltaDiscoveryResponse.FromString(body))

        for _ in range(10):
            out.clear()
            await self.stream.flush(self.cache.snapshot(self.fleet), write)
            for r in out:
                held = self.held.setdefault(r.type_url, {})
                values = self.values.setdefault(r.type_url, {})
                for resource in r.resources:
                    held[resource.name] = resource.version
                    values[resource.name] = resource.resource.value
                for name in r.removed_resources:
                    held.pop(name, None)
                    values.pop(name, None)
                if ack:
                    self.request(r.type_url, response_nonce=r.nonce)
            got += list(out)
            if not out or not ack:
                return got
        raise AssertionError("the stream never went quiet")

    def owed(self, type_url: str) -> dict[str, str]:
        """What the client should hold of `type_url` as a wildcard subscriber (its own variants included)."""
        snap = self.cache.snapshot(self.fleet)
        return {n: e.version for n, e in self.stream.entries(snap, type_url).items()}


def _cache(view: _FakeView) -> SnapshotCache:
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell(set())
    return cache


async def test_a_node_no_longer_shedding_gets_its_listeners_back_as_the_fleet_has_them() -> None:
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    view.listeners["tcp"] = Stored(Listener(name="tcp", port=10001, protocol="tcp", cluster="c0"), 1, 1)
    view.shed["n1"] = (1, 0, 0, 0)
    cache = _cache(view)
    c = _Client(cache)
    c.request(LISTENER_TYPE)
    await c.flush()
    assert c.held[LISTENER_TYPE] == c.owed(LISTENER_TYPE)
    shed = dict(c.held[LISTENER_TYPE])
    # The shed ends: the fleet's listeners are unchanged, but this node's are not its own any more.
    del view.shed["n1"]
    view.tell(set())
    assert not cache.snapshot("default").sheds
    await c.flush()
    assert c.held[LISTENER_TYPE] == c.owed(LISTENER_TYPE) != shed


async def test_a_listener_that_stops_binding_the_public_address_is_resent() -> None:
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    lst = Listener(name="tcp", address="10.1.1.1", port=10001, protocol="tcp", cluster="c0", bind_public_address=True)
    view.listeners["tcp"] = Stored(lst, 1, 1)
    cache = _cache(view)
    c = _Client(cache, public_address="192.0.2.7")
    c.request(LISTENER_TYPE)
    await c.flush()
    assert b"192.0.2.7" in c.values[LISTENER_TYPE]["tcp"]
    # It stops binding each Envoy's public address (the fleet's listener itself is the same).
    view.listeners["tcp"] = Stored(lst.model_copy(update={"bind_public_address": False}), 2, 2)
    view.tell({Ref(Kind.LISTENER, "tcp")})
    await c.flush()
    assert c.held[LISTENER_TYPE] == c.owed(LISTENER_TYPE)
    assert b"192.0.2.7" not in c.values[LISTENER_TYPE]["tcp"]
