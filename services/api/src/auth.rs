//! Bearer-token authentication. Each tenant (push backend) has a token; the interceptor
//! maps it to the tenant and every RPC acts only within that tenant. Tokens are compared
//! in constant time and never logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Status};

/// The authenticated tenant of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

/// What a tenant is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A push backend: Push, Subscriptions, Requests.Respond, Assets (its own).
    #[default]
    Backend,
    /// An authorized agency: Requests (Create, Get, Cancel, StreamResponses), Assets
    /// (its own, and NearbyLookup with agency visibility). No Push or Subscriptions.
    Agency,
}

/// Token -> tenant and role.
#[derive(Clone, Default)]
pub struct Tokens {
    by_token: Arc<HashMap<String, (Arc<str>, Role)>>,
}

/// One entry of the tokens file: `tenant = "token"` (a backend) or
/// `tenant = { token = "...", role = "agency" }`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Entry {
    Token(String),
    Full(FullEntry),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FullEntry {
    token: String,
    #[serde(default)]
    role: Role,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("tenants", &self.by_token.len()).finish()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tenant names are plain words: they prefix stored keys (`tenant/subscriber`) and key the
/// notification records, so a separator in a name could alias another tenant's keys.
pub fn valid_tenant(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl Tokens {
    /// From `(tenant, token)` pairs, all backends.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::with_roles(pairs.into_iter().map(|(tenant, token)| (tenant, token, Role::Backend)))
    }

    /// From `(tenant, token, role)` triples.
    pub fn with_roles(entries: impl IntoIterator<Item = (String, String, Role)>) -> Self {
        let by_token =
            entries.into_iter().map(|(tenant, token, role)| (token, (Arc::<str>::from(tenant), role))).collect();
        Self { by_token: Arc::new(by_token) }
    }

    /// From a TOML file of `tenant = "token"` lines (backends) and
    /// `tenant = { token = "...", role = "agency" }` entries.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading tokens file {}: {e}", path.display()))?;
        let entries: std::collections::BTreeMap<String, Entry> =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("tokens file {}: {}", path.display(), e.message()))?;
        let table: std::collections::BTreeMap<String, (String, Role)> = entries
            .into_iter()
            .map(|(tenant, e)| match e {
                Entry::Token(token) => (tenant, (token, Role::Backend)),
                Entry::Full(FullEntry { token, role }) => (tenant, (token, role)),
            })
            .collect();
        if let Some(tenant) = table.keys().find(|t| !valid_tenant(t)) {
            anyhow::bail!(
                "tokens file {}: tenant `{tenant}`: must be 1-64 characters of A-Z, a-z, 0-9, '_', '-', '.'",
                path.display()
            );
        }
        if let Some((tenant, _)) = table.iter().find(|(_, (t, _))| t.len() < 16) {
            anyhow::bail!("tokens file {}: token of tenant `{tenant}` is shorter than 16 characters", path.display());
        }
        Ok(Self::with_roles(table.into_iter().map(|(tenant, (token, role))| (tenant, token, role))))
    }

    /// The tenant of a bearer token.
    pub fn tenant(&self, token: &str) -> Option<Arc<str>> {
        self.tenant_role(token).map(|(t, _)| t)
    }

    /// The tenant and role of a bearer token.
    pub fn tenant_role(&self, token: &str) -> Option<(Arc<str>, Role)> {
        self.by_token
            .iter()
            .find(|(t, _)| constant_time_eq(t.as_bytes(), token.as_bytes()))
            .map(|(_, (tenant, role))| (Arc::clone(tenant), *role))
    }

    /// An interceptor that authenticates every request and refuses, with
    /// PERMISSION_DENIED, tenants whose role is not in `roles`.
    pub fn interceptor_for(
        &self,
        roles: &'static [Role],
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
        let inner = self.interceptor();
        move |req: Request<()>| {
            let req = inner(req)?;
            match req.extensions().get::<Role>() {
                Some(role) if roles.contains(role) => Ok(req),
                _ => Err(Status::permission_denied("this service is not available to the caller's role")),
            }
        }
    }

    /// The interceptor that authenticates every request.
    pub fn interceptor(&self) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
        let tokens = self.clone();
        move |mut req: Request<()>| {
            let header =
                req.metadata().get("authorization").ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
            let token = header
                .to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .ok_or_else(|| Status::unauthenticated("malformed authorization header"))?;
            let (tenant, role) =
                tokens.tenant_role(token.trim()).ok_or_else(|| Status::unauthenticated("invalid bearer token"))?;
            req.extensions_mut().insert(Tenant(tenant));
            req.extensions_mut().insert(role);
            Ok(req)
        }
    }
}

