"""An xDS replica's Prometheus metrics, fed by the stream observer protocol and the snapshot
cache's publish callback, so neither the protocol code nor the cache knows about Prometheus.
docs/metrics.md lists every name.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from controlplane.intent.certificates import info
from controlplane.metrics import BUILD_BUCKETS, LATENCY_BUCKETS, RingMetrics
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.load import LoadSampler
from controlplane.xds.probe import REASONS, FrontProber
from controlplane.xds.resources import SHORT_NAMES
from controlplane.xds.server.common import BaseStream, Nack, QuietObserver


def _short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


class XdsMetrics(QuietObserver):
    """A StreamObserver plus a snapshot-cache watcher for one xDS replica."""

    def __init__(self, registry: CollectorRegistry, replica: str) -> None:
        self.replica = replica
        self._registry = r = registry
        self.streams = Gauge(
            "lbcp_xds_connected_streams",
            "xDS streams connected to this replica",
            ["replica", "fleet", "protocol"],
            registry=r,
        )
        self.nacks = Counter(
            "lbcp_xds_nacks_total", "xDS responses rejected by the client", ["type", "fleet"], registry=r
        )
        self.convergence = Histogram(
            "lbcp_xds_convergence_seconds",
            "from this replica seeing an etcd change to a client having ACKed everything up to it",
            ["fleet"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.debounce = Histogram(
            "lbcp_snapshot_debounce_seconds",
            "first change seen → snapshot build starts",
            buckets=BUILD_BUCKETS,
            registry=r,
        )
        self.build = Histogram("lbcp_snapshot_build_seconds", "snapshot build time", buckets=BUILD_BUCKETS, registry=r)
        self.ring = RingMetrics(r)
        self._seen: OrderedDict[int, float] = OrderedDict()  # revision -> when its first change was seen
        self._published = 0

    # -- StreamObserver ------------------------------------------------------------------------

    def connected(self, stream: BaseStream) -> None:
        self.streams.labels(self.replica, stream.fleet, stream.protocol).inc()

    def disconnected(self, stream: BaseStream) -> None:
        self.streams.labels(self.replica, stream.fleet, stream.protocol).dec()

    def changed(self, stream: BaseStream) -> None:
        seen = self._seen.get(stream.acked_revision)
        if seen is not None:
            self.convergence.labels(stream.fleet).observe(time.monotonic() - seen)

    def use_core(self, collector: Collector) -> None:
        """Pushes, their bytes and resources, ACK latency and queue time are counted by the
        native core (a push or an ACK never reaches Python): export them from `collector`."""
        self._registry.register(collector)

    def nacked(self, stream: BaseStream, type_url: str, nack: Nack) -> None:
        self.nacks.labels(_short(type_url), stream.fleet).inc()

    # -- cache -------------------------------------------------------------------------------

    def watch_cache(self, cache: SnapshotCache) -> None:
        """Observe `cache`'s builds: called on every publish (and ring republish)."""

        def on_publish() -> None:
            if cache.published == self._published:
                return  # a ring finished: same snapshot otherwise
            self._published = cache.published
            st = cache.stats
            self.build.observe(st.last_build_seconds)
            self.debounce.observe(st.last_debounce_seconds)
            if cache.first_change_at is not None:
                self._seen[cache.revision] = cache.first_change_at
                while len(self._seen) > 1024:
                    self._seen.popitem(last=False)

        cache.add_watcher(on_publish)
        cache.ring_observers.append(lambda algorithm, seconds: self.ring.seconds.labels(algorithm).observe(seconds))
        self._registry.register(_CacheCollector(cache))


