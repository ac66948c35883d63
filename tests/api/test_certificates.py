"""Certificates as intent: validation with clear 4xx (nothing written), a write-only key
that never shows in a response or a log, encryption at rest with a KEK, and listeners that
can only name certificates that exist."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controlplane.etcd import prefix_end
from controlplane.intent.certificates import KeyRing, KeyUnavailable, set_keyring
from tests.certs import CA


def _body(issued, key_pem: bytes | None = None) -> dict:
    return {"certificate_chain": issued.cert_pem.decode(), "private_key": (key_pem or issued.key_pem).decode()}


async def _keys(api: httpx.AsyncClient) -> list[bytes]:
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    resp = await store.etcd.range(store.keys.root, prefix_end(store.keys.root), keys_only=True)
    return [kv.key for kv in resp.kvs if not kv.key.startswith(store.index.root)]  # intent, not its index


@pytest.fixture
def kek():
    """A KEK for this test (and none after it)."""
    ring = KeyRing(current=AESGCM.generate_key(bit_length=256))
    set_keyring(ring)
    yield ring
    set_keyring(KeyRing())


@pytest.fixture(autouse=True)
def _no_kek_by_default():
    set_keyring(KeyRing())
    yield
    set_keyring(None)


async def test_bad_certificates_are_refused_and_nothing_is_written(api, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ca, other = CA(), CA("other CA")
    good = ca.issue("www.example.com", ["www.example.com"])
    stranger = other.issue("www.example.com", ["www.example.com"])
    expired = ca.issue(
        "old.example.com",
        ["old.example.com"],
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
        days=10,
    )
    chain_reversed = {"certificate_chain": (ca.pem + good.cert_pem).decode(), "private_key": good.key_pem.decode()}
    cases = {
        "bad PEM": (
            {
                "certificate_chain": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                "private_key": good.key_pem.decode(),
            },
            "/certificate_chain",
            "not a PEM certificate chain",
        ),
        "not a key": (
            {"certificate_chain": good.cert_pem.decode(), "private_key": "hello"},
            "/private_key",
            "not an unencrypted PEM private key",
        ),
        "mismatched key": (_body(good, stranger.key_pem), "/private_key", "does not match the leaf"),
        "expired": (_body(expired), "/certificate_chain", "expired at"),
        "chain order": (chain_reversed, "/certificate_chain", "chain order"),
        "sealed key sent": (
            {
                "certificate_chain": good.cert_pem.decode(),
                "private_key": {"alg": "A256GCM", "kid": "x", "nonce": "x", "data": "x"},
            },
            "/private_key",
            "PEM",
        ),
        "missing key": ({"certificate_chain": good.cert_pem.decode()}, "/private_key", "Field required"),
    }
    secrets = [good.key_pem.decode(), stranger.key_pem.decode(), expired.key_pem.decode()]
    for what, (body, pointer, detail) in cases.items():
        r = await api.put("/v1/certificates/site", json=body)
        assert r.status_code == 422, (what, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        errors = r.json()["errors"]
        assert any(e["pointer"] == pointer and detail in e["detail"] for e in errors), (what, errors)
        assert not any(s.strip() in r.text for s in secrets), what
    # In a batch too, pointing into the batch.
    r = await api.post(
        "/v1/batch",
        json={
            "operations": [{"op": "put", "kind": "certificate", "name": "site", "body": _body(good, stranger.key_pem)}]
        },
    )
    assert r.status_code == 422 and r.json()["errors"][0]["pointer"] == "/operations/0/body/private_key"
    assert await _keys(api) == []
    # A chain with its issuer, leaf first, is fine.
    ok = await api.put(
        "/v1/certificates/site",
        json={"certificate_chain": (good.cert_pem + ca.pem).decode(), "private_key": good.key_pem.decode()},
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["chain_length"] == 2
    for line in caplog.messages:
        assert not any(s.strip()[40:80] in line for s in secrets)


async def test_get_shows_facts_never_the_key(api, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ca = CA()
    leaf = ca.issue("www.example.com", ["www.example.com", "example.com", "192.0.2.10"], days=20)
    key_text = leaf.key_pem.decode()
    responses = [
        await api.put("/v1/certificates/site", json=_body(leaf)),
        await api.get("/v1/certificates/site"),
        await api.get("/v1/certificates"),
        await api.put("/v1/certificates/site", json=_body(leaf), params={"dry_run": "true"}),
    ]
    doc = responses[1].json()
    assert doc["subject"] == "CN=www.example.com" and doc["issuer"] == "CN=lbcp CA"
    assert doc["sans"] == ["DNS:www.example.com", "DNS:example.com", "IP:192.0.2.10"]
    assert 19 * 86400 < doc["expires_in_seconds"] <= 20 * 86400
    assert len(doc["fingerprint_sha256"].split(":")) == 32 and doc["revision"] > 0
    assert "private_key" not in doc
    assert (await api.patch("/v1/certificates/site", json={"certificate_chain": "x"})).status_code == 405
    responses.append(await api.delete("/v1/certificates/site"))
    assert responses[-1].status_code == 200 and "private_key" not in responses[-1].json()["deleted"]
    body_of_key = "".join(key_text.splitlines()[1:-1])
    for r in responses:
        assert body_of_key[:32] not in r.text.replace("\\n", "")
    assert body_of_key[:32] not in caplog.text.replace("\n", "")


async def test_key_is_sealed_at_rest_with_a_kek(api, kek: KeyRing) -> None:
    ca = CA()
    leaf = ca.issue("www.example.com", ["www.example.com"])
    assert (await api.put("/v1/certificates/site", json=_body(leaf))).status_code == 201
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    raw = (await store.etcd.range(store.keys.root + b"certificates/site")).kvs[0].value.decode()
    assert "PRIVATE KEY" not in raw and "A256GCM" in raw
    stored = (await store.get(store.keys.ref(store.keys.root + b"certificates/site"))).obj
    assert kek.open("site", stored.private_key) == leaf.key_pem.decode()
    with pytest.raises(KeyUnavailable, match="does not decrypt"):
        kek.open("other-name", stored.private_key)  # the name is bound to the ciphertext
    with pytest.raises(KeyUnavailable, match="not configured"):
        KeyRing(current=os.urandom(32)).open("site", stored.private_key)
    # Rotation: the old key stays readable as "previous" while everything is re-sealed.
    rotated = KeyRing(current=os.urandom(32), previous=(kek.current,))
    assert rotated.open("site", stored.private_key) == leaf.key_pem.decode()
    assert not rotated.sealed_with_current(stored.private_key)


def test_kek_from_environment(monkeypatch) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("LBCP_KEK", key)
    monkeypatch.setenv("LBCP_KEK_PREVIOUS", base64.b64encode(os.urandom(32)).decode())
    ring = KeyRing.from_env()
    assert ring.current == base64.b64decode(key) and len(ring.previous) == 1
    monkeypatch.setenv("LBCP_KEK", base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing.from_env()


async def test_listeners_and_certificates_reference_rules(api) -> None:
    ca = CA()
    a = ca.issue("a.example.com", ["a.example.com", "shared.example.com"])
    b = ca.issue("b.example.com", ["b.example.com", "shared.example.com"])
    for name, issued in (("a", a), ("b", b)):
        assert (await api.put(f"/v1/certificates/{name}", json=_body(issued))).status_code == 201
    overlap = await api.put("/v1/listeners/https", json={"port": 8443, "tls": {"certificates": ["a", "b"]}})
    assert overlap.status_code == 422 and "both serve 'shared.example.com'" in overlap.text
    tcp = await api.put(
        "/v1/listeners/raw", json={"port": 9443, "protocol": "tcp", "cluster": "x", "tls": {"certificates": ["a"]}}
    )
    assert tcp.status_code == 422
    bad_versions = await api.put(
        "/v1/listeners/https",
        json={"port": 8443, "tls": {"certificates": ["a"], "min_version": "1.3", "max_version": "1.2"}},
    )
    assert bad_versions.status_code == 422
    ok = await api.put("/v1/listeners/https", json={"port": 8443, "tls": {"certificates": ["a"]}})
    assert ok.status_code == 201 and ok.json()["tls"] == {
        "certificates": ["a"],
        "min_version": "1.2",
        "max_version": "1.3",
        "alpn": ["h2", "http/1.1"],
    }
    in_use = await api.delete("/v1/certificates/a")
    assert in_use.status_code == 409 and in_use.json()["code"] == "certificate-in-use"
    # Replacing "a" so that it would clash with nothing is fine; making the listener ambiguous is not.
    assert (
        await api.put("/v1/listeners/https", json={"port": 8443, "tls": {"certificates": ["a"]}})
    ).status_code == 200
    assert (await api.delete("/v1/listeners/https")).status_code == 200
    assert (await api.delete("/v1/certificates/a")).status_code == 200


async def test_kek_rotation_reseals_every_certificate(api, kek: KeyRing) -> None:
    ca = CA()
    for name in ("one", "two"):
        assert (
            await api.put(
                f"/v1/certificates/{name}", json=_body(ca.issue(f"{name}.example.com", [f"{name}.example.com"]))
            )
        ).status_code == 201
    store = api._transport.app.state.store  # type: ignore[attr-defined]
    assert await store.reseal_certificates() == []  # all sealed with the current key already
    new = KeyRing(current=os.urandom(32), previous=(kek.current,))
    set_keyring(new)
    assert sorted(await store.reseal_certificates()) == ["one", "two"]
    set_keyring(KeyRing(current=new.current))  # the old key is gone: everything still opens
    for name in ("one", "two"):
        stored = (await store.get(store.keys.ref(store.keys.root + f"certificates/{name}".encode()))).obj
        assert "PRIVATE KEY" in KeyRing(current=new.current).open(name, stored.private_key)
    assert (await api.get("/v1/certificates/one")).status_code == 200
