//! H3 helpers shared by policy, spatial and push: conservative covers of areas (every cell
//! that touches the area, so that nobody inside is ever missed) and the territory -> shard
//! map that co-partitions alerts.indexed and subscriptions. The shard function is part of
//! the on-disk contract: changing it re-shards every stored subscription.

use std::f64::consts::PI;

pub use crate::cell_geometry::{centroid, circumradius_m, max_circumradius_m};

use h3o::geom::{ContainmentMode, TilerBuilder};
use h3o::{CellIndex, Resolution};

use crate::geo::{Area, LatLng};

/// Sides of the polygon that stands in for a circle. The polygon circumscribes the circle,
/// so it contains it: the cover can only grow, never miss, by r * (1 / cos(pi / n) - 1),
/// 0.12% of the radius (2 m for a 1.6 km circle).
pub const CIRCLE_SIDES: usize = 64;

/// `[geo]`: the resolutions every spatial component shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawGeoConfig")]
pub struct GeoConfig {
    /// Resolution of the cell that stands for a subscriber's point or circle center.
    /// Subscriber locations are stored at this precision and no finer.
    pub precision: Resolution,
    /// Resolution of the cells that stand for a subscriber's polygon.
    pub polygon_precision: Resolution,
    /// Resolution of a shard territory.
    pub territory_resolution: Resolution,
    /// Largest cover accepted for one alert, in cells at the finest bucket level (9).
    pub max_cover_cells: usize,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoConfig {
    #[serde(default = "default_precision")]
    precision: u8,
    #[serde(default = "default_polygon_precision")]
    polygon_precision: u8,
    #[serde(default = "default_territory")]
    territory_resolution: u8,
    #[serde(default = "default_max_cover")]
    max_cover_cells: usize,
}

const fn default_precision() -> u8 {
    11
}
const fn default_polygon_precision() -> u8 {
    10
}
const fn default_territory() -> u8 {
    3
}
const fn default_max_cover() -> usize {
    2_000_000
}

impl TryFrom<RawGeoConfig> for GeoConfig {
    type Error = String;
    fn try_from(r: RawGeoConfig) -> Result<Self, String> {
        let precision =
            Resolution::try_from(r.precision).map_err(|_| format!("precision {} is not 0..=15", r.precision))?;
        let polygon_precision = Resolution::try_from(r.polygon_precision)
            .map_err(|_| format!("polygon_precision {} is not 0..=15", r.polygon_precision))?;
        let territory = Resolution::try_from(r.territory_resolution)
            .map_err(|_| format!("territory_resolution {} is not 0..=15", r.territory_resolution))?;
        if territory > precision {
            return Err(format!(
                "territory_resolution {} is finer than precision {}",
                r.territory_resolution, r.precision
            ));
        }
        Ok(Self { precision, polygon_precision, territory_resolution: territory, max_cover_cells: r.max_cover_cells })
    }
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            precision: Resolution::Eleven,
            polygon_precision: Resolution::Ten,
            territory_resolution: Resolution::Three,
            max_cover_cells: default_max_cover(),
        }
    }
}

/// Why an area could not be covered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoverError {
    /// h3o refused the geometry.
    #[error("invalid geometry: {0}")]
    InvalidGeometry(String),
    /// The cover would have more cells than allowed.
    #[error("area too large: more than {max} cells at resolution {res}")]
    TooLarge { max: usize, res: u8 },
}

/// A polygon (x = lng, y = lat) that contains the circle.
pub fn circle_polygon(center: LatLng, radius_m: f64) -> geo::Polygon<f64> {
    let outer = radius_m / (PI / CIRCLE_SIDES as f64).cos();
    let ring: Vec<geo::Coord<f64>> = (0..CIRCLE_SIDES)
        .map(|i| {
            let p = center.destination(360.0 * i as f64 / CIRCLE_SIDES as f64, outer);
            geo::Coord { x: p.lng(), y: p.lat() }
        })
        .collect();
    geo::Polygon::new(geo::LineString(ring), vec![])
}