class _CacheCollector:
    """Read at scrape time: values the cache already counts."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "lbcp_snapshot_revision", "etcd revision of the published snapshot", value=self.cache.revision
        )
        yield CounterMetricFamily(
            "lbcp_snapshot_rejected",
            "snapshot builds not published (inconsistent or failed)",
            value=self.cache.stats.rejected,
        )
        yield CounterMetricFamily("lbcp_snapshot_builds", "snapshots published", value=self.cache.published)
        # Summed at scrape time, not on every publish: a publish costs what changed, and a
        # sum over 10,000 clusters' entries per change would not.
        size = GaugeMetricFamily("lbcp_snapshot_bytes", "encoded size of the published resources", labels=["type"])
        count = GaugeMetricFamily("lbcp_snapshot_resources", "published resources", labels=["type"])
        if self.cache.ready:
            for type_url, entries in self.cache.snapshot("").resources.items():
                size.add_metric([_short(type_url)], sum(e.size for e in entries.values()))
                count.add_metric([_short(type_url)], len(entries))
        yield size
        yield count
        expiry = GaugeMetricFamily(
            "lbcp_certificate_expiry_seconds",
            "seconds until the leaf of each certificate in intent expires (negative: expired)",
            labels=["certificate"],
        )
        now = time.time()
        for name, not_after in self._expiries().items():
            expiry.add_metric([name], not_after - now)
        yield expiry

    def _expiries(self) -> dict[str, float]:
        # Parse each certificate once per stored revision: scrapes stay cheap.
        certs = self.cache.view.certificates
        out: dict[str, float] = {}
        cache = getattr(self, "_parsed", {})
        for name, stored in certs.items():
            hit = cache.get(name)
            if hit is None or hit[0] != stored.mod_revision:
                try:
                    hit = (stored.mod_revision, info(stored.obj.certificate_chain).not_after.timestamp())
                except ValueError:
                    continue
            cache[name] = hit
            out[name] = hit[1]
        self._parsed = {n: cache[n] for n in out}
        return out


class LoadCollector:
    """Read at scrape time: the live load of the Envoys this replica samples, per fleet and per
    node (cardinality bounded by the fleet's size)."""

    def __init__(self, sampler: LoadSampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        fleets: dict[str, list[float]] = {}
        node_cx = GaugeMetricFamily(
            "lbcp_node_connections", "active downstream connections of one Envoy", labels=["fleet", "node"]
        )
        node_cps = GaugeMetricFamily(
            "lbcp_node_connections_per_second", "new downstream connections per second", labels=["fleet", "node"]
        )
        node_over = GaugeMetricFamily("lbcp_node_overloaded", "an overload action is active", labels=["fleet", "node"])
        for s in self.sampler.streams.values():
            load = s.load
            if load is None:
                continue
            t = fleets.setdefault(s.fleet, [0.0, 0.0, 0.0, 0.0])
            t[0] += load["connections"]
            t[1] += load["connections_per_second"]
            t[2] += load["tls_handshakes_per_second"]
            t[3] += load["http2_streams"]
            node_cx.add_metric([s.fleet, s.node.id], load["connections"])
            node_cps.add_metric([s.fleet, s.node.id], load["connections_per_second"])
            node_over.add_metric([s.fleet, s.node.id], 1.0 if load["overloaded"] else 0.0)
        for name, help_text, i in (
            ("lbcp_fleet_connections", "active downstream connections of the Envoys sampled here", 0),
            ("lbcp_fleet_connections_per_second", "new downstream connections per second", 1),
            ("lbcp_fleet_tls_handshakes_per_second", "TLS handshakes per second", 2),
            ("lbcp_fleet_http2_streams", "active downstream HTTP/2 streams", 3),
        ):
            g = GaugeMetricFamily(name, help_text, labels=["fleet"])
            for fleet, totals in sorted(fleets.items()):
                g.add_metric([fleet], totals[i])
            yield g
        yield node_cx
        yield node_cps
        yield node_over


class PollerCollector:
    """Read at scrape time: the failures of the load sampler's and the front prober's polls,
    by reason (every reason, 0 until it happens), and the restarts of their loops."""

    def __init__(self, sampler: LoadSampler, prober: FrontProber) -> None:
        self.sampler, self.prober = sampler, prober

    def collect(self) -> Iterator[Metric]:
        for name, help_text, counts in (
            (
                "lbcp_load_sample_failures",
                "reads of an Envoy's ops listener for its live load that failed, by reason",
                self.sampler.failures,
            ),
            (
                "lbcp_front_probe_failures",
                "front health probes that got no well-formed HTTP answer, by reason",
                self.prober.failures,
            ),
        ):
            c = CounterMetricFamily(name, help_text, labels=["reason"])
            for reason in REASONS:
                c.add_metric([reason], counts.get(reason, 0))
            yield c
        restarts = CounterMetricFamily(
            "lbcp_xds_loop_restarts", "crashes of a replica's polling loop, each logged and restarted", labels=["loop"]
        )
        for poller in (self.sampler, self.prober):
            restarts.add_metric([poller.loop_name], poller.restarts)
        yield restarts
