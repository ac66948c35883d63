"""The front tier, rendered from the fleet's live state: DNS records, BIRD anycast
announcements, iptables and nftables L4 sharding rules.

Pure functions. Each takes the in-service Envoys and returns text, deterministically: the
same set renders byte-identical output (members are sorted), so a sidecar that reloads
on change reloads only when the set changed.

An Envoy is *in service* when its xDS stream is up, it has acked its config (everything up
to the revision the caller asks about), it is not drained, and its own front health check
passes at its front address (the replica's last probe of its `/healthz` there,
controlplane.xds.probe) (`in_service()`). The front address is the one the replica decided
from trusted facts (the stream's peer address, or `public_address` inside a CIDR allowed for
the fleet) and verified by that probe; what a client asserts about itself is never used
directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.etcd import Etcd
    from controlplane.xds.registry import FleetView

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from controlplane.intent.model import DEFAULT_MIN_IN_SERVICE


@dataclass(frozen=True, order=True)
class Member:
    node_id: str
    address: str
    # Free share of its capacity (0..1, from the replica's load sample); None without one.
    headroom: float | None = field(default=None, compare=False)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


def in_service(
    nodes: dict[str, dict[str, Any]],
    revision: int | None = None,
    fleet: str | None = None,
    floors: dict[str, int] | None = None,
) -> list[Member]:
    """Members from a fleet-registry view (`read_fleet(...).nodes`), sorted by node id.

    In service: connected (it is in the registry), not draining, configured (it has acked a
    config), not stuck on a rejected one (no NACK newer than its last full ACK), and the
    replica verified its front address (its `/healthz` there passed the last probe, or its
    fleet opts out of probing); with `revision`, it must also have acked that revision.
    Envoys at high water are out, except those the fleet's floor keeps (`front_states`).
    `fleet` keeps one fleet's nodes; `floors` maps a fleet to its `min_in_service`."""
    states = front_states(nodes, revision, floors, fleet)
    out = []
    for node_id, state in states.items():
        if state in SERVING:
            doc = nodes[node_id]
            out.append(Member(node_id, doc["front"]["address"], (doc.get("load") or {}).get("headroom")))
    return sorted(out)


def front_states(
    nodes: dict[str, dict[str, Any]],
    revision: int | None = None,
    floors: dict[str, int] | None = None,
    fleet: str | None = None,
) -> dict[str, str]:
    """Each node's `front_state`, with the fleet's floor applied: when fewer of a fleet's
    Envoys than its `min_in_service` are `in` and some are out only for being `full`, the
    least full of those stay in the front door as `kept-full` (static stability: an
    overloaded fleet still answers, spread over what it has, rather than not at all).
    Nothing else is kept: a drained, unhealthy or unconfigured Envoy is out on evidence."""
    states: dict[str, str] = {}
    fleets: dict[str, list[str]] = {}
    for node_id, doc in nodes.items():
        name = doc.get("fleet") or ""
        if fleet is not None and name != fleet:
            continue
        states[node_id] = front_state(doc, revision)
        fleets.setdefault(name, []).append(node_id)
    for name, ids in fleets.items():
        short = (floors or {}).get(name, DEFAULT_MIN_IN_SERVICE) - sum(states[i] == "in" for i in ids)
        if short <= 0:
            continue
        full = sorted((i for i in ids if states[i] == "full"), key=lambda i: (_fill(nodes[i]), i))
        for node_id in full[:short]:
            states[node_id] = "kept-full"
    return states


def _fill(doc: dict[str, Any]) -> float:
    fill = (doc.get("load") or {}).get("fill")
    return float(fill) if isinstance(fill, int | float) else 1.0


FRONT_STATES = (
    "in",
    "kept-full",
    "drained",
    "unconfigured",
    "behind",
    "rejected",
    "unverified",
    "unhealthy",
    "full",
)
SERVING = ("in", "kept-full")  # the states that put an Envoy in front of clients


