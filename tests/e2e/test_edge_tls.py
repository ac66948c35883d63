"""TLS at the edge on a real Envoy: certificates as intent, served by SNI over SDS, rotated
without closing a single open connection."""

from __future__ import annotations

import asyncio
import socket
import ssl

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from api.localcluster.procs import free_port
from tests.certs import CA
from tests.conftest import wait_for


def _served_leaf(port: int, server_name: str | None, ca_pem: bytes) -> x509.Certificate:
    """Handshake with `server_name` as SNI (None: no SNI) and return the leaf Envoy served."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def _cn(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value


def _cert_body(issued) -> dict:
    return {"certificate_chain": issued.cert_pem.decode(), "private_key": issued.key_pem.decode()}


async def _stat(admin: str, name: str) -> int:
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"{admin}/stats", params={"filter": f"^{name}$"})).text
    return int(text.split(":")[1]) if ":" in text else 0


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_sni_default_and_hitless_rotation(api, replica, envoys, backends, delta: bool) -> None:
    ca = CA()
    site_a, site_b, fallback = (
        ca.issue("a.example.com", ["a.example.com"]),
        ca.issue("b.example.com", ["b.example.com", "*.b.example.com"]),
        ca.issue("fallback"),
    )
    for name, issued in (("site-a", site_a), ("site-b", site_b), ("fallback", fallback)):
        r = await api.put(f"/v1/certificates/{name}", json=_cert_body(issued))
        assert r.status_code == 201, r.text
        assert "private_key" not in r.json() and issued.key_pem.decode() not in r.text
    port = free_port()
    r = await api.post(
        "/v1/batch",
        json={
            "operations": [
                {"op": "put", "kind": "cluster", "name": "web", "body": {}},
                {
                    "op": "put",
                    "kind": "backend",
                    "cluster": "web",
                    "name": "b0",
                    "body": {"address": "127.0.0.1", "port": backends[0].port},
                },
                {
                    "op": "put",
                    "kind": "listener",
                    "name": "https",
                    "body": {
                        "address": "127.0.0.1",
                        "port": port,
                        "tls": {"certificates": ["fallback", "site-a", "site-b"]},
                    },
                },
                {
                    "op": "put",
                    "kind": "route",
                    "name": "all",
                    "body": {"listener": "https", "backends": [{"cluster": "web"}]},
                },
            ]
        },
    )
    assert r.status_code == 200, r.text
    envoy = envoys(f"tls-edge-{delta}", [("127.0.0.1", replica.port)], delta=delta)
    ca_pem = ca.pem

    def tls_context() -> ssl.SSLContext:
        # Verified against the test CA; the SNI name is set per request (the URL is the IP).
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        ctx.check_hostname = False
        return ctx

    url = f"https://127.0.0.1:{port}/"
    sni = {"sni_hostname": "a.example.com"}

    async def serving() -> bool:
        try:
            async with httpx.AsyncClient(verify=tls_context(), timeout=2) as c:
                return (await c.get(url, extensions=sni)).status_code == 200
        except (httpx.HTTPError, ssl.SSLError):
            return False

    await wait_for(serving, timeout=30, what="Envoy serving HTTPS")
    assert _cn(_served_leaf(port, "a.example.com", ca_pem)) == "a.example.com"
    assert _cn(_served_leaf(port, "b.example.com", ca_pem)) == "b.example.com"
    assert _cn(_served_leaf(port, "x.b.example.com", ca_pem)) == "b.example.com"  # wildcard SAN
    assert _cn(_served_leaf(port, "unknown.example.net", ca_pem)) == "fallback"
    assert _cn(_served_leaf(port, None, ca_pem)) == "fallback"

    # Many open TLS keep-alive connections (h2 and HTTP/1.1) through the listener.
    ctx = tls_context()
    clients = [
        httpx.AsyncClient(verify=ctx, http2=i % 2 == 0, timeout=5, limits=httpx.Limits(max_connections=1))
        for i in range(100)
    ]
    try:

        async def round_trip() -> None:
            rs = await asyncio.gather(*(c.get(url, extensions=sni) for c in clients))
            assert all(r.status_code == 200 for r in rs)

        await round_trip()
        stat = f"listener.127.0.0.1_{port}"
        opened = await _stat(envoy.admin, f"{stat}.downstream_cx_total")
        closed = await _stat(envoy.admin, f"{stat}.downstream_cx_destroy")
        assert await _stat(envoy.admin, f"{stat}.downstream_cx_active") == len(clients)
        lm = {
            k: await _stat(envoy.admin, f"listener_manager.{k}")
            for k in ("listener_modified", "listener_removed", "total_filter_chains_draining")
        }

        # Rotate site-a: a new key and certificate, same names.
        rotated = ca.issue("a.example.com", ["a.example.com"])
        r = await api.put(
            "/v1/certificates/site-a", json=_cert_body(rotated), params={"wait": "acked", "timeout": "15s"}
        )
        assert r.status_code == 200 and r.headers["Lbcp-Rollout"] == "complete", r.text
        fingerprint = r.json()["fingerprint_sha256"]

        probes = 0

        async def new_leaf() -> bool:
            nonlocal probes
            probes += 1
            leaf = await asyncio.to_thread(_served_leaf, port, "a.example.com", ca_pem)
            return leaf.fingerprint(hashes.SHA256()).hex(":") == fingerprint

        await wait_for(new_leaf, timeout=15, what="new handshakes get the rotated certificate")
        # The open connections were not closed or drained: the same ones still carry requests.
        await round_trip()
        # The only connections that came and went since are new_leaf's handshakes. All 100 stayed.
        assert await _stat(envoy.admin, f"{stat}.downstream_cx_total") == opened + probes
        assert await _stat(envoy.admin, f"{stat}.downstream_cx_destroy") == closed + probes
        assert await _stat(envoy.admin, f"{stat}.downstream_cx_active") == len(clients)
        for k, v in lm.items():
            assert await _stat(envoy.admin, f"listener_manager.{k}") == v, k
    finally:
        for c in clients:
            await c.aclose()


class _TlsBackend:
    """An HTTPS backend that requires a client certificate from `ca` and answers with the
    client's common name (stopped at the end)."""

    def __init__(self, ca: CA, tmp_path) -> None:
        import http.server
        import threading

        issued = ca.issue("backend.internal", ["backend.internal"])
        cert, key = issued.write(tmp_path, "backend")
        (tmp_path / "ca.pem").write_bytes(ca.pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(str(tmp_path / "ca.pem"))
        ctx.verify_mode = ssl.CERT_REQUIRED

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer = self.connection.getpeercert()
                cn = dict(x[0] for x in peer["subject"])["commonName"]
                body = f"hello {cn}".encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_upstream_tls_with_client_certificate(api, replica, envoys, tmp_path) -> None:
    ca = CA()
    backend = _TlsBackend(ca, tmp_path)
    try:
        client = ca.issue("edge-envoy", client=True)
        assert (await api.put("/v1/certificates/edge-client", json=_cert_body(client))).status_code == 201
        port = free_port()
        tls = {"sni": "backend.internal", "ca_bundle": ca.pem.decode(), "client_certificate": "edge-client"}
        r = await api.post(
            "/v1/batch",
            json={
                "operations": [
                    {"op": "put", "kind": "cluster", "name": "secure", "body": {"tls": tls}},
                    {
                        "op": "put",
                        "kind": "backend",
                        "cluster": "secure",
                        "name": "b",
                        "body": {"address": "127.0.0.1", "port": backend.port},
                    },
                    {
                        "op": "put",
                        "kind": "cluster",
                        "name": "wrong-ca",
                        "body": {"tls": {**tls, "ca_bundle": CA("other").pem.decode()}},
                    },
                    {
                        "op": "put",
                        "kind": "backend",
                        "cluster": "wrong-ca",
                        "name": "b",
                        "body": {"address": "127.0.0.1", "port": backend.port},
                    },
                    {"op": "put", "kind": "listener", "name": "plain", "body": {"address": "127.0.0.1", "port": port}},
                    {
                        "op": "put",
                        "kind": "route",
                        "name": "bad",
                        "body": {
                            "listener": "plain",
                            "match": {"prefix": "/bad"},
                            "backends": [{"cluster": "wrong-ca"}],
                        },
                    },
                    {
                        "op": "put",
                        "kind": "route",
                        "name": "good",
                        "body": {"listener": "plain", "backends": [{"cluster": "secure"}]},
                    },
                ]
            },
        )
        assert r.status_code == 200, r.text
        envoys("tls-upstream", [("127.0.0.1", replica.port)])

        async def answered() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2) as c:
                    return (await c.get(f"http://127.0.0.1:{port}/")).text == "hello edge-envoy"
            except httpx.HTTPError:
                return False

        await wait_for(answered, timeout=30, what="Envoy reaching the TLS backend with its client certificate")
        async with httpx.AsyncClient(timeout=5) as c:
            bad = await c.get(f"http://127.0.0.1:{port}/bad")
        assert bad.status_code == 503  # a backend signed by a CA the cluster does not trust is refused
        in_use = await api.delete("/v1/certificates/edge-client")
        assert in_use.status_code == 409 and "cluster secure" in in_use.text
        missing = await api.put("/v1/clusters/other", json={"tls": {**tls, "client_certificate": "nope"}})
        assert missing.status_code == 422 and missing.json()["errors"][0]["pointer"] == "/tls/client_certificate"
        unverified = await api.put("/v1/clusters/other", json={"tls": {"sni": "x"}})
        assert unverified.status_code == 422 and "ca_bundle" in unverified.text
    finally:
        backend.stop()
