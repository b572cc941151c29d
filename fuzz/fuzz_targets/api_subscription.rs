//! A Subscriptions.Upsert request as the gRPC server decodes it: every area converted and
//! (polygons, cell lists) covered at the polygon precision within the per-subscription
//! cell budget, as `stored_subscription` does.
#![no_main]

use hexcast_core::Area;
use hexcast_core::cells::cover;
use hexcast_proto::v1 as pb;
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(req) = pb::UpsertRequest::decode(data) else { return };
    let Some(sub) = req.subscription else { return };
    let mut budget = 20_000usize;
    for a in &sub.areas {
        let Ok(area) = Area::try_from(a) else { continue };
        match &area {
            Area::Point(p) => {
                let _ = p.cell(h3o::Resolution::Eleven);
            }
            Area::Circle { center, .. } => {
                let _ = center.cell(h3o::Resolution::Eleven);
            }
            _ => {
                if let Ok(cells) = cover(&area, h3o::Resolution::Ten, budget) {
                    budget = budget.saturating_sub(cells.len());
                }
            }
        }
    }
});
