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