/// The tenant that the interceptor put on a request.
pub fn tenant_of<T>(req: &Request<T>) -> Result<Arc<str>, Status> {
    req.extensions()
        .get::<Tenant>()
        .map(|t| Arc::clone(&t.0))
        .ok_or_else(|| Status::unauthenticated("not authenticated"))
}

/// The tenant of a request, if its role is `role`; PERMISSION_DENIED otherwise.
pub fn tenant_with_role<T>(req: &Request<T>, role: Role) -> Result<Arc<str>, Status> {
    let tenant = tenant_of(req)?;
    match req.extensions().get::<Role>() {
        Some(r) if *r == role => Ok(tenant),
        _ => Err(Status::permission_denied(match role {
            Role::Agency => "only agency tenants may call this",
            Role::Backend => "only push backends may call this",
        })),
    }
}

/// The role the interceptor put on a request.
pub fn role_of<T>(req: &Request<T>) -> Role {
    req.extensions().get::<Role>().copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> anyhow::Result<Tokens> {
        let path = std::env::temp_dir().join(format!("hexcast-tokens-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).map_err(anyhow::Error::from)?;
        let tokens = Tokens::load(&path);
        let _ = std::fs::remove_file(&path);
        tokens
    }

    #[test]
    fn tokens_file_maps_tokens_to_tenants_and_refuses_bad_entries() -> anyhow::Result<()> {
        let tokens = load("ok", "alpha = \"alpha-token-0123456789\"\nbeta = \"beta-token-0123456789\"\n")?;
        assert_eq!(tokens.tenant("alpha-token-0123456789").as_deref(), Some("alpha"));
        assert_eq!(tokens.tenant("beta-token-0123456789").as_deref(), Some("beta"));
        assert_eq!(tokens.tenant("alpha-token-012345678"), None);
        let short = load("short", "alpha = \"short\"\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(short.contains("tenant `alpha`") && short.contains("16"), "{short}");
        let slash =
            load("slash", "\"a/b\" = \"alpha-token-0123456789\"\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(slash.contains("tenant `a/b`"), "{slash}");
        let mixed = load(
            "roles",
            "alpha = \"alpha-token-0123456789\"\npd = { token = \"pd-token-0123456789ab\", role = \"agency\" }\n",
        )?;
        assert_eq!(mixed.tenant_role("alpha-token-0123456789"), Some((Arc::from("alpha"), Role::Backend)));
        assert_eq!(mixed.tenant_role("pd-token-0123456789ab"), Some((Arc::from("pd"), Role::Agency)));
        let bad_role = load("badrole", "pd = { token = \"pd-token-0123456789ab\", role = \"mayor\" }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(bad_role.contains("tokens file"), "{bad_role}");
        let short_agency = load("shortag", "pd = { token = \"short\", role = \"agency\" }\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(short_agency.contains("tenant `pd`"), "{short_agency}");
        Ok(())
    }

    #[test]
    fn interceptor_refuses_missing_malformed_and_unknown_tokens() {
        let tokens = Tokens::new([("alpha".to_owned(), "alpha-token-0123456789".to_owned())]);
        let check = tokens.interceptor();
        let with = |value: Option<&str>| {
            let mut req = Request::new(());
            if let Some(v) = value {
                req.metadata_mut().insert("authorization", v.parse().unwrap_or_else(|_| unreachable!()));
            }
            check(req)
        };
        for (value, message) in [
            (None, "missing bearer token"),
            (Some("Basic alpha-token-0123456789"), "malformed authorization header"),
            (Some("Bearer nope-nope-nope-nope"), "invalid bearer token"),
        ] {
            let status = with(value).err().unwrap_or_else(|| Status::ok("accepted"));
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{value:?}");
            assert_eq!(status.message(), message);
        }
        let ok = with(Some("Bearer alpha-token-0123456789")).map(|r| tenant_of(&r).map(|t| t.to_string()));
        assert_eq!(ok.ok().and_then(Result::ok).as_deref(), Some("alpha"));
    }
}
