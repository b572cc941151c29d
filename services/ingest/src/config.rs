//! `[ingest]` configuration and the loading of mapping files at start-up. Every mapping file
//! is read and validated once, here; a bad one stops the process naming the file and the
//! key. Nothing in this module runs per record.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::error::IngestConfigError;
use crate::mapping::Mapping;

fn default_max_payload() -> NonZeroUsize {
    NonZeroUsize::new(crate::MAX_PAYLOAD_BYTES).unwrap_or(NonZeroUsize::MIN)
}

/// `[ingest]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Directory of extra mapping files (`*.toml`); the built-in ones are always loaded, and
    /// a file with the same `name` replaces a built-in mapping.
    #[serde(default)]
    pub mappings_dir: Option<PathBuf>,
    /// Largest raw payload accepted; bigger ones are dead-lettered `oversized_payload`.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: NonZeroUsize,
    /// GeoJSON file of areas by SAME, UGC and FIPS code, for CAP alerts whose areas carry
    /// only geocodes (see `docs/ingest-mappings.md`). Read once at start.
    #[serde(default)]
    pub geocodes_file: Option<PathBuf>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { mappings_dir: None, max_payload_bytes: default_max_payload(), geocodes_file: None }
    }
}

/// Loads and validates every `*.toml` in `dir`, in file-name order.
pub(crate) fn load_dir(dir: Option<&Path>) -> Result<Vec<Mapping>, IngestConfigError> {
    let Some(dir) = dir else { return Ok(Vec::new()) };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IngestConfigError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    let mut out: Vec<(Mapping, String)> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let file = path.display().to_string();
        let m = Mapping::parse(&text, &file)?;
        if let Some((_, first)) = out.iter().find(|(o, _)| o.name == m.name) {
            return Err(IngestConfigError::DuplicateName { name: m.name, first: first.clone(), second: file });
        }
        out.push((m, file));
    }
    Ok(out.into_iter().map(|(m, _)| m).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: IngestConfig = toml::from_str("").expect("empty");
        assert_eq!(c, IngestConfig::default());
        assert_eq!(c.max_payload_bytes.get(), 1024 * 1024);
        let e = toml::from_str::<IngestConfig>("max_payload = 3").expect_err("unknown key").to_string();
        assert!(e.contains("max_payload"), "{e}");
        assert!(toml::from_str::<IngestConfig>("max_payload_bytes = 0").is_err());
    }

    #[test]
    fn a_bad_mapping_file_fails_naming_file_and_key() {
        let dir = std::env::temp_dir().join(format!("hexcast-ingest-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let good = crate::mapping::tests::MINIMAL.replace("name = \"mini\"", "name = \"agency\"");
        std::fs::write(dir.join("a.toml"), &good).expect("write");
        let bad = good.replace("name = \"agency\"", "name = \"other\"").replace("crime.robbery", "crime.robery");
        std::fs::write(dir.join("b.toml"), bad).expect("write");
        let cfg = IngestConfig { mappings_dir: Some(dir.clone()), ..IngestConfig::default() };
        let e = crate::Ingest::new(&cfg).expect_err("bad category").to_string();
        assert!(e.contains("b.toml") && e.contains("categories") && e.contains("crime.robery"), "{e}");
        std::fs::remove_file(dir.join("b.toml")).expect("rm");
        let ingest = crate::Ingest::new(&cfg).expect("good");
        assert!(ingest.mapping_names().any(|n| n == "agency"));
        assert!(ingest.mapping_names().any(|n| n == "montco"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
