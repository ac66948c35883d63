//! Incremental (delta) xDS on one stream.
//!
//! The stream tracks what the client holds (`have`: name -> version), seeded on reconnect by
//! `initial_resource_versions`, and sends only resources whose version differs, plus
//! `removed_resources` for what the client holds that no longer exists (or, once, for names
//! it subscribed to that do not exist). Subscriptions are taken from every request; ACK/NACK
//! only when the nonce is the latest. A NACKed version is not resent until intent gives the
//! resource a new version.
//!
//! A push costs what changed: a diff looks only at the names changed since the table it last
//! compared against, the names its own requests touched, and its overlay's names; it compares
//! everything after its first request, a wildcard toggle, or when the table's log does not
//! reach back far enough.

use super::{next_nonce, Event, Overlays, Reject, Stream, TypeState};
use crate::proto::{ld, DeltaDiscoveryRequest, Parts, Status};
use crate::snapshot::{FleetSnap, Name, View};
use crate::types::{self, CLUSTER, ENDPOINT};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

type Diff = (Vec<Name>, Vec<String>, Vec<String>);

impl Stream {
    /// Take one delta request (subscriptions always; an ACK/NACK when its nonce is the latest).
    pub fn on_delta(&mut self, req: DeltaDiscoveryRequest, snap: &FleetSnap) -> Result<(), Reject> {
        let type_url = self.request_type(&req.type_url);
        self.state(&type_url)?;
        self.check_delta_bounds(&type_url, &req)?;
        let st = self.types.get_mut(&type_url).expect("type");
        if !st.requested {
            st.requested = true;
            st.full = true;
            for (n, v) in &req.initial_resource_versions {
                st.have.insert(n.clone(), Arc::from(v.as_str()));
            }
            if type_url == CLUSTER {
                self.unwarmed
                    .extend(req.initial_resource_versions.keys().cloned());
            }
            let st = self.types.get_mut(&type_url).expect("type");
            if types::wildcard_type(&type_url) && req.resource_names_subscribe.is_empty() {
                st.wildcard = true; // legacy wildcard: first request with no names
            }
        }
        let st = self.types.get_mut(&type_url).expect("type");
        if !req.response_nonce.is_empty()
            && st.last_nonce.as_deref() == Some(req.response_nonce.as_str())
            && st.in_flight.is_some()
        {
            if Status::is_error(&req.error_detail) {
                // The client kept its old versions; remember the rejected ones so they are
                // not resent (`have` keeps them too, so the diff stays quiet) until intent
                // gives the resource a new version.
                if let Some(pending) = self.pending.get(&type_url) {
                    let st = self.types.get_mut(&type_url).expect("type");
                    for (n, v) in pending {
                        st.rejected.insert(n.clone(), v.clone());
                        st.recheck.insert(n.clone());
                    }
                }
                self.record_nack(&type_url, req.error_detail.as_ref(), snap.revision);
            } else {
                let version = st.sent_version.clone().unwrap_or_default();
                self.record_ack(&type_url, version);
            }
            self.pending.remove(&type_url);
        }
        let st = self.types.get_mut(&type_url).expect("type");
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.full = st.full || !st.wildcard;
                st.wildcard = true;
            } else {
                st.names.insert(name.clone());
                st.missing_reported.remove(name);
                st.recheck.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.full = st.full || st.wildcard;
                st.wildcard = false;
            } else {
                st.names.remove(name);
                st.have.remove(name);
                st.missing_reported.remove(name);
                st.recheck.insert(name.clone());
            }
        }
        if type_url == ENDPOINT && !req.resource_names_unsubscribe.is_empty() {
            if let Some(cds) = self.types.get(CLUSTER) {
                let gone: Vec<String> = req
                    .resource_names_unsubscribe
                    .iter()
                    .filter(|n| cds.have.contains_key(*n))
                    .cloned()
                    .collect();
                self.unwarmed.extend(gone);
            }
        }
        self.report_names(&type_url);
        self.poke(&type_url);
        Ok(())
    }

    fn check_delta_bounds(
        &self,
        type_url: &str,
        req: &DeltaDiscoveryRequest,
    ) -> Result<(), Reject> {
        let st = &self.types[type_url];
        let mut held = st.names.len() + req.resource_names_subscribe.len();
        if held > self.bounds.max_names_per_type {
            // The exact count only when the cheap bound is over.
            let mut all: HashSet<&str> = st.names.iter().map(String::as_str).collect();
            all.extend(req.resource_names_subscribe.iter().map(String::as_str));
            for n in &req.resource_names_unsubscribe {
                all.remove(n.as_str());
            }
            all.remove("*");
            held = all.len();
        }
        self.check_names(type_url, held.max(req.initial_resource_versions.len()))
    }

    pub(super) fn flush_delta(
        &mut self,
        type_url: &str,
        snap: &FleetSnap,
        overlays: &Overlays,
        version: &str,
    ) -> Option<Parts> {
        let view = Self::view(snap, overlays, type_url);
        let (send, removed, missing) = self.diff(type_url, view);
        let st = self.types.get_mut(type_url).expect("type");
        st.evaluated_version = Some(version.to_string());
        // A fresh client's first wildcard request is answered even when there is nothing:
        // Envoy's initialisation waits for a first CDS/LDS response. A reconnecting client
        // that declared what it holds is past initialisation and gets nothing.
        let first_wildcard = st.wildcard && st.pushes == 0 && st.have.is_empty();
        if send.is_empty() && removed.is_empty() && missing.is_empty() && !first_wildcard {
            return None;
        }
        let nonce = next_nonce();
        let mut parts = Vec::with_capacity(send.len() + removed.len() + missing.len() + 3);
        parts.push(ld(1, snap.revision.to_string().as_bytes()));
        parts.extend(
            send.iter()
                .map(|n| view.get(n).expect("present").delta.clone()),
        );
        parts.push(ld(4, type_url.as_bytes()));
        parts.extend(
            removed
                .iter()
                .chain(missing.iter())
                .map(|n| ld(6, n.as_bytes())),
        );
        parts.push(ld(5, nonce.as_bytes()));
        let parts = Parts(parts);
        let mut pending = HashMap::with_capacity(send.len());
        for n in &send {
            let v = view.get(n).expect("present").version.clone();
            pending.insert(n.to_string(), v.clone());
            st.have.insert(n.to_string(), v);
        }
        for n in &removed {
            st.have.remove(n);
        }
        // A subscribed name just removed has been reported gone: say so once, not again.
        for n in missing
            .iter()
            .chain(removed.iter().filter(|n| st.names.contains(*n)))
        {
            st.missing_reported.insert(n.clone());
        }
        self.pending.insert(type_url.to_string(), pending);
        let endpoints = snap.table(ENDPOINT);
        let rewarm: HashSet<String> = send
            .iter()
            .filter(|n| endpoints.get(n).is_some())
            .map(|n| n.to_string())
            .collect();
        if type_url == CLUSTER {
            self.unwarmed.extend(rewarm.iter().cloned());
            for n in &removed {
                self.unwarmed.remove(n);
            }
        }
        self.sent(
            type_url,
            snap,
            nonce,
            snap.revision.to_string(),
            &parts,
            &send,
            rewarm,
        );
        Some(parts)
    }

    /// What to send, what to say is removed, and which subscribed names to report missing;
    /// records what it compared against.
    fn diff(&mut self, type_url: &str, view: View<'_>) -> Diff {
        let own: HashSet<Name> = view
            .own
            .map(|o| o.entries.keys().cloned().collect())
            .unwrap_or_default();
        let rewarm = if type_url == ENDPOINT {
            self.rewarm.clone()
        } else {
            HashSet::new()
        };
        let st = self.types.get_mut(type_url).expect("type");
        let changed = match (st.full, st.evaluated_gen) {
            (false, Some(gen)) => view.base.changed_since(gen),
            _ => None,
        };
        let out = match changed {
            None => full_diff(st, view, &rewarm),
            Some(mut names) => {
                names.extend(st.recheck.iter().map(|n| Name::from(n.as_str())));
                names.extend(st.waiting.iter().map(|n| Name::from(n.as_str())));
                names.extend(rewarm.iter().map(|n| Name::from(n.as_str())));
                names.extend(own.iter().cloned());
                names.extend(st.own_names.iter().cloned());
                names_diff(st, view, &rewarm, names)
            }
        };
        st.evaluated_gen = Some(view.base.gen);
        st.full = false;
        st.recheck.clear();
        st.own_names = own;
        out
    }

    pub(super) fn update_synced_delta(&mut self, snap: &FleetSnap, overlays: &Overlays) {
        if self.types.values().any(|st| st.in_flight.is_some()) {
            return; // not synced while a response awaits its ACK
        }
        for (t, st) in &self.types {
            if !st.requested {
                continue;
            }
            // Synced: the last diff saw this version with nothing left to send, no request
            // since, and nothing it holds rejected.
            let version = Self::view(snap, overlays, t).version();
            if st.full
                || !st.recheck.is_empty()
                || !st.stuck.is_empty()
                || st.evaluated_version.as_deref() != Some(version.as_str())
            {
                return;
            }
            if t == ENDPOINT
                && self
                    .rewarm
                    .iter()
                    .any(|n| st.wildcard || st.names.contains(n))
            {
                return;
            }
        }
        if !self.types.is_empty() && self.acked_revision != snap.revision {
            self.acked_revision = snap.revision;
            self.events.push(Event::Synced {
                revision: snap.revision,
            });
        }
    }
}

