"""Front-tier renderers: deterministic output, correct spreading arithmetic, in-service set."""

from __future__ import annotations

import ipaddress
import re

import pytest

from controlplane.frontdoor.render import (
    Member,
    in_service,
    render_bird,
    render_dns,
    render_iptables,
    render_nftables,
    simulate_iptables,
)


def _members(n: int) -> list[Member]:
    return [Member(f"envoy-{i}", f"203.0.113.{i + 10}") for i in range(n)]


@pytest.mark.parametrize("n", [1, 3, 10])
@pytest.mark.parametrize("mode", ["nth", "random"])
def test_iptables_spreads_new_connections_evenly(n: int, mode: str) -> None:
    rules = render_iptables(_members(n), "198.51.100.1", 443, mode=mode)
    got = simulate_iptables(rules, 10_000, seed=n)
    assert set(got) == {f"{m.address}:443" for m in _members(n)}
    for count in got.values():
        share = count / 10_000
        # nth is exact (±1 connection); random within a few standard deviations.
        assert abs(share - 1 / n) < (0.0002 if mode == "nth" else 0.02), (mode, n, got)


def test_renders_are_deterministic_and_follow_the_set() -> None:
    a = _members(3)
    assert render_dns(a, "example.com", "www") == render_dns(list(reversed(a)), "example.com", "www")
    assert render_iptables(a, "198.51.100.1", 443) == render_iptables(list(reversed(a)), "198.51.100.1", 443)
    assert render_nftables(a, "198.51.100.1", 443) == render_nftables(list(reversed(a)), "198.51.100.1", 443)
    # One Envoy leaves: it disappears from every render.
    b = a[:1] + a[2:]
    for text in (
        render_dns(b, "example.com", "www"),
        render_iptables(b, "198.51.100.1", 443),
        render_nftables(b, "198.51.100.1", 443),
    ):
        assert a[1].address not in text and a[0].address in text


def test_dns_fragment() -> None:
    ms = [Member("e0", "203.0.113.10"), Member("e1", "2001:db8::7"), Member("e2", "203.0.113.2")]
    text = render_dns(ms, "example.com.", "www", ttl=30)
    records = [line.split("\t") for line in text.splitlines() if line.startswith("www")]
    assert [(r[1], r[3], r[4]) for r in records] == [
        ("30", "A", "203.0.113.2"),
        ("30", "A", "203.0.113.10"),
        ("30", "AAAA", "2001:db8::7"),
    ]
    assert "$ORIGIN example.com." in text


def test_bird_announces_only_in_service() -> None:
    on = render_bird(Member("e0", "203.0.113.10"), "198.51.100.1", "192.0.2.1", 65001, 65000, "e0")
    off = render_bird(None, "198.51.100.1", "192.0.2.1", 65001, 65000, "e0")
    assert "route 198.51.100.1/32 blackhole;" in on and "route 198.51.100.1" not in off
    for text in (on, off):
        assert text.count("{") == text.count("}") and "neighbor 192.0.2.1 as 65000;" in text
        assert 'export where proto = "lbcp_vip";' in text


def test_nftables_hash_keeps_clients_while_the_set_is_stable() -> None:
    text = render_nftables(_members(3), "198.51.100.1", 443, mode="hash")
    assert "dnat to jhash ip saddr mod 3 map { 0 : 203.0.113.10, 1 : 203.0.113.11, 2 : 203.0.113.12 }" in text
    assert text.count("{") == text.count("}")
    assert "numgen inc mod 3" in render_nftables(_members(3), "198.51.100.1", 443, mode="numgen")
    assert "no Envoy in service" in render_nftables([], "198.51.100.1", 443)


def _node(fleet: str, acked: int, address: str | None, ok: bool | None = True, **extra: object) -> dict:
    doc: dict = {"fleet": fleet, "acked_revision": acked, "peer": "ipv4:10.9.9.9:5000", **extra}
    if address is not None:
        doc["front"] = {"address": address, "source": "public_address"}
    if ok is not None:
        doc["front_health"] = {"ok": ok, "probed": True}
    return doc


