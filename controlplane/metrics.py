"""Prometheus metrics (`lbcp_` namespace), one registry per component instance.

Each xDS replica and each admin API owns a `CollectorRegistry`, so several of them can run
in one process (tests, benchmarks) without colliding, and `/metrics` shows only its own.
This module holds what several rooms share (buckets, etcd and ring metrics); the xDS
replica's own metrics are in `controlplane.xds.metrics`. docs/metrics.md lists every name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# `*_created` series double every counter's series count for a value nobody alerts on.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

# Push → ACK and change → ACK are milliseconds on a healthy fleet, seconds when not.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BUILD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EtcdMetrics:
    """Every etcd request: latency by operation, errors by operation and code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "lbcp_etcd_request_seconds", "etcd request latency", ["op"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.errors = Counter(
            "lbcp_etcd_request_errors_total", "etcd requests that failed", ["op", "code"], registry=registry
        )

    def observe(self, op: str, seconds: float, error: str | None) -> None:
        self.seconds.labels(op).observe(seconds)
        if error is not None:
            self.errors.labels(op, error).inc()


class RingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "lbcp_ring_build_seconds",
            "time to build one cluster's hash ring",
            ["algorithm"],
            buckets=BUILD_BUCKETS,
            registry=registry,
        )
