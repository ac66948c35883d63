"""How long a real Envoy takes to apply an EDS update that rebuilds its hash ring.

    .venv/bin/python -m bench.envoy_ring_apply [--backends 1000] [--repeats 7]

Starts etcd, one in-process xDS replica and one real Envoy (delta ADS). For each load
balancer (round robin as the baseline, Maglev at two table sizes, ring hash) it creates a
cluster of N backends, then changes every backend's weight (an EDS-only change) `repeats`
times and records the time from lbcp writing the EDS response to Envoy's ACK. Envoy ACKs
after applying the update on its main thread, which is where its thread-aware load
balancers rebuild their tables; the difference from round robin is Envoy's own ring build.
Writes bench/results/envoy_ring_apply.json; lbcp's build of the same ring is timed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from api.localcluster.procs import EnvoyProcess, EtcdCluster, free_port
from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.model import Backend, Cluster
from controlplane.intent.store import ReplaceBackends, Store
from controlplane.ring.tables import ring_for
from controlplane.xds.replica import ReplicaConfig, XdsReplica
from controlplane.xds.resources import ENDPOINT_TYPE

LBS = {
    "round_robin": {"type": "round_robin"},
    "maglev 65,537": {"type": "maglev", "table_size": 65537},
    "maglev 655,373": {"type": "maglev", "table_size": 655373},
    "ring_hash min 1,024": {"type": "ring_hash"},
}


class AckTimes:
    """A stream observer that keeps EDS ACK latencies."""

    def __init__(self) -> None:
        self.eds: list[float] = []
        self.event = asyncio.Event()

    def connected(self, stream) -> None: ...
    def changed(self, stream) -> None: ...
    def disconnected(self, stream) -> None: ...
    def pushed(self, stream, type_url, nbytes, resources) -> None: ...
    def nacked(self, stream, type_url, nack) -> None: ...

    def acked(self, stream, type_url: str, latency: float) -> None:
        if type_url == ENDPOINT_TYPE:
            self.eds.append(latency)
            self.event.set()


def _members(n: int, round_: int) -> list[Backend]:
    # Weights change every round so each update is a real change to every host.
    return [
        Backend(name=f"b{i:04d}", address=f"127.1.{i // 250}.{i % 250 + 1}", port=8000, weight=1 + (i + round_) % 4)
        for i in range(n)
    ]


async def run(n: int, repeats: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="lbcp-bench-ring-"))
    etcd_cluster = EtcdCluster(root / "etcd", 1)
    etcd_cluster.start()
    cfg = EtcdConfig(endpoints=tuple(etcd_cluster.endpoints), prefix="/bench/")
    acks = AckTimes()
    replica = XdsReplica(ReplicaConfig(etcd=cfg, port=free_port(), replica_id="bench"), [acks])
    await replica.start()
    etcd = Etcd(cfg)
    store = Store(etcd)
    envoy = EnvoyProcess(root / "envoy", "bench-envoy", "default", [("127.0.0.1", replica.port)])
    results: dict = {"backends": n, "repeats": repeats, "rows": []}
    try:
        await asyncio.to_thread(envoy.start)
        for label, lb in LBS.items():
            name = "c" + "".join(ch for ch in label if ch.isalnum())
            cluster = Cluster(name=name, load_balancer=lb)
            await store.put(cluster)
            await store.apply([ReplaceBackends(name, tuple(_members(n, 0)))])
            await asyncio.sleep(2.0)  # new cluster warmed and first table built
            acks.eds.clear()
            times = []
            for r in range(1, repeats + 1):
                acks.event.clear()
                await store.apply([ReplaceBackends(name, tuple(_members(n, r)))])
                await asyncio.wait_for(acks.event.wait(), 60)
                times.append(acks.eds[-1])
                await asyncio.sleep(0.3)
            lbcp_ms = None
            if lb["type"] != "round_robin":
                t0 = time.perf_counter()
                ring_for(cluster, _members(n, 1))
                lbcp_ms = (time.perf_counter() - t0) * 1000
            row = {
                "lb": label,
                "ack_ms_median": statistics.median(times) * 1000,
                "ack_ms_max": max(times) * 1000,
                "lbcp_build_ms": lbcp_ms,
            }
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        envoy.stop()
        await replica.stop()
        await etcd.close()
        etcd_cluster.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    results = asyncio.run(run(args.backends, args.repeats))
    out = Path(__file__).parent / "results" / "envoy_ring_apply.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    base = results["rows"][0]["ack_ms_median"]
    print(f"\n{'load balancer':<22} {'EDS ack p50':>12} {'minus RR':>10} {'lbcp build':>11}")
    for row in results["rows"]:
        lbcp = f"{row['lbcp_build_ms']:.0f} ms" if row["lbcp_build_ms"] is not None else "-"
        print(f"{row['lb']:<22} {row['ack_ms_median']:>9.1f} ms {row['ack_ms_median'] - base:>7.1f} ms {lbcp:>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
