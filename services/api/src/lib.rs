//! hexcast-api: the gRPC gateway. One file per service: Push (durable, resumable
//! notification streams), Subscriptions (a subscriber's areas become H3 cells before
//! anything is stored), Requests (geofenced requests from agencies), Assets (AEDs,
//! cameras) and Review (the editorial hold's verdicts); shared bearer-token auth, one
//! error-to-status mapping, health, reflection, TLS and graceful shutdown in `server`.
//! It holds no stage logic and no Kafka client: it reads through the runtime's follower
//! and partition reader and writes through the runtime's writer. A tenant never sees
//! another tenant's data.

pub mod assets;
pub mod auth;
pub mod covers;
pub mod cursor;
pub mod error;
pub mod grpc_metrics;
pub mod push;
pub mod requests;
pub mod review;
pub mod server;
pub mod state;
pub mod subscriptions;

pub use auth::{Role, Tokens};
pub use requests::{RequestStore, RequestsConfig};
pub use review::{ReviewService, VerdictError};
pub use server::{ApiHandle, PushConfig, Tables, start, start_review, start_review_service};
