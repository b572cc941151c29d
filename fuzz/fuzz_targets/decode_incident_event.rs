//! `hexcast.v1.IncidentEvent` as the policy stage consumes it, then through policy and
//! the spatial stage (an allowed alert's target area gets covered).
#![no_main]

use hexcast_core::{FromRecord, IncidentEvent, Stage};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(event) = IncidentEvent::from_record(&hexcast_fuzz::record(data)) else { return };
    let mut policy = hexcast_fuzz::policy();
    let mut out = Vec::new();
    let _ = policy.process(event, &hexcast_fuzz::ctx(), &mut out);
    let spatial = hexcast_spatial::Spatial::new(Default::default(), 6);
    for o in out {
        if let hexcast_policy::PolicyOut::Alert(a) = o {
            let _ = spatial.index(a);
        }
    }
});
