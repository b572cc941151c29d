//! `hexcast bench match`: the matcher benchmark on a realistic population, with its
//! baselines measured in the same run. Subscribers cluster around the real neighborhoods
//! in the shared GeoJSON (Seattle, San Francisco, Philadelphia, New Orleans, Detroit,
//! Dallas, New York): 70% home circles of 0.4-3 km, 20% neighborhood polygons, 10% several
//! places. Prints one JSON object.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use h3o::{CellIndex, Resolution};
use hexcast_core::cells::{GeoConfig, ShardMap, area_cells, cover};
use hexcast_core::{Alert, Area, Category, IndexedAlert, LatLng, Place, Subscription, Timestamp};
use hexcast_match::SubscriberIndex;
use hexcast_match::index::place_meets;
use hexcast_spatial::Spatial;
use rand::{Rng as _, SeedableRng as _};

/// Arguments of `hexcast bench match`.
#[derive(Debug, Clone, clap::Args)]
pub struct MatchBenchArgs {
    /// Subscribers in the main population.
    #[arg(long, default_value_t = 1_000_000)]
    pub subscribers: usize,
    /// Subscribers in the population the baselines (brute force, one hash map of
    /// uncompacted cells) are compared on; the index is measured on it too.
    #[arg(long, default_value_t = 100_000)]
    pub baseline_subscribers: usize,
    /// Alerts per query kind.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Only these query kinds (comma-separated: circle_400m, circle_1600m, circle_10km,
    /// city_wide_polygon, neighborhoods_multipolygon); all when empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Folder of neighborhood GeoJSON files (default: `geofence/click_that_hood` in the
    /// public data folder, `HEXCAST_DATA`).
    #[arg(long, default_value_os_t = default_geofence())]
    pub geofence: PathBuf,
}

/// A city: its neighborhoods.
pub struct City {
    /// File stem.
    pub name: String,
    /// Neighborhood polygons.
    pub hoods: Vec<geo::Polygon<f64>>,
    /// Neighborhood centroids.
    pub centers: Vec<LatLng>,
}

fn ring_centroid(p: &geo::Polygon<f64>) -> Option<LatLng> {
    let pts = &p.exterior().0;
    let n = pts.len().max(1) as f64;
    let (x, y) = pts.iter().fold((0.0, 0.0), |(x, y), c| (x + c.x, y + c.y));
    LatLng::new(y / n, x / n).ok()
}

/// Loads the cities.
/// The neighborhood polygons of the public data folder (`HEXCAST_DATA`, see
/// `hexcast-testdata`).
pub fn default_geofence() -> PathBuf {
    hexcast_testdata::dir().join("geofence/click_that_hood")
}

pub fn cities(dir: &PathBuf) -> anyhow::Result<Vec<City>> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading the neighborhood polygons in {} (pass --geofence, or set {} to the public data folder)",
                dir.display(),
                hexcast_testdata::ENV
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "geojson"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)?;
        let hoods: Vec<geo::Polygon<f64>> =
            hexcast::geojson::parse(&text)?.into_iter().flat_map(|s| s.polygons).collect();
        let centers = hoods.iter().filter_map(ring_centroid).collect();
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        out.push(City { name, hoods, centers });
    }
    anyhow::ensure!(!out.is_empty(), "no GeoJSON in {}", dir.display());
    Ok(out)
}

