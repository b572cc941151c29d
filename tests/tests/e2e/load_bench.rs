//! `hexcast bench load` on the real broker, tiny: the run completes, every synthetic incident
//! the seed policy alerts reaches the backend as notifications, a replay of the real Montgomery
//! County export flows through, and the result file has its fields. Figures are measured, never
//! asserted on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hexcast_bench::load::{LoadBenchArgs, run};

use crate::common;

const GEOFENCE: &str = "geofence/click_that_hood";
const MONTCO: &str = "cad/montco_pa_911_2015-12_2016-01.csv";

fn args(out: &Path) -> LoadBenchArgs {
    LoadBenchArgs {
        brokers: common::brokers(),
        grpc: None,
        token: None,
        topic_prefix: String::new(),
        group_prefix: "hexcast".into(),
        subscribers: 2_000,
        bulk_streams: 2,
        rate: 20.0,
        duration: Duration::from_secs(3),
        replay: None,
        replay_mapping: "montco".into(),
        speedup: 3_600.0,
        burst: 0,
        kafka_sh: None,
        raw_records: 0,
        drain: Duration::from_secs(60),
        out: out.to_path_buf(),
        compare: None,
        threshold: 0.2,
        seed: 11,
        partitions: 3,
        geofence: hexcast_testdata::path(GEOFENCE),
    }
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique_prefix(name).trim_end_matches('.'));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn result(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("result.json")).expect("result.json");
    serde_json::from_str(&text).expect("result.json parses")
}

#[tokio::test(flavor = "multi_thread")]
async fn synthetic_load_notifies_every_alerting_incident_and_writes_results() {
    let dir = out_dir("load-synthetic");
    let mut a = args(&dir);
    a.burst = 200;
    let regressed = run(&a).await.expect("bench load runs");
    assert!(!regressed);
    let r = result(&dir);
    assert_eq!(r["mode"], "in-process");
    assert_eq!(r["bulk_upsert"]["upserted"], 2_000);
    assert_eq!(r["incidents"]["published"], 60);
    let expected = r["incidents"]["expected_to_alert"].as_u64().expect("expected_to_alert");
    assert!(expected > 0, "{r}");
    assert_eq!(r["incidents"]["expected_without_notification"], 0, "{r}");
    assert!(r["notifications"]["received"].as_u64().expect("received") >= expected);
    assert!(r["latency_ms"]["count"].as_u64().expect("count") > 0);
    for key in [
        "e2e_p50_ms",
        "e2e_p90_ms",
        "e2e_p99_ms",
        "e2e_p999_ms",
        "e2e_max_ms",
        "incidents_in_per_sec",
        "notifications_out_per_sec",
        "bulk_upsert_per_sec",
        "peak_rss_mb",
        "burst_incidents_per_sec",
    ] {
        assert!(r["figures"][key].is_number(), "figure {key} missing: {}", r["figures"]);
    }
    assert_eq!(r["burst"]["incidents"], 200);
    let timeline = r["timeline"].as_array().expect("timeline");
    assert!(!timeline.is_empty());
    for stage in ["ingest", "dedup", "policy", "spatial", "push"] {
        assert!(timeline.iter().any(|s| s["lag"][stage].is_number()), "no lag of {stage}");
    }
    for file in ["latency.svg", "throughput.svg", "lag.svg", "report.html"] {
        let text = std::fs::read_to_string(dir.join(file)).expect(file);
        assert!(text.contains("<svg"), "{file}");
    }

    // Compared with itself, nothing regresses; the comparison is recorded.
    let again = dir.join("again");
    let mut b = args(&again);
    b.compare = Some(dir.join("result.json"));
    b.threshold = 1_000.0;
    assert!(!run(&b).await.expect("second run"));
    assert_eq!(result(&again)["comparison"]["regressed"], false);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_of_the_montco_export_flows_through_the_pipeline() {
    let dir = out_dir("load-replay");
    let mut a = args(&dir);
    a.replay = Some(hexcast_testdata::path(MONTCO));
    a.subscribers = 500;
    run(&a).await.expect("bench load replay runs");
    let r = result(&dir);
    assert_eq!(r["source"], hexcast_testdata::path(MONTCO).display().to_string());
    let published = r["incidents"]["published"].as_u64().expect("published");
    assert!(published > 10, "{r}");
    // Every replayed row was consumed by ingest, and the rows became incidents (not
    // dead letters: their times were rewritten to the present).
    let ingest = &r["stages"]["ingest"];
    assert_eq!(ingest["received"].as_u64(), Some(published), "{ingest}");
    let normalized = ingest["emitted"]["normalized"].as_u64().unwrap_or(0);
    assert!(normalized * 10 >= published * 9, "most rows normalize: {ingest}");
    assert!(r["stages"]["policy"]["received"].as_u64().unwrap_or(0) > 0, "{}", r["stages"]);
    assert!(r["figures"]["incidents_in_per_sec"].as_f64().expect("in") > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
