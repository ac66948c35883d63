"""xDS clients are not trusted (docs/security.md): each attack of issue 15 reproduced with a
raw gRPC ADS client against real replicas, with real Envoys as the victims.

- front-door injection: a self-asserted `public_address` never reaches the front tier;
- identity takeover: a second stream for a live node id is refused, on the same replica and
  on another one; with mTLS a certificate naming another node is refused, and the same
  certificate reconnecting after a network cut keeps its node at once;
- unbounded writes and amplification: metadata, NACK messages, subscriptions and request
  size are bounded, each with a precise gRPC status, and the registry stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import dns.asyncresolver
import grpc
import pytest

from api.localcluster.procs import EnvoyProcess, Proc, free_port
from controlplane.etcd import Etcd, prefix_end
from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns
from controlplane.intent.model import Backend, Cluster, Listener, Route, WeightedBackend
from controlplane.intent.store import Store
from controlplane.xds.bootstrap import XdsTLS
from controlplane.xds.client import AdsClient
from controlplane.xds.registry import fleet_prefix, owners_prefix
from controlplane.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE
from controlplane.xds.server.admission import KEEPALIVE_SECONDS
from tests.certs import CA
from tests.conftest import http_ok, wait_for

VICTIM_ADDRESS = "127.0.0.21"


async def _intent(store: Store, backends: list) -> int:
    await store.put(Cluster(name="web"))
    await store.put(Backend(name="b0", address="127.0.0.1", port=backends[0].port), cluster="web")
    await store.put(Listener(name="edge", address="127.0.0.1", port=free_port(), protocol="http"))
    return (await store.put(Route(name="all", listener="edge", backends=[WeightedBackend(cluster="web")]))).revision


async def _attacker(
    port: int, node: str, fleet: str = "default", *, metadata: dict | None = None, creds=None, delta: bool = False
) -> AdsClient:
    c = AdsClient(f"127.0.0.1:{port}", node, fleet, delta=delta, credentials=creds)
    if metadata:
        c.node.metadata.update(metadata)
    await c.open()
    return c


async def _ack_all(c: AdsClient) -> None:
    """Act configured: take CDS and LDS and ACK them (what made a node count as in service)."""
    for t in (CLUSTER_TYPE, LISTENER_TYPE):
        await c.request(t)
        r = await c.recv()
        assert r is not None, f"no {t} response"
        await c.request(t, version=r.version_info, nonce=r.nonce)


async def _refused(c: AdsClient, first_type: str = CLUSTER_TYPE) -> grpc.aio.AioRpcError:
    """The stream's status after its first request (it must end, not answer)."""
    if c.delta:
        await c.delta_request(first_type)
    else:
        await c.request(first_type)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        for _ in range(5):
            await c.recv(10)
    await c.close()
    return err.value


async def _fleet(api) -> dict:
    return {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}


async def _flushed_after(api, ports: list[int], *, creds_for=None) -> list[AdsClient]:
    """A positive marker instead of a sleep: an honest stream opened now on each replica (at
    `ports`), waited for until the fleet registry shows it. Each replica writes its registry
    in flushes of everything pending, so once a marker opened after some event is in the
    registry, whatever that event made its replica write is there too. The caller closes them."""
    markers = []
    for i, port in enumerate(ports):
        node = f"marker-{i}-{port}"
        creds = creds_for(f"spiffe://lbcp/fleet/default/node/{node}") if creds_for else None
        c = await _attacker(port, node, creds=creds)
        markers.append(c)
        await _ack_all(c)

    async def all_in() -> bool:
        return {c.node.id for c in markers} <= set(await _fleet(api))

    await wait_for(all_in, timeout=30, what="the marker streams in the registry")
    return markers


async def _registry_bytes(etcd: Etcd) -> tuple[int, int]:
    """(records, bytes) under the fleet registry and the claims."""
    total = count = 0
    for prefix in (fleet_prefix(etcd.config.prefix), owners_prefix(etcd.config.prefix)):
        resp = await etcd.range(prefix, prefix_end(prefix))
        count += len(resp.kvs)
        total += sum(len(kv.key) + len(kv.value) for kv in resp.kvs)
    return count, total


