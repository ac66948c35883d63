"""A client that stops reading does not slow pushes to the others, and is disconnected."""

from __future__ import annotations

import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from controlplane.etcd import EtcdConfig
from controlplane.intent.model import Backend, Cluster
from controlplane.intent.store import ReplaceBackends, Store
from controlplane.xds.client import AdsClient
from controlplane.xds.replica import ReplicaConfig, XdsReplica
from controlplane.xds.resources import ENDPOINT_TYPE
from controlplane.xds.server.admission import ServerLimits
from tests.conftest import wait_for

BIG = 5000  # endpoints: one assignment (~350 KB) is far more than gRPC's flow-control windows


async def test_stuck_client_is_isolated_then_dropped(store: Store, etcd_config: EtcdConfig) -> None:
    replica = XdsReplica(
        ReplicaConfig(
            etcd=etcd_config, port=0, replica_id="slow-test", limits=ServerLimits(write_timeout=2.0, ack_timeout=2.0)
        )
    )
    await replica.start()
    stuck_channel = None
    try:
        await store.put(Cluster(name="big"))
        await store.put(Cluster(name="small"))
        await store.apply(
            [
                ReplaceBackends(
                    "big",
                    tuple(
                        Backend(name=f"b{i:05d}", address=f"10.1.{i // 250}.{i % 250 + 1}", port=8000)
                        for i in range(BIG)
                    ),
                )
            ]
        )
        rev = (await store.put(Backend(name="s1", address="10.2.0.1", port=80), cluster="small")).revision
        assert await replica.view.wait_for_revision(rev, 10)

        # The stuck client subscribes to the big assignment, then never reads again.
        stuck_channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{replica.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(stuck_channel).StreamAggregatedResources()
        await call.write(
            discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id="stuck", cluster="default"), type_url=ENDPOINT_TYPE, resource_names=["big"]
            )
        )

        async def stuck_has_a_response_out() -> bool:
            return any(
                s.node.id == "stuck" and s.types.get(ENDPOINT_TYPE) and s.types[ENDPOINT_TYPE].in_flight
                for s in replica.service.streams.values()
            )

        await wait_for(stuck_has_a_response_out, what="the big assignment sent to the stuck client")

        # A healthy client gets its change promptly meanwhile.
        ok = AdsClient(f"127.0.0.1:{replica.port}", "healthy")
        await ok.open()
        await ok.request(ENDPOINT_TYPE, ["small"])
        r = await ok.recv()
        await ok.request(ENDPOINT_TYPE, ["small"], version=r.version_info, nonce=r.nonce)
        t0 = time.monotonic()
        await store.put(Backend(name="s2", address="10.2.0.2", port=80), cluster="small")
        r = await ok.recv(5)
        assert r is not None and len(AdsClient.decode(r)["small"].endpoints[0].lb_endpoints) == 2
        assert time.monotonic() - t0 < 1.5  # not held back by the stuck stream
        await ok.request(ENDPOINT_TYPE, ["small"], version=r.version_info, nonce=r.nonce)  # a live client answers

        # It never answers: after ack_timeout the server closes its stream.
        async def stuck_gone() -> bool:
            return all(s.node.id != "stuck" for s in replica.service.streams.values())

        await wait_for(stuck_gone, timeout=10, what="the stuck stream disconnected")
        assert any(s.node.id == "healthy" for s in replica.service.streams.values())
        await ok.close()
    finally:
        if stuck_channel is not None:
            await stuck_channel.close()
        await replica.stop(grace=0)
