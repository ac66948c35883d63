"""Shared fixtures: a real etcd on loopback, a store and view on it, the admin API app.

etcd is started once per session; each test gets its own key prefix, so tests never see
each other's objects and need no cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.localcluster.procs import EtcdCluster
from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.store import Store

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_config(etcd_cluster: EtcdCluster) -> EtcdConfig:
    return EtcdConfig(endpoints=tuple(etcd_cluster.endpoints), prefix=f"/lbcp-test/{next(_prefixes)}/v1/", timeout=3.0)


@pytest.fixture
async def etcd(etcd_config: EtcdConfig) -> AsyncIterator[Etcd]:
    client = Etcd(etcd_config)
    yield client
    await client.close()


@pytest.fixture
async def store(etcd: Etcd) -> Store:
    return Store(etcd)


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """An etcd of the test's own, for tests that stop or restart it."""
    cluster = EtcdCluster(tmp_path / "etcd", size=1)
    cluster.start()
    yield cluster
    cluster.stop()


def make_app(etcd_config: EtcdConfig, tokens: str | None = None, max_body_bytes: int | None = None):
    from api.app import DEFAULT_MAX_BODY, Settings, create_app
    from api.auth import Tokens

    return create_app(
        Settings(etcd=etcd_config, tokens=Tokens.parse(tokens), max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY)
    )


@pytest.fixture
async def api(etcd_config: EtcdConfig) -> AsyncIterator:
    """An httpx client on the admin API app (in-process ASGI, real etcd behind it)."""
    import httpx

    app = make_app(etcd_config)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lbcp.test") as client:
            yield client


