"""`lbcp xds --workers 2`: two replica processes on one port, supervised.

Both serve (the kernel spreads connections over them), both register their streams and
serve their own metrics, every client converges on the same revision whichever worker it
landed on, and a worker killed with SIGKILL is restarted while its Envoys re-home to the
other one and keep receiving changes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from api.localcluster.procs import free_port
from bench.fleetsim.fleet import Fleet, specs
from controlplane.etcd import EtcdConfig
from controlplane.intent.model import Backend, Cluster, Listener, Route
from controlplane.intent.store import Store
from tests.conftest import wait_for

N = 40


def _started(log: Path) -> dict[int, list[int]]:
    """worker index -> the pids it was started with, in order (from the supervisor's log)."""
    out: dict[int, list[int]] = {}
    for m in re.finditer(r"xDS worker (\d+) \(\S+\) started, pid (\d+)", log.read_text()):
        out.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    return out


async def _nodes(api: httpx.AsyncClient) -> dict[str, dict]:
    return {n["node_id"]: n for n in (await api.get("/v1/fleet")).json()["nodes"]}


async def test_two_workers_share_a_port_and_survive_a_killed_one(
    tmp_path: Path, etcd_config: EtcdConfig, store: Store, api: httpx.AsyncClient, envoys
) -> None:
    await store.put(Cluster(name="web"))
    await store.put(Backend(name="web-0", address="10.0.0.1", port=30000), cluster="web")
    await store.put(Listener(name="http", port=free_port()))
    await store.put(Route(name="r", listener="http", backends=[{"cluster": "web"}]))
    port, metrics = free_port(), free_port()
    log = tmp_path / "xds.log"
    argv = [sys.executable, "-m", "api.cli", "xds", "--workers", "2", "--port", str(port),
            "--etcd", ",".join(etcd_config.endpoints), "--prefix", etcd_config.prefix, "--replica-id", "tw",
            "--metrics-port", str(metrics), "--registry-interval", "0.05", "--probe-interval", "0",
            "--load-interval", "0"]  # fmt: skip
    with log.open("wb") as out:
        sup = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    fleet = None
    try:

        async def both_metrics_up() -> bool:
            try:
                async with httpx.AsyncClient(timeout=1) as c:
                    codes = [(await c.get(f"http://127.0.0.1:{metrics + i}/metrics")).status_code for i in (0, 1)]
                    return codes == [200, 200]
            except httpx.HTTPError:
                return False

        await wait_for(both_metrics_up, 30, "both workers serving metrics")
        envoy = envoys("wk-envoy", [("127.0.0.1", port)])
        fleet = await asyncio.to_thread(Fleet, f"127.0.0.1:{port}", specs(N, delta_share=0.5), 2)
        await asyncio.to_thread(fleet.start, 60)
        every = {c.node_id for c in fleet.clients} | {"wk-envoy"}

        # Both workers serve, and each one's metrics count its own streams.
        async def all_registered() -> bool:
            return set(await _nodes(api)) == every

        await wait_for(all_registered, 20, "every client in the fleet registry")
        by_replica: dict[str, int] = {}
        for n in (await _nodes(api)).values():
            by_replica[n["replica"]] = by_replica.get(n["replica"], 0) + 1
        assert set(by_replica) == {"tw-w0", "tw-w1"}, by_replica
        async with httpx.AsyncClient(timeout=2) as c:
            for i in (0, 1):
                text = (await c.get(f"http://127.0.0.1:{metrics + i}/metrics")).text
                counted = sum(
                    float(m.group(1))
                    for m in re.finditer(rf'lbcp_xds_connected_streams\{{[^}}]*replica="tw-w{i}"[^}}]*\}} (\S+)', text)
                )
                assert counted == by_replica[f"tw-w{i}"], (i, counted, by_replica)

        # A change reaches every client, at one revision, whichever worker serves it.
        async def acked(rev: int, nodes: set[str]):
            async def ok() -> bool:
                docs = await _nodes(api)
                return nodes <= set(docs) and all(docs[n]["acked_revision"] >= rev for n in nodes)

            return ok

        rev = (await store.put(Backend(name="web-1", address="10.0.0.2", port=30001), cluster="web")).revision
        await wait_for(await acked(rev, every), 20, "every client (both workers) acked the change")
        seen = (await asyncio.to_thread(fleet.seen, [30001]))[30001]
        assert all(t is not None for t in seen)

        # SIGKILL the worker serving the real Envoy: it is restarted, the Envoy re-homes to
        # the other worker, and the next change still reaches everyone.
        victim = int((await _nodes(api))["wk-envoy"]["replica"].rsplit("-w", 1)[1])
        old_pid = _started(log)[victim][-1]
        os.kill(old_pid, signal.SIGKILL)

        async def restarted() -> bool:
            return len(_started(log).get(victim, [])) == 2

        await wait_for(restarted, 20, "the supervisor restarted the killed worker")
        assert "exited with signal SIGKILL" in log.read_text()
        assert sup.poll() is None, "the supervisor must keep running"
        rev2 = (await store.put(Backend(name="web-2", address="10.0.0.3", port=30002), cluster="web")).revision
        await wait_for(await acked(rev2, every), 60, "every client acked a change after the kill")
        assert envoy.proc.alive()
        await wait_for(both_metrics_up, 30, "the restarted worker serves metrics again")
    finally:
        if fleet is not None:
            await asyncio.to_thread(fleet.stop)
        sup.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(sup.wait, 20)
    assert code == 0, log.read_text()[-2000:]
    for pids in _started(log).values():
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
