//! Locations and areas, validated once at the edge so that no stage ever sees a NaN
//! coordinate, an open ring or a negative radius. Polygons are held as `geo` types with
//! x = longitude and y = latitude (GeoJSON order); CAP's lat,lon order is the parser's job.

use h3o::CellIndex;
use hexcast_proto::v1 as pb;

/// Mean earth radius used for great-circle distances (IUGG), in meters.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Largest accepted circle radius: bigger areas must be polygons or cell sets.
pub const MAX_RADIUS_M: f64 = 500_000.0;
/// Most vertices accepted in one polygon (all rings together): a guard far above what
/// fits in a message (a vertex is about 20 bytes of protobuf, so 1 MiB holds about 52,000).
/// The message size limits (`ingest.max_payload_bytes`, the API's `max_request_bytes`,
/// Kafka's `message.max.bytes`) are what bound a polygon; nothing is simplified, and the
/// cost of a large polygon stays bounded by the strip index of [`crate::exact`].
pub const MAX_VERTICES: usize = 1 << 22;

/// Why a location or area is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeoError {
    /// Latitude or longitude not finite or out of range.
    #[error("invalid coordinates: lat {lat}, lng {lng}")]
    InvalidCoordinates { lat: f64, lng: f64 },
    /// Radius not finite, not positive, or too large.
    #[error("invalid radius: {radius_m} m (expected 0 < radius <= {MAX_RADIUS_M} m)")]
    InvalidRadius { radius_m: f64 },
    /// A ring with fewer than three distinct points.
    #[error("invalid polygon: ring has {points} distinct points, need at least 3")]
    RingTooShort { points: usize },
    /// Too many vertices.
    #[error("invalid polygon: {vertices} vertices, at most {MAX_VERTICES}")]
    TooManyVertices { vertices: usize },
    /// An H3 index that is not a valid cell.
    #[error("invalid cell index {0:#x}")]
    InvalidCell(u64),
    /// No shape set, or an empty set of shapes.
    #[error("empty area")]
    Empty,
}

/// A validated point, in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLng {
    lat: f64,
    lng: f64,
}

impl LatLng {
    /// Validates latitude and longitude. (0, 0) is refused too: in dispatch data it means
    /// "not geocoded", never a real incident in the Gulf of Guinea.
    pub fn new(lat: f64, lng: f64) -> Result<Self, GeoError> {
        let valid = lat.is_finite()
            && lng.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lng)
            && !(lat == 0.0 && lng == 0.0);
        if valid { Ok(Self { lat, lng }) } else { Err(GeoError::InvalidCoordinates { lat, lng }) }
    }

    /// Latitude in degrees.
    pub const fn lat(self) -> f64 {
        self.lat
    }

    /// Longitude in degrees.
    pub const fn lng(self) -> f64 {
        self.lng
    }

    /// Great-circle (haversine) distance in meters.
    pub fn distance_m(self, other: LatLng) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lng - self.lng).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
    }

    /// The point `distance_m` away along initial `bearing_deg` (clockwise from north).
    pub fn destination(self, bearing_deg: f64, distance_m: f64) -> LatLng {
        let d = distance_m / EARTH_RADIUS_M;
        let b = bearing_deg.to_radians();
        let p1 = self.lat.to_radians();
        let l1 = self.lng.to_radians();
        let p2 = (p1.sin() * d.cos() + p1.cos() * d.sin() * b.cos()).asin();
        let l2 = l1 + (b.sin() * d.sin() * p1.cos()).atan2(d.cos() - p1.sin() * p2.sin());
        let lng = (l2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
        LatLng { lat: p2.to_degrees().clamp(-90.0, 90.0), lng }
    }

    /// As an h3o coordinate.
    pub fn to_h3(self) -> h3o::LatLng {
        // Cannot fail: the range was validated at construction.
        h3o::LatLng::new(self.lat, self.lng).unwrap_or_else(|_| unreachable!("validated lat/lng"))
    }

    /// The H3 cell containing the point at `res`.
    pub fn cell(self, res: h3o::Resolution) -> CellIndex {
        self.to_h3().to_cell(res)
    }
}

/// Where an alert applies or where a subscriber wants alerts.
#[derive(Debug, Clone, PartialEq)]
pub enum Area {
    /// One location.
    Point(LatLng),
    /// A center and a radius in meters.
    Circle { center: LatLng, radius_m: f64 },
    /// A polygon (x = lng, y = lat), possibly with holes.
    Polygon(geo::Polygon<f64>),
    /// Several polygons.
    MultiPolygon(geo::MultiPolygon<f64>),
    /// Explicit cells, any resolution.
    Cells(Vec<CellIndex>),
    /// A disc of `radius_m` around a center known only to lie in `cell` (stored
    /// subscriptions: the cell replaces the raw coordinates).
    CellDisc { cell: CellIndex, radius_m: f64 },
}

