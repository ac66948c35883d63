"""Ring build and lookup cost (issue 4).

    .venv/bin/python -m bench.ring_build

Maglev table builds for N = 10, 100, 1000 backends at M = 65537 and 655373, ring-hash
builds, lookup rate, and the memory a cached ring holds (tracemalloc). Pure Python: the
Maglev fill is sequential (each slot depends on the ones taken before), so NumPy does
not help it; lbcp caches built rings per cluster and revision instead.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

from controlplane.ring.tables import HashLB, RingConfig, RingHost, sample_hashes


def hosts(n: int) -> list[RingHost]:
    return [RingHost(f"backend-{i}", "10.0.0.1", 1000 + i, weight=1 + i % 4, hash_key=f"backend-{i}") for i in range(n)]


def build(n: int, cfg: RingConfig) -> tuple[float, int, HashLB]:
    hs = hosts(n)
    t = time.perf_counter()
    lb = HashLB(hs, cfg)
    took = time.perf_counter() - t  # timed without tracemalloc, which slows Python several-fold
    tracemalloc.start()
    kept = HashLB(hs, cfg)  # noqa: F841 (held while measuring what a cached ring costs)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return took, size, lb


def main() -> None:
    rows = []
    keys = sample_hashes(200_000)
    for algo, sizes in (("maglev", (65537, 655373)), ("ring_hash", (1024, 65536))):
        for size in sizes:
            for n in (10, 100, 1000):
                cfg = (
                    RingConfig("maglev", table_size=size)
                    if algo == "maglev"
                    else RingConfig("ring_hash", minimum_ring_size=size)
                )
                took, mem, lb = build(n, cfg)
                t = time.perf_counter()
                for h in keys:
                    lb.pick(h)
                rate = len(keys) / (time.perf_counter() - t)
                rows.append(
                    {
                        "algorithm": algo,
                        "size": size,
                        "backends": n,
                        "build_s": round(took, 4),
                        "memory_mb": round(mem / 1e6, 2),
                        "lookups_per_s": round(rate),
                    }
                )
                print(
                    f"{algo:9} size {size:>7} N {n:>5}: build {took * 1000:8.1f} ms, memory {mem / 1e6:6.2f} MB, "
                    f"lookup {rate / 1e6:.2f} M/s"
                )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ring_build.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
