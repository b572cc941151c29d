//! The CSV reader with each built-in CSV mapping; the first byte picks the mapping.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, payload)) = data.split_first() else { return };
    let format = if which % 2 == 0 { "csv-montco" } else { "csv-sf-fire" };
    hexcast_fuzz::ingest(format, payload);
});
