//! The dedup stage and its state: reports (by report id) grouped into incidents (by stable
//! canonical id), a spatial index of the incidents that may still absorb reports from other
//! sources, and the changelog records that let a new instance rebuild all of it.

use std::collections::HashMap;

use h3o::{CellIndex, Resolution};
use hexcast_core::{Category, EventKind, Incident, IncidentEvent, IncidentStatus, LatLng, Stage, StageCtx, Timestamp};
use hexcast_proto::v1 as pb;
use prost::Message as _;

use crate::{CAP_EVICTED, DedupConfig, DedupError, DedupOut, TTL_EXPIRED};

#[derive(Debug, Clone)]
struct Report {
    version: i64,
    closed: bool,
    last_seen: Timestamp,
    canonical: String,
    source: String,
    family: String,
    location: Option<LatLng>,
    occurred_at: Timestamp,
    /// Category path of the latest report; empty when restored from an entry that predates it.
    category: String,
    /// Status of the latest report; unspecified when restored from an older entry.
    status: IncidentStatus,
}

/// A report that says nothing but "closed" (a CAD state feed's removal event): no point, no
/// area. Its category and version are placeholders, never compared.
fn bare(i: &Incident) -> bool {
    i.location.is_none() && i.areas.is_empty()
}

impl Report {
    /// Whether a report of the same version says something else: another place, category
    /// or status. Fields an older changelog entry lacks, or a bare close lacks, compare as
    /// unknown, never as changed.
    fn differs(&self, i: &Incident) -> bool {
        let status = self.status != IncidentStatus::Unspecified && self.status != i.status;
        if bare(i) {
            return status;
        }
        let moved = i.location.is_some() && i.location != self.location;
        let recategorized = !self.category.is_empty() && self.category != i.category.as_str();
        moved || recategorized || status
    }

    /// Takes what a newer or changed report says; a bare close changes only the status.
    fn absorb(&mut self, i: &Incident) {
        self.status = i.status;
        if bare(i) {
            return;
        }
        if i.location.is_some() {
            self.location = i.location;
        }
        i.category.as_str().clone_into(&mut self.category);
        i.category.family().clone_into(&mut self.family);
    }

    fn entry(&self, report_id: &str) -> pb::DedupEntry {
        pb::DedupEntry {
            report_id: report_id.to_owned(),
            version: self.version,
            closed: self.closed,
            last_seen_ms: self.last_seen.0,
            canonical_id: self.canonical.clone(),
            source: self.source.clone(),
            family: self.family.clone(),
            location: self.location.map(|l| pb::LatLng { lat: l.lat(), lng: l.lng() }),
            occurred_at_ms: self.occurred_at.0,
            category: self.category.clone(),
            status: self.status as i32,
        }
    }
}

#[derive(Debug, Clone)]
struct GridEntry {
    family: String,
    occurred_at: Timestamp,
    canonical: String,
}

#[derive(Debug, Clone)]
struct Cluster {
    family: String,
    location: Option<LatLng>,
    occurred_at: Timestamp,
    /// Report ids, the one that started the incident first.
    members: Vec<String>,
    sources: Vec<String>,
    last_seen: Timestamp,
    closed: bool,
    cell: Option<CellIndex>,
}

/// What [`Dedup::restore`] found in the changelog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Reports restored.
    pub restored: usize,
    /// Entries past their TTL, not restored.
    pub expired: usize,
    /// Entries that could not be decoded, skipped.
    pub malformed: usize,
}

/// The dedup stage.
#[derive(Debug)]
pub struct Dedup {
    cfg: DedupConfig,
    reports: HashMap<String, Report>,
    clusters: HashMap<String, Cluster>,
    /// Merge candidates by cell at `grid_res`: family, occurrence time and id, so most
    /// candidates are ruled out without looking the incident up.
    grid: HashMap<CellIndex, Vec<GridEntry>>,
    grid_res: Resolution,
    last_sweep: Timestamp,
    evicted: u64,
    expired: u64,
}

/// Neighbors searched around a report's cell: with cells whose edge is at least twice the
/// merge distance, two points that close are at most two cells apart.
const GRID_RING: u32 = 2;

fn grid_resolution(distance_m: f64) -> Resolution {
    Resolution::range(Resolution::Zero, Resolution::Fifteen)
        .rev()
        .find(|r| r.edge_length_m() >= 2.0 * distance_m)
        .unwrap_or(Resolution::Zero)
}

