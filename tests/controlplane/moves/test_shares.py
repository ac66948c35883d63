"""Dividing fleet-scope rate limits: the division, when it is rewritten, and what a node not
yet divided gets."""

from __future__ import annotations

import json

from controlplane.intent.keyspace import Keyspace
from controlplane.intent.view import IntentView
from controlplane.moves import shares
from controlplane.xds.snapshot import share_of


def test_shares_follow_live_connections_and_out_of_service_envoys_give_theirs_back() -> None:
    assert shares.divide({"a": 600, "b": 300, "c": 100}) == {"a": 0.6, "b": 0.3, "c": 0.1}
    # b leaves the front tier: its share is 0 and a and c divide the whole limit.
    assert shares.divide({"a": 600, "b": 300, "c": 100}, {"b"}) == {"a": 0.8571, "b": 0.0, "c": 0.1429}
    # No connections anywhere: even shares; a fresh Envoy gets a sliver, never nothing.
    assert shares.divide({"a": 0, "b": 0}) == {"a": 0.5, "b": 0.5}
    assert shares.divide({"a": 999, "b": 0})["b"] == 0.001
    assert shares.divide({"a": 5}, {"a"}) == {"a": 0.0}


def test_a_division_is_rewritten_only_beyond_the_tolerance_or_for_membership() -> None:
    old = {"a": 0.6, "b": 0.3, "c": 0.1}
    assert shares.needs_update(None, old)
    assert not shares.needs_update(old, {"a": 0.63, "b": 0.28, "c": 0.09})
    assert shares.needs_update(old, {"a": 0.7, "b": 0.2, "c": 0.1})  # 10 points moved
    assert shares.needs_update(old, {"a": 0.6, "b": 0.4})  # c left the registry
    assert shares.needs_update(old, {"a": 0.6, "b": 0.3, "c": 0.0})  # c left the front tier
    assert shares.needs_update({"a": 0.0, "b": 1.0}, {"a": 0.01, "b": 0.99})  # a is back


def test_a_node_the_division_does_not_list_gets_an_even_share() -> None:
    division = {"edge": {"a": 0.75, "b": 0.25, "c": 0.0}}
    assert share_of(division, "edge", "a") == 0.75
    assert share_of(division, "edge", "c") == 0.0
    assert share_of(division, "edge", "new") == round(1 / 3, 4)  # beside the two in service
    assert share_of(division, "other", "a") is None  # a fleet never divided: the whole limit


async def test_the_view_reads_the_division_and_ignores_a_broken_record(etcd) -> None:
    keys = Keyspace(etcd.config.prefix)
    view = IntentView(etcd)
    await shares.write_shares(etcd, "edge/1", {"a": 0.6, "b": 0.4}, {"a": 6, "b": 4})
    await etcd.put(keys.share_key("broken"), b"{not json")
    await view.load_once()
    assert view.shares == {"edge/1": {"a": 0.6, "b": 0.4}}
    record = json.loads((await etcd.range(keys.share_key("edge/1"))).kvs[0].value)
    assert record["connections"] == {"a": 6, "b": 4}