fn tile(polygons: Vec<geo::Polygon<f64>>, res: Resolution, max_cells: usize) -> Result<Vec<CellIndex>, CoverError> {
    let mut tiler = TilerBuilder::new(res).containment_mode(ContainmentMode::Covers).build();
    for p in polygons {
        tiler.add(p).map_err(|e| CoverError::InvalidGeometry(e.to_string()))?;
    }
    if tiler.coverage_size_hint() > max_cells.saturating_mul(4) {
        return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
    }
    let mut cells: Vec<CellIndex> = tiler.into_coverage().collect();
    if cells.len() > max_cells {
        return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
    }
    cells.sort_unstable();
    cells.dedup();
    Ok(cells)
}

/// Cells at `res` that touch the disc of `radius_m` around `center`, each with whether it
/// lies entirely inside the disc. Conservative: a cell is kept when its centroid is within
/// the radius plus the largest circumradius of the resolution.
pub fn disc_cells(
    center: LatLng,
    radius_m: f64,
    res: Resolution,
    max_cells: usize,
) -> Result<Vec<(CellIndex, bool)>, CoverError> {
    let rho = max_circumradius_m(res);
    let bound = radius_m + rho;
    // Centroids of successive grid rings are at least ~0.9 average edge lengths apart, even
    // where H3 cells are smallest.
    let k = (bound / (0.9 * res.edge_length_m())).ceil() as u64 + 1;
    if 3 * k * (k + 1) + 1 > (max_cells as u64).saturating_mul(4).max(64) {
        return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
    }
    // Exact per-cell circumradii only where the cheap bounds cannot decide: cells whose
    // centroid is within half an edge of the disc surely reach into it (their inscribed
    // radius is larger), and cells within the disc by the largest circumradius are surely
    // inside it.
    let half_edge = 0.5 * res.edge_length_m();
    let out: Vec<(CellIndex, bool)> = center
        .cell(res)
        .grid_disk::<Vec<_>>(k as u32)
        .into_iter()
        .filter_map(|c| {
            let d = center.distance_m(centroid(c));
            if d > bound {
                return None;
            }
            if d + rho <= radius_m {
                return Some((c, true));
            }
            let own = circumradius_m(c);
            if d > radius_m + half_edge && d > radius_m + own {
                return None;
            }
            Some((c, d + own <= radius_m))
        })
        .collect();
    if out.len() > max_cells {
        return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
    }
    Ok(out)
}

/// An upper bound of the number of cells [`area_cells`] returns at `res`, when one is cheap:
/// for points, circles and discs, the size of the grid disk that is searched. `None` for
/// polygons and cell sets.
pub fn cover_size_bound(area: &Area, res: Resolution) -> Option<u64> {
    let radius_m = match area {
        Area::Point(_) => 0.0,
        Area::Circle { radius_m, .. } => *radius_m,
        Area::CellDisc { cell, radius_m } => radius_m + circumradius_m(*cell),
        _ => return None,
    };
    let k = ((radius_m + max_circumradius_m(res)) / (0.9 * res.edge_length_m())).ceil() as u64 + 1;
    Some(3 * k * (k + 1) + 1)
}

/// Like [`disc_cells`], without the per-cell boundaries: a cell is kept when its centroid is
/// within the radius plus the largest circumradius of the resolution, and is inside when it
/// is within the radius by that much. A superset of [`disc_cells`] with fewer "inside"
/// claims, at a fraction of the cost (no cell boundary is computed).
pub fn disc_cells_loose(
    center: LatLng,
    radius_m: f64,
    res: Resolution,
    max_cells: usize,
) -> Result<Vec<(CellIndex, bool)>, CoverError> {
    Ok(grown_disc(center, radius_m, 0.0, res, max_cells)?.into_iter().map(|(c, r)| (c, r == Reach::Inside)).collect())
}

/// How a lookup cell relates to an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Within the growth margin only.
    Near,
    /// May touch the area.
    Touches,
    /// Lies entirely inside the area.
    Inside,
}

