//! The subscriber index: filter-then-refine over H3 buckets. It holds subscribers' places
//! as cells only (a disc around a cell, or a set of cells), never coordinates.
//!
//! **Discs** (a point or a home circle around a cell) are registered under the few
//! "bucket" cells they touch, at a level chosen from their size (points and small discs at
//! resolution 9, larger discs coarser, so that each sits in a handful of buckets).
//!
//! **Cell sets** (a neighborhood polygon) are *shapes*: identical sets are stored once and
//! shared by every subscriber who chose them, registered under their resolution-9 parents
//! and those parents' neighbors, and judged once per alert, however many subscribers
//! share them.
//!
//! Matching covers the alert at each level in use (covers are cached per alert, so the
//! shards of one process share them). Bucket entries are candidates, deduplicated with a
//! bitset. A candidate whose center lies in a resolution-9 cell entirely inside the alert
//! matches without geometry; the rest are refined with exact geometry
//! ([`hexcast_core::exact`]). Candidates are conservative and refinement is exact up to a
//! margin on the side of notifying, so a subscriber whose area meets the alert is never
//! missed, and one whose area is more than its cell's size away is never notified.
//!
//! Exactly once across shards: a subscription is stored in every shard its places touch,
//! an alert is routed to every shard it touches, and the pair is emitted only by its owner
//! shard: the subscriber's home shard when the alert reaches it, else the lowest shard both
//! touch. Reads take a read lock, so a match sees either all of an upsert or none of it.
//!
//! Measured alternatives and why this design won are in the README (Benchmarks).

use std::collections::VecDeque;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use h3o::{CellIndex, Resolution};
use hashbrown::{DefaultHashBuilder, HashMap, HashSet, HashTable};
use hexcast_core::cells::{CoverError, Reach, ShardMap, centroid, circumradius_m, disc_cells, lookup_cells};
use hexcast_core::exact::PreparedArea;
use hexcast_core::{Alert, Area, Delivery, LatLng, Place, Subscription, SubscriptionFilter, Timestamp};

/// Finest bucket level.
pub const MAX_LEVEL: Resolution = Resolution::Nine;
const LEVELS: usize = 10;
const SHAPE_LEVEL: usize = 9;
/// A centroid rounded to f32 moves by at most ~1 m; grow the disc by more than that.
const F32_SLACK_M: f64 = 2.0;
/// Largest cover of one alert at one level.
const MAX_LOOKUP_CELLS: usize = 4_000_000;
/// Alerts whose covers are kept: the shards of one process match the same alert in turn.
const COVER_CACHE: usize = 8;

/// A match: one subscriber of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Match {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Subscriber id.
    pub subscriber_id: Arc<str>,
    /// Languages, quiet hours and cap, when the subscriber set any.
    pub delivery: Option<Arc<Delivery>>,
}

/// A disc place as stored: its cell and radius.
#[derive(Debug, Clone, Copy)]
struct Disc {
    cell: CellIndex,
    radius_m: f32,
}

impl Disc {
    /// The bucket entry of this disc of subscriber `id`.
    fn entry(&self, id: u32) -> Entry {
        let c = centroid(self.cell);
        Entry {
            id,
            lat: c.lat() as f32,
            lng: c.lng() as f32,
            reach_m: self.radius_m + circumradius_m(self.cell) as f32 + 0.5 + F32_SLACK_M as f32,
            center9: u64::from(c.cell(MAX_LEVEL)),
        }
    }
}

/// A bucket entry: a disc's owner and, inline, the disc itself (its cell's centroid and
/// its radius grown by the cell's circumradius). Candidates are judged from the bucket's
/// contiguous memory; only those whose disc meets the alert touch their subscriber.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u32,
    lat: f32,
    lng: f32,
    reach_m: f32,
    /// The resolution-9 cell holding the centroid: inside a polygon alert's inside cells,
    /// the disc matches without geometry.
    center9: u64,
}

impl Entry {
    fn center(&self) -> Option<LatLng> {
        LatLng::new(f64::from(self.lat), f64::from(self.lng)).ok()
    }

    /// Bucket: the finest level whose edge is at least the disc's reach, and the one cell
    /// there that holds the disc's center. Matching looks a disc up in the cells within an
    /// edge of the alert ([`lookup_cells`]), so a disc is filed once, whatever its size.
    fn bucket(&self) -> (usize, u64) {
        let r = f64::from(self.reach_m);
        let mut level = MAX_LEVEL;
        while u8::from(level) > 0 && level.edge_length_m() < r {
            level = Resolution::try_from(u8::from(level) - 1).unwrap_or(Resolution::Zero);
        }
        let cell = self.center().map_or(0, |c| u64::from(c.cell(level)));
        (usize::from(u8::from(level)), cell)
    }
}

