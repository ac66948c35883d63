"""The per-node health gate over EDS: served under whatever `lbcp.gate/...` name a stream
subscribes to, following that stream's own node id; a drain changes only that node's gate,
and nothing is pushed to the rest of the fleet."""

from __future__ import annotations

import json

from envoy.config.core.v3 import health_check_pb2

from controlplane.etcd import Etcd
from controlplane.intent.keyspace import Keyspace
from controlplane.intent.model import Backend, Cluster
from controlplane.intent.store import Store
from controlplane.xds.resources import ENDPOINT_TYPE
from tests.controlplane.xds.server.test_protocol import QUIET, _client, _pushes, _settle


def _health(resp, name: str) -> int:
    cla = _client_decode(resp)[name]
    return cla.endpoints[0].lb_endpoints[0].health_status


def _addresses(resp, name: str) -> set[str]:
    cla = _client_decode(resp)[name]
    return {lb.endpoint.address.socket_address.address for e in cla.endpoints for lb in e.lb_endpoints}


def _client_decode(resp) -> dict:
    from controlplane.xds.client import AdsClient

    return AdsClient.decode(resp)


async def test_gate_follows_the_node_in_sotw_and_delta(store: Store, replica, etcd: Etcd) -> None:
    await store.put(Cluster(name="web"))
    rev = (await store.put(Backend(name="w1", address="10.0.0.1", port=80), cluster="web")).revision
    await _settle(replica, rev)
    # pod-7 runs a shared bootstrap (gate name "lbcp.gate/envoy", node id from --service-node).
    sotw = await _client(replica, node="pod-7")
    await sotw.request(ENDPOINT_TYPE, ["web", "lbcp.gate/envoy"])
    first = await sotw.recv()
    assert _health(first, "lbcp.gate/envoy") == health_check_pb2.HEALTHY
    assert "web" in _client_decode(first)
    await sotw.request(ENDPOINT_TYPE, ["web", "lbcp.gate/envoy"], version=first.version_info, nonce=first.nonce)
    delta = await _client(replica, node="pod-8", delta=True)
    await delta.delta_request(ENDPOINT_TYPE, subscribe=["web", "lbcp.gate/pod-8"])
    d_first = await delta.recv()
    assert _health(d_first, "lbcp.gate/pod-8") == health_check_pb2.HEALTHY
    await delta.delta_request(ENDPOINT_TYPE, nonce=d_first.nonce)
    bystander = await _client(replica, node="pod-9", delta=True)
    await bystander.delta_request(ENDPOINT_TYPE, subscribe=["web", "lbcp.gate/pod-9"])
    b_first = await bystander.recv()
    await bystander.delta_request(ENDPOINT_TYPE, nonce=b_first.nonce)

    keys = Keyspace(etcd.config.prefix)
    for node in ("pod-7", "pod-8"):
        await etcd.put(keys.drain_key(node), json.dumps({"reason": "test"}).encode())
    # SotW: only the changed gate is sent (EDS is incremental), marked unhealthy.
    drained = await sotw.recv()
    assert drained is not None and set(_client_decode(drained)) == {"lbcp.gate/envoy"}
    assert _health(drained, "lbcp.gate/envoy") == health_check_pb2.UNHEALTHY
    await sotw.request(ENDPOINT_TYPE, ["web", "lbcp.gate/envoy"], version=drained.version_info, nonce=drained.nonce)
    d_drained = await delta.recv()
    assert set(_client_decode(d_drained)) == {"lbcp.gate/pod-8"}
    assert _health(d_drained, "lbcp.gate/pod-8") == health_check_pb2.UNHEALTHY
    await delta.delta_request(ENDPOINT_TYPE, nonce=d_drained.nonce)
    assert await bystander.recv(QUIET) is None  # not drained: nothing to say

    await etcd.delete(keys.drain_key("pod-7"))
    back = await sotw.recv()
    assert _health(back, "lbcp.gate/envoy") == health_check_pb2.HEALTHY
    assert await delta.recv(QUIET) is None and await bystander.recv(QUIET) is None
    # A drain of a node that is not connected pushes nothing to anyone.
    await etcd.put(keys.drain_key("elsewhere"), b"{}")
    await sotw.request(ENDPOINT_TYPE, ["web", "lbcp.gate/envoy"], version=back.version_info, nonce=back.nonce)
    assert await sotw.recv(QUIET) is None and await bystander.recv(QUIET) is None
    assert replica.view.drained.keys() == {"pod-8", "elsewhere"}
    # The marker for every quiet spell above: a new backend of "web" must reach all three
    # streams, and be the first response each gets after its last expected one (a wrong gate
    # push, however late, would come first); the replica counts no other EDS push.
    await _settle(replica, (await store.put(Backend(name="w2", address="10.0.0.2", port=80), cluster="web")).revision)
    for c in (sotw, delta, bystander):
        marker = await c.recv()
        assert marker is not None and set(_client_decode(marker)) == {"web"}, c.node.id
        assert _addresses(marker, "web") == {"10.0.0.1", "10.0.0.2"}, c.node.id
    assert _pushes(replica, "pod-7") == {ENDPOINT_TYPE: 4}  # first, drained, back, the marker
    assert _pushes(replica, "pod-8") == {ENDPOINT_TYPE: 3}  # first, drained, the marker
    assert _pushes(replica, "pod-9") == {ENDPOINT_TYPE: 2}  # first, the marker
    for c in (sotw, delta, bystander):
        await c.close()
