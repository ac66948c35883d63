"""etcd compacts its own history (issue 27): the command line `lbcp up` and the tests start
etcd with carries periodic auto-compaction and a quota, and a real etcd started that way
drops old revisions by itself, which lbcp sees as 410 page-token-expired on a list and as a
compacted watch (what the intent view reloads on). Defragmenting then gives the freed pages
back to the file system (docs/deploy.md, "etcd: compaction, quota and defragmentation")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aetcd import rpc

from api.localcluster.procs import (
    ETCD_AUTO_COMPACTION_MODE,
    ETCD_AUTO_COMPACTION_RETENTION,
    ETCD_QUOTA_BACKEND_BYTES,
    EtcdCluster,
)
from controlplane.etcd import Etcd, EtcdConfig, prefix_end
from controlplane.intent.errors import PageTokenExpired
from controlplane.intent.model import Cluster, Kind
from controlplane.intent.store import Store


def _flags(argv: list[str]) -> dict[str, str]:
    assert all(a.startswith("--") for a in argv[1::2]), argv
    return dict(zip(argv[1::2], argv[2::2], strict=True))


def test_etcd_command_line_compacts_and_has_a_quota(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path, size=3)
    for m in cluster.members:
        flags = _flags(cluster._argv(m, "new"))
        assert flags["--auto-compaction-mode"] == ETCD_AUTO_COMPACTION_MODE == "periodic"
        assert flags["--auto-compaction-retention"] == ETCD_AUTO_COMPACTION_RETENTION == "1h"
        assert int(flags["--quota-backend-bytes"]) == ETCD_QUOTA_BACKEND_BYTES
    short = EtcdCluster(tmp_path, compaction_retention="2s", quota_backend_bytes=64 * 1024**2)
    flags = _flags(short._argv(short.members[0], "new"))
    assert flags["--auto-compaction-retention"] == "2s" and flags["--quota-backend-bytes"] == str(64 * 1024**2)
    for bad in ("0", "0s", "", "1d", "soon"):
        with pytest.raises(ValueError):
            EtcdCluster(tmp_path, compaction_retention=bad)


async def _status(etcd: Etcd) -> rpc.StatusResponse:
    ch = await etcd.channel()
    return await rpc.MaintenanceStub(ch).Status(rpc.StatusRequest(), timeout=5)


async def test_etcd_compacts_old_revisions_by_itself(tmp_path: Path) -> None:
    """With a one-second retention, a page token's revision is compacted within seconds of
    later writes: the next page is 410 page-token-expired, and a watch from that revision is
    told it was compacted. Defragmenting the member then shrinks its file."""
    cluster = EtcdCluster(tmp_path / "etcd", compaction_retention="1s")
    await asyncio.to_thread(cluster.start)
    etcd = Etcd(EtcdConfig(endpoints=tuple(cluster.endpoints), timeout=3.0))
    try:
        store = Store(etcd)
        for i in range(3):
            await store.put(Cluster(name=f"c{i}"))
        page = await store.list(Kind.CLUSTER, limit=1)
        assert page.next_page_token is not None
        # History to drop: each rewrite leaves its predecessor behind as an old revision.
        root = etcd.config.prefix.encode()
        started = time.monotonic()
        with pytest.raises(PageTokenExpired, match="required revision has been compacted"):
            for i in range(150):  # bounded: ~15 s at 0.1 s per round
                await etcd.put(root + b"churn", bytes([i]) * 16_000)
                await store.list(Kind.CLUSTER, limit=1, page_token=page.next_page_token)
                await asyncio.sleep(0.1)
        assert time.monotonic() - started < 10, "etcd took too long to compact with a 1 s retention"

        call = await etcd.watch(root, prefix_end(root), page.revision)
        try:
            resp = await asyncio.wait_for(call.read(), 5)
            while resp.created and not resp.compact_revision:
                resp = await asyncio.wait_for(call.read(), 5)
        finally:
            call.cancel()
        assert resp.compact_revision > page.revision and resp.canceled

        # Compaction frees pages inside the file; only defragmenting returns them.
        before = await _status(etcd)
        ch = await etcd.channel()
        await rpc.MaintenanceStub(ch).Defragment(rpc.DefragmentRequest(), timeout=10)
        after = await _status(etcd)
        assert after.dbSize < before.dbSize
        assert (await store.list(Kind.CLUSTER, limit=10)).items  # it serves as before
    finally:
        await etcd.close()
        await asyncio.to_thread(cluster.stop)
