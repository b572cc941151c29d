//! Sessions and CSRF tokens. A session id is 32 random bytes in an HttpOnly, SameSite=Strict
//! cookie; every session (also the anonymous one the sign-in form gets) carries its own
//! random CSRF token that each form posts back. Signing in replaces the session id, so a
//! planted id never becomes a signed-in one. Tokens and ids are compared in constant time
//! and never logged. Sessions live in memory: a restart signs everyone out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng as _;

/// The session cookie's name.
pub const COOKIE: &str = "hexcast_session";

/// Who is signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An editor of the review queue (`review.tokens_file`).
    Reviewer,
    /// An operator of the live map (`console.operator_tokens_file`).
    Operator,
}

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The signed-in name and role; `None` before sign-in.
    pub user: Option<(Arc<str>, Role)>,
    /// The token every form of this session posts back.
    pub csrf: String,
    /// When it was created, ms.
    created_ms: i64,
    /// When it ends, ms.
    expires_ms: i64,
}

/// The sessions of one console.
#[derive(Debug)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    ttl_ms: i64,
    max: usize,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal strings, compared in constant time for equal lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

impl Sessions {
    /// Sessions lasting `ttl_ms`, at most `max` at once.
    pub fn new(ttl_ms: i64, max: usize) -> Self {
        Self { by_id: Mutex::default(), ttl_ms, max: max.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session (signed in as `user`, or anonymous) and its id.
    pub fn create(&self, user: Option<(Arc<str>, Role)>, now_ms: i64) -> (String, Session) {
        let session = Session { user, csrf: random_hex(), created_ms: now_ms, expires_ms: now_ms + self.ttl_ms };
        let id = random_hex();
        let mut map = self.lock();
        map.retain(|_, s| s.expires_ms > now_ms);
        while map.len() >= self.max {
            // Anonymous sessions go before signed-in ones, oldest first.
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| (s.user.is_some(), s.created_ms))
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            map.remove(&oldest);
        }
        map.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let map = self.lock();
        // The map is keyed by the id; the lookup's timing reveals nothing usable, since a
        // match needs all 64 random hex characters.
        map.get(id).filter(|s| s.expires_ms > now_ms).cloned()
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Number of live sessions (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `Set-Cookie` value for a session id.
pub fn set_cookie(id: &str, max_age_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that ends the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_rotate_and_stay_bounded() {
        let s = Sessions::new(1_000, 3);
        let (anon, a) = s.create(None, 0);
        assert_eq!(a.csrf.len(), 64);
        let (signed, b) = s.create(Some((Arc::from("ana"), Role::Reviewer)), 0);
        assert_ne!(anon, signed);
        assert_ne!(a.csrf, b.csrf);
        assert!(s.get(&signed, 999).is_some());
        assert!(s.get(&signed, 1_000).is_none(), "expired at its end");
        s.create(None, 10);
        s.create(None, 20);
        // Full: the oldest anonymous session made room, the signed-in one stayed.
        assert_eq!(s.len(), 3);
        assert!(s.get(&anon, 30).is_none());
        assert!(s.get(&signed, 30).is_some());
        s.remove(&signed);
        assert!(s.get(&signed, 30).is_none());
    }

    #[test]
    fn cookies_are_httponly_strict_and_parsed_by_name() {
        let c = set_cookie("abc", 60, false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"), "{c}");
        assert!(set_cookie("abc", 60, true).ends_with("; Secure"));
        assert_eq!(cookie_value("a=1; hexcast_session=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie_value("hexcast_session_x=1", COOKIE), None);
        assert!(constant_time_eq("abc", "abc") && !constant_time_eq("abc", "abd") && !constant_time_eq("ab", "abc"));
    }
}
