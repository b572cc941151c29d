//! A small GeoJSON reader for the offline tools and the bench: Polygon and MultiPolygon
//! geometries, bare or inside Features and FeatureCollections. Coordinates are GeoJSON
//! order (longitude, latitude); anything else is an error naming what was found.

use anyhow::{Context as _, bail};
use serde_json::Value;

/// One named polygon area.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The feature's `name` property, when it has one.
    pub name: Option<String>,
    /// Its polygons (x = longitude, y = latitude).
    pub polygons: Vec<geo::Polygon<f64>>,
}

fn ring(v: &Value) -> anyhow::Result<geo::LineString<f64>> {
    let pts = v.as_array().context("ring is not an array")?;
    let mut coords = Vec::with_capacity(pts.len());
    for p in pts {
        let xy = p.as_array().context("position is not an array")?;
        let (Some(x), Some(y)) = (xy.first().and_then(Value::as_f64), xy.get(1).and_then(Value::as_f64)) else {
            bail!("position is not [lon, lat]");
        };
        coords.push(geo::Coord { x, y });
    }
    Ok(geo::LineString(coords))
}

fn polygon(v: &Value) -> anyhow::Result<geo::Polygon<f64>> {
    let rings = v.as_array().context("polygon is not an array of rings")?;
    let (ext, holes) = rings.split_first().context("polygon has no ring")?;
    Ok(geo::Polygon::new(ring(ext)?, holes.iter().map(ring).collect::<anyhow::Result<_>>()?))
}

fn geometry(v: &Value) -> anyhow::Result<Vec<geo::Polygon<f64>>> {
    let coords = v.get("coordinates").context("geometry has no coordinates")?;
    match v.get("type").and_then(Value::as_str) {
        Some("Polygon") => Ok(vec![polygon(coords)?]),
        Some("MultiPolygon") => {
            coords.as_array().context("multipolygon is not an array")?.iter().map(polygon).collect()
        }
        other => bail!("unsupported geometry type {other:?} (expected Polygon or MultiPolygon)"),
    }
}

/// Every polygon shape in a GeoJSON document.
pub fn parse(text: &str) -> anyhow::Result<Vec<Shape>> {
    let v: Value = serde_json::from_str(text).context("parsing GeoJSON")?;
    let name = |f: &Value| f.pointer("/properties/name").and_then(Value::as_str).map(str::to_owned);
    match v.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => v
            .get("features")
            .and_then(Value::as_array)
            .context("FeatureCollection without features")?
            .iter()
            .filter(|f| f.get("geometry").is_some_and(|g| !g.is_null()))
            .map(|f| Ok(Shape { name: name(f), polygons: geometry(&f["geometry"])? }))
            .collect(),
        Some("Feature") => Ok(vec![Shape { name: name(&v), polygons: geometry(&v["geometry"])? }]),
        Some(_) => Ok(vec![Shape { name: None, polygons: geometry(&v)? }]),
        None => bail!("not GeoJSON: no `type`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_and_bare_geometries_parse_and_others_are_refused() {
        let fc = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"name":"A"},
            "geometry":{"type":"Polygon","coordinates":[[[-122.4,37.7],[-122.3,37.7],[-122.3,37.8],[-122.4,37.7]]]}}]}"#;
        let shapes = parse(fc).expect("valid");
        assert_eq!(shapes[0].name.as_deref(), Some("A"));
        assert_eq!(shapes[0].polygons[0].exterior().0[0], geo::Coord { x: -122.4, y: 37.7 });
        assert!(parse(r#"{"type":"Point","coordinates":[1,2]}"#).is_err());
        assert!(parse("{").is_err());
    }
}
