//! Integration tests of the ingest stage: every real file under shared/data, property tests
//! (no panic on any input, proto round trip).

mod props;
mod real_data;
mod rows;