/// The cells of [`disc_cells_loose`] for the disc grown by `grow_m`, each with its
/// [`Reach`] of the disc itself.
fn grown_disc(
    center: LatLng,
    radius_m: f64,
    grow_m: f64,
    res: Resolution,
    max_cells: usize,
) -> Result<Vec<(CellIndex, Reach)>, CoverError> {
    let rho = max_circumradius_m(res);
    let bound = radius_m + grow_m + rho;
    let k = (bound / (0.9 * res.edge_length_m())).ceil() as u64 + 1;
    if 3 * k * (k + 1) + 1 > (max_cells as u64).saturating_mul(4).max(64) {
        return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
    }
    let out: Vec<(CellIndex, Reach)> = center
        .cell(res)
        .grid_disk::<Vec<_>>(k as u32)
        .into_iter()
        .filter_map(|c| {
            let d = center.distance_m(centroid(c));
            let reach = if d + rho <= radius_m {
                Reach::Inside
            } else if d <= radius_m + rho {
                Reach::Touches
            } else {
                Reach::Near
            };
            (d <= bound).then_some((c, reach))
        })
        .collect();
    if out.len() > max_cells {
        return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
    }
    Ok(out)
}

/// Cells at `res` holding a point within one edge length (`res.edge_length_m()`) of
/// `area`, each with its [`Reach`] of the area itself: the lookup cells of the index, where a
/// disc no wider than an edge is filed under the one cell holding its center (a bucket
/// inside the area holds only discs that meet it) and a cell set under the cells it touches.
/// Circles and discs scan a grid disk like [`disc_cells_loose`]; polygons widen the boundary
/// band of [`polygon_cells`] to two rings (two points an edge apart lie at most two cells
/// apart); the boundary crosses only the first ring, so the second is inside or near by its
/// centroid.
pub fn lookup_cells(area: &Area, res: Resolution, max_cells: usize) -> Result<Vec<(CellIndex, Reach)>, CoverError> {
    let grow = res.edge_length_m();
    let banded = |polygons: &[geo::Polygon<f64>]| polygon_cells_banded(polygons, res, max_cells, 2);
    match area {
        Area::Point(p) => grown_disc(*p, 0.0, grow, res, max_cells),
        Area::Circle { center, radius_m } => grown_disc(*center, *radius_m, grow, res, max_cells),
        Area::CellDisc { cell, radius_m } => {
            grown_disc(centroid(*cell), radius_m + circumradius_m(*cell), grow, res, max_cells)
        }
        Area::Polygon(p) => banded(std::slice::from_ref(p)),
        Area::MultiPolygon(m) => banded(&m.0),
        Area::Cells(cells) => {
            let mut out = Vec::new();
            for &c in cells {
                let r = circumradius_m(c) + grow;
                out.extend(
                    disc_cells_loose(centroid(c), r, res, max_cells)?.into_iter().map(|(c, _)| (c, Reach::Touches)),
                );
                if out.len() > max_cells {
                    return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
                }
            }
            out.sort_unstable_by_key(|(c, _)| *c);
            out.dedup_by_key(|(c, _)| *c);
            Ok(out)
        }
    }
}

/// Cells at `res` that touch the polygons, each with whether it lies entirely inside them.
///
/// h3o's `Covers` tiling tests every cell's boundary against the whole geometry, which
/// takes tens of seconds for a city of 150 detailed neighborhoods. Instead: cells whose
/// centroid is inside (h3o's fast fill), plus a band along every ring: boundary points
/// sampled at under half a cell width, each with its cell and that cell's neighbors. Any
/// cell the boundary crosses holds a boundary point within a quarter cell of a sample, so
/// it is the sample's cell or a neighbor. Band cells are never claimed to be inside.
pub fn polygon_cells(
    polygons: &[geo::Polygon<f64>],
    res: Resolution,
    max_cells: usize,
) -> Result<Vec<(CellIndex, bool)>, CoverError> {
    Ok(polygon_cells_banded(polygons, res, max_cells, 1)?.into_iter().map(|(c, r)| (c, r == Reach::Inside)).collect())
}