def front_state(doc: dict[str, Any], revision: int | None = None) -> str:
    """Why a registry record is in front of clients or not, the first reason that applies:
    `drained` (by an operator), `unconfigured` (no config acked yet), `behind` (has not acked
    `revision`), `rejected` (stuck on a NACKed config), `unverified` (no trusted front
    address), `unhealthy` (its `/healthz` at that address fails or was not probed yet),
    `full` (at its fleet's high water, until it drops below low water), or `in`. One record
    alone never says `kept-full`: that takes the fleet (`front_states`)."""
    acked = doc.get("acked_revision", 0)
    if doc.get("draining"):
        return "drained"
    if acked <= 0:
        return "unconfigured"
    if revision is not None and acked < revision:
        return "behind"
    if any((st.get("last_nack") or {}).get("revision", 0) > acked for st in doc.get("types", {}).values()):
        return "rejected"
    address = (doc.get("front") or {}).get("address")
    try:
        ipaddress.ip_address(address if isinstance(address, str) else "")
    except ValueError:
        return "unverified"
    if not (doc.get("front_health") or {}).get("ok"):
        return "unhealthy"
    if (doc.get("load") or {}).get("full"):
        return "full"
    return "in"


def by_headroom(members: list[Member], band: float = 0.05) -> list[list[Member]]:
    """Members in bands of similar headroom, the most free band first: each band is the most
    free member left and every other within `band` (a share of capacity) of it; members
    without a capacity count as empty. The DNS answer fills the emptiest Envoy until it is
    as full as the next (bands anchored at the emptiest, not fixed steps that would split
    equal Envoys at a boundary) and rotates among Envoys of a band, so clients that resolved
    from one stale sample do not all pile onto one Envoy."""
    left = sorted(members, key=lambda m: (-(1.0 if m.headroom is None else m.headroom), m))
    bands = []
    while left:
        top = 1.0 if left[0].headroom is None else left[0].headroom
        n = next((i for i, m in enumerate(left) if top - (1.0 if m.headroom is None else m.headroom) > band), len(left))
        bands.append(sorted(left[:n]))
        left = left[n:]
    return bands


# -- DNS -----------------------------------------------------------------------------------------


def render_dns(members: list[Member], zone: str, name: str, ttl: int = 60) -> str:
    """A zone-file fragment: one A/AAAA record per in-service Envoy (round robin by the resolver)."""
    zone = zone.rstrip(".") + "."
    lines = [f"; lbcp front door for {name}.{zone} ({len(members)} in service)", f"$ORIGIN {zone}"]
    for m in sorted(members, key=lambda m: (m.family, ipaddress.ip_address(m.address))):
        lines.append(f"{name}\t{ttl}\tIN\t{'A' if m.family == 4 else 'AAAA'}\t{m.address}\t; {m.node_id}")
    return "\n".join(lines) + "\n"


# -- anycast / ECMP (BIRD 2) ------------------------------------------------------------------------


def render_bird(member: Member | None, vip: str, neighbor: str, local_as: int, peer_as: int, node_id: str) -> str:
    """BIRD 2 config for one Envoy host: announce the anycast `vip` while that Envoy is in
    service (`member` is not None), withdraw it otherwise (the route is simply absent)."""
    net = ipaddress.ip_network(vip if "/" in vip else f"{vip}/{32 if ':' not in vip else 128}", strict=False)
    channel = "ipv4" if net.version == 4 else "ipv6"
    state = "in service: announced" if member is not None else "not in service: withdrawn"
    route = f"    route {net} blackhole;" if member is not None else "    # no route: the VIP is withdrawn"
    return "\n".join(
        [
            f"# lbcp front door for {node_id}: anycast {net} ({state})",
            "protocol static lbcp_vip {",
            f"  {channel};",
            route,
            "}",
            "protocol bgp lbcp_upstream {",
            f"  local as {local_as};",
            f"  neighbor {neighbor} as {peer_as};",
            f"  {channel} {{",
            "    import none;",
            '    export where proto = "lbcp_vip";',
            "  };",
            "}",
            "",
        ]
    )


# -- L4 sharding ------------------------------------------------------------------------------------


def render_iptables(
    members: list[Member], vip: str, port: int, mode: str = "nth", chain: str = "LBCP_FRONTDOOR"
) -> str:
    """iptables-restore input (nat table) that DNATs new TCP connections to `vip:port` over
    the in-service Envoys.

    `nth`: rule i (of N) matches every (N-i)-th packet reaching it, so each target gets
    exactly 1/N of new connections in turn. `random`: rule i matches with probability
    1/(N-i), so each gets 1/N on average. Both are per new connection (conntrack keeps an
    established one on its target), but when the set changes, new connections of the same
    client may land elsewhere; `render_nftables(..., mode="hash")` keeps clients in place.
    """
    ms = [m for m in sorted(members) if m.family == 4]
    lines = ["*nat", f":{chain} - [0:0]", f"-A PREROUTING -d {vip}/32 -p tcp --dport {port} -j {chain}"]
    n = len(ms)
    for i, m in enumerate(ms):
        left = n - i
        if left == 1:
            match = ""
        elif mode == "nth":
            match = f"-m statistic --mode nth --every {left} --packet 0 "
        elif mode == "random":
            match = f"-m statistic --mode random --probability {1 / left:.11f} "
        else:
            raise ValueError(f"unknown mode {mode!r}: nth or random")
        lines.append(
            f"-A {chain} -p tcp {match}-m comment --comment {m.node_id} -j DNAT --to-destination {m.address}:{port}"
        )
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


