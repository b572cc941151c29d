//! The matcher stage, on the shared runner: one indexed alert
//! in, NotificationBatch records out (one alert, many subscriber ids, per tenant), written
//! to the notifications topic in the same transaction that consumes the alert. A backend
//! therefore only ever sees notifications that exist durably.

use std::collections::BTreeMap;
use std::sync::Arc;

use hexcast_core::cells::{CoverError, partition_for_key};
use hexcast_core::{IndexedAlert, NotificationBatch, OutRecord, ReasonCode, Stage, StageCtx, Topic};
use hexcast_proto::v1 as pb;

use crate::assets::{AssetIndex, EnrichRule, enrich};
use crate::index::SubscriberIndex;

/// Why an alert could not be matched.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MatchError(#[from] CoverError);

impl ReasonCode for MatchError {
    fn reason_code(&self) -> &'static str {
        match self.0 {
            CoverError::InvalidGeometry(_) => "invalid_geometry",
            CoverError::TooLarge { .. } => "area_too_large",
        }
    }
}

/// The matcher stage.
#[derive(Debug, Clone)]
pub struct Matcher {
    index: Arc<SubscriberIndex>,
    notification_partitions: u32,
    max_ids_per_record: usize,
    assets: Option<(Arc<AssetIndex>, Arc<[EnrichRule]>)>,
}

impl Matcher {
    /// A matcher over a shared index.
    pub fn new(index: Arc<SubscriberIndex>, notification_partitions: u32, max_ids_per_record: usize) -> Self {
        Self { index, notification_partitions, max_ids_per_record: max_ids_per_record.max(1), assets: None }
    }

    /// The same matcher, attaching the nearby public assets of `assets` to alerts that
    /// `rules` name.
    pub fn with_assets(mut self, assets: Arc<AssetIndex>, rules: Arc<[EnrichRule]>) -> Self {
        self.assets = Some((assets, rules));
        self
    }
}

/// The notifications partition that holds a tenant's stream.
pub fn tenant_partition(tenant: &str, partitions: u32) -> i32 {
    partition_for_key(tenant, partitions)
}

impl Stage for Matcher {
    type In = IndexedAlert;
    type Out = OutRecord;
    type Reject = MatchError;

    fn name(&self) -> &'static str {
        "push"
    }

    fn process(&mut self, input: IndexedAlert, _ctx: &StageCtx, out: &mut Vec<OutRecord>) -> Result<(), MatchError> {
        let started = std::time::Instant::now();
        let matches = self.index.matches(&input.alert, input.shard, &input.shards)?;
        metrics::histogram!("hexcast_push_match_seconds").record(started.elapsed().as_secs_f64());
        let mut by_tenant: BTreeMap<Arc<str>, Vec<String>> = BTreeMap::new();
        for m in matches {
            // Policy's per-tenant overrides: that tenant's rules rejected this alert.
            if input.alert.excluded_tenants.iter().any(|t| **t == *m.tenant) {
                continue;
            }
            by_tenant.entry(m.tenant).or_default().push(m.subscriber_id.to_string());
        }
        if by_tenant.is_empty() {
            return Ok(());
        }
        // What leaves hexcast locates the incident no more finely than its coarse cell (a
        // request's area is the agency's own, published in the transparency log).
        let alert = if input.request.is_none() { input.alert.public_view() } else { input.alert.clone() };
        // A request carries itself and no assets; an alert its nearby public assets.
        let nearby_assets = match (&input.request, &self.assets) {
            (None, Some((assets, rules))) if !by_tenant.is_empty() => enrich(assets, rules, &alert),
            _ => Vec::new(),
        };
        for (tenant, mut ids) in by_tenant {
            ids.sort_unstable();
            let parts = ids.len().div_ceil(self.max_ids_per_record) as u32;
            for (part, chunk) in ids.chunks(self.max_ids_per_record).enumerate() {
                let batch = NotificationBatch {
                    alert: alert.clone(),
                    tenant: tenant.to_string(),
                    subscriber_ids: chunk.to_vec(),
                    part: part as u32,
                    parts,
                    request: input.request.clone(),
                    nearby_assets: nearby_assets.clone(),
                };
                let partition = tenant_partition(&tenant, self.notification_partitions);
                out.push(
                    OutRecord::proto(
                        Topic::Notifications,
                        tenant.as_bytes(),
                        &pb::NotificationBatch::from(&batch),
                        "hexcast.v1.NotificationBatch",
                    )
                    .on_partition(partition),
                );
            }
        }
        Ok(())
    }
}
