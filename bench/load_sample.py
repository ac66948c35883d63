"""Replica CPU per live-load sample: `python -m bench.load_sample [--samples 2000]`.

One real Envoy (the production bootstrap, its ops listener's `/lbcp/load`; configured by an
`lbcp xds` replica in its own process over a private etcd), sampled the way a
replica does (controlplane.xds.load: a kept-alive connection, one GET per sample, the JSON
parsed into a load record), `--concurrency` at a time. Prints and writes
bench/results/load_sample.json: CPU seconds of this process per sample, and wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

from api.localcluster.procs import EnvoyProcess, EtcdCluster, Proc, free_port, wait_until
from controlplane.xds.bootstrap import LOAD_PATH
from controlplane.xds.load import _KeepAlive, parse_load


async def _run(samples: int, concurrency: int, ops: tuple[str, int], ops_port: int) -> dict[str, float]:
    conns = [_KeepAlive(ops[0], ops[1], 2.0) for _ in range(concurrency)]
    per_conn = samples // concurrency

    async def loop(c: _KeepAlive) -> None:
        for _ in range(per_conn):
            status, body = await c.get(LOAD_PATH)
            assert status == 200, status
            parse_load(json.loads(body)["stats"], ops_port)

    await asyncio.gather(*(loop(c) for c in conns[:1]))  # warm up one connection
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    for c in conns:
        c.close()
    done = per_conn * concurrency
    return {"samples": done, "cpu_us_per_sample": cpu / done * 1e6, "wall_s": wall, "samples_per_s": done / wall}


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EtcdCluster(Path(tmp) / "etcd", size=1)
        etcd.start()
        port = free_port()
        xds = Proc(
            [sys.executable, "-m", "api.cli", "xds", "--port", str(port), "--etcd", ",".join(etcd.endpoints)],
            Path(tmp) / "xds.log",
        )
        xds.start()
        # Envoy opens its listeners once the control plane has answered (its init waits for ADS).
        e = EnvoyProcess(Path(tmp), "bench", "default", [("127.0.0.1", port)])
        try:
            e.start()
            wait_until(lambda: _answers(e.ops_port), 30, what="the ops listener")
            result = asyncio.run(_run(args.samples, args.concurrency, ("127.0.0.1", e.ops_port), e.ops_port))
        finally:
            e.stop()
            xds.stop()
            etcd.stop()
    out = Path(__file__).parent / "results" / "load_sample.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['samples']} samples: {result['cpu_us_per_sample']:.0f} µs of CPU per sample, "
        f"{result['samples_per_s']:.0f} samples/s ({args.concurrency} at a time)"
    )


if __name__ == "__main__":
    main()
