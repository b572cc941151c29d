//! The index against a brute-force geometric oracle (great-circle distances, exact
//! point-in-polygon, densified boundaries): never miss, bounded overshoot, exactly once
//! across shards, and equal to a scan of every subscription.

use std::collections::BTreeSet;

use geo::Contains as _;
use h3o::Resolution;
use hexcast_core::cells::{ShardMap, area_cells};
use hexcast_core::{Area, Category};
use proptest::prelude::*;

use super::*;

const PRECISION: Resolution = Resolution::Eleven;
/// The WEA bound: 0.1 mile.
const MAX_OVERSHOOT_M: f64 = 161.0;

fn alert(target: Area) -> Alert {
    Alert::synthetic("a@1", Category::parse("crime.robbery").expect("known"), target)
}

fn sub(id: usize, p: LatLng, radius_m: f64) -> Subscription {
    Subscription {
        tenant: "t".into(),
        subscriber_id: id.to_string(),
        places: vec![Place::Disc { cell: p.cell(PRECISION), radius_m: radius_m as f32 }],
        filter: SubscriptionFilter::default(),
        shards: vec![],
        updated_at: Timestamp(0),
        delivery: Default::default(),
    }
}

/// Oracle: great-circle distance from a point to an area (0 inside).
fn true_distance(area: &Area, p: LatLng) -> f64 {
    match area {
        Area::Circle { center, radius_m } => (p.distance_m(*center) - radius_m).max(0.0),
        Area::Polygon(poly) => {
            // Unwrap longitudes around the point so that rings across the antimeridian stay
            // contiguous for the planar point-in-polygon test and the densified boundary.
            let unwrap = |lng: f64| p.lng() + (lng - p.lng() + 540.0).rem_euclid(360.0) - 180.0;
            let mut ring: Vec<(f64, f64)> = poly.exterior().0.iter().map(|c| (unwrap(c.x), c.y)).collect();
            if ring.first() != ring.last() {
                ring.push(ring[0]);
            }
            let local = geo::Polygon::new(geo::LineString::from(ring.clone()), vec![]);
            if local.contains(&geo::Point::new(p.lng(), p.lat())) {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for w in ring.windows(2) {
                for i in 0..=200 {
                    let t = i as f64 / 200.0;
                    let lng = (w[0].0 + t * (w[1].0 - w[0].0) + 540.0).rem_euclid(360.0) - 180.0;
                    let q = LatLng::new(w[0].1 + t * (w[1].1 - w[0].1), lng).expect("valid");
                    best = best.min(p.distance_m(q));
                }
            }
            best
        }
        _ => unreachable!("oracle covers the generated shapes"),
    }
}

fn polygon(center: LatLng, radii: &[f64]) -> Area {
    let n = radii.len();
    let ring: Vec<(f64, f64)> = radii
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let q = center.destination(360.0 * i as f64 / n as f64, *r);
            (q.lng(), q.lat())
        })
        .collect();
    Area::Polygon(geo::Polygon::new(geo::LineString::from(ring), vec![]))
}

/// Regions: a dense city, a sparse area, the antimeridian, near the north pole.
const REGIONS: [(f64, f64); 4] = [(37.77, -122.42), (44.0, -103.0), (-17.0, 179.99), (84.0, 30.0)];

