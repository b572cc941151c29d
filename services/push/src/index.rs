//! The subscriber index: H3 cell -> subscribers, built from the compacted subscriptions
//! topic. It holds cells only, never coordinates. Matching returns each (alert, subscriber)
//! pair from exactly one shard: the lowest shard among the cells where the subscriber and
//! the alert's cover meet, so a subscriber stored in several shards is never notified twice
//! and never missed.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use h3o::CellIndex;
use hexcast_core::cells::ShardMap;
use hexcast_core::{IndexedAlert, Subscription, SubscriptionFilter};

/// One subscriber as the index holds it.
#[derive(Debug)]
pub struct Entry {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Subscriber id.
    pub subscriber_id: Arc<str>,
    /// Cells, sorted.
    pub cells: Box<[CellIndex]>,
    /// Filters.
    pub filter: SubscriptionFilter,
    /// Shards, ascending.
    pub shards: Box<[u32]>,
    /// Last change.
    pub updated_at: hexcast_core::Timestamp,
}

impl Entry {
    /// The stored subscription.
    pub fn to_subscription(&self) -> Subscription {
        Subscription {
            tenant: self.tenant.to_string(),
            subscriber_id: self.subscriber_id.to_string(),
            cells: self.cells.to_vec(),
            filter: self.filter.clone(),
            shards: self.shards.to_vec(),
            updated_at: self.updated_at,
        }
    }
}

/// A match: one subscriber of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Match {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Subscriber id.
    pub subscriber_id: Arc<str>,
}

/// Concurrent cell -> subscribers index.
#[derive(Debug, Default)]
pub struct SubscriberIndex {
    by_cell: DashMap<CellIndex, Vec<Arc<Entry>>>,
    by_key: DashMap<String, Arc<Entry>>,
}

