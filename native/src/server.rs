//! The gRPC side: ADS (SotW and delta), the per-type CDS/EDS/LDS/RDS services, and Fetch.
//!
//! Each stream is one tokio task: it waits for Python's admission verdict, then loops on its
//! next request, a new snapshot of its fleet, a change to its own overlays or eviction, the
//! end of a warming hold, and a ticker that finds responses left unanswered. Responses are
//! pre-encoded fragments (`Parts`) written as they are; nothing is encoded per stream.

use crate::events::{Ev, EventQueue};
use crate::metrics::Metrics;
use crate::proto::{ld, DeltaDiscoveryRequest, DiscoveryRequest, NodeIdent, Parts};
use crate::snapshot::{FleetSnap, View};
use crate::stream::{Bounds, Event, Overlays, Protocol, Reject, Stream};
use crate::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status, Streaming};

/// Python's admission verdict on a stream: Err((code, message)) refuses it.
pub type Verdict = Result<(), (Code, String)>;

/// How long a stream may wait for Python's admission verdict. Generous: in a reconnect
/// storm admissions queue behind each other (a 10,000-stream storm took 54-62 s to admit on
/// 2 cores), and a stream refused for waiting would only come back and queue again.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_streams: usize,
    pub max_request_bytes: usize,
    pub write_timeout: Duration,
    pub ack_timeout: Duration,
    pub warming_hold: Duration,
    pub bounds: Bounds,
}

/// One live stream as the rest of the core sees it.
pub struct Handle {
    pub id: u64,
    pub fleet: String,
    /// Its own entries per type, and their generation (bumped on every change).
    pub overlays: Mutex<(Arc<Overlays>, u64)>,
    pub evicted: Mutex<Option<(Code, String)>>,
    pub notify: Notify,
    pub state: Mutex<Option<Stream>>,
    admit: Mutex<Option<oneshot::Sender<Verdict>>>,
}

pub struct Shared {
    pub limits: Limits,
    pub watched: Arc<HashMap<String, String>>,
    pub fleets: Mutex<HashMap<String, watch::Sender<Arc<FleetSnap>>>>,
    pub streams: Mutex<HashMap<u64, Arc<Handle>>>,
    pub events: EventQueue,
    pub metrics: Metrics,
    pub live: AtomicUsize,
    pub gens: AtomicU64,
    next_id: AtomicU64,
    pub stopping: watch::Sender<bool>,
}

impl Shared {
    pub fn new(limits: Limits, watched: HashMap<String, String>) -> std::io::Result<Shared> {
        Ok(Shared {
            limits,
            watched: Arc::new(watched),
            fleets: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            events: EventQueue::new()?,
            metrics: Metrics::default(),
            live: AtomicUsize::new(0),
            gens: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            stopping: watch::channel(false).0,
        })
    }

    /// The fleet's latest snapshot channel, or None (and Python is asked) when it was never published.
    pub fn fleet(&self, fleet: &str) -> Option<watch::Receiver<Arc<FleetSnap>>> {
        let rx = self
            .fleets
            .lock()
            .expect("fleets")
            .get(fleet)
            .map(|tx| tx.subscribe());
        if rx.is_none() {
            self.events.push(Ev::Want {
                fleet: fleet.to_string(),
            });
        }
        rx
    }

    pub fn publish(&self, fleet: &str, snap: Arc<FleetSnap>) {
        let mut fleets = self.fleets.lock().expect("fleets");
        match fleets.get(fleet) {
            Some(tx) => {
                tx.send_replace(snap);
            }
            None => {
                fleets.insert(fleet.to_string(), watch::channel(snap).0);
            }
        }
    }

    pub fn latest(&self, fleet: &str) -> Option<Arc<FleetSnap>> {
        self.fleets
            .lock()
            .expect("fleets")
            .get(fleet)
            .map(|tx| tx.borrow().clone())
    }

    pub fn handle(&self, sid: u64) -> Option<Arc<Handle>> {
        self.streams.lock().expect("streams").get(&sid).cloned()
    }

    /// Python's verdict on a stream waiting to be admitted.
    pub fn admit(&self, sid: u64, verdict: Verdict) {
        if let Some(h) = self.handle(sid) {
            if let Some(tx) = h.admit.lock().expect("admit").take() {
                let _ = tx.send(verdict);
            }
        }
    }