/// A realistic population of stored subscriptions.
pub fn population(cities: &[City], n: usize, geo: &GeoConfig, seed: u64) -> anyhow::Result<Vec<Subscription>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Each neighborhood's cells are computed once and shared by the subscribers choosing it.
    let mut hood_cells: HashMap<(usize, usize), Vec<CellIndex>> = HashMap::new();
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        let ci = rng.random_range(0..cities.len());
        let city = &cities[ci];
        let near = |rng: &mut rand::rngs::StdRng| {
            let c = city.centers[rng.random_range(0..city.centers.len())];
            c.destination(rng.random_range(0.0..360.0), rng.random::<f64>().sqrt() * 1_500.0)
        };
        let roll: f64 = rng.random();
        let places = if roll < 0.7 {
            vec![Place::Disc { cell: near(&mut rng).cell(geo.precision), radius_m: rng.random_range(400.0..3_000.0) }]
        } else if roll < 0.9 {
            let hi = rng.random_range(0..city.hoods.len());
            let cells = match hood_cells.get(&(ci, hi)) {
                Some(c) => c.clone(),
                None => {
                    // Borough-sized areas (New York's) are not neighborhoods: past 5,000 cells
                    // the subscriber gets a point instead.
                    let c: Vec<CellIndex> =
                        area_cells(&Area::Polygon(city.hoods[hi].clone()), geo.polygon_precision, 5_000)
                            .map(|v| v.into_iter().map(|(c, _)| c).collect())
                            .unwrap_or_default();
                    hood_cells.insert((ci, hi), c.clone());
                    c
                }
            };
            if cells.is_empty() {
                vec![Place::Disc { cell: near(&mut rng).cell(geo.precision), radius_m: 0.0 }]
            } else {
                vec![Place::Cells(cells)]
            }
        } else {
            (0..rng.random_range(2..=3))
                .map(|_| Place::Disc {
                    cell: near(&mut rng).cell(geo.precision),
                    radius_m: if rng.random_bool(0.5) { 0.0 } else { rng.random_range(200.0..1_000.0) },
                })
                .collect()
        };
        subs.push(Subscription {
            tenant: format!("tenant-{}", i % 4),
            subscriber_id: format!("s{i}"),
            places,
            filter: Default::default(),
            shards: vec![],
            updated_at: Timestamp(0),
            delivery: Default::default(),
        });
    }
    Ok(subs)
}

fn alert(id: usize, target: Area) -> anyhow::Result<Alert> {
    Ok(Alert::synthetic(&format!("bench-{id}@1"), Category::parse("crime.robbery")?, target))
}

struct Stats {
    p50_us: f64,
    p99_us: f64,
    mean_matches: f64,
    matches_per_sec: f64,
}

