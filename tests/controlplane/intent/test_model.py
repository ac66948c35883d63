"""The intent model on its own: parsing, canonical forms, and rejections."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from controlplane.intent.keyspace import Keyspace, Ref
from controlplane.intent.model import Backend, Cluster, HashPolicy, Kind, Listener, Route, format_duration


@pytest.mark.parametrize(
    ("text", "seconds", "canonical"),
    [
        ("5s", 5, "5s"),
        ("250ms", 0.25, "250ms"),
        ("1.5m", 90, "90s"),
        ("2h", 7200, "7200s"),
        (3, 3, "3s"),
        (0.1, 0.1, "100ms"),
    ],
)
def test_durations(text, seconds, canonical) -> None:
    c = Cluster(name="a", connect_timeout=text)
    assert c.connect_timeout == seconds
    assert c.model_dump(mode="json")["connect_timeout"] == canonical == format_duration(seconds)


@pytest.mark.parametrize("bad", ["0s", "-1s", "5", "5 s", "1y", True, "0.0001s", "400d"])
def test_bad_durations(bad) -> None:
    with pytest.raises(ValidationError):
        Cluster(name="a", connect_timeout=bad)


def test_addresses_are_canonical() -> None:
    assert Backend(name="a", address="::0001", port=1).address == "::1"
    assert Backend(name="a", address="Web-1.Example.COM", port=1).address == "web-1.example.com"
    assert not Backend(name="a", address="web.example.com", port=1).is_ip
    with pytest.raises(ValidationError):
        Backend(name="a", address="-bad.example.com", port=1)
    with pytest.raises(ValidationError):
        Backend(name="a", address="1.2.3", port=1)


def test_names_cannot_escape_the_keyspace() -> None:
    for bad in ["..", "a/b", "a\0b", "", "x" * 64, "-a", "a-"]:
        with pytest.raises(ValidationError):
            Cluster(name=bad)
    for bad in ["..", "../x", "a/b", ".a"]:
        with pytest.raises(ValidationError):
            Backend(name=bad, address="10.0.0.1", port=1)


def test_keyspace_round_trip() -> None:
    ks = Keyspace("/p/")
    ref = Ref(Kind.BACKEND, "b.1", "web")
    assert ks.key(ref) == b"/p/backends/web/b.1"
    assert ks.ref(ks.key(ref)) == ref
    assert ks.ref(b"/p/_runtime/fleet/x") is None
    b = Backend(name="b.1", address="10.0.0.1", port=80, metadata={"rack": "r1", "gen": 2})
    assert ks.decode(Kind.BACKEND, ks.encode(Kind.BACKEND, b)) == b


def test_hash_policy_shapes() -> None:
    assert HashPolicy(type="header", name="X-User-Id").name == "x-user-id"
    with pytest.raises(ValidationError):
        HashPolicy(type="source_ip", name="x")
    with pytest.raises(ValidationError):
        HashPolicy(type="header", name="x", ttl="1s")
    assert HashPolicy(type="cookie", name="sid", ttl="1h").ttl == 3600


def test_listener_shapes() -> None:
    assert Listener(name="l", port=80, fleets=["b", "a"]).fleets == ["a", "b"]
    with pytest.raises(ValidationError):
        Listener(name="l", port=80, protocol="http", cluster="c")
    with pytest.raises(ValidationError):
        Listener(name="l", port=80, fleets=["a", "a"])


def test_route_defaults_and_domains() -> None:
    r = Route(name="r", listener="l", backends=[{"cluster": "c"}], domains=["Example.com", "*.example.com"])
    assert r.domains == ["example.com", "*.example.com"] and r.match.prefix == "/" and r.timeout == 15
    with pytest.raises(ValidationError):
        Route(name="r", listener="l", backends=[{"cluster": "c"}], domains=["a.com", "A.com"])
    with pytest.raises(ValidationError):
        Route(name="r", listener="l", backends=[{"cluster": "c"}, {"cluster": "c"}])