/// [`polygon_cells`] with a band of `rings` cells around every boundary sample.
fn polygon_cells_banded(
    polygons: &[geo::Polygon<f64>],
    res: Resolution,
    max_cells: usize,
    rings: u32,
) -> Result<Vec<(CellIndex, Reach)>, CoverError> {
    let too_large = || CoverError::TooLarge { max: max_cells, res: u8::from(res) };
    let mut tiler = TilerBuilder::new(res).containment_mode(ContainmentMode::ContainsCentroid).build();
    for p in polygons {
        tiler.add(p.clone()).map_err(|e| CoverError::InvalidGeometry(e.to_string()))?;
    }
    if tiler.coverage_size_hint() > max_cells.saturating_mul(4) {
        return Err(too_large());
    }
    // Sample cells first (consecutive samples mostly share a cell), then their rings.
    let mut samples: Vec<CellIndex> = Vec::new();
    let step_m = 0.45 * res.edge_length_m() / 1.5;
    for p in polygons {
        for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
            for w in ring.0.windows(2) {
                let (Ok(a), Ok(b)) = (LatLng::new(w[0].y, w[0].x), LatLng::new(w[1].y, w[1].x)) else { continue };
                let n = (a.distance_m(b) / step_m).ceil().max(1.0) as usize;
                // Interpolate as h3o does (planar in degrees), unwrapping the antimeridian.
                let dlng = (b.lng() - a.lng() + 540.0).rem_euclid(360.0) - 180.0;
                for i in 0..=n {
                    let t = i as f64 / n as f64;
                    let lng = (a.lng() + t * dlng + 540.0).rem_euclid(360.0) - 180.0;
                    let Ok(q) = LatLng::new(a.lat() + t * (b.lat() - a.lat()), lng) else { continue };
                    let c = q.cell(res);
                    if samples.last() != Some(&c) {
                        samples.push(c);
                    }
                }
                if samples.len() > max_cells.saturating_mul(8) {
                    samples.sort_unstable();
                    samples.dedup();
                    if samples.len() > max_cells {
                        return Err(too_large());
                    }
                }
            }
        }
    }
    samples.sort_unstable();
    samples.dedup();
    // The boundary crosses only cells of the first ring; cells of the outer rings lie wholly
    // inside or wholly outside, as their centroid does.
    let ring_cells = |k: u32| {
        let mut v: Vec<CellIndex> = samples.iter().flat_map(|c| c.grid_disk::<Vec<_>>(k)).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let band = ring_cells(1);
    let outer = if rings > 1 { ring_cells(rings) } else { Vec::new() };
    let mut fill: Vec<CellIndex> = tiler.into_coverage().collect();
    fill.sort_unstable();
    fill.dedup();
    let is_fill = |c: &CellIndex| fill.binary_search(c).is_ok();
    let mut out: Vec<(CellIndex, Reach)> = band.iter().map(|&c| (c, Reach::Touches)).collect();
    out.extend(
        outer
            .iter()
            .filter(|c| band.binary_search(c).is_err())
            .map(|&c| (c, if is_fill(&c) { Reach::Inside } else { Reach::Near })),
    );
    out.extend(
        fill.iter()
            .filter(|c| band.binary_search(c).is_err() && outer.binary_search(c).is_err())
            .map(|&c| (c, Reach::Inside)),
    );
    if out.len() > max_cells {
        return Err(too_large());
    }
    out.sort_unstable_by_key(|(c, _)| *c);
    Ok(out)
}

