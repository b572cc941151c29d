//! hexcast-push: the push service. It keeps the subscriber index (cells only, never
//! coordinates) in step with the compacted subscriptions topic, matches indexed alerts into
//! durable notification records, and serves them to push backends over gRPC streams that
//! resume from a cursor without loss. A tenant never sees another tenant's data. It also
//! serves geofenced requests from agency tenants (`requests`) and registered assets
//! (`assets`) that enrich alerts.

pub mod assets;
pub mod auth;
pub mod cursor;
pub mod error;
pub mod index;
pub mod loader;
pub mod matcher;
pub mod requests;
pub mod server;
pub mod service;
pub mod table;

pub use assets::{AssetIndex, AssetsConfig};
pub use auth::{Role, Tokens};
pub use index::SubscriberIndex;
pub use matcher::Matcher;
pub use requests::{RequestStore, RequestsConfig};
pub use server::{PushConfig, PushHandle, start};
