//! The 161 m contract against an independent oracle: a subscriber is notified when its
//! stored place (a resolution-11 cell grown by its radius, or a polygon's stored cells)
//! meets the alert by core's exact predicates, exactly as the matcher refines; the oracle
//! measures the distance between the subscriber's *true* geometry (point, circle or
//! polygon, before it became cells) and the alert with plain haversine sampling and `geo`'s
//! planar predicates in degrees. Every subscriber inside must be notified (no miss), and
//! none notified may be more than 161 m away, for circles from 10 m to 200 km and polygons
//! from dense city outlines to 89.9 degrees of latitude.

use geo::{Contains as _, Intersects as _};
use h3o::Resolution;
use hexcast_core::cells::{centroid, circumradius_m, subscriber_cells};
use hexcast_core::exact::PreparedArea;
use hexcast_core::geo::EARTH_RADIUS_M;
use hexcast_core::{Area, LatLng};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// The US Wireless Emergency Alerts bound: 0.1 mile.
const BOUND_M: f64 = 161.0;
/// As stored: subscriber points at resolution 11, polygons at 10 with finer edges.
const PRECISION: Resolution = Resolution::Eleven;
const POLYGON_PRECISION: Resolution = Resolution::Ten;
/// The index's slack on a disc's reach (f32 storage of the centroid, rounding).
const INDEX_SLACK_M: f64 = 2.5;