impl SubscriberIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribers indexed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The entry for `tenant/subscriber_id`.
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.by_key.get(key).map(|e| Arc::clone(&e))
    }

    fn unlink(&self, old: &Arc<Entry>) {
        for c in old.cells.iter() {
            if let Some(mut v) = self.by_cell.get_mut(c) {
                v.retain(|e| !Arc::ptr_eq(e, old));
            }
            self.by_cell.remove_if(c, |_, v| v.is_empty());
        }
    }

    /// Inserts or replaces a subscription.
    pub fn upsert(&self, sub: Subscription) {
        let mut cells = sub.cells;
        cells.sort_unstable();
        cells.dedup();
        let entry = Arc::new(Entry {
            tenant: sub.tenant.as_str().into(),
            subscriber_id: sub.subscriber_id.as_str().into(),
            cells: cells.into_boxed_slice(),
            filter: sub.filter,
            shards: sub.shards.into_boxed_slice(),
            updated_at: sub.updated_at,
        });
        let key = hexcast_core::model::subscription_key(&sub.tenant, &sub.subscriber_id);
        if let Some(old) = self.by_key.insert(key, Arc::clone(&entry)) {
            self.unlink(&old);
        }
        for c in entry.cells.iter() {
            self.by_cell.entry(*c).or_default().push(Arc::clone(&entry));
        }
    }

    /// Removes a subscription; whether it existed.
    pub fn remove(&self, key: &str) -> bool {
        match self.by_key.remove(key) {
            Some((_, old)) => {
                self.unlink(&old);
                true
            }
            None => false,
        }
    }

    /// The subscribers this shard must notify for `alert`: their cells meet the cover in
    /// this shard's territory, their filters accept the alert, and this shard is the lowest
    /// one where they meet the cover.
    pub fn matches(&self, alert: &IndexedAlert, shards: &ShardMap) -> Vec<Match> {
        let cover = &alert.cells;
        debug_assert!(cover.is_sorted());
        let mut seen: HashSet<*const Entry> = HashSet::new();
        let mut out = Vec::new();
        for c in cover.iter().filter(|c| shards.shard_of(**c) == alert.shard) {
            let Some(entries) = self.by_cell.get(c) else { continue };
            for e in entries.iter() {
                if !seen.insert(Arc::as_ptr(e)) || !e.filter.accepts(&alert.alert) {
                    continue;
                }
                let owner =
                    e.cells.iter().filter(|x| cover.binary_search(x).is_ok()).map(|x| shards.shard_of(*x)).min();
                if owner == Some(alert.shard) {
                    out.push(Match { tenant: Arc::clone(&e.tenant), subscriber_id: Arc::clone(&e.subscriber_id) });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use h3o::Resolution;
    use hexcast_core::cells::cover;
    use hexcast_core::{Alert, Area, Category, EventKind, LatLng, Severity, Timestamp, Urgency};
    use proptest::prelude::*;

    const RES: Resolution = Resolution::Seven;

    fn sub(id: &str, cells: Vec<CellIndex>, shards: &ShardMap) -> Subscription {
        Subscription {
            tenant: "t".into(),
            subscriber_id: id.into(),
            shards: shards.shards_of(&cells),
            cells,
            filter: SubscriptionFilter::default(),
            updated_at: Timestamp(0),
        }
    }

    fn indexed(center: LatLng, radius_m: f64, shards: &ShardMap) -> Vec<IndexedAlert> {
        let target = Area::circle(center, radius_m).expect("valid");
        let cells = cover(&target, RES, 1_000_000).expect("cover");
        let alert = Alert {
            alert_id: "a@1".into(),
            incident_id: "a".into(),
            kind: EventKind::New,
            category: Category::parse("crime.robbery").expect("known"),
            severity: Severity::Severe,
            urgency: Urgency::Immediate,
            headline: String::new(),
            coarse_cell: center.cell(Resolution::Five),
            target,
            occurred_at: Timestamp(0),
            issued_at: Timestamp(0),
            expires_at: None,
            required_attributes: vec![],
            rule: String::new(),
            published_at: None,
        };
        let s = shards.shards_of(&cells);
        s.iter()
            .map(|&shard| IndexedAlert { alert: alert.clone(), shard, shards: s.clone(), cells: cells.clone() })
            .collect()
    }

    proptest! {
        // Random subscribers (one to three points each, spread over ~200 km so that
        // territories and shards differ) against a random wide alert: the union of all
        // shards' matches equals a brute-force scan, with no duplicates.
        #[test]
        fn sharded_matches_equal_brute_force_exactly_once(
            subs in proptest::collection::vec(proptest::collection::vec((-1.0f64..1.0, -1.0f64..1.0), 1..4), 1..60),
            radius_km in 5.0f64..120.0,
        ) {
            let shards = ShardMap { territory_res: Resolution::Three, shards: 5 };
            let index = SubscriberIndex::new();
            let mut all = Vec::new();
            for (i, pts) in subs.iter().enumerate() {
                let cells: Vec<CellIndex> = pts.iter()
                    .map(|(dy, dx)| LatLng::new(40.0 + dy, -100.0 + dx).expect("valid").cell(RES)).collect();
                let s = sub(&i.to_string(), cells, &shards);
                all.push(s.clone());
                index.upsert(s);
            }
            let center = LatLng::new(40.0, -100.0).expect("valid");
            let records = indexed(center, radius_km * 1000.0, &shards);
            let mut got: Vec<String> = records.iter().flat_map(|r| index.matches(r, &shards)).map(|m| m.subscriber_id.to_string()).collect();
            got.sort();
            let before = got.len();
            got.dedup();
            prop_assert_eq!(before, got.len(), "a subscriber was matched twice");
            let cover = &records[0].cells;
            let mut want: Vec<String> = all.iter()
                .filter(|s| s.cells.iter().any(|c| cover.binary_search(c).is_ok()))
                .map(|s| s.subscriber_id.clone()).collect();
            want.sort();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn upsert_replaces_and_remove_forgets() {
        let shards = ShardMap { territory_res: Resolution::Three, shards: 2 };
        let index = SubscriberIndex::new();
        let here = LatLng::new(40.0, -100.0).expect("valid");
        let far = LatLng::new(45.0, -90.0).expect("valid");
        index.upsert(sub("1", vec![here.cell(RES)], &shards));
        let recs = indexed(here, 2_000.0, &shards);
        assert_eq!(recs.iter().map(|r| index.matches(r, &shards).len()).sum::<usize>(), 1);
        index.upsert(sub("1", vec![far.cell(RES)], &shards));
        assert_eq!(recs.iter().map(|r| index.matches(r, &shards).len()).sum::<usize>(), 0, "moved away");
        index.upsert(sub("1", vec![here.cell(RES)], &shards));
        assert!(index.remove("t/1"));
        assert_eq!(recs.iter().map(|r| index.matches(r, &shards).len()).sum::<usize>(), 0, "deleted");
        assert!(index.is_empty());
    }
}
