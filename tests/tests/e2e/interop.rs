//! Interoperability: a push backend written in Python (grpcio from PyPI, stubs generated
//! from `proto/` by grpcio-tools, see `tests/interop/`) against the real push server on a
//! real socket, backed by Apache Kafka. The client upserts, subscribes, drops the
//! connection in the middle of a stored record, and resumes from its last cursor while more
//! alerts arrive; it must receive exactly the expected (alert, subscriber) pairs, once each.
//! Setting up Python is part of the test: if it fails, the test fails.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hexcast::Target;
use hexcast_api::Tokens;
use hexcast_core::{LatLng, Topic};
use std::io::{BufRead as _, BufReader, Write as _};
use tokio_util::sync::CancellationToken;

use crate::common;

const TOKEN: &str = "py-tenant-token-0123456789";
const OTHER_TOKEN: &str = "other-tenant-token-0123456789";
const SITES: usize = 4;
const PER_SITE: usize = 10;

fn site(k: usize) -> LatLng {
    LatLng::new(40.0 + k as f64 * 0.3, -75.5).expect("valid site")
}

/// Sets up the venv and generates the stubs; returns (python, stubs dir).
fn python_client() -> (PathBuf, PathBuf) {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("interop");
    let setup = here.join("interop/setup.sh");
    let result = std::process::Command::new("bash")
        .arg(&setup)
        .arg(&out)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", setup.display()));
    assert!(
        result.status.success(),
        "{} failed ({}): Python, venv or PyPI unavailable",
        setup.display(),
        result.status
    );
    let python = String::from_utf8(result.stdout).expect("utf8 path");
    (PathBuf::from(python.trim()), out.join("gen"))
}

/// The client's stdout lines, read by a thread (std process, so tokio needs no extra features).
fn lines_of(stdout: std::process::ChildStdout) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next_event(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, want: &str) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(180), lines.recv())
        .await
        .unwrap_or_else(|_| panic!("python client: no `{want}` event within 180 s"))
        .unwrap_or_else(|| panic!("python client exited before `{want}` (its stderr is above)"));
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("python client said {line:?}: {e}"));
    assert_eq!(v["event"], want, "python client: {line}");
    v
}

