"""Group commit: concurrent independent writes share their etcd round trips.

A write is a read transaction and a guarded write transaction (`store.py`). When several
arrive together, one round serves them all: one read of everything they depend on, each
planned on its own against that read, and one transaction in which each write is a nested
transaction carrying its own compares. etcd evaluates every nested compare against the state
before the transaction and applies only the writes whose compares hold, so each write stays
all-or-nothing, with its own preconditions and its own answer: a failed compare sends only
that write back for another round.

Because the compares are evaluated before any of the transaction's writes, two writes in a
round must not touch what the other reads or writes (etcd would not see the first write when
checking the second). A write that overlaps one already in the round waits for the next
round, which starts as soon as this one is committed. Large writes go alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aetcd import rpc

T = TypeVar("T")  # a write's answer
P = TypeVar("P")  # a write's request

MAX_BATCH = 64  # writes per round (each a nested transaction)
NEST_MAX_WRITES = 16  # a write with more operations is committed in a round of its own


@dataclass(frozen=True)
class Planned(Generic[T]):
    """What one write would do against the round's read: its compares and operations, and
    the answer to give if they commit (at the transaction's revision)."""

    compares: list[rpc.Compare]
    writes: list[rpc.RequestOp]
    answer: Callable[[int], T]


@dataclass
class _Pending(Generic[P, T]):
    request: P
    future: asyncio.Future[T]
    attempts: int = 0


_Interval = tuple[bytes, bytes]


def _key(k: bytes) -> _Interval:
    return (k, k + b"\0")


def _reads(p: Planned[Any]) -> list[_Interval]:
    return [(c.key, c.range_end) if c.range_end else _key(c.key) for c in p.compares]


def _writes(p: Planned[Any]) -> list[_Interval]:
    out: list[_Interval] = []
    for w in p.writes:
        if w.HasField("request_put"):
            out.append(_key(w.request_put.key))
        else:
            d = w.request_delete_range
            out.append((d.key, d.range_end) if d.range_end else _key(d.key))
    return out


def _overlap(a: list[_Interval], b: list[_Interval]) -> bool:
    return any(x0 < y1 and y0 < x1 for x0, x1 in a for y0, y1 in b)


class GroupCommit(Generic[P, T]):
    """Serve `submit(request)` calls in rounds.

    - `read(requests)` reads, in one etcd round trip, what all of them depend on, and
      returns a state each is planned against;
    - `plan(request, state, attempts)` returns a `Planned` write, or the answer itself when
      there is nothing to write (raising fails only that request);
    - `txn(request)` sends one etcd transaction.
    """

    def __init__(
        self,
        read: Callable[[list[P]], Awaitable[object]],
        plan: Callable[[P, object, int], Planned[T] | T],
        txn: Callable[[rpc.TxnRequest], Awaitable[rpc.TxnResponse]],
        max_attempts: int,
        on_exhausted: Callable[[], Exception],
    ) -> None:
        self._read, self._plan, self._txn = read, plan, txn
        self._max_attempts = max_attempts
        self._on_exhausted = on_exhausted
        self._queue: list[_Pending[P, T]] = []
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # etcd write transactions sent (for tests and benchmarks)

    async def submit(self, request: P) -> T:
        loop = asyncio.get_running_loop()
        p: _Pending[P, T] = _Pending(request, loop.create_future())
        self._queue.append(p)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="intent-group-commit")
        return await p.future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = [p for p in self._queue if not p.future.done()], []
            if not batch:
                continue
            try:
                later = await self._round(batch)
            except Exception as exc:  # etcd unreachable, etc.: every write in the round fails
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self._queue[:0] = later  # deferred and retried writes go first

    async def _round(self, batch: list[_Pending[P, T]]) -> list[_Pending[P, T]]:
        state = await self._read([p.request for p in batch])
        chosen: list[tuple[_Pending[P, T], Planned[T]]] = []
        later: list[_Pending[P, T]] = []
        for p in batch:
            if chosen and (len(chosen) >= MAX_BATCH or len(chosen[0][1].writes) > NEST_MAX_WRITES):
                later.append(p)
                continue
            try:
                planned = self._plan(p.request, state, p.attempts)
            except Exception as exc:
                p.future.set_exception(exc)
                continue
            if not isinstance(planned, Planned):
                p.future.set_result(planned)
                continue
            if chosen and (len(planned.writes) > NEST_MAX_WRITES or any(_conflict(planned, c) for _, c in chosen)):
                later.append(p)
                continue
            chosen.append((p, planned))
        if not chosen:
            return later
        self.rounds += 1
        if len(chosen) == 1:
            _, only = chosen[0]
            resp = await self._txn(rpc.TxnRequest(compare=only.compares, success=only.writes))
            outcomes = [resp.succeeded]
        else:
            req = rpc.TxnRequest(
                success=[
                    rpc.RequestOp(request_txn=rpc.TxnRequest(compare=c.compares, success=c.writes)) for _, c in chosen
                ]
            )
            resp = await self._txn(req)
            outcomes = [r.response_txn.succeeded for r in resp.responses]
        retry: list[_Pending[P, T]] = []
        for (p, planned), ok in zip(chosen, outcomes, strict=True):
            if p.future.done():
                continue
            if ok:
                p.future.set_result(planned.answer(resp.header.revision))
            elif p.attempts + 1 >= self._max_attempts:
                p.future.set_exception(self._on_exhausted())
            else:
                p.attempts += 1  # another writer got in between: read again, plan again
                retry.append(p)
        return retry + later


def _conflict(a: Planned[Any], b: Planned[Any]) -> bool:
    wa, wb = _writes(a), _writes(b)
    return _overlap(wa, wb + _reads(b)) or _overlap(wb, _reads(a))


__all__ = ["GroupCommit", "MAX_BATCH", "NEST_MAX_WRITES", "Planned"]
