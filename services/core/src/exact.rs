//! Exact geometry for the refine step of matching: does a disc (a subscriber's stored place,
//! grown by its cell's uncertainty) or an H3 cell's hexagon intersect an alert's target
//! area? Distances are great-circle distances on the mean sphere (the model of H3 and of
//! [`LatLng::distance_m`]), computed exactly whatever the radius or latitude: between points
//! by haversine, to an H3 cell by the cross-track distance to its edges (great-circle arcs),
//! and to a polygon edge (straight in longitude and latitude, as GeoJSON and h3o's tiler
//! read it) by a minimum along the edge. Containment is decided in a plane where polygon
//! edges are straight (an equirectangular frame, affine in degrees), so it is exact too.
//! Every comparison carries only an absolute margin of [`ABS_MARGIN`] on the side of
//! notifying: nobody inside is missed, and the 161 m bound does not grow with the radius
//! (a relative margin did: 0.5% was 500 m at 100 km). Planar bounds are used only to skip
//! work, never to decide near the limit.

use h3o::CellIndex;

use crate::cell_geometry::{centroid, circumradius_m, max_circumradius_m};
use crate::geo::{Area, EARTH_RADIUS_M, LatLng};

/// Meters per degree of latitude on the mean sphere.
const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
/// Relative slack of the quick planar bounds of [`CircleBand`]: they only skip the exact
/// test where its answer is certain, never decide near the limit.
const QUICK_MARGIN: f64 = 0.005;
/// Absolute margin in meters, on the side of notifying (floating-point rounding, and f32
/// storage of bucket entries is absorbed by the index's own slack).
pub const ABS_MARGIN: f64 = 1.0;

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

    /// The inverse of [`Frame::xy`]: (lat, lng) in degrees, the longitude unwrapped around
    /// the origin.
    fn deg(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (self.lat0 + y / M_PER_DEG, self.lng0 + x / (self.cos0 * M_PER_DEG))
    }

    /// A point's (lat, lng), the longitude unwrapped around the origin like the rings'.
    fn unwrapped(&self, p: LatLng) -> (f64, f64) {
        (p.lat(), self.lng0 + (p.lng() - self.lng0 + 540.0).rem_euclid(360.0) - 180.0)
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
    d <= limit + ABS_MARGIN
}

type Vec3 = [f64; 3];

fn unit(lat: f64, lng: f64) -> Vec3 {
    let (p, l) = (lat.to_radians(), lng.to_radians());
    [p.cos() * l.cos(), p.cos() * l.sin(), p.sin()]
}

fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

/// The angle between two unit vectors, accurate at every size.
fn angle(a: Vec3, b: Vec3) -> f64 {
    norm(cross(a, b)).atan2(dot(a, b))
}

/// Great-circle distance in meters from `p` to the shorter great-circle arc from `a` to `b`.
fn arc_distance_m(p: Vec3, a: Vec3, b: Vec3) -> f64 {
    let ends = angle(p, a).min(angle(p, b));
    let n = cross(a, b);
    let len = norm(n);
    if len < 1e-15 {
        return ends * EARTH_RADIUS_M;
    }
    let n = [n[0] / len, n[1] / len, n[2] / len];
    let s = dot(p, n);
    // The foot of the perpendicular from p on the arc's great circle, if it lies on the arc.
    let c = [p[0] - s * n[0], p[1] - s * n[1], p[2] - s * n[2]];
    let on_arc = norm(c) > 1e-15 && dot(cross(a, c), n) >= 0.0 && dot(cross(c, b), n) >= 0.0;
    let d = if on_arc { s.abs().min(1.0).asin().min(ends) } else { ends };
    d * EARTH_RADIUS_M
}

/// Great-circle distance in meters from `p` to the cell's hexagon (or pentagon): 0 inside.
/// H3 cell edges are great-circle arcs (straight lines of the gnomonic face projection).
pub fn cell_distance_m(cell: CellIndex, p: LatLng) -> f64 {
    if p.cell(cell.resolution()) == cell {
        return 0.0;
    }
    let v: Vec<Vec3> = cell.boundary().iter().map(|v| unit(v.lat(), v.lng())).collect();
    let q = unit(p.lat(), p.lng());
    (0..v.len()).map(|i| arc_distance_m(q, v[i], v[(i + 1) % v.len()])).fold(f64::INFINITY, f64::min)
}

