//! Restoring a stateful stage from its declared changelog. The runner calls a stage's
//! factory at start, after an abandoned batch and after a rebalance; for a stage with a
//! changelog, that factory is [`restoring`]: it reads the changelog up to its last stable
//! offset (the state as of the last committed transaction) and builds the stage from it.
//! The first call also fences a crashed predecessor of this instance, whose open
//! transaction would otherwise hold the changelog's last stable offset back until it timed
//! out; later calls must not fence, since this process's own session is then the one that
//! would be fenced. A read that fails is retried until it succeeds or shutdown fires.

use std::time::Duration;

use hexcast_core::{PartitionedRecord, Timestamp, Topic};
use tokio_util::sync::CancellationToken;

use crate::changelog::{fence_stage, read_changelog_partitioned};
use crate::runner::Runtime;

/// How long one read of a changelog may take before it is retried.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// A factory that builds stage `stage` from its `changelog`: `restore` gets the changelog's
/// records (in log order per partition) and the time; `empty` builds the stage when
/// shutdown fires before a read succeeded (it will never process a record).
pub fn restoring<S, E, R>(
    rt: &Runtime,
    stage: &'static str,
    changelog: Topic,
    shutdown: CancellationToken,
    mut empty: E,
    mut restore: R,
) -> impl FnMut() -> S + Send + 'static + use<S, E, R>
where
    E: FnMut() -> S + Send + 'static,
    R: FnMut(Vec<PartitionedRecord>, Timestamp) -> S + Send + 'static,
{
    let rt = rt.clone();
    let mut first = true;
    move || {
        loop {
            if shutdown.is_cancelled() {
                return empty();
            }
            let read = (|| {
                if first {
                    fence_stage(&rt, stage)?;
                }
                read_changelog_partitioned(&rt, stage, changelog, RESTORE_TIMEOUT)
            })();
            match read {
                Ok(records) => {
                    first = false;
                    return restore(records, (rt.clock)());
                }
                Err(e) => {
                    tracing::warn!(stage, error = %format!("{e:#}"), "restoring from the changelog failed, retrying");
                    std::thread::sleep(Duration::from_millis(rt.runner.retry_backoff_ms.max(100)));
                }
            }
        }
    }
}
