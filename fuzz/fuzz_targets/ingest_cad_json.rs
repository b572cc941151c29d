//! The `cad-json` feed parser, through the ingest stage's record path.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hexcast_fuzz::ingest("cad-json", data);
});