/// Haversine distance in meters between two (lat, lng) pairs in degrees; longitudes may be
/// unwrapped (outside -180..180).
fn gc_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * ((lng2 - lng1).to_radians() / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// A box in degrees: `[lat_lo, lat_hi, lng_lo, lng_hi]`, longitudes unwrapped.
type DegBox = [f64; 4];

/// A lower bound of the great-circle distance from (lat, lng) to every point of the box:
/// haversine's terms each at their least over the box (the smallest latitude and longitude
/// gaps, the smallest cosine of latitude).
fn box_lower_m(lat: f64, lng: f64, b: &DegBox) -> f64 {
    let dphi = if lat < b[0] {
        b[0] - lat
    } else if lat > b[1] {
        lat - b[1]
    } else {
        0.0
    };
    let width = b[3] - b[2];
    let dl = if width >= 360.0 || (lng - b[2]).rem_euclid(360.0) <= width {
        0.0
    } else {
        (b[2] - lng).rem_euclid(360.0).min((lng - b[3]).rem_euclid(360.0))
    };
    let cos_min = b[0].to_radians().cos().min(b[1].to_radians().cos()).max(0.0);
    let h = (dphi.to_radians() / 2.0).sin().powi(2)
        + lat.to_radians().cos().max(0.0) * cos_min * (dl.min(180.0).to_radians() / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// A polygon edge in degrees: ((lat, lng), (lat, lng)), longitudes unwrapped together.
type DegEdge = ((f64, f64), (f64, f64));

fn edge_box(((la, ga), (lb, gb)): DegEdge) -> DegBox {
    [la.min(lb), la.max(lb), ga.min(gb), ga.max(gb)]
}

/// The least great-circle distance from (lat, lng) to the edge, by golden-section search
/// along it (in pieces of at most 30 degrees of longitude, on each of which the distance
/// has a single minimum), never below the true minimum by more than a few millimeters and
/// never above it: every value is the distance to a real point of the edge.
fn edge_distance_m(lat: f64, lng: f64, ((la, ga), (lb, gb)): DegEdge) -> f64 {
    let f = |t: f64| gc_m(lat, lng, la + t * (lb - la), ga + t * (gb - ga));
    let pieces = ((gb - ga).abs() / 30.0).ceil().max(1.0);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut best = f(0.0).min(f(1.0));
    let mut k = 0.0;
    while k < pieces {
        let (mut lo, mut hi) = (k / pieces, (k + 1.0) / pieces);
        let (mut x1, mut x2) = (hi - g * (hi - lo), lo + g * (hi - lo));
        let (mut f1, mut f2) = (f(x1), f(x2));
        for _ in 0..48 {
            if f1 < f2 {
                hi = x2;
                (x2, f2) = (x1, f1);
                x1 = hi - g * (hi - lo);
                f1 = f(x1);
            } else {
                lo = x1;
                (x1, f1) = (x2, f2);
                x2 = lo + g * (hi - lo);
                f2 = f(x2);
            }
        }
        best = best.min(f1).min(f2).min(f(hi));
        k += 1.0;
    }
    best
}

/// Whether some edge comes within `limit` (plus the margin) of (lat, lng). Edges whose box
/// is surely farther are skipped; the nearest point in a local frame at the point, a real
/// point of the edge, settles most of the rest; only edges still in doubt are searched.
fn edges_within(lat: f64, lng: f64, limit: f64, edges: impl Iterator<Item = DegEdge>) -> bool {
    let bound = limit + ABS_MARGIN;
    let cos_p = lat.to_radians().cos();
    let mut doubtful: Vec<DegEdge> = Vec::new();
    for e in edges {
        if box_lower_m(lat, lng, &edge_box(e)) > bound {
            continue;
        }
        let ((la, ga), (lb, gb)) = e;
        let (ax, ay, dx, dy) = ((ga - lng) * cos_p, la - lat, (gb - ga) * cos_p, lb - la);
        let len2 = dx * dx + dy * dy;
        let t = if len2 == 0.0 { 0.0 } else { (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0) };
        if gc_m(lat, lng, la + t * (lb - la), ga + t * (gb - ga)) <= bound {
            return true;
        }
        doubtful.push(e);
    }
    doubtful.into_iter().any(|e| edge_distance_m(lat, lng, e) <= bound)
}

/// The edges of projected rings, back in degrees.
fn ring_edges<'r>(f: &'r Frame, rings: &'r [Ring]) -> impl Iterator<Item = DegEdge> + 'r {
    rings.iter().flat_map(move |r| (0..r.len()).map(move |i| (f.deg(r[i]), f.deg(r[(i + 1) % r.len()]))))
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
        Area::Cells(cells) => cells.iter().any(|c| {
            // The centroid settles it unless the disc is near the cell's boundary.
            let d = center.distance_m(centroid(*c));
            d <= radius_m || (within(d, radius_m + circumradius_m(*c)) && within(cell_distance_m(*c, center), radius_m))
        }),
    }
}

fn disc_intersects_polygon(p: &geo::Polygon<f64>, center: LatLng, radius_m: f64) -> bool {
    let f = Frame::at(center);
    let rings = project_polygon(&f, p);
    let (lat, lng) = f.unwrapped(center);
    point_in_polygon(0.0, 0.0, &rings) || edges_within(lat, lng, radius_m, ring_edges(&f, &rings))
}

fn hexagon(f: &Frame, cell: CellIndex) -> Vec<Ring> {
    vec![cell.boundary().iter().map(|v| f.xy(v.lng(), v.lat())).collect()]
}

/// Whether the hexagon of `cell` comes within `radius_m` of `center`.
fn hexagon_near(cell: CellIndex, center: LatLng, radius_m: f64) -> bool {
    within(cell_distance_m(cell, center), radius_m)
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
        // About eight edges a strip; many strips for huge outlines (a 60,000-vertex border).
        let count = (n / 8).clamp(1, 1 << 16);
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

    /// Every edge whose y-range may meet `lo..=hi` (some more than once).
    fn edges_in<'r>(
        &'r self,
        rings: &'r [Ring],
        lo: f64,
        hi: f64,
    ) -> impl Iterator<Item = ((f64, f64), (f64, f64))> + 'r {
        let count = self.edges.len();
        let (s0, s1) = (Self::index(self.y0, self.height, count, lo), Self::index(self.y0, self.height, count, hi));
        self.edges[s0..=s1].iter().flatten().map(move |&e| Self::edge(rings, e))
    }

    /// Whether the polygon and a small convex ring (an H3 cell's hexagon) share a point,
    /// looking only at the edges of the strips the hexagon spans: a hexagon vertex inside
    /// the polygon, or a polygon edge that crosses the hexagon or has an end inside it (a
    /// point of the polygon inside the hexagon lies in those strips).
    fn meets_hexagon(&self, rings: &[Ring], hex: &[(f64, f64)], hb: &[f64; 4]) -> bool {
        if hex.iter().any(|&(x, y)| self.contains(rings, x, y)) {
            return true;
        }
        self.edges_in(rings, hb[1], hb[3]).any(|(a, b)| {
            let (lo, hi) = (a.1.min(b.1), a.1.max(b.1));
            if hi < hb[1] || lo > hb[3] || a.0.max(b.0) < hb[0] || a.0.min(b.0) > hb[2] {
                return false;
            }
            point_in_ring(a.0, a.1, hex)
                || (0..hex.len()).any(|i| segments_cross(a, b, hex[i], hex[(i + 1) % hex.len()]))
        })
    }
}

