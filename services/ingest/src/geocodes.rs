//! The geocode table (`ingest.geocodes_file`): areas by SAME, UGC and FIPS code, read once at
//! start from a GeoJSON FeatureCollection, so that a CAP alert whose `<area>` carries only
//! `<geocode>` values (no polygon, no circle) still gets its area. Every polygon is validated
//! here, at load, with the same rules as any area on the wire; a lookup never fails for a
//! reason the file could have caught, and nothing here runs I/O after start-up.

use std::collections::HashMap;
use std::path::Path;

use hexcast_core::Area;
use hexcast_proto::v1 as pb;
use serde_json::Value;

use crate::error::IngestConfigError;

/// Which code system a value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scheme {
    /// NOAA Weather Radio SAME: `PSSCCC` (part of county, state FIPS, county FIPS).
    Same,
    /// NWS Universal Geographic Code: `SSCNNN` (state, C county or Z zone, number).
    Ugc,
    /// US county FIPS: `SSCCC`.
    Fips,
}

/// Areas by geocode. Empty unless `ingest.geocodes_file` is set.
#[derive(Debug, Clone, Default)]
pub struct Geocodes {
    areas: Vec<Area>,
    by_code: HashMap<(Scheme, String), usize>,
}

/// Digits of a code that may have been written as a JSON number (leading zeros lost).
fn padded(code: &str, width: usize) -> String {
    if code.bytes().all(|b| b.is_ascii_digit()) && code.len() < width {
        format!("{code:0>width$}")
    } else {
        code.to_owned()
    }
}

fn codes(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.trim().to_owned()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(items) => items.iter().flat_map(codes).collect(),
        _ => Vec::new(),
    }
}

fn ring(v: &Value) -> Result<pb::LinearRing, String> {
    let points = v.as_array().ok_or("a ring is not an array")?;
    let mut out = Vec::with_capacity(points.len());
    for p in points {
        // GeoJSON positions are [longitude, latitude].
        let (Some(lng), Some(lat)) = (p.get(0).and_then(Value::as_f64), p.get(1).and_then(Value::as_f64)) else {
            return Err(format!("position {p} is not [lng, lat]"));
        };
        out.push(pb::LatLng { lat, lng });
    }
    Ok(pb::LinearRing { points: out })
}

fn polygon(v: &Value) -> Result<pb::Polygon, String> {
    let rings = v.as_array().ok_or("polygon coordinates are not an array")?;
    let (exterior, holes) = rings.split_first().ok_or("polygon without rings")?;
    Ok(pb::Polygon { exterior: Some(ring(exterior)?), holes: holes.iter().map(ring).collect::<Result<_, _>>()? })
}

fn area(geometry: &Value) -> Result<Area, String> {
    use pb::area::Shape;
    let coords = geometry.get("coordinates").ok_or("geometry without coordinates")?;
    let shape = match geometry.get("type").and_then(Value::as_str) {
        Some("Polygon") => Shape::Polygon(polygon(coords)?),
        Some("MultiPolygon") => Shape::Multipolygon(pb::MultiPolygon {
            polygons: coords
                .as_array()
                .ok_or("coordinates are not an array")?
                .iter()
                .map(polygon)
                .collect::<Result<_, _>>()?,
        }),
        other => return Err(format!("geometry type {other:?}, expected Polygon or MultiPolygon")),
    };
    Area::try_from(&pb::Area { shape: Some(shape) }).map_err(|e| e.to_string())
}

