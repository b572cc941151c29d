//! The subscriber index: filter-then-refine over H3 buckets. It holds subscribers' places
//! as cells only (a disc around a cell, or a set of cells), never coordinates.
//!
//! Each place is registered under a few "bucket" cells at a level chosen from its size
//! (points and small discs at resolution 9, larger discs coarser, so that every place sits
//! in a handful of buckets). An alert is covered at each level in use; bucket entries are
//! candidates. A candidate whose anchor bucket (the one holding its center) lies entirely
//! inside the alert matches at once; the others are refined with exact geometry
//! ([`hexcast_core::exact`]). Candidates are conservative and refinement is exact up to a
//! margin on the side of notifying, so a subscriber whose area meets the alert is never
//! missed, and one whose area is more than its cell's size away is never notified.
//!
//! Exactly once across shards: a subscription is stored in every shard its places touch,
//! an alert is routed to every shard it touches, and the pair is emitted only by its owner
//! shard: the subscriber's home shard when the alert reaches it, else the lowest shard both
//! touch. Reads take a read lock, so a match sees either all of an upsert or none of it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use h3o::{CellIndex, Resolution};
use hexcast_core::cells::{CoverError, ShardMap, area_cells, centroid, circumradius_m, disc_cells};
use hexcast_core::exact::PreparedArea;
use hexcast_core::{Alert, LatLng, Place, Subscription, SubscriptionFilter, Timestamp};

/// Finest bucket level.
pub const MAX_LEVEL: Resolution = Resolution::Nine;
const LEVELS: usize = 10;
/// A centroid rounded to f32 moves by at most ~1 m; grow the disc by more than that.
const F32_SLACK_M: f64 = 2.0;
/// The high bit of an entry marks the place's anchor bucket.
const ANCHOR: u32 = 1 << 31;

/// A match: one subscriber of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Match {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Subscriber id.
    pub subscriber_id: Arc<str>,
}

#[derive(Debug)]
struct Sub {
    tenant: u16,
    id: Arc<str>,
    places: Box<[Place]>,
    /// Per disc place: its cell's centroid and its radius grown by the cell's
    /// circumradius, precomputed so that refinement never recomputes cell boundaries.
    discs: Box<[(f32, f32, f32)]>,
    filter: u32,
    home: u32,
    shards: Box<[u32]>,
    updated_at: Timestamp,
}

#[derive(Debug, Default)]
struct Inner {
    subs: Vec<Option<Sub>>,
    free: Vec<u32>,
    by_key: HashMap<Box<str>, u32>,
    tenants: Vec<Arc<str>>,
    tenant_ids: HashMap<Arc<str>, u16>,
    filters: Vec<SubscriptionFilter>,
    filter_ids: HashMap<(Vec<String>, i32, Vec<String>), u32>,
    levels: Vec<HashMap<u64, Vec<u32>>>,
    level_entries: [usize; LEVELS],
}

/// The bucket level of a disc: the finest level whose cells are at least as wide as it, so
/// that it touches only a few buckets.
fn disc_level(radius_m: f64) -> Resolution {
    let mut level = MAX_LEVEL;
    while u8::from(level) > 0 && level.edge_length_m() < radius_m {
        level = Resolution::try_from(u8::from(level) - 1).unwrap_or(Resolution::Zero);
    }
    level
}

