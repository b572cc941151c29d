//! spatial: covers each alert's target area with H3 cells, conservatively (every cell that
//! touches the area, so nobody inside is ever missed), and routes the alert to every
//! matcher shard whose territory the cover touches: one `alerts.indexed` record per shard.
//! It must never narrow an area: a cover that would exceed the cell budget is rejected
//! (dead-lettered with a reason), not truncated.

use hexcast_core::cells::{CoverError, GeoConfig, ShardMap, area_cells, cover_size_bound};
use hexcast_core::{Alert, EventKind, IndexedAlert, ReasonCode, Stage, StageCtx};

/// Why an alert could not be indexed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(transparent)]
pub struct SpatialError(#[from] CoverError);

impl ReasonCode for SpatialError {
    fn reason_code(&self) -> &'static str {
        match self.0 {
            CoverError::InvalidGeometry(_) => "invalid_geometry",
            CoverError::TooLarge { .. } => "area_too_large",
        }
    }
}

/// The spatial stage.
#[derive(Debug, Clone)]
pub struct Spatial {
    geo: GeoConfig,
    shards: ShardMap,
}

impl Spatial {
    /// A spatial stage for `shards` matcher shards.
    pub fn new(geo: GeoConfig, shards: u32) -> Self {
        Self { geo, shards: ShardMap { territory_res: geo.territory_resolution, shards } }
    }

    /// The shard map shared with the push service.
    pub fn shard_map(&self) -> ShardMap {
        self.shards
    }

    /// The records for one alert, one per shard touched, in shard order. Matchers cover the
    /// area themselves at their bucket levels. An update or a close goes to every shard:
    /// the recipients of record of the incident's earlier events are kept by the shards
    /// that notified them, which its new area may no longer touch. A close names no shard
    /// (it reaches exactly those recipients, so its area is never covered).
    pub fn index(&self, alert: Alert) -> Result<Vec<IndexedAlert>, SpatialError> {
        match alert.kind {
            EventKind::Close => Ok(self.to_every_shard(alert, Vec::new())),
            EventKind::Update => {
                let shards = self.cover_shards(&alert)?;
                Ok(self.to_every_shard(alert, shards))
            }
            _ => self.route_by_cover(alert),
        }
    }

    /// One record per shard the alert's cover touches, whatever its kind: a geofenced
    /// request and its cancellation reach the subscribers its area reaches, with no
    /// recipients of record.
    pub fn route_by_cover(&self, alert: Alert) -> Result<Vec<IndexedAlert>, SpatialError> {
        let shards = self.cover_shards(&alert)?;
        Ok(shards
            .iter()
            .map(|&shard| IndexedAlert { alert: alert.clone(), shard, shards: shards.clone(), request: None })
            .collect())
    }

    /// The shards the alert's cover touches, ascending.
    fn cover_shards(&self, alert: &Alert) -> Result<Vec<u32>, SpatialError> {
        // Refuse what the matchers could not cover at their finest bucket level; the cover
        // itself is computed only when the cheap bound does not settle it.
        let nine = h3o::Resolution::Nine;
        let finest = match cover_size_bound(&alert.target, nine) {
            Some(bound) if bound <= self.geo.max_cover_cells as u64 => bound as usize,
            _ => area_cells(&alert.target, nine, self.geo.max_cover_cells)?.len(),
        };
        let mut cells: Vec<h3o::CellIndex> =
            area_cells(&alert.target, self.geo.territory_resolution, self.geo.max_cover_cells.max(finest))?
                .into_iter()
                .map(|(c, _)| c)
                .collect();
        cells.sort_unstable();
        Ok(self.shards.shards_of(&cells))
    }

    fn to_every_shard(&self, alert: Alert, shards: Vec<u32>) -> Vec<IndexedAlert> {
        (0..self.shards.shards.max(1))
            .map(|shard| IndexedAlert { alert: alert.clone(), shard, shards: shards.clone(), request: None })
            .collect()
    }
}

impl Stage for Spatial {
    type In = Alert;
    type Out = IndexedAlert;
    type Reject = SpatialError;

    fn name(&self) -> &'static str {
        "spatial"
    }

    fn process(&mut self, alert: Alert, _ctx: &StageCtx, out: &mut Vec<IndexedAlert>) -> Result<(), SpatialError> {
        out.extend(self.index(alert)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::{Area, Category, LatLng, Timestamp};

    fn alert(radius_m: f64) -> Alert {
        let c = LatLng::new(37.7749, -122.4194).expect("valid");
        Alert::synthetic(
            "a@1",
            Category::parse("crime.robbery").expect("known"),
            Area::circle(c, radius_m).expect("valid"),
        )
    }

    #[test]
    fn one_record_per_shard_touched_each_naming_every_shard() {
        let s = Spatial::new(GeoConfig::default(), 16);
        // 150 km spans several resolution-3 territories.
        let s_wide = Spatial::new(GeoConfig::default(), 16);
        let recs = s_wide.index(alert(150_000.0)).expect("indexed");
        assert!(recs.len() > 1);
        let shards: Vec<u32> = recs.iter().map(|r| r.shard).collect();
        assert_eq!(shards, recs[0].shards);
        assert!(recs.iter().all(|r| r.shards == recs[0].shards && r.alert == recs[0].alert));
        assert_eq!(s.index(alert(400.0)).expect("indexed").len(), 1);
    }

    #[test]
    fn updates_and_closes_reach_every_shard_naming_only_the_covered_ones() {
        let s = Spatial::new(GeoConfig::default(), 16);
        let mut update = alert(400.0);
        update.kind = EventKind::Update;
        let covered = s.index(alert(400.0)).expect("indexed")[0].shards.clone();
        let recs = s.index(update.clone()).expect("indexed");
        assert_eq!(recs.iter().map(|r| r.shard).collect::<Vec<_>>(), (0..16).collect::<Vec<_>>());
        assert!(recs.iter().all(|r| r.shards == covered));
        // A close is never covered: even an area too large to cover reaches every shard.
        let mut close = alert(5_000.0);
        close.kind = EventKind::Close;
        let tiny = Spatial::new(GeoConfig { max_cover_cells: 100, ..GeoConfig::default() }, 4);
        let recs = tiny.index(close).expect("a close is not covered");
        assert_eq!(recs.len(), 4);
        assert!(recs.iter().all(|r| r.shards.is_empty()));
    }

    #[test]
    fn oversized_cover_is_rejected_not_truncated() {
        let geo = GeoConfig { max_cover_cells: 100, ..GeoConfig::default() };
        // 100 resolution-9 cells is about 10 km²; a 5 km circle is 78 km².
        let mut s = Spatial::new(geo, 4);
        let mut out = Vec::new();
        let err = s.process(alert(5_000.0), &StageCtx::at(Timestamp(0)), &mut out).expect_err("too large");
        assert_eq!(err.reason_code(), "area_too_large");
        assert!(out.is_empty());
    }
}
