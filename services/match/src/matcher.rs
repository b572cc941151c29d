//! The matcher stage, on the shared runner: one indexed alert
//! in, NotificationBatch records out (one alert, many subscriber ids, per tenant), written
//! to the notifications topic in the same transaction that consumes the alert. A backend
//! therefore only ever sees notifications that exist durably.
//!
//! Recipients of record ([`crate::recipients`]): each shard remembers, per incident, whom it
//! notified. A new event or an update reaches that set (those who moved away included) plus
//! whoever its area reaches now; a close reaches exactly that set. Spatial routes updates
//! and closes to every shard, so the shard holding a set always sees them. A recorded
//! subscriber whom the update reaches under another shard's ownership (they moved into
//! another territory) is handed over: that shard notifies and records them, this one drops
//! them, so each pair is still emitted once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hexcast_core::cells::{CoverError, partition_for_key};
use hexcast_core::{
    Alert, Delivery, EventKind, IndexedAlert, NotificationBatch, OutRecord, ReasonCode, Stage, StageCtx, Timestamp,
    Topic, subscription_key, subscription_key_parts,
};
use hexcast_proto::v1 as pb;

use crate::assets::{AssetIndex, EnrichRule, enrich};
use crate::delivery::{DEFAULT_MAX_HELD, Limiter, Verdict};
use crate::index::{Match, SubscriberIndex};
use crate::recipients::Recipients;

/// How long the recipients of an alert without an expiry are kept, by default.
pub const DEFAULT_RECIPIENTS_TTL_SECS: u64 = 86_400;

/// Why an alert could not be matched.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MatchError(#[from] CoverError);

impl ReasonCode for MatchError {
    fn reason_code(&self) -> &'static str {
        match self.0 {
            CoverError::InvalidGeometry(_) => "invalid_geometry",
            CoverError::TooLarge { .. } => "area_too_large",
        }
    }
}

/// The matcher stage.
#[derive(Debug, Clone)]
pub struct Matcher {
    index: Arc<SubscriberIndex>,
    notification_partitions: u32,
    max_ids_per_record: usize,
    assets: Option<(Arc<AssetIndex>, Arc<[EnrichRule]>)>,
    /// Quiet hours and caps. In memory only: held notifications and recent counts are lost
    /// when the stage is rebuilt (after an abort or a rebalance).
    limiter: Limiter,
    recipients: Recipients,
    recipients_ttl_ms: i64,
    /// Shards this instance has consumed since it was built, with the batch time their
    /// entries were last expired at: it owns them (the runner rebuilds the stage on every
    /// rebalance), so only their entries are expired here, once per batch.
    owned: BTreeMap<u32, Timestamp>,
}

impl Matcher {
    /// A matcher over a shared index, with no recipients of record yet.
    pub fn new(index: Arc<SubscriberIndex>, notification_partitions: u32, max_ids_per_record: usize) -> Self {
        Self {
            index,
            notification_partitions,
            max_ids_per_record: max_ids_per_record.max(1),
            assets: None,
            limiter: Limiter::new(DEFAULT_MAX_HELD),
            recipients: Recipients::new(max_ids_per_record),
            recipients_ttl_ms: (DEFAULT_RECIPIENTS_TTL_SECS * 1000) as i64,
            owned: BTreeMap::new(),
        }
    }

    /// The same matcher with restored recipients of record, keeping those of an alert
    /// without an expiry for `ttl_secs`.
    pub fn with_recipients(mut self, recipients: Recipients, ttl_secs: u64) -> Self {
        self.recipients = recipients;
        self.recipients_ttl_ms = (ttl_secs.saturating_mul(1000)).min(i64::MAX as u64) as i64;
        self
    }

    /// The recipients of record this matcher holds.
    pub fn recipients(&self) -> &Recipients {
        &self.recipients
    }

    /// The same matcher, attaching the nearby public assets of `assets` to alerts that
    /// `rules` name.
    pub fn with_assets(mut self, assets: Arc<AssetIndex>, rules: Arc<[EnrichRule]>) -> Self {
        self.assets = Some((assets, rules));
        self
    }