/// An alert area prepared once for many refinements: polygons projected once into a frame
/// at the area's center, with bounding boxes to reject far candidates without touching
/// the rings.
#[derive(Debug)]
pub struct PreparedArea<'a> {
    area: &'a Area,
    frame: Frame,
    polygons: Vec<PreparedPolygon>,
    circle: Option<CircleBand>,
}

/// One polygon in the area's frame: its rings, bounding boxes (in the frame and in
/// degrees) and strip index.
#[derive(Debug)]
struct PreparedPolygon {
    rings: Vec<Ring>,
    bbox: [f64; 4],
    deg: DegBox,
    strips: Strips,
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
            let far = limit * (1.0 + QUICK_MARGIN) + ABS_MARGIN;
            // The mid-latitude of the two points lies in the band whenever they are close
            // enough to matter, so the planar distance lies between these two.
            let low = dlat * dlat + (dlng * self.cos_min).powi(2);
            if dlat.abs() > far || low > far * far {
                return false;
            }
            let high = dlat * dlat + (dlng * self.cos_max).powi(2);
            let near = limit * (1.0 - QUICK_MARGIN);
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
                let bbox = bbox(&rings);
                let strips = Strips::new(&rings, &bbox);
                let (lo, hi) = (frame.deg((bbox[0], bbox[1])), frame.deg((bbox[2], bbox[3])));
                PreparedPolygon { deg: [lo.0, hi.0, lo.1, hi.1], rings, bbox, strips }
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
        let (lat, lng) = self.frame.unwrapped(center);
        let inside = |b: &[f64; 4]| x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3];
        // Containment first: it is cheaper than edge distances, and in a multipolygon of
        // adjacent parts most points lie inside one part and near the edges of others.
        if self.polygons.iter().any(|p| inside(&p.bbox) && p.strips.contains(&p.rings, x, y)) {
            return true;
        }
        // Frame y is exact latitude: an edge more than the reach away in latitude is out.
        let reach = radius_m + ABS_MARGIN + 1.0;
        self.polygons.iter().any(|p| {
            box_lower_m(lat, lng, &p.deg) <= radius_m + ABS_MARGIN
                && edges_within(
                    lat,
                    lng,
                    radius_m,
                    p.strips
                        .edges_in(&p.rings, y - reach, y + reach)
                        .map(|(a, b)| (self.frame.deg(a), self.frame.deg(b))),
                )
        })
    }

    /// [`cell_intersects`], faster for polygons and circles.
    pub fn cell_intersects(&self, cell: CellIndex) -> bool {
        if let Some(c) = &self.circle {
            // The centroid decides unless it lies within a circumradius of the edge.
            let d = centroid(cell).distance_m(c.center);
            if d <= c.radius_m {
                return true;
            }
            if !within(d, c.radius_m + max_circumradius_m(cell.resolution())) {
                return false;
            }
            return within(cell_distance_m(cell, c.center), c.radius_m);
        }
        if self.polygons.is_empty() {
            return cell_intersects(self.area, cell);
        }
        let hex = hexagon(&self.frame, cell);
        let hb = bbox(&hex);
        self.polygons.iter().any(|p| {
            let b = &p.bbox;
            if hb[2] < b[0] || hb[0] > b[2] || hb[3] < b[1] || hb[1] > b[3] {
                return false;
            }
            p.strips.meets_hexagon(&p.rings, &hex[0], &hb)
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
            for r in [0.0, 400.0, 1_600.0, 10_000.0, 200_000.0] {
                let area = Area::circle(ll(lat, lng), r).unwrap_or(Area::Point(ll(lat, lng)));
                let prepared = PreparedArea::new(&area);
                for _ in 0..1_000 {
                    let p = ll(lat, lng)
                        .destination(rng.random_range(0.0..360.0), rng.random_range(0.0..3.0 * r + 5_000.0));
                    let disc = rng.random_range(0.0..3_000.0);
                    assert_eq!(prepared.disc_intersects(p, disc), disc_intersects(&area, p, disc), "{p:?} {disc}");
                    let cell = p.cell(h3o::Resolution::Ten);
                    // Both sides are great-circle exact now, up to the pole.
                    assert_eq!(
                        prepared.cell_intersects(cell),
                        cell_intersects(&area, cell),
                        "{cell} {lat},{lng} r={r} d={}",
                        centroid(cell).distance_m(ll(lat, lng))
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