impl Geocodes {
    /// Reads and validates a GeoJSON FeatureCollection whose features carry `SAME`, `UGC`
    /// and/or `FIPS` properties (a string, a number or an array of them).
    pub fn load(path: &Path) -> Result<Self, IngestConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| IngestConfigError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|detail| IngestConfigError::Geocodes { path: path.to_path_buf(), detail })
    }

    /// [`Geocodes::load`] on text; the error names the feature.
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let features = doc
            .get("features")
            .and_then(Value::as_array)
            .ok_or("not a GeoJSON FeatureCollection (no `features` array)")?;
        let mut g = Geocodes::default();
        for (i, f) in features.iter().enumerate() {
            let err = |detail: String| format!("feature {i}: {detail}");
            let props = f.get("properties").and_then(Value::as_object).ok_or_else(|| err("no properties".into()))?;
            let mut found = Vec::new();
            for (key, value) in props {
                let (scheme, width) = match key.to_ascii_uppercase().as_str() {
                    "SAME" => (Scheme::Same, 6),
                    "UGC" => (Scheme::Ugc, 0),
                    "FIPS" => (Scheme::Fips, 5),
                    _ => continue,
                };
                for code in codes(value).into_iter().filter(|c| !c.is_empty()) {
                    found.push((scheme, padded(&code.to_ascii_uppercase(), width)));
                }
            }
            if found.is_empty() {
                return Err(err("no SAME, UGC or FIPS code".into()));
            }
            let geometry = f.get("geometry").ok_or_else(|| err("no geometry".into()))?;
            g.areas.push(area(geometry).map_err(err)?);
            for key in found {
                if let Some(first) = g.by_code.insert(key.clone(), i) {
                    return Err(err(format!("code {} is also in feature {first}", key.1)));
                }
            }
        }
        Ok(g)
    }

    /// Features loaded.
    pub fn len(&self) -> usize {
        self.areas.len()
    }

    /// Whether no feature is loaded.
    pub fn is_empty(&self) -> bool {
        self.areas.is_empty()
    }

    fn get(&self, scheme: Scheme, code: &str) -> Option<usize> {
        self.by_code.get(&(scheme, code.to_owned())).copied()
    }

    /// The feature a CAP `<geocode>` names, if the table has it. A SAME code for part of a
    /// county (`P` not 0) falls back to the whole county (`0SSCCC`, or FIPS `SSCCC`): a
    /// larger area, never a smaller one, so nobody inside the alert is missed.
    pub(crate) fn lookup(&self, value_name: &str, value: &str) -> Option<usize> {
        let value = value.trim().to_ascii_uppercase();
        match value_name.trim().to_ascii_uppercase().as_str() {
            "SAME" | "FIPS6" => {
                let county = value.get(1..).filter(|c| value.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))?;
                self.get(Scheme::Same, &value)
                    .or_else(|| self.get(Scheme::Same, &format!("0{county}")))
                    .or_else(|| self.get(Scheme::Fips, county))
            }
            "FIPS" if value.len() == 6 => self.lookup("SAME", &value),
            "FIPS" => self.get(Scheme::Fips, &value).or_else(|| self.get(Scheme::Same, &format!("0{value}"))),
            "UGC" => self.get(Scheme::Ugc, &value),
            _ => None,
        }
    }

    /// The area of a feature [`Geocodes::lookup`] returned.
    pub(crate) fn area(&self, feature: usize) -> Option<&Area> {
        self.areas.get(feature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"SAME":"006109","UGC":["CAC109"]},
       "geometry":{"type":"Polygon","coordinates":[[[-120.6,37.6],[-119.2,37.6],[-119.2,38.4],[-120.6,38.4],[-120.6,37.6]]]}},
      {"type":"Feature","properties":{"FIPS":6043,"UGC":"CAZ323"},
       "geometry":{"type":"MultiPolygon","coordinates":[[[[-120.4,37.2],[-119.3,37.2],[-119.3,37.9],[-120.4,37.2]]]]}}
    ]}"#;

    #[test]
    fn codes_of_every_scheme_find_their_feature() {
        let g = Geocodes::parse(TABLE).expect("valid");
        assert_eq!(g.len(), 2);
        assert_eq!(g.lookup("SAME", "006109"), Some(0));
        assert_eq!(g.lookup("same", " 006109 "), Some(0));
        assert_eq!(g.lookup("UGC", "cac109"), Some(0));
        // A number loses its leading zero in JSON; the table pads it back.
        assert_eq!(g.lookup("FIPS", "06043"), Some(1));
        assert_eq!(g.lookup("SAME", "006043"), Some(1));
        assert_eq!(g.lookup("UGC", "CAZ323"), Some(1));
        assert!(matches!(g.area(1), Some(Area::MultiPolygon(_))));
        assert_eq!(g.lookup("SAME", "006001"), None);
        assert_eq!(g.lookup("profile:CAP-CP:Location:0.3", "1234"), None);
    }

    #[test]
    fn part_of_a_county_falls_back_to_the_whole_county() {
        let g = Geocodes::parse(TABLE).expect("valid");
        assert_eq!(g.lookup("SAME", "806109"), Some(0));
        assert_eq!(g.lookup("SAME", "106043"), Some(1));
        assert_eq!(g.lookup("SAME", "80610"), None, "five digits is not a SAME code");
    }

    #[test]
    fn bad_tables_are_refused_naming_the_feature() {
        let cases = [
            ("[]", "FeatureCollection"),
            (r#"{"features":[{"properties":{"SAME":"1"}}]}"#, "feature 0: no geometry"),
            (r#"{"features":[{"properties":{"NAME":"x"},"geometry":null}]}"#, "feature 0: no SAME"),
            (
                r#"{"features":[{"properties":{"SAME":"1"},"geometry":{"type":"Point","coordinates":[1,2]}}]}"#,
                "Polygon or MultiPolygon",
            ),
            (
                r#"{"features":[{"properties":{"SAME":"1"},"geometry":{"type":"Polygon","coordinates":[[[-120,95],[-119,37],[-119,38],[-120,95]]]}}]}"#,
                "invalid coordinates",
            ),
        ];
        for (text, want) in cases {
            let e = Geocodes::parse(text).expect_err(want);
            assert!(e.contains(want), "{want}: {e}");
        }
        let dup = TABLE.replace("\"CAZ323\"", "\"CAC109\"");
        assert!(Geocodes::parse(&dup).expect_err("duplicate").contains("CAC109"));
    }
}
