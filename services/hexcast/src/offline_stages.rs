//! `hexcast dedup` and `hexcast policy`: the dedup and policy stages run offline, on JSON
//! lines, with the same code the Kafka targets run. `hexcast normalize ... | hexcast dedup |
//! hexcast policy --policy P` replays an export through the front of the pipeline. Bad
//! lines are reported on stderr with their line number and skipped, never fatal; a summary
//! (JSON) goes to stderr last. They never touch Kafka.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufWriter, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use hexcast_core::{Decision, Incident, IncidentEvent, Stage as _, StageCtx, Timestamp};
use hexcast_dedup::{Dedup, DedupOut};
use hexcast_policy::{Policy, PolicyOut};
use hexcast_proto::v1 as pb;

use crate::config::Config;

/// `hexcast dedup`.
#[derive(Debug, Clone, clap::Args)]
pub struct DedupArgs {
    /// hexcast config file whose `[dedup]` section is used; default: built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `hexcast policy`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Policy file (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// The "now" incidents are judged at: RFC 3339, or `replay` to judge each incident at
    /// its own reported time (its update time), as a live feed would; default: the clock.
    #[arg(long, value_name = "RFC3339|replay")]
    pub now: Option<String>,
    /// Where every decision (the audit records) goes, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    pub decisions: Option<PathBuf>,
}

fn system_now() -> Timestamp {
    hexcast_runtime::clock::now()
}

/// Reads JSON lines from stdin, decoding each with `decode`; a bad line is reported on
/// stderr (line number and error) and counted.
fn for_each_line<T>(
    decode: impl Fn(&str) -> anyhow::Result<T>,
    mut each: impl FnMut(T) -> anyhow::Result<()>,
) -> anyhow::Result<(usize, usize)> {
    let (mut read, mut bad) = (0, 0);
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        read += 1;
        match decode(&line) {
            Ok(v) => each(v)?,
            Err(e) => {
                bad += 1;
                eprintln!("{}", serde_json::json!({"line": n + 1, "error": format!("{e:#}")}));
            }
        }
    }
    Ok((read, bad))
}

fn decode_incident(line: &str) -> anyhow::Result<Incident> {
    let p: pb::Incident = serde_json::from_str(line).context("not an Incident JSON object")?;
    Incident::try_from(p).context("invalid Incident")
}

fn decode_event(line: &str) -> anyhow::Result<IncidentEvent> {
    let p: pb::IncidentEvent = serde_json::from_str(line).context("not an IncidentEvent JSON object")?;
    IncidentEvent::try_from(p).context("invalid IncidentEvent")
}

/// When the source reported an incident: its update time, else its occurrence time.
fn reported_at(i: &Incident) -> Timestamp {
    if i.updated_at.0 != 0 { i.updated_at } else { i.occurred_at }
}

/// The replay clock of `hexcast dedup`: the latest reported time seen so far. A CAD state
/// feed re-sends an active incident with its timestamp unchanged; processed at that old
/// time, its repeats would never refresh dedup's memory and a long incident would come out
/// `new` again once the memory, counted from its first report, ran out. Live, the runner's
/// clock advances the same way.
fn replay_now(clock: &mut Timestamp, i: &Incident) -> Timestamp {
    *clock = (*clock).max(reported_at(i));
    *clock
}

/// Runs `hexcast dedup`: Incident lines in, IncidentEvent lines out. Each report is
/// processed at the latest reported time seen so far (see [`replay_now`]), so the TTL and
/// merge window replay as they would live.
pub fn dedup_cmd(args: DedupArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(p) => Config::load(Some(p), &[])?.dedup,
        None => hexcast_dedup::DedupConfig::default(),
    };
    cfg.validate()?;
    let mut dedup = Dedup::new(cfg);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut outs = Vec::new();
    let mut clock = Timestamp(i64::MIN);
    let (read, bad) = for_each_line(decode_incident, |i| {
        let ctx = StageCtx::at(replay_now(&mut clock, &i));
        outs.clear();
        dedup.process(i, &ctx, &mut outs).unwrap_or_else(|e| match e {});
        let mut emitted = false;
        for o in &outs {
            if let DedupOut::Event(e) = o {
                emitted = true;
                *kinds.entry(e.kind.as_str_name()).or_default() += 1;
                writeln!(out, "{}", serde_json::to_string(&pb::IncidentEvent::from(&**e))?)?;
            }
        }
        if !emitted {
            *kinds.entry("DROPPED").or_default() += 1;
        }
        Ok(())
    })?;
    out.flush()?;
    eprintln!("{}", serde_json::json!({"read": read, "invalid": bad, "events": kinds, "incidents": dedup.incidents()}));
    Ok(())
}