    /// The quiet-hours and cap state (for tests and metrics).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Releases the notifications held by quiet hours whose window has ended by `now`
    /// (dropping those whose alert expired): per alert and tenant, one batch per language.
    fn release_held(&mut self, now: Timestamp, out: &mut Vec<OutRecord>) {
        type Group = (Alert, Timestamp, BTreeMap<String, Vec<String>>);
        let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
        for h in self.limiter.due(now) {
            let key = (h.alert.alert_id.clone(), h.tenant.clone());
            let entry = groups.entry(key).or_insert_with(|| (h.alert.clone(), h.matched_at, BTreeMap::new()));
            entry.1 = entry.1.min(h.matched_at);
            entry.2.entry(h.language).or_default().push(h.subscriber_id);
        }
        for ((_, tenant), (alert, matched_at, by_language)) in groups {
            let extras = Extras { request: None, nearby_assets: &[], deferred_from: Some(matched_at) };
            self.emit(&alert, &tenant, by_language, &extras, out);
        }
    }

    /// Writes the batches of one alert for one tenant: one or more per language (each in
    /// that language), numbered `part` of `parts` across all of them.
    fn emit(
        &self,
        alert: &Alert,
        tenant: &str,
        by_language: BTreeMap<String, Vec<String>>,
        extras: &Extras<'_>,
        out: &mut Vec<OutRecord>,
    ) {
        let parts: usize = by_language.values().map(|ids| ids.len().div_ceil(self.max_ids_per_record)).sum();
        let partition = tenant_partition(tenant, self.notification_partitions);
        let mut part = 0u32;
        for (language, mut ids) in by_language {
            ids.sort_unstable();
            let localized = alert.in_language(&language);
            for chunk in ids.chunks(self.max_ids_per_record) {
                let batch = NotificationBatch {
                    alert: localized.clone(),
                    tenant: tenant.to_owned(),
                    subscriber_ids: chunk.to_vec(),
                    part,
                    parts: parts as u32,
                    request: extras.request.cloned(),
                    nearby_assets: extras.nearby_assets.to_vec(),
                    language: language.clone(),
                    deferred_from: extras.deferred_from,
                };
                part += 1;
                out.push(
                    OutRecord::proto(
                        Topic::Notifications,
                        tenant.as_bytes(),
                        &pb::NotificationBatch::from(&batch),
                        "hexcast.v1.NotificationBatch",
                    )
                    .on_partition(partition),
                );
            }
        }
    }
}

/// What a batch carries besides the alert and its subscribers.
struct Extras<'a> {
    request: Option<&'a pb::GeoRequest>,
    nearby_assets: &'a [pb::NearbyAsset],
    deferred_from: Option<Timestamp>,
}

impl Matcher {
    /// The subscribers this shard notifies of an alert, updating and recording
    /// its recipients of record (see the module docs).
    fn of_record(
        &mut self,
        input: &IndexedAlert,
        now: Timestamp,
        out: &mut Vec<OutRecord>,
    ) -> Result<Vec<Match>, MatchError> {
        let (alert, shard) = (&input.alert, input.shard);
        if self.owned.insert(shard, now) != Some(now) {
            self.recipients.expire(shard, now, out);
        }
        let recorded = self.recipients.get(&alert.incident_id, shard).map(|e| e.keys.clone()).unwrap_or_default();
        let mut keep: BTreeSet<String> = BTreeSet::new();
        let mut deliveries: BTreeMap<String, Option<Arc<Delivery>>> = BTreeMap::new();
        if alert.kind != EventKind::Close {
            let fresh = if !recorded.is_empty() {
                self.index.matches_all(alert, &input.shards)?
            } else if input.shards.contains(&shard) {
                self.index.matches(alert, shard, &input.shards)?.into_iter().map(|m| (m, shard)).collect()
            } else {
                Vec::new()
            };
            let mut handed_over = BTreeSet::new();
            for (m, owner) in fresh {
                let key = subscription_key(&m.tenant, &m.subscriber_id);
                if owner == shard {
                    deliveries.insert(key.clone(), m.delivery);
                    keep.insert(key);
                } else if recorded.contains(&key) {
                    handed_over.insert(key);
                }
            }
            keep.extend(recorded.iter().filter(|k| !handed_over.contains(*k) && self.index.contains(k)).cloned());
        } else {
            keep.extend(recorded.iter().filter(|k| self.index.contains(k)).cloned());
        }
        // Each subscriber with their delivery preferences (languages, quiet hours, cap):
        // those the area reaches now carry theirs, a recipient of record is looked up.
        let mut matches = Vec::with_capacity(keep.len());
        for key in &keep {
            let Some((tenant, id)) = subscription_key_parts(key) else { continue };
            // Policy's per-tenant overrides: that tenant's rules rejected this alert.
            if alert.excluded_tenants.iter().any(|t| t == tenant) {
                continue;
            }
            let delivery = deliveries.remove(key).unwrap_or_else(|| self.index.delivery(key));
            matches.push(Match { tenant: Arc::from(tenant), subscriber_id: Arc::from(id), delivery });
        }
        if alert.kind == EventKind::Close {
            self.recipients.remove(&alert.incident_id, shard, out);
        } else {
            let expires_at = alert.expires_at.unwrap_or(Timestamp(now.0.saturating_add(self.recipients_ttl_ms)));
            self.recipients.set(&alert.incident_id, shard, keep, expires_at, out);
        }
        Ok(matches)
    }
}