def test_in_service_from_the_fleet_registry() -> None:
    nodes = {
        "a": _node("edge", 10, "203.0.113.1"),
        "b": _node("edge", 9, "10.0.0.2"),  # behind the revision asked about
        "c": _node("edge", 12, "2001:db8::3"),
        "d": _node("other", 12, "10.0.0.4"),
        "e": _node("edge", 12, "10.0.0.5", draining=True),
    }
    assert in_service(nodes, 10, "edge") == [Member("a", "203.0.113.1"), Member("c", "2001:db8::3")]
    assert [m.node_id for m in in_service(nodes, 10)] == ["a", "c", "d"]
    assert [m.node_id for m in in_service(nodes)] == ["a", "b", "c", "d"]  # no revision asked: configured is enough
    nodes["c"]["types"] = {"cds": {"last_nack": {"revision": 13}}}  # stuck on a rejected config
    nodes["b"]["acked_revision"] = 0  # never configured
    assert [m.node_id for m in in_service(nodes)] == ["a", "d"]
    assert all(ipaddress.ip_address(m.address) for m in in_service(nodes))


def test_in_service_needs_a_verified_front_address() -> None:
    """Only the address the replica decided and verified counts: a passing probe there (or
    the fleet's explicit opt-out, recorded as ok by the replica). What the node says about
    itself (metadata, its peer) is never read by the front tier."""
    nodes = {
        "probed-ok": _node("edge", 5, "10.0.0.1"),
        "probed-failing": _node("edge", 5, "10.0.0.2", ok=False),
        "not-probed-yet": _node("edge", 5, "10.0.0.3", ok=None),
        "no-front-address": _node("edge", 5, None, metadata={"public_address": "203.0.113.66"}),
        "self-asserted-only": {
            "fleet": "edge",
            "acked_revision": 5,
            "peer": "ipv4:10.0.0.6:1",
            "metadata": {"public_address": "203.0.113.66"},
        },
    }
    assert [m.node_id for m in in_service(nodes)] == ["probed-ok"]


def _tool(name: str) -> str:
    import shutil

    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert path, f"{name} is not installed: `make` installs it (Debian: bird2, nftables, iptables)"
    return path