impl Dedup {
    /// A dedup stage with empty state. `cfg` must have passed [`DedupConfig::validate`].
    pub fn new(cfg: DedupConfig) -> Self {
        let grid_res = grid_resolution(cfg.merge_distance_m);
        // Exported from the start (at 0), so that a rate over them is defined before the
        // first eviction.
        metrics::counter!(CAP_EVICTED).increment(0);
        metrics::counter!(TTL_EXPIRED).increment(0);
        Self {
            cfg,
            reports: HashMap::new(),
            clusters: HashMap::new(),
            grid: HashMap::new(),
            grid_res,
            last_sweep: Timestamp(i64::MIN),
            evicted: 0,
            expired: 0,
        }
    }

    /// Rebuilds the state from changelog records in log order (`(key, value)`, `None` for a
    /// tombstone; the last value of a key wins), forgetting what is past its TTL at `now`.
    pub fn restore<I>(cfg: DedupConfig, records: I, now: Timestamp) -> (Self, RestoreStats)
    where
        I: IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    {
        let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for (k, v) in records {
            latest.insert(k, v);
        }
        let mut stats = RestoreStats::default();
        let mut d = Self::new(cfg);
        let ttl_ms = d.ttl_ms();
        let mut entries: Vec<pb::DedupEntry> = Vec::new();
        for v in latest.into_values().flatten() {
            match pb::DedupEntry::decode(v.as_slice()) {
                Ok(e) if !e.report_id.is_empty() && !e.canonical_id.is_empty() => {
                    if now.millis_since(Timestamp(e.last_seen_ms)) > ttl_ms {
                        stats.expired += 1;
                    } else {
                        entries.push(e);
                    }
                }
                _ => stats.malformed += 1,
            }
        }
        // Incidents in the order they started, the report that started one first, so each
        // incident is rebuilt from its own first report, as it was built live.
        entries.sort_by(|a, b| {
            (a.report_id != a.canonical_id, a.occurred_at_ms, &a.report_id).cmp(&(
                b.report_id != b.canonical_id,
                b.occurred_at_ms,
                &b.report_id,
            ))
        });
        for e in entries {
            let location = e.location.and_then(|l| LatLng::new(l.lat, l.lng).ok());
            let report = Report {
                version: e.version,
                closed: e.closed,
                last_seen: Timestamp(e.last_seen_ms),
                canonical: e.canonical_id.clone(),
                source: e.source,
                family: e.family,
                location,
                occurred_at: Timestamp(e.occurred_at_ms),
                status: IncidentStatus::try_from(e.status).unwrap_or(IncidentStatus::Unspecified),
                category: e.category,
            };
            if !d.clusters.contains_key(&report.canonical) {
                d.start_cluster(&report.canonical.clone(), &report);
            }
            let cluster = d.clusters.get_mut(&report.canonical).unwrap_or_else(|| unreachable!("just inserted"));
            if !cluster.members.contains(&e.report_id) {
                cluster.members.push(e.report_id.clone());
            }
            if !cluster.sources.contains(&report.source) {
                cluster.sources.push(report.source.clone());
            }
            cluster.last_seen = cluster.last_seen.max(report.last_seen);
            if e.report_id == report.canonical {
                cluster.closed = report.closed;
            }
            d.reports.insert(e.report_id, report);
            stats.restored += 1;
        }
        metrics::gauge!(crate::ENTRIES).set(d.reports.len() as f64);
        (d, stats)
    }

    /// Reports currently remembered.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Incidents currently remembered (a merged incident counts once).
    pub fn incidents(&self) -> usize {
        self.clusters.len()
    }