/// Where a place is registered: (level, bucket cell, is anchor).
fn buckets(place: &Place) -> Vec<(usize, CellIndex, bool)> {
    let mut out = Vec::new();
    let disc = |center: LatLng, r: f64, out: &mut Vec<(usize, CellIndex, bool)>| {
        let level = disc_level(r);
        let anchor = center.cell(level);
        // A disc of at most one cell width touches a bounded number of buckets.
        if let Ok(cells) = disc_cells(center, r, level, usize::MAX / 8) {
            out.extend(cells.into_iter().map(|(c, _)| (usize::from(u8::from(level)), c, c == anchor)));
        }
    };
    match place {
        Place::Disc { cell, radius_m } => disc(centroid(*cell), f64::from(*radius_m) + circumradius_m(*cell), &mut out),
        Place::Cells(cells) => {
            let mut parents = Vec::new();
            for &c in cells {
                if c.resolution() <= MAX_LEVEL {
                    // The cell is its own bucket: geometry identical, so "inside" holds for it.
                    out.push((usize::from(u8::from(c.resolution())), c, true));
                } else {
                    parents.push(c.parent(MAX_LEVEL).unwrap_or(c));
                }
            }
            parents.sort_unstable();
            parents.dedup();
            // Fine cells register under their resolution-9 parent and its ring of
            // neighbors: H3 children stick out of their parent's hexagon by far less than a
            // neighbor's width. Not anchors: the parent's center need not be in the place.
            let level = usize::from(u8::from(MAX_LEVEL));
            for p in parents {
                out.extend(p.grid_disk_safe(1).map(|c| (level, c, false)));
            }
        }
    }
    out.sort_unstable_by_key(|(l, c, a)| (*l, *c, !*a));
    out.dedup_by_key(|(l, c, _)| (*l, *c));
    out
}

/// Whether a place meets the prepared alert area (exact, with the notify-side margin).
pub fn place_meets(place: &Place, area: &PreparedArea<'_>) -> bool {
    match place {
        Place::Disc { cell, radius_m } => {
            area.disc_intersects(centroid(*cell), f64::from(*radius_m) + circumradius_m(*cell))
        }
        Place::Cells(cells) => cells.iter().any(|c| area.cell_intersects(*c)),
    }
}

/// The shard that emits (alert, subscriber): see the module docs.
pub fn owner_shard(alert_shards: &[u32], home: u32, sub_shards: &[u32]) -> Option<u32> {
    if alert_shards.contains(&home) {
        return Some(home);
    }
    alert_shards.iter().copied().filter(|s| sub_shards.contains(s)).min()
}

/// Territories (and so shards) a subscription touches, and its home shard.
pub fn shards_of(places: &[Place], shards: &ShardMap) -> (u32, Vec<u32>) {
    let mut all = Vec::new();
    let mut home = None;
    for p in places {
        let (center, r) = match p {
            Place::Disc { cell, radius_m } => (centroid(*cell), f64::from(*radius_m) + circumradius_m(*cell)),
            Place::Cells(cells) => {
                if let Some(&first) = cells.first() {
                    home.get_or_insert_with(|| shards.shard_of(centroid(first).cell(shards.territory_res)));
                }
                // Group fine cells under coarse ancestors first: a neighborhood has thousands
                // of cells but one or two ancestors. An ancestor's disc grown by half
                // contains every descendant, however H3's children stick out of it.
                let mut groups: Vec<CellIndex> = cells
                    .iter()
                    .map(
                        |c| if c.resolution() > Resolution::Six { c.parent(Resolution::Six).unwrap_or(*c) } else { *c },
                    )
                    .collect();
                groups.sort_unstable();
                groups.dedup();
                for g in groups {
                    if let Ok(t) =
                        disc_cells(centroid(g), circumradius_m(g) * 1.5, shards.territory_res, usize::MAX / 8)
                    {
                        all.extend(t.into_iter().map(|(t, _)| shards.shard_of(t)));
                    }
                }
                continue;
            }
        };
        home.get_or_insert_with(|| shards.shard_of(center.cell(shards.territory_res)));
        if let Ok(t) = disc_cells(center, r, shards.territory_res, usize::MAX / 8) {
            all.extend(t.into_iter().map(|(t, _)| shards.shard_of(t)));
        }
    }
    all.sort_unstable();
    all.dedup();
    (home.unwrap_or(0), all)
}

/// Concurrent subscriber index.
#[derive(Debug)]
pub struct SubscriberIndex {
    shard_map: ShardMap,
    inner: RwLock<Inner>,
}

