//! `hexcast bench shards`: how one city's subscribers spread over the matcher shards under
//! a shard scheme, on the `bench match` population (70% home circles of 0.4-3 km, 20%
//! neighborhood polygons, 10% several places) built city by city. A city-wide alert is
//! matched, for each subscriber, by the subscriber's home shard (`owner_shard`), so the
//! busiest shard's share of a city's subscribers bounds how far the city's fan-out spreads
//! over instances and cores: 1/shards at best, 1 when the city is one shard. Also reported:
//! stored copies per subscriber (a subscription is stored in every shard its places touch,
//! so finer territories cost memory and records). Counts only, no timing: the build
//! profile does not matter.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use h3o::Resolution;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_match::index::shards_of;

use crate::population::{cities, default_geofence, population};

/// Arguments of `hexcast bench shards`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShardsBenchArgs {
    /// Subscribers generated per city.
    #[arg(long, default_value_t = 20_000)]
    pub per_city: usize,
    /// Shard counts to report.
    #[arg(long, value_delimiter = ',', default_values_t = [6u32, 24])]
    pub shards: Vec<u32>,
    /// Territory resolutions to report (today's default: 3).
    #[arg(long, value_delimiter = ',', default_values_t = [3u8, 4, 5, 6])]
    pub territory_res: Vec<u8>,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Folder of neighborhood GeoJSON files (default: `geofence/click_that_hood` in the
    /// public data folder, `HEXCAST_DATA`).
    #[arg(long, default_value_os_t = default_geofence())]
    pub geofence: PathBuf,
}

/// Runs the measurement and returns its JSON report.
pub fn run(args: &ShardsBenchArgs) -> anyhow::Result<serde_json::Value> {
    let geo = GeoConfig::default();
    let cities = cities(&args.geofence)?;
    let mut rows = Vec::new();
    for (ci, city) in cities.iter().enumerate() {
        let subs = population(std::slice::from_ref(city), args.per_city, &geo, args.seed + ci as u64)?;
        for &shards in &args.shards {
            for &res in &args.territory_res {
                let map = ShardMap { territory_res: Resolution::try_from(res)?, shards };
                let mut home = vec![0usize; shards as usize];
                let mut copies = 0usize;
                let mut touched = vec![false; shards as usize];
                for s in &subs {
                    let (h, all) = shards_of(&s.places, &map);
                    home[h as usize] += 1;
                    copies += all.len();
                    for x in all {
                        touched[x as usize] = true;
                    }
                }
                let busiest = home.iter().copied().max().unwrap_or(0);
                rows.push(serde_json::json!({
                    "city": city.name,
                    "scheme": format!("territory_res_{res}"),
                    "shards": shards,
                    "shards_with_home_subscribers": home.iter().filter(|&&n| n > 0).count(),
                    "shards_touched": touched.iter().filter(|&&t| t).count(),
                    "busiest_shard_share": round(busiest as f64 / subs.len().max(1) as f64),
                    "copies_per_subscriber": round(copies as f64 / subs.len().max(1) as f64),
                }));
            }
            // Subscribers hashed across the shards by key, alerts sent to every shard.
            let mut home = vec![0usize; shards as usize];
            for s in &subs {
                home[hexcast_core::cells::partition_for_key(&s.key(), shards) as usize] += 1;
            }
            let busiest = home.iter().copied().max().unwrap_or(0);
            rows.push(serde_json::json!({
                "city": city.name,
                "scheme": "subscriber_hash",
                "shards": shards,
                "shards_with_home_subscribers": home.iter().filter(|&&n| n > 0).count(),
                "shards_touched": shards,
                "busiest_shard_share": round(busiest as f64 / subs.len().max(1) as f64),
                "copies_per_subscriber": 1.0,
            }));
        }
    }
    Ok(serde_json::json!({ "per_city": args.per_city, "seed": args.seed, "rows": rows }))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
