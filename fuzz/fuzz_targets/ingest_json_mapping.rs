//! The JSON reader with the built-in JSON mapping (`json-example-cad`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hexcast_fuzz::ingest("json-example-cad", data);
});
