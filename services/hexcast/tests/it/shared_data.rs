//! Tests on the public data sets (`HEXCAST_DATA`, see `hexcast-testdata`).

#[test]
fn the_shared_neighborhood_files_parse() {
    let dir = hexcast_testdata::path("geofence/click_that_hood");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("readable data folder") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "geojson") {
            continue;
        }
        let shapes = hexcast::geojson::parse(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        assert!(shapes.len() >= 5, "{}", path.display());
        files += 1;
    }
    assert!(files >= 6);
}

#[test]
fn the_console_draws_the_neighbourhoods_an_alert_area_crosses() {
    let cfg = hexcast_console::ConsoleConfig {
        outline_geojson: Some(hexcast_testdata::path("geofence/click_that_hood/detroit.geojson")),
        ..Default::default()
    };
    let outlines = hexcast::targets::console_outlines(&cfg).expect("outlines");
    assert!(outlines.len() >= 50, "{} Detroit neighbourhoods", outlines.len());
    // Downtown Detroit, about a kilometre around.
    let cell = h3o::LatLng::new(42.3314, -83.0458).expect("valid").to_cell(h3o::Resolution::Eight);
    let layer =
        hexcast_console::map::Layer { cells: cell.grid_disk::<Vec<_>>(2), class: "area".into(), title: "area".into() };
    let svg = hexcast_console::map::svg(&[layer], &[], &outlines, 320, 200, "map").into_string();
    let drawn = svg.matches("class=\"outline\"").count();
    assert!((1..outlines.len() / 4).contains(&drawn), "the few neighbourhoods in view, not all: {drawn}");
}
