"""Locked down: the admin API over TLS, and xDS with mutual TLS plus a node allow-list,
each run as the `lbcp` command an operator would start."""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from api.localcluster.procs import Proc, free_port, wait_until
from controlplane.xds.client import AdsClient
from controlplane.xds.resources import CLUSTER_TYPE
from tests.certs import CA

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "writer-token-for-tls-test"


def _lbcp(tmp_path: Path, name: str, *args: str, env: dict | None = None) -> Proc:
    p = Proc([sys.executable, "-m", "api.cli", *args], tmp_path / f"{name}.log", env={**os.environ, **(env or {})})
    p.start()
    return p


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    ca = CA()
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    server = ca.issue("lbcp", ["127.0.0.1", "localhost"]).write(tmp_path, "server")
    # The node ids this client certificate speaks for (the replicas' default identity rule).
    edge_1 = ["spiffe://lbcp/fleet/edge/node/edge-1", "spiffe://lbcp/fleet/default/node/edge-1"]
    client = ca.issue("edge-1", edge_1, client=True).write(tmp_path, "client")
    return {
        "ca_obj": ca,
        "ca": str(tmp_path / "ca.pem"),
        "cert": server[0],
        "key": server[1],
        "client_cert": client[0],
        "client_key": client[1],
    }


def test_admin_api_over_tls(tmp_path: Path, pki: dict, etcd_config) -> None:
    port = free_port()
    api = _lbcp(
        tmp_path,
        "api",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--etcd",
        ",".join(etcd_config.endpoints),
        "--prefix",
        etcd_config.prefix,
        "--tls-cert",
        pki["cert"],
        "--tls-key",
        pki["key"],
        env={"LBCP_API_TOKENS": f"writer:{TOKEN}"},
    )
    ctx = ssl.create_default_context(cafile=pki["ca"])
    try:

        def up() -> bool:
            try:
                return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, what="API over TLS")
        auth = {"authorization": f"Bearer {TOKEN}"}
        r = httpx.put(f"https://127.0.0.1:{port}/v1/clusters/web", json={}, headers=auth, verify=ctx, timeout=5)
        assert r.status_code == 201
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not spoken on a TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        with pytest.raises(httpx.ConnectError):  # and an unknown CA is refused by the client
            httpx.get(f"https://127.0.0.1:{port}/healthz", verify=True, timeout=2)
        assert TOKEN not in api.log_path.read_text()  # tokens are never logged
    finally:
        api.stop()


async def test_xds_mutual_tls_and_node_allow_list(tmp_path: Path, pki: dict, etcd_config) -> None:
    port = free_port()
    xds = _lbcp(
        tmp_path,
        "xds",
        "xds",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--etcd",
        ",".join(etcd_config.endpoints),
        "--prefix",
        etcd_config.prefix,
        "--tls-cert",
        pki["cert"],
        "--tls-key",
        pki["key"],
        "--tls-client-ca",
        pki["ca"],
        "--allow-node",
        "edge=edge-[0-9]+",
    )
    ca = Path(pki["ca"]).read_bytes()
    with_cert = grpc.ssl_channel_credentials(
        ca, Path(pki["client_key"]).read_bytes(), Path(pki["client_cert"]).read_bytes()
    )
    without_cert = grpc.ssl_channel_credentials(ca)
    try:

        async def first_response(node: str, fleet: str, creds) -> object:
            c = AdsClient(f"127.0.0.1:{port}", node, fleet, credentials=creds)
            await c.open()
            try:
                await c.request(CLUSTER_TYPE)
                return await c.recv(5)
            finally:
                await c.close()

        async def served() -> bool:
            try:
                return await first_response("edge-1", "edge", with_cert) is not None
            except grpc.aio.AioRpcError:
                return False

        from tests.conftest import wait_for

        await wait_for(served, timeout=30, what="xDS over mutual TLS")
        # No client certificate: the TLS handshake fails, nothing is served.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await first_response("edge-2", "edge", without_cert)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # A valid certificate but a node id the fleet does not allow: refused, no config.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await first_response("intruder", "edge", with_cert)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A fleet with no allow-list stays open to any node whose certificate names it ...
        anything = pki["ca_obj"].issue("anything", ["spiffe://lbcp/fleet/other/node/anything"], client=True)
        its_cert = grpc.ssl_channel_credentials(ca, anything.key_pem, anything.cert_pem)
        assert await first_response("anything", "other", its_cert) is not None
        # ... and to no other: edge-1's certificate cannot speak for "anything".
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await first_response("anything", "other", with_cert)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "spiffe://lbcp/fleet/other/node/anything" in (err.value.details() or "")
    finally:
        xds.stop()


async def test_envoy_over_mutual_tls_to_the_replica(
    tmp_path: Path, pki: dict, etcd_config, api, backends, envoys
) -> None:
    """A real Envoy with `lbcp bootstrap --xds-tls-*` gets its config over mTLS; an Envoy
    without a client certificate gets nothing."""
    import asyncio

    from controlplane.xds.bootstrap import XdsTLS
    from controlplane.xds.replica import ReplicaConfig, XdsReplica
    from controlplane.xds.server.admission import ServerLimits
    from tests.conftest import http_ok, wait_for

    tls = (Path(pki["cert"]).read_bytes(), Path(pki["key"]).read_bytes(), Path(pki["ca"]).read_bytes())
    replica = XdsReplica(
        ReplicaConfig(
            etcd=etcd_config,
            port=0,
            replica_id="mtls",
            tls=tls,
            registry_flush_interval=0.05,
            limits=ServerLimits(node_allow=(("default", ("edge-[0-9]+",)),)),
        )
    )
    await replica.start()
    try:
        port = free_port()
        await api.put("/v1/clusters/web", json={})
        await api.put("/v1/clusters/web/backends/b0", json={"address": "127.0.0.1", "port": backends[0].port})
        await api.put("/v1/listeners/http", json={"address": "127.0.0.1", "port": port})
        await api.put("/v1/routes/main", json={"listener": "http", "backends": [{"cluster": "web"}]})
        client_tls = XdsTLS(pki["client_cert"], pki["client_key"], pki["ca"])
        from api.localcluster.procs import EnvoyProcess

        good = EnvoyProcess(tmp_path / "good", "edge-1", "default", [("127.0.0.1", replica.port)], xds_tls=client_tls)
        plain = EnvoyProcess(tmp_path / "plain", "edge-2", "default", [("127.0.0.1", replica.port)])
        try:
            await asyncio.to_thread(good.start)
            await wait_for(http_ok(f"http://127.0.0.1:{port}/"), timeout=30, what="Envoy configured over mTLS")
            assert (await api.get("/v1/fleet/edge-1")).status_code == 200
            await asyncio.to_thread(plain.start)
            await asyncio.sleep(2.0)
            assert (await asyncio.to_thread(plain.stats, "control_plane.connected_state"))[
                "control_plane.connected_state"
            ] == 0
            assert "http" not in str(plain.config_dump("dynamic_listeners"))
            assert (await api.get("/v1/fleet/edge-2")).status_code == 404
        finally:
            good.stop()
            plain.stop()
    finally:
        await replica.stop(grace=0)
