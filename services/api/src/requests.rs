//! Geofenced requests: an agency asks the subscribers of a small area for help; recipients
//! answer through their push backend; the agency sees only the yeses.
//!
//! Create validates the request, writes it to the public `transparency` log (agency, case,
//! area as coarse cells, window, time; never recipients), stores it on the compacted
//! `requests` topic, and routes it to the matchers as `alerts.indexed` records carrying the
//! request, exactly as the spatial stage routes an alert. It returns as soon as those
//! records are durable: fan-out happens afterwards in the matcher's transaction, so neither
//! the answer nor its timing depends on who or how many receive it. Backends get it on
//! Push.Subscribe (NotificationBatch.request), exactly once and resumable like any alert.
//!
//! Cancel routes the request once more, cancelled, so that the same subscribers are told.
//!
//! Respond (backends only, for one of their own subscribers) writes a yes to
//! `requests.responses` with a random response id and the shared content; a no is
//! acknowledged with the same empty answer and written nowhere. StreamResponses (agencies,
//! own requests only) streams those yeses. No message the agency can read has a count or a
//! recipient field; an unknown request and another agency's request look the same.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use hexcast_core::cells::{cover, partition_for_key};
use hexcast_core::{
    Alert, Area, Category, EventKind, IndexedAlert, IntoRecord as _, LatLng, OutRecord, Timestamp, Topic,
};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::requests_server::Requests;
use hexcast_runtime::{PartitionReader, StartAt};
use prost::Message as _;
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Role, tenant_with_role};
use crate::error::PushError;
use crate::state::{ApiState, SHUTTING_DOWN, next_record};
use crate::subscriptions::subscriber_id;

/// Category of the synthetic alert that routes a request through the matchers.
pub const REQUEST_CATEGORY: &str = "public.request";

/// Header on `requests.responses` records naming the answering `<tenant>/<subscriber>`:
/// only used to keep one answer per subscriber; never sent to the agency.
const RESPONDER: &str = "hexcast-responder";

/// `[push.requests]` configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestsConfig {
    /// Widest request area: the largest distance between two of its points (a circle's
    /// diameter), meters. Default half a mile.
    #[serde(default = "default_max_across")]
    pub max_area_across_m: f64,
    /// Longest time window, ms. Default 12 hours.
    #[serde(default = "default_max_window")]
    pub max_window_ms: i64,
    /// How long after creation a request may be answered, ms. Default 7 days.
    #[serde(default = "default_answer_ttl")]
    pub answer_ttl_ms: i64,
    /// H3 resolution of the area in the transparency log (coarse on purpose).
    #[serde(default = "default_transparency_res")]
    pub transparency_resolution: u8,
}

fn default_max_across() -> f64 {
    804.672
}
fn default_max_window() -> i64 {
    12 * 3_600_000
}
fn default_answer_ttl() -> i64 {
    7 * 24 * 3_600_000
}
fn default_transparency_res() -> u8 {
    7
}

impl Default for RequestsConfig {
    fn default() -> Self {
        Self {
            max_area_across_m: default_max_across(),
            max_window_ms: default_max_window(),
            answer_ttl_ms: default_answer_ttl(),
            transparency_resolution: default_transparency_res(),
        }
    }
}

impl RequestsConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_area_across_m > 0.0 && self.max_area_across_m <= 10_000.0,
            "config key `push.requests.max_area_across_m`: must be in (0, 10000]"
        );
        anyhow::ensure!(self.max_window_ms > 0, "config key `push.requests.max_window_ms`: must be > 0");
        anyhow::ensure!(self.answer_ttl_ms > 0, "config key `push.requests.answer_ttl_ms`: must be > 0");
        anyhow::ensure!(
            self.transparency_resolution <= 9,
            "config key `push.requests.transparency_resolution`: must be 0..=9"
        );
        Ok(())
    }
}

/// Requests by id, kept in step with the compacted `requests` topic.
#[derive(Debug, Default)]
pub struct RequestStore {
    by_id: RwLock<HashMap<String, pb::GeoRequest>>,
}

