//! Privacy: the real Montgomery County 911 export through ingest, dedup, policy (the shipped
//! policy file), spatial and the matcher, in process with the stages' own code. Every
//! notification batch a push backend can receive is decoded as it would be off the wire, and
//! no coordinate in it may locate an incident more finely than the policy's coarse cell:
//! each is a coarse cell's centroid, or at least a coarse cell's edge away from every report
//! the incident was made from. The same check on the internal alerts (the precise target on
//! `alerts.indexed`) fails for nearly all of them, so the check can fail.

use std::collections::HashMap;
use std::sync::Arc;

use hexcast_core::cells::{GeoConfig, ShardMap, centroid};
use hexcast_core::{IndexedAlert, LatLng, Stage as _, StageCtx, Timestamp};
use hexcast_dedup::{Dedup, DedupConfig, DedupOut};
use hexcast_ingest::{Ingest, RawIncident};
use hexcast_match::{Matcher, SubscriberIndex};
use hexcast_policy::{Policy, PolicyConfig, PolicyOut};
use hexcast_proto::v1 as pb;
use hexcast_spatial::Spatial;
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};

const EXPORT: &str = "cad/montco_pa_911_2015-12_2016-01.csv";

/// Every coordinate a notification batch carries.
fn coordinates(b: &pb::NotificationBatch) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut push = |p: &pb::LatLng| out.push((p.lat, p.lng));
    let Some(a) = &b.alert else { return Vec::new() };
    if let Some(c) = &a.coarse_location {
        push(c);
    }
    if let Some(shape) = a.target.as_ref().and_then(|t| t.shape.as_ref()) {
        use pb::area::Shape;
        let ring = |r: &Option<pb::LinearRing>| r.iter().flat_map(|r| r.points.clone()).collect::<Vec<_>>();
        match shape {
            Shape::Point(p) => push(p),
            Shape::Circle(c) => c.center.iter().for_each(&mut push),
            Shape::Polygon(p) => {
                ring(&p.exterior).iter().for_each(&mut push);
                p.holes.iter().flat_map(|h| h.points.iter()).for_each(&mut push);
            }
            Shape::Multipolygon(m) => {
                for p in &m.polygons {
                    ring(&p.exterior).iter().for_each(&mut push);
                    p.holes.iter().flat_map(|h| h.points.iter()).for_each(&mut push);
                }
            }
            Shape::Cells(_) | Shape::CellDisc(_) => {}
        }
    }
    for a in &b.nearby_assets {
        a.location.iter().for_each(&mut push);
    }
    out
}

/// Whether a coordinate is no finer than the coarse cell: a coarse cell's centroid, or at
/// least a coarse edge from every report.
fn coarse_enough(q: (f64, f64), reports: &[LatLng], res: h3o::Resolution) -> bool {
    let Ok(q) = LatLng::new(q.0, q.1) else { return false };
    let c = centroid(q.cell(res));
    let is_centroid = (c.lat() - q.lat()).abs() < 1e-9 && (c.lng() - q.lng()).abs() < 1e-9;
    is_centroid || reports.iter().all(|p| p.distance_m(q) >= res.edge_length_m())
}