/// Cells at `res` that touch `area`, each with whether it lies entirely inside the area.
/// Conservative in both directions: every touching cell is listed, and "inside" is only
/// claimed when it is certain.
pub fn area_cells(area: &Area, res: Resolution, max_cells: usize) -> Result<Vec<(CellIndex, bool)>, CoverError> {
    match area {
        Area::Point(p) => disc_cells(*p, 0.0, res, max_cells),
        Area::Circle { center, radius_m } => disc_cells(*center, *radius_m, res, max_cells),
        Area::CellDisc { cell, radius_m } => {
            disc_cells(centroid(*cell), radius_m + circumradius_m(*cell), res, max_cells)
        }
        Area::Polygon(p) => polygon_cells(std::slice::from_ref(p), res, max_cells),
        Area::MultiPolygon(m) => polygon_cells(&m.0, res, max_cells),
        Area::Cells(cells) => {
            let mut out = Vec::new();
            for &c in cells {
                out.extend(
                    disc_cells(centroid(c), circumradius_m(c), res, max_cells)?.into_iter().map(|(x, _)| (x, false)),
                );
                if out.len() > max_cells {
                    return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
                }
            }
            out.sort_unstable_by_key(|(c, _)| *c);
            out.dedup_by_key(|(c, _)| *c);
            Ok(out)
        }
    }
}