/// (region, subscribers as (bearing, distance, radius), alert radius, polygon alert?, polygon radii)
type Scenario = (usize, Vec<(f64, f64, f64)>, f64, bool, Vec<f64>);

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0..REGIONS.len(),
        proptest::collection::vec((0.0f64..360.0, 0.0f64..12_000.0, prop_oneof![Just(0.0), 50.0f64..3_000.0]), 1..80),
        100.0f64..10_000.0,
        any::<bool>(),
        proptest::collection::vec(500.0f64..8_000.0, 5..9),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn index_never_misses_overshoots_at_most_161_m_and_matches_once((region, subs, radius, is_polygon, radii) in scenario()) {
        let center = LatLng::new(REGIONS[region].0, REGIONS[region].1).expect("valid");
        let shard_map = ShardMap { territory_res: Resolution::Four, shards: 5 };
        let index = SubscriberIndex::new(shard_map);
        let truth: Vec<(LatLng, f64)> = subs.iter().map(|(b, d, r)| (center.destination(*b, *d), *r)).collect();
        for (i, (p, r)) in truth.iter().enumerate() {
            index.upsert(sub(i, *p, *r));
        }
        let target = if is_polygon { polygon(center, &radii) } else { Area::circle(center, radius).expect("valid") };
        let a = alert(target.clone());
        let alert_shards = shard_map.shards_of(&area_cells(&target, shard_map.territory_res, 1_000_000).expect("cover").into_iter().map(|(c, _)| c).collect::<Vec<_>>());
        let mut got = Vec::new();
        for &s in &alert_shards {
            got.extend(index.matches(&a, s, &alert_shards).expect("match").into_iter().map(|m| m.subscriber_id.parse::<usize>().expect("id")));
        }
        let unique: BTreeSet<usize> = got.iter().copied().collect();
        prop_assert_eq!(unique.len(), got.len(), "a subscriber was notified twice");
        for (i, (p, r)) in truth.iter().enumerate() {
            let d = true_distance(&target, *p);
            if d <= *r {
                prop_assert!(unique.contains(&i), "missed subscriber {} at distance {} with radius {}", i, d, r);
            }
            if unique.contains(&i) {
                prop_assert!(d <= r + MAX_OVERSHOOT_M, "subscriber {} notified {} m beyond its area", i, d - r);
            }
        }
        // The buckets never lose a candidate: everything a scan of every subscription finds
        // with the exact predicate is matched (the index may add what lies within the
        // couple of meters its f32 centroids are grown by).
        let prepared = PreparedArea::new(&a.target);
        let scan: BTreeSet<usize> = truth.iter().enumerate()
            .filter(|(i, _)| index.get(&format!("t/{i}")).is_some_and(|s| s.places.iter().any(|pl| place_meets(pl, &prepared))))
            .map(|(i, _)| i).collect();
        prop_assert!(scan.is_subset(&unique), "scan found {:?} that the index missed", scan.difference(&unique).collect::<Vec<_>>());
    }

    #[test]
    fn interleaved_upserts_and_deletes_never_match_a_deleted_or_miss_a_current(ops in proptest::collection::vec((0usize..30, any::<bool>(), 0.0f64..360.0, 0.0f64..3_000.0), 1..120)) {
        let center = LatLng::new(40.0, -75.0).expect("valid");
        let shard_map = ShardMap { territory_res: Resolution::Three, shards: 1 };
        let index = SubscriberIndex::new(shard_map);
        let a = alert(Area::circle(center, 1_500.0).expect("valid"));
        let mut current: std::collections::BTreeMap<usize, LatLng> = Default::default();
        for (id, delete, bearing, dist) in ops {
            if delete {
                prop_assert_eq!(index.remove(&format!("t/{id}")), current.remove(&id).is_some());
            } else {
                let p = center.destination(bearing, dist);
                index.upsert(sub(id, p, 0.0));
                current.insert(id, p);
            }
            let got: BTreeSet<usize> = index.matches(&a, 0, &[0]).expect("match").into_iter().map(|m| m.subscriber_id.parse().expect("id")).collect();
            for id in &got {
                prop_assert!(current.contains_key(id), "deleted subscriber {} matched", id);
            }
            for (id, p) in &current {
                if p.distance_m(center) <= 1_500.0 {
                    prop_assert!(got.contains(id), "current subscriber {} missed", id);
                }
            }
        }
        prop_assert_eq!(index.len(), current.len());
    }
}