    pub fn evict(&self, sid: u64, code: Code, message: String) {
        if let Some(h) = self.handle(sid) {
            *h.evicted.lock().expect("evicted") = Some((code, message));
            h.notify.notify_one();
        }
    }

    /// Python answered a stream's watched subscription of `type_url`.
    pub fn settle(&self, sid: u64, type_url: &str) {
        if let Some(h) = self.handle(sid) {
            if let Some(s) = h.state.lock().expect("state").as_mut() {
                s.settle(type_url);
            }
            h.notify.notify_one();
        }
    }

    pub fn set_overlays(&self, sid: u64, change: impl FnOnce(&mut Overlays)) {
        if let Some(h) = self.handle(sid) {
            {
                let mut o = h.overlays.lock().expect("overlays");
                let mut next = (*o.0).clone();
                change(&mut next);
                *o = (Arc::new(next), o.1 + 1);
            }
            h.notify.notify_one();
        }
    }
}

// -- codec -------------------------------------------------------------------------------------

/// Writes pre-encoded responses as they are; decodes requests with prost.
pub struct XdsCodec<D>(PhantomData<D>);

impl<D> Default for XdsCodec<D> {
    fn default() -> Self {
        XdsCodec(PhantomData)
    }
}

pub struct PartsEncoder;

impl Encoder for PartsEncoder {
    type Item = Parts;
    type Error = Status;

    fn encode(&mut self, item: Parts, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        for p in item.0 {
            dst.put(p);
        }
        Ok(())
    }
}

pub struct ProstDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        D::decode(bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }
}

impl<D: Message + Default + Send + 'static> Codec for XdsCodec<D> {
    type Encode = Parts;
    type Decode = D;
    type Encoder = PartsEncoder;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> PartsEncoder {
        PartsEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<D> {
        ProstDecoder(PhantomData)
    }
}

// -- the two request kinds ---------------------------------------------------------------------

pub trait XdsRequest: Message + Default + Send + 'static {
    const PROTOCOL: Protocol;
    fn node(&self) -> Option<&Bytes>;
    fn type_url(&self) -> &str;
    fn apply(self, s: &mut Stream, snap: &FleetSnap) -> Result<(), Reject>;
}

impl XdsRequest for DiscoveryRequest {
    const PROTOCOL: Protocol = Protocol::Sotw;
    fn node(&self) -> Option<&Bytes> {
        self.node.as_ref()
    }
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn apply(self, s: &mut Stream, snap: &FleetSnap) -> Result<(), Reject> {
        s.on_sotw(self, snap)
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    const PROTOCOL: Protocol = Protocol::Delta;
    fn node(&self) -> Option<&Bytes> {
        self.node.as_ref()
    }
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn apply(self, s: &mut Stream, snap: &FleetSnap) -> Result<(), Reject> {
        s.on_delta(self, snap)
    }
}

// -- services ----------------------------------------------------------------------------------

/// gRPC services by index: ADS, then CDS, EDS, LDS, RDS.
const SERVICES: [(&str, &str, Option<&str>); 5] = [
    (
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        "AggregatedResources",
        None,
    ),
    (
        "envoy.service.cluster.v3.ClusterDiscoveryService",
        "Clusters",
        Some(CLUSTER),
    ),
    (
        "envoy.service.endpoint.v3.EndpointDiscoveryService",
        "Endpoints",
        Some(ENDPOINT),
    ),
    (
        "envoy.service.listener.v3.ListenerDiscoveryService",
        "Listeners",
        Some(LISTENER),
    ),
    (
        "envoy.service.route.v3.RouteDiscoveryService",
        "Routes",
        Some(ROUTE),
    ),
];

#[derive(Clone)]
pub struct Service<const K: usize>(pub Arc<Shared>);

impl<const K: usize> NamedService for Service<K> {
    const NAME: &'static str = SERVICES[K].0;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Responses = ReceiverStream<Result<Parts, Status>>;

impl<const K: usize, B> tower_service::Service<http::Request<B>> for Service<K>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, suffix, only_type) = SERVICES[K];
        let method = req
            .uri()
            .path()
            .strip_prefix(&format!("/{service}/"))
            .unwrap_or("")
            .to_string();
        let shared = self.0.clone();
        let max_in = shared.limits.max_request_bytes;
        Box::pin(async move {
            let resp = if method == format!("Stream{suffix}") {
                let mut grpc = tonic::server::Grpc::new(XdsCodec::<DiscoveryRequest>::default())
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(usize::MAX);
                grpc.streaming(
                    Streamer::<DiscoveryRequest> {
                        shared,
                        only_type,
                        _p: PhantomData,
                    },
                    req,
                )
                .await
            } else if method == format!("Delta{suffix}") {
                let mut grpc =
                    tonic::server::Grpc::new(XdsCodec::<DeltaDiscoveryRequest>::default())
                        .max_decoding_message_size(max_in)
                        .max_encoding_message_size(usize::MAX);
                grpc.streaming(
                    Streamer::<DeltaDiscoveryRequest> {
                        shared,
                        only_type,
                        _p: PhantomData,
                    },
                    req,
                )
                .await
            } else if let (Some(t), true) = (only_type, method == format!("Fetch{suffix}")) {
                let mut grpc = tonic::server::Grpc::new(XdsCodec::<DiscoveryRequest>::default())
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(usize::MAX);
                grpc.unary(
                    Fetcher {
                        shared,
                        type_url: t,
                    },
                    req,
                )
                .await
            } else {
                Status::unimplemented(format!("{service}/{method} is not served here")).into_http()
            };
            Ok(resp)
        })
    }
}