MAGLEV_SLOTS = 1021  # prime; ≥ 5 slots per Envoy up to 200 Envoys


MAP_LINE_ENTRIES = 8  # a map literal of more entries than this is written one entry a line


def _nft_map(entries: list[str]) -> str:
    """An nftables map literal: on one line when short, else one entry a line (a maglev table
    has 1021), as `nft list ruleset` writes it, so a diff of two renders shows what moved."""
    if len(entries) <= MAP_LINE_ENTRIES:
        return "{ " + ", ".join(entries) + " }"
    return "{\n" + ",\n".join(f"        {e}" for e in entries) + "\n    }"


def maglev_slots(members: list[Member], slots: int = MAGLEV_SLOTS) -> list[Member]:
    """A Maglev lookup table over the members (keyed by node id): slot i → its Envoy. Each
    Envoy owns slots/N ±1 slots; when one leaves, its slots are re-spread and almost every
    other slot keeps its Envoy (Maglev's minimal disruption)."""
    from controlplane.ring.tables import MaglevTable, RingHost

    if not members:
        return []
    by_id = {m.node_id: m for m in members}
    # Weighted by headroom in tenths (an idle Envoy gets more new flows; a near-full one keeps
    # a tenth's weight): quantizing keeps the table from moving at every sample.
    weights = [1.0 if m.headroom is None else 0.1 + round(m.headroom, 1) for m in members]
    hosts = [(RingHost(m.node_id, m.address, 0, hash_key=m.node_id), w) for m, w in zip(members, weights, strict=True)]
    table = MaglevTable(hosts, 1.0, slots)
    return [by_id[table.names[i]] for i in table.table]


def render_nftables(
    members: list[Member],
    vip: str,
    port: int,
    mode: str = "hash",
    table: str = "lbcp_frontdoor",
    slots: int = MAGLEV_SLOTS,
) -> str:
    """nftables ruleset. `numgen`: round robin (like iptables nth). `hash`: jhash of the
    client address mod N, so a client keeps its Envoy while the set is unchanged, but a
    change of N re-spreads most clients. `maglev`: jhash mod `slots` into a Maglev table,
    so when an Envoy leaves or joins only the clients of the slots that moved change Envoy
    (about 1/N of them), everyone else stays."""
    if mode not in ("hash", "numgen", "maglev"):
        raise ValueError(f"unknown mode {mode!r}: hash, maglev or numgen")
    ms = [m for m in sorted(members) if m.family == 4]
    if not ms:
        body = "    # no Envoy in service: nothing to DNAT to"
    elif mode == "maglev":
        targets = _nft_map([f"{i} : {m.address}" for i, m in enumerate(maglev_slots(ms, slots))])
        body = f"    ip daddr {vip} tcp dport {port} dnat to jhash ip saddr mod {slots} map {targets}"
    else:
        targets = _nft_map([f"{i} : {m.address}" for i, m in enumerate(ms)])
        pick = f"jhash ip saddr mod {len(ms)}" if mode == "hash" else f"numgen inc mod {len(ms)}"
        body = f"    ip daddr {vip} tcp dport {port} dnat to {pick} map {targets}"
    return "\n".join(
        [
            f"# lbcp front door: {len(ms)} Envoys in service ({', '.join(m.node_id for m in ms)})",
            f"table ip {table} {{",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            body,
            "  }",
            "}",
            "",
        ]
    )


# -- arithmetic, for tests and for operators who want to check a ruleset ---------------------------


@dataclass
class _Rule:
    dest: str
    every: int | None
    packet: int
    p: float | None
    count: int = 0


