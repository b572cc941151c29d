//! The real Montgomery County 911 export through `hexcast normalize | hexcast dedup |
//! hexcast policy --now replay` with the shipped policy: alerts come out, only in allowed
//! categories, and no alert carries an input address, a phone-number pattern or its
//! incident's house number.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use hexcast_policy::PolicyConfig;

pub(crate) const EXPORT: &str = "cad/montco_pa_911_2015-12_2016-01.csv";

pub(crate) fn manifest(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary with `args`, feeding `input`; returns stdout and stderr.
pub(crate) fn stage(args: &[&str], input: &[u8]) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hexcast"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hexcast");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer thread").expect("write stdin");
    assert!(out.status.success(), "hexcast {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8(out.stdout).expect("utf-8"), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Phone-number patterns: 3-3-4 or 3-4 digit groups (separated by `-`, `.` or a space, or
/// not at all: 10 or 7 digits in a row).
fn has_phone_pattern(text: &str) -> bool {
    let groups: Vec<(usize, char)> = {
        let mut g = Vec::new();
        let mut len = 0;
        for c in text.chars() {
            if c.is_ascii_digit() {
                len += 1;
            } else {
                if len > 0 {
                    g.push((len, c));
                }
                len = 0;
            }
        }
        if len > 0 {
            g.push((len, ' '));
        }
        g
    };
    let sep = |c: char| matches!(c, '-' | '.' | ' ');
    groups.iter().any(|(l, _)| *l == 10 || *l == 7)
        || groups.windows(2).any(|w| w[0].0 == 3 && sep(w[0].1) && w[1].0 == 4)
        || groups.windows(3).any(|w| w[0].0 == 3 && sep(w[0].1) && w[1].0 == 3 && sep(w[1].1) && w[2].0 == 4)
}

/// Whether `needle` occurs in `hay` between non-alphanumeric characters (or the ends).
fn contains_word(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
        let after = hay[i + needle.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric());
        before && after
    })
}

fn house_number(address: &str) -> Option<String> {
    let n: String = address.chars().take_while(char::is_ascii_digit).collect();
    (!n.is_empty() && address[n.len()..].starts_with(' ')).then_some(n)
}

#[test]
fn montco_replay_alerts_only_allowed_categories_and_leak_no_address_phone_or_house_number() {
    let export = hexcast_testdata::path(EXPORT).display().to_string();
    let policy_file = manifest("../policy/seed-policy.toml");
    let (normalized, _) =
        stage(&["normalize", "--format", "csv", "--mapping", "montco", "--now", "2016-02-01T00:00:00Z", &export], b"");
    let (events, dedup_summary) = stage(&["dedup"], normalized.as_bytes());
    let (alerts, policy_summary) = stage(&["policy", "--policy", &policy_file, "--now", "replay"], events.as_bytes());

    // Every street address of the export (its `addr` column), as the feed wrote it.
    let mut addresses: Vec<String> = Vec::new();
    let mut reader = csv::Reader::from_path(&export).expect("export");
    let col = reader.headers().expect("header").iter().position(|h| h == "addr").expect("addr column");
    for row in reader.records() {
        let row = row.expect("row");
        let addr = row.get(col).unwrap_or("").trim();
        if !addr.is_empty() {
            addresses.push(addr.to_owned());
        }
    }
    assert!(addresses.len() > 9_000, "addresses {}", addresses.len());
    let mut inputs: HashMap<String, serde_json::Value> = HashMap::new();
    for line in normalized.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("incident json");
        inputs.insert(v["id"].as_str().expect("id").to_owned(), v);
    }
    addresses.sort();
    addresses.dedup();
    assert!(inputs.len() > 9_000, "normalized {}", inputs.len());
    assert!(dedup_summary.contains("\"read\":"), "{dedup_summary}");

    let seed = PolicyConfig::load(std::path::Path::new(&policy_file)).expect("policy");
    let lines: Vec<&str> = alerts.lines().collect();
    assert!(lines.len() > 100, "too few alerts: {} ({policy_summary})", lines.len());
    for line in &lines {
        let a: serde_json::Value = serde_json::from_str(line).expect("alert json");
        let category = a["category"].as_str().expect("category");
        let cat = hexcast_core::Category::parse(category).expect("taxonomy");
        assert!(
            seed.rules.allow.iter().any(|p| cat.matches_prefix(p))
                && !seed.rules.deny.iter().any(|p| cat.matches_prefix(p)),
            "alert in a category the policy does not allow: {category}"
        );
        let texts = format!(
            "{} | {} | {}",
            a["headline"].as_str().unwrap_or(""),
            a["body"].as_str().unwrap_or(""),
            a["place"].as_str().unwrap_or("")
        );
        for addr in &addresses {
            // Multi-word addresses anywhere in the record; every address, even a bare
            // route number, as a whole word of the texts.
            let hay = if addr.contains(' ') { *line } else { texts.as_str() };
            assert!(!contains_word(hay, addr), "address `{addr}` in alert {line}");
        }
        assert!(!has_phone_pattern(&texts), "phone pattern in {texts}");
        assert!(a["headline"].as_str().is_some_and(|h| !h.is_empty() && h.chars().count() <= 90), "{line}");
        assert!(a["body"].as_str().is_some_and(|b| !b.is_empty() && b.chars().count() <= 360), "{line}");
        let incident = &inputs[a["incidentId"].as_str().expect("incident id")];
        let address = incident.pointer("/sensitive/address").and_then(|v| v.as_str()).unwrap_or("");
        // A hundred block ("1200 block of ...") may equal a house number that is a multiple
        // of 100; that is the block, as the issue asks.
        if let Some(n) = house_number(address).filter(|n| !n.ends_with("00")) {
            let tokens: Vec<&str> = texts.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).collect();
            assert!(!tokens.contains(&n.as_str()), "house number {n} of `{address}` in {texts}");
        }
        for field in ["freeText", "sensitive", "address", "rawType"] {
            assert!(!line.contains(field), "{field} in alert {line}");
        }
        let point = incident.get("location").expect("alerts need a location");
        let coarse = &a["coarseLocation"];
        assert!(point["lat"] != coarse["lat"] || point["lng"] != coarse["lng"], "raw point in {line}");
    }
}

