//! Where tests, benches and the bench tool find the public data sets (real 911 exports,
//! CAP alerts, EIDO samples, neighborhood polygons). They are third-party data and not in the repository:
//! `HEXCAST_DATA` names the folder that holds `cad/`, `cap/`, `eido/` and `geofence/`
//! (absolute, or relative to the workspace root); without it, `../shared/data` beside the
//! checkout. A test that needs a file that is not there fails with one line saying what is
//! missing and where it comes from; unit tests (`cargo test --lib`) never need it.

use std::path::{Path, PathBuf};

/// The environment variable that names the data folder.
pub const ENV: &str = "HEXCAST_DATA";

/// The workspace root (this crate lives in `services/testdata`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The data folder: `HEXCAST_DATA`, or `../shared/data` beside the workspace.
pub fn dir() -> PathBuf {
    match std::env::var_os(ENV) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if p.is_absolute() { p } else { workspace_root().join(p) }
        }
        _ => workspace_root().join("../shared/data"),
    }
}

/// `rel` inside the data folder, if it exists.
pub fn try_path(rel: &str) -> Option<PathBuf> {
    let p = dir().join(rel);
    p.exists().then_some(p)
}

/// `rel` inside the data folder. Panics with one line naming what is missing when it is
/// not there: a test that needs the data must not pass without it.
pub fn path(rel: &str) -> PathBuf {
    try_path(rel).unwrap_or_else(|| panic!("{}", missing(rel)))
}

/// The one-line explanation of a missing data file.
pub fn missing(rel: &str) -> String {
    format!(
        "public test data missing: {} not found; set {ENV} to the folder holding cad/, cap/, eido/ and geofence/ \
         (the data sets are listed in docs/TESTING.md, section \"Public data\")",
        dir().join(rel).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_in_one_line() {
        let m = missing("cad/nope.csv");
        assert!(m.contains("cad/nope.csv") && m.contains(ENV) && !m.contains('\n'), "{m}");
        assert!(try_path("definitely/not/here.csv").is_none());
    }
}
