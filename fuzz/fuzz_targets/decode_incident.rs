//! `hexcast.v1.Incident` as the dedup stage consumes it, then through dedup and policy.
#![no_main]

use hexcast_core::{FromRecord, Incident, Stage};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(incident) = Incident::from_record(&hexcast_fuzz::record(data)) else { return };
    let mut events = Vec::new();
    let mut dedup = hexcast_dedup::Dedup::new(hexcast_dedup::DedupConfig::default());
    let _ = dedup.process(incident, &hexcast_fuzz::ctx(), &mut events);
    let mut policy = hexcast_fuzz::policy();
    for e in events {
        let hexcast_dedup::DedupOut::Event(e) = e else { continue };
        let mut out = Vec::new();
        let _ = policy.process(*e, &hexcast_fuzz::ctx(), &mut out);
    }
});