#[test]
fn no_notification_locates_a_montco_incident_more_finely_than_its_coarse_cell() {
    let export = hexcast_testdata::path(EXPORT);
    let payload = std::fs::read(&export)
        .unwrap_or_else(|e| panic!("public data missing: {} ({e}); set HEXCAST_DATA", export.display()));
    let now = Timestamp(1_454_284_800_000); // 2016-02-01T00:00:00Z, after the export
    let raw = RawIncident { format: "csv-montco".into(), source: None, payload };
    let incidents =
        Ingest::default().with_max_payload_bytes(usize::MAX).normalize(&raw, now).expect("montco export").incidents;
    assert!(incidents.len() > 9_000, "normalized {}", incidents.len());
    let located: HashMap<String, LatLng> = incidents.iter().filter_map(|i| Some((i.id.clone(), i.location?))).collect();

    // Dedup and policy, each incident judged at its own reported time (a replay).
    let policy_cfg =
        PolicyConfig::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/seed-policy.toml"))
            .expect("shipped policy");
    let coarse_res = policy_cfg.coarse_resolution;
    let mut dedup = Dedup::new(DedupConfig::default());
    let mut policy = Policy::new(policy_cfg);
    // Per alert: the incident's own point, and every report merged into it.
    let mut reports_of: HashMap<String, (Option<LatLng>, Vec<LatLng>)> = HashMap::new();
    let mut alerts = Vec::new();
    let (mut outs, mut pouts) = (Vec::new(), Vec::new());
    for i in incidents {
        let at = StageCtx::at(if i.updated_at.0 != 0 { i.updated_at } else { i.occurred_at });
        outs.clear();
        dedup.process(i, &at, &mut outs).unwrap_or_else(|e| match e {});
        for o in outs.drain(..) {
            let DedupOut::Event(e) = o else { continue };
            let own = e.incident.location;
            let mut reports: Vec<LatLng> = e.merged_ids.iter().filter_map(|id| located.get(id).copied()).collect();
            reports.extend(own);
            pouts.clear();
            policy.process(*e, &at, &mut pouts).unwrap_or_else(|e| match e {});
            for p in pouts.drain(..) {
                if let PolicyOut::Alert(a) = p {
                    reports_of.insert(a.alert_id.clone(), (own, reports.clone()));
                    alerts.push(a);
                }
            }
        }
    }
    assert!(alerts.len() > 100, "too few alerts: {}", alerts.len());

    // Subscribers near every report (some CPR-trained, so private calls match too).
    let geo = GeoConfig::default();
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards: 4 };
    let index = Arc::new(SubscriberIndex::new(shard_map));
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    for (n, p) in located.values().enumerate().step_by(3) {
        let at = p.destination(rng.random_range(0.0..360.0), rng.random_range(0.0..300.0));
        let api = pb::Subscription {
            subscriber_id: format!("s{n}"),
            areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(at.into())) }],
            filter: Some(pb::SubscriptionFilter {
                attributes: if n % 2 == 0 { vec!["cpr_trained".into()] } else { vec![] },
                ..Default::default()
            }),
            ..Default::default()
        };
        let stored = hexcast_api::subscriptions::stored_subscription(&geo, &shard_map, 1_000, "t", api, now)
            .expect("subscription");
        index.upsert(stored);
    }

    let spatial = Spatial::new(geo, shard_map.shards);
    let mut matcher = Matcher::new(Arc::clone(&index), 4, 10_000);
    let (mut batches, mut internal_fine, mut internal) = (0usize, 0usize, 0usize);
    let mut records = Vec::new();
    for alert in alerts {
        let (own, reports) = reports_of.get(&alert.alert_id).cloned().unwrap_or_default();
        assert!(!reports.is_empty(), "{}: no report location", alert.alert_id);
        let indexed: Vec<IndexedAlert> = spatial.index(alert).expect("index");
        // The internal record is precise: the check would catch it.
        if let Some(first) = indexed.first() {
            internal += 1;
            let b = pb::NotificationBatch { alert: Some((&first.alert).into()), ..Default::default() };
            if !coordinates(&b).iter().all(|&q| coarse_enough(q, &reports, coarse_res)) {
                internal_fine += 1;
            }
        }
        for ia in indexed {
            records.clear();
            matcher.process(ia, &StageCtx::at(now), &mut records).expect("match");
            // Recipients of record hold subscription keys only; the check is on notifications.
            for r in records.drain(..).filter(|r| r.topic == hexcast_core::Topic::Notifications) {
                let bytes = r.payload.expect("payload");
                let b = pb::NotificationBatch::decode(bytes.as_slice()).expect("batch");
                batches += 1;
                for q in coordinates(&b) {
                    assert!(
                        coarse_enough(q, &reports, coarse_res),
                        "batch of {} carries {q:?}, finer than a coarse cell (reports {reports:?})",
                        b.alert.as_ref().map_or("", |a| a.alert_id.as_str())
                    );
                }
                // The public target still contains every report: the view is coarser, not wrong.
                if let Some(pb::area::Shape::Circle(c)) =
                    b.alert.as_ref().and_then(|a| a.target.as_ref()?.shape.clone())
                {
                    let center = LatLng::try_from(&c.center.expect("center")).expect("valid");
                    assert!(own.is_none_or(|p| p.distance_m(center) <= c.radius_m), "incident outside public circle");
                }
            }
        }
    }
    assert!(batches > 100, "too few notification batches: {batches}");
    assert!(internal_fine * 10 > internal * 9, "the internal alerts should fail the check: {internal_fine}/{internal}");
}
