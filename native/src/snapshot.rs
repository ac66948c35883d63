//! What Python published: per fleet, per type, a table of pre-encoded entries.
//!
//! A `Table` is persistent (imbl): publishing a change copies what it touches and shares
//! the rest, so a publish costs what changed. Each table keeps its set version as it changes
//! (an order-free sum of 128-bit hashes of each entry's name and version, the same as
//! `controlplane.xds.snapshot.set_version`) and a bounded log of which names each
//! generation changed, so a delta stream diffs only the names changed since it last looked.

use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// How many changed names a table remembers (beyond that, streams compare everything).
pub const LOG_SIZE: usize = 4096;

#[derive(Debug)]
pub struct Entry {
    pub version: Arc<str>,
    /// Its share of a set version: xxh3-128 of "name\0version".
    pub mix: u128,
    /// DiscoveryResponse.resources (field 2): Any{type_url, value}.
    pub sotw: Bytes,
    /// DeltaDiscoveryResponse.resources (field 2): Resource{version, resource, name}.
    pub delta: Bytes,
}

pub type Name = Arc<str>;

pub fn set_hex(sum: u128) -> String {
    format!("{sum:032x}")
}

#[derive(Clone, Debug, Default)]
pub struct Table {
    pub entries: imbl::HashMap<Name, Arc<Entry>>,
    pub sum: u128,
    /// This table's generation; every derived table has a higher one.
    pub gen: u64,
    /// (generation, name) of recent changes, oldest first.
    log: imbl::Vector<(u64, Name)>,
    /// Changes made by generations after `floor` are all in `log`.
    floor: u64,
    /// Names that exist but are still being built (hash rings): subscribers wait.
    pub pending: Arc<HashSet<String>>,
}

/// One change to a table: a name and its new entry, or None to remove it.
pub type Change = (Name, Option<Arc<Entry>>);

impl Table {
    pub fn version(&self) -> String {
        set_hex(self.sum)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.get(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A table derived from this one by `changes`; `reset` starts a new line (streams that
    /// looked at an earlier table compare everything once).
    pub fn derive(
        &self,
        gen: u64,
        changes: Vec<Change>,
        reset: bool,
        pending: Option<HashSet<String>>,
    ) -> Table {
        let mut out = if reset {
            Table {
                gen,
                floor: gen,
                ..Table::default()
            }
        } else {
            Table {
                gen,
                ..self.clone()
            }
        };
        if let Some(p) = pending {
            out.pending = Arc::new(p);
        }
        for (name, entry) in changes {
            let old = match &entry {
                Some(e) => out.entries.insert(name.clone(), e.clone()),
                None => out.entries.remove(&name),
            };
            if let Some(o) = &old {
                out.sum = out.sum.wrapping_sub(o.mix);
            }
            if let Some(e) = &entry {
                out.sum = out.sum.wrapping_add(e.mix);
            }
            let same = matches!((&old, &entry), (Some(o), Some(e)) if o.version == e.version && o.mix == e.mix);
            let nothing = old.is_none() && entry.is_none();
            if !reset && !same && !nothing {
                out.log.push_back((gen, name));
            }
        }
        while out.log.len() > LOG_SIZE {
            if let Some((g, _)) = out.log.pop_front() {
                out.floor = out.floor.max(g);
            }
        }
        out
    }

    /// The names changed since generation `since` of this table's line, or None when that
    /// is not known (another line, too far back, or so many that comparing everything is
    /// about as cheap).
    pub fn changed_since(&self, since: u64) -> Option<HashSet<Name>> {
        if since == self.gen {
            return Some(HashSet::new());
        }
        if since < self.floor || since > self.gen {
            return None;
        }
        let limit = 64.max(self.entries.len() / 4);
        let mut names = HashSet::new();
        for (g, name) in self.log.iter().rev() {
            if *g <= since {
                break;
            }
            names.insert(name.clone());
            if names.len() > limit {
                return None;
            }
        }
        Some(names)
    }
}

/// One fleet at one published revision.
#[derive(Debug, Default)]
pub struct FleetSnap {
    pub revision: u64,
    pub tables: HashMap<String, Arc<Table>>,
    /// When Python published it, and when the change it carries was first seen (for the
    /// time-to-queue and convergence histograms).
    pub published_at: Option<Instant>,
    pub change_at: Option<Instant>,
}

static EMPTY: std::sync::OnceLock<Arc<Table>> = std::sync::OnceLock::new();

impl FleetSnap {
    pub fn table(&self, type_url: &str) -> &Arc<Table> {
        self.tables
            .get(type_url)
            .unwrap_or_else(|| EMPTY.get_or_init(|| Arc::new(Table::default())))
    }
}

/// One stream's own entries of one type over its fleet's table (its health gate, its
/// listeners' public-address variants, its share of fleet rate limits).
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    pub entries: HashMap<Name, Arc<Entry>>,
}

/// A fleet's table of a type with a stream's overlay (if any) over it.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub base: &'a Table,
    pub own: Option<&'a Overlay>,
}

impl<'a> View<'a> {
    pub fn get(&self, name: &str) -> Option<&'a Arc<Entry>> {
        if let Some(own) = self.own {
            if let Some(e) = own.entries.get(name) {
                return Some(e);
            }
        }
        self.base.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every name, base first then the overlay's own additions.
    pub fn names(&self) -> Vec<Name> {
        let mut out: Vec<Name> = self.base.entries.keys().cloned().collect();
        if let Some(own) = self.own {
            out.extend(
                own.entries
                    .keys()
                    .filter(|n| !self.base.entries.contains_key(*n))
                    .cloned(),
            );
        }
        out
    }

