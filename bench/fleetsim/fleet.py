"""The simulator's coordinator: N simulated Envoys spread over W worker processes."""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

from bench.fleetsim import worker


@dataclass(frozen=True)
class ClientSpec:
    node_id: str
    delta: bool
    fleet: str = "default"
    nack_first: bool = False


def specs(n: int, delta_share: float = 0.5, prefix: str = "sim", fleet: str = "default") -> list[ClientSpec]:
    """`n` clients, the first round(n * delta_share) on delta, the rest on state of the world."""
    n_delta = round(n * delta_share)
    return [ClientSpec(f"{prefix}-{i:05d}", i < n_delta, fleet) for i in range(n)]


class Fleet:
    """Synchronous on purpose: scenarios are plain scripts; the clients run in the workers."""

    def __init__(self, target: str | list[str], clients: list[ClientSpec], workers: int = 2) -> None:
        """`target`: one xDS replica, or several (client i connects to target[i % len])."""
        self.targets = [target] if isinstance(target, str) else list(target)
        self.clients = clients
        ctx = mp.get_context("spawn")
        self._procs, self._conns = [], []
        for _ in range(max(1, min(workers, len(clients)))):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker.main, args=(child,), daemon=True)
            p.start()
            self._procs.append(p)
            self._conns.append(parent)
        # Round-robin so each worker gets a mix of delta and SotW clients.
        self._shares = [clients[i :: len(self._conns)] for i in range(len(self._conns))]

    def _all(self, cmd: str, args: list) -> list:
        for conn, arg in zip(self._conns, args, strict=False):
            conn.send((cmd, arg))
        out = []
        for conn in self._conns:
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"fleetsim worker: {cmd} -> {status} {value}")
            out.append(value)
        return out

    def start(self, timeout: float = 120.0) -> float:
        """Connect every client; return the seconds until the slowest worker had all its
        clients configured."""
        index = {c.node_id: i for i, c in enumerate(self.clients)}
        args = [
            {
                "timeout": timeout,
                "clients": [
                    {
                        "node_id": c.node_id,
                        "delta": c.delta,
                        "fleet": c.fleet,
                        "nack_first": c.nack_first,
                        "target": self.targets[index[c.node_id] % len(self.targets)],
                    }
                    for c in share
                ],
            }
            for share in self._shares
        ]
        return max(self._all("start", args))

    def counters(self) -> list[dict]:
        return [c for part in self._all("counters", [None] * len(self._conns)) for c in part]

    def unseen(self, ports: list[int]) -> int:
        """How many (client, port) pairs have not been seen yet: cheap to poll."""
        return sum(self._all("unseen", [ports] * len(self._conns)))

    def wait_seen(self, ports: list[int], timeout: float, interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.unseen(ports) == 0:
                return True
            time.sleep(interval)
        return False

    def seen(self, ports: list[int]) -> dict[int, list[float | None]]:
        """For each port: when each client first saw an endpoint on it (monotonic), or None."""
        parts = self._all("seen", [ports] * len(self._conns))
        return {p: [t for part in parts for t in part[p]] for p in ports}

    def stop(self) -> None:
        try:
            self._all("stop", [None] * len(self._conns))
        finally:
            for p in self._procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
