//! The protocol state machines driven directly: requests in, decoded responses out.

use super::*;
use crate::proto::{ld, DeltaDiscoveryRequest, DiscoveryRequest, Status};
use crate::snapshot::{Change, Entry, FleetSnap, Overlay, Table};
use crate::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, PartialEq, prost::Message)]
struct SotwResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(bytes = "vec", repeated, tag = "2")]
    resources: Vec<Vec<u8>>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeltaResponse {
    #[prost(string, tag = "1")]
    system_version_info: String,
    #[prost(bytes = "vec", repeated, tag = "2")]
    resources: Vec<Vec<u8>>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(string, repeated, tag = "6")]
    removed_resources: Vec<String>,
}

fn entry(name: &str, version: &str) -> Arc<Entry> {
    let mix = xxhash_rust::xxh3::xxh3_128(format!("{name}\0{version}").as_bytes());
    let body = format!("{name}={version}");
    Arc::new(Entry {
        version: version.into(),
        mix,
        sotw: ld(2, body.as_bytes()),
        delta: ld(2, body.as_bytes()),
    })
}

/// A fleet's tables, derived one publish at a time.
struct Fleet {
    gen: u64,
    revision: u64,
    tables: HashMap<String, Arc<Table>>,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            gen: 0,
            revision: 0,
            tables: HashMap::new(),
        }
    }

    fn publish(&mut self, items: &[(&str, &str, Option<&str>)]) -> Arc<FleetSnap> {
        self.publish_pending(items, &[])
    }

    fn publish_pending(
        &mut self,
        items: &[(&str, &str, Option<&str>)],
        pending: &[(&str, &str)],
    ) -> Arc<FleetSnap> {
        self.revision += 1;
        let mut by_type: HashMap<&str, Vec<Change>> = HashMap::new();
        for (t, n, v) in items {
            by_type
                .entry(t)
                .or_default()
                .push((Arc::from(*n), v.map(|v| entry(n, v))));
        }
        let mut pend: HashMap<&str, HashSet<String>> = HashMap::new();
        for (t, n) in pending {
            pend.entry(t).or_default().insert(n.to_string());
            by_type.entry(t).or_default();
        }
        for (t, ch) in by_type {
            self.gen += 1;
            let base = self.tables.get(t).cloned().unwrap_or_default();
            let p = pend.remove(t);
            self.tables
                .insert(t.to_string(), Arc::new(base.derive(self.gen, ch, false, p)));
        }
        Arc::new(FleetSnap {
            revision: self.revision,
            tables: self.tables.clone(),
            ..FleetSnap::default()
        })
    }
}

fn stream(protocol: Protocol) -> Stream {
    Stream::new(
        1,
        protocol,
        None,
        "n1".into(),
        Bounds::default(),
        Arc::new(HashMap::new()),
    )
}

fn sotw_req(t: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: t.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn nack_sotw(t: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: t.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        error_detail: Some(Status {
            code: 3,
            message: "bad".into(),
        }),
        ..Default::default()
    }
}

fn delta_req(t: &str, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: t.into(),
        resource_names_subscribe: sub.iter().map(|n| n.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn flush(s: &mut Stream, snap: &Arc<FleetSnap>) -> Vec<(String, Parts)> {
    s.flush(snap, &Overlays::new(), 0)
}

fn sotw(p: &Parts) -> SotwResponse {
    SotwResponse::decode(&p.concat()[..]).unwrap()
}

fn delta(p: &Parts) -> DeltaResponse {
    DeltaResponse::decode(&p.concat()[..]).unwrap()
}

fn bodies(resources: &[Vec<u8>]) -> Vec<String> {
    resources
        .iter()
        .map(|r| String::from_utf8(r.clone()).unwrap())
        .collect()
}

fn synced(s: &mut Stream) -> Option<u64> {
    s.events
        .drain(..)
        .filter_map(|e| {
            if let Event::Synced { revision } = e {
                Some(revision)
            } else {
                None
            }
        })
        .next_back()
}

#[test]
fn sotw_wildcard_ack_and_update() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(CLUSTER, "a", Some("1")), (CLUSTER, "b", Some("1"))]);
    let mut s = stream(Protocol::Sotw);
    s.on_sotw(sotw_req(CLUSTER, &[], "", ""), &snap).unwrap();
    let out = flush(&mut s, &snap);
    assert_eq!(out.len(), 1);
    let r = sotw(&out[0].1);
    assert_eq!(bodies(&r.resources), ["a=1", "b=1"]);
    assert_eq!(r.type_url, CLUSTER);
    // Nothing more until the ACK; then synced.
    assert!(flush(&mut s, &snap).is_empty());
    s.on_sotw(sotw_req(CLUSTER, &[], &r.version_info, &r.nonce), &snap)
        .unwrap();
    assert!(flush(&mut s, &snap).is_empty());
    assert_eq!(synced(&mut s), Some(snap.revision));
    // A change: CDS carries every cluster again (the protocol requires it).
    let snap2 = f.publish(&[(CLUSTER, "b", Some("2"))]);
    let out = flush(&mut s, &snap2);
    assert_eq!(bodies(&sotw(&out[0].1).resources), ["a=1", "b=2"]);
}

