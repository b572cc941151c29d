use std::collections::HashMap;

use hexcast_core::{
    Category, Certainty, EventKind, Incident, IncidentEvent, IncidentStatus, IntoRecord, LatLng, Severity, Stage,
    StageCtx, Timestamp, Urgency,
};
use proptest::prelude::*;
use prost::Message as _;

use crate::{Dedup, DedupConfig, DedupOut};

fn report(source: &str, id: &str, version: i64, status: IncidentStatus) -> Incident {
    Incident {
        id: Incident::make_id(source, id),
        source: source.into(),
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
        community_threat: Some(true),
        published_at: None,
    }
}

fn incident(id: &str, version: i64, status: IncidentStatus) -> Incident {
    report("pd", id, version, status)
}

fn run(d: &mut Dedup, inputs: Vec<Incident>, now: i64) -> Vec<DedupOut> {
    let mut out = Vec::new();
    for i in inputs {
        d.process(i, &StageCtx::at(Timestamp(now)), &mut out).expect("never rejects");
    }
    out
}

fn kinds(d: &mut Dedup, inputs: Vec<Incident>, now: i64) -> Vec<EventKind> {
    run(d, inputs, now).iter().filter_map(|o| o.event().map(|e| e.kind)).collect()
}

/// The changelog records of some outputs, as the runner would produce them.
fn changelog(outs: &[DedupOut]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    outs.iter()
        .filter(|o| o.event().is_none())
        .map(|o| {
            let r = o.clone().into_record();
            assert_eq!(r.topic, hexcast_core::Topic::DedupState);
            (r.key, r.payload)
        })
        .collect()
}

