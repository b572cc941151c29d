//! The one wall clock. Stages never read it: the runner hands them "now" in `StageCtx`, and
//! everything else that needs the time (the gateway, tools) reads it here, so tests can
//! replace it with a fixed [`Clock`].

use std::sync::Arc;

use hexcast_core::Timestamp;

/// Where "now" comes from: the system clock in production, a fixed clock in tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The current time from the system clock, in milliseconds since the Unix epoch.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp(ms)
}

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(now)
}
