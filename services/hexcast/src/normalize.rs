//! `hexcast normalize`: runs the ingest stage's parsers on local files, offline, and prints
//! each normalized Incident as one line of canonical proto JSON on stdout and each dead letter
//! as one JSON line on `--deadletter` (default stderr), then `read N, normalized M,
//! dead-lettered K` on stderr. N counts rows (CSV/JSON mappings) or records, M incidents (rows
//! grouped by incident number make fewer), K rows or records rejected. It never touches
//! Kafka, and it exits non-zero only when misused or when a file cannot be read: bad data is
//! reported, not fatal.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use hexcast_core::{ReasonCode, Timestamp};
use hexcast_ingest::{Ingest, Mapping, MappingKind, RawIncident};

/// Feed formats the command reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NormalizeFormat {
    /// CAP 1.0-1.2 XML, bare or in Atom, RSS or EDXL-DE; one document per file.
    Cap,
    /// NENA EIDO JSON; one document per file.
    Eido,
    /// hexcast's own CAD JSON: one object per file, or one per line (JSON Lines).
    CadJson,
    /// A CSV export read with `--mapping`.
    Csv,
    /// A JSON feed read with `--mapping`.
    Json,
}

/// `hexcast normalize`.
#[derive(Debug, Clone, clap::Args)]
pub struct NormalizeArgs {
    /// Feed format of every FILE.
    #[arg(long, value_enum)]
    pub format: NormalizeFormat,
    /// Mapping for csv/json: a mapping file (TOML) or a built-in mapping name (montco, sf-fire).
    #[arg(long, value_name = "FILE|NAME")]
    pub mapping: Option<String>,
    /// Producer name (the `hexcast-source` header); default: from the payload or mapping.
    #[arg(long)]
    pub source: Option<String>,
    /// The "now" times are checked against (RFC 3339); default: the system clock.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// Where dead letters go, one JSON object per line; default: stderr.
    #[arg(long, value_name = "FILE")]
    pub deadletter: Option<PathBuf>,
    /// Input files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Running totals for the summary line.
#[derive(Debug, Default)]
struct Totals {
    read: usize,
    normalized: usize,
    dead: usize,
}

fn system_now() -> Timestamp {
    hexcast_runtime::clock::now()
}

/// The stage and the `hexcast-format` value for the arguments.
fn stage_and_format(args: &NormalizeArgs) -> anyhow::Result<(Ingest, String)> {
    // Offline runs read whole exports; the stage's per-record cap is for Kafka records.
    let ingest = Ingest::default().with_max_payload_bytes(usize::MAX);
    let kind = match args.format {
        NormalizeFormat::Cap => return Ok((ingest, "cap-xml".to_owned())),
        NormalizeFormat::Eido => return Ok((ingest, "eido-json".to_owned())),
        NormalizeFormat::CadJson => return Ok((ingest, "cad-json".to_owned())),
        NormalizeFormat::Csv => MappingKind::Csv,
        NormalizeFormat::Json => MappingKind::Json,
    };
    let prefix = if kind == MappingKind::Csv { "csv" } else { "json" };
    let mapping = args.mapping.as_deref().context("--mapping is required with --format csv or json")?;
    if Path::new(mapping).is_file() {
        let text = std::fs::read_to_string(mapping).with_context(|| format!("reading mapping file {mapping}"))?;
        let m = Mapping::parse(&text, mapping)?;
        anyhow::ensure!(m.kind == kind, "mapping file {mapping}: kind does not match --format {prefix}");
        let format = format!("{prefix}-{}", m.name);
        return Ok((ingest.with_mapping(m), format));
    }
    anyhow::ensure!(
        ingest.has_mapping(mapping, kind),
        "--mapping {mapping}: no such file, and no built-in {prefix} mapping of that name (built-in: {})",
        ingest.mapping_names().collect::<Vec<_>>().join(", ")
    );
    Ok((ingest, format!("{prefix}-{mapping}")))
}

/// The records of one file: JSON Lines for cad-json when the file is not one JSON value.
fn records(format: NormalizeFormat, bytes: Vec<u8>) -> Vec<Vec<u8>> {
    if format == NormalizeFormat::CadJson && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
        return bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(<[u8]>::to_vec)
            .collect();
    }
    vec![bytes]
}

/// Runs `hexcast normalize`.
#[allow(clippy::print_stdout)]
pub fn run(args: NormalizeArgs) -> anyhow::Result<()> {
    let now = match &args.now {
        Some(s) => hexcast_ingest::parse_rfc3339(s).with_context(|| format!("--now `{s}`: expected RFC 3339"))?,
        None => system_now(),
    };
    let (ingest, format) = stage_and_format(&args)?;
    let mut dead: Box<dyn Write> = match &args.deadletter {
        Some(p) => Box::new(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => Box::new(std::io::stderr()),
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut totals = Totals::default();
    for path in &args.files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for (n, payload) in records(args.format, bytes).into_iter().enumerate() {
            let raw = RawIncident { format: format.clone(), source: args.source.clone(), payload };
            let file = path.display().to_string();
            match ingest.normalize(&raw, now) {
                Ok(result) => {
                    totals.read += result.rows;
                    totals.normalized += result.incidents.len();
                    totals.dead += result.row_errors.len();
                    for i in &result.incidents {
                        let json = serde_json::to_string(&hexcast_proto::v1::Incident::from(i))?;
                        writeln!(out, "{json}")?;
                    }
                    for e in &result.row_errors {
                        let line = serde_json::json!({
                            "file": file, "record": n + 1, "row": e.row,
                            "reason": e.error.reason_code(), "error": e.error.to_string(),
                        });
                        writeln!(dead, "{line}")?;
                    }
                }
                Err(e) => {
                    totals.read += 1;
                    totals.dead += 1;
                    let line = serde_json::json!({
                        "file": file, "record": n + 1, "reason": e.reason_code(), "error": e.to_string(),
                    });
                    writeln!(dead, "{line}")?;
                }
            }
        }
    }
    out.flush()?;
    dead.flush()?;
    eprintln!("read {}, normalized {}, dead-lettered {}", totals.read, totals.normalized, totals.dead);
    Ok(())
}
