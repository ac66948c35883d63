"""bench/ratelimit.py's pure helpers: reading a token bucket out of a config_dump, counting the
clients' bins over a window, spreading connections. (The bench itself runs real Envoys.)"""

from __future__ import annotations

from bench.ratelimit import (
    ADDRESSES,
    BIN,
    FIELDS,
    LIMITED,
    OK,
    _changes,
    _deal,
    _spread,
    buckets,
    merge,
    per_second,
    summarize,
)


def test_the_bucket_of_the_limited_route_and_when_the_envoy_applied_it() -> None:
    dump = {
        "configs": [
            {
                "version_info": "v7",
                "last_updated": "2025-01-01T00:00:01.500Z",
                "route_config": {
                    "virtual_hosts": [
                        {
                            "routes": [
                                {"name": "plain"},
                                {
                                    "typed_per_filter_config": {
                                        "envoy.filters.http.local_ratelimit": {
                                            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                                            "config": {
                                                "token_bucket": {
                                                    "max_tokens": 171,
                                                    "tokens_per_fill": 171,
                                                    "fill_interval": "1s",
                                                }
                                            },
                                        }
                                    }
                                },
                            ]
                        }
                    ]
                },
            }
        ]
    }
    got = buckets(dump)
    assert got is not None
    assert (got["max_tokens"], got["tokens_per_fill"], got["fill_interval"], got["version"]) == (171, 171, "1s", "v7")
    assert got["last_updated"] == 1735689601.5
    assert buckets({"configs": []}) is None


def test_bins_counted_over_a_window_per_envoy_and_per_second() -> None:
    a0, a1 = ADDRESSES["rl-0"], ADDRESSES["rl-1"]
    bins: dict[int, dict[str, list[int]]] = {}
    start = 1_000_000  # a bin number: 100,000 s of wall clock
    for b in range(start, start + 20):  # 2 s: rl-0 admits 12 and limits 12 per bin, rl-1 6 and 6
        merge(bins, {b: {a0: [12, 12, 0, 0, 0], a1: [6, 6, 0, 0, 0]}})
    merge(bins, {start: {a0: [1, 0, 0, 0, 0]}})  # a second report of the same bin adds up
    t0 = start * BIN
    assert per_second(bins, t0, t0 + 2) == [181, 180]
    out = summarize(bins, t0, t0 + 2, 200, {"rl-0": {"max_tokens": 120, "tokens_per_fill": 120, "fill_interval": "1s"}})
    assert out["seconds"] == 2.0 and out["admitted"] == 361 and out["limited"] == 360
    assert out["admitted_over_limit"] == round(361 / 2 / 200, 4)
    assert out["per_envoy"]["rl-0"]["admitted_per_second"] == 120.5
    assert out["per_envoy"]["rl-0"]["admitted_over_bucket"] == round(120.5 / 120, 4)
    assert out["per_envoy"]["rl-1"]["demand_per_second"] == 120.0
    assert out["per_envoy"]["rl-2"]["admitted_per_second"] == 0.0
    assert len(FIELDS) == 5 and (OK, LIMITED) == (0, 1)


def test_connections_spread_by_the_split_and_dealt_to_client_processes() -> None:
    assert _spread(100, [60, 30, 10]) == [60, 30, 10]
    assert _spread(7, [1, 1, 1]) == [3, 2, 2]
    assert sum(_spread(1001, [6, 3, 1])) == 1001
    dealt = _deal([("a", 1, 60), ("b", 1, 30), ("c", 1, 1)], 2)
    assert dealt == [[("a", 1, 30), ("b", 1, 15), ("c", 1, 1)], [("a", 1, 30), ("b", 1, 15)]]
    assert len(_deal([("a", 1, 50_000)], 1)) == 3  # at most 20,000 fds a process
    assert _changes(["v1", "v1", "v2", "v1"]) == 2 and _changes([]) == 0
