//! Registered assets (AEDs, cameras): the Assets gRPC service, the compacted `assets` topic
//! they are stored on, and the in-memory index the matcher and NearbyLookup read. The index
//! buckets assets by their H3 cell at resolution 9; a lookup scans the grid disk that
//! surely holds every point within the radius and keeps those truly within it (great-circle
//! distance), nearest first.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use h3o::{CellIndex, Resolution};
use hexcast_core::cells::max_circumradius_m;
use hexcast_core::taxonomy::validate_prefix;
use hexcast_core::{LatLng, Topic};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::assets_server::Assets;
use prost::Message as _;
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::auth::{Role, role_of, tenant_of};
use crate::error::PushError;
use crate::service::{PushState, subscriber_id};

/// Resolution of the asset buckets (cells of about 0.1 km²).
const BUCKET_RES: Resolution = Resolution::Nine;

/// One enrichment rule: alerts of `category` (a taxonomy prefix) carry the public assets of
/// `kinds` within `radius_m` of their center, nearest first, at most `max`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichRule {
    /// Category prefix, for example `medical.cardiac_arrest`.
    pub category: String,
    /// Asset kinds; empty: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Radius in meters.
    pub radius_m: f64,
    /// Most assets attached.
    #[serde(default = "default_enrich_max")]
    pub max: usize,
}

fn default_enrich_max() -> usize {
    5
}

/// `[push.assets]` configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AssetsConfig {
    /// Which alerts are enriched with nearby public assets.
    #[serde(default = "default_enrich")]
    pub enrich: Vec<EnrichRule>,
    /// Largest NearbyLookup radius.
    #[serde(default = "default_max_lookup_radius_m")]
    pub max_lookup_radius_m: f64,
    /// Most assets one NearbyLookup returns.
    #[serde(default = "default_max_results")]
    pub max_results: usize,
}

fn default_enrich() -> Vec<EnrichRule> {
    vec![EnrichRule {
        category: "medical.cardiac_arrest".into(),
        kinds: vec!["aed".into()],
        radius_m: 400.0,
        max: default_enrich_max(),
    }]
}
fn default_max_lookup_radius_m() -> f64 {
    2_000.0
}
fn default_max_results() -> usize {
    50
}

impl Default for AssetsConfig {
    fn default() -> Self {
        Self {
            enrich: default_enrich(),
            max_lookup_radius_m: default_max_lookup_radius_m(),
            max_results: default_max_results(),
        }
    }
}

impl AssetsConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_lookup_radius_m > 0.0 && self.max_lookup_radius_m <= 50_000.0,
            "config key `push.assets.max_lookup_radius_m`: must be in (0, 50000]"
        );
        anyhow::ensure!(self.max_results > 0, "config key `push.assets.max_results`: must be > 0");
        for (i, r) in self.enrich.iter().enumerate() {
            validate_prefix(&r.category)
                .map_err(|e| anyhow::anyhow!("config key `push.assets.enrich[{i}].category`: {e}"))?;
            anyhow::ensure!(
                r.radius_m > 0.0 && r.radius_m <= self.max_lookup_radius_m,
                "config key `push.assets.enrich[{i}].radius_m`: must be in (0, max_lookup_radius_m]"
            );
            if let Some(k) = r.kinds.iter().find(|k| !valid_kind(k)) {
                anyhow::bail!("config key `push.assets.enrich[{i}].kinds`: `{k}` is not a kind");
            }
        }
        Ok(())
    }
}

/// Kinds are short lowercase words: `aed`, `camera`, `fire_extinguisher`.
pub fn valid_kind(kind: &str) -> bool {
    (1..=32).contains(&kind.len()) && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The record key of an asset: `<owner>/<asset id>`.
pub fn asset_key(owner: &str, asset_id: &str) -> String {
    format!("{owner}/{asset_id}")
}

#[derive(Debug, Clone)]
struct Entry {
    asset: pb::Asset,
    point: LatLng,
    cell: CellIndex,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<String, Entry>,
    buckets: HashMap<CellIndex, Vec<String>>,
}

/// The in-memory asset index.
#[derive(Default)]
pub struct AssetIndex {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for AssetIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetIndex").field("assets", &self.len()).finish()
    }
}

