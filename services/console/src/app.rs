//! What the console's handlers share: the review service (the pending holds and the one
//! verdict path), the sign-in tokens, the sessions, the clock and the tables the followers
//! keep. It decides who is signed in; it never writes to Kafka itself.

use std::sync::Arc;

use hexcast_api::{ReviewService, Tokens};
use hexcast_core::Timestamp;
use hexcast_runtime::Clock;

use crate::audit::ReviewAudit;
use crate::config::ConsoleConfig;
use crate::live::LiveAlerts;
use crate::map::Outline;
use crate::session::{Role, Session, Sessions};
use crate::transparency::TransparencyLog;

/// The console's state.
pub struct Console {
    /// Configuration.
    pub cfg: ConsoleConfig,
    /// The review queue's service: pending holds and verdicts.
    pub review: ReviewService,
    /// Reviewers' tokens (`review.tokens_file`).
    pub reviewers: Tokens,
    /// Operators' tokens (`console.operator_tokens_file`).
    pub operators: Tokens,
    /// Sessions.
    pub sessions: Sessions,
    /// The wall clock.
    pub clock: Clock,
    /// The transparency log.
    pub transparency: Arc<TransparencyLog>,
    /// Active alerts.
    pub live: Arc<LiveAlerts>,
    /// Recent review decisions.
    pub audit: Arc<ReviewAudit>,
    /// Outlines drawn under the maps (`console.outline_geojson`).
    pub outlines: Vec<Outline>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Console {
    /// A console over `review`, signing in `reviewers` and `operators`, with empty tables.
    pub fn new(cfg: ConsoleConfig, review: ReviewService, reviewers: Tokens, operators: Tokens, clock: Clock) -> Self {
        let sessions = Sessions::new(cfg.session_ttl_secs as i64 * 1_000, cfg.max_sessions);
        Self {
            cfg,
            review,
            reviewers,
            operators,
            sessions,
            clock,
            transparency: Arc::default(),
            live: Arc::default(),
            audit: Arc::default(),
            outlines: Vec::new(),
        }
    }

    /// With `outlines` drawn under every map.
    pub fn with_outlines(mut self, outlines: Vec<Outline>) -> Self {
        self.outlines = outlines;
        self
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// The name and role of a sign-in token: reviewers first, then operators.
    pub fn sign_in(&self, token: &str) -> Option<(Arc<str>, Role)> {
        let token = token.trim();
        if let Some(name) = self.reviewers.tenant(token) {
            return Some((name, Role::Reviewer));
        }
        self.operators.tenant(token).map(|name| (name, Role::Operator))
    }

    /// The session a `Cookie` header names, if live.
    pub fn session(&self, cookie_header: Option<&str>) -> Option<(String, Session)> {
        let id = crate::session::cookie_value(cookie_header?, crate::session::COOKIE)?;
        let s = self.sessions.get(id, self.now().0)?;
        Some((id.to_owned(), s))
    }
}
