"""etcd leases kept alive from a thread of their own.

Why: a replica's records and node-id claims live under leases. Renewed from the replica's
event loop, they lapse whenever that loop is busy for longer than a TTL (thousands of
streams connecting, a large registry flush), and a lapse deletes every record at once: the
front door then sees no Envoy at all (issue 27). Here a thread with its own event loop and
etcd channel renews each lease every TTL/3 whatever the main loop does, so a lease lapses
only when the process or etcd really stalls. The owner hears of a lapse through `on_lost`,
called on its own loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.errors import StoreError

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Keep leases alive (`keep`, `drop`) until `stop()`; `on_lost(lease)` runs on the loop
    that created the keeper when etcd says a lease is gone."""

    def __init__(self, config: EtcdConfig, on_lost: Callable[[int], None]) -> None:
        self._config = config
        self._on_lost = on_lost
        self._main = asyncio.get_running_loop()
        self._leases: dict[int, int] = {}  # lease id -> ttl (seconds)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.renewals = 0
        self._thread = threading.Thread(target=self._run, name="etcd-leases", daemon=True)
        self._thread.start()

    def keep(self, lease: int, ttl: int) -> None:
        with self._lock:
            self._leases[lease] = ttl
        self._wake.set()

    def drop(self, lease: int) -> None:
        with self._lock:
            self._leases.pop(lease, None)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.run(self._renew())

    async def _renew(self) -> None:
        etcd = Etcd(self._config)
        try:
            while not self._stopping.is_set():
                with self._lock:
                    leases = dict(self._leases)
                started = time.monotonic()
                for lease in leases:
                    await self._renew_one(etcd, lease)
                period = min(leases.values(), default=3) / 3
                # Sleep in the thread (not the loop): woken at once by keep() and stop().
                await asyncio.to_thread(self._wake.wait, max(0.05, period - (time.monotonic() - started)))
                self._wake.clear()
        finally:
            await etcd.close()

    async def _renew_one(self, etcd: Etcd, lease: int) -> None:
        try:
            ttl = await asyncio.wait_for(etcd.lease_keepalive(lease), 2.0)
        except (StoreError, TimeoutError) as exc:
            log.debug("lease %x not renewed (%s); trying again", lease, exc)
            return
        self.renewals += 1
        if ttl > 0:
            return
        with self._lock:
            if self._leases.pop(lease, None) is None:
                return  # dropped meanwhile: nobody to tell
        try:
            self._main.call_soon_threadsafe(self._on_lost, lease)
        except RuntimeError:
            pass  # the owner's loop is closed: nobody is listening any more
