//! Shared pieces of the fuzz targets: the raw-record path of ingest, and the record path
//! every protobuf-consuming stage uses (`FromRecord`, i.e. decode then domain conversion).

use std::sync::LazyLock;

use hexcast_core::{FromRecord, InRecord, StageCtx, Timestamp, header};
use hexcast_ingest::{Ingest, RawIncident};
use hexcast_policy::PolicyConfig;

/// Built once: parsing the built-in mappings per input would dominate every run.
static INGEST: LazyLock<Ingest> = LazyLock::new(Ingest::default);
static POLICY: LazyLock<PolicyConfig> = LazyLock::new(PolicyConfig::seed);

/// The seed policy.
pub fn policy() -> hexcast_policy::Policy {
    hexcast_policy::Policy::new(POLICY.clone())
}

/// A fixed "now" (2027-01-15), so that runs are reproducible.
pub const NOW: Timestamp = Timestamp(1_800_000_000_000);

/// The stage context every target runs with.
pub fn ctx() -> StageCtx {
    StageCtx::at(NOW)
}

/// Runs one raw payload through the ingest stage exactly as the runner hands it over
/// (headers decoded by `FromRecord`), then every incident it yields back through its own
/// protobuf form, which must round-trip.
pub fn ingest(format: &str, payload: &[u8]) {
    let record = InRecord {
        key: None,
        payload: Some(payload.to_vec()),
        headers: vec![
            (header::FORMAT.to_owned(), format.as_bytes().to_vec()),
            (header::SOURCE.to_owned(), b"fuzz".to_vec()),
        ],
    };
    let Ok(raw) = RawIncident::from_record(&record) else { return };
    let Ok(n) = INGEST.normalize(&raw, NOW) else { return };
    for incident in n.incidents {
        let pb = hexcast_proto::v1::Incident::from(&incident);
        let back = hexcast_core::Incident::try_from(pb);
        assert!(back.is_ok(), "a normalized incident does not survive its own protobuf form: {back:?}");
    }
}

/// A consumed record with `data` as its value.
pub fn record(data: &[u8]) -> InRecord {
    InRecord { key: Some(b"k".to_vec()), payload: Some(data.to_vec()), headers: Vec::new() }
}
