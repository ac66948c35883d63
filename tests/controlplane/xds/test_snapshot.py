"""Snapshots: content versions and the consistency check that guards publishing."""

from __future__ import annotations

import pytest

from controlplane.intent.model import Backend, Cluster, Listener, Route
from controlplane.xds import resources as res
from controlplane.xds.snapshot import InconsistentSnapshot, Snapshot, make_entry, set_version


def _entries():
    c = make_entry(res.CLUSTER_TYPE, "web", res.cluster_resource(Cluster(name="web")))
    e = make_entry(
        res.ENDPOINT_TYPE, "web", res.load_assignment("web", [Backend(name="a", address="10.0.0.1", port=80)])
    )
    lst = make_entry(res.LISTENER_TYPE, "http", res.listener_resource(Listener(name="http", port=80)))
    rc = make_entry(
        res.ROUTE_TYPE,
        "http",
        res.route_configuration("http", [Route(name="r", listener="http", backends=[{"cluster": "web"}])]),
    )
    return c, e, lst, rc


def test_versions_are_content_hashes() -> None:
    a = make_entry(res.CLUSTER_TYPE, "web", res.cluster_resource(Cluster(name="web")))
    b = make_entry(res.CLUSTER_TYPE, "web", res.cluster_resource(Cluster(name="web")))
    c = make_entry(res.CLUSTER_TYPE, "web", res.cluster_resource(Cluster(name="web", connect_timeout="2s")))
    assert a.version == b.version != c.version
    assert set_version({"web": a}) == set_version({"web": b}) != set_version({"web": c})


def test_consistency_check() -> None:
    c, e, lst, rc = _entries()
    snap = Snapshot(
        "f",
        1,
        {
            res.CLUSTER_TYPE: {"web": c},
            res.ENDPOINT_TYPE: {"web": e},
            res.LISTENER_TYPE: {"http": lst},
            res.ROUTE_TYPE: {"http": rc},
        },
        {res.CLUSTER_TYPE: {"web": {"web"}}, res.LISTENER_TYPE: {"http": {"http"}}, res.ROUTE_TYPE: {"http": {"web"}}},
    )
    snap.check()
    for missing_type, name in ((res.ENDPOINT_TYPE, "web"), (res.ROUTE_TYPE, "http"), (res.CLUSTER_TYPE, "web")):
        broken = Snapshot("f", 1, {t: dict(v) for t, v in snap.resources.items()}, snap.references)
        del broken.resources[missing_type][name]
        with pytest.raises(InconsistentSnapshot):
            broken.check()


def test_public_bind_appends_one_address_or_none() -> None:
    from envoy.config.listener.v3 import listener_pb2

    from controlplane.intent.model import Listener
    from controlplane.xds.resources import listener_base, listener_resource

    plain = Listener(name="l", address="127.0.0.1", port=8080)
    assert listener_base(plain, listener_resource(plain)).variant("127.0.1.9", None) == (
        listener_resource(plain).SerializeToString(deterministic=True)
    )  # not bind_public_address: the fleet's listener
    for address, public, extra in (
        ("127.0.0.1", "127.0.1.9", ["127.0.1.9"]),
        ("127.0.0.1", "127.0.0.1", []),  # the same address: nothing to add
        ("0.0.0.0", "10.1.2.3", []),  # the wildcard covers it
        ("0.0.0.0", "2001:db8::1", ["2001:db8::1"]),  # ... but not another family
        ("::", "2001:db8::1", []),
    ):
        lst = Listener(name="l", address=address, port=8080, bind_public_address=True)
        msg = listener_resource(lst)
        got = listener_pb2.Listener.FromString(listener_base(lst, msg).variant(public, None))
        assert [a.address.socket_address.address for a in got.additional_addresses] == extra
        assert all(a.address.socket_address.port_value == 8080 for a in got.additional_addresses)
        got.ClearField("additional_addresses")
        assert got == msg  # everything else is the fleet's listener


def test_shards_split_connections_and_a_shed_marks_only_its_shard() -> None:
    from envoy.config.listener.v3 import listener_pb2

    from controlplane.intent.model import Listener, ListenerTLS
    from controlplane.xds.resources import SHARD_METADATA, SHARDS, listener_base, listener_resource

    plain = listener_resource(Listener(name="l", port=8080))
    assert [c.name for c in plain.filter_chains] == [f"l/s{i}" for i in range(SHARDS)]
    # The tens digit of the source port picks the shard; every chain but the name is the same.
    regexes = [
        m.predicate.single_predicate.value_match.safe_regex.regex
        for m in plain.filter_chain_matcher.matcher_list.matchers
    ]
    assert regexes == [f"^[0-9]*{i}[0-9]$" for i in range(1, SHARDS)]
    assert (
        len({c.SerializeToString(deterministic=True).replace(c.name.encode(), b"") for c in plain.filter_chains}) == 1
    )

    tls = Listener(name="t", port=8443, tls=ListenerTLS(certificates=["a", "b"]))
    msg = listener_resource(tls, {"a": ("a.example",), "b": ("b.example", "*.b.example", "a.example")})
    assert len(msg.filter_chains) == 3 * SHARDS  # a, b and the default (a's certificate)
    names = msg.filter_chain_matcher.matcher_tree.custom_match
    assert names.name == "server_names"

    gens = (0,) * 3 + (7,) + (0,) * (SHARDS - 4)
    shed = listener_pb2.Listener.FromString(listener_base(tls, msg).variant(None, gens))
    marked = [c.name for c in shed.filter_chains if c.metadata.filter_metadata[SHARD_METADATA].fields]
    assert marked == ["t/a/s3", "t/b/s3", "t/default/s3"]
    assert shed.filter_chains[3].metadata.filter_metadata[SHARD_METADATA].fields["generation"].number_value == 7
    for c in shed.filter_chains:  # nothing else differs
        c.ClearField("metadata")
    assert shed == msg
