//! Maps drawn from H3 cell boundaries as inline SVG: no tile server, no network, so the
//! console works offline. Cells are projected equirectangularly around the drawing's centre
//! (longitude scaled by the cosine of its latitude), which is true to shape at the scale of
//! a city. A map shows only what it is given: callers pass public views (coarse cells and
//! display points), never a precise location.

use h3o::{CellIndex, LatLng, Resolution};
use maud::{Markup, html};

/// Most cells one map draws; a larger set is drawn at coarser parents.
pub const MAX_DRAWN: usize = 2_000;

/// One layer: cells filled with a CSS class, with a title (tooltip).
#[derive(Debug, Clone)]
pub struct Layer {
    /// The cells.
    pub cells: Vec<CellIndex>,
    /// CSS class of their polygons (colour).
    pub class: String,
    /// Tooltip of the layer's polygons.
    pub title: String,
}

/// A point drawn as a dot (a display location).
#[derive(Debug, Clone)]
pub struct Marker {
    /// Where.
    pub at: LatLng,
    /// CSS class.
    pub class: String,
    /// Tooltip.
    pub title: String,
}

/// A named outline (a city neighbourhood, from `console.outline_geojson`) drawn under the
/// cells of every map it crosses.
#[derive(Debug, Clone)]
pub struct Outline {
    /// Its name (tooltip).
    pub name: String,
    /// Its exterior ring, (lat, lng).
    pub ring: Vec<(f64, f64)>,
    /// Its bounding box: (min lat, min lng, max lat, max lng).
    bbox: (f64, f64, f64, f64),
}

impl Outline {
    /// An outline of a ring of (lat, lng).
    pub fn new(name: String, ring: Vec<(f64, f64)>) -> Self {
        let bbox = ring.iter().fold((90.0f64, 180.0f64, -90.0f64, -180.0f64), |b, &(lat, lng)| {
            (b.0.min(lat), b.1.min(lng), b.2.max(lat), b.3.max(lng))
        });
        Self { name, ring, bbox }
    }
}

/// `cells`, coarsened until at most `max` remain (parents, deduplicated).
pub fn drawable(cells: &[CellIndex], max: usize) -> Vec<CellIndex> {
    let mut out: Vec<CellIndex> = cells.to_vec();
    out.sort_unstable();
    out.dedup();
    while out.len() > max {
        let Some(res) = out.iter().map(|c| u8::from(c.resolution())).max() else { break };
        let Some(coarser) = res.checked_sub(1).and_then(|r| Resolution::try_from(r).ok()) else { break };
        out = out.iter().map(|c| c.parent(coarser).unwrap_or(*c)).collect();
        out.sort_unstable();
        out.dedup();
    }
    out
}

/// Projection of a set of points into a `width` x `height` box with a margin.
struct Projection {
    lat0: f64,
    lng0: f64,
    k: f64,
    scale: f64,
    cx: f64,
    cy: f64,
}

impl Projection {
    fn fit(points: &[(f64, f64)], width: f64, height: f64) -> Self {
        let (mut min_lat, mut max_lat, mut min_lng, mut max_lng) = (90.0f64, -90.0f64, 180.0f64, -180.0f64);
        for &(lat, lng) in points {
            min_lat = min_lat.min(lat);
            max_lat = max_lat.max(lat);
            min_lng = min_lng.min(lng);
            max_lng = max_lng.max(lng);
        }
        if points.is_empty() {
            (min_lat, max_lat, min_lng, max_lng) = (0.0, 0.0, 0.0, 0.0);
        }
        let (lat0, lng0) = ((min_lat + max_lat) / 2.0, (min_lng + max_lng) / 2.0);
        let k = lat0.to_radians().cos().max(0.01);
        let span_x = ((max_lng - min_lng) * k).max(1e-6);
        let span_y = (max_lat - min_lat).max(1e-6);
        let margin = 0.9;
        let scale = (width * margin / span_x).min(height * margin / span_y);
        Self { lat0, lng0, k, scale, cx: width / 2.0, cy: height / 2.0 }
    }

    fn xy(&self, lat: f64, lng: f64) -> (f64, f64) {
        (self.cx + (lng - self.lng0) * self.k * self.scale, self.cy - (lat - self.lat0) * self.scale)
    }

    /// The (min lat, min lng, max lat, max lng) the box shows.
    fn visible(&self) -> (f64, f64, f64, f64) {
        let (half_lat, half_lng) = (self.cy / self.scale, self.cx / (self.k * self.scale));
        (self.lat0 - half_lat, self.lng0 - half_lng, self.lat0 + half_lat, self.lng0 + half_lng)
    }
}

/// The outlines crossing the box, as SVG point lists (vertices closer than a unit to the
/// last one drawn are skipped: a neighbourhood of thousands of vertices stays small).
fn outline_points(p: &Projection, outlines: &[Outline]) -> Vec<(String, String)> {
    let v = p.visible();
    outlines
        .iter()
        .filter(|o| o.bbox.0 <= v.2 && o.bbox.2 >= v.0 && o.bbox.1 <= v.3 && o.bbox.3 >= v.1)
        .map(|o| {
            let mut pts = Vec::new();
            let mut last: Option<(f64, f64)> = None;
            for &(lat, lng) in &o.ring {
                let (x, y) = p.xy(lat, lng);
                if last.is_none_or(|(lx, ly)| (x - lx).abs() + (y - ly).abs() >= 1.0) {
                    pts.push(format!("{x:.1},{y:.1}"));
                    last = Some((x, y));
                }
            }
            (o.name.clone(), pts.join(" "))
        })
        .collect()
}

