//! Records as stages see them, free of any Kafka client type: the runner converts to and
//! from its client's messages. Topics are named logically here and mapped to real names
//! (with an optional prefix) by the runtime's configuration.

use std::fmt;

/// Header names every hexcast record may carry.
pub mod header {
    /// Correlates every record derived from one raw input.
    pub const TRACE_ID: &str = "hexcast-trace-id";
    /// Producer identity of the raw input.
    pub const SOURCE: &str = "hexcast-source";
    /// Payload schema, for example `hexcast.v1.Incident`.
    pub const SCHEMA: &str = "hexcast-schema";
    /// Feed format of a raw payload (`cad-json`, `cap-xml`, `eido-json`, `csv-<mapping>`).
    pub const FORMAT: &str = "hexcast-format";
    /// Dead letters: stage that rejected the record.
    pub const DL_STAGE: &str = "hexcast-dl-stage";
    /// Dead letters: reason code.
    pub const DL_REASON: &str = "hexcast-dl-reason";
    /// Dead letters of one row inside a multi-row record: its 1-based row number.
    pub const DL_ROW: &str = "hexcast-dl-row";
}

/// The logical topics of the pipeline (see DESIGN.md for keys and payloads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Raw feed payloads from producers.
    Raw,
    /// Canonical incidents, PII still present.
    Normalized,
    /// Rejected records with a reason.
    DeadLetter,
    /// Deduplicated incident events.
    Unique,
    /// Redacted alerts.
    Alerts,
    /// Policy decisions.
    Audit,
    /// Incidents held for editorial review.
    Review,
    /// Alerts with their H3 cover, one record per shard.
    Indexed,
    /// Subscriptions by shard (compacted).
    Subscriptions,
    /// Notification batches by tenant.
    Notifications,
    /// Dedup's state changelog (compacted), keyed by report id.
    DedupState,
    /// Geofenced requests (compacted), keyed by request id.
    Requests,
    /// Consented answers to requests, keyed by request id (declines are never written).
    RequestResponses,
    /// Public transparency log of requests, keyed by agency; no recipient data.
    Transparency,
    /// Registered assets (compacted), keyed `<owner>/<asset id>`.
    Assets,
    /// The matcher's recipients of record (compacted), keyed `<incident id>/<shard>/<chunk>`,
    /// partition = shard.
    Recipients,
}

impl Topic {
    /// Every topic, in pipeline order.
    pub const ALL: [Topic; 16] = [
        Topic::Raw,
        Topic::Normalized,
        Topic::DeadLetter,
        Topic::Unique,
        Topic::Alerts,
        Topic::Audit,
        Topic::Review,
        Topic::Indexed,
        Topic::Subscriptions,
        Topic::Notifications,
        Topic::DedupState,
        Topic::Requests,
        Topic::RequestResponses,
        Topic::Transparency,
        Topic::Assets,
        Topic::Recipients,
    ];

    /// The topic's base name (before any configured prefix).
    pub const fn base_name(self) -> &'static str {
        match self {
            Topic::Raw => "incidents.raw",
            Topic::Normalized => "incidents.normalized",
            Topic::DeadLetter => "incidents.deadletter",
            Topic::Unique => "incidents.unique",
            Topic::Alerts => "alerts",
            Topic::Audit => "audit",
            Topic::Review => "review",
            Topic::Indexed => "alerts.indexed",
            Topic::Subscriptions => "subscriptions",
            Topic::Notifications => "notifications",
            Topic::DedupState => "dedup.state",
            Topic::Requests => "requests",
            Topic::RequestResponses => "requests.responses",
            Topic::Transparency => "transparency",
            Topic::Assets => "assets",
            Topic::Recipients => "alerts.recipients",
        }
    }

    /// Position in [`Topic::ALL`], for per-topic counters.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base_name())
    }
}

/// A consumed record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InRecord {
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl InRecord {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// The first header of that name as UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    /// Logical destination topic.
    pub topic: Topic,
    /// Record key.
    pub key: Vec<u8>,
    /// Explicit partition (sharded topics); `None` lets the partitioner hash the key.
    pub partition: Option<i32>,
    /// Value; `None` produces a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers; the runner adds the input's trace headers when they are missing.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutRecord {
    /// A record with a key and a protobuf payload, tagged with its schema.
    pub fn proto(topic: Topic, key: impl Into<Vec<u8>>, msg: &impl prost::Message, schema: &str) -> Self {
        Self {
            topic,
            key: key.into(),
            partition: None,
            payload: Some(msg.encode_to_vec()),
            headers: vec![(header::SCHEMA.to_owned(), schema.as_bytes().to_vec())],
        }
    }

    /// A tombstone for `key`: deletes it from a compacted topic.
    pub fn tombstone(topic: Topic, key: impl Into<Vec<u8>>) -> Self {
        Self { topic, key: key.into(), partition: None, payload: None, headers: Vec::new() }
    }

    /// The same record with one more header.
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The same record on an explicit partition.
    pub fn on_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// One record of a changelog topic: key and value, `None` for a tombstone.
pub type ChangelogRecord = (Vec<u8>, Option<Vec<u8>>);

/// A changelog record with its partition: `(partition, key, value)`.
pub type PartitionedRecord = (i32, Vec<u8>, Option<Vec<u8>>);

/// Why a consumed record could not become a stage input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// Reason code for the dead letter.
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

impl DecodeError {
    /// A decode error with a reason code and detail.
    pub fn new(reason: &'static str, detail: impl fmt::Display) -> Self {
        Self { reason, detail: detail.to_string() }
    }
}

impl crate::stage::ReasonCode for DecodeError {
    fn reason_code(&self) -> &'static str {
        self.reason
    }
}

/// Decodes a stage input from a consumed record.
pub trait FromRecord: Sized {
    /// Decodes, or says why not (the record is dead-lettered).
    fn from_record(record: &InRecord) -> Result<Self, DecodeError>;
}

/// Encodes a stage output as a record to produce.
pub trait IntoRecord {
    /// The record.
    fn into_record(self) -> OutRecord;
}

impl IntoRecord for OutRecord {
    fn into_record(self) -> OutRecord {
        self
    }
}

/// Decodes a protobuf payload and converts it into a domain type.
pub fn decode_proto<P, D>(record: &InRecord) -> Result<D, DecodeError>
where
    P: prost::Message + Default,
    D: TryFrom<P>,
    D::Error: fmt::Display,
{
    let payload = record.payload.as_deref().ok_or_else(|| DecodeError::new("tombstone", "record has no payload"))?;
    let msg = P::decode(payload).map_err(|e| DecodeError::new("malformed_protobuf", e))?;
    D::try_from(msg).map_err(|e| DecodeError::new("invalid_message", e))
}
