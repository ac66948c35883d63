//! One xDS stream's protocol state, free of I/O: requests go in (`on_sotw` / `on_delta`),
//! responses and events come out of `flush`. The server (`crate::server`) owns the socket
//! side; tests drive these state machines directly.
//!
//! Rules kept on both protocols (envoy api/xds_protocol, and lbcp's own):
//! - at most one response per type in flight; types go out in `types::ORDER`;
//! - listeners and routes wait while an earlier type is in flight, or (at most
//!   `WARMING_HOLD`) while clusters just sent still lack an endpoints subscription;
//! - after clusters change, their endpoints are sent again (Envoy re-warms an updated
//!   cluster and waits for EDS);
//! - a rejected version is never sent again until intent gives it a new one.

mod delta;
mod sotw;

use crate::proto::Parts;
use crate::snapshot::{FleetSnap, Name, Overlay, Table, View};
use crate::types::{self, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long listeners and routes wait for the client to subscribe to the endpoints of
/// clusters it was just sent (make before break) before they go anyway.
pub const WARMING_HOLD: Duration = Duration::from_secs(1);

/// How long a watched type waits for Python's answer to a new subscription before it goes
/// anyway (Python answers in well under a millisecond unless its loop is stalled).
pub const AWAIT_POLICY: Duration = Duration::from_secs(1);

static NONCES: AtomicU64 = AtomicU64::new(1);

fn next_nonce() -> String {
    format!("{:x}", NONCES.fetch_add(1, Ordering::Relaxed))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Sotw,
    Delta,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        }
    }
}

/// What one client may make a replica hold (docs/security.md, "Bounds").
#[derive(Clone, Debug)]
pub struct Bounds {
    pub max_names_per_type: usize,
    pub max_types: usize,
    pub max_nack_message: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_names_per_type: 20_000,
            max_types: 16,
            max_nack_message: 4096,
        }
    }
}

/// A request past a bound: the stream ends with this gRPC status.
#[derive(Clone, Debug, PartialEq)]
pub struct Reject {
    pub code: tonic::Code,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Nack {
    pub version: String,
    pub message: String,
    pub at: f64,
    pub revision: u64,
}

/// What a stream tells the rest of the replica.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The client rejected a response.
    Nacked { type_url: String, nack: Nack },
    /// The client accepted a response, `latency` after it was written.
    Acked { type_url: String, latency: Duration },
    /// A response was written: its size, resources, and the revision it carries.
    Pushed {
        type_url: String,
        bytes: usize,
        resources: usize,
        revision: u64,
    },
    /// The client holds everything of `revision` it subscribed to.
    Synced { revision: u64 },
    /// The subscription to a watched type changed: the names now subscribed (those with the
    /// watched prefix) and whether it is a wildcard.
    Names {
        type_url: String,
        names: Vec<String>,
        wildcard: bool,
    },
}

/// One resource type on one stream.
#[derive(Debug, Default)]
pub struct TypeState {
    pub requested: bool,
    pub wildcard: bool,
    pub names: HashSet<String>,
    pub in_flight: Option<String>,
    pub last_nonce: Option<String>,
    pub sent_version: Option<String>,
    pub sent_revision: u64,
    pub acked_version: Option<String>,
    pub nack: Option<Nack>,
    pub rejected_version: Option<String>,
    pub pushes: u64,
    pub bytes_sent: u64,
    pub sent_at: Option<Instant>,
    /// The type's version when this stream last evaluated it.
    pub seen_version: Option<String>,
    // Delta: what the client holds (name -> version), names reported missing, versions it
    // rejected; what the last diff compared against; names to look at again.
    pub have: HashMap<String, Arc<str>>,
    pub missing_reported: HashSet<String>,
    pub rejected: HashMap<String, Arc<str>>,
    pub evaluated_gen: Option<u64>,
    pub evaluated_version: Option<String>,
    pub full: bool,
    pub recheck: HashSet<String>,
    pub waiting: HashSet<String>,
    pub stuck: HashSet<String>,
    /// The overlay names the last diff saw (an overlay name that goes must be looked at).
    pub own_names: HashSet<Name>,
    // SotW named types: the version of each resource this stream was last sent.
    pub sent: HashMap<String, Arc<str>>,
}

/// A stream's own entries per type (see `snapshot::Overlay`).
pub type Overlays = HashMap<String, Arc<Overlay>>;

