//! The review queue: a stage on the shared runner consuming the compacted `review` topic.
//! Held alerts (from policy) join the pending set; a reviewer's verdict (written to the same
//! topic by the gRPC service, in the held alert's partition) releases the alert to `alerts`
//! or drops it; a tick (written to every partition periodically) applies the timeout rule
//! to the partition's overdue holds. Every outcome is audited and tombstones the hold, all
//! in the runner's one transaction, so a decision is applied exactly once. It never decides
//! on its own: only a verdict or the policy's timeout rule does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hexcast_core::record::decode_proto;
use hexcast_core::{
    Decision, FromRecord, HeldAlert, InRecord, IntoRecord, OutRecord, PolicyDecision, ReasonCode, Stage, StageCtx,
    Timestamp, Topic, header,
};
use hexcast_proto::v1 as pb;
use prost::Message as _;

/// Schema header of a verdict.
pub const VERDICT_SCHEMA: &str = "hexcast.v1.ReviewVerdict";
/// Schema header of a tick.
pub const TICK_SCHEMA: &str = "hexcast.v1.ReviewTick";
/// Schema header of a held alert.
pub const HELD_SCHEMA: &str = "hexcast.v1.HeldAlert";

/// The key of a verdict on an incident.
pub fn verdict_key(incident_id: &str) -> String {
    format!("d:{incident_id}")
}

/// One record of the `review` topic.
#[derive(Debug, Clone, PartialEq)]
pub enum ReviewInput {
    /// An alert held by policy.
    Held(Box<HeldAlert>),
    /// A reviewer's verdict.
    Verdict(pb::ReviewVerdict),
    /// Time passes: apply the timeout rule.
    Tick,
    /// A decided hold or applied verdict (compaction removes both).
    Tombstone,
}

impl FromRecord for ReviewInput {
    fn from_record(record: &InRecord) -> Result<Self, hexcast_core::DecodeError> {
        if record.payload.is_none() {
            return Ok(ReviewInput::Tombstone);
        }
        match record.header_str(header::SCHEMA) {
            Some(TICK_SCHEMA) => Ok(ReviewInput::Tick),
            Some(VERDICT_SCHEMA) => {
                let v = pb::ReviewVerdict::decode(record.payload.as_deref().unwrap_or_default())
                    .map_err(|e| hexcast_core::DecodeError::new("malformed_protobuf", e))?;
                if v.incident_id.is_empty() {
                    return Err(hexcast_core::DecodeError::new("invalid_message", "missing field `incident_id`"));
                }
                Ok(ReviewInput::Verdict(v))
            }
            _ => Ok(ReviewInput::Held(Box::new(decode_proto::<pb::HeldAlert, HeldAlert>(record)?))),
        }
    }
}

/// A held alert and the partition of the `review` topic it lives in.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The hold.
    pub held: HeldAlert,
    /// Its partition.
    pub partition: i32,
}

/// Pending holds by incident id, shared with the gRPC service (read-only there).
pub type PendingMap = Arc<Mutex<BTreeMap<String, Pending>>>;

/// Rebuilds the pending holds from the `review` topic's records (`(partition, key,
/// value)` in log order): the latest value of every incident key that is a held alert.
pub fn restore(records: impl IntoIterator<Item = hexcast_core::PartitionedRecord>) -> BTreeMap<String, Pending> {
    let mut latest: BTreeMap<Vec<u8>, (i32, Option<Vec<u8>>)> = BTreeMap::new();
    for (p, k, v) in records {
        latest.insert(k, (p, v));
    }
    let mut pending = BTreeMap::new();
    for (k, (partition, v)) in latest {
        let Some(v) = v else { continue };
        let Ok(key) = String::from_utf8(k) else { continue };
        if key.starts_with("d:") || key == "tick" {
            continue;
        }
        if let Ok(held) = pb::HeldAlert::decode(v.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|p| HeldAlert::try_from(p).map_err(|e| e.to_string()))
        {
            pending.insert(key, Pending { held, partition });
        }
    }
    pending
}