def _check(cmd: list[str], text: str, tmp_path, suffix: str) -> None:
    import subprocess

    f = tmp_path / f"render{suffix}"
    f.write_text(text)
    if "-f" in cmd or "-c" in cmd:
        cmd = [*cmd, str(f)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    else:
        run = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, f"{cmd} rejected the render:\n{text}\n{run.stdout}{run.stderr}"


@pytest.mark.parametrize("n", [0, 1, 3, 10])
def test_renders_pass_the_real_tools(n: int, tmp_path) -> None:
    """nft --check, bird -p and iptables-restore --test parse what lbcp renders."""
    ms = _members(n)
    for mode in ("hash", "numgen"):
        _check(
            [_tool("nft"), "--check", "-f"],
            render_nftables(ms, "198.51.100.1", 443, mode=mode),
            tmp_path,
            f"-{mode}.nft",
        )
    for member in (ms[0] if ms else None, None):
        _check(
            [_tool("bird"), "-p", "-c"],
            render_bird(member, "198.51.100.1", "192.0.2.1", 65001, 65000, "envoy-0"),
            tmp_path,
            ".bird",
        )
    _check(
        [_tool("bird"), "-p", "-c"],
        render_bird(Member("v6", "2001:db8::1"), "2001:db8:ffff::1", "2001:db8::fe", 65001, 65000, "v6"),
        tmp_path,
        "-v6.bird",
    )
    for mode in ("nth", "random"):
        _check(
            [_tool("iptables-restore"), "--test"], render_iptables(ms, "198.51.100.1", 443, mode=mode), tmp_path, ".ipt"
        )


def test_the_real_tools_reject_a_broken_render(tmp_path) -> None:
    """The checks above can fail: a corrupted render is refused by each tool."""
    import subprocess

    broken = {
        ".nft": (
            [_tool("nft"), "--check", "-f"],
            render_nftables(_members(3), "198.51.100.1", 443).replace("jhash", "jhsh"),
        ),
        ".bird": (
            [_tool("bird"), "-p", "-c"],
            render_bird(_members(1)[0], "198.51.100.1", "192.0.2.1", 65001, 65000, "e").replace(
                "blackhole", "blakhole"
            ),
        ),
    }
    for suffix, (cmd, text) in broken.items():
        f = tmp_path / f"broken{suffix}"
        f.write_text(text)
        assert subprocess.run([*cmd, str(f)], capture_output=True, timeout=30).returncode != 0, suffix
    ipt = render_iptables(_members(3), "198.51.100.1", 443).replace("--every", "--evry")
    assert (
        subprocess.run(
            [_tool("iptables-restore"), "--test"], input=ipt.encode(), capture_output=True, timeout=30
        ).returncode
        != 0
    )


def _nft_map(text: str) -> list[str]:
    """The DNAT map of a rendered nftables ruleset, as the address of each jhash value 0..k-1
    (read from the text nft loads, not from the renderer's own helpers)."""
    m = re.search(r"jhash ip saddr mod (\d+) map \{(.*?)\}", text, re.S)  # on one line or many
    assert m, text
    pairs = [item.strip().split(" : ") for item in m.group(2).split(",") if item.strip()]
    assert [int(k) for k, _ in pairs] == list(range(int(m.group(1)))), "the map covers every jhash value once, in order"
    return [v for _, v in pairs]


@pytest.mark.parametrize("n", [3, 10, 50])
def test_nftables_maglev_keeps_clients_when_the_set_changes(n: int, tmp_path) -> None:
    """maglev mode: every Envoy owns slots/N ±1 slots, and when one leaves only its own
    slots move (plus Maglev's few percent); `hash` mod N would move most clients."""
    from collections import Counter

    from controlplane.frontdoor.render import MAGLEV_SLOTS, maglev_slots

    ms = _members(n)
    gone = ms[1]
    rest = [m for m in ms if m != gone]
    text = render_nftables(ms, "198.51.100.1", 443, mode="maglev")
    before = _nft_map(text)
    after = _nft_map(render_nftables(rest, "198.51.100.1", 443, mode="maglev"))
    assert before == [m.address for m in maglev_slots(ms)]
    for table, members in ((before, ms), (after, rest)):
        owners = Counter(table)
        assert len(table) == MAGLEV_SLOTS and set(owners) == {m.address for m in members}
        assert max(owners.values()) - min(owners.values()) <= 1, owners
    # The departed Envoy's slots are re-spread over the others (not handed to one), and the
    # others' slots almost all stay where they were.
    inherited = Counter(b for a, b in zip(before, after, strict=True) if a == gone.address)
    assert len(inherited) >= min(n - 1, 5) and max(inherited.values()) <= 3 * MAGLEV_SLOTS / n / (n - 1) + 3, inherited
    stayed = [a == b for a, b in zip(before, after, strict=True) if a != gone.address]
    moved = stayed.count(False) / len(stayed)
    assert moved < 0.06, f"{moved:.1%} of other clients moved"
    # Against `hash` mode (jhash mod N into the rendered map), for the same departure: the
    # share of clients of the staying Envoys that a uniform jhash sends elsewhere.
    hash_before = _nft_map(render_nftables(ms, "198.51.100.1", 443, mode="hash"))
    hash_after = _nft_map(render_nftables(rest, "198.51.100.1", 443, mode="hash"))
    assert len(hash_before) == n and len(hash_after) == n - 1
    span = n * (n - 1) * 20  # a whole number of periods of both maps
    kept = [hash_before[h % n] == hash_after[h % (n - 1)] for h in range(span) if hash_before[h % n] != gone.address]
    assert kept.count(False) / len(kept) > 0.4 > moved
    assert f"jhash ip saddr mod {MAGLEV_SLOTS} map {{\n        0 : {before[0]},\n        1 : {before[1]},\n" in text
    _check([_tool("nft"), "--check", "-f"], text, tmp_path, ".nft")
    assert render_nftables(list(reversed(ms)), "198.51.100.1", 443, mode="maglev") == text


def test_front_state_says_why_a_node_is_out() -> None:
    from controlplane.frontdoor.render import FRONT_STATES, front_state

    ok = _node("edge", 5, "10.0.0.1")
    cases = {
        "in": ok,
        "drained": {**ok, "draining": True},
        "unconfigured": {**ok, "acked_revision": 0},
        "rejected": {**ok, "types": {"lds": {"last_nack": {"revision": 9}}}},
        "unverified": _node("edge", 5, None),
        "unhealthy": _node("edge", 5, "10.0.0.1", ok=False),
        "full": {**ok, "load": {"connections": 95, "full": True}},
    }
    for want, doc in cases.items():
        assert front_state(doc) == want, want
    assert front_state(ok, revision=6) == "behind"
    assert set(cases) | {"behind", "kept-full"} == set(FRONT_STATES)  # kept-full: tests/.../test_floor.py


def test_by_headroom_fills_the_emptiest_first_and_rotates_within_a_band() -> None:
    from controlplane.frontdoor.render import by_headroom

    members = [
        Member("old-1", "10.0.0.1", 0.12),
        Member("old-2", "10.0.0.2", 0.15),
        Member("new", "10.0.0.3", 0.97),
        Member("mid", "10.0.0.4", 0.55),
    ]
    assert [[m.node_id for m in b] for b in by_headroom(members)] == [["new"], ["mid"], ["old-1", "old-2"]]
    no_capacity = [Member("a", "10.0.0.1"), Member("b", "10.0.0.2")]
    assert by_headroom(no_capacity) == [no_capacity]  # one band: plain rotation, as without load
    # Bands are anchored at the emptiest: equal Envoys either side of a round number share one.
    equal = [Member("a", "10.0.0.1", 0.501), Member("b", "10.0.0.2", 0.499), Member("c", "10.0.0.3", 0.44)]
    assert [[m.node_id for m in b] for b in by_headroom(equal)] == [["a", "b"], ["c"]]


def test_maglev_gives_an_idle_envoy_more_slots_and_moves_few_existing_ones() -> None:
    from collections import Counter

    from controlplane.frontdoor.render import MAGLEV_SLOTS, maglev_slots

    full = [Member(f"e{i}", f"10.0.0.{i}", 0.1) for i in range(1, 4)]
    before = maglev_slots(full)
    grown = maglev_slots([*full, Member("e4", "10.0.0.4", 1.0)])
    share = sum(1 for m in grown if m.node_id == "e4") / MAGLEV_SLOTS
    assert share > 0.5, share  # weight 1.1 against 0.2 each: the idle Envoy takes most new flows
    # Each Envoy's share follows its weight (1.1 of 1.7 for e4, 0.2 of 1.7 for each other),
    # and the old Envoys, equal in weight, stay equal in slots.
    owners = Counter(m.node_id for m in grown)
    assert set(owners) == {"e1", "e2", "e3", "e4"}
    assert abs(share - 1.1 / 1.7) < 0.04, owners
    old = [owners[f"e{i}"] for i in range(1, 4)]
    assert max(old) - min(old) <= 2, owners
    # Existing flows of the old Envoys move only where the new one takes their slots: each
    # old Envoy's slots now are (almost all) slots it had before, and e4 took its slots from
    # every old Envoy about equally.
    for name in ("e1", "e2", "e3"):
        had = {i for i, m in enumerate(before) if m.node_id == name}
        has = {i for i, m in enumerate(grown) if m.node_id == name}
        assert len(has - had) <= 0.05 * len(has), (name, len(has - had), len(has))
    taken = Counter(a.node_id for a, b in zip(before, grown, strict=True) if b.node_id == "e4")
    assert set(taken) == {"e1", "e2", "e3"} and max(taken.values()) - min(taken.values()) <= 0.1 * owners["e4"], taken
    moved_elsewhere = sum(1 for a, b in zip(before, grown, strict=True) if b.node_id not in (a.node_id, "e4"))
    assert moved_elsewhere / MAGLEV_SLOTS < 0.06, moved_elsewhere