fn boundary(cell: CellIndex) -> Vec<(f64, f64)> {
    cell.boundary().iter().map(|ll| (ll.lat(), ll.lng())).collect()
}

/// Polygons (rings of (lat, lng)) of one layer.
type Rings<'a> = (Vec<Vec<(f64, f64)>>, &'a Layer);

/// An SVG map of `layers` and `markers` over the `outlines` they cross, `width` x `height`
/// user units, scaled by CSS.
pub fn svg(layers: &[Layer], markers: &[Marker], outlines: &[Outline], width: u32, height: u32, label: &str) -> Markup {
    let drawn: Vec<Rings<'_>> = layers
        .iter()
        .map(|l| (drawable(&l.cells, MAX_DRAWN).into_iter().map(boundary).collect::<Vec<_>>(), l))
        .collect();
    let mut all: Vec<(f64, f64)> = drawn.iter().flat_map(|(polys, _)| polys.iter().flatten().copied()).collect();
    all.extend(markers.iter().map(|m| (m.at.lat(), m.at.lng())));
    let p = Projection::fit(&all, f64::from(width), f64::from(height));
    let points = |poly: &[(f64, f64)]| {
        poly.iter()
            .map(|&(lat, lng)| {
                let (x, y) = p.xy(lat, lng);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        svg.map xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {width} {height}")) role="img" aria-label=(label) {
            rect.sea x="0" y="0" width=(width) height=(height) {}
            @for (name, pts) in outline_points(&p, outlines) {
                polygon.outline points=(pts) { title { (name) } }
            }
            @for (polys, layer) in &drawn {
                g class=(layer.class) {
                    title { (layer.title) }
                    @for poly in polys {
                        polygon points=(points(poly)) {}
                    }
                }
            }
            @for m in markers {
                @let (x, y) = p.xy(m.at.lat(), m.at.lng());
                circle class=(m.class) cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="4" {
                    title { (m.title) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cell(lat: f64, lng: f64, res: Resolution) -> CellIndex {
        LatLng::new(lat, lng).expect("valid").to_cell(res)
    }

    #[test]
    fn svg_draws_one_polygon_per_cell_and_escapes_titles() {
        let c = cell(40.1, -75.3, Resolution::Seven);
        let cells: Vec<CellIndex> = c.grid_disk::<Vec<_>>(1);
        let layer = Layer { cells: cells.clone(), class: "area".into(), title: "<script>x</script>".into() };
        let marker =
            Marker { at: LatLng::new(40.1, -75.3).expect("valid"), class: "dot".into(), title: "display".into() };
        let around = Outline::new("around".into(), vec![(40.0, -75.4), (40.0, -75.2), (40.2, -75.2), (40.2, -75.4)]);
        let far = Outline::new("far".into(), vec![(10.0, 10.0), (10.0, 11.0), (11.0, 11.0)]);
        let out = svg(&[layer], &[marker], &[around, far], 320, 200, "a \"map\"").into_string();
        assert_eq!(out.matches("class=\"outline\"").count(), 1, "only the outline in view: {out}");
        assert!(out.contains("<title>around</title>") && !out.contains("<title>far</title>"));
        assert_eq!(out.matches("<polygon").count(), cells.len() + 1);
        assert_eq!(out.matches("<circle").count(), 1);
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;") && out.contains("a &quot;map&quot;"), "{out}");
    }

    proptest! {
        /// Every drawn vertex lies inside the box, whatever the area and its latitude.
        #[test]
        fn projected_vertices_stay_inside_the_box(lat in -70.0f64..70.0, lng in -170.0f64..170.0, k in 0u32..4) {
            let cells: Vec<CellIndex> = cell(lat, lng, Resolution::Eight).grid_disk::<Vec<_>>(k);
            let out = svg(&[Layer { cells, class: "a".into(), title: String::new() }], &[], &[], 300, 200, "m").into_string();
            for pts in out.split("points=\"").skip(1) {
                let pts = pts.split('"').next().unwrap_or_default();
                for xy in pts.split(' ') {
                    let (x, y) = xy.split_once(',').unwrap_or(("-1", "-1"));
                    let (x, y): (f64, f64) = (x.parse().unwrap_or(-1.0), y.parse().unwrap_or(-1.0));
                    prop_assert!((0.0..=300.0).contains(&x) && (0.0..=200.0).contains(&y), "{x},{y}");
                }
            }
        }

        /// Coarsening keeps every cell covered by a drawn ancestor and respects the limit.
        #[test]
        fn drawable_covers_every_cell_within_the_limit(lat in -60.0f64..60.0, lng in -170.0f64..170.0, k in 1u32..12, max in 1usize..50) {
            let cells: Vec<CellIndex> = cell(lat, lng, Resolution::Nine).grid_disk::<Vec<_>>(k);
            let drawn = drawable(&cells, max);
            prop_assert!(drawn.len() <= max || drawn.iter().all(|c| c.resolution() == Resolution::Zero));
            for c in &cells {
                prop_assert!(drawn.iter().any(|d| c.parent(d.resolution()) == Some(*d)), "{c} lost");
            }
        }
    }
}
