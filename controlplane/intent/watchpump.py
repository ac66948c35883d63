"""An etcd watch read on a thread of its own, handed to the event loop in batches.

Why: an xDS replica's event loop runs one step of every ready task per cycle. With a
thousand streams being fanned out to, a cycle takes hundreds of milliseconds, and a watch
read with `async for` on that loop gets one response per cycle: intent changes queue up
behind the fan-out they are supposed to trigger. Here a thread with its own event loop
and its own etcd channel reads responses as fast as etcd sends them; the main loop drains
everything received so far in one go, whatever its cycle time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import grpc

from controlplane.etcd import Etcd, EtcdConfig
from controlplane.intent.errors import StoreError

# A watch response (rpc.WatchResponse; aetcd is untyped) or the exception that ended the watch.
Item = Any


class WatchPump:
    """Watch [start, end) from `revision` on a thread. Use `await wait()` then `drain()`;
    a drained item is a WatchResponse or the exception that ended the watch (last)."""

    def __init__(self, config: EtcdConfig, start: bytes, end: bytes, revision: int) -> None:
        self._config = config
        self._range = (start, end, revision)
        self._items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._ready = asyncio.Event()
        self._main = asyncio.get_running_loop()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.run(self._pump())

    async def _pump(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        etcd = Etcd(self._config)
        call = None
        try:
            call = await etcd.watch(*self._range)
            async for resp in call:
                self._put(resp)
            self._put(StoreError("etcd closed the watch stream"))
        except asyncio.CancelledError:
            pass
        except (StoreError, grpc.aio.AioRpcError) as exc:
            self._put(exc)
        finally:
            if call is not None:
                call.cancel()
            await etcd.close()

    def _put(self, item: Item) -> None:
        self._items.put(item)
        try:
            self._main.call_soon_threadsafe(self._ready.set)
        except RuntimeError:
            pass  # the main loop is closed: nobody is listening any more

    async def wait(self) -> None:
        await self._ready.wait()
        self._ready.clear()

    def drain(self) -> list[Item]:
        out: list[Item] = []
        while True:
            try:
                out.append(self._items.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass
        self._thread.join(5)
