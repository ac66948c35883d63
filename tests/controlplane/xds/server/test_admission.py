"""Stream admission: node id required, per-fleet allow-list, per-replica stream cap."""

from __future__ import annotations

import grpc

from controlplane.etcd import EtcdConfig
from controlplane.xds.client import AdsClient
from controlplane.xds.replica import ReplicaConfig, XdsReplica
from controlplane.xds.resources import CLUSTER_TYPE
from controlplane.xds.server.admission import ServerLimits


async def _first(replica, node: str, fleet: str = "default"):
    c = AdsClient(f"127.0.0.1:{replica.port}", node, fleet)
    await c.open()
    await c.request(CLUSTER_TYPE)
    try:
        return await c.recv(3), c
    except grpc.aio.AioRpcError as exc:
        await c.close()
        return exc, None


async def test_admission(etcd_config: EtcdConfig) -> None:
    limits = ServerLimits(max_streams=2, node_allow=(("edge", (r"edge-\d+",)),))
    r = XdsReplica(ReplicaConfig(etcd=etcd_config, port=0, limits=limits, replica_id="adm"))
    await r.start()
    try:
        err, _ = await _first(r, "")
        assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err, _ = await _first(r, "intruder", "edge")
        assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.PERMISSION_DENIED
        ok1, c1 = await _first(r, "edge-1", "edge")
        ok2, c2 = await _first(r, "anything", "other-fleet")
        assert ok1.type_url == CLUSTER_TYPE and ok2.type_url == CLUSTER_TYPE
        err, _ = await _first(r, "edge-3", "edge")
        assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "another replica" in err.details()
        await c1.close()
        await c2.close()
    finally:
        await r.stop(grace=0)
