"""Front-tier renderers: deterministic output, correct spreading arithmetic, in-service set."""

from __future__ import annotations

import ipaddress

import pytest

from controlplane.frontdoor import Member, in_service, render_bird, render_dns, render_iptables, render_nftables, simulate_iptables


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
    for text in (render_dns(b, "example.com", "www"), render_iptables(b, "198.51.100.1", 443), render_nftables(b, "198.51.100.1", 443)):
        assert a[1].address not in text and a[0].address in text


def test_dns_fragment() -> None:
    ms = [Member("e0", "203.0.113.10"), Member("e1", "2001:db8::7"), Member("e2", "203.0.113.2")]
    text = render_dns(ms, "example.com.", "www", ttl=30)
    records = [line.split("\t") for line in text.splitlines() if line.startswith("www")]
    assert [(r[1], r[3], r[4]) for r in records] == [("30", "A", "203.0.113.2"), ("30", "A", "203.0.113.10"), ("30", "AAAA", "2001:db8::7")]
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


def test_in_service_from_the_fleet_registry() -> None:
    nodes = {
        "a": {"fleet": "edge", "acked_revision": 10, "metadata": {"public_address": "203.0.113.1"}, "peer": "ipv4:10.0.0.1:5000"},
        "b": {"fleet": "edge", "acked_revision": 9, "peer": "ipv4:10.0.0.2:5000"},  # behind the revision asked about
        "c": {"fleet": "edge", "acked_revision": 12, "peer": "ipv6:[2001:db8::3]:5000"},
        "d": {"fleet": "other", "acked_revision": 12, "peer": "ipv4:10.0.0.4:5000"},
        "e": {"fleet": "edge", "acked_revision": 12, "peer": "ipv4:10.0.0.5:5000", "draining": True},
    }
    assert in_service(nodes, 10, "edge") == [Member("a", "203.0.113.1"), Member("c", "2001:db8::3")]
    assert [m.node_id for m in in_service(nodes, 10)] == ["a", "c", "d"]
    assert [m.node_id for m in in_service(nodes)] == ["a", "b", "c", "d"]  # no revision asked: configured is enough
    nodes["c"]["types"] = {"cds": {"last_nack": {"revision": 13}}}  # stuck on a rejected config
    nodes["b"]["acked_revision"] = 0  # never configured
    assert [m.node_id for m in in_service(nodes)] == ["a", "d"]
    assert all(ipaddress.ip_address(m.address) for m in in_service(nodes))