@pytest.fixture
async def dns_server(etcd: Etcd):
    server = FrontDoorDns(DnsConfig(zone="example.com", name="www", ttl=5, port=0, interval=0.2))
    await server.start()
    follower = asyncio.create_task(server.follow(etcd))
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime, resolver.cache = ["127.0.0.1"], server.port, 2.0, None

    async def answer() -> list[str]:
        try:
            return sorted(r.address for r in await resolver.resolve("www.example.com", "A"))
        except dns.resolver.NoAnswer:
            return []

    yield answer
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    await server.stop()


async def test_front_door_takes_only_verified_addresses(api, store: Store, replica, envoys, backends, dns_server):
    """A node that asserts a public_address outside the allowed CIDR, or inside it with
    nothing of its own listening there, or no ops listener at all, is registered but never
    in service: the DNS answer and every render keep only the real, probed Envoy."""
    await _intent(store, backends)
    victim = envoys("envoy-0", [("127.0.0.1", replica.port)], public_address=VICTIM_ADDRESS)
    await wait_for(lambda: _answer_is(dns_server, [VICTIM_ADDRESS]), timeout=30, what="the victim in DNS")

    attackers = [
        await _attacker(replica.port, "evil-1", metadata={"public_address": "203.0.113.66"}),
        await _attacker(replica.port, "evil-2", metadata={"public_address": "127.0.0.99", "ops_port": free_port()}),
        await _attacker(replica.port, "evil-3"),  # no ops listener: cannot be verified
    ] + [await _attacker(replica.port, f"evil-more-{i}", metadata={"public_address": "203.0.113.66"}) for i in range(9)]
    try:
        for c in attackers:
            await _ack_all(c)

        async def all_registered() -> bool:
            return {c.node.id for c in attackers} <= set(await _fleet(api))

        await wait_for(all_registered, what="the attackers in the registry")
        await asyncio.sleep(1.0)  # two probe rounds
        fleet = await _fleet(api)
        assert fleet["evil-1"]["front"]["address"] is None
        assert "not inside a --front-cidr" in fleet["evil-1"]["front"]["reason"]
        assert fleet["evil-2"]["front"] == {"address": "127.0.0.99", "source": "public_address"}
        assert fleet["evil-2"]["front_health"]["ok"] is False and fleet["evil-2"]["front_health"]["probed"] is True
        assert "no ops_port" in fleet["evil-3"]["front_health"]["error"]
        assert fleet["evil-1"]["front_state"] == "unverified"
        assert fleet["evil-2"]["front_state"] == fleet["evil-3"]["front_state"] == "unhealthy"
        assert fleet["envoy-0"]["front_state"] == "in"
        assert "metadata" not in fleet["evil-1"] or set(fleet["evil-1"]["metadata"]) <= {"ops_port", "public_address"}
        assert await dns_server() == [VICTIM_ADDRESS]
        front = (await api.get("/v1/frontdoor/json")).json()["in_service"]
        assert [m["node_id"] for m in front] == ["envoy-0"]
        for fmt, params in (("nftables", {}), ("iptables", {}), ("dns", {"zone": "example.com"})):
            text = (await api.get(f"/v1/frontdoor/{fmt}", params=params)).text
            assert "203.0.113.66" not in text and "127.0.0.99" not in text, fmt
        assert await http_ok(f"{victim.ops}/healthz")()
    finally:
        for c in attackers:
            await c.close()


async def _answer_is(dns_server, want: list[str]) -> bool:
    return await dns_server() == want