fn measure(queries: &[Alert], mut run: impl FnMut(&Alert) -> anyhow::Result<usize>) -> anyhow::Result<Stats> {
    let mut lat = Vec::with_capacity(queries.len());
    let mut total = 0usize;
    let start = Instant::now();
    for q in queries {
        let t = Instant::now();
        total += run(q)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    Ok(Stats {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        mean_matches: total as f64 / queries.len().max(1) as f64,
        matches_per_sec: total as f64 / elapsed,
    })
}

fn stats_json(s: &Stats) -> serde_json::Value {
    serde_json::json!({
        "p50_us": (s.p50_us * 10.0).round() / 10.0,
        "p99_us": (s.p99_us * 10.0).round() / 10.0,
        "mean_matches": s.mean_matches.round(),
        "matches_per_sec": s.matches_per_sec.round(),
    })
}

/// The matcher step for one alert: every shard the spatial stage routed it to, as the
/// matcher stages of the push service run it. Routing itself is the spatial stage's work,
/// measured apart.
fn index_matches(index: &SubscriberIndex, routed: &[IndexedAlert]) -> anyhow::Result<usize> {
    let mut n = 0;
    for rec in routed {
        n += index.matches(&rec.alert, rec.shard, &rec.shards)?.len();
    }
    Ok(n)
}

/// An alert and its spatial-stage records.
type Routed = (Alert, Vec<IndexedAlert>);

/// Each alert with its spatial-stage records, and the routing time per alert.
fn route(spatial: &Spatial, q: &[Alert]) -> anyhow::Result<(Vec<Routed>, Stats)> {
    let mut routed = Vec::with_capacity(q.len());
    let stats = measure(q, |a| {
        let recs = spatial.index(a.clone())?;
        let n = recs.len();
        routed.push((a.clone(), recs));
        Ok(n)
    })?;
    Ok((routed, stats))
}

/// Like [`measure`], over routed alerts.
fn measure_routed(
    routed: &[Routed],
    mut run: impl FnMut(&[IndexedAlert]) -> anyhow::Result<usize>,
) -> anyhow::Result<Stats> {
    let alerts: Vec<Alert> = routed.iter().map(|(a, _)| a.clone()).collect();
    let mut i = 0;
    measure(&alerts, |_| {
        let n = run(&routed[i].1);
        i += 1;
        n
    })
}

/// The simplest index: one hash map from every cell (resolution 9, uncompacted) that each
/// place touches to the subscribers; no refinement.
#[derive(Debug)]
pub struct NaiveIndex {
    cells: HashMap<CellIndex, Vec<u32>>,
}

impl NaiveIndex {
    /// Builds it.
    pub fn build(subs: &[Subscription]) -> Self {
        let mut cells: HashMap<CellIndex, Vec<u32>> = HashMap::new();
        for (i, s) in subs.iter().enumerate() {
            for p in &s.places {
                for c in cover(&Area::from(p), Resolution::Nine, 10_000_000).unwrap_or_default() {
                    cells.entry(c).or_default().push(i as u32);
                }
            }
        }
        Self { cells }
    }

    /// Subscribers sharing a cell with the alert's cover.
    pub fn matches(&self, a: &Alert) -> anyhow::Result<usize> {
        let mut ids: Vec<u32> = Vec::new();
        for (c, _) in area_cells(&a.target, Resolution::Nine, 10_000_000)? {
            if let Some(v) = self.cells.get(&c) {
                ids.extend(v);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids.len())
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.cells.capacity() * (8 + 24 + 1) + self.cells.values().map(|v| v.capacity() * 4).sum::<usize>()
    }
}

fn queries(cities: &[City], n: usize, seed: u64) -> anyhow::Result<Vec<(&'static str, Vec<Alert>)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let dense = cities.iter().max_by_key(|c| c.centers.len()).context("no city")?;
    let mut out = Vec::new();
    for (name, r) in [("circle_400m", 400.0), ("circle_1600m", 1_600.0), ("circle_10km", 10_000.0)] {
        let q = (0..n)
            .map(|i| {
                let c = dense.centers[rng.random_range(0..dense.centers.len())];
                alert(i, Area::circle(c, r)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.push((name, q));
    }
    // A city-wide alert as a CAP producer sends it: the city's outline (the neighborhoods
    // dissolved into one shape). The undissolved neighborhoods, 150-odd adjacent polygons
    // whose shared edges all need refining, are the worst case and measured apart.
    let city_wide = Area::MultiPolygon(geo::unary_union(dense.hoods.iter()));
    let hoods = Area::MultiPolygon(geo::MultiPolygon(dense.hoods.clone()));
    for (name, area) in [("city_wide_polygon", city_wide), ("neighborhoods_multipolygon", hoods)] {
        out.push((name, (0..n.clamp(1, 20)).map(|i| alert(i, area.clone())).collect::<anyhow::Result<_>>()?));
    }
    Ok(out)
}

/// Runs the benchmark and returns its JSON result.
pub fn run_match(args: &MatchBenchArgs) -> anyhow::Result<serde_json::Value> {
    let clock = Instant::now();
    let progress = |what: &str| eprintln!("bench [{:>7.1}s] {what}", clock.elapsed().as_secs_f64());
    let geo = GeoConfig::default();
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards: 6 };
    let cities = cities(&args.geofence)?;
    progress(&format!("generating {} subscribers", args.subscribers));
    let mut subs = population(&cities, args.subscribers, &geo, args.seed)?;
    // The push service computes each subscription's shards once, at Upsert, and stores them
    // with it; the index loads them from the subscriptions topic.
    progress("computing shards as the Subscriptions service does");
    let t = Instant::now();
    for s in &mut subs {
        s.shards = hexcast_match::index::shards_of(&s.places, &shard_map).1;
    }
    let shards_per_s = subs.len() as f64 / t.elapsed().as_secs_f64();
    let spatial = Spatial::new(geo, shard_map.shards);
    let index = SubscriberIndex::new(shard_map);
    progress("building the index");
    let t = Instant::now();
    for s in subs.iter().cloned() {
        index.upsert(s);
    }
    let build_s = t.elapsed().as_secs_f64();
    let bytes = index.memory_bytes();
    // Re-upserting the first 100k measures updates (remove old buckets, insert new ones).
    let updates: Vec<Subscription> = subs.iter().take(100_000).cloned().collect();
    let t = Instant::now();
    let n_updates = updates.len();
    for s in updates {
        index.upsert(s);
    }
    let update_per_s = n_updates as f64 / t.elapsed().as_secs_f64();
    let mut qs = queries(&cities, args.queries, args.seed)?;
    if !args.only.is_empty() {
        qs.retain(|(name, _)| args.only.iter().any(|o| o == name));
        anyhow::ensure!(!qs.is_empty(), "--only matched no query kind");
    }
    let mut per_query = serde_json::Map::new();
    for (name, q) in &qs {
        progress(name);
        let (routed, routing) = route(&spatial, q)?;
        let s = measure_routed(&routed, |recs| index_matches(&index, recs))?;
        let mut json = stats_json(&s);
        json["spatial_routing_p50_us"] = serde_json::json!((routing.p50_us * 10.0).round() / 10.0);
        per_query.insert((*name).to_owned(), json);
    }

    // Baselines on a smaller population, with the index measured on the same one.
    let base_subs = &subs[..args.baseline_subscribers.min(subs.len())];
    let base_index = SubscriberIndex::new(shard_map);
    for s in base_subs.iter().cloned() {
        base_index.upsert(s);
    }
    eprintln!("bench: baselines on {} subscribers", base_subs.len());
    let t = Instant::now();
    let naive = NaiveIndex::build(base_subs);
    let naive_build_s = t.elapsed().as_secs_f64();
    let mut baselines = serde_json::Map::new();
    for (name, q) in qs.iter().filter(|(n, _)| *n != "circle_10km") {
        let q = &q[..q.len().min(50)];
        let (routed, _) = route(&spatial, q)?;
        let idx = measure_routed(&routed, |recs| index_matches(&base_index, recs))?;
        let brute = measure(q, |a| {
            let prepared = hexcast_core::exact::PreparedArea::new(&a.target);
            Ok(base_subs.iter().filter(|s| s.places.iter().any(|p| place_meets(p, &prepared))).count())
        })?;
        let nv = measure(q, |a| naive.matches(a))?;
        baselines.insert(
            (*name).to_owned(),
            serde_json::json!({
                "index": stats_json(&idx),
                "brute_force": stats_json(&brute),
                "naive_cell_map": stats_json(&nv),
                "speedup_vs_brute_force_p50": (brute.p50_us / idx.p50_us * 10.0).round() / 10.0,
                "speedup_vs_naive_p50": (nv.p50_us / idx.p50_us * 10.0).round() / 10.0,
            }),
        );
    }
    Ok(serde_json::json!({
        "subscribers": args.subscribers,
        "build_seconds": (build_s * 100.0).round() / 100.0,
        "inserts_per_sec": (args.subscribers as f64 / build_s).round(),
        "updates_per_sec": update_per_s.round(),
        "service_shards_per_sec": shards_per_s.round(),
        "index_bytes": bytes,
        "bytes_per_subscriber": (bytes as f64 / args.subscribers.max(1) as f64).round(),
        "queries": per_query,
        "baselines": {
            "subscribers": base_subs.len(),
            "index_bytes_per_subscriber": (base_index.memory_bytes() as f64 / base_subs.len().max(1) as f64).round(),
            "naive_cell_map_bytes_per_subscriber": (naive.bytes() as f64 / base_subs.len().max(1) as f64).round(),
            "naive_cell_map_build_seconds": (naive_build_s * 100.0).round() / 100.0,
            "per_query": baselines,
        },
    }))
}