impl Area {
    /// A validated circle.
    pub fn circle(center: LatLng, radius_m: f64) -> Result<Self, GeoError> {
        if radius_m.is_finite() && radius_m > 0.0 && radius_m <= MAX_RADIUS_M {
            Ok(Area::Circle { center, radius_m })
        } else {
            Err(GeoError::InvalidRadius { radius_m })
        }
    }
}

fn ring_from_pb(ring: &pb::LinearRing) -> Result<geo::LineString<f64>, GeoError> {
    let mut coords = Vec::with_capacity(ring.points.len() + 1);
    for p in &ring.points {
        let ll = LatLng::new(p.lat, p.lng)?;
        coords.push(geo::Coord { x: ll.lng, y: ll.lat });
    }
    let mut distinct = coords.clone();
    distinct.dedup();
    if distinct.len() > 1 && distinct.first() == distinct.last() {
        distinct.pop();
    }
    if distinct.len() < 3 {
        return Err(GeoError::RingTooShort { points: distinct.len() });
    }
    // geo closes rings itself when building a Polygon.
    Ok(geo::LineString(coords))
}

fn polygon_from_pb(p: &pb::Polygon) -> Result<geo::Polygon<f64>, GeoError> {
    let exterior = p.exterior.as_ref().ok_or(GeoError::Empty)?;
    let vertices = exterior.points.len() + p.holes.iter().map(|h| h.points.len()).sum::<usize>();
    if vertices > MAX_VERTICES {
        return Err(GeoError::TooManyVertices { vertices });
    }
    let holes = p.holes.iter().map(ring_from_pb).collect::<Result<Vec<_>, _>>()?;
    Ok(geo::Polygon::new(ring_from_pb(exterior)?, holes))
}

fn ring_to_pb(ring: &geo::LineString<f64>) -> pb::LinearRing {
    pb::LinearRing { points: ring.0.iter().map(|c| pb::LatLng { lat: c.y, lng: c.x }).collect() }
}

fn polygon_to_pb(p: &geo::Polygon<f64>) -> pb::Polygon {
    pb::Polygon { exterior: Some(ring_to_pb(p.exterior())), holes: p.interiors().iter().map(ring_to_pb).collect() }
}

impl TryFrom<&pb::LatLng> for LatLng {
    type Error = GeoError;
    fn try_from(p: &pb::LatLng) -> Result<Self, GeoError> {
        LatLng::new(p.lat, p.lng)
    }
}

impl From<LatLng> for pb::LatLng {
    fn from(p: LatLng) -> Self {
        pb::LatLng { lat: p.lat, lng: p.lng }
    }
}

