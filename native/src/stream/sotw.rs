//! State of the world on one stream (ADS or a single-type service).
//!
//! - a request whose response_nonce is not the latest sent is stale and ignored entirely;
//! - a request with error_detail answering the latest nonce is a NACK: recorded, and the
//!   rejected version is not sent again until intent changes it;
//! - CDS/LDS with no names (or "*") are wildcard; other types are named, and a name that does
//!   not exist yet is sent when it appears;
//! - a reconnecting client's version_info counts as what it has: same version, no resend;
//! - CDS and LDS responses carry every resource (the protocol requires it); EDS, RDS and
//!   lbcp's HashRing are incremental in SotW too (omitting a resource says nothing about it),
//!   so they carry only what changed since this stream last got them.

use super::{next_nonce, Event, Overlays, Reject, Stream};
use crate::proto::{ld, DiscoveryRequest, Parts, Status};
use crate::snapshot::{FleetSnap, Name};
use crate::types::{self, CLUSTER, ENDPOINT};
use std::collections::HashSet;

impl Stream {
    /// Take one SotW request (an ACK, a NACK or a new subscription).
    pub fn on_sotw(&mut self, req: DiscoveryRequest, snap: &FleetSnap) -> Result<(), Reject> {
        let type_url = self.request_type(&req.type_url);
        self.check_names(&type_url, req.resource_names.len())?;
        let st = self.state(&type_url)?;
        if !req.response_nonce.is_empty() {
            if st.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
                return Ok(()); // stale: the client has not seen our latest response yet
            }
            if Status::is_error(&req.error_detail) {
                self.record_nack(&type_url, req.error_detail.as_ref(), snap.revision);
            } else {
                self.record_ack(&type_url, req.version_info.clone());
            }
        } else if !req.version_info.is_empty() && !st.requested {
            // A reconnecting client already has this version: do not resend it.
            st.sent_version = Some(req.version_info.clone());
            st.acked_version = Some(req.version_info.clone());
        }
        let st = self.types.get_mut(&type_url).expect("type");
        st.requested = true;
        let mut names: HashSet<String> = req.resource_names.into_iter().collect();
        st.wildcard = names.contains("*") || (names.is_empty() && types::wildcard_type(&type_url));
        names.remove("*");
        st.names = names;
        self.report_names(&type_url);
        self.poke(&type_url);
        Ok(())
    }

    pub(super) fn flush_sotw(
        &mut self,
        type_url: &str,
        snap: &FleetSnap,
        overlays: &Overlays,
        version: &str,
    ) -> Option<Parts> {
        let view = Self::view(snap, overlays, type_url);
        let st = &self.types[type_url];
        let mut names: Vec<Name> = if st.wildcard {
            view.names()
        } else {
            st.names
                .iter()
                .filter_map(|n| view.get(n).map(|_| Name::from(n.as_str())))
                .collect()
        };
        if names.is_empty() && !st.wildcard {
            return None; // nothing to say yet; sent once it exists
        }
        names.sort();
        let owed: HashSet<String> = if type_url == ENDPOINT {
            names
                .iter()
                .filter(|n| self.rewarm.contains(n.as_ref()))
                .map(|n| n.to_string())
                .collect()
        } else {
            HashSet::new()
        };
        if owed.is_empty()
            && (st.sent_version.as_deref() == Some(version)
                || st.rejected_version.as_deref() == Some(version))
        {
            return None;
        }
        let mut send = names.clone();
        if !st.wildcard {
            let changed: Vec<Name> = names
                .iter()
                .filter(|n| {
                    owed.contains(n.as_ref())
                        || st.sent.get(n.as_ref()).map(|v| v.as_ref())
                            != view.get(n).map(|e| e.version.as_ref())
                })
                .cloned()
                .collect();
            // Nothing changed but the set shrank (an unsubscribe): answer with the full set.
            if !changed.is_empty() {
                send = changed;
            }
        }
        let nonce = next_nonce();
        let mut parts = Vec::with_capacity(send.len() + 3);
        parts.push(ld(1, version.as_bytes()));
        parts.extend(
            send.iter()
                .map(|n| view.get(n).expect("present").sotw.clone()),
        );
        parts.push(ld(4, type_url.as_bytes()));
        parts.push(ld(5, nonce.as_bytes()));
        let parts = Parts(parts);
        if !st.wildcard {
            let sent = names
                .iter()
                .map(|n| (n.to_string(), view.get(n).expect("present").version.clone()))
                .collect();
            self.types.get_mut(type_url).expect("type").sent = sent;
        }
        let mut rewarm = HashSet::new();
        if type_url == CLUSTER {
            let now = snap.table(CLUSTER).clone();
            if let Some(before) = &self.cds_sent {
                let changed: Vec<Name> = match now.changed_since(before.gen) {
                    Some(c) => c.into_iter().collect(),
                    None => now.entries.keys().cloned().collect(),
                };
                for n in changed {
                    if let (Some(b), Some(a)) = (before.get(&n), now.get(&n)) {
                        if b.version != a.version {
                            rewarm.insert(n.to_string());
                        }
                    }
                }
            }
            self.cds_sent = Some(now);
        }
        self.sent(
            type_url,
            snap,
            nonce,
            version.to_string(),
            &parts,
            &send,
            rewarm,
        );
        Some(parts)
    }

    pub(super) fn update_synced_sotw(&mut self, snap: &FleetSnap, overlays: &Overlays) {
        for (t, st) in &self.types {
            if !st.requested {
                continue;
            }
            if st.in_flight.is_some() || st.acked_version != st.sent_version {
                return;
            }
            let view = Self::view(snap, overlays, t);
            if st.wildcard {
                if st.acked_version.as_deref() != Some(view.version().as_str()) {
                    return;
                }
            } else if st.names.iter().any(|n| view.contains(n))
                && st.acked_version.as_deref()
                    != Some(
                        view.names_version(st.names.iter().map(String::as_str))
                            .as_str(),
                    )
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