#[test]
fn phone_pattern_scanner_finds_phones_and_ignores_blocks_zips_and_times() {
    assert!(has_phone_pattern("call 215-555-0199 now"));
    assert!(has_phone_pattern("555.0199"));
    assert!(has_phone_pattern("2155550199"));
    assert!(!has_phone_pattern("1200 block of MAIN ST, 19401, at 21:47 UTC"));
}

#[test]
fn offline_stages_report_bad_lines_and_bad_arguments_without_losing_good_ones() {
    let policy_file = manifest("../policy/seed-policy.toml");
    let incident = r#"{"id":"pd:1","source":"pd","sourceId":"1","version":"1","category":"crime.robbery","status":"INCIDENT_STATUS_ACTIVE","occurredAtMs":"1700000000000","updatedAtMs":"1700000060000","location":{"lat":40.1,"lng":-75.3},"communityThreat":true,"sensitive":{"address":"1234 MAIN ST, NORRISTOWN, 19401","names":["Jane Roe"],"phones":["215-555-0199"]}}"#;
    let input = format!("{incident}\nnot json\n{incident}\n");
    let (events, summary) = stage(&["dedup"], input.as_bytes());
    assert_eq!(events.lines().count(), 1, "one new, the repeat dropped");
    assert!(summary.contains("\"line\":2") && summary.contains("\"invalid\":1"), "{summary}");

    let decisions = std::env::temp_dir().join(format!("hexcast-decisions-{}.jsonl", std::process::id()));
    let (alerts, summary) = stage(
        &["policy", "--policy", &policy_file, "--now", "replay", "--decisions", decisions.to_str().expect("utf-8")],
        events.as_bytes(),
    );
    let audit = std::fs::read_to_string(&decisions).expect("decisions file");
    let _ = std::fs::remove_file(&decisions);
    assert_eq!(alerts.lines().count(), 1, "{summary}");
    assert!(
        alerts.contains("1200 block of MAIN ST") && !alerts.contains("1234") && !alerts.contains("Roe"),
        "{alerts}"
    );
    assert!(audit.contains("\"decision\":\"allowed\"") && audit.contains("\"rule\":\"allow_categories\""), "{audit}");

    let out = Command::new(env!("CARGO_BIN_EXE_hexcast"))
        .args(["policy", "--policy", &policy_file, "--now", "yesterday"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--now"));
}
