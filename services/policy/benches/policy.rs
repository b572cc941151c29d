//! Records per second of the policy stage on the real Montgomery County export (normalized
//! by the ingest stage, every incident a `new` event, judged at its own reported time;
//! skipped, with a note, when shared/data is not beside the repository): the seed policy,
//! against the same policy with three H3-cell regions and a tenant override as the baseline
//! for what overrides cost.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hexcast_core::{EventKind, IncidentEvent, LatLng, Stage as _, StageCtx, Timestamp};
use hexcast_ingest::{Ingest, RawIncident};
use hexcast_policy::{Policy, PolicyConfig};

const NOW: Timestamp = Timestamp(1_454_284_800_000);

fn montco() -> Option<Vec<IncidentEvent>> {
    let path = hexcast_testdata::try_path("cad/montco_pa_911_2015-12_2016-01.csv")?;
    let payload = std::fs::read(path).ok()?;
    let raw = RawIncident { format: "csv-montco".into(), source: None, payload };
    let incidents = Ingest::default().with_max_payload_bytes(usize::MAX).normalize(&raw, NOW).ok()?.incidents;
    Some(
        incidents
            .into_iter()
            .map(|incident| IncidentEvent { kind: EventKind::New, incident, merged_ids: vec![] })
            .collect(),
    )
}

fn with_overrides() -> PolicyConfig {
    let mut text = include_str!("../seed-policy.toml").to_owned();
    for (i, (lat, lng)) in [(40.12, -75.34), (40.24, -75.65), (40.05, -75.14)].into_iter().enumerate() {
        let cell =
            LatLng::new(lat, lng).map(|p| p.cell(h3o::Resolution::Six)).unwrap_or_else(|_| unreachable!("valid"));
        text.push_str(&format!("\n[[region]]\nname = \"r{i}\"\ncells = [\"{cell}\"]\nmax_age_secs = 1800\n"));
    }
    text.push_str("\n[tenant.strict]\nmin_severity = \"severe\"\n");
    PolicyConfig::parse(&text, "bench").unwrap_or_else(|e| unreachable!("{e}"))
}

fn bench(c: &mut Criterion) {
    let Some(events) = montco() else {
        eprintln!("skipping policy benches: public data not found (HEXCAST_DATA)");
        return;
    };
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(events.len() as u64));
    for (name, cfg) in [("montco/seed", PolicyConfig::seed()), ("montco/seed+regions+tenant", with_overrides())] {
        let mut policy = Policy::new(cfg);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut out = Vec::new();
                for e in &events {
                    let ctx = StageCtx::at(e.incident.updated_at);
                    policy.process(e.clone(), &ctx, &mut out).unwrap_or_else(|e| match e {});
                }
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
