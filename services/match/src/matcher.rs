//! The matcher stage, on the shared runner: one indexed alert
//! in, NotificationBatch records out (one alert, many subscriber ids, per tenant), written
//! to the notifications topic in the same transaction that consumes the alert. A backend
//! therefore only ever sees notifications that exist durably.

use std::collections::BTreeMap;
use std::sync::Arc;

use hexcast_core::cells::{CoverError, partition_for_key};
use hexcast_core::{Alert, IndexedAlert, NotificationBatch, OutRecord, ReasonCode, Stage, StageCtx, Timestamp, Topic};
use hexcast_proto::v1 as pb;

use crate::assets::{AssetIndex, EnrichRule, enrich};
use crate::delivery::{DEFAULT_MAX_HELD, Limiter, Verdict};
use crate::index::SubscriberIndex;

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
}

impl Matcher {
    /// A matcher over a shared index.
    pub fn new(index: Arc<SubscriberIndex>, notification_partitions: u32, max_ids_per_record: usize) -> Self {
        Self {
            index,
            notification_partitions,
            max_ids_per_record: max_ids_per_record.max(1),
            assets: None,
            limiter: Limiter::new(DEFAULT_MAX_HELD),
        }
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
        let matches = self.index.matches(&input.alert, input.shard, &input.shards)?;
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
            if let Some(d) = &m.delivery
                && input.request.is_none()
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