/// Kills the client if the test fails half way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn incident(i: usize, k: usize, now_ms: i64) -> (String, Vec<u8>) {
    let p = site(k);
    let body = serde_json::json!({
        "id": i.to_string(), "version": 1, "call_type": "ARMED ROBBERY", "lat": p.lat(), "lng": p.lng(),
        "occurred_at": now_ms, "address": "1 TEST ST",
    });
    (i.to_string(), body.to_string().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_grpcio_client_upserts_subscribes_and_resumes_without_loss() {
    let (python, stubs) = tokio::task::spawn_blocking(python_client).await.expect("setup task");

    let mut cfg = common::config("interop");
    cfg.topics.partitions = NonZeroU32::new(2).expect("nonzero");
    cfg.topics.shards = NonZeroU32::new(2).expect("nonzero");
    hexcast::create_topics(&cfg).await.expect("create topics");
    let rt = hexcast::runtime(&cfg);
    let tokens = Tokens::new([("py".to_owned(), TOKEN.to_owned()), ("other".to_owned(), OTHER_TOKEN.to_owned())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens), Some(listener), shutdown.clone())
        .await
        .expect("start pipeline");
    let addr = running.push.as_ref().expect("push running").addr;

    // Ten subscribers within 300 m of each site (an 800 m robbery alert there reaches all
    // of them), and ten far away that nothing reaches.
    let mut subs = Vec::new();
    for k in 0..SITES {
        for j in 0..PER_SITE {
            let at = site(k).destination(j as f64 * 36.0, 50.0 + j as f64 * 25.0);
            // Site 0's subscribers read Spanish ("es-MX" takes the alert's "es" text); a whole
            // site, so each alert still reaches a tenant in one record of ten ids.
            let languages: Vec<&str> = if k == 0 { vec!["es-MX", "en"] } else { vec![] };
            subs.push(serde_json::json!({
                "id": format!("s{k}-{j}"), "lat": at.lat(), "lng": at.lng(), "site": k, "languages": languages,
            }));
        }
    }
    for j in 0..10 {
        let at = LatLng::new(47.6, -122.3).expect("valid").destination(j as f64 * 36.0, 500.0);
        subs.push(serde_json::json!({"id": format!("far-{j}"), "lat": at.lat(), "lng": at.lng(), "site": -1}));
    }
    let subs_file = stubs.with_file_name("subs.json");
    std::fs::write(&subs_file, serde_json::to_vec(&subs).expect("json")).expect("write subs");

    // Phase 1: two incidents per site; phase 2 (while the client is away): one more each.
    let now_ms = (rt.clock)().as_millis();
    let phase1: Vec<(usize, usize)> = (0..2 * SITES).map(|i| (i, i % SITES)).collect();
    let phase2: Vec<(usize, usize)> = (2 * SITES..3 * SITES).map(|i| (i, i % SITES)).collect();
    let mut expected = BTreeSet::new();
    for &(i, k) in phase1.iter().chain(&phase2) {
        for j in 0..PER_SITE {
            expected.insert((format!("it:{i}@1"), format!("s{k}-{j}")));
        }
    }

    let child = std::process::Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/client.py"))
        .args(["--addr", &addr.to_string(), "--token", TOKEN, "--other-token", OTHER_TOKEN])
        .arg("--subs")
        .arg(&subs_file)
        .args(["--expect", &expected.len().to_string(), "--max-batch-ids", "3", "--disconnect-after", "5"])
        .env("PYTHONPATH", &stubs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the python client");
    let mut child = KillOnDrop(child);
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut lines = lines_of(child.0.stdout.take().expect("stdout"));

    let checked = next_event(&mut lines, "checked").await;
    assert!(checked["invalid_detail"].as_str().is_some_and(|d| d.contains("subscription.areas[0]")), "{checked}");
    let upserted = next_event(&mut lines, "upserted").await;
    assert_eq!(upserted["count"], subs.len());
    let push = running.push.as_ref().expect("push running");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while push.index.len() < subs.len() {
        assert!(std::time::Instant::now() < deadline, "index has {} of {} subscribers", push.index.len(), subs.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let raw = rt.names.name(Topic::Raw).to_owned();
    let records: Vec<_> = phase1.iter().map(|&(i, k)| incident(i, k, now_ms)).collect();
    common::publish_raw(&cfg.kafka.brokers, &raw, &records).await;
    stdin.write_all(b"phase1\n").and_then(|()| stdin.flush()).expect("signal phase1");
    let away = next_event(&mut lines, "disconnected").await;
    let cursor = away["cursor"].as_str().expect("cursor").to_owned();
    // Ten ids per stored record, three per streamed batch: the fifth batch ends inside a
    // record, so resuming exercises the cursor's skip count, not only its offset.
    assert!(!cursor.ends_with(".0"), "expected a cursor inside a record, got {cursor}");
    assert_eq!(away["received"], 5 * 3 - 2, "batches of 3,3,3,1 then 3");

    let records: Vec<_> = phase2.iter().map(|&(i, k)| incident(i, k, now_ms)).collect();
    common::publish_raw(&cfg.kafka.brokers, &raw, &records).await;
    stdin.write_all(b"phase2\n").and_then(|()| stdin.flush()).expect("signal phase2");
    let done = next_event(&mut lines, "done").await;
    let status = tokio::task::spawn_blocking(move || child.0.wait()).await.expect("wait task").expect("wait");
    assert!(status.success(), "python client failed: {status}");

    let pairs: Vec<(String, String)> = serde_json::from_value(done["pairs"].clone()).expect("pairs");
    let got: BTreeSet<(String, String)> = pairs.iter().cloned().collect();
    assert_eq!(pairs.len(), got.len(), "duplicates: {} pairs, {} distinct", pairs.len(), got.len());
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}");
    // Each subscriber read the alert in its language: Spanish at site 0, English elsewhere.
    let texts: std::collections::BTreeMap<String, (String, String)> =
        serde_json::from_value(done["texts"].clone()).expect("texts");
    for (sid, (language, headline)) in &texts {
        let (want, start) = if sid.starts_with("s0-") { ("es", "Reporte de robo") } else { ("en", "Robbery") };
        assert_eq!(language, want, "{sid}: {headline}");
        assert!(headline.starts_with(start), "{sid}: {headline}");
    }
    assert_eq!(texts.len(), SITES * PER_SITE, "{texts:?}");

    // What the Python backend read for APNs/FCM: an expiry (the seed policy's hour) and one
    // collapse key per alert, distinct across incidents; one idempotency key per id, never
    // repeated; ten ids per stored record at three per batch: pieces 0..4 of 4 of part 0/1.
    let labels = done["labels"].as_array().expect("labels");
    let mut collapse: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let mut idem = BTreeSet::new();
    for l in labels {
        let alert = l["alert"].as_str().expect("alert").to_owned();
        let expires = l["expires_at_ms"].as_i64().expect("expires_at_ms");
        assert!(expires >= now_ms + 3_600_000 - 60_000 && l["expired"] == false, "{l}");
        collapse.entry(alert).or_default().insert(l["collapse_key"].as_str().expect("key").to_owned());
        assert_eq!((l["part"].as_u64(), l["parts"].as_u64(), l["pieces"].as_u64()), (Some(0), Some(1), Some(4)), "{l}");
        assert!(l["piece"].as_u64().is_some_and(|p| p < 4), "{l}");
        for k in l["idempotency_keys"].as_array().expect("keys") {
            idem.insert(k.as_str().expect("key").to_owned());
        }
    }
    assert!(collapse.values().all(|k| k.len() == 1 && k.iter().all(|k| k.starts_with("hx-"))), "{collapse:?}");
    let distinct: BTreeSet<&String> = collapse.values().flatten().collect();
    assert_eq!(distinct.len(), collapse.len(), "one collapse key per incident");
    assert_eq!(idem.len(), pairs.len(), "one idempotency key per (alert, subscriber)");

    shutdown.cancel();
    running.join().await.expect("clean shutdown");
}