impl SubscriberIndex {
    /// An empty index for a shard map.
    pub fn new(shard_map: ShardMap) -> Self {
        let inner = Inner { levels: (0..LEVELS).map(|_| HashMap::new()).collect(), ..Inner::default() };
        Self { shard_map, inner: RwLock::new(inner) }
    }

    /// The shard map the index computes ownership with.
    pub fn shard_map(&self) -> ShardMap {
        self.shard_map
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribers indexed.
    pub fn len(&self) -> usize {
        self.read().by_key.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored subscription for `tenant/subscriber_id`.
    pub fn get(&self, key: &str) -> Option<Subscription> {
        let inner = self.read();
        let id = *inner.by_key.get(key)?;
        let sub = inner.subs[id as usize].as_ref()?;
        Some(Subscription {
            tenant: inner.tenants[usize::from(sub.tenant)].to_string(),
            subscriber_id: sub.id.to_string(),
            places: sub.places.to_vec(),
            filter: inner.filters[sub.filter as usize].clone(),
            shards: sub.shards.to_vec(),
            updated_at: sub.updated_at,
        })
    }

    /// The shards `tenant/subscriber_id` is stored in.
    pub fn shards(&self, key: &str) -> Option<Vec<u32>> {
        let inner = self.read();
        let id = *inner.by_key.get(key)?;
        inner.subs[id as usize].as_ref().map(|s| s.shards.to_vec())
    }

    /// Inserts or replaces a subscription. Home and shards are recomputed from the places
    /// (the stored `shards` were computed the same way by the push service).
    pub fn upsert(&self, sub: Subscription) {
        let key: Box<str> = hexcast_core::model::subscription_key(&sub.tenant, &sub.subscriber_id).into();
        let (home, shards) = shards_of(&sub.places, &self.shard_map);
        let new_buckets: Vec<(usize, CellIndex, bool)> = sub.places.iter().flat_map(buckets).collect();
        let mut inner = self.write();
        let inner = &mut *inner;
        if let Some(&old) = inner.by_key.get(&key) {
            remove_entries(inner, old);
        }
        let tenant = match inner.tenant_ids.get(sub.tenant.as_str()) {
            Some(&t) => t,
            None => {
                let t: Arc<str> = sub.tenant.as_str().into();
                let id = inner.tenants.len() as u16;
                inner.tenants.push(Arc::clone(&t));
                inner.tenant_ids.insert(t, id);
                id
            }
        };
        let fkey = (sub.filter.categories.clone(), sub.filter.min_severity as i32, sub.filter.attributes.clone());
        let filter = match inner.filter_ids.get(&fkey) {
            Some(&f) => f,
            None => {
                let f = inner.filters.len() as u32;
                inner.filters.push(sub.filter.clone());
                inner.filter_ids.insert(fkey, f);
                f
            }
        };
        let id = match inner.by_key.get(&key) {
            Some(&id) => id,
            None => {
                let id = inner.free.pop().unwrap_or_else(|| {
                    inner.subs.push(None);
                    (inner.subs.len() - 1) as u32
                });
                inner.by_key.insert(key, id);
                id
            }
        };
        inner.subs[id as usize] = Some(Sub {
            tenant,
            id: sub.subscriber_id.as_str().into(),
            discs: sub
                .places
                .iter()
                .filter_map(|p| match p {
                    Place::Disc { cell, radius_m } => {
                        let c = centroid(*cell);
                        Some((c.lat() as f32, c.lng() as f32, *radius_m + circumradius_m(*cell) as f32 + 0.5))
                    }
                    Place::Cells(_) => None,
                })
                .collect(),
            places: sub.places.into_boxed_slice(),
            filter,
            home,
            shards: shards.into_boxed_slice(),
            updated_at: sub.updated_at,
        });
        for (level, cell, anchor) in new_buckets {
            inner.levels[level].entry(u64::from(cell)).or_default().push(if anchor { id | ANCHOR } else { id });
            inner.level_entries[level] += 1;
        }
    }

    /// Removes a subscription; whether it existed.
    pub fn remove(&self, key: &str) -> bool {
        let mut inner = self.write();
        let inner = &mut *inner;
        let Some(id) = inner.by_key.remove(key) else { return false };
        remove_entries(inner, id);
        inner.subs[id as usize] = None;
        inner.free.push(id);
        true
    }

    /// The subscribers `shard` must notify for `alert` (routed to `alert_shards`).
    pub fn matches(&self, alert: &Alert, shard: u32, alert_shards: &[u32]) -> Result<Vec<Match>, CoverError> {
        let inner = self.read();
        let mut candidates: Vec<(u32, bool)> = Vec::new();
        for (level, map) in inner.levels.iter().enumerate() {
            if inner.level_entries[level] == 0 {
                continue;
            }
            let res = Resolution::try_from(level as u8).unwrap_or(MAX_LEVEL);
            for (cell, inside) in area_cells(&alert.target, res, 4_000_000)? {
                if let Some(entries) = map.get(&u64::from(cell)) {
                    candidates.extend(entries.iter().map(|&e| (e & !ANCHOR, inside && e & ANCHOR != 0)));
                }
            }
        }
        // Group the candidates by subscriber; "sure" wins over "maybe".
        candidates.sort_unstable_by_key(|&(id, sure)| (id, !sure));
        candidates.dedup_by_key(|(id, _)| *id);
        let prepared = PreparedArea::new(&alert.target);
        let mut out = Vec::new();
        for (id, sure) in candidates {
            let Some(sub) = inner.subs[id as usize].as_ref() else { continue };
            if !inner.filters[sub.filter as usize].accepts(alert) {
                continue;
            }
            if owner_shard(alert_shards, sub.home, &sub.shards) != Some(shard) {
                continue;
            }
            let meets = || {
                sub.discs.iter().any(|&(lat, lng, r)| {
                    LatLng::new(f64::from(lat), f64::from(lng))
                        .is_ok_and(|c| prepared.disc_intersects(c, f64::from(r) + F32_SLACK_M))
                }) || sub.places.iter().any(|p| matches!(p, Place::Cells(_)) && place_meets(p, &prepared))
            };
            if sure || meets() {
                out.push(Match {
                    tenant: Arc::clone(&inner.tenants[usize::from(sub.tenant)]),
                    subscriber_id: Arc::clone(&sub.id),
                });
            }
        }
        Ok(out)
    }

    /// Approximate heap and inline bytes held, for bytes-per-subscriber figures.
    pub fn memory_bytes(&self) -> usize {
        let inner = self.read();
        let mut bytes = inner.subs.capacity() * std::mem::size_of::<Option<Sub>>();
        for s in inner.subs.iter().flatten() {
            bytes += s.id.len() + 16; // Arc header
            bytes += s.places.len() * std::mem::size_of::<Place>() + s.shards.len() * 4;
            for p in s.places.iter() {
                if let Place::Cells(c) = p {
                    bytes += c.capacity() * 8;
                }
            }
        }
        for k in inner.by_key.keys() {
            bytes += k.len();
        }
        bytes += inner.by_key.capacity() * (std::mem::size_of::<Box<str>>() + 4 + 1);
        for m in &inner.levels {
            bytes += m.capacity() * (8 + std::mem::size_of::<Vec<u32>>() + 1);
            bytes += m.values().map(|v| v.capacity() * 4).sum::<usize>();
        }
        bytes
    }
}

fn remove_entries(inner: &mut Inner, id: u32) {
    let Some(old) = inner.subs[id as usize].as_ref() else { return };
    let old_buckets: Vec<(usize, CellIndex, bool)> = old.places.iter().flat_map(buckets).collect();
    for (level, cell, _) in old_buckets {
        let key = u64::from(cell);
        if let Some(v) = inner.levels[level].get_mut(&key) {
            let before = v.len();
            v.retain(|&e| e & !ANCHOR != id);
            inner.level_entries[level] -= before - v.len();
            if v.is_empty() {
                inner.levels[level].remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
