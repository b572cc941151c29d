//! The size of an H3 cell: its centroid and how far its boundary reaches from it. The exact
//! predicates and the covers both build on these bounds; they must never under-estimate.

use h3o::{CellIndex, Resolution};

use crate::geo::LatLng;

/// The cell's centroid.
pub fn centroid(cell: CellIndex) -> LatLng {
    let c = h3o::LatLng::from(cell);
    // h3o's centroids are always valid coordinates; (0, 0) cannot be a centroid of any cell.
    LatLng::new(c.lat(), c.lng()).unwrap_or_else(|_| unreachable!("cell centroid"))
}

/// Largest distance from the cell's centroid to its boundary, in meters: every point of the
/// cell is within this distance of the centroid.
pub fn circumradius_m(cell: CellIndex) -> f64 {
    let c = centroid(cell);
    cell.boundary()
        .iter()
        .filter_map(|v| LatLng::new(v.lat(), v.lng()).ok())
        .map(|v| c.distance_m(v))
        .fold(0.0, f64::max)
        // Boundary vertices are on great circles; edges between them bulge by far less
        // than this margin at every resolution.
        * 1.01
        + 0.5
}

/// An upper bound of [`circumradius_m`] over every cell of a resolution. H3 cells vary in
/// size: sampled over the globe (pentagon neighborhoods included) the worst circumradius is
/// 1.09 to 1.16 times the average edge length (`print_circumradius_to_edge_ratio`); 1.5
/// leaves a wide margin, and a test checks it on sampled cells.
pub fn max_circumradius_m(res: Resolution) -> f64 {
    res.edge_length_m() * 1.5
}