fn hav(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * ((lng2 - lng1).to_radians() / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Distance from a point to an edge that is straight in (lng, lat), by sampling: coarse
/// samples every ~20 m, then 0.2 m steps around the best one. Independent of the
/// implementation's search.
fn oracle_edge_m(lat: f64, lng: f64, a: geo::Coord<f64>, b: geo::Coord<f64>) -> f64 {
    let mut dlng = b.x - a.x;
    if dlng > 180.0 {
        dlng -= 360.0;
    } else if dlng < -180.0 {
        dlng += 360.0;
    }
    let at = |t: f64| hav(lat, lng, a.y + t * (b.y - a.y), a.x + t * dlng);
    let near = at(0.0).min(at(1.0));
    // Skip edges that are surely far: no point of the edge is nearer than an end minus the
    // edge's length along its path (sampled generously).
    let path: f64 = (0..8)
        .map(|i| {
            let (t0, t1) = (i as f64 / 8.0, (i + 1) as f64 / 8.0);
            hav(a.y + t0 * (b.y - a.y), a.x + t0 * dlng, a.y + t1 * (b.y - a.y), a.x + t1 * dlng)
        })
        .sum::<f64>()
        * 1.05;
    if near - path > 2_000.0 {
        return near;
    }
    let n = (path / 20.0).ceil().clamp(1.0, 200_000.0) as usize;
    let (mut best_i, mut best) = (0, f64::INFINITY);
    for i in 0..=n {
        let d = at(i as f64 / n as f64);
        if d < best {
            (best_i, best) = (i, d);
        }
    }
    let (lo, hi) = (best_i.saturating_sub(2) as f64 / n as f64, ((best_i + 2).min(n)) as f64 / n as f64);
    let fine = ((hi - lo) * path / 0.2).ceil().clamp(1.0, 100_000.0) as usize;
    (0..=fine).map(|j| at(lo + (hi - lo) * j as f64 / fine as f64)).fold(best, f64::min)
}

fn rings(p: &geo::Polygon<f64>) -> impl Iterator<Item = &geo::LineString<f64>> {
    std::iter::once(p.exterior()).chain(p.interiors())
}

/// Distance from a point to a polygon: 0 inside.
fn oracle_point_polygon_m(lat: f64, lng: f64, p: &geo::Polygon<f64>) -> f64 {
    if p.contains(&geo::Point::new(lng, lat)) {
        return 0.0;
    }
    rings(p).flat_map(|r| r.lines()).map(|l| oracle_edge_m(lat, lng, l.start, l.end)).fold(f64::INFINITY, f64::min)
}

/// What a subscriber wants, as the subscriber gave it.
#[derive(Debug, Clone)]
enum Sub {
    Disc(LatLng, f64),
    Polygon(geo::Polygon<f64>),
}

/// The true distance between a subscriber's area and the alert (0: they meet).
fn oracle_m(sub: &Sub, alert: &Area) -> f64 {
    match (sub, alert) {
        (Sub::Disc(s, r), Area::Circle { center, radius_m }) => (s.distance_m(*center) - radius_m - r).max(0.0),
        (Sub::Disc(s, r), Area::Polygon(a)) => (oracle_point_polygon_m(s.lat(), s.lng(), a) - r).max(0.0),
        (Sub::Polygon(p), Area::Circle { center, radius_m }) => {
            (oracle_point_polygon_m(center.lat(), center.lng(), p) - radius_m).max(0.0)
        }
        (Sub::Polygon(p), Area::Polygon(a)) => {
            if p.intersects(a) {
                return 0.0;
            }
            let from = |x: &geo::Polygon<f64>, y: &geo::Polygon<f64>| {
                rings(x)
                    .flat_map(|r| r.0.iter())
                    .map(|v| oracle_point_polygon_m(v.y, v.x, y))
                    .fold(f64::INFINITY, f64::min)
            };
            from(p, a).min(from(a, p))
        }
        _ => unreachable!("the test makes circles and polygons"),
    }
}

/// Whether the matcher's refine step notifies the subscriber: its stored form against the
/// prepared alert, as `hexcast_match::index::place_meets` does.
fn notified(sub: &Sub, prepared: &PreparedArea<'_>) -> bool {
    match sub {
        Sub::Disc(s, r) => {
            let cell = s.cell(PRECISION);
            prepared.disc_intersects(centroid(cell), r + circumradius_m(cell) + INDEX_SLACK_M)
        }
        Sub::Polygon(p) => subscriber_cells(&Area::Polygon(p.clone()), POLYGON_PRECISION, 1_000_000)
            .expect("cells")
            .into_iter()
            .any(|c| prepared.cell_intersects(c)),
    }
}

/// A star-shaped polygon of `n` vertices around `c`, radii in `r * [0.6, 1.0]`.
fn star(rng: &mut StdRng, c: LatLng, r: f64, n: usize) -> geo::Polygon<f64> {
    let ring: Vec<(f64, f64)> = (0..n)
        .map(|i| {
            let p = c.destination(360.0 * i as f64 / n as f64, r * rng.random_range(0.6..1.0));
            (p.lng(), p.lat())
        })
        .collect();
    geo::Polygon::new(geo::LineString::from(ring), vec![])
}

/// A point at about `offset_m` from the alert's boundary (negative: inside).
fn near_boundary(rng: &mut StdRng, alert: &Area, offset_m: f64) -> LatLng {
    let bearing = rng.random_range(0.0..360.0);
    match alert {
        Area::Circle { center, radius_m } => center.destination(bearing, (radius_m + offset_m).max(0.0)),
        Area::Polygon(p) => {
            let ring = &p.exterior().0;
            let i = rng.random_range(0..ring.len() - 1);
            let t = rng.random_range(0.0..1.0);
            let (a, b) = (ring[i], ring[i + 1]);
            let on = LatLng::new(a.y + t * (b.y - a.y), a.x + t * (b.x - a.x)).expect("valid");
            on.destination(bearing, offset_m.abs())
        }
        _ => unreachable!("circles and polygons"),
    }
}

#[derive(Debug, Default)]
struct Tally {
    worst_m: f64,
    notified: usize,
    missed: Vec<String>,
    over: Vec<String>,
}

/// Subscribers of every kind around `alert`'s boundary, judged against the oracle.
fn judge(rng: &mut StdRng, alert: &Area, subscribers: usize, tally: &mut Tally) {
    let prepared = PreparedArea::new(alert);
    for i in 0..subscribers {
        let offset = rng.random_range(-250.0..400.0);
        let s = near_boundary(rng, alert, offset);
        let sub = match i % 3 {
            0 => Sub::Disc(s, 0.0),
            1 => Sub::Disc(s, rng.random_range(10.0..800.0)),
            _ => {
                let r = rng.random_range(60.0..600.0);
                if s.lat().abs() + r / 100_000.0 > 89.99 {
                    Sub::Disc(s, 0.0)
                } else {
                    let n = rng.random_range(3..24);
                    Sub::Polygon(star(rng, s, r, n))
                }
            }
        };
        let truth = oracle_m(&sub, alert);
        let got = notified(&sub, &prepared);
        if got {
            tally.notified += 1;
            tally.worst_m = tally.worst_m.max(truth);
            if truth > BOUND_M {
                tally.over.push(format!("{truth:.1} m: {sub:?}"));
            }
        } else if truth == 0.0 {
            tally.missed.push(format!("{sub:?}"));
        }
    }
}

const LATS: [f64; 7] = [0.3, 40.1, -33.9, 64.1, 80.0, -85.0, 89.9];

#[test]
#[allow(clippy::print_stdout)]
fn circles_from_10_m_to_200_km_hold_the_161_m_bound_at_every_latitude() {
    let mut rng = StdRng::seed_from_u64(16);
    println!("circle alerts: radius, notified, worst overshoot (m)");
    let mut worst: f64 = 0.0;
    for radius in [10.0, 100.0, 1_000.0, 10_000.0, 20_000.0, 30_000.0, 50_000.0, 100_000.0, 200_000.0] {
        let mut tally = Tally::default();
        for lat in LATS {
            let center = LatLng::new(lat, rng.random_range(-179.9..179.9)).expect("valid");
            let alert = Area::circle(center, radius).expect("valid");
            judge(&mut rng, &alert, 240, &mut tally);
        }
        println!("  {:>9.0} m  {:>5}  {:.1}", radius, tally.notified, tally.worst_m);
        assert!(tally.missed.is_empty(), "r={radius}: missed {:?}", &tally.missed[..tally.missed.len().min(3)]);
        assert!(tally.over.is_empty(), "r={radius}: beyond {BOUND_M} m {:?}", &tally.over[..tally.over.len().min(3)]);
        worst = worst.max(tally.worst_m);
    }
    println!("worst overshoot over all circles: {worst:.1} m");
}

#[test]
#[allow(clippy::print_stdout)]
fn polygons_from_dense_cities_to_89_9_degrees_hold_the_161_m_bound() {
    let mut rng = StdRng::seed_from_u64(5);
    println!("polygon alerts: kind, latitude, notified, worst overshoot (m)");
    let mut worst: f64 = 0.0;
    for lat in LATS {
        // Room to the pole: a polygon must not reach it.
        let room = (89.99 - lat.abs()) * 111_000.0 * 0.9;
        for (kind, radius, vertices) in
            [("dense city", 3_000.0, 2_000), ("county", 40_000.0, 120), ("region", 200_000.0, 24), ("block", 150.0, 5)]
        {
            let radius = f64::min(radius, room);
            let center = LatLng::new(lat, rng.random_range(-179.0..179.0)).expect("valid");
            let alert = Area::Polygon(star(&mut rng, center, radius, vertices));
            let mut tally = Tally::default();
            judge(&mut rng, &alert, 120, &mut tally);
            println!("  {kind:>10} {lat:>6.1}  {:>4}  {:.1}", tally.notified, tally.worst_m);
            assert!(
                tally.missed.is_empty(),
                "{kind} at {lat}: missed {:?}",
                &tally.missed[..tally.missed.len().min(3)]
            );
            assert!(
                tally.over.is_empty(),
                "{kind} at {lat}: beyond {BOUND_M} m {:?}",
                &tally.over[..tally.over.len().min(3)]
            );
            worst = worst.max(tally.worst_m);
        }
    }
    println!("worst overshoot over all polygons: {worst:.1} m");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Random circles (10 m to 200 km, log-uniform) anywhere up to 89.9 degrees: no miss,
    /// no notification beyond 161 m.
    #[test]
    fn any_circle_holds_the_161_m_bound(
        lat in -89.9f64..89.9,
        lng in -180.0f64..180.0,
        log_r in 1.0f64..5.301,
        seed in proptest::num::u64::ANY,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let alert = Area::circle(LatLng::new(lat, lng).expect("valid"), 10f64.powf(log_r)).expect("valid");
        let mut tally = Tally::default();
        judge(&mut rng, &alert, 60, &mut tally);
        proptest::prop_assert!(tally.missed.is_empty(), "missed {:?}", tally.missed);
        proptest::prop_assert!(tally.over.is_empty(), "over {:?}", tally.over);
    }
}
