//! lbcp's native xDS core: the gRPC streams under the Python control plane.
//!
//! Python decides what every node gets (intent, translation, snapshots, the fleet registry,
//! identity, claims, gates); this crate serves it. The boundary is crossed once per publish
//! (a fleet's changed entries), once per batch of events (drained through an eventfd), and
//! once per stream for admission, never once per stream per message. Tokio tasks never take
//! the GIL; Python calls into the core release it for anything longer than a copy.

pub mod events;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod snapshot;
pub mod stream;
pub mod types;

use bytes::Bytes;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use server::{Limits, Service, Shared};
use snapshot::{Entry, FleetSnap, Name, Overlay};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream::Bounds;
use tonic::Code;

/// (name, version, mix, sotw chunk, delta chunk), as Python's `controlplane.xds.snapshot.Entry`.
type PyEntry<'py> = (
    String,
    String,
    u128,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);
/// (server certificate chain, key, client CA for mTLS), PEM.
type Tls = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);
/// A type's changes as the core takes them: (type_url, reset, changes, pending names).
type Changes = Vec<(String, bool, Vec<snapshot::Change>, Option<HashSet<String>>)>;
/// (stream id, synced revision or 0, when, types ACKed): what `Core.events` reports per stream.
type Changed = Vec<(u64, u64, f64, u32)>;
/// (type_url, reset, entries, removed names, pending names or None to keep)
type PyTypeChange<'py> = (
    String,
    bool,
    Vec<PyEntry<'py>>,
    Vec<String>,
    Option<Vec<String>>,
);

fn entry(e: &PyEntry<'_>) -> (Name, Arc<Entry>) {
    let (name, version, mix, sotw, delta) = e;
    (
        Name::from(name.as_str()),
        Arc::new(Entry {
            version: Arc::from(version.as_str()),
            mix: *mix,
            sotw: Bytes::copy_from_slice(sotw.as_bytes()),
            delta: Bytes::copy_from_slice(delta.as_bytes()),
        }),
    )
}

fn code(n: i32) -> Code {
    Code::from_i32(n)
}

