"""The mover: sheds shards of connections off chosen Envoys at a paced rate (evacuation of a
drained node, rebalancing a fleet), while the front tier sends the reconnects to the
emptiest Envoys.

One replica at a time moves connections (a lease-held key, `_runtime/moves/leader`); the
others stand by and take over within the lease's TTL. Each tick (`interval`) it reads what
there is to do from its intent view (drain records with `evacuate`, fleets with `rebalance`)
and the one-off requests, and only then the fleet registry (live load per Envoy):

- **Evacuate** `{node}` at `connections_per_second`: shed its shards one after another, one
  shard per `connections / SHARDS / rate` seconds, round and round until it holds none.
- **Rebalance** a fleet: every Envoy more than `tolerance_percent` above the fleet's mean (of
  Envoys in front of clients), or above it while another is that far below, gives up shards,
  fleet-wide at most `max_moves_per_second`
  connections per second, the most loaded first; a shard is not moved again within
  `min_connection_age`; connections already asked to go (not yet gone from the load
  samples) count as gone, so a stale sample does not shed twice.

Progress is written to `_runtime/moves/status/{node|fleet}` (`state`, `moved`, `remaining`,
`rate`), which the admin API serves. The pace is shards per second: a shard's idle
connections close one Envoy drain time after its update (docs/frontdoor.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from aetcd import rpc

from controlplane.errors import StoreError
from controlplane.etcd import Etcd, prefix_end
from controlplane.frontdoor.render import front_state
from controlplane.intent.keyspace import Keyspace
from controlplane.intent.view import IntentView
from controlplane.moves.shed import shed
from controlplane.xds.registry import read_fleet
from controlplane.xds.resources import SHARDS

log = logging.getLogger(__name__)

LEASE_TTL = 5
# After a shed, its connections count as gone for this long at most, waiting for the load
# samples to show it (drain time + sample interval + registry flush, with margin).
PENDING_SECONDS = 10.0
# A sample this long after a shed's drain time shows its connections gone (the closes, the
# sample's own read).
SETTLE = 0.3


def moves_root(prefix: str) -> bytes:
    return f"{prefix}_runtime/moves/".encode()


def request_key(prefix: str, fleet: str) -> bytes:
    """A one-off rebalance of `fleet` (POST /v1/fleets/{fleet}/rebalance), until it is done."""
    return moves_root(prefix) + b"requests/" + urllib.parse.quote(fleet, safe="").encode()


def status_key(prefix: str, kind: str, name: str) -> bytes:
    """Progress of an evacuation (`kind` "node") or a rebalance (`kind` "fleet")."""
    return moves_root(prefix) + f"status/{kind}/".encode() + urllib.parse.quote(name, safe="").encode()


async def read_status(etcd: Etcd, kind: str, name: str) -> dict[str, Any] | None:
    got = await etcd.range(status_key(etcd.config.prefix, kind, name))
    return json.loads(got.kvs[0].value) if got.kvs else None


async def read_statuses(etcd: Etcd, kind: str) -> dict[str, dict[str, Any]]:
    """Every status of one kind ("node" or "fleet"), by name."""
    root = moves_root(etcd.config.prefix) + f"status/{kind}/".encode()
    out = {}
    for kv in (await etcd.range(root, prefix_end(root))).kvs:
        with contextlib.suppress(ValueError):
            out[urllib.parse.unquote(kv.key[len(root) :].decode())] = json.loads(kv.value)
    return out


@dataclass
class _Move:
    """One evacuation or rebalance in progress."""

    rate: float
    started: float
    initial: int = 0
    budget: float = 0.0
    moved: int = 0  # connections asked to go (sum of shard estimates)
    last_tick: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Donor:
    """What the mover asked of one Envoy: shards shed and when, connections still to go."""

    shed_at: dict[int, float] = field(default_factory=dict)
    next_shard: int = 0
    pending: list[tuple[float, int, int]] = field(default_factory=list)  # (at, connections then, estimate)


class Mover:
    def __init__(self, etcd: Etcd, view: IntentView, replica_id: str, interval: float = 0.25) -> None:
        self.etcd = etcd
        self.view = view
        self.replica_id = replica_id
        self.interval = interval
        self.leader = False
        self.sheds = 0
        self._keys = Keyspace(etcd.config.prefix)
        self._lease = 0
        self._evacuations: dict[str, _Move] = {}
        self._rebalances: dict[str, _Move] = {}
        self._donors: dict[str, _Donor] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease:
            with contextlib.suppress(Exception):
                await self.etcd.lease_revoke(self._lease)

    # -- leadership ------------------------------------------------------------------------

    async def _lead(self) -> bool:
        """Hold (or try to take) the mover's lease-held key; True while this replica leads."""
        key = moves_root(self.etcd.config.prefix) + b"leader"
        if self._lease:
            try:
                if await self.etcd.lease_keepalive(self._lease) > 0:
                    return True
            except StoreError:
                pass
            self._lease, self.leader = 0, False
        lease = await self.etcd.lease_grant(LEASE_TTL)
        absent = rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=self.replica_id.encode(), lease=lease))
        if (await self.etcd.txn(rpc.TxnRequest(compare=[absent], success=[put]))).succeeded:
            self._lease, self.leader = lease, True
            log.info("replica %s moves connections (mover lease %x)", self.replica_id, lease)
            return True
        await self.etcd.lease_revoke(lease)
        return False

    async def _run(self) -> None:
        last_lead = 0.0
        while True:
            await asyncio.sleep(self.interval)
            try:
                if time.monotonic() - last_lead > LEASE_TTL / 3 or not self.leader:
                    if not await self._lead():
                        continue
                    last_lead = time.monotonic()
                await self.tick()
            except StoreError as exc:
                log.warning("mover: etcd unavailable (%s); retrying", exc)
            except Exception:
                log.exception("mover tick failed")

    # -- one tick --------------------------------------------------------------------------

    async def tick(self) -> None:
        now = time.time()
        evacuate = {
            node: float(rec["evacuate"]["connections_per_second"])
            for node, rec in self.view.drained.items()
            if isinstance(rec.get("evacuate"), dict) and rec["evacuate"].get("connections_per_second")
        }
        fleets = {
            name: s.obj.rebalance
            for name, s in self.view.fleets.items()
            if s.obj.rebalance is not None and s.obj.rebalance.enabled
        }
        requests = await self._requests()
        if not (evacuate or fleets or requests or self._evacuations or self._rebalances):
            return
        nodes = (await read_fleet(self.etcd)).nodes
        for node in list(self._evacuations):
            if node not in evacuate:
                self._evacuations.pop(node)  # undrained, or the evacuation was replaced by a plain drain
        for node, rate in evacuate.items():
            await self._evacuate(node, rate, nodes.get(node), now)
        for fleet in set(fleets) | set(requests) | set(self._rebalances):
            policy = fleets.get(fleet)
            request = requests.get(fleet)
            if policy is None and request is None:
                self._rebalances.pop(fleet, None)
                continue
            await self._rebalance(fleet, policy, request, nodes, now)

    async def _requests(self) -> dict[str, dict[str, Any]]:
        root = moves_root(self.etcd.config.prefix) + b"requests/"
        got = await self.etcd.range(root, prefix_end(root))
        out = {}
        for kv in got.kvs:
            with contextlib.suppress(ValueError):
                out[urllib.parse.unquote(kv.key[len(root) :].decode())] = json.loads(kv.value)
        return out

    @staticmethod
    def _connections(doc: dict[str, Any] | None) -> int | None:
        load = (doc or {}).get("load") or {}
        n = load.get("connections")
        return int(n) if isinstance(n, (int, float)) else None

    def _effective(self, node: str, doc: dict[str, Any], now: float) -> int:
        """Connections, less those already asked to go that the samples cannot show gone yet:
        a shed counts until a load sample taken one drain time (the Envoy's own, from its
        /server_info) after it; without that, until the count dropped by half of it."""
        connections = self._connections(doc) or 0
        donor = self._donors.get(node)
        if donor is None:
            return connections
        load = doc.get("load") or {}
        drain = (load.get("drain") or {}).get("time")
        sampled = float(load.get("at") or 0.0)
        kept = []
        for at, then, estimate in donor.pending:
            if now - at >= PENDING_SECONDS:
                continue
            settled = (
                sampled >= at + float(drain) + SETTLE if drain is not None else connections <= then - estimate // 2
            )
            if not settled:
                kept.append((at, then, estimate))
        donor.pending = kept
        return max(0, connections - sum(e for _, _, e in kept))

    async def _shed_one(self, node: str, connections: int, estimate: int, now: float, min_age: float, why: str) -> bool:
        donor = self._donors.setdefault(node, _Donor())
        for i in range(SHARDS):
            shard = (donor.next_shard + i) % SHARDS
            if now - donor.shed_at.get(shard, -math.inf) >= min_age:
                break
        else:
            return False  # every shard moved too recently
        await shed(self.etcd, node, [shard], reason=why)
        log.info("%s: shard %d of %s (%d connections, ~%d to go)", why, shard, node, connections, estimate)
        self.sheds += 1
        donor.shed_at[shard] = now
        donor.next_shard = (shard + 1) % SHARDS
        donor.pending.append((now, connections, estimate))
        return True

    async def _evacuate(self, node: str, rate: float, doc: dict[str, Any] | None, now: float) -> None:
        move = self._evacuations.get(node)
        connections = self._connections(doc)
        if move is None or move.rate != rate:
            started = move.started if move is not None else now
            move = self._evacuations[node] = _Move(rate=rate, started=started, initial=connections or 0)
            move.last_tick = now
        if doc is None or connections is None:
            await self._status("node", node, move, "evacuated" if doc is None else "waiting", connections or 0, now)
            return
        effective = self._effective(node, doc, now)
        estimate = max(1, math.ceil(max(move.initial, connections) / SHARDS))
        # The first round sheds every shard at the rate; after it, a shard again only for
        # connections that arrived meanwhile (once the samples show the round's gone).
        donor = self._donors.get(node)
        first_round = donor is None or sum(t >= move.started for t in donor.shed_at.values()) < SHARDS
        if effective > 0 or (first_round and connections > 0):
            move.budget = min(move.budget + rate * (now - move.last_tick), 2 * estimate) if move.moved else estimate
            if move.budget >= estimate and await self._shed_one(node, connections, estimate, now, 0.0, "evacuate"):
                move.budget -= estimate
                move.moved += estimate
        move.last_tick = now
        await self._status("node", node, move, "evacuating" if connections else "evacuated", connections, now)

    async def _rebalance(
        self,
        fleet: str,
        policy: Any,
        request: dict[str, Any] | None,
        nodes: dict[str, dict[str, Any]],
        now: float,
    ) -> None:
        rate = float((request or {}).get("rate") or (policy.max_moves_per_second if policy else 100))
        tolerance = float((request or {}).get("tolerance_percent") or (policy.tolerance_percent if policy else 10))
        min_age = float(policy.min_connection_age if policy else 30.0)
        asked = float((request or {}).get("at") or 0.0)  # which one-off request this status answers
        move = self._rebalances.get(fleet)
        if move is None or move.rate != rate:
            move = self._rebalances[fleet] = _Move(rate=rate, started=now, last_tick=now)
        members = {
            n: c
            for n, doc in nodes.items()
            if doc.get("fleet") == fleet
            and front_state(doc) in ("in", "full")
            and n not in self.view.drained
            and (c := self._connections(doc)) is not None
        }
        if len(members) < 2:
            await self._status("fleet", fleet, move, "idle", 0, now, request=asked)
            return
        effective = {n: self._effective(n, nodes[n], now) for n in members}
        mean = sum(effective.values()) / len(effective)
        # Within tolerance: every Envoy within `tolerance` of the mean, above and below (an
        # empty new Envoy is as much out of balance as a full old one). Until then, those
        # above the mean give.
        spread = mean * tolerance / 100
        balanced = all(abs(c - mean) <= spread for c in effective.values())
        excess = {} if balanced else {n: c - mean for n, c in effective.items() if c > mean}
        remaining = round(sum(excess.values()))
        if not excess:
            await self._status("fleet", fleet, move, "balanced", 0, now, mean=mean, request=asked)
            if request is not None:
                await self.etcd.delete(request_key(self.etcd.config.prefix, fleet))
            return
        move.budget = min(move.budget + rate * (now - move.last_tick), 2 * max(1, max(members.values()) // SHARDS))
        move.last_tick = now
        for node in sorted(excess, key=lambda n: -excess[n]):
            estimate = max(1, math.ceil(members[node] / SHARDS))
            if move.budget < estimate:
                break
            if estimate > 2 * excess[node]:
                continue  # one more shard would overshoot the mean by more than it fixes
            if await self._shed_one(node, members[node], estimate, now, min_age, f"rebalance {fleet}"):
                move.budget -= estimate
                move.moved += estimate
        await self._status("fleet", fleet, move, "rebalancing", remaining, now, mean=mean, request=asked)

    async def _status(
        self, kind: str, name: str, move: _Move, state: str, remaining: int, now: float, **extra: Any
    ) -> None:
        elapsed = max(1e-3, now - move.started)
        status = {
            "state": state,
            "moved": move.moved,
            "remaining": remaining,
            "rate": move.rate,
            "observed_rate": round(move.moved / elapsed, 1) if move.moved else 0.0,
            "started": move.started,
            **{k: round(v, 3) for k, v in extra.items()},
        }
        if status == move.status:
            return
        move.status = status
        await self.etcd.put(status_key(self.etcd.config.prefix, kind, name), json.dumps({**status, "at": now}).encode())