#[test]
fn dedup_same_version_twice_emits_once() {
    let mut d = Dedup::new(DedupConfig::default());
    let k = kinds(&mut d, vec![incident("1", 1, IncidentStatus::Active), incident("1", 1, IncidentStatus::Active)], 0);
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
fn dedup_repeat_inside_ttl_is_dropped_and_outside_is_new_again() {
    let cfg = DedupConfig { ttl_secs: 100, ..DedupConfig::default() };
    let mut d = Dedup::new(cfg);
    assert_eq!(kinds(&mut d, vec![incident("1", 1, IncidentStatus::Active)], 0), vec![EventKind::New]);
    assert_eq!(kinds(&mut d, vec![incident("1", 1, IncidentStatus::Active)], 100_000), vec![]);
    // Seen at 100 s, so remembered until 200 s.
    assert_eq!(kinds(&mut d, vec![incident("1", 1, IncidentStatus::Active)], 200_000), vec![]);
    assert_eq!(kinds(&mut d, vec![incident("1", 1, IncidentStatus::Active)], 300_001), vec![EventKind::New]);
}

/// A CAD state feed re-sends every active incident each poll, unchanged. An incident active
/// for longer than the memory must not come out `new` again: memory counts from the last
/// report, and so does a state rebuilt from the changelog.
#[test]
fn dedup_memory_counts_from_the_last_report_through_a_restore() {
    const HOUR: i64 = 3_600_000;
    let mut d = Dedup::new(DedupConfig::default());
    let mut log = Vec::new();
    let mut events = Vec::new();
    for h in 0..26 {
        let out = run(&mut d, vec![incident("1", 1, IncidentStatus::Active)], h * HOUR);
        log.extend(changelog(&out));
        events.extend(out.iter().filter_map(|o| o.event().map(|e| e.kind)));
    }
    let (mut d, _) = Dedup::restore(DedupConfig::default(), log, Timestamp(26 * HOUR));
    for h in 26..50 {
        events.extend(kinds(&mut d, vec![incident("1", 1, IncidentStatus::Active)], h * HOUR));
    }
    events.extend(kinds(&mut d, vec![incident("1", 2, IncidentStatus::Active)], 50 * HOUR));
    assert_eq!(events, vec![EventKind::New, EventKind::Update]);
}

#[test]
fn dedup_same_version_with_new_place_category_or_status_is_an_update() {
    let mut d = Dedup::new(DedupConfig::default());
    let first = incident("1", 5, IncidentStatus::Active);
    let mut moved = first.clone();
    moved.location = Some(first.location.expect("point").destination(90.0, 250.0));
    let mut recategorized = moved.clone();
    recategorized.category = Category::parse("crime.shooting").expect("known");
    let mut cancelled = recategorized.clone();
    cancelled.status = IncidentStatus::Cancelled;
    let k = kinds(
        &mut d,
        vec![first, moved.clone(), moved, recategorized.clone(), recategorized, cancelled.clone(), cancelled],
        0,
    );
    assert_eq!(k, vec![EventKind::New, EventKind::Update, EventKind::Update, EventKind::Close]);
}

/// A removal event carries only the id: it closes what dedup remembers, with the place and
/// category remembered, once however often the feed re-sends it.
#[test]
fn dedup_bare_close_closes_the_remembered_incident_once() {
    let mut d = Dedup::new(DedupConfig::default());
    let open = incident("1", 7, IncidentStatus::Active);
    let mut bare = incident("1", 0, IncidentStatus::Closed);
    bare.location = None;
    bare.category = Category::UNKNOWN;
    let out = run(&mut d, vec![open.clone(), bare.clone(), bare.clone()], 0);
    let events: Vec<_> = out.iter().filter_map(DedupOut::event).collect();
    assert_eq!(events.len(), 2);
    let close = events[1];
    assert_eq!(close.kind, EventKind::Close);
    assert_eq!(close.incident.location, open.location);
    assert_eq!(close.incident.category, open.category);
    assert_eq!(close.incident.version, 7);
    // The close decodes downstream like any event.
    let rec = DedupOut::Event(Box::new(close.clone())).into_record();
    let back = hexcast_proto::v1::IncidentEvent::decode(rec.payload.expect("payload").as_slice()).expect("proto");
    assert_eq!(IncidentEvent::try_from(back).expect("valid"), close.clone());
    // Nothing remembered under that id: nothing to close, nothing stored.
    let mut unknown = bare;
    unknown.id = "pd:404".into();
    assert!(run(&mut d, vec![unknown], 0).is_empty());
    assert_eq!(d.len(), 1);
}

/// An incident whose first report moves takes its merge anchor along: a nearby report of
/// another source merges at the new place, not at the old one.
#[test]
fn dedup_a_moved_incident_merges_at_its_new_place() {
    let mut d = Dedup::new(DedupConfig::default());
    let a = report("pd", "1", 1, IncidentStatus::Active);
    let old = a.location.expect("point");
    let mut moved = a.clone();
    moved.location = Some(old.destination(0.0, 2_000.0));
    let mut near_new = report("fd", "2", 1, IncidentStatus::Active);
    near_new.location = Some(old.destination(0.0, 2_100.0));
    let mut near_old = report("fd", "3", 1, IncidentStatus::Active);
    near_old.location = Some(old.destination(180.0, 100.0));
    let out = run(&mut d, vec![a, moved, near_old, near_new], 0);
    let ev: Vec<_> = out.iter().filter_map(DedupOut::event).map(|e| (e.kind, e.incident.id.clone())).collect();
    assert_eq!(
        ev,
        vec![
            (EventKind::New, "pd:1".to_owned()),
            (EventKind::Update, "pd:1".to_owned()),
            (EventKind::New, "fd:3".to_owned()),
            (EventKind::Update, "pd:1".to_owned()),
        ]
    );
}

#[test]
fn dedup_cap_evicts_least_recently_seen_with_tombstones() {
    let cfg = DedupConfig { ttl_secs: 1000, max_entries: 2, ..DedupConfig::default() };
    let mut d = Dedup::new(cfg);
    for i in 0..3 {
        run(&mut d, vec![incident(&i.to_string(), 1, IncidentStatus::Active)], i * 1000);
    }
    // The fourth report finds three remembered (over the cap of 2): the oldest goes.
    let out = run(&mut d, vec![incident("3", 1, IncidentStatus::Active)], 3000);
    let tombstones: Vec<_> = changelog(&out).into_iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k).collect();
    assert_eq!(tombstones, vec![b"pd:0".to_vec()]);
    assert_eq!(d.evicted(), 1);
    assert_eq!(d.len(), 3);
    // The evicted one is new again; the others are still remembered.
    assert_eq!(kinds(&mut d, vec![incident("2", 1, IncidentStatus::Active)], 3000), vec![]);
}

#[test]
fn dedup_ttl_sweep_forgets_everything_old() {
    let cfg = DedupConfig { ttl_secs: 10, ..DedupConfig::default() };
    let mut d = Dedup::new(cfg);
    run(&mut d, (0..5).map(|i| incident(&i.to_string(), 1, IncidentStatus::Active)).collect(), 0);
    let out = run(&mut d, vec![incident("9", 1, IncidentStatus::Active)], 20_000);
    assert_eq!(changelog(&out).iter().filter(|(_, v)| v.is_none()).count(), 5);
    assert_eq!(d.len(), 1);
    assert_eq!(d.expired(), 5);
}

