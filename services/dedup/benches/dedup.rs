//! Records per second of the dedup stage on the real Montgomery County export (normalized by
//! the ingest stage; skipped, with a note, when shared/data is not beside the repository):
//! first sight of every report, exact repeats of remembered ones, and cross-source merging
//! against the same stream with merging off as the baseline. All at one `now`, so the state
//! grows to the whole export (9,224 reports; 18,448 with two sources).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hexcast_core::{Incident, Stage as _, StageCtx, Timestamp};
use hexcast_dedup::{Dedup, DedupConfig};
use hexcast_ingest::{Ingest, RawIncident};

const NOW: Timestamp = Timestamp(1_454_284_800_000);

fn montco() -> Option<Vec<Incident>> {
    let path = hexcast_testdata::try_path("cad/montco_pa_911_2015-12_2016-01.csv")?;
    let payload = std::fs::read(path).ok()?;
    let raw = RawIncident { format: "csv-montco".into(), source: None, payload };
    Some(Ingest::default().with_max_payload_bytes(usize::MAX).normalize(&raw, NOW).ok()?.incidents)
}

/// Every report twice, the copy from a second source: merging has work on every record.
fn two_sources(incidents: &[Incident]) -> Vec<Incident> {
    let mut out = Vec::with_capacity(incidents.len() * 2);
    for i in incidents {
        out.push(i.clone());
        let mut j = i.clone();
        j.source = "second".into();
        j.id = Incident::make_id("second", &j.source_id);
        j.location = j.location.map(|l| l.destination(45.0, 120.0));
        out.push(j);
    }
    out
}

/// Every record at the same `now`: nothing expires, so the state holds every report.
fn run(d: &mut Dedup, inputs: Vec<Incident>) -> usize {
    let mut out = Vec::new();
    let ctx = StageCtx::at(NOW);
    for i in inputs {
        d.process(i, &ctx, &mut out).unwrap_or_else(|e| match e {});
    }
    out.len()
}

fn bench(c: &mut Criterion) {
    let Some(incidents) = montco() else {
        eprintln!("skipping dedup benches: public data not found (HEXCAST_DATA)");
        return;
    };
    let n = incidents.len() as u64;
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(n));
    group.bench_function("montco/first-sight", |b| {
        b.iter_batched(
            || (Dedup::new(DedupConfig::default()), incidents.clone()),
            |(mut d, i)| run(&mut d, i),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("montco/exact-repeats", |b| {
        b.iter_batched(
            || {
                let mut d = Dedup::new(DedupConfig::default());
                run(&mut d, incidents.clone());
                (d, incidents.clone())
            },
            |(mut d, i)| run(&mut d, i),
            BatchSize::LargeInput,
        )
    });
    let doubled = two_sources(&incidents);
    group.throughput(Throughput::Elements(doubled.len() as u64));
    for (name, merge) in [("montco-x2/merge-on", true), ("montco-x2/merge-off", false)] {
        let cfg = DedupConfig { merge, ..DedupConfig::default() };
        group.bench_function(name, |b| {
            b.iter_batched(
                || (Dedup::new(cfg.clone()), doubled.clone()),
                |(mut d, i)| run(&mut d, i),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