    pub fn sum(&self) -> u128 {
        let mut sum = self.base.sum;
        if let Some(own) = self.own {
            for (n, e) in &own.entries {
                if let Some(b) = self.base.get(n) {
                    sum = sum.wrapping_sub(b.mix);
                }
                sum = sum.wrapping_add(e.mix);
            }
        }
        sum
    }

    pub fn version(&self) -> String {
        match self.own {
            None => self.base.version(),
            Some(_) => set_hex(self.sum()),
        }
    }

    /// The set version of `names` (those it has).
    pub fn names_version<'n>(&self, names: impl Iterator<Item = &'n str>) -> String {
        let mut sum = 0u128;
        for n in names {
            if let Some(e) = self.get(n) {
                sum = sum.wrapping_add(e.mix);
            }
        }
        set_hex(sum)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn entry(name: &str, version: &str) -> Arc<Entry> {
        let mix = xxhash_rust::xxh3::xxh3_128(format!("{name}\0{version}").as_bytes());
        Arc::new(Entry {
            version: version.into(),
            mix,
            sotw: Bytes::from(format!("S{name}={version};")),
            delta: Bytes::from(format!("D{name}={version};")),
        })
    }

    pub fn put(t: &Table, gen: u64, items: &[(&str, Option<&str>)]) -> Table {
        let changes = items
            .iter()
            .map(|(n, v)| (Name::from(*n), v.map(|v| entry(n, v))))
            .collect();
        t.derive(gen, changes, false, None)
    }

    #[test]
    fn version_is_order_free_and_tracks_changes() {
        let a = put(&Table::default(), 1, &[("x", Some("1")), ("y", Some("1"))]);
        let b = put(&Table::default(), 1, &[("y", Some("1")), ("x", Some("1"))]);
        assert_eq!(a.version(), b.version());
        let c = put(&a, 2, &[("x", Some("2"))]);
        assert_ne!(c.version(), a.version());
        let d = put(&c, 3, &[("x", Some("1"))]);
        assert_eq!(d.version(), a.version());
        let e = put(&d, 4, &[("y", None)]);
        assert_eq!(
            e.version(),
            put(&Table::default(), 1, &[("x", Some("1"))]).version()
        );
    }

    #[test]
    fn changed_since_reports_names_and_limits() {
        let a = put(&Table::default(), 1, &[("x", Some("1")), ("y", Some("1"))]);
        let b = put(&a, 2, &[("x", Some("2"))]);
        let c = put(&b, 3, &[("y", None)]);
        let names: HashSet<Name> = c.changed_since(1).unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(c.changed_since(2).unwrap().len(), 1);
        assert!(c.changed_since(3).unwrap().is_empty());
        let r = c.derive(4, vec![], true, None);
        assert!(r.changed_since(3).is_none());
        // Unchanged versions log nothing.
        let same = put(&c, 5, &[("x", Some("2"))]);
        assert!(same.changed_since(3).unwrap().is_empty());
    }

    #[test]
    fn overlay_versions_match_a_table_with_those_entries() {
        let base = put(&Table::default(), 1, &[("x", Some("1")), ("y", Some("1"))]);
        let mut own = Overlay::default();
        own.entries.insert("y".into(), entry("y", "9"));
        own.entries.insert("z".into(), entry("z", "1"));
        let v = View {
            base: &base,
            own: Some(&own),
        };
        let flat = put(
            &Table::default(),
            1,
            &[("x", Some("1")), ("y", Some("9")), ("z", Some("1"))],
        );
        assert_eq!(v.version(), flat.version());
        assert_eq!(v.names().len(), 3);
    }
}