impl AssetIndex {
    /// Number of assets.
    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.by_key.len()).unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The asset stored under `key`.
    pub fn get(&self, key: &str) -> Option<pb::Asset> {
        self.inner.read().ok()?.by_key.get(key).map(|e| e.asset.clone())
    }

    /// Inserts or replaces an asset (ignored when its location is invalid).
    pub fn upsert(&self, key: &str, asset: pb::Asset) {
        let Some(point) = asset.location.as_ref().and_then(|l| LatLng::try_from(l).ok()) else { return };
        let cell = point.cell(BUCKET_RES);
        let Ok(mut inner) = self.inner.write() else { return };
        Self::remove_locked(&mut inner, key);
        inner.buckets.entry(cell).or_default().push(key.to_owned());
        inner.by_key.insert(key.to_owned(), Entry { asset, point, cell });
    }

    /// Removes an asset; whether it existed.
    pub fn remove(&self, key: &str) -> bool {
        self.inner.write().map(|mut inner| Self::remove_locked(&mut inner, key)).unwrap_or(false)
    }

    fn remove_locked(inner: &mut Inner, key: &str) -> bool {
        let Some(old) = inner.by_key.remove(key) else { return false };
        if let Some(bucket) = inner.buckets.get_mut(&old.cell) {
            bucket.retain(|k| k != key);
            if bucket.is_empty() {
                inner.buckets.remove(&old.cell);
            }
        }
        true
    }

    /// Applies a record of the assets topic (a tombstone removes).
    pub fn apply(&self, key: &str, payload: Option<&[u8]>) {
        match payload.map(pb::Asset::decode) {
            None => {
                self.remove(key);
            }
            Some(Ok(asset)) => self.upsert(key, asset),
            Some(Err(error)) => tracing::warn!(%error, key, "undecodable asset record skipped"),
        }
    }

    /// The assets within `radius_m` of `center` whose kind is in `kinds` (all when empty)
    /// and whose visibility passes `visible`, nearest first (ties by key), at most `limit`.
    pub fn nearby(
        &self,
        center: LatLng,
        radius_m: f64,
        kinds: &[String],
        visible: impl Fn(pb::AssetVisibility) -> bool,
        limit: usize,
    ) -> Vec<pb::NearbyAsset> {
        let Ok(inner) = self.inner.read() else { return Vec::new() };
        if inner.by_key.is_empty() || limit == 0 {
            return Vec::new();
        }
        // Neighboring cell centers are at least about one circumradius apart even where
        // cells are smallest, so `k` rings reach every cell whose center is within the
        // radius plus a cell's width of the center cell's center: every point within the
        // radius is in one of them.
        let r = max_circumradius_m(BUCKET_RES);
        let k = ((radius_m + 2.0 * r) / (0.5 * r)).ceil() as u32;
        let origin = center.cell(BUCKET_RES);
        let mut found: Vec<(f64, &str, &Entry)> = Vec::new();
        for cell in origin.grid_disk::<Vec<_>>(k) {
            let Some(keys) = inner.buckets.get(&cell) else { continue };
            for key in keys {
                let Some(e) = inner.by_key.get(key) else { continue };
                let vis = pb::AssetVisibility::try_from(e.asset.visibility).unwrap_or_default();
                if vis == pb::AssetVisibility::OwnerConsent || !visible(vis) {
                    continue;
                }
                if !kinds.is_empty() && !kinds.contains(&e.asset.kind) {
                    continue;
                }
                let d = center.distance_m(e.point);
                if d <= radius_m {
                    found.push((d, key, e));
                }
            }
        }
        found.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        found
            .into_iter()
            .take(limit)
            .map(|(d, key, e)| pb::NearbyAsset {
                asset_key: key.to_owned(),
                kind: e.asset.kind.clone(),
                location: e.asset.location,
                access_notes: e.asset.access_notes.clone(),
                distance_m: (d * 10.0).round() / 10.0,
            })
            .collect()
    }
}

/// The nearby public assets an alert carries under `rules` (empty when no rule applies).
pub fn enrich(index: &AssetIndex, rules: &[EnrichRule], alert: &hexcast_core::Alert) -> Vec<pb::NearbyAsset> {
    let Some(rule) = rules.iter().find(|r| alert.category.matches_prefix(&r.category)) else { return Vec::new() };
    let center = match &alert.target {
        hexcast_core::Area::Point(p) => *p,
        hexcast_core::Area::Circle { center, .. } => *center,
        _ => {
            let c = h3o::LatLng::from(alert.coarse_cell);
            match LatLng::new(c.lat(), c.lng()) {
                Ok(p) => p,
                Err(_) => return Vec::new(),
            }
        }
    };
    index.nearby(center, rule.radius_m, &rule.kinds, |v| v == pb::AssetVisibility::Public, rule.max)
}

/// The Assets service.
#[derive(Debug, Clone)]
pub struct AssetsService {
    /// Shared push state (producer, runtime).
    pub state: Arc<PushState>,
    /// The asset index.
    pub index: Arc<AssetIndex>,
    /// Limits.
    pub cfg: AssetsConfig,
}