#[test]
fn sotw_stale_nonce_is_ignored_and_nack_is_not_resent() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(ENDPOINT, "a", Some("1"))]);
    let mut s = stream(Protocol::Sotw);
    s.on_sotw(sotw_req(ENDPOINT, &["a"], "", ""), &snap)
        .unwrap();
    let r = sotw(&flush(&mut s, &snap)[0].1);
    // A request answering an older nonce changes nothing, not even subscriptions.
    s.on_sotw(
        sotw_req(ENDPOINT, &["a", "zz"], "", "not-the-latest"),
        &snap,
    )
    .unwrap();
    assert_eq!(s.types[ENDPOINT].names.len(), 1);
    s.on_sotw(nack_sotw(ENDPOINT, &["a"], &r.nonce), &snap)
        .unwrap();
    assert!(s.events.iter().any(|e| matches!(e, Event::Nacked { .. })));
    // The rejected version is never sent again...
    assert!(flush(&mut s, &snap).is_empty());
    let same = f.publish(&[(CLUSTER, "unrelated", Some("1"))]);
    assert!(flush(&mut s, &same).is_empty());
    // ...until intent gives it a new one.
    let snap3 = f.publish(&[(ENDPOINT, "a", Some("2"))]);
    assert_eq!(
        bodies(&sotw(&flush(&mut s, &snap3)[0].1).resources),
        ["a=2"]
    );
}

#[test]
fn sotw_named_types_send_only_what_changed_and_wait_for_missing_names() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(ENDPOINT, "a", Some("1")), (ENDPOINT, "b", Some("1"))]);
    let mut s = stream(Protocol::Sotw);
    s.on_sotw(sotw_req(ENDPOINT, &["a", "b", "c"], "", ""), &snap)
        .unwrap();
    let r = sotw(&flush(&mut s, &snap)[0].1);
    assert_eq!(bodies(&r.resources), ["a=1", "b=1"]);
    s.on_sotw(
        sotw_req(ENDPOINT, &["a", "b", "c"], &r.version_info, &r.nonce),
        &snap,
    )
    .unwrap();
    let snap2 = f.publish(&[(ENDPOINT, "b", Some("2"))]);
    let r = sotw(&flush(&mut s, &snap2)[0].1);
    assert_eq!(bodies(&r.resources), ["b=2"]);
    s.on_sotw(
        sotw_req(ENDPOINT, &["a", "b", "c"], &r.version_info, &r.nonce),
        &snap2,
    )
    .unwrap();
    // "c" appears: sent when it exists.
    let snap3 = f.publish(&[(ENDPOINT, "c", Some("1"))]);
    assert_eq!(
        bodies(&sotw(&flush(&mut s, &snap3)[0].1).resources),
        ["c=1"]
    );
}

#[test]
fn sotw_reconnect_with_current_version_gets_nothing() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(CLUSTER, "a", Some("1"))]);
    let version = snap.table(CLUSTER).version();
    let mut s = stream(Protocol::Sotw);
    s.on_sotw(sotw_req(CLUSTER, &[], &version, ""), &snap)
        .unwrap();
    assert!(flush(&mut s, &snap).is_empty());
    assert_eq!(synced(&mut s), Some(snap.revision));
}