/// The review stage never rejects a decodable record.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub enum ReviewError {}

impl ReasonCode for ReviewError {
    fn reason_code(&self) -> &'static str {
        match *self {}
    }
}

/// The review queue stage.
#[derive(Debug)]
pub struct ReviewQueue {
    pending: PendingMap,
}

impl ReviewQueue {
    /// A queue over `pending` (already restored).
    pub fn new(pending: PendingMap) -> Self {
        Self { pending }
    }
}

fn tombstone(key: String, partition: i32) -> OutRecord {
    OutRecord {
        topic: Topic::Review,
        key: key.into_bytes(),
        partition: Some(partition),
        payload: None,
        headers: vec![],
    }
}

fn audit(held: &HeldAlert, decision: Decision, rule: &str, reason: &'static str, now: Timestamp) -> PolicyDecision {
    PolicyDecision {
        incident_id: held.alert.incident_id.clone(),
        decision,
        rule: rule.to_owned(),
        reason,
        category: held.alert.category,
        decided_at: now,
        alert_id: Some(held.alert.alert_id.clone()),
        reviewer: None,
        note: String::new(),
    }
}

fn release(held: &HeldAlert, now: Timestamp, out: &mut Vec<OutRecord>) {
    let mut alert = held.alert.clone();
    alert.issued_at = now;
    out.push(alert.into_record());
}

impl Stage for ReviewQueue {
    type In = ReviewInput;
    type Out = OutRecord;
    type Reject = ReviewError;

