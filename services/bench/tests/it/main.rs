//! The bench population on the public neighborhood polygons (`HEXCAST_DATA`).

use hexcast_bench::population::{cities, population};
use hexcast_core::Place;
use hexcast_core::cells::GeoConfig;

#[test]
fn population_has_the_requested_mix() {
    let dir = hexcast_testdata::path("geofence/click_that_hood");
    let cities = cities(&dir).expect("cities");
    let subs = population(&cities, 2_000, &GeoConfig::default(), 1).expect("population");
    let polygons = subs.iter().filter(|s| matches!(s.places[0], Place::Cells(_))).count();
    let several = subs.iter().filter(|s| s.places.len() > 1).count();
    assert!((300..500).contains(&polygons), "{polygons}");
    assert!((120..280).contains(&several), "{several}");
    // Every place is stored as cells: a disc's cell is at the configured precision.
    for s in &subs {
        for p in &s.places {
            if let Place::Disc { cell, .. } = p {
                assert_eq!(cell.resolution(), GeoConfig::default().precision);
            }
        }
    }
}