/// The notifications partition that holds a tenant's stream.
pub fn tenant_partition(tenant: &str, partitions: u32) -> i32 {
    partition_for_key(tenant, partitions)
}

impl Stage for Matcher {
    type In = IndexedAlert;
    type Out = OutRecord;
    type Reject = MatchError;

    fn name(&self) -> &'static str {
        "push"
    }

    fn process(&mut self, input: IndexedAlert, ctx: &StageCtx, out: &mut Vec<OutRecord>) -> Result<(), MatchError> {
        // What quiet hours held and whose window has ended goes out first.
        self.release_held(ctx.now, out);
        let started = std::time::Instant::now();
        let matches = if input.request.is_some() {
            // A request is answered by Respond, not followed by updates: nothing recorded.
            self.index.matches(&input.alert, input.shard, &input.shards)?
        } else {
            self.of_record(&input, ctx.now, out)?
        };
        metrics::histogram!("hexcast_push_match_seconds").record(started.elapsed().as_secs_f64());
        if matches.is_empty() {
            return Ok(());
        }
        // What leaves hexcast locates the incident no more finely than its coarse cell (a
        // request's area is the agency's own, published in the transparency log).
        let alert = if input.request.is_none() { input.alert.public_view() } else { input.alert.clone() };
        // One batch per tenant and language: each subscriber gets the alert's text in the
        // first of their languages it has, else its default.
        let mut groups: BTreeMap<Arc<str>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for m in matches {
            // Policy's per-tenant overrides: that tenant's rules rejected this alert.
            if alert.excluded_tenants.iter().any(|t| **t == *m.tenant) {
                continue;
            }
            let language = match &m.delivery {
                Some(d) => alert.language_for(&d.languages).to_owned(),
                None => alert.language.clone(),
            };
            // A close reaches everyone notified at once, quiet hours or caps or not.
            if let Some(d) = &m.delivery
                && input.request.is_none()
                && alert.kind != EventKind::Close
                && self.limiter.decide(&alert, &m.tenant, &m.subscriber_id, d, &language, ctx.now) != Verdict::Send
            {
                continue;
            }
            groups.entry(m.tenant).or_default().entry(language).or_default().push(m.subscriber_id.to_string());
        }
        if groups.is_empty() {
            return Ok(());
        }
        // A request carries itself and no assets; an alert its nearby public assets.
        let nearby_assets = match (&input.request, &self.assets) {
            (None, Some((assets, rules))) => enrich(assets, rules, &alert),
            _ => Vec::new(),
        };
        let extras = Extras { request: input.request.as_ref(), nearby_assets: &nearby_assets, deferred_from: None };
        for (tenant, by_language) in groups {
            self.emit(&alert, &tenant, by_language, &extras, out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::cells::{GeoConfig, ShardMap};
    use hexcast_core::{
        AlertText, Area, Category, Delivery, LatLng, Place, QuietHours, Severity, Subscription, SubscriptionFilter,
    };
    use prost::Message as _;

    const HOUR: i64 = 3_600_000;
    /// 2026-01-15 00:00 UTC.
    const DAY: i64 = 1_768_435_200_000;

    fn setup() -> (Matcher, LatLng) {
        let geo = GeoConfig::default();
        let index = Arc::new(SubscriberIndex::new(ShardMap { territory_res: geo.territory_resolution, shards: 1 }));
        let c = LatLng::new(40.71, -74.0).expect("valid");
        let quiet = QuietHours { start_minute: 0, end_minute: 12 * 60, time_zone: "UTC".into() };
        for (id, delivery) in [
            ("s-default", Delivery::default()),
            ("s-es", Delivery { languages: vec!["de".into(), "es-MX".into()], ..Delivery::default() }),
            ("s-quiet", Delivery { languages: vec!["es".into()], quiet_hours: Some(quiet), max_alerts_per_hour: 0 }),
        ] {
            index.upsert(Subscription {
                tenant: "t".into(),
                subscriber_id: id.into(),
                places: vec![Place::Disc { cell: c.cell(geo.precision), radius_m: 100.0 }],
                filter: SubscriptionFilter::default(),
                shards: vec![],
                updated_at: Timestamp(0),
                delivery,
            });
        }
        (Matcher::new(index, 1, 100), c)
    }

    fn indexed(id: &str, at: LatLng, severity: Severity) -> IndexedAlert {
        let alert = Alert {
            severity,
            headline: "Burglary near MAIN ST".into(),
            texts: vec![AlertText {
                language: "es".into(),
                headline: "Reporte de robo con allanamiento cerca de MAIN ST".into(),
                body: "cuerpo".into(),
            }],
            coarse_cell: at.cell(h3o::Resolution::Eight),
            ..Alert::synthetic(
                id,
                Category::parse("crime.burglary").expect("known"),
                Area::circle(at, 400.0).expect("valid"),
            )
        };
        IndexedAlert { alert, shard: 0, shards: vec![0], request: None }
    }

    fn run(m: &mut Matcher, a: IndexedAlert, now: i64) -> Vec<pb::NotificationBatch> {
        let mut out = Vec::new();
        m.process(a, &StageCtx::at(Timestamp(now)), &mut out).expect("match");
        out.iter()
            .filter(|r| r.topic == Topic::Notifications)
            .map(|r| pb::NotificationBatch::decode(r.payload.as_deref().expect("payload")).expect("batch"))
            .collect()
    }

    fn ids(batches: &[pb::NotificationBatch], language: &str) -> Vec<String> {
        batches.iter().filter(|b| b.language == language).flat_map(|b| b.subscriber_ids.clone()).collect()
    }

    #[test]
    fn each_subscriber_gets_their_language_and_quiet_hours_hold_minor_alerts_until_the_window_ends() {
        let (mut m, c) = setup();
        let b = run(&mut m, indexed("pd:1@1", c, Severity::Minor), DAY + 6 * HOUR);
        assert_eq!(ids(&b, "en"), ["s-default"]);
        assert_eq!(ids(&b, "es"), ["s-es"], "es-MX takes es; quiet subscriber held");
        let es = b.iter().find(|b| b.language == "es").and_then(|b| b.alert.clone()).expect("spanish batch");
        assert!(es.headline.starts_with("Reporte de robo") && es.language == "es" && es.texts.is_empty());
        assert_eq!(b.iter().map(|b| (b.part, b.parts)).collect::<Vec<_>>(), [(0, 2), (1, 2)]);
        assert_eq!(m.limiter().suppressed(crate::delivery::Suppressed::QuietHours), 1);
        // Severe: everyone at once, quiet or not.
        let b = run(&mut m, indexed("pd:2@1", c, Severity::Severe), DAY + 6 * HOUR);
        assert_eq!(ids(&b, "es"), ["s-es", "s-quiet"]);
        // The first alert matched after the window's end (12:00 UTC) releases the held one.
        let far = LatLng::new(-33.86, 151.2).expect("valid");
        assert!(run(&mut m, indexed("pd:3@1", far, Severity::Minor), DAY + 12 * HOUR - 1).is_empty());
        let b = run(&mut m, indexed("pd:3@1", far, Severity::Minor), DAY + 12 * HOUR);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].subscriber_ids.as_slice(), b[0].language.as_str()), (&["s-quiet".to_owned()][..], "es"));
        assert_eq!(b[0].deferred_from_ms, DAY + 6 * HOUR);
        assert_eq!(b[0].alert.as_ref().map(|a| a.alert_id.as_str()), Some("pd:1@1"));
    }
}