#[test]
fn polygon_subscriptions_as_cells_match_alerts_that_touch_them() {
    let center = LatLng::new(47.6, -122.33).expect("valid");
    let shard_map = ShardMap { territory_res: Resolution::Three, shards: 1 };
    let index = SubscriberIndex::new(shard_map);
    let hood = polygon(center, &[800.0, 900.0, 700.0, 850.0, 750.0]);
    let cells: Vec<CellIndex> =
        area_cells(&hood, Resolution::Ten, 100_000).expect("cover").into_iter().map(|(c, _)| c).collect();
    index.upsert(Subscription {
        tenant: "t".into(),
        subscriber_id: "hood".into(),
        places: vec![Place::Cells(cells)],
        filter: SubscriptionFilter::default(),
        shards: vec![],
        updated_at: Timestamp(0),
        delivery: Default::default(),
    });
    let near = alert(Area::circle(center.destination(90.0, 1_000.0), 300.0).expect("valid"));
    let far = alert(Area::circle(center.destination(90.0, 2_000.0), 300.0).expect("valid"));
    assert_eq!(index.matches(&near, 0, &[0]).expect("match").len(), 1);
    assert!(index.matches(&far, 0, &[0]).expect("match").is_empty());
}

#[test]
fn filters_are_applied() {
    let center = LatLng::new(40.0, -75.0).expect("valid");
    let index = SubscriberIndex::new(ShardMap { territory_res: Resolution::Three, shards: 1 });
    let mut s = sub(1, center, 0.0);
    s.filter.categories = vec!["fire".into()];
    index.upsert(s);
    let a = alert(Area::circle(center, 500.0).expect("valid"));
    assert!(index.matches(&a, 0, &[0]).expect("match").is_empty());
}