/// A set of cells shared by every subscriber who chose it.
#[derive(Debug)]
struct Shape {
    cells: Arc<[CellIndex]>,
    /// The cells grouped by resolution-9 parent (a cell at resolution 9 or coarser is its
    /// own group): (parent, whether the parent stands for finer cells, range in `order`).
    groups: Box<[(CellIndex, bool, u32, u32)]>,
    /// Indexes into `cells`, group by group.
    order: Box<[u32]>,
    members: Vec<u32>,
}

impl Shape {
    fn new(cells: Arc<[CellIndex]>) -> Self {
        let mut keyed: Vec<(CellIndex, bool, u32)> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match c.parent(MAX_LEVEL) {
                Some(p) if c.resolution() > MAX_LEVEL => (p, true, i as u32),
                _ => (*c, false, i as u32),
            })
            .collect();
        keyed.sort_unstable();
        let mut groups = Vec::new();
        let mut start = 0;
        for i in 1..=keyed.len() {
            if i == keyed.len() || (keyed[i].0, keyed[i].1) != (keyed[start].0, keyed[start].1) {
                groups.push((keyed[start].0, keyed[start].1, start as u32, i as u32));
                start = i;
            }
        }
        let order = keyed.into_iter().map(|(_, _, i)| i).collect();
        Self { cells, groups: groups.into_boxed_slice(), order, members: Vec::new() }
    }

    /// Buckets: (level, cell). Cells at resolution 9 or coarser are their own bucket; fine
    /// cells register under their resolution-9 parent and its ring of neighbors (H3
    /// children stick out of their parent's hexagon by far less than a neighbor's width).
    fn buckets(&self) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for &(p, fine, _, _) in self.groups.iter() {
            if fine {
                out.extend(p.grid_disk::<Vec<_>>(1).into_iter().map(|c| (SHAPE_LEVEL, u64::from(c))));
            } else {
                out.push((usize::from(u8::from(p.resolution())), u64::from(p)));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether the shape meets the alert. A cell inside the alert at resolution 9, or whose
    /// resolution-9 parent is (an H3 child's centroid lies inside its parent), matches at
    /// once; otherwise the cells near the alert's edge are checked exactly.
    fn meets(&self, covers: &Covers, prepared: &PreparedArea<'_>) -> bool {
        let inside = covers.inside9();
        if self.groups.iter().any(|(p, _, _, _)| p.resolution() == MAX_LEVEL && inside.contains(&u64::from(*p))) {
            return true;
        }
        let near = covers.near9();
        for &(p, fine, a, b) in self.groups.iter() {
            if fine && !p.grid_disk::<Vec<_>>(1).iter().any(|n| near.contains(&u64::from(*n))) {
                continue;
            }
            if self.order[a as usize..b as usize].iter().any(|&i| prepared.cell_intersects(self.cells[i as usize])) {
                return true;
            }
        }
        false
    }
}

#[derive(Debug)]
struct Sub {
    id: Arc<str>,
    discs: Box<[Disc]>,
    shapes: Box<[u32]>,
    /// Bit i set: place i is a shape (for the original order on read-back).
    shape_mask: u64,
    updated_at: Timestamp,
    home: u32,
    shard_set: u32,
    /// The partitions of the subscriptions topic that hold this subscription now (an
    /// interned set, as `shard_set`), or [`UNTRACKED`] when it was upserted directly.
    held: u32,
    filter: u32,
    /// Index into `Inner::deliveries`, or [`NO_DELIVERY`] for the default.
    delivery: u32,
    tenant: u16,
}

/// A subscriber with the default delivery preferences.
const NO_DELIVERY: u32 = u32::MAX;

/// `Sub::held` of a subscription not read from partitions.
const UNTRACKED: u32 = u32::MAX;

#[derive(Debug, Default)]
struct Inner {
    subs: Vec<Option<Sub>>,
    free: Vec<u32>,
    /// Dense ids, found by the hash of `tenant/subscriber_id` (the key is not stored twice).
    by_key: HashTable<u32>,
    live: usize,
    tenants: Vec<Arc<str>>,
    tenant_ids: HashMap<Arc<str>, u16>,
    filters: Vec<SubscriptionFilter>,
    filter_ids: HashMap<(Vec<String>, i32, Vec<String>), u32>,
    /// Distinct delivery preferences, shared by the subscribers that set the same ones.
    deliveries: Vec<Arc<Delivery>>,
    delivery_ids: HashMap<Arc<Delivery>, u32>,
    shard_sets: Vec<Box<[u32]>>,
    shard_set_ids: HashMap<Box<[u32]>, u32>,
    shapes: Vec<Option<Shape>>,
    free_shapes: Vec<u32>,
    shape_ids: HashMap<Arc<[CellIndex]>, u32>,
    /// Per level: bucket cell -> discs.
    levels: Vec<HashMap<u64, Vec<Entry>>>,
    /// Per level: bucket cell -> shapes.
    shape_levels: Vec<HashMap<u64, Vec<u32>>>,
}

type Lazy<T> = OnceLock<Result<Vec<T>, CoverError>>;

/// The lookup cells of one alert at each level, computed on first use.
#[derive(Debug)]
struct Covers {
    alert_id: String,
    target: Area,
    levels: [Lazy<(CellIndex, Reach)>; LEVELS],
    inside9: OnceLock<HashSet<u64>>,
    near9: OnceLock<HashSet<u64>>,
}

impl Covers {
    fn new(alert: &Alert) -> Self {
        Self {
            alert_id: alert.alert_id.clone(),
            target: alert.target.clone(),
            levels: std::array::from_fn(|_| OnceLock::new()),
            inside9: OnceLock::new(),
            near9: OnceLock::new(),
        }
    }

    fn level(&self, level: usize) -> Result<&[(CellIndex, Reach)], CoverError> {
        let res = Resolution::try_from(level as u8).unwrap_or(MAX_LEVEL);
        match self.levels[level].get_or_init(|| lookup_cells(&self.target, res, MAX_LOOKUP_CELLS)) {
            Ok(cells) => Ok(cells),
            Err(e) => Err(e.clone()),
        }
    }

    fn nine(&self, least: Reach) -> HashSet<u64> {
        self.level(SHAPE_LEVEL)
            .map(|cells| cells.iter().filter(|(_, r)| *r >= least).map(|(c, _)| u64::from(*c)).collect())
            .unwrap_or_default()
    }

    /// Resolution-9 cells entirely inside the alert (empty when the cover failed, which
    /// [`Covers::level`] reports).
    fn inside9(&self) -> &HashSet<u64> {
        self.inside9.get_or_init(|| self.nine(Reach::Inside))
    }

    /// Resolution-9 cells that may touch the alert.
    fn near9(&self) -> &HashSet<u64> {
        self.near9.get_or_init(|| self.nine(Reach::Touches))
    }
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

/// The home shard of a subscription: the territory of its first place's center. The same
/// as [`shards_of`]'s, without covering the places.
pub fn home_shard(places: &[Place], shards: &ShardMap) -> u32 {
    places
        .iter()
        .find_map(|p| match p {
            Place::Disc { cell, .. } => Some(*cell),
            Place::Cells(cells) => cells.first().copied(),
        })
        .map_or(0, |c| shards.shard_of(centroid(c).cell(shards.territory_res)))
}

/// Concurrent subscriber index.
#[derive(Debug)]
pub struct SubscriberIndex {
    shard_map: ShardMap,
    hasher: DefaultHashBuilder,
    inner: RwLock<Inner>,
    covers: Mutex<VecDeque<Arc<Covers>>>,
}

fn key_of(inner: &Inner, id: u32) -> Option<(&str, &str)> {
    let sub = inner.subs.get(id as usize)?.as_ref()?;
    Some((&inner.tenants[usize::from(sub.tenant)], &sub.id))
}

impl SubscriberIndex {
    /// An empty index for a shard map.
    pub fn new(shard_map: ShardMap) -> Self {
        let inner = Inner {
            levels: (0..LEVELS).map(|_| HashMap::new()).collect(),
            shape_levels: (0..LEVELS).map(|_| HashMap::new()).collect(),
            ..Inner::default()
        };
        Self {
            shard_map,
            hasher: DefaultHashBuilder::default(),
            inner: RwLock::new(inner),
            covers: Mutex::new(VecDeque::new()),
        }
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

    fn hash_key(&self, tenant: &str, subscriber_id: &str) -> u64 {
        self.hasher.hash_one((tenant, subscriber_id))
    }

    fn find(&self, inner: &Inner, key: &str) -> Option<u32> {
        let (tenant, id) = key.split_once('/')?;
        let hash = self.hash_key(tenant, id);
        inner.by_key.find(hash, |&i| key_of(inner, i) == Some((tenant, id))).copied()
    }

    /// Subscribers indexed.
    pub fn len(&self) -> usize {
        self.read().live
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored subscription for `tenant/subscriber_id`.
    pub fn get(&self, key: &str) -> Option<Subscription> {
        let inner = self.read();
        let id = self.find(&inner, key)?;
        let sub = inner.subs[id as usize].as_ref()?;
        let (mut discs, mut shapes) = (sub.discs.iter(), sub.shapes.iter());
        let mut places = Vec::with_capacity(sub.discs.len() + sub.shapes.len());
        for i in 0..sub.discs.len() + sub.shapes.len() {
            let shape_next = (i < 64 && sub.shape_mask & (1 << i) != 0) || (i >= 64 && discs.len() == 0);
            let place = if shape_next {
                shapes.next().and_then(|&s| inner.shapes[s as usize].as_ref()).map(|s| Place::Cells(s.cells.to_vec()))
            } else {
                discs.next().map(|d| Place::Disc { cell: d.cell, radius_m: d.radius_m })
            };
            places.extend(place);
        }
        Some(Subscription {
            tenant: inner.tenants[usize::from(sub.tenant)].to_string(),
            subscriber_id: sub.id.to_string(),
            places,
            filter: inner.filters[sub.filter as usize].clone(),
            shards: inner.shard_sets[sub.shard_set as usize].to_vec(),
            updated_at: sub.updated_at,
            delivery: inner.deliveries.get(sub.delivery as usize).map(|d| (**d).clone()).unwrap_or_default(),
        })
    }

    /// The delivery preferences of `tenant/subscriber_id`, when it is indexed and set any.
    pub fn delivery(&self, key: &str) -> Option<Arc<Delivery>> {
        let inner = self.read();
        let id = self.find(&inner, key)?;
        let sub = inner.subs[id as usize].as_ref()?;
        inner.deliveries.get(sub.delivery as usize).map(Arc::clone)
    }

    /// The shards `tenant/subscriber_id` is stored in.
    pub fn shards(&self, key: &str) -> Option<Vec<u32>> {
        let inner = self.read();
        let id = self.find(&inner, key)?;
        inner.subs[id as usize].as_ref().map(|s| inner.shard_sets[s.shard_set as usize].to_vec())
    }

    /// Applies one record of the subscriptions topic: a stored subscription under `key`,
    /// or a tombstone (`None`) that removes it.
    pub fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        use prost::Message as _;
        match value {
            None => {
                self.remove(key);
            }
            Some(bytes) => {
                let stored = hexcast_proto::v1::Subscription::decode(bytes).map_err(|e| e.to_string())?;
                self.upsert(Subscription::try_from(stored).map_err(|e| e.to_string())?);
            }
        }
        Ok(())
    }

    /// Applies one record read from `partition` of the subscriptions topic (the push
    /// target loads only the partitions of its shards, [`SubscriberIndex::drop_partition`]
    /// forgets one). A subscription is kept while any held partition has a value for it;
    /// of the values held, the newest (`updated_at`) wins, since partitions are read in no
    /// particular order relative to each other.
    pub fn apply_from(&self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        use prost::Message as _;
        let p = u32::try_from(partition).map_err(|_| format!("negative partition {partition}"))?;
        match value {
            None => {
                self.release(key, p);
            }
            Some(bytes) => {
                let stored = hexcast_proto::v1::Subscription::decode(bytes).map_err(|e| e.to_string())?;
                let sub = Subscription::try_from(stored).map_err(|e| e.to_string())?;
                let newer_held = {
                    let inner = self.read();
                    self.find(&inner, key)
                        .and_then(|id| inner.subs[id as usize].as_ref())
                        .is_some_and(|s| s.updated_at > sub.updated_at)
                };
                if newer_held {
                    self.add_holder(key, p);
                } else {
                    self.upsert_held(sub, Some(p));
                }
            }
        }
        Ok(())
    }

    /// Forgets `partition`: every subscription no other held partition holds is removed.
    /// Returns how many were removed.
    pub fn drop_partition(&self, partition: i32) -> usize {
        let Ok(p) = u32::try_from(partition) else { return 0 };
        let mut guard = self.write();
        let inner = &mut *guard;
        let ids: Vec<u32> = inner
            .subs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().filter(|s| s.held != UNTRACKED).map(|s| (i as u32, s.held)))
            .filter(|&(_, held)| inner.shard_sets[held as usize].contains(&p))
            .map(|(i, _)| i)
            .collect();
        let mut removed = 0;
        for id in ids {
            if self.unhold(inner, id, p) {
                removed += 1;
            }
        }
        removed
    }

    /// Adds `p` to the partitions holding `key`.
    fn add_holder(&self, key: &str, p: u32) {
        let mut guard = self.write();
        let inner = &mut *guard;
        let Some(id) = self.find(inner, key) else { return };
        let Some(held) = inner.subs[id as usize].as_ref().map(|s| s.held) else { return };
        if held == UNTRACKED {
            return;
        }
        let mut set = inner.shard_sets[held as usize].to_vec();
        if !set.contains(&p) {
            set.push(p);
            set.sort_unstable();
            let h = intern_set(inner, set);
            if let Some(s) = inner.subs[id as usize].as_mut() {
                s.held = h;
            }
        }
    }

    /// A tombstone read from `p`: `p` no longer holds `key`.
    fn release(&self, key: &str, p: u32) -> bool {
        let mut guard = self.write();
        let inner = &mut *guard;
        let Some(id) = self.find(inner, key) else { return false };
        self.unhold(inner, id, p)
    }

    /// Takes `p` from the holders of subscriber `id`; removes it when none is left (or
    /// when it is untracked). Whether it was removed.
    fn unhold(&self, inner: &mut Inner, id: u32, p: u32) -> bool {
        let Some(sub) = inner.subs[id as usize].as_ref() else { return false };
        let held = sub.held;
        if held != UNTRACKED {
            let set: Vec<u32> = inner.shard_sets[held as usize].iter().copied().filter(|&x| x != p).collect();
            if !set.is_empty() {
                let h = intern_set(inner, set);
                if let Some(s) = inner.subs[id as usize].as_mut() {
                    s.held = h;
                }
                return false;
            }
        }
        let hash = {
            let s =
                inner.subs[id as usize].as_ref().map_or(("", ""), |s| (&*inner.tenants[usize::from(s.tenant)], &*s.id));
            self.hash_key(s.0, s.1)
        };
        self.remove_id(inner, id, hash);
        true
    }

    fn remove_id(&self, inner: &mut Inner, id: u32, hash: u64) {
        remove_entries(inner, id);
        if let Ok(entry) = inner.by_key.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        inner.subs[id as usize] = None;
        inner.free.push(id);
        inner.live -= 1;
    }

    /// Inserts or replaces a subscription. The home shard is computed from the places; the
    /// stored `shards` (computed by the push service with [`shards_of`]) are trusted when
    /// present and valid for this shard map, and recomputed otherwise.
    pub fn upsert(&self, sub: Subscription) {
        self.upsert_held(sub, None);
    }

    /// [`SubscriberIndex::upsert`], noting that partition `from` holds it (None: untracked).
    fn upsert_held(&self, sub: Subscription, from: Option<u32>) {
        let home = home_shard(&sub.places, &self.shard_map);
        let shards = if !sub.shards.is_empty()
            && sub.shards.contains(&home)
            && sub.shards.iter().all(|&s| s < self.shard_map.shards)
        {
            sub.shards.clone()
        } else {
            shards_of(&sub.places, &self.shard_map).1
        };
        // Everything that costs geometry is computed before taking the lock.
        let mut discs = Vec::new();
        let mut cell_sets = Vec::new();
        let mut shape_mask = 0u64;
        for (i, p) in sub.places.into_iter().enumerate() {
            match p {
                Place::Disc { cell, radius_m } => discs.push(Disc { cell, radius_m }),
                Place::Cells(mut cells) => {
                    cells.sort_unstable();
                    cells.dedup();
                    if i < 64 {
                        shape_mask |= 1 << i;
                    }
                    cell_sets.push(Arc::<[CellIndex]>::from(cells));
                }
            }
        }
        // Entries get their id under the lock; their geometry is computed here.
        let mut entries: Vec<Entry> = discs.iter().map(|d| d.entry(0)).collect();
        let disc_buckets: Vec<(usize, u64)> = entries.iter().map(Entry::bucket).collect();
        let hash = self.hash_key(&sub.tenant, &sub.subscriber_id);

        let mut guard = self.write();
        let inner = &mut *guard;
        let existing = inner
            .by_key
            .find(hash, |&i| key_of(inner, i) == Some((sub.tenant.as_str(), sub.subscriber_id.as_str())))
            .copied();
        if let Some(old) = existing {
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
        let delivery = if sub.delivery == Delivery::default() {
            NO_DELIVERY
        } else {
            match inner.delivery_ids.get(&sub.delivery) {
                Some(&d) => d,
                None => {
                    let d = inner.deliveries.len() as u32;
                    let shared = Arc::new(sub.delivery.clone());
                    inner.deliveries.push(Arc::clone(&shared));
                    inner.delivery_ids.insert(shared, d);
                    d
                }
            }
        };
        let shard_set = intern_set(inner, shards);
        let held = match from {
            None => UNTRACKED,
            Some(p) => {
                let mut set = existing
                    .and_then(|id| inner.subs[id as usize].as_ref())
                    .filter(|s| s.held != UNTRACKED)
                    .map_or_else(Vec::new, |s| inner.shard_sets[s.held as usize].to_vec());
                if !set.contains(&p) {
                    set.push(p);
                    set.sort_unstable();
                }
                intern_set(inner, set)
            }
        };
        let id = match existing {
            Some(id) => id,
            None => {
                let id = inner.free.pop().unwrap_or_else(|| {
                    inner.subs.push(None);
                    (inner.subs.len() - 1) as u32
                });
                inner.live += 1;
                id
            }
        };
        let shapes: Vec<u32> = cell_sets.into_iter().map(|cells| intern_shape(inner, cells, id)).collect();
        for (e, (level, cell)) in entries.iter_mut().zip(disc_buckets) {
            e.id = id;
            inner.levels[level].entry(cell).or_default().push(*e);
        }
        inner.subs[id as usize] = Some(Sub {
            id: sub.subscriber_id.as_str().into(),
            discs: discs.into_boxed_slice(),
            shapes: shapes.into_boxed_slice(),
            shape_mask,
            updated_at: sub.updated_at,
            home,
            shard_set,
            held,
            filter,
            delivery,
            tenant,
        });
        if existing.is_none() {
            let Inner { by_key, subs, tenants, .. } = inner;
            by_key.insert_unique(hash, id, |&i| {
                let s = subs[i as usize].as_ref().map_or(("", ""), |s| (&*tenants[usize::from(s.tenant)], &*s.id));
                self.hash_key(s.0, s.1)
            });
        }
    }

    /// Removes a subscription; whether it existed.
    pub fn remove(&self, key: &str) -> bool {
        let Some((tenant, sid)) = key.split_once('/') else { return false };
        let hash = self.hash_key(tenant, sid);
        let mut guard = self.write();
        let inner = &mut *guard;
        let Some(id) = self.find(inner, key) else { return false };
        self.remove_id(inner, id, hash);
        true
    }

    fn covers(&self, alert: &Alert) -> Arc<Covers> {
        let mut cache = self.covers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.iter().find(|c| c.alert_id == alert.alert_id && c.target == alert.target) {
            return Arc::clone(c);
        }
        let c = Arc::new(Covers::new(alert));
        if cache.len() == COVER_CACHE {
            cache.pop_front();
        }
        cache.push_back(Arc::clone(&c));
        c
    }

    /// The subscribers `shard` must notify for `alert` (routed to `alert_shards`).
    pub fn matches(&self, alert: &Alert, shard: u32, alert_shards: &[u32]) -> Result<Vec<Match>, CoverError> {
        Ok(self.matching(alert, Some(shard), alert_shards)?.into_iter().map(|(m, _)| m).collect())
    }

    /// Every subscriber `alert` (routed to `alert_shards`) reaches, whichever shard owns
    /// it, with the owning shard: what [`SubscriberIndex::matches`] returns across all of
    /// `alert_shards`, in one pass. The matcher uses it to hand a recipient of record over
    /// to the shard that now owns it.
    pub fn matches_all(&self, alert: &Alert, alert_shards: &[u32]) -> Result<Vec<(Match, u32)>, CoverError> {
        self.matching(alert, None, alert_shards)
    }

    /// Whether `tenant/subscriber_id` is indexed (not deleted).
    pub fn contains(&self, key: &str) -> bool {
        let inner = self.read();
        self.find(&inner, key).is_some()
    }

    fn matching(
        &self,
        alert: &Alert,
        shard: Option<u32>,
        alert_shards: &[u32],
    ) -> Result<Vec<(Match, u32)>, CoverError> {
        let covers = self.covers(alert);
        let inner = self.read();
        let prepared = PreparedArea::new(&alert.target);
        let mut m = Matching {
            inner: &inner,
            alert,
            shard,
            alert_shards,
            covers: &covers,
            prepared: &prepared,
            seen: vec![0u64; inner.subs.len() / 64 + 1],
            filter_ok: vec![None; inner.filters.len()],
            shape_ok: HashMap::new(),
            polygon: matches!(alert.target, Area::Polygon(_) | Area::MultiPolygon(_)),
            out: Vec::new(),
        };
        // Shapes first: a matching shape emits its members without looking at them again.
        for level in 0..LEVELS {
            if inner.shape_levels[level].is_empty() {
                continue;
            }
            for &(cell, reach) in covers.level(level)? {
                if reach == Reach::Near {
                    continue;
                }
                if let Some(shapes) = inner.shape_levels[level].get(&u64::from(cell)) {
                    for &s in shapes {
                        if m.shape_meets(s) {
                            for &member in inner.shapes[s as usize].as_ref().map_or(&[][..], |s| &s.members) {
                                m.visit(member);
                            }
                        }
                    }
                }
            }
        }
        for level in 0..LEVELS {
            if inner.levels[level].is_empty() {
                continue;
            }
            for &(cell, reach) in covers.level(level)? {
                let inside = reach == Reach::Inside;
                let Some(entries) = inner.levels[level].get(&u64::from(cell)) else { continue };
                for e in entries {
                    // A bucket inside the alert holds only discs whose center is inside it.
                    // Against a polygon, geometry costs more than the subscriber's own
                    // checks, so those come first (an alert over several shards is matched
                    // by each, and each owns only some of the subscribers).
                    let meets = if inside {
                        true
                    } else if m.polygon {
                        m.may_emit(e.id) && m.entry_meets(e)
                    } else {
                        m.entry_meets(e)
                    };
                    if meets {
                        m.visit(e.id);
                    }
                }
            }
        }
        Ok(m.out)
    }

    /// Approximate heap and inline bytes held, for bytes-per-subscriber figures: every
    /// allocation's capacity, plus 16 bytes of allocator overhead per allocation.
    pub fn memory_bytes(&self) -> usize {
        const ALLOC: usize = 16;
        let inner = self.read();
        let mut bytes = inner.subs.capacity() * std::mem::size_of::<Option<Sub>>();
        for s in inner.subs.iter().flatten() {
            bytes += s.id.len() + 16 + ALLOC; // Arc header
            if !s.discs.is_empty() {
                bytes += s.discs.len() * std::mem::size_of::<Disc>() + ALLOC;
            }
            if !s.shapes.is_empty() {
                bytes += s.shapes.len() * 4 + ALLOC;
            }
        }
        bytes += inner.by_key.capacity() * (4 + 1);
        bytes += inner.free.capacity() * 4;
        for sh in inner.shapes.iter().flatten() {
            bytes +=
                sh.cells.len() * 12 + 16 + ALLOC + sh.groups.len() * 24 + ALLOC * 2 + sh.members.capacity() * 4 + ALLOC;
        }
        bytes += inner.shapes.capacity() * std::mem::size_of::<Option<Shape>>();
        bytes += inner.shape_ids.capacity() * (16 + 4 + 1);
        bytes += inner.shard_sets.iter().map(|s| s.len() * 8 + 16 + ALLOC).sum::<usize>();
        for m in &inner.levels {
            bytes += m.capacity() * (8 + std::mem::size_of::<Vec<Entry>>() + 1);
            bytes += m.values().map(|v| v.capacity() * std::mem::size_of::<Entry>() + ALLOC).sum::<usize>();
        }
        for m in &inner.shape_levels {
            bytes += m.capacity() * (8 + std::mem::size_of::<Vec<u32>>() + 1);
            bytes += m.values().map(|v| v.capacity() * 4 + ALLOC).sum::<usize>();
        }
        bytes
    }
}

/// One alert's matching in one shard.
struct Matching<'a> {
    inner: &'a Inner,
    alert: &'a Alert,
    alert_shards: &'a [u32],
    covers: &'a Covers,
    prepared: &'a PreparedArea<'a>,
    /// The shard emitting; `None`: every owner (the owner is returned with each match).
    shard: Option<u32>,
    /// Subscribers already judged.
    seen: Vec<u64>,
    filter_ok: Vec<Option<bool>>,
    shape_ok: HashMap<u32, bool>,
    /// Whether the alert is a polygon (exact geometry is costly).
    polygon: bool,
    out: Vec<(Match, u32)>,
}

impl Matching<'_> {
    fn shape_meets(&mut self, s: u32) -> bool {
        if let Some(&ok) = self.shape_ok.get(&s) {
            return ok;
        }
        let ok = self.inner.shapes[s as usize].as_ref().is_some_and(|shape| shape.meets(self.covers, self.prepared));
        self.shape_ok.insert(s, ok);
        ok
    }

    /// Whether a disc meets the alert: its center lies in a resolution-9 cell inside a
    /// polygon alert, or exact geometry says so.
    fn entry_meets(&self, e: &Entry) -> bool {
        let Some(c) = e.center() else { return false };
        if self.polygon && self.covers.inside9().contains(&e.center9) {
            return true;
        }
        self.prepared.disc_intersects(c, f64::from(e.reach_m))
    }

    /// Whether subscriber `id` is not emitted yet, its filter accepts the alert and this
    /// shard owns the pair.
    fn may_emit(&mut self, id: u32) -> bool {
        self.owner_if_emitted(id).is_some()
    }

    /// The shard that owns subscriber `id`'s pair when it is not emitted yet, its filter
    /// accepts the alert and (with a shard given) that shard is the owner.
    fn owner_if_emitted(&mut self, id: u32) -> Option<u32> {
        if self.seen[id as usize / 64] & (1u64 << (id % 64)) != 0 {
            return None;
        }
        let sub = self.inner.subs[id as usize].as_ref()?;
        let f = sub.filter as usize;
        let accepted = *self.filter_ok[f].get_or_insert_with(|| self.inner.filters[f].accepts(self.alert));
        if !accepted {
            return None;
        }
        let owner = owner_shard(self.alert_shards, sub.home, &self.inner.shard_sets[sub.shard_set as usize])?;
        self.shard.is_none_or(|s| s == owner).then_some(owner)
    }

    /// Emits subscriber `id`, one of whose places meets the alert, once, when its filter
    /// accepts the alert and this shard owns the pair.
    fn visit(&mut self, id: u32) {
        let Some(owner) = self.owner_if_emitted(id) else { return };
        self.seen[id as usize / 64] |= 1u64 << (id % 64);
        let Some(sub) = self.inner.subs[id as usize].as_ref() else { return };
        self.out.push((
            Match {
                tenant: Arc::clone(&self.inner.tenants[usize::from(sub.tenant)]),
                subscriber_id: Arc::clone(&sub.id),
                delivery: self.inner.deliveries.get(sub.delivery as usize).map(Arc::clone),
            },
            owner,
        ));
    }
}

/// The id of a sorted set of shards or partitions, interned.
fn intern_set(inner: &mut Inner, set: Vec<u32>) -> u32 {
    if let Some(&s) = inner.shard_set_ids.get(set.as_slice()) {
        return s;
    }
    let s = inner.shard_sets.len() as u32;
    inner.shard_sets.push(set.clone().into_boxed_slice());
    inner.shard_set_ids.insert(set.into_boxed_slice(), s);
    s
}

/// The shape with these cells, created when new, with `member` added.
fn intern_shape(inner: &mut Inner, cells: Arc<[CellIndex]>, member: u32) -> u32 {
    if let Some(&s) = inner.shape_ids.get(&cells) {
        if let Some(shape) = inner.shapes[s as usize].as_mut() {
            shape.members.push(member);
        }
        return s;
    }
    let mut shape = Shape::new(Arc::clone(&cells));
    shape.members.push(member);
    let s = inner.free_shapes.pop().unwrap_or_else(|| {
        inner.shapes.push(None);
        (inner.shapes.len() - 1) as u32
    });
    for (level, cell) in shape.buckets() {
        inner.shape_levels[level].entry(cell).or_default().push(s);
    }
    inner.shapes[s as usize] = Some(shape);
    inner.shape_ids.insert(cells, s);
    s
}

fn remove_from<T>(bucket: &mut HashMap<u64, Vec<T>>, cell: u64, is: impl Fn(&T) -> bool) {
    if let Some(v) = bucket.get_mut(&cell) {
        if let Some(pos) = v.iter().position(is) {
            v.swap_remove(pos);
        }
        if v.is_empty() {
            bucket.remove(&cell);
        }
    }
}

/// Removes a subscriber's bucket entries and shape memberships (not its slot).
fn remove_entries(inner: &mut Inner, id: u32) {
    let Some(old) = inner.subs[id as usize].as_ref() else { return };
    let buckets: Vec<(usize, u64)> = old.discs.iter().map(|d| d.entry(id).bucket()).collect();
    let shapes = old.shapes.clone();
    for (level, cell) in buckets {
        remove_from(&mut inner.levels[level], cell, |e| e.id == id);
    }
    for s in shapes.iter() {
        let Some(shape) = inner.shapes[*s as usize].as_mut() else { continue };
        if let Some(pos) = shape.members.iter().position(|&m| m == id) {
            shape.members.swap_remove(pos);
        }
        if shape.members.is_empty()
            && let Some(shape) = inner.shapes[*s as usize].take()
        {
            for (level, cell) in shape.buckets() {
                remove_from(&mut inner.shape_levels[level], cell, |x| x == s);
            }
            inner.shape_ids.remove(&shape.cells);
            inner.free_shapes.push(*s);
        }
    }
}

#[cfg(test)]
mod tests;
