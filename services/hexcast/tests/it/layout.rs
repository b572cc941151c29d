//! The layout's rules, checked on the sources: stage crates never depend on Kafka or gRPC
//! clients, only the runtime (and the bench tool's perf-tool driver) names rdkafka, the web
//! console reads and writes only through the runtime and the API's Review service, and no
//! two files of one crate import each other in a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn services() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn crates() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(services())
        .expect("services folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("Cargo.toml").exists())
        .map(|p| (p.file_name().expect("name").to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    out
}

/// The `[dependencies]` names of a crate's manifest.
fn dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).expect("manifest");
    let mut in_deps = false;
    let mut deps = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && let Some((name, _)) = line.split_once('=') {
            deps.insert(name.trim().trim_end_matches(".workspace").to_owned());
        }
    }
    deps
}

#[test]
fn stage_crates_depend_on_neither_kafka_nor_grpc() {
    let stages = ["core", "ingest", "dedup", "policy", "spatial", "match", "review"];
    let found: Vec<String> = crates().into_iter().map(|(n, _)| n).collect();
    for stage in stages {
        assert!(found.contains(&stage.to_owned()), "services/{stage} is gone: update this test");
        let deps = dependencies(&services().join(stage).join("Cargo.toml"));
        for banned in
            ["rdkafka", "tonic", "tonic-health", "tonic-reflection", "tokio", "hexcast-runtime", "hexcast-api"]
        {
            assert!(!deps.contains(banned), "services/{stage} depends on {banned}");
        }
        // hexcast-proto only without its gRPC feature.
        let manifest = std::fs::read_to_string(services().join(stage).join("Cargo.toml")).expect("manifest");
        assert!(!manifest.contains("features = [\"grpc\"]"), "services/{stage} enables gRPC code");
    }
}

#[test]
fn the_console_depends_on_no_kafka_client_and_no_stage_but_the_review_queue() {
    let deps = dependencies(&services().join("console").join("Cargo.toml"));
    for banned in [
        "rdkafka",
        "tonic",
        "hexcast-ingest",
        "hexcast-dedup",
        "hexcast-policy",
        "hexcast-spatial",
        "hexcast-match",
        "hexcast",
    ] {
        assert!(!deps.contains(banned), "services/console depends on {banned}");
    }
    // What it may use instead: the runtime's followers, the Review service, the queue's types.
    for needed in ["hexcast-runtime", "hexcast-api", "hexcast-review"] {
        assert!(deps.contains(needed), "services/console no longer uses {needed}: update this test");
    }
}

#[test]
fn only_the_runtime_and_the_bench_tool_name_rdkafka() {
    for (name, dir) in crates() {
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source");
            if text.contains("rdkafka::") {
                assert!(name == "runtime" || name == "bench", "{} talks to Kafka outside the runtime", f.display());
            }
        }
    }
}

#[test]
fn no_crate_has_an_import_cycle_between_its_files() {
    for (name, dir) in crates() {
        let src = dir.join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        // Edges between top-level modules (a file and its child files are one module).
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            let rel = f.strip_prefix(&src).expect("under src");
            let module = rel.components().next().expect("component").as_os_str().to_string_lossy();
            let module = module.trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            // Code only: a doc link is not an import.
            let text: String = std::fs::read_to_string(f)
                .expect("source")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let target: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let braces = rest.starts_with('{');
                if !target.is_empty() && target != module && !braces {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
        // Depth-first search for a back edge.
        fn visit(
            m: &str,
            edges: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| p == m) {
                return Some(path[at..].to_vec());
            }
            if done.contains(m) {
                return None;
            }
            path.push(m.to_owned());
            for next in edges.get(m).into_iter().flatten() {
                if let Some(cycle) = visit(next, edges, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(m.to_owned());
            None
        }
        let mut done = BTreeSet::new();
        for m in edges.keys() {
            let cycle = visit(m, &edges, &mut Vec::new(), &mut done);
            assert!(cycle.is_none(), "services/{name}: import cycle {:?}", cycle.unwrap_or_default());
        }
    }
}

#[test]
fn the_architecture_doc_shows_the_topology_table() {
    let doc = std::fs::read_to_string(services().join("../docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    for spec in hexcast_core::topology::STAGES {
        let row = doc
            .lines()
            .find(|l| l.starts_with("| ") && l.contains(&format!("`{}`", spec.source)))
            .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no topology row for {}", spec.source));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells.get(2), Some(&spec.input.base_name()), "input of {}: {row}", spec.name);
        for out in spec.outputs.iter().filter(|t| **t != hexcast_core::Topic::DeadLetter) {
            assert!(cells.get(3).is_some_and(|c| c.contains(out.base_name())), "{} writes {out}: {row}", spec.name);
        }
        if let Some(c) = spec.changelog {
            assert_eq!(cells.get(4), Some(&c.base_name()), "changelog of {}: {row}", spec.name);
        }
        assert!(services().join("..").join(spec.source).exists(), "{} does not exist", spec.source);
    }
}
