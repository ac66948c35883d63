"""The etcd connection: failover across a 3-node cluster, user/password, mutual TLS."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from aetcd import rpc

from api.localcluster.procs import EtcdCluster, EtcdTLS
from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.errors import StoreError, StoreUnavailable
from controlplane.intent.keyspace import Ref
from controlplane.intent.model import Cluster, Kind
from controlplane.intent.store import Store
from tests.certs import CA


@pytest.fixture
def etcd3(tmp_path: Path):
    """A private 3-member etcd cluster (members get killed), and a client with short timeouts."""
    cluster = EtcdCluster(tmp_path / "etcd3", size=3)
    cluster.start()
    try:
        yield cluster, Etcd(EtcdConfig(endpoints=tuple(cluster.endpoints), timeout=3.0, connect_timeout=0.5))
    finally:
        cluster.stop()


async def test_failover_to_another_member(etcd3) -> None:
    cluster, etcd = etcd3
    store = Store(etcd)
    await store.put(Cluster(name="before"))
    # Kill the member the client is talking to: the next calls go to the others.
    victim = cluster.members[etcd._current]
    await asyncio.to_thread(cluster.stop_member, victim, signal.SIGKILL)
    await asyncio.sleep(0.3)
    for i in range(20):
        try:
            await store.put(Cluster(name=f"after-{i}"))
        except StoreUnavailable:
            # A write in flight when the member died may fail (and is not acknowledged);
            # the next one must go through.
            await store.put(Cluster(name=f"after-{i}"))
    assert (await store.get(Ref(Kind.CLUSTER, "before"))).obj.name == "before"
    assert len((await store.list(Kind.CLUSTER, limit=100)).items) == 21
    assert cluster.members[etcd._current] is not victim
    await etcd.close()


async def _enable_auth(endpoint: str, password: str) -> None:
    etcd = Etcd(EtcdConfig(endpoints=(endpoint,)))
    ch = await etcd.channel()
    auth = rpc.AuthStub(ch)
    await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password))
    await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
    await auth.AuthEnable(rpc.AuthEnableRequest())
    await etcd.close()


async def test_user_and_password(private_etcd: EtcdCluster) -> None:
    await _enable_auth(private_etcd.endpoints[0], "s3cret-pass")
    good = Etcd(EtcdConfig(endpoints=tuple(private_etcd.endpoints), username="root", password="s3cret-pass"))
    await Store(good).put(Cluster(name="web"))
    assert (await Store(good).get(Ref(Kind.CLUSTER, "web"))).obj.name == "web"
    # An expired/invalidated token is refreshed once, transparently.
    good._token = "not-a-valid-token"
    assert (await Store(good).get(Ref(Kind.CLUSTER, "web"))).obj.name == "web"
    for cfg in (
        EtcdConfig(endpoints=tuple(private_etcd.endpoints)),
        EtcdConfig(endpoints=tuple(private_etcd.endpoints), username="root", password="wrong"),
    ):
        bad = Etcd(cfg)
        with pytest.raises(StoreError):
            await Store(bad).get(Ref(Kind.CLUSTER, "web"))
        await bad.close()
    await good.close()


async def test_mutual_tls(tmp_path: Path) -> None:
    ca = CA()
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    server_cert, server_key = ca.issue("etcd", ["127.0.0.1", "localhost"]).write(tmp_path, "server")
    client_cert, client_key = ca.issue("lbcp", client=True).write(tmp_path, "client")
    cluster = EtcdCluster(tmp_path / "etcd", size=1, tls=EtcdTLS(server_cert, server_key, str(tmp_path / "ca.crt")))
    cluster.health_client = (client_cert, client_key)
    cluster.start()
    try:
        eps = tuple(f"https://{e}" for e in cluster.endpoints)
        etcd = Etcd(
            EtcdConfig(endpoints=eps, ca_file=str(tmp_path / "ca.crt"), cert_file=client_cert, key_file=client_key)
        )
        await Store(etcd).put(Cluster(name="web"))
        assert (await Store(etcd).get(Ref(Kind.CLUSTER, "web"))).obj.name == "web"
        await etcd.close()
        # Without a client certificate the server refuses the connection.
        anon = Etcd(EtcdConfig(endpoints=eps, ca_file=str(tmp_path / "ca.crt"), connect_timeout=0.5, timeout=1.0))
        with pytest.raises(StoreError):
            await Store(anon).get(Ref(Kind.CLUSTER, "web"))
        await anon.close()
    finally:
        cluster.stop()


async def test_leader_killed_mid_write_loses_no_acknowledged_write(etcd3) -> None:
    """1,000 backend writes, 8 at a time, against a 3-member etcd whose leader is SIGKILLed
    after the first 300 acknowledgements: writes continue after re-election, and every
    write that was acknowledged is in etcd afterwards (unacknowledged ones may or may not be)."""
    from controlplane.intent.errors import StoreError
    from controlplane.intent.model import Backend

    cluster, etcd = etcd3
    store = Store(etcd)
    await store.put(Cluster(name="c"))
    acked: dict[str, int] = {}
    failed: list[str] = []
    killed = asyncio.Event()
    leader = cluster.leader()
    assert leader is not None
    todo = iter(range(1000))

    async def writer() -> None:
        for i in todo:
            name = f"b{i:04d}"
            try:
                res = await store.put(Backend(name=name, address="10.0.0.1", port=1000 + i), cluster="c")
            except StoreError:
                failed.append(name)  # not acknowledged: the caller would retry
                continue
            acked[name] = res.revision
            if len(acked) == 300 and not killed.is_set():
                killed.set()
                await asyncio.to_thread(cluster.stop_member, leader, signal.SIGKILL)

    await asyncio.wait_for(asyncio.gather(*(writer() for _ in range(8))), 240)
    assert killed.is_set() and len(acked) >= 900, (len(acked), len(failed))
    assert cluster.leader() not in (None, leader)
    stored = {s.obj.name: s.mod_revision for s in (await store.list(Kind.BACKEND, cluster="c", limit=1000)).items}
    lost = sorted(set(acked) - set(stored))
    assert not lost, f"{len(lost)} acknowledged writes missing, e.g. {lost[:5]}"
    assert all(stored[n] == rev for n, rev in acked.items())
    await etcd.close()
