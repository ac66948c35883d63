"""Versions are history-free: the same intent gives the same resource versions and the same
per-type set versions whatever changes led to it — a long history with detours and rejected
builds, the same objects written in another order, a build from scratch — and in another
process (another PYTHONHASHSEED: another order of every hash-sharded map), as on another
replica."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controlplane.intent.keyspace import Ref, Stored
from controlplane.intent.model import Cluster, Kind, Route
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.snapshot import (
    _MIX_MASK,
    Entry,
    InconsistentSnapshot,
    Table,
    _set_hex,
    encoded_entry,
    set_version,
)
from tests.controlplane.xds.test_cache import _FakeView, _pki, _random_change

FLEETS = ("", "a", "b")
_KINDS = {
    "clusters": Kind.CLUSTER,
    "listeners": Kind.LISTENER,
    "routes": Kind.ROUTE,
    "certificates": Kind.CERTIFICATE,
    "fleets": Kind.FLEET,
}


def _versions(cache: SnapshotCache) -> dict[str, Any]:
    """Every fleet's resource versions and set versions, by type."""
    out: dict[str, Any] = {}
    for fleet in FLEETS:
        snap = cache.snapshot(fleet)
        out[fleet] = {
            t: {"set": snap.version(t), "entries": {n: e.version for n, e in sorted(entries.items())}}
            for t, entries in snap.resources.items()
        }
    return out


def _walk(seed: int, steps: int) -> _FakeView:
    """A long random history (with rejected builds on the way) to a servable end."""
    rnd = random.Random(seed)
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell({Ref(Kind.CLUSTER, "c0")})
    for fleet in FLEETS:
        cache.snapshot(fleet)
    view.cache = cache  # type: ignore[attr-defined]
    for step in range(2, steps):
        changed: set[Ref] = set()
        for _ in range(rnd.randrange(1, 4)):
            changed |= _random_change(view, rnd, step)
        view.tell(changed)
    return view


def _refs(view: _FakeView) -> list[Ref]:
    refs = [Ref(kind, name) for attr, kind in _KINDS.items() for name in getattr(view, attr)]
    refs += [Ref(Kind.BACKEND, b, c) for c, members in view.backends.items() for b in members]
    return refs


def _replay(final: _FakeView, seed: int) -> SnapshotCache:
    """The same end by another road: every object of `final` written in a shuffled order, one
    or a few at a time (many of those states cannot be served), with detours — objects that
    come and go, objects written with other values first — and another set of fleets asked
    for in another order."""
    rnd = random.Random(seed)
    view = _FakeView()
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell(set())
    for fleet in rnd.sample(FLEETS, len(FLEETS)):
        cache.snapshot(fleet)
    refs = _refs(final)
    rnd.shuffle(refs)
    detour = _FakeView()
    for step, ref in enumerate(refs, start=2):
        # A detour: whatever a random change makes of a scratch copy, written here and undone below.
        if rnd.random() < 0.3:
            for attr in _KINDS:
                getattr(detour, attr).clear()
                getattr(detour, attr).update(getattr(view, attr))
            detour.backends = {c: dict(m) for c, m in view.backends.items()}
            touched = _random_change(detour, rnd, step)
            for t in touched:
                _copy(detour, view, t)
            view.tell(touched)
            for t in touched:
                if t != ref:
                    _copy(final if _has(final, t) else _FakeView(), view, t)
            view.tell(touched)
        _copy(final, view, ref)
        view.tell({ref})
    # Fleets the end does not have are gone; then one last change of nothing in particular.
    view.tell(set())
    assert cache.revision == view.revision, cache.stats.last_error
    return cache


def _has(view: _FakeView, ref: Ref) -> bool:
    if ref.kind == Kind.BACKEND:
        return ref.name in view.backends.get(ref.cluster or "", {})
    attr = next(a for a, k in _KINDS.items() if k == ref.kind)
    return ref.name in getattr(view, attr)


def _copy(src: _FakeView, dst: _FakeView, ref: Ref) -> None:
    """Make `ref` in `dst` what it is in `src` (there or not)."""
    if ref.kind == Kind.BACKEND:
        got = src.backends.get(ref.cluster or "", {}).get(ref.name)
        members = dst.backends.setdefault(ref.cluster or "", {})
        if got is None:
            members.pop(ref.name, None)
            if not members:
                del dst.backends[ref.cluster or ""]
        else:
            members[ref.name] = got
        return
    attr = next(a for a, k in _KINDS.items() if k == ref.kind)
    got = getattr(src, attr).get(ref.name)
    if got is None:
        getattr(dst, attr).pop(ref.name, None)
    else:
        getattr(dst, attr)[ref.name] = got


def _fresh(view: _FakeView) -> SnapshotCache:
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.subscribers.remove(cache._on_change)
    cache._on_change(view.revision, set())
    return cache


def _servable_end(seed: int) -> _FakeView:
    for s in range(seed * 100, seed * 100 + 100):
        view = _walk(s, 120)
        if view.cache.revision == view.revision:  # type: ignore[attr-defined]
            return view
    raise AssertionError("no servable end")


