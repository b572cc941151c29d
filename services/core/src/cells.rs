//! H3 helpers shared by policy, spatial and push: conservative covers of areas (every cell
//! that touches the area, so that nobody inside is ever missed) and the territory -> shard
//! map that co-partitions alerts.indexed and subscriptions. The shard function is part of
//! the on-disk contract: changing it re-shards every stored subscription.

use std::f64::consts::PI;

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
    /// Resolution of subscriber cells and of alert covers. Subscriber locations are stored
    /// at this precision and no finer.
    pub precision: Resolution,
    /// Resolution of a shard territory.
    pub territory_resolution: Resolution,
    /// Largest cover accepted for one alert, in cells at `precision`.
    pub max_cover_cells: usize,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoConfig {
    #[serde(default = "default_precision")]
    precision: u8,
    #[serde(default = "default_territory")]
    territory_resolution: u8,
    #[serde(default = "default_max_cover")]
    max_cover_cells: usize,
}

const fn default_precision() -> u8 {
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
        let territory = Resolution::try_from(r.territory_resolution)
            .map_err(|_| format!("territory_resolution {} is not 0..=15", r.territory_resolution))?;
        if territory > precision {
            return Err(format!(
                "territory_resolution {} is finer than precision {}",
                r.territory_resolution, r.precision
            ));
        }
        Ok(Self { precision, territory_resolution: territory, max_cover_cells: r.max_cover_cells })
    }
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            precision: Resolution::Ten,
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

/// Every cell at `res` that touches `area`, sorted and unique. Explicit cells finer than
/// `res` become their parent; coarser ones their children.
pub fn cover(area: &Area, res: Resolution, max_cells: usize) -> Result<Vec<CellIndex>, CoverError> {
    match area {
        Area::Point(p) => Ok(vec![p.cell(res)]),
        Area::Circle { center, radius_m } => tile(vec![circle_polygon(*center, *radius_m)], res, max_cells),
        Area::Polygon(p) => tile(vec![p.clone()], res, max_cells),
        Area::MultiPolygon(m) => tile(m.0.clone(), res, max_cells),
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
    fn shard_of_is_stable_and_in_range() {
        let map = ShardMap { territory_res: Resolution::Three, shards: 8 };
        let c = sf().cell(Resolution::Ten);
        assert_eq!(map.shard_of(c), map.shard_of(c.parent(Resolution::Five).expect("parent")));
        assert!(map.shard_of(c) < 8);
        assert_eq!(partition_for_key("tenant-a", 6), partition_for_key("tenant-a", 6));
    }
}
