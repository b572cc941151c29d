//! Polygon covers by content: the gateway covers a subscriber's polygon once per distinct
//! polygon, however many subscribers send it.

use std::sync::Arc;

use hexcast_core::Area;

/// Polygons most often sent by many subscribers (a city's neighborhoods), kept covered.
const COVER_CACHE_ENTRIES: usize = 4_096;

/// A polygon's coordinates bit for bit, and the resolution of its cover.
type CoverKey = (Vec<u64>, u8);

/// Polygon covers by content: thousands of subscribers who choose the same neighborhood
/// send the same polygon, which is covered once. The key is the polygon's exact
/// coordinates (bit for bit) and the resolution, so a hit is the cover the polygon would
/// get; when full, the cache starts over (neighborhood sets are small; a bulk load of one
/// city fills it with that city's).
#[derive(Debug, Default)]
pub struct CoverCache {
    covers: std::sync::Mutex<std::collections::HashMap<CoverKey, Arc<[h3o::CellIndex]>>>,
    /// Covers answered from the cache.
    pub hits: std::sync::atomic::AtomicU64,
}

impl CoverCache {
    /// [`hexcast_core::cells::subscriber_cells`], from the cache when this polygon was
    /// covered before at `res`.
    pub fn cells(
        &self,
        area: &Area,
        res: h3o::Resolution,
        max_cells: usize,
    ) -> Result<Vec<h3o::CellIndex>, hexcast_core::cells::CoverError> {
        let Some(key) = polygon_key(area) else {
            return hexcast_core::cells::subscriber_cells(area, res, max_cells);
        };
        let key = (key, u8::from(res));
        let cached = self.covers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned();
        if let Some(cells) = cached
            && cells.len() <= max_cells
        {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(cells.to_vec());
        }
        let cells = hexcast_core::cells::subscriber_cells(area, res, max_cells)?;
        let mut covers = self.covers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if covers.len() >= COVER_CACHE_ENTRIES {
            covers.clear();
        }
        covers.insert(key, cells.clone().into());
        Ok(cells)
    }
}

/// A polygon's (or multipolygon's) coordinates, bit for bit, with ring separators.
fn polygon_key(area: &Area) -> Option<Vec<u64>> {
    let polygons: Vec<&geo::Polygon<f64>> = match area {
        Area::Polygon(p) => vec![p],
        Area::MultiPolygon(m) => m.0.iter().collect(),
        _ => return None,
    };
    let mut key = Vec::new();
    for p in polygons {
        for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
            key.push(u64::MAX);
            key.extend(ring.0.iter().flat_map(|c| [c.x.to_bits(), c.y.to_bits()]));
        }
        key.push(u64::MAX - 1);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(lat: f64, lng: f64, d: f64) -> Area {
        let ring = vec![(lng, lat), (lng + d, lat), (lng + d, lat + d), (lng, lat + d), (lng, lat)];
        Area::Polygon(geo::Polygon::new(geo::LineString::from(ring), vec![]))
    }

    #[test]
    fn identical_polygons_are_covered_once_and_get_the_cover_they_would_get() {
        let cache = CoverCache::default();
        let res = h3o::Resolution::Ten;
        let hood = square(39.95, -75.17, 0.01);
        let fresh = hexcast_core::cells::subscriber_cells(&hood, res, 20_000).expect("cover");
        assert_eq!(cache.cells(&hood, res, 20_000).expect("first"), fresh);
        assert_eq!(cache.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(cache.cells(&hood.clone(), res, 20_000).expect("second"), fresh);
        assert_eq!(cache.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Another polygon, or the same at another resolution, is covered afresh.
        let other = square(39.95, -75.17, 0.011);
        assert_eq!(
            cache.cells(&other, res, 20_000).expect("other"),
            hexcast_core::cells::subscriber_cells(&other, res, 20_000).expect("cover")
        );
        let _ = cache.cells(&hood, h3o::Resolution::Nine, 20_000).expect("coarser");
        assert_eq!(cache.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A cached cover over the caller's budget still fails as a fresh cover would.
        let small = fresh.len() - 1;
        assert!(cache.cells(&hood, res, small).is_err());
    }
}
