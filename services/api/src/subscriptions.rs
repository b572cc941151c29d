//! The Subscriptions service: upsert, delete, get and bulk upsert of a tenant's
//! subscribers. Areas become H3 cells here, before anything is stored: a subscriber's raw
//! coordinates never reach Kafka. A tenant only ever reads and writes its own subscribers.

use std::sync::Arc;

use futures::StreamExt as _;
use hexcast_core::cells::{GeoConfig, ShardMap};
use hexcast_core::taxonomy::validate_prefix;
use hexcast_core::{Area, Delivery, OutRecord, Place, Severity, Subscription, SubscriptionFilter, Timestamp, Topic};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::subscriptions_server::Subscriptions;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::tenant_of;
use crate::covers::CoverCache;
use crate::error::PushError;
use crate::state::ApiState;

/// Longest accepted subscriber id.
pub const MAX_SUBSCRIBER_ID_LEN: usize = 128;

/// Metadata that marks a Get forwarded by a peer push instance: answered from the
/// receiver's own index, never forwarded again.
pub const FORWARDED: &str = "hexcast-forwarded";

/// The records that store `sub` (one per shard) and the tombstones of the shards it left.
/// When this instance holds only some shards and does not know the subscriber, the shards
/// it left are unknown: every other shard gets a tombstone (a tombstone of a key a
/// partition does not hold costs a few bytes and is compacted away).
fn records(state: &ApiState, sub: &Subscription) -> Vec<OutRecord> {
    let key = sub.key();
    let stored = pb::Subscription::from(sub);
    let old_shards: Vec<u32> = match state.index.shards(&key) {
        Some(s) => s,
        None if state.holds_every_shard() => Vec::new(),
        None => (0..state.shards.shards).collect(),
    };
    let mut out = Vec::with_capacity(sub.shards.len());
    for &shard in &sub.shards {
        out.push(
            OutRecord::proto(Topic::Subscriptions, key.as_str(), &stored, "hexcast.v1.Subscription")
                .on_partition(shard as i32),
        );
    }
    for shard in old_shards.into_iter().filter(|s| !sub.shards.contains(s)) {
        out.push(OutRecord::tombstone(Topic::Subscriptions, key.as_str()).on_partition(shard as i32));
    }
    out
}

/// A valid subscriber id (trimmed), or INVALID_ARGUMENT naming `field`. The same rule for
/// writes and reads: `/` separates tenant and subscriber in stored keys, so it can never
/// appear in an id (no id can reach into another tenant's key space).
pub fn subscriber_id(field: &str, raw: &str) -> Result<String, PushError> {
    let id = raw.trim();
    if id.is_empty() || id.len() > MAX_SUBSCRIBER_ID_LEN || id.contains('/') {
        return Err(PushError::invalid(field, format!("must be 1..={MAX_SUBSCRIBER_ID_LEN} characters without '/'")));
    }
    Ok(id.to_owned())
}

/// Turns an API subscription into the stored form: a point or circle becomes a disc around
/// its center's cell at `geo.precision`, a polygon its cells at `geo.polygon_precision`.
/// The raw geometry is dropped here and never reaches Kafka.
pub fn stored_subscription(
    geo: &GeoConfig,
    shard_map: &ShardMap,
    max_cells: usize,
    tenant: &str,
    api: pb::Subscription,
    now: Timestamp,
) -> Result<Subscription, PushError> {
    stored_subscription_cached(geo, shard_map, max_cells, tenant, api, now, None)
}