impl RequestStore {
    /// The request with this id.
    pub fn get(&self, id: &str) -> Option<pb::GeoRequest> {
        self.by_id.read().ok()?.get(id).cloned()
    }

    /// Stores a request.
    pub fn put(&self, r: pb::GeoRequest) {
        if let Ok(mut m) = self.by_id.write() {
            m.insert(r.request_id.clone(), r);
        }
    }

    /// Applies a record of the requests topic.
    pub fn apply(&self, key: &str, payload: Option<&[u8]>) -> Result<(), String> {
        match payload.map(pb::GeoRequest::decode) {
            None => {
                if let Ok(mut m) = self.by_id.write() {
                    m.remove(key);
                }
            }
            Some(Ok(r)) => self.put(r),
            Some(Err(error)) => return Err(format!("undecodable request record: {error}")),
        }
        Ok(())
    }
}

/// The largest distance between two points of a request area, meters (circles and
/// polygons only; anything else is refused by the caller).
fn across_m(area: &Area) -> Option<f64> {
    match area {
        Area::Circle { radius_m, .. } => Some(2.0 * radius_m),
        Area::Polygon(p) => {
            let pts: Vec<LatLng> =
                p.exterior().coords().filter_map(|c| LatLng::new(c.y, c.x).ok()).take(1_000).collect();
            let mut max = 0.0f64;
            for (i, a) in pts.iter().enumerate() {
                for b in &pts[i + 1..] {
                    max = max.max(a.distance_m(*b));
                }
            }
            Some(max)
        }
        _ => None,
    }
}

/// The smallest circle we bound a request area by: a circle itself, or a polygon's vertex
/// centroid and its farthest vertex.
fn bounding_circle(area: &Area) -> Option<(LatLng, f64)> {
    match area {
        Area::Circle { center, radius_m } => Some((*center, *radius_m)),
        Area::Polygon(p) => {
            let pts: Vec<LatLng> = p.exterior().coords().filter_map(|c| LatLng::new(c.y, c.x).ok()).collect();
            let n = pts.len().max(1) as f64;
            let c =
                LatLng::new(pts.iter().map(|p| p.lat()).sum::<f64>() / n, pts.iter().map(|p| p.lng()).sum::<f64>() / n)
                    .ok()?;
            Some((c, pts.iter().map(|p| c.distance_m(*p)).fold(0.0, f64::max)))
        }
        _ => None,
    }
}

/// Whether a stored subscriber's places may meet a request area: conservative (a true
/// recipient is never refused; a subscriber a little outside may pass), so that a backend
/// can answer only for subscribers the request could have reached, without the matcher's
/// internals.
pub fn may_have_received(sub: &hexcast_core::Subscription, area: &Area) -> bool {
    use hexcast_core::Place;
    use hexcast_core::cells::{centroid, circumradius_m};
    let Some((center, radius)) = bounding_circle(area) else { return false };
    let near =
        |cell: h3o::CellIndex, extra: f64| centroid(cell).distance_m(center) <= radius + extra + circumradius_m(cell);
    sub.places.iter().any(|p| match p {
        Place::Disc { cell, radius_m } => near(*cell, f64::from(*radius_m)),
        Place::Cells(cells) => cells.iter().any(|c| near(*c, 0.0)),
    })
}