#[test]
fn shared_shapes_are_stored_once_and_outlive_each_member() {
    let center = LatLng::new(47.6, -122.33).expect("valid");
    let index = SubscriberIndex::new(ShardMap { territory_res: Resolution::Three, shards: 1 });
    let hood = polygon(center, &[800.0, 900.0, 700.0, 850.0, 750.0]);
    let cells: Vec<CellIndex> =
        area_cells(&hood, Resolution::Ten, 100_000).expect("cover").into_iter().map(|(c, _)| c).collect();
    let with_places = |id: &str, places: Vec<Place>| Subscription {
        tenant: "t".into(),
        subscriber_id: id.into(),
        places,
        filter: SubscriptionFilter::default(),
        shards: vec![],
        updated_at: Timestamp(0),
        delivery: Default::default(),
    };
    let point = Place::Disc { cell: center.destination(0.0, 5_000.0).cell(PRECISION), radius_m: 0.0 };
    index.upsert(with_places("a", vec![Place::Cells(cells.clone())]));
    index.upsert(with_places("b", vec![point.clone(), Place::Cells(cells.iter().rev().copied().collect())]));
    let one_shape = index.memory_bytes();
    assert_eq!(index.read().shapes.iter().flatten().count(), 1, "identical cell sets share one shape");
    let near = alert(Area::circle(center.destination(90.0, 1_000.0), 300.0).expect("valid"));
    let ids = |a: &Alert| -> BTreeSet<String> {
        index.matches(a, 0, &[0]).expect("match").into_iter().map(|m| m.subscriber_id.to_string()).collect()
    };
    assert_eq!(ids(&near), BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    // Read-back keeps the order of places; cells come back sorted.
    let b = index.get("t/b").expect("stored");
    assert!(matches!(b.places[0], Place::Disc { .. }) && matches!(b.places[1], Place::Cells(_)));
    assert!(index.remove("t/a"));
    assert_eq!(ids(&near), BTreeSet::from(["b".to_owned()]));
    // b's point still matches an alert far from the shape.
    let at_point = alert(Area::circle(center.destination(0.0, 5_000.0), 100.0).expect("valid"));
    assert_eq!(ids(&at_point), BTreeSet::from(["b".to_owned()]));
    assert!(index.remove("t/b"));
    assert!(ids(&near).is_empty());
    assert_eq!(index.read().shapes.iter().flatten().count(), 0, "the last member frees the shape");
    assert!(index.read().shape_levels.iter().all(HashMap::is_empty));
    assert!(index.read().levels.iter().all(HashMap::is_empty));
    assert!(one_shape > 0 && index.is_empty());
}

#[test]
fn stored_shards_are_trusted_only_when_they_fit_the_shard_map() {
    let center = LatLng::new(40.0, -75.0).expect("valid");
    let map = ShardMap { territory_res: Resolution::Three, shards: 4 };
    let index = SubscriberIndex::new(map);
    let (home, computed) = shards_of(&sub(1, center, 100.0).places, &map);
    assert_eq!(home, home_shard(&sub(1, center, 100.0).places, &map));
    let mut s = sub(1, center, 100.0);
    s.shards = vec![home, 99];
    index.upsert(s);
    assert_eq!(index.shards("t/1"), Some(computed.clone()), "a shard past the map is recomputed");
    let mut s = sub(2, center, 100.0);
    s.shards = computed.clone();
    index.upsert(s);
    assert_eq!(index.shards("t/2"), Some(computed));
    assert_eq!(index.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Shapes (shared cell sets) are judged once per alert with shortcuts; the result must
    /// equal the exact predicate on every member.
    #[test]
    fn shape_matches_equal_an_exact_scan(
        region in 0..REGIONS.len(),
        hoods in proptest::collection::vec((0.0f64..360.0, 0.0f64..6_000.0, 200.0f64..1_500.0), 1..6),
        members in proptest::collection::vec(0usize..6, 1..40),
        radius in 100.0f64..6_000.0,
        is_polygon in any::<bool>(),
        radii in proptest::collection::vec(500.0f64..5_000.0, 5..9),
    ) {
        let center = LatLng::new(REGIONS[region].0, REGIONS[region].1).expect("valid");
        let index = SubscriberIndex::new(ShardMap { territory_res: Resolution::Three, shards: 1 });
        let shapes: Vec<Vec<CellIndex>> = hoods.iter().map(|(b, d, r)| {
            let hood = Area::circle(center.destination(*b, *d), *r).expect("valid");
            area_cells(&hood, Resolution::Ten, 100_000).expect("cover").into_iter().map(|(c, _)| c).collect()
        }).collect();
        let mut placed = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let shape = &shapes[m % shapes.len()];
            index.upsert(Subscription {
                tenant: "t".into(),
                subscriber_id: i.to_string(),
                places: vec![Place::Cells(shape.clone())],
                filter: SubscriptionFilter::default(),
                shards: vec![],
                updated_at: Timestamp(0),
                delivery: Default::default(),
            });
            placed.push(shape);
        }
        let target = if is_polygon { polygon(center, &radii) } else { Area::circle(center, radius).expect("valid") };
        let a = alert(target);
        let got: BTreeSet<usize> =
            index.matches(&a, 0, &[0]).expect("match").into_iter().map(|m| m.subscriber_id.parse().expect("id")).collect();
        let prepared = PreparedArea::new(&a.target);
        let scan: BTreeSet<usize> = placed.iter().enumerate()
            .filter(|(_, cells)| cells.iter().any(|c| prepared.cell_intersects(*c)))
            .map(|(i, _)| i).collect();
        prop_assert_eq!(got, scan);
    }
}

/// One write of the API to the subscriptions topic, as `records` in the api crate lays it
/// out: a value on every shard of the new set, a tombstone on the shards it left (all
/// others when the writer did not know the old set); a delete tombstones every shard.
#[derive(Debug, Clone)]
enum Write {
    Upsert { key: usize, shards: Vec<u32>, knew_old: bool },
    Delete { key: usize },
}

fn write_strategy() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => (0usize..12, proptest::collection::btree_set(0u32..6, 1..4), any::<bool>())
            .prop_map(|(key, s, knew_old)| Write::Upsert { key, shards: s.into_iter().collect(), knew_old }),
        1 => (0usize..12).prop_map(|key| Write::Delete { key }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The table side of the table-stream join: an index that reads only some partitions
    /// of the subscriptions topic, in any interleaving across partitions (each in its own
    /// order), holds exactly the subscriptions whose latest write put a value in one of
    /// them, with that latest value; dropping a partition leaves what the others hold.
    #[test]
    fn partial_loads_hold_exactly_the_subscriptions_of_their_partitions(
        writes in proptest::collection::vec(write_strategy(), 1..60),
        held in proptest::collection::btree_set(0u32..6, 1..6),
        order_seed in any::<u64>(),
        dropped in 0u32..6,
    ) {
        use prost::Message as _;
        let map = ShardMap { territory_res: Resolution::Three, shards: 6 };
        let mut logs: Vec<Vec<(String, Option<Vec<u8>>)>> = vec![Vec::new(); 6];
        // key -> (shards, updated_at) of its latest write, None when deleted.
        let mut truth: std::collections::HashMap<usize, Option<(Vec<u32>, i64)>> = Default::default();
        for (t, w) in writes.iter().enumerate() {
            match w {
                Write::Upsert { key, shards, knew_old } => {
                    let mut s = sub(*key, LatLng::new(37.77, -122.42).expect("valid"), 0.0);
                    s.updated_at = Timestamp(t as i64 + 1);
                    let bytes = hexcast_proto::v1::Subscription::from(&s).encode_to_vec();
                    for &p in shards {
                        logs[p as usize].push((s.key(), Some(bytes.clone())));
                    }
                    let old: Vec<u32> = match (knew_old, truth.get(key)) {
                        (true, Some(Some((old, _)))) => old.clone(),
                        (true, _) => Vec::new(),
                        (false, _) => (0..6).collect(),
                    };
                    for p in old.into_iter().filter(|p| !shards.contains(p)) {
                        logs[p as usize].push((s.key(), None));
                    }
                    truth.insert(*key, Some((shards.clone(), t as i64 + 1)));
                }
                Write::Delete { key } => {
                    for log in &mut logs {
                        log.push((format!("t/{key}"), None));
                    }
                    truth.insert(*key, None);
                }
            }
        }
        // Interleave the held partitions' logs at random, each in order.
        let index = SubscriberIndex::new(map);
        let mut next = [0usize; 6];
        let mut rng = order_seed | 1;
        loop {
            let open: Vec<u32> = held.iter().copied().filter(|&p| next[p as usize] < logs[p as usize].len()).collect();
            if open.is_empty() {
                break;
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let p = open[(rng % open.len() as u64) as usize];
            let (key, value) = &logs[p as usize][next[p as usize]];
            next[p as usize] += 1;
            index.apply_from(p as i32, key, value.as_deref()).expect("valid record");
        }
        let expect = |parts: &BTreeSet<u32>| -> std::collections::BTreeMap<String, i64> {
            truth
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|(s, at)| (k, s, at)))
                .filter(|(_, s, _)| s.iter().any(|p| parts.contains(p)))
                .map(|(k, _, at)| (format!("t/{k}"), *at))
                .collect()
        };
        let held_now = |parts: &BTreeSet<u32>| {
            let want = expect(parts);
            prop_assert_eq!(index.len(), want.len());
            for (key, at) in &want {
                let got = index.get(key);
                prop_assert!(got.is_some(), "{} missing", key);
                prop_assert_eq!(got.map(|s| s.updated_at), Some(Timestamp(*at)), "{} is not its latest value", key);
            }
            Ok(())
        };
        held_now(&held)?;
        index.drop_partition(dropped as i32);
        let mut rest = held.clone();
        rest.remove(&dropped);
        held_now(&rest)?;
    }
}