/// [`stored_subscription`], covering polygons through `cache` when given.
pub fn stored_subscription_cached(
    geo: &GeoConfig,
    shard_map: &ShardMap,
    max_cells: usize,
    tenant: &str,
    api: pb::Subscription,
    now: Timestamp,
    cache: Option<&CoverCache>,
) -> Result<Subscription, PushError> {
    let id = subscriber_id("subscription.subscriber_id", &api.subscriber_id)?;
    if api.areas.is_empty() {
        return Err(PushError::invalid("subscription.areas", "at least one area is required"));
    }
    let mut places = Vec::with_capacity(api.areas.len());
    let mut budget = max_cells;
    for (i, a) in api.areas.iter().enumerate() {
        let field = || format!("subscription.areas[{i}]");
        let area = Area::try_from(a).map_err(|e| PushError::invalid(field(), e))?;
        // Raw coordinates stop here: a center becomes its cell, a polygon its cells.
        places.push(match area {
            Area::Point(p) => Place::Disc { cell: p.cell(geo.precision), radius_m: 0.0 },
            Area::Circle { center, radius_m } => {
                Place::Disc { cell: center.cell(geo.precision), radius_m: radius_m as f32 }
            }
            Area::CellDisc { cell, radius_m } => Place::Disc { cell, radius_m: radius_m as f32 },
            Area::Polygon(_) | Area::MultiPolygon(_) | Area::Cells(_) => {
                let cells = match cache {
                    Some(c) => c.cells(&area, geo.polygon_precision, budget),
                    None => hexcast_core::cells::subscriber_cells(&area, geo.polygon_precision, budget),
                }
                .map_err(|e| PushError::invalid(field(), e))?;
                budget = budget.saturating_sub(cells.len());
                Place::Cells(cells)
            }
        });
    }
    let filter = api.filter.unwrap_or_default();
    for (i, p) in filter.categories.iter().enumerate() {
        validate_prefix(p).map_err(|e| PushError::invalid(format!("subscription.filter.categories[{i}]"), e))?;
    }
    let min_severity = Severity::try_from(filter.min_severity)
        .map_err(|_| PushError::invalid("subscription.filter.min_severity", "unknown severity"))?;
    let delivery = match api.delivery {
        Some(d) => delivery(d)?,
        None => Delivery::default(),
    };
    let (_, shards) = hexcast_match::index::shards_of(&places, shard_map);
    Ok(Subscription {
        tenant: tenant.to_owned(),
        subscriber_id: id,
        shards,
        places,
        filter: SubscriptionFilter { categories: filter.categories, min_severity, attributes: filter.attributes },
        updated_at: now,
        delivery,
    })
}

/// Most preferred languages a subscription may list.
pub const MAX_LANGUAGES: usize = 8;

/// Checks delivery preferences: language tags (`es`, `es-MX`; at most
/// [`MAX_LANGUAGES`]), quiet-hour minutes within a day and a known IANA time zone.
fn delivery(d: pb::DeliveryPreferences) -> Result<Delivery, PushError> {
    if d.languages.len() > MAX_LANGUAGES {
        return Err(PushError::invalid("subscription.delivery.languages", format!("at most {MAX_LANGUAGES}")));
    }
    for (i, l) in d.languages.iter().enumerate() {
        let ok = l.len() <= 35
            && l.split('-').enumerate().all(|(j, p)| {
                let len_ok = if j == 0 { (2..=3).contains(&p.len()) } else { (1..=8).contains(&p.len()) };
                len_ok && p.chars().all(|c| c.is_ascii_alphanumeric())
            });
        if !ok {
            return Err(PushError::invalid(
                format!("subscription.delivery.languages[{i}]"),
                "expected a language tag such as es or es-MX",
            ));
        }
    }
    if let Some(q) = &d.quiet_hours
        && hexcast_match::delivery::parse_time_zone(&q.time_zone).is_none()
    {
        return Err(PushError::invalid(
            "subscription.delivery.quiet_hours.time_zone",
            "expected an IANA time zone such as America/New_York",
        ));
    }
    Delivery::try_from(d).map_err(|e| PushError::invalid("subscription.delivery", e))
}

/// The Subscriptions service.
#[derive(Debug, Clone)]
pub struct SubscriptionsService(pub Arc<ApiState>);