/// Validates a Create call, naming the field of the first problem; the request as it
/// will be stored (id, agency, times and state set).
pub fn validated_request(
    cfg: &RequestsConfig,
    agency: &str,
    r: pb::CreateGeoRequest,
    now: Timestamp,
) -> Result<(pb::GeoRequest, Area), PushError> {
    let api_area = r.area.as_ref().ok_or_else(|| PushError::invalid("area", "is required"))?;
    let area = Area::try_from(api_area).map_err(|e| PushError::invalid("area", e))?;
    let across = across_m(&area).ok_or_else(|| PushError::invalid("area", "must be a circle or a polygon"))?;
    if across > cfg.max_area_across_m {
        return Err(PushError::invalid(
            "area",
            format!("{across:.0} m across, more than the {:.0} m allowed", cfg.max_area_across_m),
        ));
    }
    if r.window_start_ms <= 0 {
        return Err(PushError::invalid("window_start_ms", "is required"));
    }
    if r.window_end_ms <= r.window_start_ms {
        return Err(PushError::invalid("window_end_ms", "must be after window_start_ms"));
    }
    if r.window_end_ms - r.window_start_ms > cfg.max_window_ms {
        return Err(PushError::invalid(
            "window_end_ms",
            format!("window longer than {} minutes", cfg.max_window_ms / 60_000),
        ));
    }
    let case = r.case_number.trim();
    if case.is_empty() || case.chars().count() > 64 {
        return Err(PushError::invalid("case_number", "must be 1..=64 characters"));
    }
    let text = r.text.trim();
    if text.is_empty() || text.chars().count() > 1_000 {
        return Err(PushError::invalid("text", "must be 1..=1000 characters"));
    }
    let stored = pb::GeoRequest {
        request_id: random_id(),
        agency: agency.to_owned(),
        case_number: case.to_owned(),
        text: text.to_owned(),
        area: r.area,
        window_start_ms: r.window_start_ms,
        window_end_ms: r.window_end_ms,
        created_at_ms: now.0,
        state: pb::RequestState::Open as i32,
    };
    Ok((stored, area))
}

/// The Requests service.
#[derive(Debug, Clone)]
pub struct RequestsService {
    /// Shared gateway state (writer, runtime, geo).
    pub state: Arc<ApiState>,
    /// Requests by id.
    pub store: Arc<RequestStore>,
    /// Limits.
    pub cfg: RequestsConfig,
}

impl RequestsService {
    fn transparency(&self, r: &pb::GeoRequest, area: &Area, at: Timestamp) -> Result<OutRecord, PushError> {
        let res = h3o::Resolution::try_from(self.cfg.transparency_resolution).unwrap_or(h3o::Resolution::Seven);
        let cells = cover(area, res, 10_000).map_err(|e| PushError::invalid("area", e))?;
        let entry = pb::TransparencyEntry {
            request_id: r.request_id.clone(),
            agency: r.agency.clone(),
            case_number: r.case_number.clone(),
            cells: cells.into_iter().map(u64::from).collect(),
            window_start_ms: r.window_start_ms,
            window_end_ms: r.window_end_ms,
            at_ms: at.0,
            state: r.state,
        };
        Ok(OutRecord::proto(Topic::Transparency, r.agency.as_str(), &entry, "hexcast.v1.TransparencyEntry"))
    }

    /// The `alerts.indexed` records that route `r` to the matchers: a synthetic alert over
    /// its area (category `public.request`) carrying the request, one record per shard the
    /// area touches, as the spatial stage routes an alert. `kind` is `New` for a created
    /// request and `Close` for a cancellation (which reaches the same subscribers, with the
    /// request's state cancelled).
    fn routed(
        &self,
        r: &pb::GeoRequest,
        area: &Area,
        kind: EventKind,
        now: Timestamp,
    ) -> Result<Vec<IndexedAlert>, Status> {
        let category = Category::parse(REQUEST_CATEGORY).map_err(|e| Status::internal(e.to_string()))?;
        let mut alert = Alert::synthetic(&format!("request:{}", r.request_id), category, area.clone());
        alert.kind = kind;
        alert.issued_at = now;
        alert.occurred_at = Timestamp(r.window_start_ms);
        alert.headline = "Request for help from a public agency".into();
        alert.rule = "request".into();
        let spatial = hexcast_spatial::Spatial::new(self.state.geo, self.state.shards.shards);
        let mut routed = spatial.route_by_cover(alert).map_err(|e| PushError::invalid("area", e))?;
        for ia in &mut routed {
            ia.request = Some(r.clone());
        }
        Ok(routed)
    }