@pytest.fixture
async def serve_api(etcd_config: EtcdConfig) -> AsyncIterator:
    """A factory of admin APIs served over real HTTP (uvicorn, in this event loop, on a free
    loopback port): `url = await serve_api(tokens="writer:...")`. For streams (SSE) and browsers,
    which an in-process ASGI transport cannot carry."""
    import uvicorn

    from api.localcluster.procs import free_port

    servers: list[tuple[Any, asyncio.Task]] = []

    async def serve(tokens: str | None = None, etcd: EtcdConfig | None = None) -> str:
        port = free_port()
        config = uvicorn.Config(
            make_app(etcd or etcd_config, tokens),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,  # open event streams end with the server
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        await wait_for(lambda: _started(server), 10, "the admin API to listen")
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, _ in servers:
        server.should_exit = True
    for _, task in servers:
        await asyncio.wait_for(task, 15)


async def _started(server: Any) -> bool:
    return bool(server.started)


def _replica_config(etcd_config: EtcdConfig, replica_id: str, **overrides: Any) -> Any:
    from controlplane.xds.replica import ReplicaConfig

    return ReplicaConfig(
        **{
            "etcd": etcd_config,
            "port": 0,
            "replica_id": replica_id,
            "registry_flush_interval": 0.05,
            "metrics_port": 0,
            "probe_interval": 0.25,
            "front_cidrs": ("*=127.0.0.0/8",),
            **overrides,
        }
    )


async def _replica(etcd_config: EtcdConfig, replica_id: str, **overrides: Any) -> AsyncIterator:
    from controlplane.xds.replica import XdsReplica

    r = XdsReplica(_replica_config(etcd_config, replica_id, **overrides))
    await r.start()
    yield r
    await stop_replica(r)


async def stop_replica(r: Any) -> None:
    """`r.stop(grace=0)`, without waiting for its metrics server's loop's next look (waking)."""
    with waking([r.metrics_port] if r.metrics_port else []):
        await r.stop(grace=0)


@pytest.fixture
async def make_replica(etcd_config: EtcdConfig) -> AsyncIterator:
    """A factory of replicas with config overrides: `await make_replica("name", probe_interval=0)`."""
    from controlplane.xds.replica import XdsReplica

    started: list[XdsReplica] = []

    async def make(replica_id: str, **overrides: Any) -> XdsReplica:
        r = XdsReplica(_replica_config(etcd_config, replica_id, **overrides))
        await r.start()
        started.append(r)
        return r

    yield make
    for r in started:
        await stop_replica(r)


@pytest.fixture
async def replica(etcd_config: EtcdConfig) -> AsyncIterator:
    """A running xDS replica on a free loopback port, over the test's key prefix."""
    async for r in _replica(etcd_config, "test-replica"):
        yield r


@pytest.fixture
async def replica2(etcd_config: EtcdConfig) -> AsyncIterator:
    """A second xDS replica over the same intent."""
    async for r in _replica(etcd_config, "test-replica-2"):
        yield r


@contextlib.contextmanager
def waking(ports: list[int]) -> Iterator[None]:
    """While the block runs, a thread connects to each of `ports` on 127.0.0.1 every 10 ms
    (until it refuses): an http.server (demo backends, a replica's metrics) looks for a
    shutdown request only after a connection or every 0.5 s, so its shutdown() in the block
    returns at once. A connection that sends nothing is answered by nothing."""
    done = threading.Event()

    def wake() -> None:
        left = list(ports)
        while left and not done.wait(0.01):
            for port in list(left):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                except OSError:
                    left.remove(port)  # closed: nothing left to wake

    waker = threading.Thread(target=wake, name="wake-http-servers", daemon=True)
    waker.start()
    try:
        yield
    finally:
        done.set()
        waker.join()


def stop_backends(started: list) -> None:
    """Stop demo backends, each without waiting for its server loop's next look (waking)."""
    with waking([b.port for b in started]):
        for b in started:
            b.stop()


@pytest.fixture
def backends() -> Iterator[list]:
    from api.localcluster.demo import DemoBackend

    started = [DemoBackend(f"b{i}") for i in range(4)]
    yield started
    stop_backends(started)


@pytest.fixture
def envoys(tmp_path: Path) -> Iterator:
    """A factory of real Envoys (stopped at the end): envoys(node_id, fleet, [(host, port)], delta=True)."""
    from api.localcluster.procs import EnvoyProcess

    started: list[EnvoyProcess] = []

    def make(
        node_id: str, xds: list[tuple[str, int]], fleet: str = "default", delta: bool = True, public_address: str = ""
    ) -> EnvoyProcess:
        e = EnvoyProcess(tmp_path / "envoy", node_id, fleet, xds, delta=delta, public_address=public_address)
        e.start()
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()


async def seed_web(store: Any) -> None:
    """A small intent for fleet-sized tests: cluster `web` (3 backends), listener `http`, route `r`."""
    from controlplane.intent.model import Backend, Cluster, Listener, Route

    await store.put(Cluster(name="web"))
    for i in range(3):
        await store.put(Backend(name=f"web-{i}", address="10.0.0.1", port=30000 + i), cluster="web")
    await store.put(Listener(name="http", port=10000))
    await store.put(Route(name="r", listener="http", backends=[{"cluster": "web"}]))


async def wait_for(pred, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll an async predicate until it holds; fail with `what` after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def http_ok(url: str):
    """An async predicate: `url` answers 200."""
    import httpx

    async def _ok() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                return (await c.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return _ok


async def acked_client(replica: Any, node: str, fleet: str = "edge", public_address: str | None = None) -> Any:
    """A raw xDS client (controlplane.xds.client.AdsClient) that takes the clusters once and
    ACKs them (configured), then acks nothing more; `public_address` goes in its metadata."""
    from controlplane.xds.client import AdsClient
    from controlplane.xds.resources import CLUSTER_TYPE

    c = AdsClient(f"127.0.0.1:{replica.port}", node, fleet)
    if public_address is not None:
        c.node.metadata.update({"public_address": public_address})
    await c.open()
    await c.request(CLUSTER_TYPE)
    r = await c.recv()
    assert r is not None
    await c.request(CLUSTER_TYPE, version=r.version_info, nonce=r.nonce)
    return c


async def apply_edge(api: Any, backend_port: int, listener_port: int) -> None:
    """Intent for front-door tests, in one batch: cluster `web` with backend `b` on
    127.0.0.1:`backend_port`, listener `edge` on 127.0.0.1:`listener_port` that every Envoy
    also binds at its own public address, and route `all` to `web`."""
    listener = {"address": "127.0.0.1", "port": listener_port, "bind_public_address": True}
    ops = [
        {"op": "put", "kind": "cluster", "name": "web", "body": {}},
        {
            "op": "replace_backends",
            "cluster": "web",
            "body": [{"name": "b", "address": "127.0.0.1", "port": backend_port}],
        },
        {"op": "put", "kind": "listener", "name": "edge", "body": listener},
        {"op": "put", "kind": "route", "name": "all", "body": {"listener": "edge", "backends": [{"cluster": "web"}]}},
    ]
    r = await api.post("/v1/batch", json={"operations": ops})
    assert r.status_code == 200, r.text