impl TryFrom<&pb::Area> for Area {
    type Error = GeoError;
    fn try_from(a: &pb::Area) -> Result<Self, GeoError> {
        use pb::area::Shape;
        match a.shape.as_ref().ok_or(GeoError::Empty)? {
            Shape::Point(p) => Ok(Area::Point(p.try_into()?)),
            Shape::Circle(c) => {
                let center = c.center.as_ref().ok_or(GeoError::Empty)?.try_into()?;
                Area::circle(center, c.radius_m)
            }
            Shape::Polygon(p) => Ok(Area::Polygon(polygon_from_pb(p)?)),
            Shape::Multipolygon(m) => {
                if m.polygons.is_empty() {
                    return Err(GeoError::Empty);
                }
                let polys = m.polygons.iter().map(polygon_from_pb).collect::<Result<Vec<_>, _>>()?;
                Ok(Area::MultiPolygon(geo::MultiPolygon(polys)))
            }
            Shape::CellDisc(d) => {
                let cell = CellIndex::try_from(d.cell).map_err(|_| GeoError::InvalidCell(d.cell))?;
                if !(d.radius_m.is_finite() && (0.0..=MAX_RADIUS_M).contains(&d.radius_m)) {
                    return Err(GeoError::InvalidRadius { radius_m: d.radius_m });
                }
                Ok(Area::CellDisc { cell, radius_m: d.radius_m })
            }
            Shape::Cells(c) => {
                if c.cells.is_empty() {
                    return Err(GeoError::Empty);
                }
                let cells = c
                    .cells
                    .iter()
                    .map(|&raw| CellIndex::try_from(raw).map_err(|_| GeoError::InvalidCell(raw)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Area::Cells(cells))
            }
        }
    }
}

impl From<&Area> for pb::Area {
    fn from(a: &Area) -> Self {
        use pb::area::Shape;
        let shape = match a {
            Area::Point(p) => Shape::Point((*p).into()),
            Area::Circle { center, radius_m } => {
                Shape::Circle(pb::Circle { center: Some((*center).into()), radius_m: *radius_m })
            }
            Area::Polygon(p) => Shape::Polygon(polygon_to_pb(p)),
            Area::MultiPolygon(m) => {
                Shape::Multipolygon(pb::MultiPolygon { polygons: m.0.iter().map(polygon_to_pb).collect() })
            }
            Area::Cells(c) => Shape::Cells(pb::CellSet { cells: c.iter().map(|&c| u64::from(c)).collect() }),
            Area::CellDisc { cell, radius_m } => {
                Shape::CellDisc(pb::CellDisc { cell: u64::from(*cell), radius_m: *radius_m })
            }
        };
        pb::Area { shape: Some(shape) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_coordinates_are_refused() {
        assert!(LatLng::new(f64::NAN, 0.5).is_err());
        assert!(LatLng::new(91.0, 0.0).is_err());
        assert!(LatLng::new(10.0, 180.5).is_err());
        assert!(LatLng::new(0.0, 0.0).is_err());
        assert!(LatLng::new(40.1, -75.3).is_ok());
    }

    #[test]
    fn haversine_matches_a_known_distance() {
        // One degree of latitude is about 111.2 km on the mean sphere.
        let a = LatLng::new(40.0, -75.0).expect("valid");
        let b = LatLng::new(41.0, -75.0).expect("valid");
        assert!((a.distance_m(b) - 111_195.0).abs() < 10.0);
    }

    #[test]
    fn destination_is_at_the_requested_distance_across_the_antimeridian() {
        let a = LatLng::new(10.0, 179.99).expect("valid");
        let b = a.destination(90.0, 5_000.0);
        assert!(b.lng() < -179.0, "wrapped: {}", b.lng());
        assert!((a.distance_m(b) - 5_000.0).abs() < 0.5);
    }

    #[test]
    fn area_round_trips_through_proto() {
        let c = LatLng::new(37.77, -122.42).expect("valid");
        let areas =
            [Area::circle(c, 400.0).expect("valid"), Area::Point(c), Area::Cells(vec![c.cell(h3o::Resolution::Nine)])];
        for a in areas {
            let back = Area::try_from(&pb::Area::from(&a)).expect("round trip");
            assert_eq!(a, back);
        }
    }

    #[test]
    fn open_or_degenerate_rings_are_refused() {
        let ring =
            pb::LinearRing { points: vec![pb::LatLng { lat: 1.0, lng: 1.0 }, pb::LatLng { lat: 1.0, lng: 2.0 }] };
        let area =
            pb::Area { shape: Some(pb::area::Shape::Polygon(pb::Polygon { exterior: Some(ring), holes: vec![] })) };
        assert_eq!(Area::try_from(&area), Err(GeoError::RingTooShort { points: 2 }));
    }

    #[test]
    fn polygons_of_sixty_thousand_vertices_are_accepted() {
        // A 60,000-vertex ring (a wiggly circle of 5 km): over the old 20,000 limit.
        let c = LatLng::new(40.7, -74.0).expect("valid");
        let points: Vec<pb::LatLng> = (0..60_000)
            .map(|i| {
                let r = 5_000.0 + 30.0 * ((i % 7) as f64);
                c.destination(360.0 * i as f64 / 60_000.0, r).into()
            })
            .collect();
        let area = pb::Area {
            shape: Some(pb::area::Shape::Polygon(pb::Polygon {
                exterior: Some(pb::LinearRing { points }),
                holes: vec![],
            })),
        };
        let Area::Polygon(p) = Area::try_from(&area).expect("accepted") else { panic!("polygon") };
        assert_eq!(p.exterior().0.len(), 60_001, "nothing simplified (geo closes the ring)");
    }

    #[test]
    fn radius_out_of_range_is_refused() {
        let c = LatLng::new(37.77, -122.42).expect("valid");
        assert!(Area::circle(c, 0.0).is_err());
        assert!(Area::circle(c, f64::INFINITY).is_err());
        assert!(Area::circle(c, MAX_RADIUS_M * 2.0).is_err());
    }
}
