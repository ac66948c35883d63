"""Certificates over ADS as SDS Secrets: a fleet gets only the secrets its listeners (and
clusters) need, keys sealed with a KEK are opened by the replica, and a rotation pushes the
Secret alone."""

from __future__ import annotations

import os

import pytest

from controlplane.intent.certificates import KeyRing, set_keyring
from controlplane.intent.model import Certificate, Listener, ListenerTLS, SealedKey
from controlplane.intent.store import Store
from controlplane.xds.client import AdsClient
from controlplane.xds.resources import LISTENER_TYPE, SECRET_TYPE
from tests.certs import CA
from tests.controlplane.xds.server.test_protocol import QUIET, _pushes, _settle


@pytest.fixture
def kek():
    set_keyring(KeyRing(current=os.urandom(32)))
    yield
    set_keyring(None)


async def _client(replica, node: str, fleet: str, delta: bool) -> AdsClient:
    c = AdsClient(f"127.0.0.1:{replica.port}", node, fleet, delta=delta)
    await c.open()
    return c


async def _secret(c: AdsClient, delta: bool, names: list[str]):
    if delta:
        await c.delta_request(SECRET_TYPE, subscribe=names)
    else:
        await c.request(SECRET_TYPE, names)
    return await c.recv()


async def _ack(c: AdsClient, delta: bool, resp, names: list[str] = ()) -> None:
    if delta:
        await c.delta_request(resp.type_url, nonce=resp.nonce)
    else:
        await c.request(resp.type_url, names, version=resp.version_info, nonce=resp.nonce)


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_secrets_are_per_fleet_sealed_keys_open_and_rotation_pushes_only_the_secret(
    store: Store, replica, kek, delta
) -> None:
    ca = CA()
    first = ca.issue("www.example.com", ["www.example.com"])
    await store.put(
        Certificate(name="site", certificate_chain=first.cert_pem.decode(), private_key=first.key_pem.decode())
    )
    # The other fleet serves a certificate of its own: what it is sent shows the replica did
    # answer its request (a positive answer, not a silence that might still end).
    own = ca.issue("other.example.com", ["other.example.com"])
    await store.put(Certificate(name="own", certificate_chain=own.cert_pem.decode(), private_key=own.key_pem.decode()))
    await store.put(Listener(name="other-https", port=9443, fleets=["other"], tls=ListenerTLS(certificates=["own"])))
    rev = (
        await store.put(Listener(name="https", port=8443, fleets=["edge"], tls=ListenerTLS(certificates=["site"])))
    ).revision
    await _settle(replica, rev)

    edge = await _client(replica, "edge-1", "edge", delta)
    got = await _secret(edge, delta, ["site"])
    secret = AdsClient.decode(got)["site"]
    # The replica opened the sealed key: Envoy gets the PEM it was given.
    assert secret.tls_certificate.private_key.inline_bytes == first.key_pem
    assert secret.tls_certificate.certificate_chain.inline_bytes == first.cert_pem
    if delta:
        await edge.delta_request(SECRET_TYPE, nonce=got.nonce)
    else:
        await edge.request(SECRET_TYPE, ["site"], version=got.version_info, nonce=got.nonce)
    listeners = await _client(replica, "edge-2", "edge", delta)
    if delta:
        await listeners.delta_request(LISTENER_TYPE, subscribe=["*"])
    else:
        await listeners.request(LISTENER_TYPE)
    lds = await listeners.recv()
    assert "https" in AdsClient.decode(lds)
    if delta:
        await listeners.delta_request(LISTENER_TYPE, nonce=lds.nonce)
    else:
        await listeners.request(LISTENER_TYPE, version=lds.version_info, nonce=lds.nonce)

    # Another fleet has no listener that needs "site": it never gets the key. Asked for both,
    # it is answered with its own certificate alone.
    other = await _client(replica, "other-1", "other", delta)
    answer = await _secret(other, delta, ["site", "own"])
    assert answer is not None and set(AdsClient.decode(answer)) == {"own"}
    await _ack(other, delta, answer, ["site", "own"])

    # Rotation: the Secret is pushed; the Listener is not.
    second = ca.issue("www.example.com", ["www.example.com"])
    await store.put(
        Certificate(name="site", certificate_chain=second.cert_pem.decode(), private_key=second.key_pem.decode())
    )
    pushed = await edge.recv()
    assert AdsClient.decode(pushed)["site"].tls_certificate.private_key.inline_bytes == second.key_pem
    assert await listeners.recv(QUIET) is None  # same names, same Listener bytes: nothing to send
    # The markers: a new edge listener must reach `listeners`, and the other fleet's own
    # certificate rotated must reach `other`, each as the first response after the rotation
    # (a Listener resend, or "site" sent to the other fleet, would come first), and the
    # replica counts no other push on those streams.
    await store.put(Listener(name="plain", port=8080, fleets=["edge"]))
    lds2 = await listeners.recv()
    assert lds2 is not None and "plain" in AdsClient.decode(lds2)
    assert set(AdsClient.decode(lds2)) == ({"plain"} if delta else {"https", "plain"})
    own2 = ca.issue("other.example.com", ["other.example.com"])
    await store.put(
        Certificate(name="own", certificate_chain=own2.cert_pem.decode(), private_key=own2.key_pem.decode())
    )
    rotated = await other.recv()
    assert rotated is not None and set(AdsClient.decode(rotated)) == {"own"}
    assert AdsClient.decode(rotated)["own"].tls_certificate.private_key.inline_bytes == own2.key_pem
    assert _pushes(replica, "edge-2") == {LISTENER_TYPE: 2}
    assert _pushes(replica, "other-1") == {SECRET_TYPE: 2}
    assert _pushes(replica, "edge-1") == {SECRET_TYPE: 2}
    for c in (edge, listeners, other):
        await c.close()