/// Every cell at `res` that touches `area`, sorted and unique. Explicit cells finer than
/// `res` become their parent; coarser ones their children.
pub fn cover(area: &Area, res: Resolution, max_cells: usize) -> Result<Vec<CellIndex>, CoverError> {
    match area {
        Area::Point(p) => Ok(vec![p.cell(res)]),
        Area::CellDisc { cell, radius_m } => {
            let r = radius_m + circumradius_m(*cell);
            tile(vec![circle_polygon(centroid(*cell), r)], res, max_cells)
        }
        Area::Circle { center, radius_m } => tile(vec![circle_polygon(*center, *radius_m)], res, max_cells),
        Area::Polygon(_) | Area::MultiPolygon(_) => {
            let prepared = crate::exact::PreparedArea::new(area);
            Ok(area_cells(area, res, max_cells)?
                .into_iter()
                .filter(|&(c, inside)| inside || prepared.cell_intersects(c))
                .map(|(c, _)| c)
                .collect())
        }
        Area::Cells(cells) => {
            let mut out = Vec::new();
            for &c in cells {
                if c.resolution() >= res {
                    out.extend(c.parent(res));
                } else {
                    if out.len() as u64 + c.children_count(res) > max_cells as u64 {
                        return Err(CoverError::TooLarge { max: max_cells, res: u8::from(res) });
                    }
                    out.extend(c.children(res));
                }
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        }
    }
}

/// The cells that stand for a subscriber's polygon: cells at `res` wholly inside it, and
/// near its boundary the cells one resolution finer that touch it (except those wholly
/// within an inside cell). No stored cell sticks out of the polygon by more than a finer
/// cell's width (at most 67 m at resolution 11; a plain resolution-10 cover sticks out by
/// up to 176 m, which alone breaks the 161 m bound), at a few times a plain cover's count.
/// H3 children do not tile their parent, so the fine cells are taken from around every
/// boundary cell's children, not from the children alone. Other areas: [`cover`].
pub fn subscriber_cells(area: &Area, res: Resolution, max_cells: usize) -> Result<Vec<CellIndex>, CoverError> {
    let Some(fine) = res.succ() else { return cover(area, res, max_cells) };
    if !matches!(area, Area::Polygon(_) | Area::MultiPolygon(_)) {
        return cover(area, res, max_cells);
    }
    let too_large = || CoverError::TooLarge { max: max_cells, res: u8::from(fine) };
    let coarse = area_cells(area, res, max_cells)?;
    let inside: std::collections::HashSet<CellIndex> = coarse.iter().filter(|(_, i)| *i).map(|(c, _)| *c).collect();
    let mut candidates: Vec<CellIndex> = Vec::new();
    for (c, _) in coarse.iter().filter(|(_, i)| !*i) {
        for child in c.children(fine) {
            candidates.extend(child.grid_disk::<Vec<_>>(1));
        }
        if candidates.len() > max_cells.saturating_mul(16) {
            return Err(too_large());
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    let prepared = crate::exact::PreparedArea::new(area);
    // A fine cell all of whose vertices lie in one inside cell lies in it (cells are convex).
    let within_inside = |k: CellIndex| {
        let c = centroid(k).cell(res);
        inside.contains(&c)
            && k.boundary().iter().all(|v| LatLng::new(v.lat(), v.lng()).is_ok_and(|v| v.cell(res) == c))
    };
    let mut out: Vec<CellIndex> = inside.iter().copied().collect();
    for k in candidates {
        if prepared.cell_intersects(k) && !within_inside(k) {
            out.push(k);
            if out.len() > max_cells {
                return Err(too_large());
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Maps territories (cells at a coarse resolution) onto a fixed number of shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMap {
    /// Resolution of a territory.
    pub territory_res: Resolution,
    /// Number of shards (= partitions of alerts.indexed and subscriptions).
    pub shards: u32,
}

impl ShardMap {
    /// The shard owning `cell`'s territory. `cell` must be at or finer than the territory
    /// resolution.
    pub fn shard_of(&self, cell: CellIndex) -> u32 {
        let territory = cell.parent(self.territory_res).unwrap_or(cell);
        (mix64(u64::from(territory)) % u64::from(self.shards.max(1))) as u32
    }

    /// Every shard touched by `cells`, ascending.
    pub fn shards_of(&self, cells: &[CellIndex]) -> Vec<u32> {
        let mut shards: Vec<u32> = cells.iter().map(|&c| self.shard_of(c)).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }
}

/// A fixed 64-bit mixer (splitmix64's finalizer): neighbouring territories have nearby
/// indexes, and this spreads them over the shards. Never change it (see module docs).
pub const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable partition for a string key (tenants on the notifications topic).
pub fn partition_for_key(key: &str, partitions: u32) -> i32 {
    // FNV-1a, then the mixer: stable across versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (mix64(h) % u64::from(partitions.max(1))) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sf() -> LatLng {
        LatLng::new(37.7749, -122.4194).expect("valid")
    }

    #[test]
    fn circle_cover_contains_every_point_inside_the_circle() {
        let res = Resolution::Ten;
        let r = 1_600.0;
        let cells = cover(&Area::circle(sf(), r).expect("valid"), res, 100_000).expect("cover");
        for i in 0..360 {
            for f in [0.0, 0.5, 0.99, 1.0] {
                let p = sf().destination(i as f64, r * f);
                assert!(cells.binary_search(&p.cell(res)).is_ok(), "missed bearing {i} at {f}");
            }
        }
    }

    #[test]
    fn circle_cover_stays_within_a_cell_of_the_circle() {
        let res = Resolution::Ten;
        let r = 1_600.0;
        let cells = cover(&Area::circle(sf(), r).expect("valid"), res, 100_000).expect("cover");
        for c in cells {
            let centroid = LatLng::new(h3o::LatLng::from(c).lat(), h3o::LatLng::from(c).lng()).expect("valid");
            // A resolution-10 cell is at most ~167 m across.
            assert!(centroid.distance_m(sf()) < r + 170.0);
        }
    }

    #[test]
    fn cover_refuses_areas_over_the_cell_budget() {
        let area = Area::circle(sf(), 50_000.0).expect("valid");
        assert!(matches!(cover(&area, Resolution::Ten, 1_000), Err(CoverError::TooLarge { .. })));
    }

    #[test]
    fn max_circumradius_bounds_sampled_cells_at_every_resolution() {
        for r in 0..=12u8 {
            let res = Resolution::try_from(r).expect("valid");
            let bound = max_circumradius_m(res);
            for lat in (-85..=85).step_by(17) {
                for lng in (-180..180).step_by(23) {
                    let p = LatLng::new(lat as f64 + 0.3, lng as f64 + 0.7).expect("valid");
                    let c = p.cell(res);
                    assert!(circumradius_m(c) <= bound, "res {r} cell {c} {} > {bound}", circumradius_m(c));
                }
            }
            for base in CellIndex::base_cells() {
                let c = base.center_child(res).expect("child");
                assert!(circumradius_m(c) <= bound, "res {r} pentagon-ish {c}");
            }
        }
    }

    #[test]
    #[ignore = "prints the measured ratio that max_circumradius_m is derived from"]
    #[allow(clippy::print_stdout)]
    fn print_circumradius_to_edge_ratio() {
        for r in 0..=12u8 {
            let res = Resolution::try_from(r).expect("valid");
            let mut worst: f64 = 0.0;
            for lat in (-89..=89).step_by(2) {
                for lng in (-180..180).step_by(3) {
                    let c = LatLng::new(lat as f64 + 0.31, lng as f64 + 0.77).expect("valid").cell(res);
                    worst = worst.max(circumradius_m(c) / res.edge_length_m());
                }
            }
            for base in CellIndex::base_cells() {
                let c = base.center_child(res).expect("child");
                worst = worst.max(circumradius_m(c) / res.edge_length_m());
            }
            println!("res {r}: worst circumradius / average edge = {worst:.3}");
        }
    }

    #[test]
    fn descendants_stay_within_one_and_a_half_parent_circumradii() {
        for (lat, lng) in [(37.77, -122.42), (-33.9, 151.2), (64.1, -21.9), (0.2, 0.3)] {
            let p = LatLng::new(lat, lng).expect("valid");
            for res in [Resolution::Six, Resolution::Nine] {
                let parent = p.cell(res);
                let (c, bound) = (centroid(parent), circumradius_m(parent) * 1.5);
                let fine = Resolution::try_from(u8::from(res) + 2).expect("valid");
                for child in parent.children(fine) {
                    for v in child.boundary().iter() {
                        let v = LatLng::new(v.lat(), v.lng()).expect("valid");
                        assert!(c.distance_m(v) <= bound, "{child} sticks out of {parent}");
                    }
                }
            }
        }
    }

    #[test]
    fn disc_cells_hold_every_point_of_the_disc() {
        for (lat, lng) in [(37.77, -122.42), (-16.99, 179.999), (89.5, 10.0), (0.5, 0.5)] {
            let c = LatLng::new(lat, lng).expect("valid");
            for (res, r) in [
                (Resolution::Nine, 0.0),
                (Resolution::Nine, 800.0),
                (Resolution::Seven, 3_000.0),
                (Resolution::Five, 1_000.0),
            ] {
                let cells = disc_cells(c, r, res, 1_000_000).expect("cells");
                for i in 0..72 {
                    for f in [0.0, 0.5, 1.0] {
                        let p = c.destination(i as f64 * 5.0, r * f);
                        let pc = p.cell(res);
                        assert!(cells.iter().any(|(x, _)| *x == pc), "missed {pc} at {lat},{lng} r={r} res={res}");
                    }
                }
                for (cell, inside) in cells {
                    if inside {
                        assert!(c.distance_m(centroid(cell)) + circumradius_m(cell) <= r + 1e-6);
                    }
                }
            }
        }
    }

    #[test]
    fn loose_disc_cells_contain_the_exact_ones_and_claim_inside_only_when_inside() {
        for (lat, lng) in [(37.77, -122.42), (-16.99, 179.999), (89.5, 10.0)] {
            let c = LatLng::new(lat, lng).expect("valid");
            for (res, r) in [(Resolution::Nine, 0.0), (Resolution::Nine, 1_600.0), (Resolution::Six, 2_500.0)] {
                let exact = disc_cells(c, r, res, 1_000_000).expect("cells");
                let loose = disc_cells_loose(c, r, res, 1_000_000).expect("cells");
                for (cell, _) in &exact {
                    assert!(loose.iter().any(|(x, _)| x == cell), "loose lost {cell}");
                }
                for (cell, inside) in loose {
                    if inside {
                        assert!(c.distance_m(centroid(cell)) + circumradius_m(cell) <= r + 1e-6);
                    }
                }
            }
        }
    }

    #[test]
    fn shard_of_is_stable_and_in_range() {
        let map = ShardMap { territory_res: Resolution::Three, shards: 8 };
        let c = sf().cell(Resolution::Ten);
        assert_eq!(map.shard_of(c), map.shard_of(c.parent(Resolution::Five).expect("parent")));
        assert!(map.shard_of(c) < 8);
        assert_eq!(partition_for_key("tenant-a", 6), partition_for_key("tenant-a", 6));
    }
}