    fn name(&self) -> &'static str {
        "review"
    }

    fn process(&mut self, input: ReviewInput, ctx: &StageCtx, out: &mut Vec<OutRecord>) -> Result<(), ReviewError> {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The timeout rule, for this partition's holds only: another instance may own the
        // others.
        let overdue: Vec<String> = pending
            .iter()
            .filter(|(_, p)| p.partition == ctx.partition && p.held.deadline <= ctx.now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in overdue {
            let Some(p) = pending.remove(&id) else { continue };
            if p.held.release_on_timeout {
                release(&p.held, ctx.now, out);
                out.push(audit(&p.held, Decision::Released, "hold_timeout", "timeout_released", ctx.now).into_record());
            } else {
                out.push(audit(&p.held, Decision::Rejected, "hold_timeout", "timeout_dropped", ctx.now).into_record());
            }
            out.push(tombstone(id, p.partition));
        }
        match input {
            ReviewInput::Held(h) => {
                let id = h.alert.incident_id.clone();
                pending.insert(id, Pending { held: *h, partition: ctx.partition });
            }
            ReviewInput::Verdict(v) => {
                if let Some(p) = pending.remove(&v.incident_id) {
                    let mut d = if v.approve {
                        release(&p.held, ctx.now, out);
                        audit(&p.held, Decision::Released, "review", "approved", ctx.now)
                    } else {
                        audit(&p.held, Decision::Rejected, "review", "rejected_by_reviewer", ctx.now)
                    };
                    d.reviewer = Some(v.reviewer.clone());
                    d.note = v.reason.clone();
                    out.push(d.into_record());
                    out.push(tombstone(v.incident_id.clone(), p.partition));
                }
                out.push(tombstone(verdict_key(&v.incident_id), ctx.partition));
            }
            ReviewInput::Tick | ReviewInput::Tombstone => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::{Alert, Area, Category, LatLng};

    fn held(id: &str, deadline: i64, release_on_timeout: bool) -> HeldAlert {
        let c = LatLng::new(40.0, -75.0).expect("valid");
        let mut alert = Alert::synthetic(
            &format!("{id}@1"),
            Category::parse("crime.hostage").expect("known"),
            Area::circle(c, 500.0).expect("valid"),
        );
        alert.incident_id = id.to_owned();
        HeldAlert {
            alert,
            held_at: Timestamp(0),
            deadline: Timestamp(deadline),
            release_on_timeout,
            rule: "hold".into(),
        }
    }

    fn verdict(id: &str, approve: bool) -> ReviewInput {
        ReviewInput::Verdict(pb::ReviewVerdict {
            incident_id: id.into(),
            approve,
            reviewer: "ana".into(),
            reason: "checked".into(),
            decided_at_ms: 5,
        })
    }

    fn run(q: &mut ReviewQueue, input: ReviewInput, now: i64) -> Vec<OutRecord> {
        let mut out = Vec::new();
        q.process(input, &StageCtx::at(Timestamp(now)), &mut out).unwrap_or_else(|e| match e {});
        out
    }

    fn decision(r: &OutRecord) -> pb::PolicyDecision {
        pb::PolicyDecision::decode(r.payload.as_deref().expect("payload")).expect("decision")
    }

    #[test]
    fn approve_releases_and_audits_reject_drops_and_audits() {
        let mut q = ReviewQueue::new(PendingMap::default());
        assert!(run(&mut q, ReviewInput::Held(Box::new(held("a", 1_000, false))), 0).is_empty());
        assert!(run(&mut q, ReviewInput::Held(Box::new(held("b", 1_000, false))), 0).is_empty());
        let out = run(&mut q, verdict("a", true), 10);
        let topics: Vec<Topic> = out.iter().map(|r| r.topic).collect();
        assert_eq!(topics, vec![Topic::Alerts, Topic::Audit, Topic::Review, Topic::Review]);
        let d = decision(&out[1]);
        assert_eq!((d.decision(), d.reviewer.as_str(), d.note.as_str()), (pb::Decision::Released, "ana", "checked"));
        let out = run(&mut q, verdict("b", false), 10);
        assert_eq!(out.iter().map(|r| r.topic).collect::<Vec<_>>(), vec![Topic::Audit, Topic::Review, Topic::Review]);
        assert_eq!(decision(&out[0]).decision(), pb::Decision::Rejected);
        // A second verdict on a decided hold changes nothing but its own tombstone.
        let out = run(&mut q, verdict("a", false), 20);
        assert_eq!(out.len(), 1);
        assert!(out[0].payload.is_none());
    }

    #[test]
    fn timeout_drops_or_releases_per_policy_at_the_deadline_only() {
        let mut q = ReviewQueue::new(PendingMap::default());
        run(&mut q, ReviewInput::Held(Box::new(held("drop", 1_000, false))), 0);
        run(&mut q, ReviewInput::Held(Box::new(held("keep", 1_000, true))), 0);
        assert!(run(&mut q, ReviewInput::Tick, 999).is_empty());
        let out = run(&mut q, ReviewInput::Tick, 1_000);
        let reasons: Vec<String> = out.iter().filter(|r| r.topic == Topic::Audit).map(|r| decision(r).reason).collect();
        assert_eq!(reasons, vec!["timeout_dropped".to_owned(), "timeout_released".to_owned()]);
        assert_eq!(out.iter().filter(|r| r.topic == Topic::Alerts).count(), 1);
        assert!(run(&mut q, ReviewInput::Tick, 5_000).is_empty());
    }

    #[test]
    fn restore_keeps_only_undecided_holds() {
        let rec = |h: &HeldAlert| Some(pb::HeldAlert::from(h).encode_to_vec());
        let (a, b) = (held("a", 9, false), held("b", 9, false));
        let pending = restore(vec![
            (0, b"a".to_vec(), rec(&a)),
            (1, b"b".to_vec(), rec(&b)),
            (1, b"d:b".to_vec(), Some(vec![1])),
            (1, b"b".to_vec(), None),
            (2, b"tick".to_vec(), Some(vec![])),
        ]);
        assert_eq!(pending.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(pending["a"].partition, 0);
    }
}