/// Runs `hexcast policy`: IncidentEvent lines in, Alert lines out; decisions to
/// `--decisions`; a summary of decisions per outcome and rule on stderr.
pub fn policy_cmd(args: PolicyArgs) -> anyhow::Result<()> {
    let cfg = crate::targets::load_policy(&args.policy)?;
    let fixed_now = match args.now.as_deref() {
        None => Some(system_now()),
        Some("replay") => None,
        Some(s) => Some(
            hexcast_ingest::parse_rfc3339(s).with_context(|| format!("--now `{s}`: expected RFC 3339 or replay"))?,
        ),
    };
    let mut decisions: Option<Box<dyn std::io::Write>> = match &args.decisions {
        Some(p) => {
            Some(Box::new(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)))
        }
        None => None,
    };
    let mut policy = Policy::new(cfg);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut summary: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut alerts = 0usize;
    let mut outs = Vec::new();
    let (read, bad) = for_each_line(decode_event, |e: IncidentEvent| {
        let now = fixed_now.unwrap_or_else(|| reported_at(&e.incident));
        outs.clear();
        policy.process(e, &StageCtx::at(now), &mut outs).unwrap_or_else(|e| match e {});
        for o in outs.drain(..) {
            match o {
                PolicyOut::Alert(a) => {
                    alerts += 1;
                    writeln!(out, "{}", serde_json::to_string(&pb::Alert::from(&a))?)?;
                }
                PolicyOut::Held(h) => {
                    if let Some(d) = decisions.as_mut() {
                        writeln!(d, "{}", serde_json::json!({"held": pb::HeldAlert::from(&h)}))?;
                    }
                }
                PolicyOut::Decision(d) => {
                    let outcome = match d.decision {
                        Decision::Allowed => "allowed",
                        Decision::Held => "held",
                        Decision::Released => "released",
                        _ => "rejected",
                    };
                    *summary
                        .entry(outcome.to_owned())
                        .or_default()
                        .entry(format!("{}/{}", d.rule, d.reason))
                        .or_default() += 1;
                    if let Some(w) = decisions.as_mut() {
                        let line = serde_json::json!({
                            "incident_id": d.incident_id, "decision": outcome, "rule": d.rule,
                            "reason": d.reason, "category": d.category.as_str(),
                            "decided_at_ms": d.decided_at.0, "alert_id": d.alert_id,
                        });
                        writeln!(w, "{line}")?;
                    }
                }
            }
        }
        Ok(())
    })?;
    out.flush()?;
    if let Some(mut d) = decisions {
        d.flush()?;
    }
    eprintln!("{}", serde_json::json!({"read": read, "invalid": bad, "alerts": alerts, "decisions": summary}));
    Ok(())
}

#[cfg(test)]
mod replay_tests {
    use super::*;
    use hexcast_core::{Certainty, IncidentStatus, LatLng, Severity, Stage, Urgency};
    use hexcast_dedup::DedupConfig;

    fn report(id: &str, updated_h: i64) -> Incident {
        Incident {
            id: format!("pd:{id}"),
            source: "pd".into(),
            source_id: id.into(),
            version: updated_h,
            category: hexcast_core::Category::parse("crime.robbery").expect("known"),
            raw_type: String::new(),
            severity: Severity::Severe,
            urgency: Urgency::Unspecified,
            certainty: Certainty::Unspecified,
            status: IncidentStatus::Active,
            occurred_at: Timestamp(updated_h * 3_600_000),
            updated_at: Timestamp(updated_h * 3_600_000),
            expires_at: None,
            location: Some(LatLng::new(40.0 + updated_h as f64 * 0.01, -75.0).expect("valid")),
            areas: Vec::new(),
            sensitive: Default::default(),
            references: None,
            community_threat: Some(true),
            published_at: None,
        }
    }

    /// A state feed replayed: incident A (reported at hour 0) re-sent unchanged with every
    /// hourly poll for 30 hours, next to a fresh incident each hour. A is new once.
    #[test]
    fn replayed_state_feed_keeps_a_long_incident_in_memory() {
        let mut d = Dedup::new(DedupConfig::default());
        let mut clock = Timestamp(i64::MIN);
        let mut news = Vec::new();
        for h in 0..30 {
            for i in [report("A", 0), report(&format!("n{h}"), h)] {
                let mut out = Vec::new();
                let ctx = StageCtx::at(replay_now(&mut clock, &i));
                d.process(i, &ctx, &mut out).unwrap_or_else(|e| match e {});
                news.extend(out.iter().filter_map(|o| match o {
                    DedupOut::Event(e) if e.kind == hexcast_core::EventKind::New => Some(e.incident.id.clone()),
                    _ => None,
                }));
            }
        }
        assert_eq!(news.iter().filter(|id| *id == "pd:A").count(), 1, "{news:?}");
        assert_eq!(clock, Timestamp(29 * 3_600_000));
    }
}