/// The native xDS server: binds at construction, serves until `stop`.
#[pyclass(frozen, module = "controlplane._native")]
struct Core {
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    #[pyo3(get)]
    port: u16,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Type URL -> the registry record's name for it.
    short_names: HashMap<String, String>,
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (
        host, port, *, tls=None, reuse_port=false, threads=2, max_streams=20_000,
        max_request_bytes=4 << 20, write_timeout=30.0, ack_timeout=60.0, warming_hold=1.0, max_connection_age=1800.0,
        max_connection_age_grace=60.0, keepalive=10.0, max_names_per_type=20_000, max_types=16,
        max_nack_message=4096, watched=HashMap::new(), short_names=HashMap::new(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        tls: Option<Tls>,
        reuse_port: bool,
        threads: usize,
        max_streams: usize,
        max_request_bytes: usize,
        write_timeout: f64,
        ack_timeout: f64,
        warming_hold: f64,
        max_connection_age: f64,
        max_connection_age_grace: f64,
        keepalive: f64,
        max_names_per_type: usize,
        max_types: usize,
        max_nack_message: usize,
        watched: HashMap<String, String>,
        short_names: HashMap<String, String>,
    ) -> PyResult<Core> {
        let limits = Limits {
            max_streams,
            max_request_bytes,
            write_timeout: Duration::from_secs_f64(write_timeout),
            ack_timeout: Duration::from_secs_f64(ack_timeout),
            warming_hold: Duration::from_secs_f64(warming_hold),
            bounds: Bounds {
                max_names_per_type,
                max_types,
                max_nack_message,
            },
        };
        let shared =
            Arc::new(Shared::new(limits, watched).map_err(|e| PyOSError::new_err(e.to_string()))?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("lbcp-xds")
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = format!("{host}:{port}");
        let bound = py.detach(|| {
            runtime.block_on(async {
                let addr: std::net::SocketAddr = tokio::net::lookup_host(&addr)
                    .await?
                    .next()
                    .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))?;
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                if reuse_port {
                    socket.set_reuseport(true)?;
                }
                socket.bind(addr)?;
                socket.listen(4096)
            })
        });
        let listener = bound
            .map_err(|e| PyOSError::new_err(format!("cannot listen on {host}:{port}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| PyOSError::new_err(e.to_string()))?
            .port();
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs_f64(keepalive)))
            .http2_keepalive_timeout(Some(Duration::from_secs_f64(keepalive / 2.0)))
            .max_concurrent_streams(None)
            .max_connection_age(Duration::from_secs_f64(max_connection_age))
            .max_connection_age_grace(Duration::from_secs_f64(max_connection_age_grace));
        if let Some((cert, key, ca)) = tls {
            let mut cfg = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key));
            if let Some(ca) = ca {
                cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder
                .tls_config(cfg)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        let router = builder
            .add_service(Service::<0>(shared.clone()))
            .add_service(Service::<1>(shared.clone()))
            .add_service(Service::<2>(shared.clone()))
            .add_service(Service::<3>(shared.clone()))
            .add_service(Service::<4>(shared.clone()));
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        Ok(Core {
            shared,
            runtime: Mutex::new(Some(runtime)),
            port,
            shutdown: Mutex::new(Some(stop_tx)),
            short_names,
        })
    }

    /// Readable when events are queued: asyncio calls `events()` then.
    #[getter]
    fn event_fd(&self) -> i32 {
        self.shared.events.fd()
    }

    /// Live streams (admitted or waiting).
    #[getter]
    fn live(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Everything queued since the last call: (events, changed), where changed is
    /// [(stream id, synced revision or 0, when (monotonic), types ACKed (bit mask))].
    fn events<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, Changed)> {
        let batch = self.shared.events.drain();
        let out = PyList::empty(py);
        for ev in batch.events {
            let t: Bound<'py, PyTuple> = match ev {
                events::Ev::Open {
                    sid,
                    protocol,
                    only_type,
                    node,
                    peer,
                    cert,
                } => (
                    "open",
                    sid,
                    protocol,
                    only_type,
                    PyBytes::new(py, &node),
                    peer,
                    cert.map(|c| PyBytes::new(py, &c)),
                )
                    .into_pyobject(py)?,
                events::Ev::Close { sid, code, message } => {
                    ("close", sid, code, message).into_pyobject(py)?
                }
                events::Ev::Nacked {
                    sid,
                    type_url,
                    nack,
                } => (
                    "nack",
                    sid,
                    type_url,
                    nack.version,
                    nack.message,
                    nack.at,
                    nack.revision,
                )
                    .into_pyobject(py)?,
                events::Ev::Names {
                    sid,
                    type_url,
                    names,
                    wildcard,
                } => ("names", sid, type_url, names, wildcard).into_pyobject(py)?,
                events::Ev::Want { fleet } => ("want", fleet).into_pyobject(py)?,
            };
            out.append(t)?;
        }
        let changed = batch
            .changed
            .into_iter()
            .map(|(sid, (rev, at, acked))| (sid, rev, at, acked))
            .collect();
        Ok((out, changed))
    }

    /// Publish `fleet` at `revision`: per type, the entries that changed and the names
    /// removed (`reset`: the entries are the whole table). `change_at`: when the change was
    /// first seen (time.monotonic()), for the convergence histogram.
    #[pyo3(signature = (fleet, revision, types, change_at=None))]
    fn publish(
        &self,
        py: Python<'_>,
        fleet: String,
        revision: u64,
        types: Vec<PyTypeChange<'_>>,
        change_at: Option<f64>,
    ) -> PyResult<()> {
        let changes: Changes = types
            .iter()
            .map(|(t, reset, entries, removed, pending)| {
                let mut ch: Vec<snapshot::Change> = entries
                    .iter()
                    .map(entry)
                    .map(|(n, e)| (n, Some(e)))
                    .collect();
                ch.extend(removed.iter().map(|n| (Name::from(n.as_str()), None)));
                (
                    t.clone(),
                    *reset,
                    ch,
                    pending.as_ref().map(|p| p.iter().cloned().collect()),
                )
            })
            .collect();
        let shared = self.shared.clone();
        py.detach(move || {
            let prior = shared.latest(&fleet);
            let mut tables = prior.as_ref().map(|p| p.tables.clone()).unwrap_or_default();
            for (t, reset, ch, pending) in changes {
                let gen = shared.gens.fetch_add(1, Ordering::Relaxed);
                let base = tables.get(&t).cloned().unwrap_or_default();
                tables.insert(t, Arc::new(base.derive(gen, ch, reset, pending)));
            }
            let snap = FleetSnap {
                revision,
                tables,
                published_at: Some(Instant::now()),
                change_at: change_at.and_then(server::instant_from_monotonic),
            };
            shared.publish(&fleet, Arc::new(snap));
        });
        Ok(())
    }