/// Validates an asset from the API and fills the server-set fields.
pub fn validated_asset(owner: &str, api: Option<pb::Asset>, now_ms: i64) -> Result<pb::Asset, PushError> {
    let mut a = api.ok_or_else(|| PushError::invalid("asset", "is required"))?;
    a.asset_id = subscriber_id("asset.asset_id", &a.asset_id)?;
    if !valid_kind(&a.kind) {
        return Err(PushError::invalid("asset.kind", "must be 1..=32 characters of a-z, 0-9, '_' (e.g. aed, camera)"));
    }
    let loc = a.location.as_ref().ok_or_else(|| PushError::invalid("asset.location", "is required"))?;
    LatLng::try_from(loc).map_err(|e| PushError::invalid("asset.location", e))?;
    if a.access_notes.chars().count() > 500 {
        return Err(PushError::invalid("asset.access_notes", "at most 500 characters"));
    }
    match pb::AssetVisibility::try_from(a.visibility) {
        Ok(pb::AssetVisibility::Unspecified) | Err(_) => {
            return Err(PushError::invalid("asset.visibility", "must be public, agency or owner_consent"));
        }
        Ok(_) => {}
    }
    a.owner = owner.to_owned();
    a.updated_at_ms = now_ms;
    Ok(a)
}

impl AssetsService {
    async fn write(&self, key: &str, payload: Option<Vec<u8>>) -> Result<(), PushError> {
        let topic = self.state.rt.names.name(Topic::Assets);
        let mut rec: FutureRecord<'_, str, Vec<u8>> = FutureRecord::to(topic).key(key);
        if let Some(p) = &payload {
            rec = rec.payload(p);
        }
        let f = self.state.producer.send_result(rec).map_err(|(e, _)| PushError::Unavailable(e.to_string()))?;
        match f.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(PushError::Unavailable(e.to_string())),
            Err(_) => Err(PushError::Unavailable("producer dropped".into())),
        }
    }

    async fn put(&self, req: Request<pb::AssetRequest>, must_exist: bool) -> Result<Response<pb::Asset>, Status> {
        let owner = tenant_of(&req)?;
        let now = (self.state.rt.clock)().0;
        let asset = validated_asset(&owner, req.into_inner().asset, now)?;
        let key = asset_key(&owner, &asset.asset_id);
        match (self.index.get(&key).is_some(), must_exist) {
            (true, false) => return Err(PushError::AlreadyExists(format!("asset `{}`", asset.asset_id)).into()),
            (false, true) => return Err(PushError::NotFound(format!("asset `{}`", asset.asset_id)).into()),
            _ => {}
        }
        self.write(&key, Some(asset.encode_to_vec())).await?;
        self.index.upsert(&key, asset.clone());
        Ok(Response::new(asset))
    }
}

#[tonic::async_trait]
impl Assets for AssetsService {
    async fn register(&self, req: Request<pb::AssetRequest>) -> Result<Response<pb::Asset>, Status> {
        self.put(req, false).await
    }

    async fn update(&self, req: Request<pb::AssetRequest>) -> Result<Response<pb::Asset>, Status> {
        self.put(req, true).await
    }

    async fn delete(&self, req: Request<pb::DeleteAssetRequest>) -> Result<Response<pb::DeleteAssetResponse>, Status> {
        let owner = tenant_of(&req)?;
        let id = subscriber_id("asset_id", &req.into_inner().asset_id)?;
        let key = asset_key(&owner, &id);
        let existed = self.index.get(&key).is_some();
        self.write(&key, None).await?;
        self.index.remove(&key);
        Ok(Response::new(pb::DeleteAssetResponse { existed }))
    }