    /// Incidents forgotten because of the size cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Incidents forgotten because their TTL passed.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    fn ttl_ms(&self) -> i64 {
        (self.cfg.ttl_secs as i64).saturating_mul(1000)
    }

    fn start_cluster(&mut self, canonical: &str, first: &Report) {
        let cell = first.location.map(|l| l.cell(self.grid_res));
        if let Some(c) = cell {
            self.grid.entry(c).or_default().push(GridEntry {
                family: first.family.clone(),
                occurred_at: first.occurred_at,
                canonical: canonical.to_owned(),
            });
        }
        self.clusters.insert(
            canonical.to_owned(),
            Cluster {
                family: first.family.clone(),
                location: first.location,
                occurred_at: first.occurred_at,
                members: Vec::new(),
                sources: Vec::new(),
                last_seen: first.last_seen,
                closed: first.closed,
                cell,
            },
        );
    }

    /// Moves an incident's merge anchor (its place and family) to what its first report now
    /// says, as a restore from the changelog would build it.
    fn relocate(&mut self, canonical: &str, location: Option<LatLng>, family: &str) {
        let grid_res = self.grid_res;
        let Some(c) = self.clusters.get_mut(canonical) else { return };
        if c.location == location && c.family == family {
            return;
        }
        if let Some(cell) = c.cell
            && let Some(ids) = self.grid.get_mut(&cell)
        {
            ids.retain(|e| e.canonical != canonical);
            if ids.is_empty() {
                self.grid.remove(&cell);
            }
        }
        c.location = location;
        family.clone_into(&mut c.family);
        c.cell = location.map(|l| l.cell(grid_res));
        if let Some(cell) = c.cell {
            self.grid.entry(cell).or_default().push(GridEntry {
                family: family.to_owned(),
                occurred_at: c.occurred_at,
                canonical: canonical.to_owned(),
            });
        }
    }

    /// Forgets one incident and every report merged into it, with their tombstones.
    fn forget(&mut self, canonical: &str, out: &mut Vec<DedupOut>) {
        let Some(cluster) = self.clusters.remove(canonical) else { return };
        if let Some(cell) = cluster.cell
            && let Some(ids) = self.grid.get_mut(&cell)
        {
            ids.retain(|e| e.canonical != canonical);
            if ids.is_empty() {
                self.grid.remove(&cell);
            }
        }
        for m in cluster.members {
            if self.reports.remove(&m).is_some() {
                out.push(DedupOut::State { report_id: m, entry: None });
            }
        }
    }

    /// Forgets incidents past their TTL, then the least recently seen ones while more
    /// reports than the cap are remembered.
    fn sweep(&mut self, now: Timestamp, out: &mut Vec<DedupOut>) {
        let ttl_ms = self.ttl_ms();
        let stale: Vec<String> = self
            .clusters
            .iter()
            .filter(|(_, c)| now.millis_since(c.last_seen) > ttl_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            self.forget(k, out);
        }
        self.expired += stale.len() as u64;
        metrics::counter!(TTL_EXPIRED).increment(stale.len() as u64);
        if self.reports.len() > self.cfg.max_entries {
            let mut by_age: Vec<(Timestamp, String)> =
                self.clusters.iter().map(|(k, c)| (c.last_seen, k.clone())).collect();
            by_age.sort_unstable();
            let mut evicted = 0u64;
            for (_, k) in by_age {
                if self.reports.len() <= self.cfg.max_entries {
                    break;
                }
                self.forget(&k, out);
                evicted += 1;
            }
            self.evicted += evicted;
            metrics::counter!(CAP_EVICTED).increment(evicted);
        }
        self.last_sweep = now;
        metrics::gauge!(crate::ENTRIES).set(self.reports.len() as f64);
    }

    /// The remembered incident a new report of another source belongs to, if any: same
    /// family, still open, within the distance and the time window; the nearest wins.
    fn merge_target(&self, incident: &Incident, family: &str, now: Timestamp) -> Option<String> {
        if !self.cfg.merge {
            return None;
        }
        let at = incident.location?;
        let window_ms = (self.cfg.merge_window_secs as i64).saturating_mul(1000);
        let ttl_ms = self.ttl_ms();
        let mut best: Option<(f64, &String)> = None;
        for cell in at.cell(self.grid_res).grid_disk::<Vec<_>>(GRID_RING) {
            for e in self.grid.get(&cell).into_iter().flatten() {
                if e.family != family || (incident.occurred_at.0 - e.occurred_at.0).abs() > window_ms {
                    continue;
                }
                let id = &e.canonical;
                let Some(c) = self.clusters.get(id) else { continue };
                let Some(loc) = c.location else { continue };
                if c.closed
                    || c.family != family
                    || now.millis_since(c.last_seen) > ttl_ms
                    || (!self.cfg.merge_same_source && c.sources.contains(&incident.source))
                    || (incident.occurred_at.0 - c.occurred_at.0).abs() > window_ms
                {
                    continue;
                }
                let d = loc.distance_m(at);
                if d <= self.cfg.merge_distance_m && best.is_none_or(|(bd, bid)| (d, id) < (bd, bid)) {
                    best = Some((d, id));
                }
            }
        }
        best.map(|(_, id)| id.clone())
    }
}

impl Stage for Dedup {
    type In = Incident;
    type Out = DedupOut;
    type Reject = DedupError;

