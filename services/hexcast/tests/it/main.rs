//! The binary's command-line contract: bad configuration fails at start, naming the key.

mod cap_export;
mod config_doc;
mod large_polygons;
mod layout;
mod montco;
mod privacy;
mod shared_data;

use std::process::Command;

fn hexcast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hexcast"))
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("hexcast-it-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn run_with_an_unknown_key_exits_non_zero_naming_the_key() {
    let path = temp_config("unknown", "[kafka]\nbrokers = \"127.0.0.1:1\"\n[runner]\nmax_bacth = 10\n");
    let out = hexcast().args(["run", "--config"]).arg(&path).args(["--target", "ingest"]).output().expect("run");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_bacth"), "{stderr}");
}

#[test]
fn run_with_an_invalid_value_from_the_environment_names_the_key() {
    let path = temp_config("env", "[kafka]\nbrokers = \"127.0.0.1:1\"\n");
    let out =
        hexcast().args(["run", "--config"]).arg(&path).env("HEXCAST__KAFKA__DELIVERY", "twice").output().expect("run");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kafka.delivery"), "{stderr}");
}

#[test]
fn run_with_an_unknown_target_fails_naming_it() {
    let path = temp_config("target", "[kafka]\nbrokers = \"127.0.0.1:1\"\n");
    let out =
        hexcast().args(["run", "--config"]).arg(&path).args(["--target", "ingest,matcher"]).output().expect("run");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("matcher"));
}

#[test]
fn push_without_tokens_fails_naming_the_key() {
    let path = temp_config("tokens", "[kafka]\nbrokers = \"127.0.0.1:1\"\n[topics]\ncreate = false\n");
    let out = hexcast().args(["run", "--config"]).arg(&path).args(["--target", "push"]).output().expect("run");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("push.tokens_file"));
}

#[test]
fn review_without_tokens_fails_naming_the_key() {
    let path = temp_config("review-tokens", "[kafka]\nbrokers = \"127.0.0.1:1\"\n[topics]\ncreate = false\n");
    let out = hexcast().args(["run", "--config"]).arg(&path).args(["--target", "review"]).output().expect("run");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("review.tokens_file"));
}

#[test]
fn dedup_with_an_invalid_merge_window_fails_naming_the_key() {
    let path = temp_config("dedup-window", "[kafka]\nbrokers = \"127.0.0.1:1\"\n[dedup]\nmerge_window_secs = 0\n");
    let out = hexcast().args(["dedup", "--config"]).arg(&path).output().expect("run");
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dedup.merge_window_secs"));
}

#[test]
fn the_example_config_lists_only_valid_keys() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/hexcast.toml");
    let cfg = hexcast::Config::load(Some(&path), &[]).expect("config/hexcast.toml parses");
    assert_eq!(cfg.push.keepalive_interval_ms, 30_000);
    assert_eq!(cfg.push.max_request_bytes.get(), 4 << 20);
    assert!(cfg.push.tls_cert_file.is_none());
    assert_eq!(cfg.push.requests, hexcast_api::RequestsConfig::default());
    assert_eq!(cfg.push.assets, hexcast_match::AssetsConfig::default());
}

#[test]
fn push_with_a_bad_request_or_asset_limit_fails_naming_the_key() {
    let tokens = temp_config("limits-tokens", "pd = { token = \"pd-token-0123456789ab\", role = \"agency\" }\n");
    for (section, key) in [("push.requests", "max_window_ms = 0"), ("push.assets", "max_lookup_radius_m = -1.0")] {
        let text = format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\n[topics]\ncreate = false\n[push]\ntokens_file = {:?}\n[{section}]\n{key}\n",
            tokens.display().to_string()
        );
        let path = temp_config("limits", &text);
        let out = hexcast().args(["run", "--config"]).arg(&path).args(["--target", "push"]).output().expect("run");
        let _ = std::fs::remove_file(&path);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = format!("{section}.{}", key.split(' ').next().unwrap_or_default());
        assert!(stderr.contains(&name), "{name}: {stderr}");
    }
    let _ = std::fs::remove_file(&tokens);
}

#[test]
fn push_with_a_certificate_but_no_key_fails_naming_the_key() {
    let tokens = temp_config("tls-tokens", "alpha = \"alpha-token-0123456789\"\n");
    let text = format!(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[topics]\ncreate = false\n[push]\ntokens_file = {:?}\ntls_cert_file = \"cert.pem\"\n",
        tokens.display().to_string()
    );
    let path = temp_config("tls", &text);
    let out = hexcast().args(["run", "--config"]).arg(&path).args(["--target", "push"]).output().expect("run");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&tokens);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("push.tls_key_file"), "{stderr}");
}

/// A missing required key (and an unknown one) stops `run` before any side effect: on a real
/// broker, no topic of the run's prefix exists afterwards, while `topics create` with the
/// same configuration does create them (so the check below can see topics).
#[test]
fn run_with_a_missing_or_unknown_key_creates_no_topic() {
    let brokers = std::env::var("HEXCAST_TEST_BROKERS")
        .unwrap_or_else(|_| panic!("HEXCAST_TEST_BROKERS is not set: run scripts/test.sh, which starts Apache Kafka"));
    let prefix = format!("it-nokey-{}-", std::process::id());
    let base = format!("[kafka]\nbrokers = \"{brokers}\"\ntopic_prefix = \"{prefix}\"\n[topics]\ncreate = true\n");
    let kafka = hexcast_runtime::KafkaConfig::new(&brokers);
    let ours = || -> Vec<String> {
        hexcast_runtime::existing_topics(&kafka)
            .expect("cluster metadata")
            .into_iter()
            .filter(|t| t.starts_with(&prefix))
            .collect()
    };
    for (name, extra, key) in [
        ("missing", String::new(), "push.tokens_file"),
        ("unknown", "[push]\ntokens_fiel = \"x\"\n".to_owned(), "tokens_fiel"),
    ] {
        let path = temp_config(name, &format!("{base}{extra}"));
        let out =
            hexcast().args(["run", "--config"]).arg(&path).args(["--target", "ingest,push"]).output().expect("run");
        let _ = std::fs::remove_file(&path);
        assert!(!out.status.success(), "{name}: run must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{name}: {stderr}");
        assert_eq!(ours(), Vec::<String>::new(), "{name}: a topic was created before the key was checked");
    }
    let path = temp_config("create", &base);
    let out = hexcast().args(["topics", "create", "--config"]).arg(&path).output().expect("topics create");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ours().len() >= 10, "topics create made {:?}", ours());
}
