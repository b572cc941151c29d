//! dedup: one event stream per real incident. Exact repeats (same source, id and version)
//! are dropped, newer versions become `update`s and closes become `close`. It must never
//! emit a second `new` for an incident it still remembers. State is bounded by a TTL and a
//! size cap; the runner rebuilds it from its factory when a batch is abandoned.

use std::collections::HashMap;

use hexcast_core::{EventKind, Incident, IncidentEvent, ReasonCode, Stage, StageCtx, Timestamp};
use serde::Deserialize;

/// `[dedup]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// How long an incident is remembered after its last report.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// Most incidents remembered; the least recently seen are forgotten first.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

const fn default_ttl_secs() -> u64 {
    24 * 3600
}

const fn default_max_entries() -> usize {
    1_000_000
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { ttl_secs: default_ttl_secs(), max_entries: default_max_entries() }
    }
}

/// Dedup never rejects: every valid incident is either an event or a repeat.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub enum DedupError {}

impl ReasonCode for DedupError {
    fn reason_code(&self) -> &'static str {
        match *self {}
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    version: i64,
    closed: bool,
    last_seen: Timestamp,
}

/// The dedup stage.
#[derive(Debug)]
pub struct Dedup {
    cfg: DedupConfig,
    seen: HashMap<String, Seen>,
    evicted: u64,
}

impl Dedup {
    /// A dedup stage with empty state.
    pub fn new(cfg: DedupConfig) -> Self {
        Self { cfg, seen: HashMap::new(), evicted: 0 }
    }

    /// Incidents currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Entries forgotten because of the size cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn expire(&mut self, now: Timestamp) {
        let ttl_ms = (self.cfg.ttl_secs as i64).saturating_mul(1000);
        self.seen.retain(|_, s| now.millis_since(s.last_seen) <= ttl_ms);
        if self.seen.len() > self.cfg.max_entries {
            let mut by_age: Vec<(Timestamp, String)> =
                self.seen.iter().map(|(k, s)| (s.last_seen, k.clone())).collect();
            by_age.sort_unstable();
            let excess = self.seen.len() - self.cfg.max_entries;
            for (_, k) in by_age.into_iter().take(excess) {
                self.seen.remove(&k);
                self.evicted += 1;
            }
        }
    }
}

impl Stage for Dedup {
    type In = Incident;
    type Out = IncidentEvent;
    type Reject = DedupError;

    fn name(&self) -> &'static str {
        "dedup"
    }

    fn process(&mut self, incident: Incident, ctx: &StageCtx, out: &mut Vec<IncidentEvent>) -> Result<(), DedupError> {
        // Amortized: a full sweep once the map has grown past the cap by a tenth.
        if self.seen.len() > self.cfg.max_entries + self.cfg.max_entries / 10 {
            self.expire(ctx.now);
        }
        let closed = incident.is_closed();
        let kind = match self.seen.get(&incident.id) {
            None => Some(if closed { EventKind::Close } else { EventKind::New }),
            Some(s) if incident.version > s.version || (closed && !s.closed) => {
                Some(if closed { EventKind::Close } else { EventKind::Update })
            }
            Some(_) => None,
        };
        let entry = self.seen.entry(incident.id.clone()).or_insert(Seen {
            version: incident.version,
            closed,
            last_seen: ctx.now,
        });
        entry.version = entry.version.max(incident.version);
        entry.closed |= closed;
        entry.last_seen = ctx.now;
        if let Some(kind) = kind {
            let merged_ids = vec![incident.id.clone()];
            out.push(IncidentEvent { kind, incident, merged_ids });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::{Category, Certainty, IncidentStatus, LatLng, Severity, Urgency};
    use proptest::prelude::*;

    fn incident(id: &str, version: i64, status: IncidentStatus) -> Incident {
        Incident {
            id: format!("pd:{id}"),
            source: "pd".into(),
            source_id: id.into(),
            version,
            category: Category::parse("crime.robbery").expect("known"),
            raw_type: String::new(),
            severity: Severity::Severe,
            urgency: Urgency::Unspecified,
            certainty: Certainty::Unspecified,
            status,
            occurred_at: Timestamp(0),
            updated_at: Timestamp(0),
            expires_at: None,
            location: Some(LatLng::new(40.0, -75.0).expect("valid")),
            areas: vec![],
            sensitive: Default::default(),
            references: None,
            community_threat: true,
            published_at: None,
        }
    }

    fn kinds(d: &mut Dedup, inputs: Vec<Incident>, now: i64) -> Vec<EventKind> {
        let mut out = Vec::new();
        for i in inputs {
            d.process(i, &StageCtx::at(Timestamp(now)), &mut out).expect("never rejects");
        }
        out.into_iter().map(|e| e.kind).collect()
    }

    #[test]
    fn dedup_same_version_twice_emits_once() {
        let mut d = Dedup::new(DedupConfig::default());
        let k =
            kinds(&mut d, vec![incident("1", 1, IncidentStatus::Active), incident("1", 1, IncidentStatus::Active)], 0);
        assert_eq!(k, vec![EventKind::New]);
    }

    #[test]
    fn dedup_newer_version_is_update_and_close_is_close() {
        let mut d = Dedup::new(DedupConfig::default());
        let k = kinds(
            &mut d,
            vec![
                incident("1", 1, IncidentStatus::Active),
                incident("1", 2, IncidentStatus::Active),
                incident("1", 1, IncidentStatus::Active),
                incident("1", 2, IncidentStatus::Closed),
                incident("1", 3, IncidentStatus::Closed),
            ],
            0,
        );
        assert_eq!(k, vec![EventKind::New, EventKind::Update, EventKind::Close, EventKind::Close]);
    }

    #[test]
    fn dedup_forgets_after_ttl_and_caps_its_size() {
        let mut d = Dedup::new(DedupConfig { ttl_secs: 10, max_entries: 2 });
        kinds(&mut d, (0..5).map(|i| incident(&i.to_string(), 1, IncidentStatus::Active)).collect(), 0);
        d.expire(Timestamp(5_000));
        assert_eq!(d.len(), 2);
        assert_eq!(d.evicted(), 3);
        d.expire(Timestamp(20_000));
        assert!(d.is_empty());
    }

    proptest! {
        #[test]
        fn dedup_emits_one_new_per_id_and_drops_exact_repeats(reports in proptest::collection::vec((0u8..5, 0i64..4), 0..60)) {
            let mut d = Dedup::new(DedupConfig::default());
            let mut out = Vec::new();
            for (id, v) in &reports {
                d.process(incident(&id.to_string(), *v, IncidentStatus::Active), &StageCtx::at(Timestamp(0)), &mut out).expect("never rejects");
            }
            let ids: std::collections::HashSet<u8> = reports.iter().map(|(i, _)| *i).collect();
            let news = out.iter().filter(|e| e.kind == EventKind::New).count();
            prop_assert_eq!(news, ids.len());
            // Every emitted (id, version) is strictly newer than the last emitted for that id.
            let mut last: HashMap<String, i64> = HashMap::new();
            for e in &out {
                if let Some(prev) = last.insert(e.incident.id.clone(), e.incident.version) {
                    prop_assert!(e.incident.version > prev);
                }
            }
        }
    }
}