pub struct Stream {
    pub id: u64,
    pub protocol: Protocol,
    pub only_type: Option<String>,
    pub node_id: String,
    pub bounds: Bounds,
    pub types: HashMap<String, TypeState>,
    /// Types whose subscriptions are reported (`Event::Names`), with the name prefix kept.
    pub watched: Arc<HashMap<String, String>>,
    pub acked_revision: u64,
    pub served_revision: u64,
    dirty_types: HashSet<String>,
    hold_expired: bool,
    /// When a warming hold ends (the server wakes the stream then).
    pub hold_until: Option<Instant>,
    /// How long listeners and routes wait for endpoint subscriptions (`WARMING_HOLD`).
    pub warming_hold: Duration,
    /// Watched types whose new subscription Python has not answered yet (its answer may be
    /// this stream's own entries, or names it starts building): they wait, at most until
    /// `awaiting_until`.
    awaiting: HashSet<String>,
    awaiting_until: Option<Instant>,
    /// What was last reported per watched type (names with the prefix, wildcard).
    reported: HashMap<String, (Vec<String>, bool)>,
    rewarm: HashSet<String>,
    cds_sent_at: Option<Instant>,
    /// Delta: clusters the client holds that may still lack an endpoints subscription.
    unwarmed: HashSet<String>,
    /// Delta: versions in each type's in-flight response.
    pending: HashMap<String, HashMap<String, Arc<str>>>,
    /// SotW: the clusters table last sent (what re-warming compares against).
    cds_sent: Option<Arc<Table>>,
    /// The snapshot and overlays of the last flush (nothing to do when both are the same
    /// and no request came).
    last: Option<(Arc<FleetSnap>, u64)>,
    pub events: Vec<Event>,
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Stream {
    pub fn new(
        id: u64,
        protocol: Protocol,
        only_type: Option<String>,
        node_id: String,
        bounds: Bounds,
        watched: Arc<HashMap<String, String>>,
    ) -> Stream {
        Stream {
            id,
            protocol,
            only_type,
            node_id,
            bounds,
            types: HashMap::new(),
            watched,
            acked_revision: 0,
            served_revision: 0,
            dirty_types: HashSet::new(),
            hold_expired: false,
            hold_until: None,
            warming_hold: WARMING_HOLD,
            awaiting: HashSet::new(),
            awaiting_until: None,
            reported: HashMap::new(),
            rewarm: HashSet::new(),
            cds_sent_at: None,
            unwarmed: HashSet::new(),
            pending: HashMap::new(),
            cds_sent: None,
            last: None,
            events: Vec::new(),
        }
    }

    fn state(&mut self, type_url: &str) -> Result<&mut TypeState, Reject> {
        if !self.types.contains_key(type_url) {
            if self.types.len() >= self.bounds.max_types {
                return Err(Reject {
                    code: tonic::Code::ResourceExhausted,
                    message: format!(
                        "node {:?}: a stream may use at most {} resource types; {:?} would be one more",
                        self.node_id,
                        self.bounds.max_types,
                        type_url.chars().take(200).collect::<String>()
                    ),
                });
            }
            self.types
                .insert(type_url.to_string(), TypeState::default());
        }
        Ok(self.types.get_mut(type_url).expect("inserted above"))
    }

    fn check_names(&self, type_url: &str, count: usize) -> Result<(), Reject> {
        if count > self.bounds.max_names_per_type {
            return Err(Reject {
                code: tonic::Code::ResourceExhausted,
                message: format!(
                    "node {:?}: this request would subscribe to {count} names of {type_url}; a stream may hold at \
                     most {} per type (--max-subscriptions)",
                    self.node_id, self.bounds.max_names_per_type
                ),
            });
        }
        Ok(())
    }

    /// The type a request is about (a per-type service's requests may leave it empty).
    fn request_type(&self, type_url: &str) -> String {
        if type_url.is_empty() {
            self.only_type.clone().unwrap_or_default()
        } else {
            type_url.to_string()
        }
    }

    fn poke(&mut self, type_url: &str) {
        self.dirty_types.insert(type_url.to_string());
    }

    fn record_ack(&mut self, type_url: &str, version: String) {
        let st = self.types.get_mut(type_url).expect("type state");
        st.acked_version = Some(version);
        st.in_flight = None;
        let latency = st.sent_at.map(|t| t.elapsed()).unwrap_or_default();
        self.events.push(Event::Acked {
            type_url: type_url.to_string(),
            latency,
        });
    }

    /// The client rejected the response in flight with `detail` (Envoy's message).
    fn record_nack(
        &mut self,
        type_url: &str,
        detail: Option<&crate::proto::Status>,
        revision: u64,
    ) {
        let message = detail.map(|d| d.message.as_str()).unwrap_or_default();
        let limit = self.bounds.max_nack_message;
        let st = self.types.get_mut(type_url).expect("type state");
        st.in_flight = None;
        let count = message.chars().count();
        let message = if count > limit {
            let kept: String = message.chars().take(limit).collect();
            format!(
                "{kept}… [lbcp: cut {} of {count} characters]",
                count - limit
            )
        } else {
            message.to_string()
        };
        let nack = Nack {
            version: st.sent_version.clone().unwrap_or_default(),
            message,
            at: now_unix(),
            revision: if st.sent_revision != 0 {
                st.sent_revision
            } else {
                revision
            },
        };
        st.rejected_version = st.sent_version.clone();
        st.nack = Some(nack.clone());
        self.events.push(Event::Nacked {
            type_url: type_url.to_string(),
            nack,
        });
    }

    /// Report a watched type's subscription when a request changed it (its names with the
    /// watched prefix, or its wildcard): the type waits for Python's answer (`settle`).
    fn report_names(&mut self, type_url: &str) {
        let Some(prefix) = self.watched.get(type_url) else {
            return;
        };
        let Some(st) = self.types.get(type_url) else {
            return;
        };
        let mut names: Vec<String> = st
            .names
            .iter()
            .filter(|n| n.starts_with(prefix.as_str()))
            .cloned()
            .collect();
        names.sort();
        let now = (names, st.wildcard);
        let before = self.reported.get(type_url).cloned().unwrap_or_default();
        if now == before {
            return;
        }
        self.reported.insert(type_url.to_string(), now.clone());
        self.events.push(Event::Names {
            type_url: type_url.to_string(),
            names: now.0,
            wildcard: now.1,
        });
        self.awaiting.insert(type_url.to_string());
        let until = Instant::now() + AWAIT_POLICY;
        self.awaiting_until = Some(until);
        self.hold_until = Some(self.hold_until.map_or(until, |h| h.min(until)));
    }

    /// Python answered a watched subscription of `type_url`: it may go now.
    pub fn settle(&mut self, type_url: &str) {
        if self.awaiting.remove(type_url) {
            self.poke(type_url);
        }
    }

    /// Some response has waited longer than `limit` for its ACK/NACK.
    pub fn overdue(&self, limit: Duration) -> bool {
        self.types
            .values()
            .any(|st| st.in_flight.is_some() && st.sent_at.is_some_and(|t| t.elapsed() > limit))
    }

    /// A warming hold (or a wait for Python) ended: look at the held types again.
    pub fn hold_ended(&mut self) {
        self.hold_until = None;
        self.hold_expired = true;
        if self.awaiting_until.is_some_and(|t| Instant::now() >= t) {
            self.awaiting_until = None;
            for t in std::mem::take(&mut self.awaiting) {
                self.dirty_types.insert(t);
            }
        }
    }

    fn ordered_types(&self) -> Vec<String> {
        let mut out: Vec<String> = self.types.keys().cloned().collect();
        out.sort_by(|a, b| (types::rank(a), a).cmp(&(types::rank(b), b)));
        out
    }

    fn view<'a>(snap: &'a FleetSnap, overlays: &'a Overlays, type_url: &str) -> View<'a> {
        View {
            base: snap.table(type_url),
            own: overlays.get(type_url).map(|o| o.as_ref()),
        }
    }

    /// The version of what this stream is owed of `type_url`.
    fn type_version(&self, snap: &FleetSnap, overlays: &Overlays, type_url: &str) -> String {
        let view = Self::view(snap, overlays, type_url);
        match (self.protocol, self.types.get(type_url)) {
            (Protocol::Sotw, Some(st)) if !st.wildcard => {
                view.names_version(st.names.iter().map(String::as_str))
            }
            _ => view.version(),
        }
    }

    /// Write what `snap` (with this stream's `overlays`, of generation `overlay_gen`) owes
    /// this stream: the responses, in order. Events go to `self.events`.
    pub fn flush(
        &mut self,
        snap: &Arc<FleetSnap>,
        overlays: &Overlays,
        overlay_gen: u64,
    ) -> Vec<(String, Parts)> {
        let same = matches!(&self.last, Some((s, g)) if Arc::ptr_eq(s, snap) && *g == overlay_gen);
        if same && self.dirty_types.is_empty() && !self.hold_expired {
            return Vec::new();
        }
        self.last = Some((snap.clone(), overlay_gen));
        self.served_revision = snap.revision;
        let dirty = std::mem::take(&mut self.dirty_types);
        self.hold_expired = false;
        let mut owed: Option<bool> = None;
        let mut out = Vec::new();
        for t in self.ordered_types() {
            let st = &self.types[&t];
            if !st.requested || st.in_flight.is_some() {
                continue;
            }
            if self.awaiting.contains(&t) {
                if dirty.contains(&t) {
                    self.dirty_types.insert(t.clone());
                }
                continue;
            }
            let version = self.type_version(snap, overlays, &t);
            let st = &self.types[&t];
            // Unchanged since it last looked, no request since, no endpoints owed a re-warm.
            let rewarm_owed = t == ENDPOINT && !self.rewarm.is_empty();
            if !dirty.contains(&t)
                && st.seen_version.as_deref() == Some(version.as_str())
                && !rewarm_owed
            {
                continue;
            }
            if t == LISTENER || t == ROUTE {
                let o = *owed.get_or_insert_with(|| self.eds_owed(snap));
                if self.holding_for_warming(&t, o) {
                    if dirty.contains(&t) {
                        self.dirty_types.insert(t.clone());
                    }
                    continue;
                }
            }
            let sent = match self.protocol {
                Protocol::Sotw => self.flush_sotw(&t, snap, overlays, &version),
                Protocol::Delta => self.flush_delta(&t, snap, overlays, &version),
            };
            if let Some(parts) = sent {
                out.push((t.clone(), parts));
            }
            self.types.get_mut(&t).expect("type").seen_version = Some(version);
        }
        match self.protocol {
            Protocol::Sotw => self.update_synced_sotw(snap, overlays),
            Protocol::Delta => self.update_synced_delta(snap, overlays),
        }
        out
    }

    /// Record a response as in flight. `rewarm`: clusters whose endpoints must be sent again.
    #[allow(clippy::too_many_arguments)]
    fn sent(
        &mut self,
        type_url: &str,
        snap: &FleetSnap,
        nonce: String,
        version: String,
        parts: &Parts,
        names: &[Name],
        rewarm: HashSet<String>,
    ) {
        let st = self.types.get_mut(type_url).expect("type");
        st.in_flight = Some(nonce.clone());
        st.last_nonce = Some(nonce);
        st.sent_version = Some(version);
        st.sent_at = Some(Instant::now());
        st.sent_revision = snap.revision;
        st.pushes += 1;
        let bytes = parts.len();
        st.bytes_sent += bytes as u64;
        if type_url == CLUSTER {
            self.rewarm.extend(rewarm);
            self.cds_sent_at = Some(Instant::now());
        } else if type_url == ENDPOINT {
            for n in names {
                self.rewarm.remove(n.as_ref());
            }
        }
        self.events.push(Event::Pushed {
            type_url: type_url.to_string(),
            bytes,
            resources: names.len(),
            revision: snap.revision,
        });
    }

    /// Listeners and routes wait while clusters/endpoints are in flight or warming.
    fn holding_for_warming(&mut self, type_url: &str, eds_owed: bool) -> bool {
        if type_url != LISTENER && type_url != ROUTE {
            return false;
        }
        let rank = types::rank(type_url);
        if types::ORDER[..rank]
            .iter()
            .any(|t| self.types.get(*t).is_some_and(|st| st.in_flight.is_some()))
        {
            return true;
        }
        if eds_owed {
            if let Some(at) = self.cds_sent_at {
                let until = at + self.warming_hold;
                if Instant::now() < until {
                    self.hold_until = Some(self.hold_until.map_or(until, |h| h.min(until)));
                    return true;
                }
            }
        }
        false
    }

    /// Clusters the client has that need endpoints it has not subscribed to yet.
    fn eds_owed(&mut self, snap: &FleetSnap) -> bool {
        let (Some(eds), Some(_)) = (self.types.get(ENDPOINT), self.types.get(CLUSTER)) else {
            return false;
        };
        if !eds.requested {
            return false;
        }
        let needed = snap.table(ENDPOINT);
        match self.protocol {
            Protocol::Sotw => needed
                .entries
                .keys()
                .any(|n| !eds.names.contains(n.as_ref())),
            Protocol::Delta => {
                let cds = &self.types[CLUSTER];
                let mut owed = false;
                let mut done = Vec::new();
                for n in &self.unwarmed {
                    if cds.have.contains_key(n) && needed.get(n).is_some() && !eds.names.contains(n)
                    {
                        owed = true;
                        break;
                    }
                    done.push(n.clone());
                }
                for n in done {
                    self.unwarmed.remove(&n);
                }
                owed
            }
        }
    }

    /// Per-type state for the registry's record.
    pub fn type_states(&self) -> impl Iterator<Item = (&String, &TypeState)> {
        self.types.iter()
    }
}

#[cfg(test)]
mod tests;