    /// Python's admission verdicts: (stream id, gRPC code (0: admitted), message).
    fn admit(&self, verdicts: Vec<(u64, i32, String)>) {
        for (sid, c, message) in verdicts {
            self.shared.admit(
                sid,
                if c == 0 {
                    Ok(())
                } else {
                    Err((code(c), message))
                },
            );
        }
    }

    /// End a stream with a gRPC status (a takeover, a claim refused).
    fn evict(&self, sid: u64, code_: i32, message: String) {
        self.shared.evict(sid, code(code_), message);
    }

    /// Python answered a stream's watched subscription of `type_url` (after setting its own
    /// entries or publishing names it builds): that type may be sent now.
    fn settle(&self, sid: u64, type_url: &str) {
        self.shared.settle(sid, type_url);
    }

    /// Replace a stream's own entries of one type (none: it is served its fleet's).
    fn set_overlay(&self, sid: u64, type_url: String, entries: Vec<PyEntry<'_>>) {
        let own: HashMap<Name, Arc<Entry>> = entries.iter().map(entry).collect();
        self.shared.set_overlays(sid, move |o| {
            if own.is_empty() {
                o.remove(&type_url);
            } else {
                o.insert(type_url, Arc::new(Overlay { entries: own }));
            }
        });
    }

    /// Each stream's protocol state, for the registry's record: a dict per stream (None when
    /// it is gone): {"acked_revision", "types": {type_url: {...}}}.
    fn stream_states<'py>(
        &self,
        py: Python<'py>,
        sids: Vec<u64>,
    ) -> PyResult<Vec<Option<Bound<'py, PyDict>>>> {
        let mut out = Vec::with_capacity(sids.len());
        for sid in sids {
            let Some(h) = self.shared.handle(sid) else {
                out.push(None);
                continue;
            };
            let guard = h.state.lock().expect("state");
            let Some(s) = guard.as_ref() else {
                out.push(None);
                continue;
            };
            let d = PyDict::new(py);
            d.set_item("acked_revision", s.acked_revision)?;
            d.set_item("served_revision", s.served_revision)?;
            let types = PyDict::new(py);
            for (t, st) in s.type_states() {
                let td = PyDict::new(py);
                td.set_item("sent_version", &st.sent_version)?;
                td.set_item("acked_version", &st.acked_version)?;
                td.set_item("in_flight", &st.in_flight)?;
                td.set_item("pushes", st.pushes)?;
                td.set_item("bytes_sent", st.bytes_sent)?;
                td.set_item("requested", st.requested)?;
                td.set_item("wildcard", st.wildcard)?;
                td.set_item("names", st.names.len())?;
                let nack = match &st.nack {
                    Some(n) => {
                        let nd = PyDict::new(py);
                        nd.set_item("version", &n.version)?;
                        nd.set_item("message", &n.message)?;
                        nd.set_item("at", n.at)?;
                        nd.set_item("revision", n.revision)?;
                        Some(nd)
                    }
                    None => None,
                };
                td.set_item("last_nack", nack)?;
                types.set_item(t, td)?;
            }
            d.set_item("types", types)?;
            out.push(Some(d));
        }
        Ok(out)
    }

    /// Each stream's protocol state as the inside of a JSON object (no braces), for the
    /// registry's record: `"protocol": .., "acked_revision": .., "types": {short name: {..}}`;
    /// None when the stream is gone. Types are named by `short_names` (construction).
    fn records<'py>(&self, py: Python<'py>, sids: Vec<u64>) -> Vec<Option<Bound<'py, PyBytes>>> {
        let shared = &self.shared;
        let short = &self.short_names;
        let texts: Vec<Option<String>> = py.detach(|| {
            sids.into_iter()
                .map(|sid| {
                    let h = shared.handle(sid)?;
                    let guard = h.state.lock().expect("state");
                    guard.as_ref().map(|s| record_json(s, short))
                })
                .collect()
        });
        texts
            .into_iter()
            .map(|t| t.map(|t| PyBytes::new(py, t.as_bytes())))
            .collect()
    }

    /// Per type: (type_url, pushes, bytes, resources, ACK latency (cumulative bucket counts,
    /// sum), queue time (cumulative bucket counts, sum)). Buckets: `LATENCY_BUCKETS`.
    #[allow(clippy::type_complexity)]
    fn metrics(&self) -> Vec<(String, u64, u64, u64, (Vec<u64>, f64), (Vec<u64>, f64))> {
        self.shared
            .metrics
            .all()
            .into_iter()
            .map(|(t, m)| {
                (
                    t,
                    m.pushes.load(Ordering::Relaxed),
                    m.bytes.load(Ordering::Relaxed),
                    m.resources.load(Ordering::Relaxed),
                    m.acks.read(),
                    m.queue.read(),
                )
            })
            .collect()
    }

    /// Stop serving: every stream ends (UNAVAILABLE), then the listener closes; waits at
    /// most `grace` seconds for streams to finish writing.
    #[pyo3(signature = (grace=1.0))]
    fn stop(&self, py: Python<'_>, grace: f64) {
        let runtime = self.runtime.lock().expect("runtime").take();
        let Some(runtime) = runtime else { return };
        self.shared.stopping.send_replace(true);
        if let Some(tx) = self.shutdown.lock().expect("shutdown").take() {
            let _ = tx.send(());
        }
        py.detach(|| runtime.shutdown_timeout(Duration::from_secs_f64(grace.max(0.0))));
    }
}

