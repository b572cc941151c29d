//! The `Review` gRPC service. Reviewers are authenticated by bearer token (the token file
//! maps a reviewer name to a token); a verdict is recorded by writing it to the `review`
//! topic, in the held alert's partition, where the queue stage applies it. The service
//! itself never writes `alerts` or `audit`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use hexcast_core::{OutRecord, Topic};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::review_server::Review;
use hexcast_review::queue::{PendingMap, VERDICT_SCHEMA, verdict_key};
use hexcast_runtime::{Clock, Writer};
use tonic::{Request, Response, Status};

use crate::auth::tenant_of;

/// Most entries ListPending returns.
const MAX_LIST: usize = 1_000;
/// Longest reason accepted.
const MAX_REASON: usize = 1_000;

/// The Review service.
#[derive(Clone)]
pub struct ReviewService {
    pending: PendingMap,
    writer: Writer,
    clock: Clock,
    /// Verdicts sent and not yet applied, so a second one is refused.
    sent: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for ReviewService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewService").finish_non_exhaustive()
    }
}

impl ReviewService {
    /// A service over the queue's pending holds, writing verdicts to the `review` topic.
    pub fn new(pending: PendingMap, writer: Writer, clock: Clock) -> Self {
        Self { pending, writer, clock, sent: Arc::default() }
    }

    /// Records a verdict of `reviewer` on a pending hold: the one path every decision takes
    /// (the gRPC Approve/Reject and the web console), so each is the same audited record.
    /// `Ok(false)` when the hold is not pending or a verdict on it is already on its way.
    pub async fn record_verdict(
        &self,
        reviewer: &str,
        incident_id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<bool, VerdictError> {
        if incident_id.is_empty() {
            return Err(VerdictError::MissingIncident);
        }
        if reason.trim().is_empty() || reason.len() > MAX_REASON {
            return Err(VerdictError::Reason { max: MAX_REASON });
        }
        let partition = {
            let pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut sent = self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            sent.retain(|id| pending.contains_key(id));
            match pending.get(incident_id) {
                Some(p) if sent.insert(incident_id.to_owned()) => p.partition,
                _ => return Ok(false),
            }
        };
        let now_ms = (self.clock)().0;
        let verdict = pb::ReviewVerdict {
            incident_id: incident_id.to_owned(),
            approve,
            reviewer: reviewer.to_owned(),
            reason: reason.to_owned(),
            decided_at_ms: now_ms,
        };
        let record =
            OutRecord::proto(Topic::Review, verdict_key(incident_id), &verdict, VERDICT_SCHEMA).on_partition(partition);
        if let Err(e) = self.writer.write([record]).await {
            self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(incident_id);
            tracing::warn!(error = %e, "review verdict not recorded");
            return Err(VerdictError::Unavailable);
        }
        tracing::info!(incident = %incident_id, approve, reviewer = %reviewer, "review verdict recorded");
        Ok(true)
    }

    /// The pending holds this service decides on.
    pub fn pending(&self) -> &PendingMap {
        &self.pending
    }

    async fn decide(
        &self,
        req: Request<pb::ReviewDecisionRequest>,
        approve: bool,
    ) -> Result<Response<pb::ReviewDecisionResponse>, Status> {
        let reviewer = tenant_of(&req)?;
        let r = req.into_inner();
        if !r.reviewer.is_empty() && *r.reviewer != *reviewer {
            return Err(Status::permission_denied("reviewer: must be empty or the authenticated reviewer"));
        }
        let recorded = self.record_verdict(&reviewer, &r.incident_id, approve, &r.reason).await?;
        Ok(Response::new(pb::ReviewDecisionResponse { recorded }))
    }
}

/// Why a verdict was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerdictError {
    /// No incident named.
    #[error("incident_id: required")]
    MissingIncident,
    /// No reason, or too long a one.
    #[error("reason: required, at most {max} bytes")]
    Reason {
        /// Longest reason accepted.
        max: usize,
    },
    /// The verdict could not be written; nothing was recorded.
    #[error("verdict not recorded, retry")]
    Unavailable,
}

impl From<VerdictError> for Status {
    fn from(e: VerdictError) -> Self {
        match e {
            VerdictError::MissingIncident | VerdictError::Reason { .. } => Status::invalid_argument(e.to_string()),
            VerdictError::Unavailable => Status::unavailable(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl Review for ReviewService {
    async fn list_pending(
        &self,
        req: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        tenant_of(&req)?;
        let limit = match req.into_inner().limit as usize {
            0 => MAX_LIST,
            n => n.min(MAX_LIST),
        };
        let pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list: Vec<pb::PendingReview> = pending
            .iter()
            .map(|(id, p)| pb::PendingReview {
                incident_id: id.clone(),
                category: p.held.alert.category.as_str().to_owned(),
                severity: p.held.alert.severity as i32,
                held_at_ms: p.held.held_at.0,
                deadline_ms: p.held.deadline.0,
                headline: p.held.alert.headline.clone(),
            })
            .collect();
        list.sort_by(|a, b| (a.held_at_ms, &a.incident_id).cmp(&(b.held_at_ms, &b.incident_id)));
        list.truncate(limit);
        Ok(Response::new(pb::ListPendingResponse { pending: list }))
    }

    async fn approve(
        &self,
        req: Request<pb::ReviewDecisionRequest>,
    ) -> Result<Response<pb::ReviewDecisionResponse>, Status> {
        self.decide(req, true).await
    }

    async fn reject(
        &self,
        req: Request<pb::ReviewDecisionRequest>,
    ) -> Result<Response<pb::ReviewDecisionResponse>, Status> {
        self.decide(req, false).await
    }
}
