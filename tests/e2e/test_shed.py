"""Shedding one shard of one Envoy's connections: a shed record in etcd becomes that Envoy's
own listener variant with the shard marked; Envoy drains exactly that filter chain, closing
the connections whose source port falls in the shard within its drain time (1 s here), and
nothing else: the other shards, and the other Envoy, keep every connection."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import free_port
from controlplane.moves.shed import shed
from controlplane.xds.resources import SHARDS
from tests.conftest import http_ok, wait_for

PER_ENVOY = 60


def _shard(ws: ClientConnection) -> int:
    return int(ws.transport.get_extra_info("sockname")[1]) // 10 % SHARDS


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_one_shard_of_one_envoy_is_shed(api, etcd, replica, envoys, delta) -> None:
    demo = DemoBackend("d0")
    port = free_port()
    listener = {"address": "127.0.0.1", "port": port, "bind_public_address": True}
    route = {"listener": "edge", "websocket": True, "timeout": None, "backends": [{"cluster": "web"}]}
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {}},
        {"op": "put", "kind": "backend", "cluster": "web", "name": "d0",
         "body": {"address": "127.0.0.1", "port": demo.port}},
        {"op": "put", "kind": "listener", "name": "edge", "body": listener},
        {"op": "put", "kind": "route", "name": "all", "body": route},
    ]  # fmt: skip
    assert (await api.post("/v1/batch", json={"operations": ops})).status_code == 200
    xds = [("127.0.0.1", replica.port)]
    addresses = ["127.0.1.81", "127.0.1.82"]
    a, b = (envoys(f"shed-{i}-{delta}", xds, delta=delta, public_address=addr) for i, addr in enumerate(addresses))
    held: dict[str, list[ClientConnection]] = {addr: [] for addr in addresses}
    try:
        for addr in addresses:
            await wait_for(http_ok(f"http://{addr}:{port}/"), timeout=30, what=f"the Envoy at {addr}")
            for _ in range(PER_ENVOY):
                ws = await ws_connect(f"ws://{addr}:{port}/", open_timeout=5, ping_interval=None)
                await asyncio.wait_for(ws.recv(), 5)
                held[addr].append(ws)
        target = 3
        in_shard = [ws for ws in held[addresses[0]] if _shard(ws) == target]
        assert in_shard, "no connection fell into the shard (the source ports are uniform over tens digits)"
        stats = "listener_manager.listener_(modified|in_place_updated)"
        before_a, before_b = a.stats(stats), b.stats(stats)

        assert await shed(etcd, a.node_id, [target], reason="test") == tuple(int(i == target) for i in range(SHARDS))

        async def shard_closed() -> bool:
            return all(ws.close_code is not None or ws.protocol.state.name == "CLOSED" for ws in in_shard)

        await wait_for(shard_closed, timeout=10, what="the shard's connections closing")
        await asyncio.sleep(0.5)
        alive = {addr: [ws for ws in conns if ws.protocol.state.name == "OPEN"] for addr, conns in held.items()}
        # Exactly the shard went: every other connection of that Envoy, and all of the other, stay.
        assert len(alive[addresses[0]]) == PER_ENVOY - len(in_shard), (len(alive[addresses[0]]), len(in_shard))
        assert len(alive[addresses[1]]) == PER_ENVOY
        for ws in alive[addresses[0]][:5] + alive[addresses[1]][:5]:  # still really through
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
        # One in-place filter-chain update on that Envoy; nothing at all on the other.
        after_a, after_b = a.stats(stats), b.stats(stats)
        assert after_a.get("listener_manager.listener_in_place_updated", 0) == (
            before_a.get("listener_manager.listener_in_place_updated", 0) + 1
        ), (before_a, after_a)
        assert after_b == before_b
        # A client of the shed shard reconnects (to the same Envoy: nothing steers it yet) and is served.
        ws = await ws_connect(f"ws://{addresses[0]}:{port}/", open_timeout=5)
        assert await asyncio.wait_for(ws.recv(), 5) == "d0"
        held[addresses[0]].append(ws)
        with pytest.raises(ConnectionClosed):
            await in_shard[0].send("gone")
    finally:
        await asyncio.gather(*(ws.close() for conns in held.values() for ws in conns), return_exceptions=True)
        demo.stop()