    /// The agency's own request, or NOT_FOUND exactly as for an unknown id.
    fn own(&self, agency: &str, raw_id: &str) -> Result<pb::GeoRequest, PushError> {
        let id = raw_id.trim();
        if id.is_empty() || id.len() > 64 {
            return Err(PushError::invalid("request_id", "must be 1..=64 characters"));
        }
        self.store.get(id).filter(|r| r.agency == agency).ok_or_else(|| PushError::NotFound(format!("request `{id}`")))
    }
}

/// The record that stores `r` on the compacted `requests` topic.
fn stored(r: &pb::GeoRequest) -> OutRecord {
    OutRecord::proto(Topic::Requests, r.request_id.as_str(), r, "hexcast.v1.GeoRequest")
}

#[tonic::async_trait]
impl Requests for RequestsService {
    async fn create(&self, req: Request<pb::CreateGeoRequest>) -> Result<Response<pb::GeoRequest>, Status> {
        let agency = tenant_with_role(&req, Role::Agency)?;
        let now = (self.state.rt.clock)();
        let (stored, area) = validated_request(&self.cfg, &agency, req.into_inner(), now)?;
        let routed = self.routed(&stored, &area, EventKind::New, now)?;
        // Transparency first: nothing reaches anyone without being in the public log.
        self.state.write([self.transparency(&stored, &area, now)?]).await?;
        let record = self::stored(&stored);
        self.store.put(stored.clone());
        self.state.write(std::iter::once(record).chain(routed.into_iter().map(IndexedAlert::into_record))).await?;
        Ok(Response::new(stored))
    }

    async fn get(&self, req: Request<pb::GetGeoRequest>) -> Result<Response<pb::GeoRequest>, Status> {
        let agency = tenant_with_role(&req, Role::Agency)?;
        Ok(Response::new(self.own(&agency, &req.into_inner().request_id)?))
    }

    async fn cancel(&self, req: Request<pb::CancelGeoRequest>) -> Result<Response<pb::GeoRequest>, Status> {
        let agency = tenant_with_role(&req, Role::Agency)?;
        let mut r = self.own(&agency, &req.into_inner().request_id)?;
        if r.state == pb::RequestState::Cancelled as i32 {
            return Ok(Response::new(r));
        }
        r.state = pb::RequestState::Cancelled as i32;
        let now = (self.state.rt.clock)();
        let area = r
            .area
            .as_ref()
            .and_then(|a| Area::try_from(a).ok())
            .ok_or_else(|| Status::internal("stored request without a valid area"))?;
        let routed = self.routed(&r, &area, EventKind::Close, now)?;
        let mut pending = vec![self.transparency(&r, &area, now)?, stored(&r)];
        // The recipients learn of the cancellation the way they learned of the request.
        pending.extend(routed.into_iter().map(IndexedAlert::into_record));
        self.state.write(pending).await?;
        self.store.put(r.clone());
        Ok(Response::new(r))
    }