struct Streamer<R> {
    shared: Arc<Shared>,
    only_type: Option<&'static str>,
    _p: PhantomData<R>,
}

impl<R: XdsRequest> tower_service::Service<Request<Streaming<R>>> for Streamer<R> {
    type Response = Response<Responses>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Responses>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<R>>) -> Self::Future {
        let shared = self.shared.clone();
        let only_type = self.only_type;
        let peer = match req.remote_addr() {
            Some(std::net::SocketAddr::V4(a)) => format!("ipv4:{}:{}", a.ip(), a.port()),
            Some(std::net::SocketAddr::V6(a)) => format!("ipv6:[{}]:{}", a.ip(), a.port()),
            None => String::new(),
        };
        let cert = req
            .peer_certs()
            .and_then(|c| c.first().map(|d| d.as_ref().to_vec()));
        let inbound = req.into_inner();
        Box::pin(async move {
            // Room for every response a stream may have in flight (one per type) and then
            // some: a client that stops reading fills it and its stream times out alone.
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(run_stream(shared, inbound, tx, only_type, peer, cert));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

struct Fetcher {
    shared: Arc<Shared>,
    type_url: &'static str,
}

impl tower_service::Service<Request<DiscoveryRequest>> for Fetcher {
    type Response = Response<Parts>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Parts>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<DiscoveryRequest>) -> Self::Future {
        let shared = self.shared.clone();
        let type_url = self.type_url;
        Box::pin(async move {
            let req = req.into_inner();
            let fleet = req
                .node
                .as_ref()
                .and_then(|n| NodeIdent::decode(n.clone()).ok())
                .unwrap_or_default()
                .cluster;
            let Some(snap) = shared.fleet(&fleet).map(|rx| rx.borrow().clone()) else {
                return Err(Status::unavailable(
                    "no configuration for this fleet yet; retry",
                ));
            };
            let view = View {
                base: snap.table(type_url),
                own: None,
            };
            let mut names: Vec<String> = if req.resource_names.is_empty() {
                view.base.entries.keys().map(|n| n.to_string()).collect()
            } else {
                req.resource_names
                    .iter()
                    .filter(|n| view.contains(n))
                    .cloned()
                    .collect()
            };
            names.sort();
            names.dedup();
            let version = view.names_version(names.iter().map(String::as_str));
            if req.version_info == version {
                return Err(Status::unavailable("not modified")); // what Envoy's REST fetch treats as 304
            }
            let mut parts = vec![ld(1, version.as_bytes())];
            parts.extend(
                names
                    .iter()
                    .map(|n| view.get(n).expect("present").sotw.clone()),
            );
            parts.push(ld(4, type_url.as_bytes()));
            Ok(Response::new(Parts(parts)))
        })
    }
}

// -- one stream --------------------------------------------------------------------------------

type Tx = mpsc::Sender<Result<Parts, Status>>;

async fn run_stream<R: XdsRequest>(
    shared: Arc<Shared>,
    mut inbound: Streaming<R>,
    tx: Tx,
    only_type: Option<&'static str>,
    peer: String,
    cert: Option<Vec<u8>>,
) {
    let first = match inbound.message().await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(status) => {
            if let Some(status) = request_error(status) {
                let _ = tx.send(Err(status)).await;
            }
            return;
        }
    };
    let node = first.node().cloned().unwrap_or_default();
    let ident = NodeIdent::decode(node.clone()).unwrap_or_default();
    let max = shared.limits.max_streams;
    if shared.live.load(Ordering::Relaxed) >= max {
        let msg = format!(
            "this xDS replica is at its limit of {max} streams; connect to another replica"
        );
        let _ = tx.send(Err(Status::resource_exhausted(msg))).await;
        return;
    }
    if let Some(t) = only_type {
        if !first.type_url().is_empty() && first.type_url() != t {
            let _ = tx
                .send(Err(Status::invalid_argument(format!(
                    "this service serves {t} only"
                ))))
                .await;
            return;
        }
    }
    let sid = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (admit_tx, admit_rx) = oneshot::channel();
    let handle = Arc::new(Handle {
        id: sid,
        fleet: ident.cluster.clone(),
        overlays: Mutex::new((Arc::new(Overlays::new()), 0)),
        evicted: Mutex::new(None),
        notify: Notify::new(),
        state: Mutex::new(None),
        admit: Mutex::new(Some(admit_tx)),
    });
    shared
        .streams
        .lock()
        .expect("streams")
        .insert(sid, handle.clone());
    shared.live.fetch_add(1, Ordering::Relaxed);
    shared.events.push(Ev::Open {
        sid,
        protocol: R::PROTOCOL.name(),
        only_type: only_type.map(str::to_string),
        node,
        peer,
        cert,
    });
    let end = serve(
        &shared, &handle, inbound, &tx, first, only_type, ident, admit_rx,
    )
    .await;
    shared.streams.lock().expect("streams").remove(&sid);
    shared.live.fetch_sub(1, Ordering::Relaxed);
    let (code, message) = match end {
        Some(status) => {
            let out = (status.code() as i32, status.message().to_string());
            let _ = tx.try_send(Err(status));
            out
        }
        None => (0, String::new()),
    };
    shared.events.push(Ev::Close { sid, code, message });
}

/// Serve one admitted stream until it ends: None when the client went away, else the status
/// it ends with.
#[allow(clippy::too_many_arguments)]
async fn serve<R: XdsRequest>(
    shared: &Arc<Shared>,
    handle: &Arc<Handle>,
    mut inbound: Streaming<R>,
    tx: &Tx,
    first: R,
    only_type: Option<&'static str>,
    ident: NodeIdent,
    admit_rx: oneshot::Receiver<Verdict>,
) -> Option<Status> {
    let mut stopping = shared.stopping.subscribe();
    match tokio::time::timeout(ADMIT_TIMEOUT, admit_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err((code, message)))) => return Some(Status::new(code, message)),
        _ => {
            return Some(Status::unavailable(
                "this xDS replica did not admit the stream in time; retry",
            ))
        }
    }
    let Some(mut snaps) = shared.fleet(&ident.cluster) else {
        return Some(Status::unavailable(
            "no configuration for this fleet yet; retry",
        ));
    };
    let limits = &shared.limits;
    let mut stream = Stream::new(
        handle.id,
        R::PROTOCOL,
        only_type.map(str::to_string),
        ident.id.clone(),
        limits.bounds.clone(),
        shared.watched.clone(),
    );
    stream.warming_hold = limits.warming_hold;
    let mut snap = snaps.borrow_and_update().clone();
    if let Err(r) = first.apply(&mut stream, &snap) {
        return Some(Status::new(r.code, r.message));
    }
    *handle.state.lock().expect("state") = Some(stream);
    let mut ticker = tokio::time::interval(limits.ack_timeout / 4);
    ticker.tick().await;
    let mut last_pushed: HashMap<String, u64> = HashMap::new();
    loop {
        // Flush what is owed (against the latest snapshot: Python may have published just
        // before it settled a subscription), then wait for the next thing that can change that.
        if snaps.has_changed().unwrap_or(false) {
            snap = snaps.borrow_and_update().clone();
        }
        let (overlays, gen) = handle.overlays.lock().expect("overlays").clone();
        let (out, events, hold) = {
            let mut guard = handle.state.lock().expect("state");
            let s = guard.as_mut().expect("stream");
            let out = s.flush(&snap, &overlays, gen);
            (out, std::mem::take(&mut s.events), s.hold_until)
        };
        report(shared, handle, &snap, events, &mut last_pushed);
        for (_, parts) in out {
            match tokio::time::timeout(limits.write_timeout, tx.send(Ok(parts))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None, // the response stream is gone: the client left
                Err(_) => {
                    return Some(Status::deadline_exceeded(format!(
                        "stopped reading for {:.0}s; reconnect",
                        limits.write_timeout.as_secs_f64()
                    )))
                }
            }
        }
        let hold_until = hold.map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = stopping.changed() => return Some(Status::unavailable("this xDS replica is shutting down")),
            _ = handle.notify.notified() => {
                if let Some((code, message)) = handle.evicted.lock().expect("evicted").take() {
                    return Some(Status::new(code, message));
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if only_type.is_some_and(|t| !req.type_url().is_empty() && req.type_url() != t) {
                        continue;
                    }
                    snap = snaps.borrow_and_update().clone();
                    let mut guard = handle.state.lock().expect("state");
                    let s = guard.as_mut().expect("stream");
                    if let Err(r) = req.apply(s, &snap) {
                        return Some(Status::new(r.code, r.message));
                    }
                }
                Ok(None) => return None,
                Err(status) => return request_error(status),
            },
            changed = snaps.changed() => {
                if changed.is_err() {
                    return Some(Status::unavailable("this xDS replica is shutting down"));
                }
                snap = snaps.borrow_and_update().clone();
            }
            _ = async { tokio::time::sleep_until(hold_until.expect("hold")).await }, if hold_until.is_some() => {
                handle.state.lock().expect("state").as_mut().expect("stream").hold_ended();
            }
            _ = ticker.tick() => {
                let overdue = handle.state.lock().expect("state").as_ref().expect("stream").overdue(limits.ack_timeout);
                if overdue {
                    return Some(Status::deadline_exceeded(format!(
                        "no ACK/NACK within {:.0}s; reconnect",
                        limits.ack_timeout.as_secs_f64()
                    )));
                }
            }
        }
    }
}

