//! The review decisions of the `audit` topic (a reviewer's approve or reject, the timeout
//! rule), newest first, so every editor sees what the others decided. Only the decision
//! record is kept: incident id, category, outcome, reviewer and their note.

use std::collections::VecDeque;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use hexcast_proto::v1 as pb;
use prost::Message as _;

/// Decisions kept.
pub const MAX_KEPT: usize = 200;

/// The rules whose decisions the review page lists.
pub const REVIEW_RULES: [&str; 2] = ["review", "hold_timeout"];

/// Recent review decisions.
#[derive(Debug, Default)]
pub struct ReviewAudit {
    recent: RwLock<VecDeque<pb::PolicyDecision>>,
    version: AtomicU64,
}

impl ReviewAudit {
    /// Applies one audit record; keeps it if a review rule made it.
    pub fn apply_decision(&self, d: pb::PolicyDecision) {
        if !REVIEW_RULES.contains(&d.rule.as_str()) {
            return;
        }
        let Ok(mut recent) = self.recent.write() else { return };
        if recent.iter().any(|r| r.incident_id == d.incident_id && r.decided_at_ms == d.decided_at_ms) {
            return;
        }
        recent.push_front(d);
        recent.make_contiguous().sort_by_key(|d| std::cmp::Reverse(d.decided_at_ms));
        recent.truncate(MAX_KEPT);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<pb::PolicyDecision> {
        self.recent.read().map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }

    /// Changes so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }
}

impl hexcast_runtime::follower::Table for ReviewAudit {
    fn apply(&self, _key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(bytes) = value else { return Ok(()) };
        let d = pb::PolicyDecision::decode(bytes).map_err(|e| format!("undecodable decision: {e}"))?;
        self.apply_decision(d);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, rule: &str, at: i64) -> pb::PolicyDecision {
        pb::PolicyDecision { incident_id: id.into(), rule: rule.into(), decided_at_ms: at, ..Default::default() }
    }

    #[test]
    fn keeps_review_decisions_newest_first_once_each() {
        let a = ReviewAudit::default();
        a.apply_decision(d("x", "category_denied", 1));
        a.apply_decision(d("a", "review", 2));
        a.apply_decision(d("b", "hold_timeout", 3));
        a.apply_decision(d("a", "review", 2));
        let ids: Vec<String> = a.list().into_iter().map(|d| d.incident_id).collect();
        assert_eq!(ids, vec!["b".to_owned(), "a".to_owned()]);
    }
}
