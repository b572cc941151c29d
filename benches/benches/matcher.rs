//! Criterion: one 1.6 km alert in the densest city against a realistic population, for the
//! index and its baselines in the same group (a brute-force scan with the exact predicate,
//! one hash map of uncompacted resolution-9 cells), plus index upserts.
//! `cargo bench -p hexcast-benches` (population size: HEXCAST_BENCH_SUBSCRIBERS, default 20000).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hexcast_bench::population::{NaiveIndex, cities, population};
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_core::exact::PreparedArea;
use hexcast_core::{Alert, Area, Category};
use hexcast_match::SubscriberIndex;
use hexcast_match::index::place_meets;
use hexcast_spatial::Spatial;

fn bench_matcher(c: &mut Criterion) {
    let n: usize = std::env::var("HEXCAST_BENCH_SUBSCRIBERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = hexcast_testdata::path("geofence/click_that_hood");
    let cities = cities(&dir).expect("neighborhood polygons");
    let geo = GeoConfig::default();
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards: 6 };
    let subs = population(&cities, n, &geo, 7).expect("population");
    let index = SubscriberIndex::new(shard_map);
    for s in subs.iter().cloned() {
        index.upsert(s);
    }
    let naive = NaiveIndex::build(&subs);
    let spatial = Spatial::new(geo, shard_map.shards);
    let dense = cities.iter().max_by_key(|c| c.centers.len()).expect("a city");
    let target = Area::circle(dense.centers[0], 1_600.0).expect("valid");
    let alert = Alert::synthetic("bench@1", Category::parse("crime.robbery").expect("known"), target);
    let mut group = c.benchmark_group("match_1600m_circle");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("index", |b| {
        b.iter(|| {
            let mut total = 0;
            for rec in spatial.index(alert.clone()).expect("indexed") {
                total += index.matches(&rec.alert, rec.shard, &rec.shards).expect("match").len();
            }
            total
        })
    });
    group.bench_function("naive_cell_map", |b| b.iter(|| naive.matches(&alert).expect("match")));
    group.bench_function("brute_force", |b| {
        b.iter(|| {
            let prepared = PreparedArea::new(&alert.target);
            subs.iter().filter(|s| s.places.iter().any(|p| place_meets(p, &prepared))).count()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("upsert");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("index_update", |b| {
        b.iter(|| {
            index.upsert(subs[i % subs.len()].clone());
            i += 1;
        })
    });
    group.finish();
}

criterion_group!(benches, bench_matcher);
criterion_main!(benches);
