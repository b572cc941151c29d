//! Exact geometry for the refine step of matching: does a disc (a subscriber's stored place,
//! grown by its cell's uncertainty) or an H3 cell's hexagon intersect an alert's target
//! area? Distances are computed in a local equirectangular projection around the point of
//! interest, which is accurate to well under 0.5% at the scales alerts have (tens of km);
//! every comparison carries a margin that absorbs that error on the side of notifying, so
//! a subscriber inside the area is never missed.

use h3o::CellIndex;

use crate::cells::{centroid, circumradius_m};
use crate::geo::{Area, EARTH_RADIUS_M, LatLng};

/// Meters per degree of latitude on the mean sphere.
const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
/// Relative margin covering the projection error.
const REL_MARGIN: f64 = 0.005;
/// Absolute margin in meters.
const ABS_MARGIN: f64 = 1.0;

/// A local planar frame (meters) around an origin.
#[derive(Debug, Clone, Copy)]
struct Frame {
    lat0: f64,
    lng0: f64,
    cos0: f64,
}

impl Frame {
    fn at(p: LatLng) -> Self {
        Self { lat0: p.lat(), lng0: p.lng(), cos0: p.lat().to_radians().cos().max(1e-6) }
    }

    /// Projects (lng, lat) degrees; longitudes are unwrapped around the origin so that
    /// shapes crossing the antimeridian stay contiguous.
    fn xy(&self, lng: f64, lat: f64) -> (f64, f64) {
        let dlng = (lng - self.lng0 + 540.0).rem_euclid(360.0) - 180.0;
        (dlng * self.cos0 * M_PER_DEG, (lat - self.lat0) * M_PER_DEG)
    }
}

type Ring = Vec<(f64, f64)>;

fn project_polygon(f: &Frame, p: &geo::Polygon<f64>) -> Vec<Ring> {
    std::iter::once(p.exterior()).chain(p.interiors()).map(|r| r.0.iter().map(|c| f.xy(c.x, c.y)).collect()).collect()
}

