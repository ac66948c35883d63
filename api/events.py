"""`GET /v1/events`: the fleet and intent, live, as Server-Sent Events, from one etcd watch.

One `EventHub` per API process watches the whole key prefix once and keeps what viewers need
in memory: every Envoy's registry records, drains, rebalance and evacuation progress, and the
recent intent writes with their rollout status. A viewer gets a `snapshot` event with all of
it, then only changes; a thousand open consoles cost one watch, not a thousand etcd reads a
second. Each event is encoded once and the same bytes go to every viewer. The hub watches only
while someone does (from the first viewer until IDLE_SECONDS after the last), so an API that
nobody watches does no work per registry update; what it missed meanwhile comes back from
etcd: the most recently written objects, grouped by revision (a delete leaves no trace there).

Events (`event:` name, `data:` one JSON object):
- `snapshot`: `{revision, intent_revision, etcd, nodes: [...], drained, rebalances, changes:
  [...]}`, the whole state: sent first, and again after the hub lost etcd and read it anew.
  `intent_revision` is the newest intent write (drains included): an Envoy whose
  `acked_revision` is below it is behind.
- `node`: one Envoy as `GET /v1/fleet/{node}` shows it; `node-gone`: `{node_id, drain}` (a
  node no replica has a stream of; `drain` is its drain record, if it is drained).
- `intent`: one etcd revision's intent writes `{revision, changes: [{kind, name, cluster,
  deleted, object}], changes_total, rollout}`, sent once, with that write's changes only (a
  batch of N objects is one event of N changes; nothing else is read or sent again);
  `rollout`: a write's rollout status when it changes. The snapshot's `changes` hold the
  first RECENT_OBJECTS of each write's changes (`changes_total` says how many it had), so a
  snapshot stays small however large the recent batches were.
- `rebalance`: `{fleet, status}`; `etcd`: `{state: "ok" | "unavailable", detail}`.
Node changes are sent at most every `flush_interval` (the registry itself flushes at 0.2 s). A
viewer that cannot keep up (its queue is full) is disconnected; reconnecting gives a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from aetcd import rpc
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from api.auth import Role, require
from controlplane.etcd import Etcd, prefix_end
from controlplane.frontdoor.render import front_state, front_states
from controlplane.intent.certificates import info as cert_info
from controlplane.intent.errors import StoreError
from controlplane.intent.keyspace import Keyspace, Ref
from controlplane.intent.model import Kind
from controlplane.moves.controller import moves_root
from controlplane.xds.registry import FleetView, drain_record, fleet_floor, fleet_prefix, fleet_view, rollout_status

log = logging.getLogger(__name__)

RECENT_CHANGES = 50  # intent writes a snapshot lists, newest last
RECENT_OBJECTS = 10  # ... and of each, the changed objects it carries (the console shows 10)
QUEUE_EVENTS = 2000  # events a slow viewer may have outstanding before it is disconnected
KEEPALIVE_SECONDS = 15.0
IDLE_SECONDS = 30.0  # the watch outlives its last viewer by this much (a page reload keeps it)


def present_node(doc: dict[str, Any], evacuation: dict[str, Any] | None, state: str | None = None) -> dict[str, Any]:
    """One Envoy as the API shows it: its newest registry record, its front state (`state`,
    from `front_states` over its fleet; else from the record alone) and, while it is drained,
    its evacuation's progress."""
    out = {**doc, "front_state": state or front_state(doc)}
    load = doc.get("load") or {}
    if isinstance(load.get("hosts"), dict):
        # The hosts this Envoy does not see as healthy, per cluster, and when it last looked.
        out["hosts"], out["hosts_at"] = load["hosts"], load.get("at")
    if evacuation is not None and doc.get("draining"):
        out["evacuation"] = evacuation
    return out


