//! The ingest configuration's one error type, shared by the config, the mapping files and
//! the geocode table.

use std::path::PathBuf;

/// Why the ingest configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum IngestConfigError {
    /// A file or directory could not be read.
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A mapping file is invalid.
    #[error("mapping file {file}: key `{key}`: {detail}")]
    Mapping { file: String, key: String, detail: String },
    /// The geocode file is not a usable GeoJSON table.
    #[error("config key `ingest.geocodes_file` ({path}): {detail}")]
    Geocodes { path: PathBuf, detail: String },
    /// Two files declare the same mapping name.
    #[error("mapping name `{name}` declared by both {first} and {second}")]
    DuplicateName { name: String, first: String, second: String },
}
