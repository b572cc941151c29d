//! hexcast-match: the match stage. It keeps the subscriber index (cells only, never
//! coordinates) and the asset index in memory, and turns each indexed alert into durable
//! notification records: subscriber s gets alert a when their areas meet (never missed,
//! never more than 161 m apart) and s's filters accept a, exactly once even where s and a
//! span several shards. It is a pure stage: no Kafka, no gRPC, no clock; the runtime's
//! follower fills the indexes and the runner moves the records.

pub mod assets;
pub mod delivery;
pub mod index;
pub mod matcher;
pub mod recipients;

pub use assets::{AssetIndex, AssetsConfig, EnrichRule};
pub use index::SubscriberIndex;
pub use matcher::{DEFAULT_RECIPIENTS_TTL_SECS, MatchError, Matcher, tenant_partition};
pub use recipients::Recipients;