/// The status a stream ends with after reading a request failed: None when the client went
/// away; a request over the size bound is RESOURCE_EXHAUSTED (what gRPC's own servers say).
fn request_error(status: Status) -> Option<Status> {
    match status.code() {
        Code::OutOfRange if status.message().contains("too large") => {
            Some(Status::resource_exhausted(format!(
                "request refused: {}; this replica accepts requests up to --max-request-bytes",
                status.message()
            )))
        }
        Code::Cancelled | Code::Unknown | Code::Unavailable => None,
        _ => Some(status),
    }
}

/// Count what a flush or request did, and queue what Python must hear.
fn report(
    shared: &Shared,
    handle: &Handle,
    snap: &FleetSnap,
    events: Vec<Event>,
    last_pushed: &mut HashMap<String, u64>,
) {
    let mut acked = 0u32;
    let mut synced = 0;
    for ev in events {
        match ev {
            Event::Pushed {
                type_url,
                bytes,
                resources,
                revision,
            } => {
                let m = shared.metrics.of(&type_url);
                m.pushes.fetch_add(1, Ordering::Relaxed);
                m.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                m.resources.fetch_add(resources as u64, Ordering::Relaxed);
                // Queue time counts only the first push of a newly published revision to this
                // stream (a push answering a new subscription is not waiting on a publish).
                let last = last_pushed.insert(type_url, revision);
                if let (Some(l), Some(at)) = (last, snap.published_at) {
                    if l < revision && revision == snap.revision {
                        m.queue.observe(at.elapsed().as_secs_f64());
                    }
                }
            }
            Event::Acked { type_url, latency } => {
                shared
                    .metrics
                    .of(&type_url)
                    .acks
                    .observe(latency.as_secs_f64());
                acked |= 1 << crate::types::rank(&type_url).min(31);
            }
            Event::Synced { revision } => synced = revision,
            Event::Nacked { type_url, nack } => shared.events.push(Ev::Nacked {
                sid: handle.id,
                type_url,
                nack,
            }),
            Event::Names {
                type_url,
                names,
                wildcard,
            } => shared.events.push(Ev::Names {
                sid: handle.id,
                type_url,
                names,
                wildcard,
            }),
        }
    }
    if acked != 0 || synced != 0 {
        shared.events.changed(handle.id, synced, acked);
    }
}

/// How long until `at`, as an Instant (for callers holding a Python monotonic time).
pub fn instant_from_monotonic(at: f64) -> Option<Instant> {
    let ago = crate::events::monotonic() - at;
    if ago < 0.0 {
        return Some(Instant::now());
    }
    Instant::now().checked_sub(Duration::from_secs_f64(ago))
}