#[test]
fn sotw_updated_cluster_gets_its_endpoints_again() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(CLUSTER, "a", Some("1")), (ENDPOINT, "a", Some("1"))]);
    let mut s = stream(Protocol::Sotw);
    s.on_sotw(sotw_req(CLUSTER, &[], "", ""), &snap).unwrap();
    s.on_sotw(sotw_req(ENDPOINT, &["a"], "", ""), &snap)
        .unwrap();
    let out = flush(&mut s, &snap);
    assert_eq!(types_of(&out), [CLUSTER, ENDPOINT]);
    for (t, p) in &out {
        let r = sotw(p);
        s.on_sotw(
            sotw_req(
                t,
                if t == ENDPOINT { &["a"] } else { &[] },
                &r.version_info,
                &r.nonce,
            ),
            &snap,
        )
        .unwrap();
    }
    let snap2 = f.publish(&[(CLUSTER, "a", Some("2"))]);
    // The endpoints did not change, but Envoy re-warms the updated cluster and waits for
    // them: they follow the clusters at once.
    let out = flush(&mut s, &snap2);
    assert_eq!(types_of(&out), [CLUSTER, ENDPOINT]);
    assert_eq!(bodies(&sotw(&out[0].1).resources), ["a=2"]);
    assert_eq!(bodies(&sotw(&out[1].1).resources), ["a=1"]);
}

/// The types of a flush's responses, in order.
fn types_of(out: &[(String, Parts)]) -> Vec<&str> {
    out.iter().map(|(t, _)| t.as_str()).collect()
}

/// A delta stream holding back its listeners: clusters sent and ACKed, but the client has
/// not subscribed to their endpoints yet (make before break).
fn warming() -> (Arc<FleetSnap>, Stream) {
    let mut f = Fleet::new();
    let snap = f.publish(&[
        (CLUSTER, "a", Some("1")),
        (ENDPOINT, "a", Some("1")),
        (LISTENER, "l", Some("1")),
    ]);
    let mut s = stream(Protocol::Delta);
    s.on_delta(delta_req(CLUSTER, &[], &[], ""), &snap).unwrap();
    s.on_delta(delta_req(LISTENER, &[], &[], ""), &snap)
        .unwrap();
    s.on_delta(delta_req(ENDPOINT, &[], &[], ""), &snap)
        .unwrap();
    let out = flush(&mut s, &snap);
    // Clusters go; listeners wait while they are in flight.
    assert_eq!(types_of(&out), [CLUSTER]);
    s.on_delta(delta_req(CLUSTER, &[], &[], &delta(&out[0].1).nonce), &snap)
        .unwrap();
    // Acked, but the client has not subscribed to the cluster's endpoints: still held.
    assert!(flush(&mut s, &snap).is_empty());
    assert!(s.hold_until.is_some());
    (snap, s)
}

#[test]
fn listeners_wait_for_clusters_in_flight_and_for_warming() {
    let (snap, mut s) = warming();
    s.on_delta(delta_req(ENDPOINT, &["a"], &[], ""), &snap)
        .unwrap();
    let out = flush(&mut s, &snap);
    // Endpoints go; listeners wait while they are in flight, and go once they are ACKed.
    assert_eq!(types_of(&out), [ENDPOINT]);
    s.on_delta(
        delta_req(ENDPOINT, &[], &[], &delta(&out[0].1).nonce),
        &snap,
    )
    .unwrap();
    assert_eq!(types_of(&flush(&mut s, &snap)), [LISTENER]);
}

#[test]
fn warming_hold_ends_by_itself() {
    let (snap, mut s) = warming();
    s.cds_sent_at = Some(Instant::now() - s.warming_hold - Duration::from_millis(1));
    s.hold_ended();
    assert_eq!(types_of(&flush(&mut s, &snap)), [LISTENER]);
}