async def test_a_snapshot_that_cannot_be_served_is_not_published(store: Store, replica) -> None:
    """A listener that needs a certificate this replica cannot open (its key sealed with a KEK
    the replica does not have): the build is rejected, every built part is put back, and the
    last good snapshot keeps serving until the KEK is there."""
    import asyncio

    sealed_with, other = KeyRing(current=os.urandom(32)), KeyRing(current=os.urandom(32))
    set_keyring(other)  # what the replica (and the store) have
    try:
        leaf = CA().issue("www.example.com", ["www.example.com"])
        await store.put(Listener(name="plain", port=8080, fleets=["edge"]))
        # A key sealed elsewhere, with a KEK this replica does not have: harmless while no
        # listener serves it (that snapshot publishes).
        foreign = SealedKey.model_validate(sealed_with.seal("site", leaf.key_pem.decode()))
        cert = Certificate(name="site", certificate_chain=leaf.cert_pem.decode(), private_key=foreign)
        good = (await store.put(cert)).revision
        await _settle(replica, good)
        before = replica.cache.snapshot("edge")
        rejected = replica.cache.stats.rejected
        bad = (
            await store.put(Listener(name="https", port=8443, fleets=["edge"], tls=ListenerTLS(certificates=["site"])))
        ).revision
        assert await replica.view.wait_for_revision(bad, 5)
        for _ in range(100):
            if replica.cache.stats.rejected > rejected:
                break
            await asyncio.sleep(0.01)
        assert replica.cache.stats.rejected == rejected + 1
        assert replica.cache.revision == good
        assert replica.cache.snapshot("edge") is before
        assert set(replica.cache._listeners) == {"plain"}  # the rejected build's parts were put back
        assert set(before.of(LISTENER_TYPE)) == {"plain"}
        # The certificate again, with a key this replica can open: everything publishes.
        plain = Certificate(name="site", certificate_chain=leaf.cert_pem.decode(), private_key=leaf.key_pem.decode())
        fixed = (await store.put(plain)).revision
        await _settle(replica, fixed)
        snap = replica.cache.snapshot("edge")
        assert set(snap.of(LISTENER_TYPE)) == {"plain", "https"} and set(snap.of(SECRET_TYPE)) == {"site"}
    finally:
        set_keyring(None)