#[test]
fn dedup_merges_another_source_nearby_into_one_stable_id() {
    let mut d = Dedup::new(DedupConfig::default());
    let a = report("pd", "1", 1, IncidentStatus::Active);
    let mut b = report("fd", "77", 1, IncidentStatus::Active);
    // 200 m north, 5 minutes later: the same incident.
    b.location = Some(a.location.expect("point").destination(0.0, 200.0));
    b.occurred_at = Timestamp(300_000);
    let out = run(&mut d, vec![a, b.clone()], 0);
    let events: Vec<_> = out.iter().filter_map(DedupOut::event).collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventKind::New);
    assert_eq!(events[1].kind, EventKind::Update);
    assert_eq!(events[1].incident.id, "pd:1");
    assert_eq!(events[1].merged_ids, vec!["pd:1".to_owned(), "fd:77".to_owned()]);
    // A newer version of the merged report is an update of the same incident.
    b.version = 2;
    let out = run(&mut d, vec![b], 0);
    let e = out.iter().find_map(DedupOut::event).expect("update");
    assert_eq!((e.kind, e.incident.id.as_str()), (EventKind::Update, "pd:1"));
    assert_eq!(d.incidents(), 1);
}

#[test]
fn dedup_does_not_merge_far_late_other_family_or_same_source() {
    let base = report("pd", "1", 1, IncidentStatus::Active);
    let at = base.location.expect("point");
    let mut far = report("fd", "2", 1, IncidentStatus::Active);
    far.location = Some(at.destination(90.0, 301.0));
    let mut late = report("fd", "3", 1, IncidentStatus::Active);
    late.occurred_at = Timestamp(600_001);
    let mut fire = report("fd", "4", 1, IncidentStatus::Active);
    fire.category = Category::parse("fire.structure").expect("known");
    let same_source = report("pd", "5", 1, IncidentStatus::Active);
    for other in [far, late, fire, same_source] {
        let mut d = Dedup::new(DedupConfig::default());
        let k = kinds(&mut d, vec![base.clone(), other.clone()], 0);
        assert_eq!(k, vec![EventKind::New, EventKind::New], "{}", other.id);
    }
    let mut d = Dedup::new(DedupConfig { merge: false, ..DedupConfig::default() });
    let k = kinds(&mut d, vec![base, report("fd", "6", 1, IncidentStatus::Active)], 0);
    assert_eq!(k, vec![EventKind::New, EventKind::New]);
}

#[test]
fn dedup_restored_from_its_changelog_emits_no_second_new() {
    let mut first = Dedup::new(DedupConfig::default());
    let mut b = report("fd", "9", 1, IncidentStatus::Active);
    b.location = Some(b.location.expect("point").destination(45.0, 100.0));
    let out = run(
        &mut first,
        vec![
            incident("1", 1, IncidentStatus::Active),
            incident("2", 3, IncidentStatus::Active),
            incident("2", 4, IncidentStatus::Closed),
            b.clone(),
        ],
        1000,
    );
    let (mut second, stats) = Dedup::restore(DedupConfig::default(), changelog(&out), Timestamp(2000));
    assert_eq!(stats.restored, 3);
    assert_eq!(second.incidents(), 2);
    let k = kinds(
        &mut second,
        vec![
            incident("1", 1, IncidentStatus::Active),
            incident("2", 4, IncidentStatus::Closed),
            b.clone(),
            incident("1", 2, IncidentStatus::Active),
        ],
        2000,
    );
    assert_eq!(k, vec![EventKind::Update]);
    // The merged report still belongs to the same stable id.
    b.version = 2;
    let out = run(&mut second, vec![b], 2000);
    assert_eq!(out.iter().find_map(DedupOut::event).expect("update").incident.id, "pd:1");
}

#[test]
fn dedup_restore_skips_expired_and_malformed_entries_and_honours_tombstones() {
    let cfg = DedupConfig { ttl_secs: 10, ..DedupConfig::default() };
    let mut d = Dedup::new(cfg.clone());
    let mut log = changelog(&run(&mut d, vec![incident("1", 1, IncidentStatus::Active)], 0));
    log.extend(changelog(&run(&mut d, vec![incident("2", 1, IncidentStatus::Active)], 9_000)));
    log.push((b"pd:2".to_vec(), None));
    log.push((b"junk".to_vec(), Some(vec![0xff, 0xff, 0xff])));
    let (_, stats) = Dedup::restore(cfg, log, Timestamp(15_000));
    assert_eq!(stats, crate::RestoreStats { restored: 0, expired: 1, malformed: 1 });
}