    async fn nearby_lookup(
        &self,
        req: Request<pb::NearbyLookupRequest>,
    ) -> Result<Response<pb::NearbyLookupResponse>, Status> {
        tenant_of(&req)?;
        let role = role_of(&req);
        let r = req.into_inner();
        let point = r.point.as_ref().ok_or_else(|| PushError::invalid("point", "is required"))?;
        let center = LatLng::try_from(point).map_err(|e| PushError::invalid("point", e))?;
        if !(r.radius_m > 0.0 && r.radius_m <= self.cfg.max_lookup_radius_m) {
            return Err(PushError::invalid(
                "radius_m",
                format!("must be in (0, {}] meters", self.cfg.max_lookup_radius_m),
            )
            .into());
        }
        if let Some((i, _)) = r.kinds.iter().enumerate().find(|(_, k)| !valid_kind(k)) {
            return Err(PushError::invalid(format!("kinds[{i}]"), "not a kind").into());
        }
        let limit = match r.limit {
            0 => self.cfg.max_results,
            n => (n as usize).min(self.cfg.max_results),
        };
        // Agencies see public and agency assets, everyone else public ones; owner-consent
        // assets are never listed (the index drops them before this filter).
        let visible = move |v: pb::AssetVisibility| match role {
            Role::Agency => matches!(v, pb::AssetVisibility::Public | pb::AssetVisibility::Agency),
            Role::Backend => v == pb::AssetVisibility::Public,
        };
        let assets = self.index.nearby(center, r.radius_m, &r.kinds, visible, limit);
        Ok(Response::new(pb::NearbyLookupResponse { assets }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(id: &str, kind: &str, p: LatLng, vis: pb::AssetVisibility) -> pb::Asset {
        pb::Asset {
            asset_id: id.into(),
            owner: "o".into(),
            kind: kind.into(),
            location: Some(p.into()),
            access_notes: format!("notes {id}"),
            visibility: vis as i32,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn nearby_is_exact_nearest_first_and_respects_visibility_and_kind() -> anyhow::Result<()> {
        let c = LatLng::new(40.0, -75.0)?;
        let index = AssetIndex::default();
        // North of the center at growing distances; one just outside 400 m.
        for (id, d, kind, vis) in [
            ("far", 410.0, "aed", pb::AssetVisibility::Public),
            ("a300", 300.0, "aed", pb::AssetVisibility::Public),
            ("a100", 100.0, "aed", pb::AssetVisibility::Public),
            ("ag150", 150.0, "aed", pb::AssetVisibility::Agency),
            ("oc50", 50.0, "aed", pb::AssetVisibility::OwnerConsent),
            ("cam20", 20.0, "camera", pb::AssetVisibility::Public),
            ("a390", 390.0, "aed", pb::AssetVisibility::Public),
        ] {
            index.upsert(&asset_key("o", id), asset(id, kind, c.destination(0.0, d), vis));
        }
        let ids = |v: Vec<pb::NearbyAsset>| v.into_iter().map(|a| a.asset_key).collect::<Vec<_>>();
        let public = |v: pb::AssetVisibility| v == pb::AssetVisibility::Public;
        let aed = vec!["aed".to_owned()];
        assert_eq!(ids(index.nearby(c, 400.0, &aed, public, 10)), ["o/a100", "o/a300", "o/a390"]);
        assert_eq!(ids(index.nearby(c, 400.0, &aed, |_| true, 10)), ["o/a100", "o/ag150", "o/a300", "o/a390"]);
        assert_eq!(ids(index.nearby(c, 400.0, &[], public, 2)), ["o/cam20", "o/a100"]);
        assert!(index.remove("o/a100"));
        assert_eq!(ids(index.nearby(c, 400.0, &aed, public, 10)), ["o/a300", "o/a390"]);
        // Moving an asset moves its bucket.
        index.upsert("o/a300", asset("a300", "aed", c.destination(90.0, 1_000.0), pb::AssetVisibility::Public));
        assert_eq!(ids(index.nearby(c, 400.0, &aed, public, 10)), ["o/a390"]);
        Ok(())
    }

    #[test]
    fn config_errors_name_the_key_and_assets_are_validated_by_field() {
        let mut cfg = AssetsConfig::default();
        assert!(cfg.validate().is_ok());
        cfg.enrich[0].category = "medical.nope".into();
        assert!(
            cfg.validate().err().map(|e| e.to_string()).unwrap_or_default().contains("push.assets.enrich[0].category")
        );
        let field = |a: pb::Asset| match validated_asset("o", Some(a), 0) {
            Err(PushError::Invalid { field, .. }) => field,
            other => format!("{other:?}"),
        };
        let ok =
            asset("x", "aed", LatLng::new(40.0, -75.0).unwrap_or_else(|_| unreachable!()), pb::AssetVisibility::Public);
        assert_eq!(field(pb::Asset { kind: "AED!".into(), ..ok.clone() }), "asset.kind");
        assert_eq!(field(pb::Asset { asset_id: "a/b".into(), ..ok.clone() }), "asset.asset_id");
        assert_eq!(field(pb::Asset { location: None, ..ok.clone() }), "asset.location");
        assert_eq!(field(pb::Asset { visibility: 0, ..ok.clone() }), "asset.visibility");
        assert_eq!(validated_asset("o", Some(ok), 5).map(|a| (a.owner, a.updated_at_ms)).ok(), Some(("o".into(), 5)));
    }
}