    async fn respond(&self, req: Request<pb::RespondRequest>) -> Result<Response<pb::RespondResponse>, Status> {
        let tenant = tenant_with_role(&req, Role::Backend)?;
        let r = req.into_inner();
        let id = r.request_id.trim().to_owned();
        let request = self.store.get(&id).ok_or_else(|| PushError::NotFound(format!("request `{id}`")))?;
        let subscriber = subscriber_id("subscriber_id", &r.subscriber_id)?;
        let key = hexcast_core::model::subscription_key(&tenant, &subscriber);
        let sub =
            self.state.index.get(&key).ok_or_else(|| PushError::NotFound(format!("subscriber `{subscriber}`")))?;
        let area = request.area.as_ref().and_then(|a| Area::try_from(a).ok());
        if !area.is_some_and(|a| may_have_received(&sub, &a)) {
            return Err(PushError::FailedPrecondition(format!(
                "subscriber `{subscriber}` is not in the request's area"
            ))
            .into());
        }
        let now = (self.state.rt.clock)();
        if request.state != pb::RequestState::Open as i32 {
            return Err(PushError::FailedPrecondition("request was cancelled".into()).into());
        }
        if now.0 > request.created_at_ms + self.cfg.answer_ttl_ms {
            return Err(PushError::FailedPrecondition("request is closed for answers".into()).into());
        }
        if !r.consent {
            // A decline is acknowledged exactly like a yes and stored nowhere.
            return Ok(Response::new(pb::RespondResponse {}));
        }
        let shared = r.shared.unwrap_or_default();
        if shared.text.trim().is_empty() && shared.media_urls.is_empty() {
            return Err(PushError::invalid("shared", "a yes must share text or media").into());
        }
        if shared.text.chars().count() > 2_000 {
            return Err(PushError::invalid("shared.text", "at most 2000 characters").into());
        }
        if let Some((i, _)) =
            shared.media_urls.iter().enumerate().find(|(_, u)| u.len() > 2_048 || !u.starts_with("https://"))
        {
            return Err(PushError::invalid(format!("shared.media_urls[{i}]"), "must be an https URL").into());
        }
        if shared.media_urls.len() > 20 {
            return Err(PushError::invalid("shared.media_urls", "at most 20").into());
        }
        let answer = pb::ConsentedResponse {
            request_id: id.clone(),
            response_id: random_id(),
            shared: Some(shared),
            responded_at_ms: now.0,
        };
        let partition = partition_for_key(&id, self.state.notification_partitions);
        let record = OutRecord::proto(Topic::RequestResponses, id.as_str(), &answer, "hexcast.v1.ConsentedResponse")
            .on_partition(partition)
            .with_header(RESPONDER, key.as_str());
        self.state.write([record]).await?;
        Ok(Response::new(pb::RespondResponse {}))
    }

    type StreamResponsesStream = ReceiverStream<Result<pb::ConsentedResponse, Status>>;

