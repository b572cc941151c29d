//! The pipeline's topology, in one table: every stage with the topic it consumes, the
//! topics it may write, its state changelog and its consumer group. The binary's wiring,
//! topic creation and the docs read this table; the runner refuses (dead-letters) any
//! output a stage writes to a topic its row does not declare. Dead letters are the runner's
//! own and go to `incidents.deadletter` from every stage.

use crate::record::Topic;

/// One stage of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSpec {
    /// The stage's name: its consumer group and transactional id are derived from it, so it
    /// never changes for a deployed stage.
    pub name: &'static str,
    /// The topic it consumes.
    pub input: Topic,
    /// The topics it writes (besides dead letters).
    pub outputs: &'static [Topic],
    /// The compacted topic its state is restored from, when it keeps state across batches.
    pub changelog: Option<Topic>,
    /// The crate and file that hold its logic (for the docs).
    pub source: &'static str,
}

impl StageSpec {
    /// Whether the stage may write `topic`.
    pub fn writes(&self, topic: Topic) -> bool {
        self.outputs.contains(&topic) || topic == Topic::DeadLetter
    }
}

/// Raw feeds into canonical incidents.
pub const INGEST: StageSpec = StageSpec {
    name: "ingest",
    input: Topic::Raw,
    outputs: &[Topic::Normalized, Topic::DeadLetter],
    changelog: None,
    source: "services/ingest/src/lib.rs",
};

/// Repeats dropped, updates and merges turned into events.
pub const DEDUP: StageSpec = StageSpec {
    name: "dedup",
    input: Topic::Normalized,
    outputs: &[Topic::Unique, Topic::DedupState],
    changelog: Some(Topic::DedupState),
    source: "services/dedup/src/state.rs",
};

/// What may alert, redacted; every decision audited; held alerts queued for review.
pub const POLICY: StageSpec = StageSpec {
    name: "policy",
    input: Topic::Unique,
    outputs: &[Topic::Alerts, Topic::Audit, Topic::Review],
    changelog: None,
    source: "services/policy/src/lib.rs",
};

/// Target areas covered with H3 cells and routed to matcher shards.
pub const SPATIAL: StageSpec = StageSpec {
    name: "spatial",
    input: Topic::Alerts,
    outputs: &[Topic::Indexed],
    changelog: None,
    source: "services/spatial/src/lib.rs",
};

/// The editorial hold: held alerts released or rejected by verdicts and the timeout rule.
pub const REVIEW: StageSpec = StageSpec {
    name: "review",
    input: Topic::Review,
    outputs: &[Topic::Alerts, Topic::Audit, Topic::Review],
    changelog: Some(Topic::Review),
    source: "services/review/src/queue.rs",
};

/// Indexed alerts matched against the subscriber index into notification records, with
/// each incident's recipients of record as its changelog. Its name stays `push` (the
/// consumer group of deployed clusters).
pub const MATCH: StageSpec = StageSpec {
    name: "push",
    input: Topic::Indexed,
    outputs: &[Topic::Notifications, Topic::Recipients],
    changelog: Some(Topic::Recipients),
    source: "services/match/src/matcher.rs",
};

/// Every stage, in pipeline order.
pub const STAGES: [StageSpec; 6] = [INGEST, DEDUP, POLICY, SPATIAL, REVIEW, MATCH];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_a_stage_reads_is_written_by_a_stage_or_a_client() {
        // Topics written from outside the runner: producers, and the API gateway's writer.
        let external =
            [Topic::Raw, Topic::Subscriptions, Topic::Requests, Topic::Assets, Topic::Review, Topic::Indexed];
        for s in STAGES {
            assert!(
                external.contains(&s.input) || STAGES.iter().any(|w| w.outputs.contains(&s.input)),
                "nothing writes {}, the input of {}",
                s.input,
                s.name
            );
            if let Some(c) = s.changelog {
                assert!(s.writes(c), "{} must write its own changelog {c}", s.name);
            }
        }
        let names: std::collections::HashSet<_> = STAGES.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), STAGES.len(), "stage names are group ids: they must be unique");
    }
}
