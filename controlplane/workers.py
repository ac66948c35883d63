"""Run N copies of a server as processes and keep them running (`--workers N`).

A worker that dies is reported (which, its exit status, how long it lived) and restarted
with back-off while the others keep serving; the supervisor exits only when told to stop
(SIGTERM/SIGINT), and then stops its workers with SIGTERM (SIGKILL after 10 s). Workers are
started with `spawn`: gRPC must not be forked after it was initialised.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5  # seconds before the first restart of a worker that died
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that lived this long starts its back-off over


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: `target(*args)` in a fresh process; `name` is how logs call it."""

    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]


class Supervisor:
    """Start every worker of `specs` and keep them running until `stop()`."""

    def __init__(self, kind: str, specs: list[WorkerSpec]) -> None:
        self.kind = kind  # "xDS", "API": the first word of every log line
        self.specs = specs
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess | None] = [None] * len(specs)
        self._started_at = [0.0] * len(specs)
        self._backoff = [BACKOFF_MIN] * len(specs)
        self._restart_at: dict[int, float] = {}
        self._stopping = threading.Event()
        self.restarts = 0

    def pids(self) -> list[int | None]:
        return [p.pid if p is not None and p.is_alive() else None for p in self._procs]

    def _spawn(self, i: int) -> None:
        spec = self.specs[i]
        p = self._ctx.Process(target=spec.target, args=spec.args, name=f"{self.kind}-worker-{i}", daemon=False)
        p.start()
        self._procs[i] = p
        self._started_at[i] = time.monotonic()
        log.info("%s worker %d (%s) started, pid %s", self.kind, i, spec.name, p.pid)

    def run(self) -> None:
        """Supervise until `stop()` (or SIGTERM/SIGINT when run in the main thread)."""
        for i in range(len(self.specs)):
            self._spawn(i)
        while not self._stopping.is_set():
            now = time.monotonic()
            for i, at in list(self._restart_at.items()):
                if now >= at:
                    del self._restart_at[i]
                    self.restarts += 1
                    self._spawn(i)
            live = [p for p in self._procs if p is not None]
            timeout = min([0.5, *(at - now for at in self._restart_at.values())])
            ready: list[Any] = wait([p.sentinel for p in live], timeout=max(timeout, 0.0))
            for i, p in enumerate(self._procs):
                if p is None or p.sentinel not in ready or self._stopping.is_set():
                    continue
                p.join()
                lived = time.monotonic() - self._started_at[i]
                if lived >= STABLE_AFTER:
                    self._backoff[i] = BACKOFF_MIN
                delay = self._backoff[i]
                self._backoff[i] = min(delay * 2, BACKOFF_MAX)
                log.error(
                    "%s worker %d (%s, pid %s) exited with %s after %.0fs; restarting in %.1fs "
                    "(the other workers keep serving)",
                    self.kind,
                    i,
                    self.specs[i].name,
                    p.pid,
                    exit_status(p.exitcode),
                    lived,
                    delay,
                )
                self._procs[i] = None
                self._restart_at[i] = time.monotonic() + delay
        self._terminate()

    def stop(self) -> None:
        self._stopping.set()

    def _terminate(self) -> None:
        procs = [p for p in self._procs if p is not None]
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker stops its server cleanly
        deadline = time.monotonic() + 10
        for p in procs:
            p.join(max(deadline - time.monotonic(), 0.1))
            if p.is_alive():
                p.kill()
                p.join()


def exit_status(code: int | None) -> str:
    if code is None:
        return "no status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def serve(kind: str, specs: list[WorkerSpec]) -> int:
    """Supervise `specs` until SIGTERM/SIGINT; 0 when stopped."""
    sup = Supervisor(kind, specs)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sup.stop())
    sup.run()
    return 0