fn names_diff(
    st: &mut TypeState,
    view: View<'_>,
    rewarm: &HashSet<String>,
    names: HashSet<Name>,
) -> Diff {
    let (mut send, mut removed, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    st.waiting.clear();
    for n in names {
        let key = n.as_ref();
        let e = view.get(key);
        if let Some(e) = e {
            if st.wildcard || st.names.contains(key) {
                if st.rejected.get(key).is_some_and(|v| *v == e.version) {
                    st.stuck.insert(key.to_string());
                } else {
                    st.stuck.remove(key);
                    if st.have.get(key) != Some(&e.version) || rewarm.contains(key) {
                        send.push(n);
                    }
                }
                continue;
            }
        }
        st.stuck.remove(key);
        if st.have.contains_key(key) {
            removed.push(key.to_string());
        } else if e.is_none() && st.names.contains(key) && !st.missing_reported.contains(key) {
            if view.base.pending.contains(key) {
                st.waiting.insert(key.to_string()); // being built: looked at again
            } else {
                missing.push(key.to_string());
            }
        }
    }
    send.sort();
    removed.sort();
    missing.sort();
    (send, removed, missing)
}

fn full_diff(st: &mut TypeState, view: View<'_>, rewarm: &HashSet<String>) -> Diff {
    // A wildcard wants everything the view has (its named subscriptions among them).
    let interest: Vec<Name> = if st.wildcard {
        view.names()
    } else {
        st.names
            .iter()
            .filter(|n| view.contains(n))
            .map(|n| Name::from(n.as_str()))
            .collect()
    };
    let mut send = Vec::new();
    let mut stuck = HashSet::new();
    for n in interest {
        let e = view.get(&n).expect("present");
        let rejected = st.rejected.get(n.as_ref()).is_some_and(|v| *v == e.version);
        if rejected {
            stuck.insert(n.to_string());
        } else if st.have.get(n.as_ref()) != Some(&e.version) || rewarm.contains(n.as_ref()) {
            send.push(n);
        }
    }
    send.sort();
    let mut removed: Vec<String> = st
        .have
        .keys()
        .filter(|n| !view.contains(n) || (!st.wildcard && !st.names.contains(*n)))
        .cloned()
        .collect();
    removed.sort();
    st.waiting.clear();
    let mut missing = Vec::new();
    for n in &st.names {
        if view.contains(n) || st.have.contains_key(n) || st.missing_reported.contains(n) {
            continue;
        }
        if view.base.pending.contains(n) {
            st.waiting.insert(n.clone());
        } else {
            missing.push(n.clone());
        }
    }
    missing.sort();
    st.stuck = stuck;
    (send, removed, missing)
}
