//! The Assets gRPC service: owners register, update and delete their assets (AEDs,
//! cameras) on the compacted `assets` topic, and anyone authenticated looks up the ones
//! near a point. The index it reads is the match crate's [`AssetIndex`], kept by a follower.

use std::sync::Arc;

use hexcast_core::{LatLng, OutRecord, Topic};
use hexcast_match::assets::{AssetIndex, AssetsConfig, asset_key, valid_kind};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::assets_server::Assets;
use tonic::{Request, Response, Status};

use crate::auth::{Role, role_of, tenant_of};
use crate::error::PushError;
use crate::state::ApiState;
use crate::subscriptions::subscriber_id;

/// The Assets service.
#[derive(Debug, Clone)]
pub struct AssetsService {
    /// Shared gateway state (writer, runtime).
    pub state: Arc<ApiState>,
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
    async fn write(&self, key: &str, asset: Option<&pb::Asset>) -> Result<(), PushError> {
        let record = match asset {
            Some(a) => OutRecord::proto(Topic::Assets, key, a, "hexcast.v1.Asset"),
            None => OutRecord::tombstone(Topic::Assets, key),
        };
        self.state.write([record]).await
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
        self.write(&key, Some(&asset)).await?;
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
    fn assets_are_validated_by_field() {
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