async def test_a_live_node_id_cannot_be_taken_over(api, store: Store, replica, replica2, envoys, backends):
    """Without mTLS the live stream wins: a second stream for envoy-0, on the same replica
    or another one, is refused with ALREADY_EXISTS, and envoy-0's record, gate and front
    health stay the real Envoy's."""
    await _intent(store, backends)
    victim = envoys("envoy-0", [("127.0.0.1", replica.port)], public_address=VICTIM_ADDRESS)

    async def victim_in_service() -> bool:
        doc = (await _fleet(api)).get("envoy-0") or {}
        return bool((doc.get("front_health") or {}).get("ok"))

    await wait_for(victim_in_service, timeout=30, what="the victim in service")
    before = (await _fleet(api))["envoy-0"]
    config_before = await asyncio.to_thread(victim.config_dump, "dynamic_active_clusters")
    for port in (replica.port, replica2.port):
        for delta in (False, True):
            thief = await _attacker(port, "envoy-0", metadata={"public_address": "127.0.0.66"}, delta=delta)
            err = await _refused(thief)
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
            assert "already has a live xDS stream" in err.details()
    markers = await _flushed_after(api, [replica.port, replica2.port])  # both replicas flushed since
    after = (await _fleet(api))["envoy-0"]
    for key in ("peer", "replica", "connected_since", "front", "streams"):
        assert after[key] == before[key], key
    assert after["front"]["address"] == VICTIM_ADDRESS
    # The victim never noticed: still connected, the same clusters, nothing rejected.
    stats = await asyncio.to_thread(victim.stats, "control_plane.connected_state")
    assert stats["control_plane.connected_state"] == 1
    assert await asyncio.to_thread(victim.config_dump, "dynamic_active_clusters") == config_before
    assert (await api.get("/v1/frontdoor/json")).json()["in_service"][0]["address"] == VICTIM_ADDRESS
    for c in markers:
        await c.close()


class _CuttableProxy:
    """TCP between an Envoy and a replica that can be cut the way a network fails: the
    Envoy's side is reset (it reconnects), the replica's side just goes silent (no FIN)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[asyncio.Task]]] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()

        tasks = [asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))]
        self._pairs.append((writer, up_writer, tasks))

    def cut(self) -> None:
        for down, _up, tasks in self._pairs:
            for t in tasks:
                t.cancel()  # nothing flows any more, in either direction
            down.transport.abort()  # the Envoy sees its connection reset
        # the upstream sockets stay open and silent until the replica's keepalive gives up

    async def stop(self) -> None:
        for down, up, tasks in self._pairs:
            for t in tasks:
                t.cancel()
            down.transport.abort()
            up.transport.abort()
        if self._server is not None:
            self._server.close()


async def _connected_since(api, node: str) -> float | None:
    return ((await _fleet(api)).get(node) or {}).get("connected_since")


async def _cut_and_wait_back(api, proxy: _CuttableProxy, node: str, timeout: float) -> float:
    """Cut the proxy; seconds until `node` is registered again on a new stream."""
    first = await _connected_since(api, node)
    proxy.cut()
    started = asyncio.get_running_loop().time()

    async def back() -> bool:
        since = await _connected_since(api, node)
        return since is not None and since != first

    await wait_for(back, timeout=timeout, what=f"{node} back on a new stream")
    return asyncio.get_running_loop().time() - started


async def test_honest_reconnect_after_a_silent_network_cut(api, store: Store, replica, tmp_path: Path, backends):
    """Without mTLS: an Envoy whose connection died silently is refused while the dead
    stream looks live, and gets its node back once the replica's keepalive closes it."""
    await _intent(store, backends)
    proxy = _CuttableProxy(replica.port)
    await proxy.start()
    e = EnvoyProcess(tmp_path / "e", "envoy-cut", "default", [("127.0.0.1", proxy.port)])
    try:
        await asyncio.to_thread(e.start)

        async def connected() -> bool:
            return await _connected_since(api, "envoy-cut") is not None

        await wait_for(connected, timeout=30, what="envoy-cut registered")
        took = await _cut_and_wait_back(api, proxy, "envoy-cut", KEEPALIVE_SECONDS * 1.5 + 15)
        print(f"silent cut without mTLS: node back after {took:.1f}s (keepalive bound {KEEPALIVE_SECONDS * 1.5:.0f}s)")
        assert (await _fleet(api))["envoy-cut"]["streams"] == 1
    finally:
        e.stop()
        await proxy.stop()


