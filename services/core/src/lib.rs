//! hexcast-core: the domain model every stage shares (incidents, alerts, subscriptions,
//! areas, the category taxonomy), the [`Stage`] trait with injected time, record codecs and
//! the H3 helpers. It must never do I/O, read a clock, or depend on tokio, rdkafka or tonic:
//! the dependency graph enforces that stage logic stays pure and testable without a broker.

pub mod cell_geometry;
pub mod cells;
pub mod exact;
pub mod geo;
pub mod keys;
pub mod model;
pub mod record;
pub mod stage;
pub mod taxonomy;
pub mod time;
pub mod topology;

pub use geo::{Area, GeoError, LatLng};
pub use model::{
    Alert, AlertText, DecodeModelError, Delivery, EventKind, HeldAlert, Incident, IncidentEvent, IndexedAlert,
    LocalizedText, NotificationBatch, Place, PolicyDecision, QuietHours, Sensitive, Subscription, SubscriptionFilter,
    subscription_key, subscription_key_parts,
};
pub use record::{
    ChangelogRecord, DecodeError, FromRecord, InRecord, IntoRecord, OutRecord, PartitionedRecord, Topic, header,
};
pub use stage::{ReasonCode, Stage, StageCtx};
pub use taxonomy::Category;
pub use time::Timestamp;
pub use topology::StageSpec;

/// Enums shared with the wire format (prost generates plain Rust enums for them).
pub use hexcast_proto::v1::{Certainty, Decision, IncidentStatus, Severity, Urgency};
