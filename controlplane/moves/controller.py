"""The mover: sheds shards of connections off chosen Envoys at a paced rate (evacuation of a
drained node, rebalancing a fleet), while the front tier sends the reconnects to the
emptiest Envoys; and divides fleet-scope rate limits over the Envoys by their load
(shares.py), since it already reads that load.

One replica at a time moves connections (a lease-held key, `_runtime/moves/leader`); the
others stand by and take over within the lease's TTL. Each tick (`interval`) it reads what
there is to do from its intent view (drain records with `evacuate`, fleets with `rebalance`)
and the one-off requests, and only then the fleet registry (live load per Envoy). What to
shed is decided by `policy.Planner` (no IO: the fleet model runs the same code); this module
does the IO: the shed records, the status, the leadership.

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
from typing import Any

from aetcd import rpc

from controlplane.errors import StoreError
from controlplane.etcd import Etcd, prefix_end
from controlplane.frontdoor.render import front_state
from controlplane.intent.keyspace import Keyspace
from controlplane.intent.view import IntentView
from controlplane.moves import shares
from controlplane.moves.policy import Planner, Progress, Sample, Shed
from controlplane.moves.shed import shed
from controlplane.xds.registry import read_fleet

log = logging.getLogger(__name__)

LEASE_TTL = 5


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


class Mover:
    def __init__(self, etcd: Etcd, view: IntentView, replica_id: str, interval: float = 0.25) -> None:
        self.etcd = etcd
        self.view = view
        self.replica_id = replica_id
        self.interval = interval
        self.leader = False
        self.sheds = 0
        self.divisions = 0  # fleet-scope rate-limit divisions written
        self._divided_at = -math.inf
        self._keys = Keyspace(etcd.config.prefix)
        self._lease = 0
        self.planner = Planner()
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
        if (await self.etcd.range(key, keys_only=True)).kvs:
            return False  # another replica leads: one read, no lease to grant and revoke
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
        last_lead = -math.inf
        while True:
            await asyncio.sleep(self.interval)
            try:
                # The leader renews its lease, a standby looks for a free seat, both every
                # TTL/3: a dead leader is replaced within TTL + TTL/3.
                if time.monotonic() - last_lead > LEASE_TTL / 3:
                    last_lead = time.monotonic()
                    await self._lead()
                if not self.leader:
                    continue
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
        divide = self._division_due()
        if not (evacuate or fleets or requests or divide or self.planner.evacuations or self.planner.rebalances):
            return
        nodes = (await read_fleet(self.etcd)).nodes
        if divide:
            await self._divide(nodes)
        for node in list(self.planner.evacuations):
            if node not in evacuate:
                self.planner.evacuations.pop(node)  # undrained, or the evacuation was replaced by a plain drain
        for node, rate in evacuate.items():
            await self._evacuate(node, rate, nodes.get(node), now)
        for fleet in set(fleets) | set(requests) | set(self.planner.rebalances):
            policy = fleets.get(fleet)
            request = requests.get(fleet)
            if policy is None and request is None:
                self.planner.rebalances.pop(fleet, None)
                continue
            await self._rebalance(fleet, policy, request, nodes, now)

    # -- fleet-scope rate limits -------------------------------------------------------------

    def _division_due(self) -> bool:
        """Every `shares.INTERVAL` while some route has a fleet-scope rate limit."""
        now = time.monotonic()
        if now - self._divided_at < shares.INTERVAL:
            return False
        self._divided_at = now
        return any(
            s.obj.rate_limit is not None and s.obj.rate_limit.scope == "fleet" for s in self.view.routes.values()
        )

    async def _divide(self, nodes: dict[str, dict[str, Any]]) -> None:
        """Divide each fleet's limits over its Envoys (controlplane/moves/shares.py); write a
        fleet's record only when the division moved beyond the tolerance."""
        by_fleet: dict[str, dict[str, int]] = {}
        out: dict[str, set[str]] = {}
        for node, doc in nodes.items():
            fleet = doc.get("fleet") or ""
            sample = Sample.of(doc)
            by_fleet.setdefault(fleet, {})[node] = sample.connections if sample is not None else 0
            if node in self.view.drained or front_state(doc) not in shares.IN_SERVICE:
                out.setdefault(fleet, set()).add(node)
        for fleet, connections in by_fleet.items():
            new = shares.divide(connections, out.get(fleet, set()))
            if shares.needs_update(self.view.shares.get(fleet), new):
                await shares.write_shares(self.etcd, fleet, new, connections)
                log.info("fleet %s: rate-limit shares %s", fleet, new)
                self.divisions += 1

    async def _requests(self) -> dict[str, dict[str, Any]]:
        root = moves_root(self.etcd.config.prefix) + b"requests/"
        got = await self.etcd.range(root, prefix_end(root))
        out = {}
        for kv in got.kvs:
            with contextlib.suppress(ValueError):
                out[urllib.parse.unquote(kv.key[len(root) :].decode())] = json.loads(kv.value)
        return out

    async def _shed(self, sheds: list[Shed], why: str) -> None:
        for d in sheds:
            await shed(self.etcd, d.node, [d.shard], reason=why)
            log.info("%s: shard %d of %s (%d connections, ~%d to go)", why, d.shard, d.node, d.connections, d.estimate)
            self.sheds += 1

    async def _evacuate(self, node: str, rate: float, doc: dict[str, Any] | None, now: float) -> None:
        sheds, progress = self.planner.evacuate(node, rate, Sample.of(doc), doc is not None, now)
        await self._shed(sheds, "evacuate")
        await self._status("node", node, progress, now)

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
        members = {
            n: sample
            for n, doc in nodes.items()
            if doc.get("fleet") == fleet
            and front_state(doc) in ("in", "full")
            and n not in self.view.drained
            and (sample := Sample.of(doc)) is not None
        }
        sheds, progress = self.planner.rebalance(fleet, rate, tolerance, min_age, members, now)
        await self._shed(sheds, f"rebalance {fleet}")
        progress.extra["request"] = asked
        await self._status("fleet", fleet, progress, now)
        if progress.done and request is not None:
            await self.etcd.delete(request_key(self.etcd.config.prefix, fleet))

    async def _status(self, kind: str, name: str, progress: Progress, now: float) -> None:
        move = progress.move
        elapsed = max(1e-3, now - move.started)
        status = {
            "state": progress.state,
            "moved": move.moved,
            "remaining": progress.remaining,
            "rate": move.rate,
            "observed_rate": round(move.moved / elapsed, 1) if move.moved else 0.0,
            "started": move.started,
            **{k: round(v, 3) for k, v in progress.extra.items()},
        }
        if status == move.status:
            return
        move.status = status
        await self.etcd.put(status_key(self.etcd.config.prefix, kind, name), json.dumps({**status, "at": now}).encode())