@pytest.fixture
def xds_pki(tmp_path: Path) -> dict:
    ca = CA()
    server = ca.issue("lbcp-xds", ["127.0.0.1"])
    return {"ca": ca, "tls": (server.cert_pem, server.key_pem, ca.pem), "dir": tmp_path}


def _envoy_tls(pki: dict, stem: str, san: str) -> XdsTLS:
    d = pki["dir"]
    (d / "ca.pem").write_bytes(pki["ca"].pem)
    cert, key = pki["ca"].issue(stem, [san], client=True).write(d, stem)
    return XdsTLS(cert, key, str(d / "ca.pem"))


def _creds(pki: dict, san: str) -> grpc.ChannelCredentials:
    issued = pki["ca"].issue("client", [san], client=True)
    return grpc.ssl_channel_credentials(pki["ca"].pem, issued.key_pem, issued.cert_pem)


async def test_mtls_binds_the_node_id_to_the_certificate(api, store: Store, make_replica, xds_pki, tmp_path, backends):
    """With mTLS a node id must match the certificate's SPIFFE ID: another node's id is
    refused with PERMISSION_DENIED (and a clear message), the matching one is served; the
    same certificate reconnecting after a silent network cut keeps its node at once."""
    await _intent(store, backends)
    replica = await make_replica("mtls", tls=xds_pki["tls"])
    me = "spiffe://lbcp/fleet/default/node/envoy-1"
    for node, fleet in (("envoy-2", "default"), ("envoy-1", "other")):
        c = await _attacker(replica.port, node, fleet, creds=_creds(xds_pki, me))
        err = await _refused(c)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
        assert me in err.details() and f"spiffe://lbcp/fleet/{fleet}/node/{node}" in err.details()
    plain_dns = await _attacker(replica.port, "envoy-1", creds=_creds(xds_pki, "envoy-1"))  # a DNS SAN: wrong kind
    assert (await _refused(plain_dns)).code() == grpc.StatusCode.PERMISSION_DENIED

    proxy = _CuttableProxy(replica.port)
    await proxy.start()
    e = EnvoyProcess(
        tmp_path / "e", "envoy-1", "default", [("127.0.0.1", proxy.port)], xds_tls=_envoy_tls(xds_pki, "e1", me)
    )
    try:
        await asyncio.to_thread(e.start)

        async def registered() -> bool:
            return await _connected_since(api, "envoy-1") is not None

        await wait_for(registered, timeout=30, what="envoy-1 over mTLS")
        assert (await _fleet(api))["envoy-1"]["identity"] == me
        # A thief with a certificate for another node cannot speak for envoy-1 ...
        thief = await _attacker(replica.port, "envoy-1", creds=_creds(xds_pki, "spiffe://lbcp/fleet/default/node/x"))
        assert (await _refused(thief)).code() == grpc.StatusCode.PERMISSION_DENIED
        # ... but envoy-1 itself, reconnecting after a silent cut, replaces its dead stream at once
        # (before the keepalive could have dropped it).
        took = await _cut_and_wait_back(api, proxy, "envoy-1", KEEPALIVE_SECONDS)
        print(f"silent cut with mTLS: same identity replaced the dead stream after {took:.1f}s")
        # The dead stream's record is gone by the time the replica's registry has flushed a
        # stream opened after the reconnect (a positive marker, not a pause).
        for c in await _flushed_after(api, [replica.port], creds_for=lambda san: _creds(xds_pki, san)):
            await c.close()
        assert (await _fleet(api))["envoy-1"]["streams"] == 1
    finally:
        e.stop()
        await proxy.stop()


