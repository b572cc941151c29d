//! Polygons beyond the old 20,000-vertex limit, as alerts and as subscriber areas, through
//! the service's own code paths (wire decoding, spatial routing, the subscriber index, the
//! stored form of a subscription): a generated 60,000-vertex outline, and New York's real
//! borough outlines when the public data is present.

use std::sync::Arc;

use geo::Contains as _;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_core::{Alert, Area, Category, LatLng, Timestamp};
use hexcast_match::SubscriberIndex;
use hexcast_proto::v1 as pb;
use hexcast_spatial::Spatial;

fn point_sub(id: &str, p: LatLng) -> pb::Subscription {
    pb::Subscription {
        subscriber_id: id.to_owned(),
        areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(p.into())) }],
        ..Default::default()
    }
}

/// Subscriber ids notified for `area` (routed by the spatial stage, matched on every shard).
fn notified(area: Area, subs: Vec<pb::Subscription>, max_cells: usize) -> Vec<String> {
    let geo = GeoConfig::default();
    let shard_map = ShardMap { territory_res: geo.territory_resolution, shards: 3 };
    let index = Arc::new(SubscriberIndex::new(shard_map));
    for s in subs {
        let stored = hexcast_api::subscriptions::stored_subscription(&geo, &shard_map, max_cells, "t", s, Timestamp(0))
            .expect("subscription accepted");
        index.upsert(stored);
    }
    // Through the wire form, as an alert from a producer would arrive.
    let alert = Alert::synthetic("big@1", Category::parse("hazard.explosion").expect("known"), area);
    let alert = Alert::try_from(pb::Alert::from(&alert)).expect("alert decodes");
    let mut out = Vec::new();
    for rec in Spatial::new(geo, shard_map.shards).index(alert).expect("indexed") {
        for m in index.matches(&rec.alert, rec.shard, &rec.shards).expect("matched") {
            out.push(m.subscriber_id.to_string());
        }
    }
    out.sort();
    out
}

/// A closed ring of `n` vertices wiggling between 5,000 and 5,180 m around `c`.
fn wiggly(c: LatLng, n: usize) -> pb::Polygon {
    let mut points: Vec<pb::LatLng> =
        (0..n).map(|i| c.destination(360.0 * i as f64 / n as f64, 5_000.0 + 30.0 * ((i % 7) as f64)).into()).collect();
    points.push(points[0]);
    pb::Polygon { exterior: Some(pb::LinearRing { points }), holes: vec![] }
}

#[test]
fn a_sixty_thousand_vertex_polygon_is_accepted_as_alert_and_as_subscriber_area() {
    let c = LatLng::new(40.7, -74.0).expect("valid");
    let polygon = wiggly(c, 60_000);
    let area = Area::try_from(&pb::Area { shape: Some(pb::area::Shape::Polygon(polygon.clone())) }).expect("accepted");
    // As an alert: inside (4.7 km) notified, outside (5.5 km) not, at every bearing.
    let mut subs = Vec::new();
    for b in (0..360).step_by(30) {
        subs.push(point_sub(&format!("in{b:03}"), c.destination(f64::from(b), 4_700.0)));
        subs.push(point_sub(&format!("out{b:03}"), c.destination(f64::from(b), 5_500.0)));
    }
    let got = notified(area, subs, 20_000);
    let expected: Vec<String> = (0..360).step_by(30).map(|b| format!("in{b:03}")).collect();
    assert_eq!(got, expected);
    // As a subscriber's area, within the default cell budget: a small alert inside reaches it,
    // one 1 km outside does not.
    let sub = pb::Subscription {
        subscriber_id: "outline".into(),
        areas: vec![pb::Area { shape: Some(pb::area::Shape::Polygon(polygon)) }],
        ..Default::default()
    };
    let inside = Area::circle(c.destination(45.0, 3_000.0), 200.0).expect("valid");
    assert_eq!(notified(inside, vec![sub.clone()], 20_000), vec!["outline".to_owned()]);
    let outside = Area::circle(c.destination(45.0, 6_400.0), 200.0).expect("valid");
    assert!(notified(outside, vec![sub], 20_000).is_empty());
}

#[test]
fn new_york_borough_outlines_are_accepted_whole() {
    let path = hexcast_testdata::path("geofence/click_that_hood/new-york-city-boroughs.geojson");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let shapes = hexcast::geojson::parse(&text).expect("geojson");
    let polygons: Vec<geo::Polygon<f64>> = shapes.into_iter().flat_map(|s| s.polygons).collect();
    let vertices: usize =
        polygons.iter().map(|p| p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>()).sum();
    assert!(vertices > 20_000, "the outlines have {vertices} vertices");
    let union = geo::MultiPolygon(polygons.clone());
    let area = Area::try_from(&pb::Area::from(&Area::MultiPolygon(union.clone()))).expect("accepted whole");
    // Central Park is inside, Hoboken (across the Hudson) and Fort Lee are not.
    let park = LatLng::new(40.7829, -73.9654).expect("valid");
    let hoboken = LatLng::new(40.7440, -74.0324).expect("valid");
    let fort_lee = LatLng::new(40.8509, -73.9701).expect("valid");
    assert!(union.contains(&geo::Point::new(park.lng(), park.lat())));
    let got = notified(
        area,
        vec![point_sub("park", park), point_sub("hoboken", hoboken), point_sub("fort_lee", fort_lee)],
        20_000,
    );
    assert_eq!(got, vec!["park".to_owned()]);
    // The largest borough outline as a subscriber's area (with a budget for its cells).
    let largest = polygons.iter().max_by_key(|p| p.exterior().0.len()).expect("a polygon").clone();
    let inner = largest.exterior().0[0];
    let sub = pb::Subscription {
        subscriber_id: "borough".into(),
        areas: vec![pb::Area::from(&Area::Polygon(largest))],
        ..Default::default()
    };
    let at_edge = Area::circle(LatLng::new(inner.y, inner.x).expect("valid"), 100.0).expect("valid");
    assert_eq!(notified(at_edge, vec![sub], 400_000), vec!["borough".to_owned()]);
}