def _public_spec(kind: Kind, spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec as the API shows it: a certificate without its (sealed) private key."""
    if kind != Kind.CERTIFICATE:
        return spec
    doc = {"name": spec.get("name"), "certificate_chain": spec.get("certificate_chain")}
    with contextlib.suppress(ValueError, TypeError):
        doc |= cert_info(str(spec.get("certificate_chain") or "")).as_dict()
    return doc


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One Server-Sent Event, encoded (the JSON is on one line, so one `data:` field)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(eq=False)
class _Viewer:
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_EVENTS))
    dropped: bool = False


class EventHub:
    """One watch of the prefix; fans changes out to viewers (see the module docstring)."""

    def __init__(self, etcd: Etcd, flush_interval: float = 0.25) -> None:
        self.etcd = etcd
        self.flush_interval = flush_interval
        root = etcd.config.prefix
        self._keys = Keyspace(root)
        self._fleet_root = fleet_prefix(root)
        self._status_root = moves_root(root) + b"status/"
        self._viewers: set[_Viewer] = set()
        self._streams: dict[str, dict[bytes, dict[str, Any]]] = {}  # node -> registry key -> record
        self._nodes: dict[str, dict[str, Any]] = {}  # node -> merged record (fleet_view)
        self._drains: dict[str, dict[str, Any]] = {}
        self._floors: dict[str, int] = {}  # fleet -> min_in_service (fleets with an object)
        self._states: dict[str, str] = {}  # node -> front state, as last computed over its fleet
        self._status: dict[tuple[str, str], dict[str, Any]] = {}  # ("node" | "fleet", name) -> progress
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_CHANGES)
        self.revision = 0
        self.intent_revision = 0
        self.etcd_ok = False
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None  # the open watch (aetcd's stream call)
        self._idle: asyncio.Task[None] | None = None
        self._pending = asyncio.Event()  # the watch applied something the viewers have not seen
        self._urgent = asyncio.Event()  # ... and it is an operator's write: no coalescing wait
        self._closed = False
        # What the watch applied since the last flush.
        self._dirty: set[str] = set()
        self._intent: dict[int, list[dict[str, Any]]] = {}
        self._fleets: set[str] = set()

    # -- viewers ---------------------------------------------------------------------------

    def start(self) -> None:
        """Watch (again). The first viewer does this; the hub stops IDLE_SECONDS after the
        last one left, so an API nobody watches spends nothing on the fleet's churn."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._task is None:
            self._closed = False
            self._task = asyncio.create_task(self._run(), name="event-hub")

    async def close(self) -> None:
        await self._halt()
        for v in list(self._viewers):
            self._drop(v)

    async def _halt(self) -> None:
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.ready.clear()
        self.etcd_ok = False

    async def _stop_when_idle(self) -> None:
        await asyncio.sleep(IDLE_SECONDS)
        self._idle = None
        if not self._viewers:
            await self._halt()

    async def stream(self) -> AsyncIterator[bytes]:
        """A viewer's events: the snapshot, then changes, with a comment every
        KEEPALIVE_SECONDS so proxies and browsers keep an idle stream open."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), 5)  # etcd down: the snapshot says so
        viewer = _Viewer()
        self._viewers.add(viewer)
        try:
            yield b"retry: 1000\n\n" + self._snapshot()
            while True:
                try:
                    item = await asyncio.wait_for(viewer.queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if item is None:
                    return
                yield item
        finally:
            self._viewers.discard(viewer)
            if not self._viewers and self._task is not None and self._idle is None:
                self._idle = asyncio.create_task(self._stop_when_idle(), name="event-hub-idle")

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def _drop(self, viewer: _Viewer) -> None:
        viewer.dropped = True
        self._viewers.discard(viewer)
        while True:  # make room for the end-of-stream marker
            try:
                viewer.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        viewer.queue.put_nowait(None)

    def _send(self, data: bytes) -> None:
        for v in list(self._viewers):
            try:
                v.queue.put_nowait(data)
            except asyncio.QueueFull:
                log.warning("events: a viewer fell %d events behind; disconnecting it", QUEUE_EVENTS)
                self._drop(v)

    # -- state -----------------------------------------------------------------------------

    def view(self) -> FleetView:
        return FleetView(self._nodes, self.revision, self._drains, self._floors)

    def _node(self, node_id: str) -> dict[str, Any] | None:
        doc = self._nodes.get(node_id)
        return (
            None if doc is None else present_node(doc, self._status.get(("node", node_id)), self._states.get(node_id))
        )

    def _restate(self) -> set[str]:
        """Front states over every fleet again (a fleet's floor can move one Envoy's state
        when another's changes); the nodes whose state moved."""
        states = front_states(self._nodes, floors=self._floors)
        moved = {n for n, st in states.items() if self._states.get(n) != st}
        self._states = states
        return moved

    def _snapshot(self) -> bytes:
        return sse(
            "snapshot",
            {
                "revision": self.revision,
                "intent_revision": self.intent_revision,
                "etcd": "ok" if self.etcd_ok else "unavailable",
                "nodes": [self._node(n) for n in sorted(self._nodes)],
                "drained": self._drains,
                "rebalances": {name: st for (kind, name), st in self._status.items() if kind == "fleet"},
                "changes": list(self._recent),
            },
            self.revision,
        )

    def _merge(self, node_id: str) -> None:
        streams = self._streams.get(node_id) or {}
        drains = {node_id: self._drains[node_id]} if node_id in self._drains else {}
        doc = fleet_view(list(streams.values()), drains, self.revision).nodes.get(node_id)
        if doc is None:
            self._nodes.pop(node_id, None)
        else:
            self._nodes[node_id] = doc

    def _apply(self, key: bytes, value: bytes | None, mod_revision: int) -> None:
        """One key's new value (None: deleted), wherever it lives."""
        if key.startswith(self._fleet_root):
            node_id = urllib.parse.unquote(key[len(self._fleet_root) :].split(b"/", 1)[0].decode())
            streams = self._streams.setdefault(node_id, {})
            doc = None
            if value is not None:
                with contextlib.suppress(ValueError):
                    doc = json.loads(value)
            if isinstance(doc, dict) and doc.get("node_id") == node_id:
                streams[key] = doc
            else:
                streams.pop(key, None)
            if not streams:
                del self._streams[node_id]
            self._dirty.add(node_id)
        elif (drained := self._keys.drained_node(key)) is not None:
            if value is None:
                self._drains.pop(drained, None)
            else:
                self._drains[drained] = drain_record(value, mod_revision)
            self._dirty.add(drained)
            self._urgent.set()
            self.intent_revision = max(self.intent_revision, mod_revision)
        elif key.startswith(self._status_root):
            kind, _, name = key[len(self._status_root) :].decode().partition("/")
            name = urllib.parse.unquote(name)
            status = None
            if value is not None:
                with contextlib.suppress(ValueError):
                    status = json.loads(value)
            if isinstance(status, dict):
                self._status[(kind, name)] = status
            else:
                self._status.pop((kind, name), None)
            if kind == "node":
                self._dirty.add(name)
            elif kind == "fleet":
                self._fleets.add(name)
        elif (ref := self._keys.ref(key)) is not None:
            if ref.kind == Kind.FLEET:
                name, floor = fleet_floor(ref.name.encode(), value)
                if floor is None:
                    self._floors.pop(name, None)
                else:
                    self._floors[name] = floor
                self._dirty.update(n for n, d in self._nodes.items() if d.get("fleet") == name)
            self._intent.setdefault(mod_revision, []).append(_change(ref, value))
            self.intent_revision = max(self.intent_revision, mod_revision)
            self._urgent.set()

    async def _load(self) -> int:
        """Read everything viewers see, at one revision: the registry, drains and move
        statuses whole, and the most recently written intent objects (the writes before the
        watch, as far as etcd still shows them: a delete leaves nothing to show)."""
        ranges = [self._fleet_root, self._keys.drains, self._status_root, self._keys.folder(Kind.FLEET)]
        ops = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k, range_end=prefix_end(k))) for k in ranges]
        resp = await self.etcd.txn(
            rpc.TxnRequest(success=ops + _newest_ops(self._keys, RECENT_CHANGES, keys_only=False)), read_only=True
        )
        state, newest = resp.responses[: len(ops)], resp.responses[len(ops) :]
        self._streams, self._nodes, self._drains, self._status, self._floors = {}, {}, {}, {}, {}
        self._dirty.clear()
        for r in state:
            for kv in r.response_range.kvs:
                self._apply(kv.key, kv.value, kv.mod_revision)
        self._intent.clear()  # drains went through _apply; intent comes from `newest` below
        self.revision = resp.header.revision
        for node_id in self._dirty:
            self._merge(node_id)
        self._dirty.clear()
        self._states = {}
        self._restate()
        self._fleets.clear()
        known = {e["revision"]: e for e in self._recent}
        for r in newest:
            for kv in r.response_range.kvs:
                self.intent_revision = max(self.intent_revision, kv.mod_revision)
                ref = self._keys.ref(kv.key)
                if ref is not None and kv.mod_revision not in known:
                    entry = known.setdefault(kv.mod_revision, {"revision": kv.mod_revision, "changes": [], "at": None})
                    entry["changes"].append(_change(ref, kv.value))
        view = self.view()
        for entry in known.values():
            entry["rollout"] = rollout_status(view, entry["revision"])
            entry.setdefault("changes_total", len(entry["changes"]))
            del entry["changes"][RECENT_OBJECTS:]
        self._recent = deque(sorted(known.values(), key=lambda e: e["revision"])[-RECENT_CHANGES:], RECENT_CHANGES)
        return int(resp.header.revision)

    def _flush(self) -> None:
        """Send what the watch applied since the last flush: intent writes first (a viewer
        sees a write before the acks of it), then changed nodes, then rollouts that moved."""
        for revision in sorted(self._intent):
            changes = self._intent[revision]
            entry: dict[str, Any] = {
                "revision": revision,
                "changes": changes,
                "changes_total": len(changes),
                "at": time.time(),
                "rollout": rollout_status(self.view(), revision),
            }
            self._send(sse("intent", entry, revision))
            # What a later snapshot shows of it: bounded, however many objects the write had.
            self._recent.append({**entry, "changes": changes[:RECENT_OBJECTS]})
        self._intent.clear()
        if self._dirty:
            for node_id in self._dirty:
                self._merge(node_id)
            for node_id in sorted(self._dirty | self._restate()):
                doc = self._node(node_id)
                if doc is None:
                    doc = {"node_id": node_id, "drain": self._drains.get(node_id)}
                    self._send(sse("node-gone", doc))
                else:
                    self._send(sse("node", doc))
            self._dirty.clear()
            view = self.view()
            for entry in self._recent:
                old = entry["rollout"]
                if old["complete"] and old["nodes"] == len(self._nodes):
                    continue
                new = rollout_status(view, entry["revision"])
                if new != old:
                    entry["rollout"] = new
                    self._send(sse("rollout", new, entry["revision"]))
        for fleet in sorted(self._fleets):
            self._send(sse("rebalance", {"fleet": fleet, "status": self._status.get(("fleet", fleet))}))
        self._fleets.clear()

    # -- the watch -------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.2
        root = self._keys.root
        while True:
            call = None
            flusher = None
            try:
                revision = await self._load()
                if not self.etcd_ok:
                    self.etcd_ok = True
                    self._send(sse("etcd", {"state": "ok", "detail": ""}))
                self._send(self._snapshot())
                self.ready.set()
                call = self._call = await self.etcd.watch(root, prefix_end(root), revision + 1)
                if self._closed:
                    # A cancel that lands in grpc.aio's write of the watch request is
                    # swallowed there: the task would go on to read the watch forever.
                    return
                backoff = 0.2
                flusher = asyncio.create_task(self._flusher(), name="event-hub-flush")
                # Read as fast as etcd sends (applying is cheap); the flusher sends what
                # accumulated at most every flush_interval. Registry flushes from many
                # replicas arrive in bursts, and a reader that paused per response would
                # fall behind them.
                async for resp in call:
                    if resp.compact_revision or resp.canceled:
                        break  # reload: what we missed is gone from etcd's history
                    for ev in resp.events:  # PUT = 0, DELETE = 1
                        self._apply(ev.kv.key, ev.kv.value if ev.type == 0 else None, ev.kv.mod_revision)
                        self.revision = max(self.revision, ev.kv.mod_revision)
                    if not resp.events and not resp.created:
                        self.revision = max(self.revision, resp.header.revision)
                    self._pending.set()
            except asyncio.CancelledError:
                raise
            except (StoreError, grpc.aio.AioRpcError) as exc:
                if self._closed:
                    return
                if self.etcd_ok:
                    log.warning("events: lost etcd (%s); viewers keep the last state", exc)
                    self.etcd_ok = False
                    self._send(sse("etcd", {"state": "unavailable", "detail": str(exc)[:200]}))
                self.ready.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if flusher is not None:
                    flusher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await flusher
                if call is not None:
                    call.cancel()

    async def _flusher(self) -> None:
        """Send what accumulated: node changes at most every flush_interval, an operator's
        write (intent, a drain) at once."""
        while True:
            await self._pending.wait()
            self._pending.clear()
            self._urgent.clear()
            self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), self.flush_interval)


