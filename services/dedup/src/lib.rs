//! dedup: one event stream per real incident. Exact repeats (same source, id and version)
//! are dropped, newer versions become `update`s and closes become `close`; a report from
//! another source of the same category family, close in space and time to an incident it
//! remembers, is merged into it (an `update` of that incident's stable id). It must never
//! emit a second `new` for an incident it still remembers: every change to its state is
//! written, in the same transaction as its events, to a compacted changelog (see
//! [`DedupOut::State`]) from which [`Dedup::restore`] rebuilds it after a restart, an
//! abandoned batch or a rebalance. State is bounded by a TTL and a size cap.

mod config;
mod state;

pub use config::{DedupConfig, DedupConfigError};
pub use state::{Dedup, RestoreStats};

use hexcast_core::{IncidentEvent, IntoRecord, OutRecord, ReasonCode, Topic, header};
use hexcast_proto::v1 as pb;
use prost::Message as _;

/// Counter of incidents forgotten before their TTL because of the size cap.
pub const CAP_EVICTED: &str = "hexcast_dedup_cap_evicted_total";
/// Counter of incidents forgotten because their TTL passed.
pub const TTL_EXPIRED: &str = "hexcast_dedup_ttl_expired_total";
/// Gauge of reports remembered.
pub const ENTRIES: &str = "hexcast_dedup_entries";

/// Dedup never rejects: every valid incident is either an event or a repeat.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub enum DedupError {}

impl ReasonCode for DedupError {
    fn reason_code(&self) -> &'static str {
        match *self {}
    }
}

/// What dedup emits: events for policy, and its own state changes for the changelog.
#[derive(Debug, Clone, PartialEq)]
pub enum DedupOut {
    /// A new, update or close event (to `incidents.unique`).
    Event(Box<IncidentEvent>),
    /// The latest state of one report, or `None` once it is forgotten (to `dedup.state`).
    State {
        /// Report id (the changelog key).
        report_id: String,
        /// The entry; `None` is a tombstone.
        entry: Option<pb::DedupEntry>,
    },
}

impl DedupOut {
    /// The event, when this is one.
    pub fn event(&self) -> Option<&IncidentEvent> {
        match self {
            DedupOut::Event(e) => Some(e),
            DedupOut::State { .. } => None,
        }
    }
}

impl IntoRecord for DedupOut {
    fn into_record(self) -> OutRecord {
        match self {
            DedupOut::Event(e) => (*e).into_record(),
            DedupOut::State { report_id, entry } => OutRecord {
                topic: Topic::DedupState,
                key: report_id.into_bytes(),
                partition: None,
                payload: entry.map(|e| e.encode_to_vec()),
                headers: vec![(header::SCHEMA.to_owned(), b"hexcast.v1.DedupEntry".to_vec())],
            },
        }
    }
}

#[cfg(test)]
mod tests;
