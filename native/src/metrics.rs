//! Per-type counters and histograms kept by the core (a push or an ACK costs an atomic add,
//! not a trip into Python); the replica's Prometheus endpoint reads them at scrape time
//! under lbcp's usual names (controlplane/xds/native.py).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Seconds buckets of lbcp's latency histograms (controlplane/metrics.py LATENCY_BUCKETS).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket, the last one +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }

    /// (cumulative counts per bucket with +Inf last, sum in seconds)
    pub fn read(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let counts = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        (counts, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

#[derive(Default)]
pub struct TypeMetrics {
    pub pushes: AtomicU64,
    pub bytes: AtomicU64,
    pub resources: AtomicU64,
    pub acks: Histogram,
    pub queue: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    types: Mutex<HashMap<String, Arc<TypeMetrics>>>,
}

impl Metrics {
    pub fn of(&self, type_url: &str) -> Arc<TypeMetrics> {
        let mut types = self.types.lock().expect("metrics");
        if let Some(m) = types.get(type_url) {
            return m.clone();
        }
        types.entry(type_url.to_string()).or_default().clone()
    }

    pub fn all(&self) -> Vec<(String, Arc<TypeMetrics>)> {
        self.types
            .lock()
            .expect("metrics")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