#[test]
fn delta_sends_only_differences_and_removals() {
    let mut f = Fleet::new();
    let snap = f.publish(&[
        (CLUSTER, "a", Some("1")),
        (CLUSTER, "b", Some("1")),
        (CLUSTER, "c", Some("1")),
    ]);
    let mut s = stream(Protocol::Delta);
    let mut req = delta_req(CLUSTER, &[], &[], "");
    // Reconnecting: it holds a@1 and b@0 and a cluster that is gone.
    req.initial_resource_versions = [("a", "1"), ("b", "0"), ("gone", "1")]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    s.on_delta(req, &snap).unwrap();
    let r = delta(&flush(&mut s, &snap)[0].1);
    assert_eq!(bodies(&r.resources), ["b=1", "c=1"]);
    assert_eq!(r.removed_resources, ["gone"]);
    s.on_delta(delta_req(CLUSTER, &[], &[], &r.nonce), &snap)
        .unwrap();
    assert!(flush(&mut s, &snap).is_empty());
    assert_eq!(synced(&mut s), Some(snap.revision));
    let snap2 = f.publish(&[(CLUSTER, "c", None), (CLUSTER, "a", Some("2"))]);
    let r = delta(&flush(&mut s, &snap2)[0].1);
    assert_eq!(bodies(&r.resources), ["a=2"]);
    assert_eq!(r.removed_resources, ["c"]);
    assert_eq!(r.system_version_info, snap2.revision.to_string());
}

#[test]
fn delta_missing_names_are_reported_once_and_pending_names_wait() {
    let mut f = Fleet::new();
    let snap = f.publish_pending(&[(ENDPOINT, "a", Some("1"))], &[(ENDPOINT, "building")]);
    let mut s = stream(Protocol::Delta);
    s.on_delta(
        delta_req(ENDPOINT, &["a", "nope", "building"], &[], ""),
        &snap,
    )
    .unwrap();
    let r = delta(&flush(&mut s, &snap)[0].1);
    assert_eq!(bodies(&r.resources), ["a=1"]);
    assert_eq!(r.removed_resources, ["nope"]);
    s.on_delta(delta_req(ENDPOINT, &[], &[], &r.nonce), &snap)
        .unwrap();
    // Not reported again; the pending one arrives when it is built.
    let snap2 = f.publish_pending(&[(ENDPOINT, "building", Some("1"))], &[]);
    let r = delta(&flush(&mut s, &snap2)[0].1);
    assert_eq!(bodies(&r.resources), ["building=1"]);
    assert!(r.removed_resources.is_empty());
}

#[test]
fn delta_nack_is_never_resent_until_a_new_version() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(CLUSTER, "a", Some("1"))]);
    let mut s = stream(Protocol::Delta);
    s.on_delta(delta_req(CLUSTER, &[], &[], ""), &snap).unwrap();
    let r = delta(&flush(&mut s, &snap)[0].1);
    s.on_delta(delta_req(CLUSTER, &[], &[], &r.nonce), &snap)
        .unwrap();
    let snap2 = f.publish(&[(CLUSTER, "a", Some("2"))]);
    let r = delta(&flush(&mut s, &snap2)[0].1);
    let mut nack = delta_req(CLUSTER, &[], &[], &r.nonce);
    nack.error_detail = Some(Status {
        code: 3,
        message: "x".repeat(5000),
    });
    s.on_delta(nack, &snap2).unwrap();
    let Some(Event::Nacked { nack, .. }) = s
        .events
        .iter()
        .find(|e| matches!(e, Event::Nacked { .. }))
        .cloned()
    else {
        panic!("no NACK event")
    };
    assert!(nack.message.ends_with("[lbcp: cut 904 of 5000 characters]"));
    assert!(flush(&mut s, &snap2).is_empty());
    let other = f.publish(&[(CLUSTER, "b", Some("1"))]);
    let r = delta(&flush(&mut s, &other)[0].1);
    assert_eq!(bodies(&r.resources), ["b=1"]); // the rest of a change still flows
    s.on_delta(delta_req(CLUSTER, &[], &[], &r.nonce), &other)
        .unwrap();
    assert_eq!(synced(&mut s), None); // it holds a rejected resource: not synced
    let snap3 = f.publish(&[(CLUSTER, "a", Some("3"))]);
    assert_eq!(
        bodies(&delta(&flush(&mut s, &snap3)[0].1).resources),
        ["a=3"]
    );
}