/// Recipients of record (issue 19 items 1-3).
#[cfg(test)]
mod recipients_tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::Strategy as _;

    use hexcast_core::cells::ShardMap;
    use hexcast_core::{Alert, Area, Category, LatLng, Place, Subscription, SubscriptionFilter};
    use prost::Message as _;

    use super::*;

    const SHARDS: u32 = 16;
    const NOW: Timestamp = Timestamp(1_700_000_000_000);

    fn index() -> Arc<SubscriberIndex> {
        Arc::new(SubscriberIndex::new(ShardMap { territory_res: h3o::Resolution::Three, shards: SHARDS }))
    }

    fn place(index: &SubscriberIndex, id: &str, at: LatLng) {
        place_disc(index, id, at, 0.0);
    }

    fn place_disc(index: &SubscriberIndex, id: &str, at: LatLng, radius_m: f32) {
        index.upsert(Subscription {
            tenant: "t".into(),
            subscriber_id: id.into(),
            places: vec![Place::Disc { cell: at.cell(h3o::Resolution::Eleven), radius_m }],
            filter: SubscriptionFilter::default(),
            shards: vec![],
            updated_at: Timestamp(0),
            delivery: Default::default(),
        });
    }

    fn event(kind: EventKind, version: u32, center: LatLng, radius_m: f64) -> Alert {
        let mut a = Alert::synthetic(
            &format!("pd:1@{version}"),
            Category::parse("crime.robbery").expect("known"),
            Area::circle(center, radius_m).expect("valid"),
        );
        a.kind = kind;
        a.expires_at = Some(Timestamp(NOW.0 + 3_600_000));
        a
    }

    /// Runs one alert through spatial's routing rule (new: covered shards; update, close:
    /// every shard) on `m`, returning the notified ids (with repeats) and every output.
    fn run(m: &mut Matcher, alert: &Alert, now: Timestamp) -> (Vec<String>, Vec<OutRecord>) {
        let covered: Vec<u32> = if alert.kind == EventKind::Close {
            Vec::new()
        } else {
            let cells = hexcast_core::cells::area_cells(&alert.target, h3o::Resolution::Three, 1_000_000)
                .expect("cover")
                .into_iter()
                .map(|(c, _)| c)
                .collect::<Vec<_>>();
            m.index.shard_map().shards_of(&cells)
        };
        let routed: Vec<u32> = if alert.kind == EventKind::New { covered.clone() } else { (0..SHARDS).collect() };
        let mut out = Vec::new();
        for shard in routed {
            let input = IndexedAlert { alert: alert.clone(), shard, shards: covered.clone(), request: None };
            m.process(input, &StageCtx::at(now), &mut out).expect("matched");
        }
        let mut ids = Vec::new();
        for r in out.iter().filter(|r| r.topic == Topic::Notifications) {
            let b = pb::NotificationBatch::decode(r.payload.as_deref().expect("payload")).expect("batch");
            assert_eq!(b.alert.as_ref().map(|a| a.kind), Some(alert.kind as i32));
            assert_eq!(b.expires_at_ms, alert.expires_at.map_or(0, |t| t.0));
            assert_eq!(b.collapse_key, hexcast_core::keys::collapse_key("pd:1"));
            assert_eq!(b.idempotency_keys.len(), b.subscriber_ids.len());
            ids.extend(b.subscriber_ids);
        }
        ids.sort();
        (ids, out)
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn updates_and_the_close_reach_recipients_of_record_who_moved_and_newcomers_only_inside() {
        let index = index();
        let center = LatLng::new(40.12, -75.34).expect("valid");
        place(&index, "mover", center);
        place(&index, "stayer", center.destination(90.0, 200.0));
        let mut m = Matcher::new(Arc::clone(&index), 4, 100);
        let (got, _) = run(&mut m, &event(EventKind::New, 1, center, 800.0), NOW);
        assert_eq!(got, ids(&["mover", "stayer"]));
        // The mover leaves (20 km away); two newcomers arrive, one inside, one outside.
        place(&index, "mover", center.destination(0.0, 20_000.0));
        place(&index, "inside", center.destination(180.0, 300.0));
        place(&index, "outside", center.destination(180.0, 3_000.0));
        let (got, _) = run(&mut m, &event(EventKind::Update, 2, center, 800.0), NOW);
        assert_eq!(got, ids(&["inside", "mover", "stayer"]));
        // The area shrinks: nobody recorded is dropped, nobody new is inside.
        let (got, _) = run(&mut m, &event(EventKind::Update, 3, center, 100.0), NOW);
        assert_eq!(got, ids(&["inside", "mover", "stayer"]));
        let (got, out) = run(&mut m, &event(EventKind::Close, 4, center, 800.0), NOW);
        assert_eq!(got, ids(&["inside", "mover", "stayer"]));
        assert!(out.iter().any(|r| r.topic == Topic::Recipients && r.payload.is_none()), "close tombstones");
        assert!(m.recipients().is_empty());
        // A close after the close reaches nobody.
        let (got, _) = run(&mut m, &event(EventKind::Close, 5, center, 800.0), NOW);
        assert!(got.is_empty());
    }

    #[test]
    fn a_matcher_restored_from_its_changelog_continues_as_the_original() {
        let index = index();
        let center = LatLng::new(40.12, -75.34).expect("valid");
        place(&index, "a", center);
        let mut m = Matcher::new(Arc::clone(&index), 4, 1);
        let (_, out) = run(&mut m, &event(EventKind::New, 1, center, 800.0), NOW);
        place(&index, "a", center.destination(0.0, 20_000.0));
        place(&index, "b", center.destination(90.0, 100.0));
        let (_, out2) = run(&mut m, &event(EventKind::Update, 2, center, 800.0), NOW);
        let log: Vec<(Vec<u8>, Option<Vec<u8>>)> = out
            .iter()
            .chain(&out2)
            .filter(|r| r.topic == Topic::Recipients)
            .map(|r| (r.key.clone(), r.payload.clone()))
            .collect();
        let (restored, stats) = Recipients::restore(1, log);
        assert_eq!(stats.malformed, 0);
        let mut again = Matcher::new(Arc::clone(&index), 4, 1).with_recipients(restored, 60);
        let close = event(EventKind::Close, 3, center, 800.0);
        assert_eq!(run(&mut again, &close, NOW).0, run(&mut m, &close, NOW).0);
        assert_eq!(run(&mut Matcher::new(index, 4, 1), &close, NOW).0, Vec::<String>::new());
    }

    #[test]
    fn expired_recipients_are_tombstoned_and_a_late_update_matches_afresh() {
        let index = index();
        let center = LatLng::new(40.12, -75.34).expect("valid");
        place(&index, "a", center);
        let mut m = Matcher::new(Arc::clone(&index), 4, 100);
        run(&mut m, &event(EventKind::New, 1, center, 800.0), NOW);
        assert_eq!(m.recipients().len(), 1);
        place(&index, "a", center.destination(0.0, 20_000.0));
        let later = Timestamp(NOW.0 + 3_600_001);
        let (got, out) = run(&mut m, &event(EventKind::Update, 2, center, 800.0), later);
        assert!(got.is_empty(), "{got:?}");
        assert!(out.iter().any(|r| r.topic == Topic::Recipients && r.payload.is_none()));
        assert!(m.recipients().is_empty());
    }

    /// One step of a random life: an event of the incident, or a subscriber moving.
    #[derive(Debug, Clone)]
    enum Step {
        Update { dx_km: f64, dy_km: f64, radius_km: f64 },
        Move { who: usize, dx_km: f64, dy_km: f64 },
    }

    fn offset(c: LatLng, dx_km: f64, dy_km: f64) -> LatLng {
        c.destination(90.0, dx_km * 1000.0).destination(0.0, dy_km * 1000.0)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Against an oracle of sets: every version reaches exactly everyone notified
        /// before plus whoever its area reaches now (the index's own matches, over every
        /// shard), the close exactly everyone notified, each once across all shards,
        /// however subscribers move between territories.
        #[test]
        fn every_event_reaches_recipients_of_record_plus_its_area_once(
            homes in proptest::collection::vec((-80.0f64..80.0, -80.0f64..80.0), 4..20),
            first_radius_km in 5.0f64..40.0,
            steps in proptest::collection::vec(
                proptest::prop_oneof![
                    (-40.0f64..40.0, -40.0f64..40.0, 5.0f64..40.0)
                        .prop_map(|(dx_km, dy_km, radius_km)| Step::Update { dx_km, dy_km, radius_km }),
                    (0usize..20, -80.0f64..80.0, -80.0f64..80.0)
                        .prop_map(|(who, dx_km, dy_km)| Step::Move { who, dx_km, dy_km }),
                ],
                1..8,
            ),
        ) {
            let index = index();
            let base = LatLng::new(40.0, -100.0).expect("valid");
            for (i, (dx, dy)) in homes.iter().enumerate() {
                place_disc(&index, &format!("s{i}"), offset(base, *dx, *dy), 3_000.0);
            }
            let mut m = Matcher::new(Arc::clone(&index), 4, 7);
            let fresh = |alert: &Alert| -> BTreeSet<String> {
                let cells = hexcast_core::cells::area_cells(&alert.target, h3o::Resolution::Three, 1_000_000)
                    .expect("cover")
                    .into_iter()
                    .map(|(c, _)| c)
                    .collect::<Vec<_>>();
                let shards = index.shard_map().shards_of(&cells);
                shards
                    .iter()
                    .flat_map(|&k| index.matches(alert, k, &shards).expect("matches"))
                    .map(|m| m.subscriber_id.to_string())
                    .collect()
            };
            let first = event(EventKind::New, 1, base, first_radius_km * 1000.0);
            let (got, _) = run(&mut m, &first, NOW);
            let mut notified: BTreeSet<String> = got.iter().cloned().collect();
            proptest::prop_assert_eq!(got.len(), notified.len(), "a duplicate");
            proptest::prop_assert_eq!(&notified, &fresh(&first));
            let mut version = 1;
            for step in steps {
                match step {
                    Step::Move { who, dx_km, dy_km } => {
                        let who = who % homes.len();
                        place_disc(&index, &format!("s{who}"), offset(base, dx_km, dy_km), 3_000.0);
                    }
                    Step::Update { dx_km, dy_km, radius_km } => {
                        version += 1;
                        let update = event(EventKind::Update, version, offset(base, dx_km, dy_km), radius_km * 1000.0);
                        let (got, _) = run(&mut m, &update, NOW);
                        let set: BTreeSet<String> = got.iter().cloned().collect();
                        proptest::prop_assert_eq!(got.len(), set.len(), "a duplicate");
                        let want: BTreeSet<String> = notified.union(&fresh(&update)).cloned().collect();
                        proptest::prop_assert_eq!(&set, &want);
                        notified = set;
                    }
                }
            }
            let (got, _) = run(&mut m, &event(EventKind::Close, version + 1, base, 1_000.0), NOW);
            proptest::prop_assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), notified.clone());
            proptest::prop_assert_eq!(got.len(), notified.len(), "a duplicate");
            proptest::prop_assert!(m.recipients().is_empty());
        }
    }

    #[test]
    fn a_recipient_who_moves_into_another_shard_inside_the_area_is_notified_once() {
        let index = index();
        let center = LatLng::new(40.0, -100.0).expect("valid");
        // Find two points 100 km inside a 150 km alert whose home shards differ.
        let map = index.shard_map();
        let home = |p: LatLng| map.shard_of(p.cell(h3o::Resolution::Three));
        let from = center;
        let to = (0..36)
            .map(|i| center.destination(10.0 * f64::from(i), 100_000.0))
            .find(|p| home(*p) != home(from))
            .expect("another shard within 100 km");
        // Home discs of 3 km are bucketed coarsely: the wide alert is covered cheaply.
        place_disc(&index, "a", from, 3_000.0);
        let mut m = Matcher::new(Arc::clone(&index), 4, 100);
        assert_eq!(run(&mut m, &event(EventKind::New, 1, center, 150_000.0), NOW).0, ids(&["a"]));
        place_disc(&index, "a", to, 3_000.0);
        assert_eq!(run(&mut m, &event(EventKind::Update, 2, center, 150_000.0), NOW).0, ids(&["a"]));
        let holders: BTreeMap<u32, usize> =
            (0..SHARDS).filter_map(|s| m.recipients().get("pd:1", s).map(|e| (s, e.keys.len()))).collect();
        assert_eq!(holders, BTreeMap::from([(home(to), 1)]), "handed over to the new home shard");
        assert_eq!(run(&mut m, &event(EventKind::Close, 3, center, 150_000.0), NOW).0, ids(&["a"]));
    }
}