@pytest.mark.parametrize("seed", range(6))
async def test_the_same_intent_by_two_histories_and_from_scratch_has_the_same_versions(seed: int) -> None:
    final = _servable_end(seed)
    long = _versions(final.cache)  # type: ignore[attr-defined]
    assert long == _versions(_fresh(final))
    assert long == _versions(_replay(final, seed))


# -- another process: another hash seed -------------------------------------------------------

_CHILD = """
import json, sys
from controlplane.intent.model import Certificate
from tests.controlplane.xds import test_cache, test_cache_review as r
bundle, certs = json.load(open(sys.argv[1]))
test_cache._pki = lambda: (bundle, [Certificate(**c) for c in certs])
final = r._servable_end(int(sys.argv[2]))
print(json.dumps([r._versions(final.cache), r._versions(r._replay(final, 7))]))
"""


def _in_process(pki: Path, seed: int, hash_seed: str) -> Any:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(pki), str(seed)], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


async def test_another_process_gives_the_same_versions(tmp_path: Path) -> None:
    bundle, certs = _pki()
    pki = tmp_path / "pki.json"
    pki.write_text(
        json.dumps(
            [
                bundle,
                [
                    {"name": c.name, "certificate_chain": c.certificate_chain, "private_key": c.private_key}
                    for c in certs
                ],
            ]
        )
    )
    one = _in_process(pki, 1, "1")
    two = _in_process(pki, 1, "2")
    assert one[0] == one[1] == two[0] == two[1]


# -- the set version itself --------------------------------------------------------------------


def _entries(rnd: random.Random, n: int) -> list[Entry]:
    return [encoded_entry("t", f"n{rnd.randrange(10 * n)}", rnd.randbytes(8)) for _ in range(n)]


def test_a_table_s_set_version_is_the_sum_of_what_it_holds_whatever_the_edits() -> None:
    rnd = random.Random(3)
    table = Table()
    model: dict[str, Entry] = {}
    for _ in range(300):
        edit = table.edit()
        for e in _entries(rnd, rnd.randrange(1, 20)):
            if rnd.random() < 0.3 and model:
                name = rnd.choice(sorted(model))
                edit.pop(name)
                model.pop(name)
            else:
                edit[e.name] = e
                model[e.name] = e
        table = edit.done()
        assert table.version == set_version(dict(model)) == Table(model).version
        assert table.version == _set_hex(sum(e.mix for e in model.values()) % (_MIX_MASK + 1))
    # Back to nothing: the empty set's version, exactly.
    edit = table.edit()
    for name in list(model):
        edit.pop(name)
    assert edit.done().version == Table().version == set_version({})


# -- consistency: what the incremental check lets through, a full check would too -----------


def _hostile_change(view: _FakeView, rnd: random.Random, step: int) -> set[Ref]:
    """What the store would refuse, which the check is the net for: a routed cluster deleted,
    a route to a cluster that does not exist."""
    if rnd.random() < 0.5 and view.clusters:
        name = rnd.choice(sorted(view.clusters))
        del view.clusters[name]
        view.backends.pop(name, None)
        return {Ref(Kind.CLUSTER, name)}
    name = f"r{rnd.randrange(6)}"
    route = Route(
        name=name,
        listener=f"l{rnd.randrange(4)}",
        match={"prefix": f"/{rnd.randrange(4)}/"},
        backends=[{"cluster": f"c{rnd.randrange(14)}"}],
    )
    view.routes[name] = Stored(route, step, step)
    return {Ref(Kind.ROUTE, name)}


def _consistent(cache: SnapshotCache) -> bool:
    try:
        for fleet in FLEETS:
            cache.snapshot(fleet).check()
    except InconsistentSnapshot:
        return False
    return True


@pytest.mark.parametrize("seed", range(10))
async def test_a_build_is_published_exactly_when_every_fleet_s_snapshot_is_consistent(seed: int) -> None:
    rnd = random.Random(seed)
    view = _FakeView()
    view.clusters["c0"] = Stored(Cluster(name="c0"), 1, 1)
    cache = SnapshotCache(view, debounce=0, max_delay=0)  # type: ignore[arg-type]
    view.tell({Ref(Kind.CLUSTER, "c0")})
    for fleet in FLEETS:
        cache.snapshot(fleet)
    for step in range(2, 250):
        changed: set[Ref] = set()
        for _ in range(rnd.randrange(1, 4)):
            hostile = rnd.random() < 0.15
            changed |= (_hostile_change if hostile else _random_change)(view, rnd, step)
        view.tell(changed)
        fresh = _fresh(view)
        assert _consistent(cache), (seed, step)  # whatever is published is consistent
        if fresh.ready and _consistent(fresh):  # (not ready: its one build was refused)
            assert cache.revision == view.revision, (seed, step, cache.stats.last_error)
            assert _versions(cache) == _versions(fresh), (seed, step)
        else:
            assert cache.revision < view.revision, (seed, step)