fn point_in_ring(x: f64, y: f64, ring: &[(f64, f64)]) -> bool {
    let mut inside = false;
    let n = ring.len();
    for i in 0..n {
        let (xi, yi) = ring[i];
        let (xj, yj) = ring[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

/// Inside the exterior and outside every hole.
fn point_in_polygon(x: f64, y: f64, rings: &[Ring]) -> bool {
    match rings.split_first() {
        Some((ext, holes)) => point_in_ring(x, y, ext) && !holes.iter().any(|h| point_in_ring(x, y, h)),
        None => false,
    }
}

fn seg_dist(px: f64, py: f64, (ax, ay): (f64, f64), (bx, by): (f64, f64)) -> f64 {
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 { 0.0 } else { (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0) };
    let (cx, cy) = (ax + t * dx, ay + t * dy);
    ((px - cx).powi(2) + (py - cy).powi(2)).sqrt()
}

fn dist_to_rings(x: f64, y: f64, rings: &[Ring]) -> f64 {
    let mut best = f64::INFINITY;
    for r in rings {
        let n = r.len();
        for i in 0..n {
            best = best.min(seg_dist(x, y, r[i], r[(i + 1) % n]));
        }
    }
    best
}

fn segments_cross(a: (f64, f64), b: (f64, f64), c: (f64, f64), d: (f64, f64)) -> bool {
    let orient = |p: (f64, f64), q: (f64, f64), r: (f64, f64)| (q.0 - p.0) * (r.1 - p.1) - (q.1 - p.1) * (r.0 - p.0);
    let (d1, d2, d3, d4) = (orient(c, d, a), orient(c, d, b), orient(a, b, c), orient(a, b, d));
    ((d1 > 0.0) != (d2 > 0.0)) && ((d3 > 0.0) != (d4 > 0.0))
}

/// Whether polygon `a` and polygon `b` (projected rings) share any point.
fn polygons_intersect(a: &[Ring], b: &[Ring]) -> bool {
    let any_vertex_in =
        |from: &[Ring], into: &[Ring]| from.iter().flatten().any(|&(x, y)| point_in_polygon(x, y, into));
    if any_vertex_in(a, b) || any_vertex_in(b, a) {
        return true;
    }
    for ra in a {
        for i in 0..ra.len() {
            let (p, q) = (ra[i], ra[(i + 1) % ra.len()]);
            for rb in b {
                for j in 0..rb.len() {
                    if segments_cross(p, q, rb[j], rb[(j + 1) % rb.len()]) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

fn within(d: f64, limit: f64) -> bool {
    d <= limit * (1.0 + REL_MARGIN) + ABS_MARGIN
}

/// Whether the disc of `radius_m` around `center` intersects `area`.
pub fn disc_intersects(area: &Area, center: LatLng, radius_m: f64) -> bool {
    match area {
        Area::Point(p) => within(center.distance_m(*p), radius_m),
        Area::Circle { center: c, radius_m: r } => within(center.distance_m(*c), radius_m + r),
        Area::CellDisc { cell, radius_m: r } => {
            within(center.distance_m(centroid(*cell)), radius_m + r + circumradius_m(*cell))
        }
        Area::Polygon(p) => disc_intersects_polygon(p, center, radius_m),
        Area::MultiPolygon(m) => m.0.iter().any(|p| disc_intersects_polygon(p, center, radius_m)),
        Area::Cells(cells) => {
            cells.iter().any(|c| within(center.distance_m(centroid(*c)), radius_m + circumradius_m(*c)))
        }
    }
}

fn disc_intersects_polygon(p: &geo::Polygon<f64>, center: LatLng, radius_m: f64) -> bool {
    let f = Frame::at(center);
    let rings = project_polygon(&f, p);
    point_in_polygon(0.0, 0.0, &rings) || within(dist_to_rings(0.0, 0.0, &rings), radius_m)
}

fn hexagon(f: &Frame, cell: CellIndex) -> Vec<Ring> {
    vec![cell.boundary().iter().map(|v| f.xy(v.lng(), v.lat())).collect()]
}

/// Whether the hexagon of `cell` comes within `radius_m` of `center`.
fn hexagon_near(cell: CellIndex, center: LatLng, radius_m: f64) -> bool {
    let f = Frame::at(center);
    let hex = hexagon(&f, cell);
    point_in_polygon(0.0, 0.0, &hex) || within(dist_to_rings(0.0, 0.0, &hex), radius_m)
}

/// Whether the hexagon (or pentagon) of `cell` intersects `area`.
pub fn cell_intersects(area: &Area, cell: CellIndex) -> bool {
    // Shapes with edges are compared in a frame at the cell's own centroid.
    let own = || {
        let f = Frame::at(centroid(cell));
        let hex = hexagon(&f, cell);
        (f, hex)
    };
    match area {
        Area::Point(p) => hexagon_near(cell, *p, 0.0),
        Area::Circle { center, radius_m } => hexagon_near(cell, *center, *radius_m),
        Area::CellDisc { cell: dc, radius_m } => hexagon_near(cell, centroid(*dc), radius_m + circumradius_m(*dc)),
        Area::Cells(cells) => {
            let (f, hex) = own();
            cells.iter().any(|other| polygons_intersect(&hex, &hexagon(&f, *other)))
        }
        Area::Polygon(p) => {
            let (f, hex) = own();
            polygons_intersect(&hex, &project_polygon(&f, p))
        }
        Area::MultiPolygon(m) => {
            let (f, hex) = own();
            m.0.iter().any(|p| polygons_intersect(&hex, &project_polygon(&f, p)))
        }
    }
}

/// A polygon's edges bucketed by horizontal strips of its bounding box, so that a point's
/// containment (a ray along x crosses only edges of the point's strip) and its distance to
/// the edges (only strips within reach) look at a few edges instead of all of them.
#[derive(Debug)]
struct Strips {
    y0: f64,
    height: f64,
    /// Per strip: (ring, edge start index) of every edge whose y-range meets the strip.
    edges: Vec<Vec<(u32, u32)>>,
}

impl Strips {
    fn new(rings: &[Ring], b: &[f64; 4]) -> Self {
        let n: usize = rings.iter().map(Vec::len).sum();
        let count = (n / 8).clamp(1, 4096);
        let height = ((b[3] - b[1]) / count as f64).max(1e-9);
        let mut edges = vec![Vec::new(); count];
        for (ri, r) in rings.iter().enumerate() {
            for i in 0..r.len() {
                let (a, c) = (r[i], r[(i + 1) % r.len()]);
                let (lo, hi) = (a.1.min(c.1), a.1.max(c.1));
                let (s0, s1) = (Self::index(b[1], height, count, lo), Self::index(b[1], height, count, hi));
                for strip in &mut edges[s0..=s1] {
                    strip.push((ri as u32, i as u32));
                }
            }
        }
        Self { y0: b[1], height, edges }
    }

    fn index(y0: f64, height: f64, count: usize, y: f64) -> usize {
        (((y - y0) / height).floor().max(0.0) as usize).min(count - 1)
    }

    fn edge(rings: &[Ring], (ri, i): (u32, u32)) -> ((f64, f64), (f64, f64)) {
        let r = &rings[ri as usize];
        (r[i as usize], r[(i as usize + 1) % r.len()])
    }

    /// Inside the exterior and outside every hole: the parity of each ring's crossings.
    fn contains(&self, rings: &[Ring], x: f64, y: f64) -> bool {
        if rings.len() > 64 {
            return point_in_polygon(x, y, rings);
        }
        let strip = &self.edges[Self::index(self.y0, self.height, self.edges.len(), y)];
        let mut parity = 0u64;
        for &e in strip {
            let ((xi, yi), (xj, yj)) = Self::edge(rings, e);
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                parity ^= 1 << e.0;
            }
        }
        parity & 1 == 1 && parity >> 1 == 0
    }

    /// Distance to the nearest edge, when it is at most `reach` (else some larger value).
    fn distance(&self, rings: &[Ring], x: f64, y: f64, reach: f64) -> f64 {
        let count = self.edges.len();
        let (s0, s1) =
            (Self::index(self.y0, self.height, count, y - reach), Self::index(self.y0, self.height, count, y + reach));
        let mut best = f64::INFINITY;
        for strip in &self.edges[s0..=s1] {
            for &e in strip {
                let (a, b) = Self::edge(rings, e);
                best = best.min(seg_dist(x, y, a, b));
            }
        }
        best
    }
}

/// An alert area prepared once for many refinements: polygons projected once into a frame
/// at the area's center, with bounding boxes to reject far candidates without touching
/// the rings.
#[derive(Debug)]
pub struct PreparedArea<'a> {
    area: &'a Area,
    frame: Frame,
    polygons: Vec<(Vec<Ring>, [f64; 4], Strips)>,
    circle: Option<CircleBand>,
}

/// A circle alert with the latitude band within [`BAND_M`] of it: discs are mostly judged
/// by planar bounds on their latitude and longitude offsets, without trigonometry; only
/// those within half a percent of the limit take the great-circle distance.
#[derive(Debug, Clone, Copy)]
struct CircleBand {
    center: LatLng,
    radius_m: f64,
    /// Smallest and largest cosine of latitude over the band.
    cos_min: f64,
    cos_max: f64,
}

/// How far beyond a circle alert the planar bounds are used.
const BAND_M: f64 = 50_000.0;

impl CircleBand {
    fn new(center: LatLng, radius_m: f64) -> Self {
        let half = (radius_m + BAND_M) / M_PER_DEG;
        let (lo, hi) = (center.lat() - half, center.lat() + half);
        let nearest_equator = if lo <= 0.0 && hi >= 0.0 { 0.0 } else { lo.abs().min(hi.abs()) };
        let farthest = lo.abs().max(hi.abs()).min(90.0);
        Self {
            center,
            radius_m,
            cos_min: farthest.to_radians().cos().max(0.0),
            cos_max: nearest_equator.to_radians().cos(),
        }
    }

    /// [`disc_intersects`] for this circle.
    fn disc_intersects(&self, p: LatLng, radius_m: f64) -> bool {
        let limit = self.radius_m + radius_m;
        if radius_m <= BAND_M {
            let dlat = (p.lat() - self.center.lat()) * M_PER_DEG;
            let mut dlng = p.lng() - self.center.lng();
            if dlng > 180.0 {
                dlng -= 360.0;
            } else if dlng < -180.0 {
                dlng += 360.0;
            }
            let dlng = dlng * M_PER_DEG;
            let far = limit * (1.0 + REL_MARGIN) + ABS_MARGIN;
            // The mid-latitude of the two points lies in the band whenever they are close
            // enough to matter, so the planar distance lies between these two.
            let low = dlat * dlat + (dlng * self.cos_min).powi(2);
            if dlat.abs() > far || low > far * far {
                return false;
            }
            let high = dlat * dlat + (dlng * self.cos_max).powi(2);
            let near = limit * (1.0 - REL_MARGIN);
            if high < near * near {
                return true;
            }
        }
        within(p.distance_m(self.center), limit)
    }
}

fn bbox(rings: &[Ring]) -> [f64; 4] {
    let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    for &(x, y) in rings.iter().flatten() {
        b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
    }
    b
}

impl<'a> PreparedArea<'a> {
    /// Prepares `area`.
    pub fn new(area: &'a Area) -> Self {
        let polys: Vec<&geo::Polygon<f64>> = match area {
            Area::Polygon(p) => vec![p],
            Area::MultiPolygon(m) => m.0.iter().collect(),
            _ => Vec::new(),
        };
        let origin = polys
            .first()
            .and_then(|p| p.exterior().0.first())
            .and_then(|c| LatLng::new(c.y, c.x).ok())
            .unwrap_or_else(|| LatLng::new(0.0, 1e-9).unwrap_or_else(|_| unreachable!("valid constant")));
        let frame = Frame::at(origin);
        let polygons = polys
            .into_iter()
            .map(|p| {
                let rings = project_polygon(&frame, p);
                let b = bbox(&rings);
                let strips = Strips::new(&rings, &b);
                (rings, b, strips)
            })
            .collect();
        let circle = match area {
            Area::Circle { center, radius_m } => Some(CircleBand::new(*center, *radius_m)),
            Area::Point(p) => Some(CircleBand::new(*p, 0.0)),
            _ => None,
        };
        Self { area, frame, polygons, circle }
    }

    /// [`disc_intersects`], faster for polygons and circles.
    pub fn disc_intersects(&self, center: LatLng, radius_m: f64) -> bool {
        if let Some(c) = &self.circle {
            return c.disc_intersects(center, radius_m);
        }
        if self.polygons.is_empty() {
            return disc_intersects(self.area, center, radius_m);
        }
        let (x, y) = self.frame.xy(center.lng(), center.lat());
        let reach = radius_m * (1.0 + REL_MARGIN) + ABS_MARGIN + 1.0;
        let near = |b: &[f64; 4]| !(x + reach < b[0] || x - reach > b[2] || y + reach < b[1] || y - reach > b[3]);
        // Containment first: it is cheaper than edge distances, and in a multipolygon of
        // adjacent parts most points lie inside one part and near the edges of others.
        self.polygons.iter().any(|(rings, b, strips)| near(b) && strips.contains(rings, x, y))
            || self
                .polygons
                .iter()
                .any(|(rings, b, strips)| near(b) && within(strips.distance(rings, x, y, reach), radius_m))
    }

    /// [`cell_intersects`], faster for polygons and circles.
    pub fn cell_intersects(&self, cell: CellIndex) -> bool {
        if let Some(c) = &self.circle {
            // The centroid decides unless it lies within a circumradius of the edge.
            let d = centroid(cell).distance_m(c.center);
            if d <= c.radius_m {
                return true;
            }
            if !within(d, c.radius_m + crate::cells::max_circumradius_m(cell.resolution())) {
                return false;
            }
            return cell_intersects(self.area, cell);
        }
        if self.polygons.is_empty() {
            return cell_intersects(self.area, cell);
        }
        let hex = hexagon(&self.frame, cell);
        let hb = bbox(&hex);
        self.polygons.iter().any(|(rings, b, _)| {
            if hb[2] < b[0] || hb[0] > b[2] || hb[3] < b[1] || hb[1] > b[3] {
                return false;
            }
            polygons_intersect(&hex, rings)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(lat: f64, lng: f64) -> LatLng {
        LatLng::new(lat, lng).expect("valid")
    }

    fn square(lat: f64, lng: f64, half_deg: f64) -> Area {
        let ring = geo::LineString::from(vec![
            (lng - half_deg, lat - half_deg),
            (lng + half_deg, lat - half_deg),
            (lng + half_deg, lat + half_deg),
            (lng - half_deg, lat + half_deg),
        ]);
        Area::Polygon(geo::Polygon::new(ring, vec![]))
    }

    #[test]
    fn prepared_circles_agree_with_the_exact_predicates() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (lat, lng) in [(40.0, -75.0), (-16.99, 179.99), (84.0, 30.0), (89.9, 0.5), (0.5, 0.5)] {
            for r in [0.0, 400.0, 1_600.0, 10_000.0] {
                let area = Area::circle(ll(lat, lng), r).unwrap_or(Area::Point(ll(lat, lng)));
                let prepared = PreparedArea::new(&area);
                for _ in 0..2_000 {
                    let p = ll(lat, lng)
                        .destination(rng.random_range(0.0..360.0), rng.random_range(0.0..3.0 * r + 5_000.0));
                    let disc = rng.random_range(0.0..3_000.0);
                    assert_eq!(prepared.disc_intersects(p, disc), disc_intersects(&area, p, disc), "{p:?} {disc}");
                    let cell = p.cell(h3o::Resolution::Ten);
                    if lat > 85.0 {
                        // The planar frame of the exact check degrades within a few degrees of
                        // the pole; the great-circle fast path does not.
                        continue;
                    }
                    assert_eq!(
                        prepared.cell_intersects(cell),
                        cell_intersects(&area, cell),
                        "{cell} {lat},{lng} r={r} d={}",
                        crate::cells::centroid(cell).distance_m(ll(lat, lng))
                    );
                }
            }
        }
    }

    #[test]
    fn disc_against_circle_uses_great_circle_distance() {
        let a = Area::circle(ll(40.0, -75.0), 1_000.0).expect("valid");
        let near = ll(40.0, -75.0).destination(90.0, 1_450.0);
        let far = ll(40.0, -75.0).destination(90.0, 1_600.0);
        assert!(disc_intersects(&a, near, 500.0));
        assert!(!disc_intersects(&a, far, 500.0));
    }

    #[test]
    fn disc_against_polygon_inside_edge_and_outside() {
        let sq = square(40.0, -75.0, 0.01); // about 1.7 km by 2.2 km
        assert!(disc_intersects(&sq, ll(40.0, -75.0), 0.0), "inside");
        let east_edge = ll(40.0, -75.0 + 0.01);
        assert!(disc_intersects(&sq, east_edge.destination(90.0, 90.0), 100.0), "within radius of the edge");
        assert!(!disc_intersects(&sq, east_edge.destination(90.0, 150.0), 100.0), "beyond radius");
    }

    #[test]
    fn polygon_hole_is_not_inside() {
        let outer = geo::LineString::from(vec![(-75.02, 39.98), (-74.98, 39.98), (-74.98, 40.02), (-75.02, 40.02)]);
        let hole =
            geo::LineString::from(vec![(-75.005, 39.995), (-74.995, 39.995), (-74.995, 40.005), (-75.005, 40.005)]);
        let a = Area::Polygon(geo::Polygon::new(outer, vec![hole]));
        assert!(!disc_intersects(&a, ll(40.0, -75.0), 10.0), "in the hole, away from its edge");
        assert!(disc_intersects(&a, ll(40.0, -75.0), 500.0), "reaches the hole's edge");
    }

    #[test]
    fn shapes_across_the_antimeridian_work() {
        let ring =
            geo::LineString::from(vec![(179.99, -17.01), (-179.99, -17.01), (-179.99, -16.99), (179.99, -16.99)]);
        let a = Area::Polygon(geo::Polygon::new(ring, vec![]));
        assert!(disc_intersects(&a, ll(-17.0, 180.0), 0.0));
        assert!(disc_intersects(&a, ll(-17.0, -179.995), 0.0));
        assert!(!disc_intersects(&a, ll(-17.0, 179.9), 100.0));
    }

    #[test]
    fn prepared_areas_agree_with_the_plain_checks() {
        let sq = square(40.0, -75.0, 0.02);
        let prepared = PreparedArea::new(&sq);
        let c = ll(40.0, -75.0);
        for i in 0..72 {
            for d in [0.0, 1_000.0, 1_800.0, 2_300.0, 3_000.0] {
                let p = c.destination(i as f64 * 5.0, d);
                assert_eq!(prepared.disc_intersects(p, 300.0), disc_intersects(&sq, p, 300.0), "{i} {d}");
                let cell = p.cell(h3o::Resolution::Nine);
                assert_eq!(prepared.cell_intersects(cell), cell_intersects(&sq, cell), "{i} {d}");
            }
        }
    }

    #[test]
    fn cell_hexagon_against_areas() {
        let p = ll(40.0, -75.0);
        let cell = p.cell(h3o::Resolution::Nine);
        assert!(cell_intersects(&Area::circle(p, 10.0).expect("valid"), cell));
        assert!(!cell_intersects(&Area::circle(p.destination(0.0, 2_000.0), 500.0).expect("valid"), cell));
        assert!(cell_intersects(&square(40.0, -75.0, 0.01), cell));
        assert!(!cell_intersects(&square(41.0, -75.0, 0.01), cell));
    }
}