#[test]
fn dedup_config_errors_name_the_key() {
    let bad = DedupConfig { merge_window_secs: 0, ..DedupConfig::default() };
    assert!(bad.validate().expect_err("invalid").to_string().contains("dedup.merge_window_secs"));
    let bad = DedupConfig { merge_distance_m: -1.0, ..DedupConfig::default() };
    assert!(bad.validate().expect_err("invalid").to_string().contains("dedup.merge_distance_m"));
    DedupConfig::default().validate().expect("default is valid");
}

/// What one report id's events must be, written independently of the stage: an event when
/// the version is newer, or the same with another place, category or status, or the first
/// close; a close is `close`, anything else after the first `new` is `update`.
fn oracle(reports: &[(i64, u8, u8, bool)]) -> Vec<EventKind> {
    let mut out = Vec::new();
    let mut last: Option<(i64, u8, u8, bool)> = None;
    let mut closed = false;
    for &(v, place, cat, close) in reports {
        let kind = match last {
            None => Some(if close { EventKind::Close } else { EventKind::New }),
            Some((lv, lp, lc, lclose)) => {
                let newer = v > lv;
                let changed = v == lv && (place, cat, close) != (lp, lc, lclose);
                let closing = close && !closed;
                (newer || changed || closing).then_some(if close { EventKind::Close } else { EventKind::Update })
            }
        };
        if let Some(k) = kind {
            out.push(k);
            let v = last.map_or(v, |l| l.0.max(v));
            last = Some((v, place, cat, close));
        }
        closed |= close;
    }
    out
}

proptest! {
    /// Same-version changes are updates, exact repeats and stale versions are dropped,
    /// whatever the order, and a restart from the changelog anywhere changes nothing.
    #[test]
    fn dedup_events_of_one_id_match_the_oracle(
        reports in proptest::collection::vec((0i64..4, 0u8..3, 0u8..2, proptest::bool::weighted(0.2)), 1..30),
        cut in 0usize..30,
    ) {
        let cats = ["crime.robbery", "crime.burglary"];
        let inputs: Vec<Incident> = reports
            .iter()
            .map(|&(v, place, cat, close)| {
                let status = if close { IncidentStatus::Closed } else { IncidentStatus::Active };
                let mut r = incident("1", v, status);
                r.location = Some(r.location.expect("point").destination(0.0, f64::from(place) * 150.0));
                r.category = Category::parse(cats[cat as usize]).expect("known");
                r
            })
            .collect();
        let mut d = Dedup::new(DedupConfig::default());
        let cut = cut.min(inputs.len());
        let first = run(&mut d, inputs[..cut].to_vec(), 0);
        let (mut d, _) = Dedup::restore(DedupConfig::default(), changelog(&first), Timestamp(0));
        let mut got: Vec<EventKind> = first.iter().filter_map(|o| o.event().map(|e| e.kind)).collect();
        got.extend(kinds(&mut d, inputs[cut..].to_vec(), 0));
        // The oracle's "update" after a close stays an update; its state is the last emitted
        // report, exactly what the stage remembers.
        prop_assert_eq!(got, oracle(&reports));
    }

    #[test]
    fn dedup_emits_one_new_per_id_and_drops_exact_repeats(reports in proptest::collection::vec((0u8..5, 0i64..4), 0..60)) {
        let mut d = Dedup::new(DedupConfig::default());
        let inputs = reports.iter().map(|(id, v)| incident(&id.to_string(), *v, IncidentStatus::Active)).collect();
        let out = run(&mut d, inputs, 0);
        let events: Vec<_> = out.iter().filter_map(DedupOut::event).collect();
        let ids: std::collections::HashSet<u8> = reports.iter().map(|(i, _)| *i).collect();
        let news = events.iter().filter(|e| e.kind == EventKind::New).count();
        prop_assert_eq!(news, ids.len());
        // Every emitted (id, version) is strictly newer than the last emitted for that id.
        let mut last: HashMap<String, i64> = HashMap::new();
        for e in &events {
            if let Some(prev) = last.insert(e.incident.id.clone(), e.incident.version) {
                prop_assert!(e.incident.version > prev);
            }
        }
    }

    /// Restarting from the changelog at any point gives the same events as never stopping.
    #[test]
    fn dedup_restart_anywhere_equals_running_through(
        reports in proptest::collection::vec((0u8..2, 0u8..6, 0i64..3, 0u16..400, 0i64..900), 1..50),
        cut in 0usize..50,
    ) {
        let inputs: Vec<Incident> = reports
            .iter()
            .map(|(src, id, v, meters, secs)| {
                let mut r = report(["pd", "fd"][*src as usize], &id.to_string(), *v, IncidentStatus::Active);
                r.location = Some(r.location.expect("point").destination(30.0, f64::from(*meters)));
                r.occurred_at = Timestamp(secs * 1000);
                r
            })
            .collect();
        let cut = cut.min(inputs.len());
        let mut through = Dedup::new(DedupConfig::default());
        let all = run(&mut through, inputs.clone(), 0);
        let mut first = Dedup::new(DedupConfig::default());
        let mut restarted = run(&mut first, inputs[..cut].to_vec(), 0);
        let (mut second, _) = Dedup::restore(DedupConfig::default(), changelog(&restarted), Timestamp(0));
        restarted.extend(run(&mut second, inputs[cut..].to_vec(), 0));
        let ev = |o: &[DedupOut]| o.iter().filter_map(DedupOut::event).map(|e| (e.kind, e.incident.id.clone(), e.incident.version)).collect::<Vec<_>>();
        prop_assert_eq!(ev(&all), ev(&restarted));
    }

    /// The spatial index finds every incident a brute-force scan would merge with.
    #[test]
    fn dedup_merge_matches_brute_force(points in proptest::collection::vec((0f64..360.0, 0f64..700.0), 1..30)) {
        let center = LatLng::new(40.0, -75.0).expect("valid");
        let locs: Vec<LatLng> = points.iter().map(|(b, m)| center.destination(*b, *m)).collect();
        let mut d = Dedup::new(DedupConfig { merge_same_source: true, ..DedupConfig::default() });
        let mut anchors: Vec<LatLng> = Vec::new();
        for (i, at) in locs.iter().enumerate() {
            let mut r = report("pd", &i.to_string(), 1, IncidentStatus::Active);
            r.location = Some(*at);
            let out = run(&mut d, vec![r], 0);
            let e = out.iter().find_map(DedupOut::event).expect("event");
            let expect_merge = anchors.iter().any(|a| a.distance_m(*at) <= 300.0);
            prop_assert_eq!(e.kind == EventKind::Update, expect_merge);
            if !expect_merge {
                anchors.push(*at);
            }
        }
    }
}

