//! `hexcast-fuzz-seeds`: writes the seed corpora of the cargo-fuzz targets (fuzz/) from the
//! public data in the folder `HEXCAST_DATA` names (read through `hexcast-testdata`) at fuzz
//! time, so none of it is copied into the repo.
//! Feed targets get the files themselves (CSV exports cut into small chunks); protobuf
//! targets get the records the pipeline's own stages make from that data.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_core::{NotificationBatch, Stage as _, StageCtx, Timestamp};
use hexcast_dedup::{Dedup, DedupConfig};
use hexcast_ingest::{Ingest, RawIncident};
use hexcast_policy::{Policy, PolicyConfig, PolicyOut};
use hexcast_proto::v1 as pb;
use hexcast_spatial::Spatial;
use prost::Message as _;

#[derive(Debug, Parser)]
struct Args {
    /// The public data folder (default: `HEXCAST_DATA`, see `hexcast-testdata`).
    #[arg(long, default_value_os_t = hexcast_testdata::dir())]
    data: PathBuf,
    /// Output: one folder per fuzz target.
    #[arg(long, default_value = "fuzz/corpus")]
    out: PathBuf,
}

struct Out {
    dir: PathBuf,
    n: usize,
}

impl Out {
    fn put(&mut self, target: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let d = self.dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{:05}", self.n)), bytes)?;
        self.n += 1;
        Ok(())
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.data.is_dir(), "{}: not a folder (the shared data)", args.data.display());
    let mut out = Out { dir: args.out.clone(), n: 0 };
    // 2027-01-15: the same fixed "now" as the fuzz targets.
    let now = Timestamp(1_800_000_000_000);
    let ingest = Ingest::default().with_max_payload_bytes(usize::MAX);
    let mut raws: Vec<RawIncident> = Vec::new();
    let raw =
        |format: &str, payload: Vec<u8>| RawIncident { format: format.into(), source: Some("seed".into()), payload };

    for p in files(&args.data.join("cap")) {
        let bytes = std::fs::read(&p)?;
        out.put("ingest_cap_xml", &bytes)?;
        raws.push(raw("cap-xml", bytes));
    }
    for p in files(&args.data.join("eido")) {
        let bytes = std::fs::read(&p)?;
        out.put("ingest_eido_json", &bytes)?;
        raws.push(raw("eido-json", bytes));
    }
    for (file, selector, format) in [
        ("cad/montco_pa_911_2015-12_2016-01.csv", 0u8, "csv-montco"),
        ("cad/sf_fire_calls_for_service_2016-12-31_2017-01-07.csv", 1u8, "csv-sf-fire"),
    ] {
        let path = args.data.join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let rows: Vec<&str> = lines.collect();
        // Small chunks: libFuzzer mutates small inputs far better than megabytes.
        for chunk in rows.chunks(8).step_by(97).take(40) {
            let mut body = String::from(header);
            for r in chunk {
                body.push('\n');
                body.push_str(r);
            }
            let mut seed = vec![selector];
            seed.extend_from_slice(body.as_bytes());
            out.put("ingest_csv_mapping", &seed)?;
            raws.push(raw(format, body.into_bytes()));
        }
    }

    // The protobuf targets: what the stages make of that data.
    let geo = GeoConfig::default();
    let spatial = Spatial::new(geo, 6);
    let mut dedup = Dedup::new(DedupConfig::default());
    let mut policy = Policy::new(PolicyConfig::seed());
    let ctx = StageCtx::at(now);
    for r in &raws {
        let Ok(n) = ingest.normalize(r, now) else { continue };
        for mut incident in n.incidents.into_iter().take(4) {
            // Recent enough for the policy's age rule, so that alerts come out.
            incident.occurred_at = now;
            out.put("decode_incident", &pb::Incident::from(&incident).encode_to_vec())?;
            let mut events = Vec::new();
            let _ = dedup.process(incident, &ctx, &mut events);
            for e in events {
                let hexcast_dedup::DedupOut::Event(e) = e else { continue };
                let e = *e;
                out.put("decode_incident_event", &pb::IncidentEvent::from(&e).encode_to_vec())?;
                let mut outs = Vec::new();
                let _ = policy.process(e, &ctx, &mut outs);
                for o in outs {
                    let PolicyOut::Alert(a) = o else { continue };
                    out.put("decode_alert", &pb::Alert::from(&a).encode_to_vec())?;
                    let batch = NotificationBatch {
                        alert: a.clone(),
                        tenant: "alpha".into(),
                        subscriber_ids: vec!["s-1".into(), "s-2".into()],
                        part: 0,
                        parts: 1,
                        request: None,
                        nearby_assets: Vec::new(),
                        language: a.language.clone(),
                        deferred_from: None,
                    };
                    out.put("decode_notification_batch", &pb::NotificationBatch::from(&batch).encode_to_vec())?;
                    for ia in spatial.index(a).into_iter().flatten().take(2) {
                        out.put("decode_indexed_alert", &pb::IndexedAlert::from(&ia).encode_to_vec())?;
                    }
                }
            }
        }
    }

    // Subscriptions: neighborhoods of the geofence data as API polygons, and their stored form.
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards: 6 };
    for p in
        files(&args.data.join("geofence")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "geojson")).take(4)
    {
        let text = std::fs::read_to_string(&p)?;
        let Ok(shapes) = hexcast::geojson::parse(&text) else { continue };
        for (i, poly) in shapes.into_iter().flat_map(|s| s.polygons).step_by(7).take(10).enumerate() {
            let area = hexcast_core::Area::Polygon(poly);
            let api = pb::Subscription {
                subscriber_id: format!("n-{i}"),
                areas: vec![pb::Area::from(&area)],
                ..Default::default()
            };
            out.put("api_subscription", &pb::UpsertRequest { subscription: Some(api.clone()) }.encode_to_vec())?;
            if let Ok(stored) =
                hexcast_api::subscriptions::stored_subscription(&geo, &shard_map, 20_000, "alpha", api, now)
            {
                out.put("decode_subscription", &pb::Subscription::from(&stored).encode_to_vec())?;
            }
        }
    }
    println!("{} seeds written under {}", out.n, args.out.display());
    Ok(())
}