#[tonic::async_trait]
impl Subscriptions for SubscriptionsService {
    async fn upsert(&self, req: Request<pb::UpsertRequest>) -> Result<Response<pb::UpsertResponse>, Status> {
        let tenant = tenant_of(&req)?;
        let api = req.into_inner().subscription.ok_or_else(|| PushError::invalid("subscription", "is required"))?;
        let sub = self.0.to_stored(&tenant, api, self.0.now())?;
        self.0.write(records(&self.0, &sub)).await?;
        Ok(Response::new(pb::UpsertResponse { subscription: Some((&sub).into()) }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let tenant = tenant_of(&req)?;
        let id = subscriber_id("subscriber_id", &req.get_ref().subscriber_id)?;
        let key = hexcast_core::model::subscription_key(&tenant, &id);
        let existing = match self.0.index.shards(&key) {
            Some(s) => Some(s),
            None => self.0.ask_peers(req.metadata(), &id).await?.map(|s| s.shards),
        };
        let shards: Vec<u32> = match &existing {
            Some(s) => s.clone(),
            // Not (yet) in the index: tombstone every shard so a write still in flight dies too.
            None => (0..self.0.shards.shards).collect(),
        };
        let tombstones = shards
            .into_iter()
            .map(|shard| OutRecord::tombstone(Topic::Subscriptions, key.as_str()).on_partition(shard as i32));
        self.0.write(tombstones).await?;
        Ok(Response::new(pb::DeleteResponse { existed: existing.is_some() }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Subscription>, Status> {
        let tenant = tenant_of(&req)?;
        let id = subscriber_id("subscriber_id", &req.get_ref().subscriber_id)?;
        let key = hexcast_core::model::subscription_key(&tenant, &id);
        if let Some(sub) = self.0.index.get(&key) {
            return Ok(Response::new((&sub).into()));
        }
        match self.0.ask_peers(req.metadata(), &id).await? {
            Some(sub) => Ok(Response::new(sub)),
            None => Err(PushError::NotFound(format!("subscriber `{id}`")).into()),
        }
    }

    async fn bulk_upsert(
        &self,
        req: Request<Streaming<pb::UpsertRequest>>,
    ) -> Result<Response<pb::BulkUpsertResponse>, Status> {
        let tenant = tenant_of(&req)?;
        let mut stream = req.into_inner();
        let mut pending = Vec::new();
        let mut upserted = 0u64;
        let mut chunk: Vec<pb::UpsertRequest> = Vec::with_capacity(CONVERT_CHUNK);
        loop {
            let msg = stream.next().await;
            let end = msg.is_none();
            if let Some(msg) = msg {
                chunk.push(msg?);
            }
            if chunk.len() >= CONVERT_CHUNK || (end && !chunk.is_empty()) {
                // Areas become cells on every core; the records keep the stream's order.
                let first = upserted as usize;
                let subs = Arc::clone(&self.0).to_stored_all(&tenant, std::mem::take(&mut chunk), first).await?;
                for sub in &subs {
                    pending.extend(records(&self.0, sub));
                }
                upserted += subs.len() as u64;
                // Bound what is in flight: settle deliveries in chunks.
                if pending.len() >= 50_000 {
                    self.0.write(std::mem::take(&mut pending)).await?;
                }
            }
            if end {
                break;
            }
        }
        self.0.write(pending).await?;
        Ok(Response::new(pb::BulkUpsertResponse { upserted }))
    }
}

/// BulkUpsert messages converted together, split over the cores.
const CONVERT_CHUNK: usize = 2_048;

impl ApiState {
    /// Converts BulkUpsert messages (the first is message `first` of the stream) on every
    /// core, in order; the first invalid message's error names it.
    async fn to_stored_all(
        self: Arc<Self>,
        tenant: &str,
        msgs: Vec<pb::UpsertRequest>,
        first: usize,
    ) -> Result<Vec<Subscription>, PushError> {
        let tenant = tenant.to_owned();
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        tokio::task::spawn_blocking(move || {
            let now = self.now();
            let per = msgs.len().div_ceil(threads).max(1);
            let mut parts: Vec<Vec<pb::UpsertRequest>> = Vec::new();
            let mut rest = msgs.into_iter();
            loop {
                let part: Vec<pb::UpsertRequest> = rest.by_ref().take(per).collect();
                if part.is_empty() {
                    break;
                }
                parts.push(part);
            }
            let converted: Vec<Result<Vec<Subscription>, PushError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = parts
                    .into_iter()
                    .enumerate()
                    .map(|(k, part)| {
                        let (state, tenant) = (&self, &tenant);
                        scope.spawn(move || {
                            part.into_iter()
                                .enumerate()
                                .map(|(i, msg)| state.bulk_message(tenant, msg, first + k * per + i, now))
                                .collect::<Result<Vec<_>, _>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(PushError::Unavailable("conversion panicked".into()))))
                    .collect()
            });
            let mut out = Vec::new();
            for part in converted {
                out.extend(part?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| PushError::Unavailable(e.to_string()))?
    }

    /// One BulkUpsert message in stored form; an error names it as `message[n]`.
    fn bulk_message(
        &self,
        tenant: &str,
        msg: pb::UpsertRequest,
        n: usize,
        now: Timestamp,
    ) -> Result<Subscription, PushError> {
        let api =
            msg.subscription.ok_or_else(|| PushError::invalid(format!("message[{n}].subscription"), "is required"))?;
        self.to_stored(tenant, api, now).map_err(|e| match e {
            PushError::Invalid { field, message } => {
                PushError::Invalid { field: format!("message[{n}].{field}"), message }
            }
            other => other,
        })
    }
}

impl ApiState {
    /// A subscriber this instance does not hold, from the peer that holds its shards:
    /// every peer is asked at once with the caller's credentials, the first answer wins.
    /// `None` when this instance holds every shard, when the call was itself forwarded,
    /// or when every peer answers NOT_FOUND; UNAVAILABLE when a peer could not answer
    /// and none had it (it may be the one holding it).
    pub async fn ask_peers(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        subscriber_id: &str,
    ) -> Result<Option<pb::Subscription>, PushError> {
        if self.peers.is_empty() || metadata.contains_key(FORWARDED) || self.holds_every_shard() {
            return Ok(None);
        }
        let auth = metadata.get("authorization").cloned();
        let asks = self.peers.iter().map(|(url, channel)| {
            let mut req = Request::new(pb::GetRequest { subscriber_id: subscriber_id.to_owned() });
            if let Some(a) = &auth {
                req.metadata_mut().insert("authorization", a.clone());
            }
            req.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
            let mut client = hexcast_proto::v1::subscriptions_client::SubscriptionsClient::new(channel.clone());
            async move { (url, client.get(req).await) }
        });
        let mut asks: futures::stream::FuturesUnordered<_> = asks.collect();
        let mut failed = None;
        while let Some((url, answer)) = asks.next().await {
            match answer {
                Ok(sub) => return Ok(Some(sub.into_inner())),
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => {
                    tracing::warn!(peer = %url, code = ?status.code(), message = status.message(), "peer did not answer a forwarded get");
                    failed = Some(format!("peer {url}: {}", status.message()));
                }
            }
        }
        match failed {
            Some(why) => Err(PushError::Unavailable(why)),
            None => Ok(None),
        }
    }

    /// Turns an API subscription into the stored form (see [`stored_subscription`]).
    pub fn to_stored(&self, tenant: &str, api: pb::Subscription, now: Timestamp) -> Result<Subscription, PushError> {
        stored_subscription_cached(
            &self.geo,
            &self.shards,
            self.max_cells_per_subscription,
            tenant,
            api,
            now,
            Some(&self.covers),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(delivery: pb::DeliveryPreferences) -> pb::Subscription {
        pb::Subscription {
            subscriber_id: "s".into(),
            areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(pb::LatLng { lat: 40.71, lng: -74.0 })) }],
            delivery: Some(delivery),
            ..Default::default()
        }
    }

    fn store(d: pb::DeliveryPreferences) -> Result<Subscription, PushError> {
        let geo = GeoConfig::default();
        let shards = ShardMap { territory_res: geo.territory_resolution, shards: 4 };
        stored_subscription(&geo, &shards, 1_000, "t", api(d), Timestamp(0))
    }

    fn quiet(start: u32, end: u32, zone: &str) -> Option<pb::QuietHours> {
        Some(pb::QuietHours { start_minute: start, end_minute: end, time_zone: zone.into() })
    }

    #[test]
    fn delivery_preferences_are_checked_and_stored() {
        let ok = pb::DeliveryPreferences {
            languages: vec!["es-MX".into(), "en".into()],
            quiet_hours: quiet(22 * 60, 7 * 60, "America/New_York"),
            max_alerts_per_hour: 3,
        };
        let stored = store(ok.clone()).expect("valid");
        assert_eq!(stored.delivery.languages, ["es-MX", "en"]);
        assert_eq!(stored.delivery.max_alerts_per_hour, 3);
        // The stored form round-trips through the topic's message.
        assert_eq!(Subscription::try_from(pb::Subscription::from(&stored)), Ok(stored));
        let field = |d: pb::DeliveryPreferences| match store(d) {
            Err(PushError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        let bad_zone = pb::DeliveryPreferences { quiet_hours: quiet(0, 60, "Mars/Olympus"), ..ok.clone() };
        assert_eq!(field(bad_zone), "subscription.delivery.quiet_hours.time_zone");
        let bad_minute = pb::DeliveryPreferences { quiet_hours: quiet(0, 1440, "UTC"), ..ok.clone() };
        assert_eq!(field(bad_minute), "subscription.delivery");
        let bad_tag = pb::DeliveryPreferences { languages: vec!["en".into(), "spanish language".into()], ..ok };
        assert_eq!(field(bad_tag), "subscription.delivery.languages[1]");
    }
}
