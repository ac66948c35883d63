"""`lbcp api --workers 2`: two API processes on one port, supervised.

Both take connections, every acknowledged write is in etcd, and a worker killed with
SIGKILL is restarted while the other keeps answering.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from api.localcluster.procs import free_port
from controlplane.etcd import EtcdConfig
from controlplane.intent.model import Cluster, Kind
from controlplane.intent.store import Store

WRITERS, EACH = 16, 25


def _started(log: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for m in re.finditer(r"API worker (\d+) \(\S+\) started, pid (\d+)", log.read_text()):
        out.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    return out


def _connections_of(pid: int, port: int, state: str = "01") -> int:
    """TCP sockets on local `port` in `state` (01 established, 0A listening) that `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == state and int(f[1].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                n += 1
    return n


def _put(conn: http.client.HTTPConnection, path: str, body: dict) -> int:
    conn.request("PUT", path, body=json.dumps(body), headers={"content-type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(port: int) -> bool:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", "/readyz")
        return c.getresponse().status == 200
    except OSError:
        return False
    finally:
        c.close()


async def test_two_api_workers_share_a_port_and_survive_a_killed_one(
    tmp_path: Path, etcd_config: EtcdConfig, store: Store
) -> None:
    await store.put(Cluster(name="w"))
    port, log = free_port(), tmp_path / "api.log"
    argv = [sys.executable, "-m", "api.cli", "api", "--workers", "2", "--port", str(port),
            "--etcd", ",".join(etcd_config.endpoints), "--prefix", etcd_config.prefix,
            "--log-level", "warning"]  # fmt: skip
    with log.open("wb") as out:
        sup = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    conns: list[http.client.HTTPConnection] = []
    try:
        _wait(lambda: _ready(port) and len(_started(log)) == 2, 30, "two API workers answering")
        pids = [p[-1] for _, p in sorted(_started(log).items())]
        _wait(lambda: all(_connections_of(pid, port, "0A") for pid in pids), 30, "both workers listening")
        conns += [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(WRITERS)]
        for c in conns:
            c.connect()
        _wait(lambda: sum(_connections_of(pid, port) for pid in pids) == WRITERS, 10, "every connection accepted")
        held = {pid: _connections_of(pid, port) for pid in pids}
        assert all(held.values()), held  # the kernel spread them over both

        def writer(w: int) -> list[int]:
            return [
                _put(conns[w], f"/v1/clusters/w/backends/w{w}-{i}", {"address": "127.0.0.2", "port": 1000 + i})
                for i in range(EACH)
            ]

        with ThreadPoolExecutor(WRITERS) as pool:
            statuses = [s for part in pool.map(writer, range(WRITERS)) for s in part]
        assert statuses == [201] * (WRITERS * EACH)
        page = await store.list(Kind.BACKEND, cluster="w", limit=1000)
        assert len(page.items) == WRITERS * EACH

        os.kill(pids[0], signal.SIGKILL)
        _wait(lambda: len(_started(log).get(0, [])) == 2, 20, "the supervisor restarted the killed worker")
        assert "exited with signal SIGKILL" in log.read_text() and sup.poll() is None
        fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conns.append(fresh)
        assert _put(fresh, "/v1/clusters/w/backends/after", {"address": "127.0.0.2", "port": 999}) == 201
    finally:
        for c in conns:
            c.close()
        sup.send_signal(signal.SIGTERM)
        code = sup.wait(20)
    assert code == 0, log.read_text()[-2000:]