    async fn stream_responses(
        &self,
        req: Request<pb::StreamResponsesRequest>,
    ) -> Result<Response<Self::StreamResponsesStream>, Status> {
        let agency = tenant_with_role(&req, Role::Agency)?;
        if self.state.streams_stop.is_cancelled() {
            return Err(Status::unavailable(SHUTTING_DOWN));
        }
        let request = self.own(&agency, &req.into_inner().request_id)?;
        let state = Arc::clone(&self.state);
        let partition = partition_for_key(&request.request_id, state.notification_partitions);
        let reader =
            PartitionReader::open(&state.rt, "requests-stream", Topic::RequestResponses, partition, StartAt::Beginning)
                .map_err(PushError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(state.stream_buffer.max(1));
        tokio::spawn(async move {
            // One answer per subscriber: a backend that retries a yes does not count twice.
            let mut seen: HashSet<Vec<u8>> = HashSet::new();
            loop {
                let Some(msg) = next_record(&reader, &tx, &state.streams_stop).await else { break };
                let msg = msg.record;
                if msg.key.as_deref() != Some(request.request_id.as_bytes()) {
                    continue;
                }
                let responder = msg.header(RESPONDER).map(<[u8]>::to_vec);
                if let Some(who) = responder
                    && !seen.insert(who)
                {
                    continue;
                }
                let Some(answer) = msg.payload.as_deref().and_then(|p| pb::ConsentedResponse::decode(p).ok()) else {
                    continue;
                };
                if answer.request_id != request.request_id {
                    continue;
                }
                if tx.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A random 128-bit id as 32 hex digits, from the standard library's randomly seeded
/// hasher (no id is derived from anything a caller could guess).
pub fn random_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut out = String::with_capacity(32);
    for salt in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circle(radius_m: f64) -> pb::Area {
        pb::Area {
            shape: Some(pb::area::Shape::Circle(pb::Circle {
                center: Some(pb::LatLng { lat: 40.0, lng: -75.0 }),
                radius_m,
            })),
        }
    }

    fn create(radius_m: f64, start: i64, end: i64, case: &str, text: &str) -> pb::CreateGeoRequest {
        pb::CreateGeoRequest {
            area: Some(circle(radius_m)),
            window_start_ms: start,
            window_end_ms: end,
            case_number: case.into(),
            text: text.into(),
        }
    }

    fn field(r: Result<(pb::GeoRequest, Area), PushError>) -> String {
        match r {
            Err(PushError::Invalid { field, .. }) => field,
            other => format!("{:?}", other.map(|(r, _)| r)),
        }
    }

    #[test]
    fn create_is_bounded_and_errors_name_the_field() {
        let cfg = RequestsConfig::default();
        let h = 3_600_000;
        let v = |c| validated_request(&cfg, "pd", c, Timestamp(5));
        assert_eq!(field(v(create(500.0, h, 2 * h, "c", "t"))), "area", "1 km across");
        assert_eq!(field(v(create(200.0, h, 14 * h, "c", "t"))), "window_end_ms", "13 h");
        assert_eq!(field(v(create(200.0, 2 * h, h, "c", "t"))), "window_end_ms");
        assert_eq!(field(v(create(200.0, 0, h, "c", "t"))), "window_start_ms");
        assert_eq!(field(v(create(200.0, h, 2 * h, " ", "t"))), "case_number");
        assert_eq!(field(v(create(200.0, h, 2 * h, "c", ""))), "text");
        let point = pb::CreateGeoRequest {
            area: Some(pb::Area { shape: Some(pb::area::Shape::Point(pb::LatLng { lat: 40.0, lng: -75.0 })) }),
            ..create(200.0, h, 2 * h, "c", "t")
        };
        assert_eq!(field(v(point)), "area");
        let ok = v(create(400.0, h, 13 * h, " 2024-1234 ", "video please")).map(|(r, _)| r);
        let ok = ok.unwrap_or_default();
        assert_eq!((ok.agency.as_str(), ok.case_number.as_str(), ok.created_at_ms), ("pd", "2024-1234", 5));
        assert_eq!(ok.request_id.len(), 32);
        assert_eq!(ok.state, pb::RequestState::Open as i32);
        let other = v(create(400.0, h, 2 * h, "c", "t")).map(|(r, _)| r.request_id).unwrap_or_default();
        assert_ne!(other, ok.request_id, "ids are random");
    }

    #[test]
    fn only_subscribers_near_the_area_may_answer() -> anyhow::Result<()> {
        let c = LatLng::new(40.0, -75.0)?;
        let area = Area::circle(c, 200.0)?;
        let sub = |places| hexcast_core::Subscription {
            tenant: "t".into(),
            subscriber_id: "s".into(),
            places,
            filter: Default::default(),
            shards: vec![],
            updated_at: Timestamp(0),
            delivery: Default::default(),
        };
        let disc = |d: f64, r: f32| hexcast_core::Place::Disc {
            cell: c.destination(0.0, d).cell(h3o::Resolution::Eleven),
            radius_m: r,
        };
        assert!(may_have_received(&sub(vec![disc(150.0, 0.0)]), &area));
        assert!(!may_have_received(&sub(vec![disc(2_000.0, 0.0)]), &area));
        assert!(may_have_received(&sub(vec![disc(2_000.0, 1_900.0)]), &area), "a wide circle reaching in");
        let cells = hexcast_core::Place::Cells(vec![c.destination(90.0, 100.0).cell(h3o::Resolution::Ten)]);
        assert!(may_have_received(&sub(vec![disc(5_000.0, 0.0), cells]), &area));
        Ok(())
    }

    #[test]
    fn polygon_width_is_its_widest_extent() {
        // About 0.009 degrees of latitude: roughly 1 km tall.
        let ring = |d: f64| pb::Area {
            shape: Some(pb::area::Shape::Polygon(pb::Polygon {
                exterior: Some(pb::LinearRing {
                    points: [(40.0, -75.0), (40.0 + d, -75.0), (40.0 + d, -75.001), (40.0, -75.001)]
                        .iter()
                        .map(|&(lat, lng)| pb::LatLng { lat, lng })
                        .collect(),
                }),
                holes: vec![],
            })),
        };
        let a = |d| across_m(&Area::try_from(&ring(d)).unwrap_or_else(|e| unreachable!("{e}")));
        assert!(a(0.009).is_some_and(|m| m > 990.0 && m < 1_010.0), "{:?}", a(0.009));
        assert!(a(0.003).is_some_and(|m| m < 804.0));
    }
}