def _newest_ops(keys: Keyspace, limit: int, keys_only: bool) -> list[rpc.RequestOp]:
    """Ranges of the `limit` most recently written keys of each intent folder (drains too)."""
    return [
        rpc.RequestOp(
            request_range=rpc.RangeRequest(
                key=k,
                range_end=prefix_end(k),
                limit=limit,
                keys_only=keys_only,
                sort_order=rpc.RangeRequest.DESCEND,
                sort_target=rpc.RangeRequest.MOD,
            )
        )
        for k in [keys.folder(kind) for kind in Kind] + [keys.drains]
    ]


async def intent_revision(etcd: Etcd) -> int:
    """The newest intent write (drains included): an Envoy that acked less is behind."""
    resp = await etcd.txn(rpc.TxnRequest(success=_newest_ops(Keyspace(etcd.config.prefix), 1, True)), read_only=True)
    return max([kv.mod_revision for r in resp.responses for kv in r.response_range.kvs], default=0)


def _change(ref: Ref, value: bytes | None) -> dict[str, Any]:
    obj = None
    if value is not None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            obj = _public_spec(ref.kind, json.loads(value)["spec"])
    return {"kind": str(ref.kind), "name": ref.name, "cluster": ref.cluster, "deleted": value is None, "object": obj}


def events_router() -> APIRouter:
    r = APIRouter(tags=["events"])

    @r.get(
        "/v1/events",
        dependencies=[Depends(require(Role.READER))],
        summary="The fleet and intent, live (Server-Sent Events: snapshot, then changes)",
        response_class=StreamingResponse,
    )
    async def events(request: Request) -> StreamingResponse:
        hub: EventHub = request.app.state.events
        return StreamingResponse(
            hub.stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    return r
