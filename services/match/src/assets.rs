//! Registered assets (AEDs, cameras): the in-memory index the matcher and the Assets
//! service's NearbyLookup read, kept from the compacted `assets` topic, and the enrichment
//! rules that attach nearby public assets to alerts. The index buckets assets by their H3
//! cell at resolution 9; a lookup scans the grid disk that surely holds every point within
//! the radius and keeps those truly within it (great-circle distance), nearest first.

use std::collections::HashMap;
use std::sync::RwLock;

use h3o::{CellIndex, Resolution};
use hexcast_core::LatLng;
use hexcast_core::cells::max_circumradius_m;
use hexcast_core::taxonomy::validate_prefix;
use hexcast_proto::v1 as pb;
use prost::Message as _;
use serde::Deserialize;

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
    pub fn apply(&self, key: &str, payload: Option<&[u8]>) -> Result<(), String> {
        match payload.map(pb::Asset::decode) {
            None => {
                self.remove(key);
            }
            Some(Ok(asset)) => self.upsert(key, asset),
            Some(Err(error)) => return Err(format!("undecodable asset record: {error}")),
        }
        Ok(())
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
    fn config_errors_name_the_key() {
        let mut cfg = AssetsConfig::default();
        assert!(cfg.validate().is_ok());
        cfg.enrich[0].category = "medical.nope".into();
        assert!(
            cfg.validate().err().map(|e| e.to_string()).unwrap_or_default().contains("push.assets.enrich[0].category")
        );
    }
}
