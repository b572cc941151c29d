//! The one abstraction every pipeline step implements. A stage is a deterministic function
//! of its state, one input and the injected context; the runner in `hexcast-runtime` owns
//! all I/O (consume, produce, commit, dead-letter) so no stage carries its own Kafka loop.

use crate::time::Timestamp;

/// A stable, bounded, machine-readable code for why an input was rejected. It becomes the
/// `reason` of the dead letter and the `reason` label of the rejected-records metric, so the
/// set of values must stay small.
pub trait ReasonCode {
    /// For example `"malformed_json"` or `"invalid_coordinates"`.
    fn reason_code(&self) -> &'static str;
}

/// What the runner tells a stage about the record being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageCtx {
    /// The current time, read once per batch by the runner.
    pub now: Timestamp,
    /// Partition the input was read from.
    pub partition: i32,
    /// Offset of the input in its partition.
    pub offset: i64,
    /// The record's own Kafka timestamp (producer create time), when it has one.
    pub record_time: Option<Timestamp>,
}

impl StageCtx {
    /// A context for tests and offline tools: `now`, partition 0, offset 0, no record time.
    pub fn at(now: Timestamp) -> Self {
        Self { now, partition: 0, offset: 0, record_time: None }
    }
}

/// One pipeline step. Deterministic: no I/O, no clock reads, no randomness, no async.
///
/// A stage may keep state between records. The runner builds a fresh stage (from a
/// factory) whenever a batch is abandoned (transaction abort, rebalance), so state never
/// gets ahead of the committed input offsets; a stage whose state must survive that
/// restores it in its factory.
pub trait Stage {
    /// Decoded input record.
    type In;
    /// Output record (may go to several topics; see [`crate::IntoRecord`]).
    type Out;
    /// Why an input is bad: it is dead-lettered and the stage moves on.
    type Reject: std::error::Error + ReasonCode;

    /// Stable stage name: used in metric labels, consumer group ids and dead letters.
    fn name(&self) -> &'static str;

    /// Processes one input, pushing zero or more outputs.
    fn process(&mut self, input: Self::In, ctx: &StageCtx, out: &mut Vec<Self::Out>) -> Result<(), Self::Reject>;
}
