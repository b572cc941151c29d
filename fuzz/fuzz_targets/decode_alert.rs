//! `hexcast.v1.Alert` as the spatial stage consumes it, then covered and routed to shards.
#![no_main]

use hexcast_core::{Alert, FromRecord};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(alert) = Alert::from_record(&hexcast_fuzz::record(data)) else { return };
    let _ = hexcast_spatial::Spatial::new(Default::default(), 6).index(alert);
});