    fn name(&self) -> &'static str {
        "dedup"
    }

    fn process(&mut self, mut incident: Incident, ctx: &StageCtx, out: &mut Vec<DedupOut>) -> Result<(), DedupError> {
        let now = ctx.now;
        // TTL sweeps at most once a minute of (injected) time; the cap is enforced when the
        // state has outgrown it by a tenth, so the sort it needs is amortized.
        let sweep_every_ms = self.ttl_ms().min(60_000);
        if now.millis_since(self.last_sweep) >= sweep_every_ms
            || self.reports.len() > self.cfg.max_entries + self.cfg.max_entries / 10
        {
            self.sweep(now, out);
        }
        let ttl_ms = self.ttl_ms();
        // An incident past its TTL that the sweep has not reached yet is forgotten now, so
        // the answer never depends on when the last sweep ran.
        if let Some(r) = self.reports.get(&incident.id) {
            let canonical = r.canonical.clone();
            if self.clusters.get(&canonical).is_none_or(|c| now.millis_since(c.last_seen) > ttl_ms) {
                self.forget(&canonical, out);
                self.expired += 1;
                metrics::counter!(TTL_EXPIRED).increment(1);
            }
        }

        let closed = incident.is_closed();
        let family = incident.category.family();
        let report_id = incident.id.clone();
        if bare(&incident) && !self.reports.contains_key(&report_id) {
            // A removal event for an incident not remembered: nothing is open to close.
            return Ok(());
        }
        let mut anchor_moved = None;
        let (canonical, kind) = if let Some(r) = self.reports.get_mut(&report_id) {
            let anchor = r.canonical == report_id;
            let newer = incident.version > r.version;
            // A state feed re-sends an incident with its timestamp unchanged while a
            // dispatcher corrects its place or type: that is an update, not a repeat.
            let changed = incident.version == r.version && r.differs(&incident);
            let closing = closed && !r.closed;
            let kind = if !(newer || changed || closing) {
                None
            } else if closed {
                // A merged report closing does not close the incident its first source
                // still has open.
                anchor.then_some(EventKind::Close)
            } else {
                Some(EventKind::Update)
            };
            if newer || changed || closing {
                r.absorb(&incident);
            }
            if bare(&incident) {
                // The close says only "closed": it carries what is remembered.
                incident.location = r.location;
                if let Ok(c) = Category::parse(&r.category) {
                    incident.category = c;
                }
                incident.version = incident.version.max(r.version);
            }
            r.version = r.version.max(incident.version);
            r.closed |= closed;
            r.last_seen = now;
            if anchor {
                anchor_moved = Some((r.location, r.family.clone()));
            }
            (r.canonical.clone(), kind)
        } else {
            let report = Report {
                version: incident.version,
                closed,
                last_seen: now,
                canonical: String::new(),
                source: incident.source.clone(),
                family: family.to_owned(),
                location: incident.location,
                occurred_at: incident.occurred_at,
                category: incident.category.as_str().to_owned(),
                status: incident.status,
            };
            let (canonical, kind) = match self.merge_target(&incident, family, now) {
                // A report that arrives already closed adds nothing to an open incident.
                Some(target) => (target, (!closed).then_some(EventKind::Update)),
                None => {
                    self.start_cluster(&report_id, &report);
                    (report_id.clone(), Some(if closed { EventKind::Close } else { EventKind::New }))
                }
            };
            let cluster = self.clusters.get_mut(&canonical).unwrap_or_else(|| unreachable!("target exists"));
            cluster.members.push(report_id.clone());
            if !cluster.sources.contains(&report.source) {
                cluster.sources.push(report.source.clone());
            }
            self.reports.insert(report_id.clone(), Report { canonical: canonical.clone(), ..report });
            (canonical, kind)
        };
        if let Some((location, family)) = anchor_moved {
            self.relocate(&canonical, location, &family);
        }
        let cluster = self.clusters.get_mut(&canonical).unwrap_or_else(|| unreachable!("report has its incident"));
        cluster.last_seen = now;
        if canonical == report_id {
            cluster.closed |= closed;
        }
        let merged_ids = cluster.members.clone();
        let entry = self.reports.get(&report_id).map(|r| r.entry(&report_id));
        out.push(DedupOut::State { report_id, entry });
        if let Some(kind) = kind {
            incident.id = canonical;
            out.push(DedupOut::Event(Box::new(IncidentEvent { kind, incident, merged_ids })));
        }
        Ok(())
    }
}