#[test]
fn delta_wildcard_toggle_and_resubscribe() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(LISTENER, "a", Some("1")), (LISTENER, "b", Some("1"))]);
    let mut s = stream(Protocol::Delta);
    s.on_delta(delta_req(LISTENER, &["a"], &[], ""), &snap)
        .unwrap();
    let r = delta(&flush(&mut s, &snap)[0].1);
    assert_eq!(bodies(&r.resources), ["a=1"]);
    s.on_delta(delta_req(LISTENER, &["*"], &[], &r.nonce), &snap)
        .unwrap();
    let r = delta(&flush(&mut s, &snap)[0].1);
    assert_eq!(bodies(&r.resources), ["b=1"]);
    s.on_delta(delta_req(LISTENER, &[], &["*", "a"], &r.nonce), &snap)
        .unwrap();
    let r = delta(&flush(&mut s, &snap)[0].1);
    assert_eq!(r.removed_resources, ["b"]);
    s.on_delta(delta_req(LISTENER, &["a"], &[], &r.nonce), &snap)
        .unwrap();
    let r = delta(&flush(&mut s, &snap)[0].1);
    assert_eq!(bodies(&r.resources), ["a=1"]);
}

#[test]
fn first_wildcard_is_answered_even_when_empty() {
    let mut f = Fleet::new();
    let snap = f.publish(&[]);
    let mut s = stream(Protocol::Delta);
    s.on_delta(delta_req(CLUSTER, &[], &[], ""), &snap).unwrap();
    let out = flush(&mut s, &snap);
    assert_eq!(out.len(), 1);
    assert!(delta(&out[0].1).resources.is_empty());
}

#[test]
fn overlays_serve_a_stream_its_own_entries() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(ENDPOINT, "a", Some("1")), (ROUTE, "r", Some("1"))]);
    let mut s = stream(Protocol::Delta);
    s.on_delta(delta_req(ENDPOINT, &["a", "gate/n1"], &[], ""), &snap)
        .unwrap();
    let mut own = Overlays::new();
    let gate = |v: &str| {
        let mut o = Overlay::default();
        o.entries.insert("gate/n1".into(), entry("gate/n1", v));
        Arc::new(o)
    };
    own.insert(ENDPOINT.to_string(), gate("up"));
    let r = delta(&s.flush(&snap, &own, 1)[0].1);
    assert_eq!(bodies(&r.resources), ["a=1", "gate/n1=up"]);
    s.on_delta(delta_req(ENDPOINT, &[], &[], &r.nonce), &snap)
        .unwrap();
    assert!(s.flush(&snap, &own, 1).is_empty());
    own.insert(ENDPOINT.to_string(), gate("drained"));
    let r = delta(&s.flush(&snap, &own, 2)[0].1);
    assert_eq!(bodies(&r.resources), ["gate/n1=drained"]);
    s.on_delta(delta_req(ENDPOINT, &[], &[], &r.nonce), &snap)
        .unwrap();
    // The overlay goes: the name is gone for this stream.
    let r = delta(&s.flush(&snap, &Overlays::new(), 3)[0].1);
    assert_eq!(r.removed_resources, ["gate/n1"]);
}

#[test]
fn bounds_end_the_stream() {
    let mut f = Fleet::new();
    let snap = f.publish(&[]);
    let mut s = Stream::new(
        1,
        Protocol::Delta,
        None,
        "n1".into(),
        Bounds {
            max_names_per_type: 2,
            max_types: 2,
            max_nack_message: 10,
        },
        Arc::new(HashMap::new()),
    );
    let err = s
        .on_delta(delta_req(ENDPOINT, &["a", "b", "c"], &[], ""), &snap)
        .unwrap_err();
    assert_eq!(err.code, tonic::Code::ResourceExhausted);
    s.on_delta(delta_req(CLUSTER, &[], &[], ""), &snap).unwrap();
    let err = s
        .on_delta(delta_req(ROUTE, &[], &[], ""), &snap)
        .unwrap_err();
    assert!(
        err.message.contains("at most 2 resource types"),
        "{}",
        err.message
    );
}

#[test]
fn watched_types_report_their_subscriptions() {
    let mut f = Fleet::new();
    let snap = f.publish(&[]);
    let watched = Arc::new(HashMap::from([(
        ENDPOINT.to_string(),
        "lbcp.gate/".to_string(),
    )]));
    let mut s = Stream::new(
        1,
        Protocol::Delta,
        None,
        "n1".into(),
        Bounds::default(),
        watched,
    );
    s.on_delta(delta_req(ENDPOINT, &["a", "lbcp.gate/n1"], &[], ""), &snap)
        .unwrap();
    let names: Vec<_> = s
        .events
        .iter()
        .filter(|e| matches!(e, Event::Names { .. }))
        .cloned()
        .collect();
    assert_eq!(
        names,
        [Event::Names {
            type_url: ENDPOINT.into(),
            names: vec!["lbcp.gate/n1".into()],
            wildcard: false
        }]
    );
}

