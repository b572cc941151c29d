//! `hexcast.v1.IndexedAlert` as the push matcher consumes it.
#![no_main]

use hexcast_core::{FromRecord, IndexedAlert};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = IndexedAlert::from_record(&hexcast_fuzz::record(data));
});