/// A CAD state feed end to end through ingest, the wire and dedup: the incident re-sent
/// unchanged on every poll, then corrected without a new timestamp, then removed by an
/// event that carries only its id.
#[test]
fn dedup_cad_state_feed_through_ingest_new_update_close() {
    const MAPPING: &str = r#"
name = "state"
kind = "json"
source = "state-cad"
records = "/incidents"
id = { columns = ["/id"] }
[fields]
call_type = "/type"
lat = "/lat"
lng = "/lng"
[times.occurred_at]
columns = ["/received"]
formats = ["rfc3339"]
[closing]
id_only = true
"#;
    let ingest = hexcast_ingest::Ingest::default()
        .with_mapping(hexcast_ingest::Mapping::parse(MAPPING, "state.toml").expect("valid"));
    let poll = |body: &str| {
        let raw = hexcast_ingest::RawIncident { format: "json-state".into(), source: None, payload: body.into() };
        let n = ingest.normalize(&raw, Timestamp(1_795_500_600_000)).expect("normalizes");
        // Across the wire as the runner carries it.
        n.incidents
            .iter()
            .map(|i| Incident::try_from(hexcast_proto::v1::Incident::from(i)).expect("decodes"))
            .collect::<Vec<_>>()
    };
    let open =
        r#"{"incidents":[{"id":"A1","type":"ROBBERY","lat":41.88,"lng":-87.63,"received":"2026-11-24T06:00:00Z"}]}"#;
    let corrected = open.replace("41.88", "41.89");
    let removed = r#"{"incidents":[{"id":"A1"}]}"#;
    let mut d = Dedup::new(DedupConfig::default());
    let mut got = Vec::new();
    for (minute, body) in
        [(0, open), (1, open), (2, corrected.as_str()), (3, corrected.as_str()), (4, removed), (5, removed)]
    {
        for o in run(&mut d, poll(body), minute * 60_000) {
            if let Some(e) = o.event() {
                got.push((e.kind, e.incident.location.map(|l| l.lat()), e.incident.category.as_str().to_owned()));
            }
        }
    }
    let robbery = "crime.robbery".to_owned();
    assert_eq!(
        got,
        vec![
            (EventKind::New, Some(41.88), robbery.clone()),
            (EventKind::Update, Some(41.89), robbery.clone()),
            (EventKind::Close, Some(41.89), robbery),
        ]
    );
}