def simulate_iptables(rules_text: str, syns: int, seed: int = 0) -> dict[str, int]:
    """Feed `syns` new connections through rendered iptables rules (nth counters per rule,
    random draws seeded) and count where each lands."""
    import random
    import re

    rnd = random.Random(seed)
    rules: list[_Rule] = []
    for line in rules_text.splitlines():
        if "--to-destination" not in line:
            continue
        dest = line.rsplit("--to-destination ", 1)[1].strip()
        nth = re.search(r"--every (\d+) --packet (\d+)", line)
        prob = re.search(r"--probability ([0-9.]+)", line)
        rules.append(
            _Rule(
                dest,
                every=int(nth.group(1)) if nth else None,
                packet=int(nth.group(2)) if nth else 0,
                p=float(prob.group(1)) if prob else None,
            )
        )
    out: dict[str, int] = {}
    for _ in range(syns):
        for r in rules:
            if r.every is not None:
                hit = r.count % r.every == r.packet
                r.count += 1  # the nth counter counts every packet that reaches the rule
            elif r.p is not None:
                hit = rnd.random() < r.p
            else:
                hit = True
            if hit:
                out[r.dest] = out.get(r.dest, 0) + 1
                break
    return out


# -- following the in-service set -------------------------------------------------------------


def _with_headroom(members: list[Member]) -> list[tuple[Member, float | None]]:
    return [(m, m.headroom) for m in members]


STALE_HOLD = 60.0  # seconds a member is kept after its record vanished without evidence


class StableFront:
    """The in-service set, statically stable against control-plane trouble.

    Only evidence about an Envoy takes it out of the front door: its own state in its record
    (drained, unhealthy, full, behind, …), or its record deleted by the replica that served
    it (its stream ended), which that replica's heartbeat vouches for (`complete`: every
    stream it serves is recorded). A record that vanished otherwise, with a lease that
    lapsed (etcd paused, a replica stalled or restarting, a reconnect storm) or a replica
    still re-registering, says nothing about the Envoy: it stays in front, `stale`, for at
    most `hold` seconds or until its record is back. The same for every read that fails:
    the last set stands."""

    def __init__(self, hold: float = STALE_HOLD) -> None:
        self.hold = hold
        self._known: dict[str, tuple[Member, str | None]] = {}  # node -> (member, its replica)
        self._missing: dict[str, float] = {}  # node -> when its record vanished (monotonic)
        self.stale: list[Member] = []

    def members(self, view: FleetView, revision: int | None = None, fleet: str | None = None) -> list[Member]:
        import time

        live = in_service(view.nodes, revision, fleet, view.floors)
        known = {m.node_id: (m, view.nodes[m.node_id].get("replica")) for m in live}
        now = time.monotonic()
        stale = []
        for node_id, (m, replica) in self._known.items():
            if node_id in known or node_id in view.nodes or node_id in view.drained:
                continue  # present: its record (or an operator's drain) decides
            beat = view.replicas.get(replica or "")
            if beat is not None and beat.get("complete"):
                continue  # its replica recorded every stream it serves: this one ended
            since = self._missing.setdefault(node_id, now)
            if now - since <= self.hold:
                stale.append(m)
                known[node_id] = (m, replica)
        self._missing = {n: t for n, t in self._missing.items() if n in known and n not in view.nodes}
        self._known = known
        self.stale = sorted(stale)
        return sorted(m for m, _ in known.values())


async def follow(
    etcd: Etcd, fleet: str | None = None, interval: float = 0.5, front: StableFront | None = None
) -> AsyncIterator[list[Member]]:
    """Yield the in-service set now, then each time it or a member's headroom changes (read
    from etcd every `interval` seconds; a read that fails is retried at the next tick, and
    the last set stands meanwhile), kept statically stable by `front` (StableFront: an
    Envoy leaves on evidence about it, never because the registry is in trouble).
    Withdrawal takes at most: the replica's probe interval + its registry flush + `interval`."""
    import asyncio

    from controlplane.intent.errors import StoreError
    from controlplane.xds.registry import read_fleet

    front = front or StableFront()
    last: list[Member] | None = None
    while True:
        members: list[Member] | None
        try:
            view = await read_fleet(etcd)
            members = front.members(view, fleet=fleet)
        except StoreError:
            members = last
        # Members compare without their headroom (renders sort and diff by identity), but the
        # DNS order follows headroom, so a change of load alone is a change here.
        if members is not None and (last is None or _with_headroom(members) != _with_headroom(last)):
            last = members
            yield members
        await asyncio.sleep(interval)