/// A JSON string (quoted and escaped).
fn json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str serialises"));
}

fn json_opt(out: &mut String, s: Option<&String>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// A stream's protocol state as the inside of a JSON object (the registry record's part the
/// core knows): written directly, one string per record.
fn record_json(s: &stream::Stream, short: &HashMap<String, String>) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(96 + 160 * s.types.len());
    let _ = write!(
        out,
        "\"protocol\":\"{}\",\"acked_revision\":{},\"types\":{{",
        s.protocol.name(),
        s.acked_revision
    );
    for (i, (t, st)) in s.type_states().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, short.get(t).unwrap_or(t));
        out.push_str(":{\"sent_version\":");
        json_opt(&mut out, st.sent_version.as_ref());
        out.push_str(",\"acked_version\":");
        json_opt(&mut out, st.acked_version.as_ref());
        let _ = write!(
            out,
            ",\"pushes\":{},\"bytes_sent\":{},\"last_nack\":",
            st.pushes, st.bytes_sent
        );
        match &st.nack {
            None => out.push_str("null"),
            Some(n) => {
                out.push_str("{\"version\":");
                json_str(&mut out, &n.version);
                out.push_str(",\"message\":");
                json_str(&mut out, &n.message);
                let _ = write!(out, ",\"at\":{},\"revision\":{}}}", n.at, n.revision);
            }
        }
        out.push('}');
    }
    out.push('}');
    out
}

/// The latency buckets the core's histograms use.
#[pyfunction]
fn latency_buckets() -> Vec<f64> {
    metrics::LATENCY_BUCKETS.to_vec()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Core>()?;
    m.add_function(wrap_pyfunction!(latency_buckets, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DeltaDiscoveryRequest, Status};
    use crate::snapshot::FleetSnap;

    #[test]
    fn a_record_is_json_with_every_type_and_the_nack_escaped() {
        let mut s = stream::Stream::new(
            1,
            stream::Protocol::Delta,
            None,
            "n1".into(),
            Bounds::default(),
            Arc::new(HashMap::new()),
        );
        let snap = Arc::new(FleetSnap::default());
        let req = DeltaDiscoveryRequest {
            type_url: types::CLUSTER.into(),
            ..Default::default()
        };
        s.on_delta(req, &snap).unwrap();
        assert_eq!(s.flush(&snap, &stream::Overlays::new(), 0).len(), 1);
        let nonce = s.types[types::CLUSTER].last_nonce.clone().unwrap();
        let nack = DeltaDiscoveryRequest {
            type_url: types::CLUSTER.into(),
            response_nonce: nonce,
            error_detail: Some(Status {
                code: 3,
                message: "bad \"quote\"\n\\ and ünïcode".into(),
            }),
            ..Default::default()
        };
        s.on_delta(nack, &snap).unwrap();
        let short = HashMap::from([(types::CLUSTER.to_string(), "cds".to_string())]);
        let doc: serde_json::Value =
            serde_json::from_str(&format!("{{{}}}", record_json(&s, &short))).unwrap();
        assert_eq!(doc["protocol"], "delta");
        assert_eq!(doc["types"]["cds"]["pushes"], 1);
        assert_eq!(
            doc["types"]["cds"]["last_nack"]["message"],
            "bad \"quote\"\n\\ and ünïcode"
        );
    }
}