async def test_bounds_on_what_a_stream_can_write(api, store: Store, replica, etcd: Etcd, backends):
    """Oversized metadata, a huge NACK message, a 200,000-name subscription and a huge request
    each get a precise status or a stated cut; 100 streams with the largest allowed metadata
    keep the registry small."""
    await _intent(store, backends)
    big = await _attacker(replica.port, "adv-big", metadata={"blob": "x" * (3 * 1024 * 1024)})
    err = await _refused(big)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "node metadata is" in err.details()
    assert "at most 8192" in err.details()

    bad_id = await _attacker(replica.port, "evil/../../etc" + "x" * 300)
    assert (await _refused(bad_id)).code() == grpc.StatusCode.INVALID_ARGUMENT

    # A NACK with a 500 KB message: kept cut to 4 KiB, and said so.
    n = await _attacker(replica.port, "adv-nack")
    await n.request(CLUSTER_TYPE)
    r = await n.recv()
    await n.request(CLUSTER_TYPE, version="", nonce=r.nonce, error="E" * 500_000)

    async def nack_recorded() -> bool:
        doc = (await _fleet(api)).get("adv-nack") or {}
        return bool(((doc.get("types") or {}).get("cds") or {}).get("last_nack"))

    await wait_for(nack_recorded, what="the NACK in the registry")
    message = (await _fleet(api))["adv-nack"]["types"]["cds"]["last_nack"]["message"]
    assert len(message) < 4200 and message.endswith("[lbcp: cut 495904 of 500000 characters]")
    assert len((await api.get("/v1/fleet/adv-nack")).content) < 8 * 1024
    await n.close()

    # 200,000 EDS names in one delta request: refused, no 200,000-entry answer.
    amp = await _attacker(replica.port, "adv-amp", delta=True)
    await amp.delta_request(ENDPOINT_TYPE, [f"ghost-{i}" for i in range(200_000)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        got = await amp.recv(10)
        assert got is None or len(got.removed_resources) <= 20_000
        await amp.recv(10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 20000 per type" in caught.value.details()
    await amp.close()
    sotw = await _attacker(replica.port, "adv-amp-sotw")
    await sotw.request(ENDPOINT_TYPE, [f"ghost-{i}" for i in range(20_001)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sotw.recv(10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await sotw.close()

    # A request over the size bound (4 MiB): gRPC refuses it before it is parsed.
    huge = await _attacker(replica.port, "adv-huge")
    await huge.request(ENDPOINT_TYPE, ["n" * 1000] * 5000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await huge.recv(10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await huge.close()
    assert not {"adv-big", "adv-amp", "adv-amp-sotw", "adv-huge"} & set(await _fleet(api))

    # 100 streams, each with the most metadata allowed (8 KiB): only the keys lbcp reads are kept.
    _, base_bytes = await _registry_bytes(etcd)
    filler = "y" * (8192 - 200)
    clients = [
        await _attacker(
            replica.port, f"max-{i}", metadata={"ops_port": 1, "public_address": "203.0.113.9", "f": filler}
        )
        for i in range(100)
    ]
    try:
        for c in clients:
            await _ack_all(c)

        async def all_in() -> bool:
            return sum(1 for n in await _fleet(api) if n.startswith("max-")) == 100

        await wait_for(all_in, timeout=30, what="100 streams registered")
        records, size = await _registry_bytes(etcd)
        per_stream = (size - base_bytes) / 100
        print(f"registry: 100 streams with 8 KiB metadata each -> {per_stream:.0f} bytes per stream in etcd")
        assert per_stream < 2048, per_stream
        one = (await _fleet(api))["max-7"]
        assert set(one["metadata"]) == {"ops_port", "public_address"}
        assert len(json.dumps(one)) < 2048
    finally:
        for c in clients:
            await c.close()


def test_a_replica_refuses_the_network_without_mtls(tmp_path: Path, etcd_config) -> None:
    """`lbcp xds --host <not loopback>` without mTLS exits with a clear message (before binding)."""
    p = Proc(
        [sys.executable, "-m", "api.cli", "xds", "--host", "0.0.0.0", "--port", str(free_port()),
         "--etcd", ",".join(etcd_config.endpoints)],
        tmp_path / "xds.log",
    )  # fmt: skip
    p.start()
    try:
        assert p.popen is not None
        assert p.popen.wait(30) != 0
    finally:
        p.stop()
    log = (tmp_path / "xds.log").read_text()
    assert "refusing to serve xDS on 0.0.0.0 without mutual TLS" in log and "--insecure" in log