#[test]
fn delta_diff_cost_follows_the_change_log() {
    // 1,000 clusters; one changes: the diff looks at the log, and sends one.
    let mut f = Fleet::new();
    let names: Vec<String> = (0..1000).map(|i| format!("c{i:04}")).collect();
    let items: Vec<(&str, &str, Option<&str>)> = names
        .iter()
        .map(|n| (CLUSTER, n.as_str(), Some("1")))
        .collect();
    let snap = f.publish(&items);
    let mut s = stream(Protocol::Delta);
    s.on_delta(delta_req(CLUSTER, &[], &[], ""), &snap).unwrap();
    let r = delta(&flush(&mut s, &snap)[0].1);
    assert_eq!(r.resources.len(), 1000);
    s.on_delta(delta_req(CLUSTER, &[], &[], &r.nonce), &snap)
        .unwrap();
    let snap2 = f.publish(&[(CLUSTER, "c0500", Some("2"))]);
    let r = delta(&flush(&mut s, &snap2)[0].1);
    assert_eq!(bodies(&r.resources), ["c0500=2"]);
    assert_eq!(
        s.types[CLUSTER].evaluated_gen,
        Some(snap2.table(CLUSTER).gen)
    );
}

#[test]
fn watched_subscriptions_wait_for_python_then_go() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(ENDPOINT, "a", Some("1"))]);
    let watched = Arc::new(HashMap::from([(
        ENDPOINT.to_string(),
        "lbcp.gate/".to_string(),
    )]));
    let mut s = Stream::new(
        1,
        Protocol::Sotw,
        None,
        "n1".into(),
        Bounds::default(),
        watched,
    );
    s.on_sotw(sotw_req(ENDPOINT, &["a", "lbcp.gate/n1"], "", ""), &snap)
        .unwrap();
    // Python has not answered: nothing yet, and a wake-up is due within AWAIT_POLICY.
    assert!(flush(&mut s, &snap).is_empty());
    assert!(s.hold_until.is_some());
    let mut own = Overlays::new();
    let mut o = Overlay::default();
    o.entries
        .insert("lbcp.gate/n1".into(), entry("lbcp.gate/n1", "up"));
    own.insert(ENDPOINT.to_string(), Arc::new(o));
    s.settle(ENDPOINT);
    let out = s.flush(&snap, &own, 1);
    assert_eq!(
        bodies(&sotw(&out[0].1).resources),
        ["a=1", "lbcp.gate/n1=up"]
    );
    // A subscription change that leaves the watched names alone does not wait.
    let r = sotw(&out[0].1);
    s.on_sotw(
        sotw_req(ENDPOINT, &["a", "lbcp.gate/n1"], &r.version_info, &r.nonce),
        &snap,
    )
    .unwrap();
    let snap2 = f.publish(&[(ENDPOINT, "b", Some("1"))]);
    s.on_sotw(
        sotw_req(ENDPOINT, &["a", "b", "lbcp.gate/n1"], &r.version_info, ""),
        &snap2,
    )
    .unwrap();
    assert_eq!(
        bodies(&sotw(&s.flush(&snap2, &own, 1)[0].1).resources),
        ["b=1"]
    );
}

#[test]
fn an_unanswered_watched_subscription_goes_after_the_wait() {
    let mut f = Fleet::new();
    let snap = f.publish(&[(ENDPOINT, "a", Some("1"))]);
    let watched = Arc::new(HashMap::from([(ENDPOINT.to_string(), String::new())]));
    let mut s = Stream::new(
        1,
        Protocol::Delta,
        None,
        "n1".into(),
        Bounds::default(),
        watched,
    );
    s.on_delta(delta_req(ENDPOINT, &["a"], &[], ""), &snap)
        .unwrap();
    assert!(flush(&mut s, &snap).is_empty());
    s.awaiting_until = Some(Instant::now() - Duration::from_millis(1));
    s.hold_ended();
    assert_eq!(
        bodies(&delta(&flush(&mut s, &snap)[0].1).resources),
        ["a=1"]
    );
}
