//! The console's HTTP routes. Every page that shows internal data needs a signed-in
//! session of the right role (none: 401; another role: 403); every form post needs the
//! session's CSRF token (missing or wrong: 403), checked before anything else is read. A
//! verdict goes through the Review service's `record_verdict`, the same path as the gRPC
//! Approve and Reject, so it is the same audited record.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hexcast_api::VerdictError;
use maud::html;

use crate::app::Console;
use crate::page::{CSS, JS, Nav, error_page, frame, respond, security_headers};
use crate::session::{Role, Session, clear_cookie, constant_time_eq, set_cookie};

type Shared = Arc<Console>;

/// The console's router.
pub fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/static/console.css", get(|| async { asset(CSS, "text/css; charset=utf-8") }))
        .route("/static/console.js", get(|| async { asset(JS, "text/javascript; charset=utf-8") }))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/review", get(review_page))
        .route("/review/fragment", get(review_fragment))
        .route("/review/approve", post(approve))
        .route("/review/reject", post(reject))
        .route("/map", get(map_page))
        .route("/map/fragment", get(map_fragment))
        .route("/transparency", get(transparency_page))
        .fallback(|| async { error_page(StatusCode::NOT_FOUND, "Not found", "There is no such page.", false) })
        .with_state(console)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = (security_headers(), body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

fn cookie_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::COOKIE).and_then(|v| v.to_str().ok())
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No signed-in session: 401.
    NoSession,
    /// A session of another role: 403.
    WrongRole,
    /// A form without the session's CSRF token: 403.
    Csrf,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::NoSession => {
                error_page(StatusCode::UNAUTHORIZED, "Sign in first", "This page needs a signed-in session.", true)
            }
            Refusal::WrongRole => {
                error_page(StatusCode::FORBIDDEN, "Not for your role", "Your sign-in does not open this page.", false)
            }
            Refusal::Csrf => error_page(
                StatusCode::FORBIDDEN,
                "Form expired",
                "The form's security token is missing or stale: reload the page and try again.",
                false,
            ),
        }
    }
}

/// A signed-in session of `role`, or why not.
fn require(c: &Console, headers: &HeaderMap, role: Role) -> Result<(String, Session, Arc<str>), Refusal> {
    let (id, s) = c.session(cookie_header(headers)).ok_or(Refusal::NoSession)?;
    match &s.user {
        Some((name, r)) if *r == role => {
            let name = Arc::clone(name);
            Ok((id, s, name))
        }
        Some(_) => Err(Refusal::WrongRole),
        None => Err(Refusal::NoSession),
    }
}

/// The form's CSRF token matches the session's, or the refusal.
fn check_csrf(s: &Session, form: &HashMap<String, String>) -> Result<(), Refusal> {
    match form.get("csrf") {
        Some(t) if constant_time_eq(t, &s.csrf) => Ok(()),
        _ => Err(Refusal::Csrf),
    }
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, security_headers()).into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

fn user_of(s: &Session) -> Option<(&str, &str)> {
    s.user.as_ref().map(|(n, _)| (&**n, s.csrf.as_str()))
}

async fn index(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let session = c.session(cookie_header(&headers));
    let body = html! {
        h1 { "hexcast console" }
        div.queue {
            section.card { h2 { a href="/review" { "Review queue" } } p { "For editors: approve or reject the alerts held for review." } }
            section.card { h2 { a href="/map" { "Live map" } } p { "For operators: where alerts are going now." } }
            section.card { h2 { a href="/transparency" { "Transparency log" } } p { "For everyone: every geofenced request public agencies made." } }
        }
    };
    respond(StatusCode::OK, frame("Console", Nav::Home, session.as_ref().and_then(|(_, s)| user_of(s)), body))
}

async fn login_form(State(c): State<Shared>, headers: HeaderMap) -> Response {
    // The form's CSRF token lives in a session: the visitor's own, or a new anonymous one.
    let (cookie, session) = match c.session(cookie_header(&headers)) {
        Some((_, s)) => (None, s),
        None => {
            let (id, s) = c.sessions.create(None, c.now().0);
            (Some(set_cookie(&id, c.cfg.session_ttl_secs, c.cfg.cookie_secure)), s)
        }
    };
    let mut r = login_page(StatusCode::OK, &session, None);
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn login_page(status: StatusCode, s: &Session, problem: Option<&str>) -> Response {
    let body = html! {
        section.card {
            h1 { "Sign in" }
            p.muted { "Editors sign in with their reviewer token, operators with their operator token." }
            @if let Some(p) = problem { p.flash { (p) } }
            form.login method="post" action="/login" {
                input type="hidden" name="csrf" value=(s.csrf);
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        }
    };
    respond(status, frame("Sign in", Nav::Login, user_of(s), body))
}

async fn login(State(c): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let Some((old_id, session)) = c.session(cookie_header(&headers)) else {
        return error_page(StatusCode::FORBIDDEN, "Form expired", "Reload the sign-in page and try again.", true);
    };
    if let Err(r) = check_csrf(&session, &form) {
        return r.into_response();
    }
    let Some((name, role)) = form.get("token").and_then(|t| c.sign_in(t)) else {
        tracing::info!("console sign-in refused");
        return login_page(StatusCode::UNAUTHORIZED, &session, Some("Unknown token."));
    };
    // A new id on sign-in: an id planted before it never becomes a signed-in session.
    c.sessions.remove(&old_id);
    let (id, _) = c.sessions.create(Some((Arc::clone(&name), role)), c.now().0);
    tracing::info!(user = %name, ?role, "console sign-in");
    let to = match role {
        Role::Reviewer => "/review",
        Role::Operator => "/map",
    };
    redirect(to, Some(set_cookie(&id, c.cfg.session_ttl_secs, c.cfg.cookie_secure)))
}

async fn logout(State(c): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let Some((id, session)) = c.session(cookie_header(&headers)) else {
        return error_page(StatusCode::UNAUTHORIZED, "Sign in first", "You are not signed in.", true);
    };
    if let Err(r) = check_csrf(&session, &form) {
        return r.into_response();
    }
    c.sessions.remove(&id);
    redirect("/", Some(clear_cookie(c.cfg.cookie_secure)))
}

fn flash(uri: &Uri) -> Option<&'static str> {
    match uri.query()?.split('&').find_map(|kv| kv.strip_prefix("done="))? {
        "approved" => Some("Approved: the alert is released."),
        "rejected" => Some("Rejected: the alert will not be sent."),
        "stale" => Some("Already decided (by another editor or the timeout rule): nothing changed."),
        _ => None,
    }
}

async fn review_page(State(c): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    let (_, s, name) = match require(&c, &headers, Role::Reviewer) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let pending = crate::review::pending_oldest_first(c.review.pending());
    let version = crate::review::version(&pending, &c.audit);
    let body = html! {
        h1 { "Review queue" }
        @if let Some(f) = flash(&uri) { p.flash { (f) } }
        section #queue data-poll="/review/fragment" data-every=(c.cfg.poll_interval_ms) data-version=(version) {
            (crate::review::fragment(&pending, &c.audit, &s.csrf, c.now(), &c.outlines))
        }
    };
    respond(StatusCode::OK, frame("Review queue", Nav::Review, Some((&name, &s.csrf)), body))
}

async fn review_fragment(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let (_, s, _) = match require(&c, &headers, Role::Reviewer) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let pending = crate::review::pending_oldest_first(c.review.pending());
    let version = crate::review::version(&pending, &c.audit);
    let mut r = respond(StatusCode::OK, crate::review::fragment(&pending, &c.audit, &s.csrf, c.now(), &c.outlines));
    if let Ok(v) = HeaderValue::from_str(&version) {
        r.headers_mut().insert("x-console-version", v);
    }
    r
}

async fn decide(c: &Console, headers: &HeaderMap, form: &HashMap<String, String>, approve: bool) -> Response {
    let (_, s, name) = match require(c, headers, Role::Reviewer) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_csrf(&s, form) {
        return r.into_response();
    }
    let incident = form.get("incident").map(String::as_str).unwrap_or_default();
    let reason = form.get("reason").map(|r| r.trim()).unwrap_or_default();
    // Approving needs no words; the audit still says who approved, from the console.
    let reason = if approve && reason.is_empty() { "approved in the console" } else { reason };
    match c.review.record_verdict(&name, incident, approve, reason).await {
        Ok(true) => redirect(if approve { "/review?done=approved" } else { "/review?done=rejected" }, None),
        Ok(false) => redirect("/review?done=stale", None),
        Err(e @ (VerdictError::MissingIncident | VerdictError::Reason { .. })) => {
            error_page(StatusCode::BAD_REQUEST, "Not recorded", &format!("{e}: go back and fill it in."), false)
        }
        Err(e @ VerdictError::Unavailable) => {
            error_page(StatusCode::SERVICE_UNAVAILABLE, "Not recorded", &e.to_string(), false)
        }
    }
}

async fn approve(State(c): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    decide(&c, &headers, &form, true).await
}

async fn reject(State(c): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    decide(&c, &headers, &form, false).await
}

/// The map's window in hours (`?hours=N`, 0..=24; 0: active alerts only).
fn hours(uri: &Uri) -> u32 {
    uri.query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("hours=")))
        .and_then(|h| h.parse::<u32>().ok())
        .unwrap_or(0)
        .min(24)
}

async fn map_page(State(c): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    let (_, s, name) = match require(&c, &headers, Role::Operator) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let hours = hours(&uri);
    let body = html! {
        h1 { "Live map" }
        p.muted { "Active alerts as their public areas (coarse cells) and display locations; counts of notified subscribers only." }
        form.slider method="get" action="/map" {
            label for="hours" { "Also ended in the last " output #hours-out for="hours" { (hours) } " h" }
            input #hours type="range" name="hours" min="0" max="24" step="1" value=(hours) data-autosubmit;
            button type="submit" { "Show" }
        }
        section #live data-poll=(format!("/map/fragment?hours={hours}")) data-every=(c.cfg.poll_interval_ms) data-version=(c.live.version()) {
            (crate::live::fragment(&c.live, c.now(), hours, &c.outlines))
        }
    };
    respond(StatusCode::OK, frame("Live map", Nav::Map, Some((&name, &s.csrf)), body))
}

async fn map_fragment(State(c): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(r) = require(&c, &headers, Role::Operator) {
        return r.into_response();
    }
    let mut r = respond(StatusCode::OK, crate::live::fragment(&c.live, c.now(), hours(&uri), &c.outlines));
    r.headers_mut().insert("x-console-version", HeaderValue::from(c.live.version()));
    r
}

async fn transparency_page(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let session = c.session(cookie_header(&headers));
    let body = crate::transparency::body(&c.transparency, &c.outlines);
    let mut r = respond(
        StatusCode::OK,
        frame("Transparency", Nav::Transparency, session.as_ref().and_then(|(_, s)| user_of(s)), body),
    );
    r.headers_mut().insert("x-console-version", HeaderValue::from(c.transparency.version()));
    r
}

#[cfg(test)]
mod tests {
    //! The routes over a real socket, without a broker: sign-in, sessions, roles, CSRF and
    //! headers. (Verdicts that reach Kafka are the browser test's: tests/tests/e2e/console.rs.)

    use std::io::{Read as _, Write as _};
    use std::net::SocketAddr;

    use hexcast_core::{Alert, Area, Category, HeldAlert, LatLng, Timestamp};
    use hexcast_review::Pending;

    use super::*;
    use crate::config::ConsoleConfig;

    const REVIEWER: &str = "ana-reviewer-token-0123";
    const OPERATOR: &str = "oscar-operator-token-0123";

    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    impl Reply {
        fn cookie(&self) -> Option<String> {
            let line = self.head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))?;
            let value = line.split_once(':')?.1.trim();
            Some(value.split(';').next()?.to_owned())
        }
        fn csrf(&self) -> String {
            let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a csrf token") + 19;
            self.body[at..at + 64].to_owned()
        }
    }

    async fn http(addr: SocketAddr, method: &str, path: &str, cookie: Option<&str>, body: &str) -> Reply {
        let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let response = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            stream.write_all(request.as_bytes()).expect("send");
            let mut response = String::new();
            stream.read_to_string(&mut response).expect("receive");
            response
        })
        .await
        .expect("exchange");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Reply { status, head: head.to_owned(), body: body.to_owned() }
    }

    async fn serve() -> (SocketAddr, hexcast_review::PendingMap) {
        let rt = hexcast_runtime::Runtime::new(
            hexcast_runtime::KafkaConfig::new("127.0.0.1:1"),
            hexcast_runtime::RunnerConfig::default(),
        );
        let pending = hexcast_review::PendingMap::default();
        let c = LatLng::new(40.1, -75.3).expect("valid");
        let mut alert = Alert::synthetic(
            "pd:h1@1",
            Category::parse("crime.hostage").expect("known"),
            Area::circle(c, 500.0).expect("valid"),
        );
        alert.coarse_cell = c.cell(h3o::Resolution::Eight);
        alert.headline = "Hostage situation <b>reported</b>".into();
        let held = HeldAlert {
            alert,
            held_at: Timestamp(0),
            deadline: Timestamp(i64::MAX / 2),
            release_on_timeout: false,
            rule: "hold".into(),
        };
        pending.lock().expect("lock").insert("pd:h1".into(), Pending { held, partition: 0 });
        let writer = hexcast_runtime::Writer::new(&rt, "console-test").expect("writer");
        let review = hexcast_api::ReviewService::new(pending.clone(), writer, rt.clock.clone());
        let console = Console::new(
            ConsoleConfig::default(),
            review,
            hexcast_api::Tokens::new([("ana".to_owned(), REVIEWER.to_owned())]),
            hexcast_api::Tokens::new([("oscar".to_owned(), OPERATOR.to_owned())]),
            rt.clock.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router(Arc::new(console))).await });
        (addr, pending)
    }

    async fn sign_in(addr: SocketAddr, token: &str) -> String {
        let form = http(addr, "GET", "/login", None, "").await;
        let anon = form.cookie().expect("an anonymous session for the form");
        let r = http(addr, "POST", "/login", Some(&anon), &format!("csrf={}&token={token}", form.csrf())).await;
        assert_eq!(r.status, 303, "{}", r.head);
        let signed = r.cookie().expect("a new session");
        assert_ne!(signed, anon, "sign-in issues a new id");
        // The anonymous id is gone: it cannot become the signed-in session.
        assert_eq!(http(addr, "GET", "/review", Some(&anon), "").await.status, 401);
        signed
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_in_needs_the_forms_token_and_a_known_token() {
        let (addr, _) = serve().await;
        let form = http(addr, "GET", "/login", None, "").await;
        assert_eq!(form.status, 200);
        let set = form.head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("cookie");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        let anon = form.cookie().expect("cookie");
        let no_csrf = http(addr, "POST", "/login", Some(&anon), &format!("token={REVIEWER}")).await;
        assert_eq!(no_csrf.status, 403);
        let no_session = http(addr, "POST", "/login", None, &format!("csrf={}&token={REVIEWER}", form.csrf())).await;
        assert_eq!(no_session.status, 403);
        let wrong =
            http(addr, "POST", "/login", Some(&anon), &format!("csrf={}&token=nope-nope-nope-nope", form.csrf())).await;
        assert_eq!(wrong.status, 401);
        assert!(wrong.body.contains("Unknown token"), "{}", wrong.body);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_need_their_role_and_posts_their_csrf_token() {
        let (addr, pending) = serve().await;
        for path in ["/review", "/review/fragment", "/map", "/map/fragment"] {
            assert_eq!(http(addr, "GET", path, None, "").await.status, 401, "{path}");
        }
        let reviewer = sign_in(addr, REVIEWER).await;
        let page = http(addr, "GET", "/review", Some(&reviewer), "").await;
        assert_eq!(page.status, 200);
        let head = page.head.to_ascii_lowercase();
        assert!(
            head.contains(&format!("content-security-policy: {}", crate::page::CSP.to_ascii_lowercase())),
            "{head}"
        );
        assert!(page.body.contains("Hostage situation &lt;b&gt;reported&lt;/b&gt;"), "{}", page.body);
        assert!(!page.body.contains("<b>reported"), "escaped");
        assert_eq!(http(addr, "GET", "/map", Some(&reviewer), "").await.status, 403);
        let csrf = page.csrf();
        // Without the token, with another, or without a reason: nothing is decided.
        for body in
            ["incident=pd%3Ah1&reason=dup".to_owned(), format!("incident=pd%3Ah1&reason=dup&csrf={}", "0".repeat(64))]
        {
            assert_eq!(http(addr, "POST", "/review/reject", Some(&reviewer), &body).await.status, 403, "{body}");
        }
        let r = http(addr, "POST", "/review/reject", Some(&reviewer), &format!("incident=pd%3Ah1&reason=&csrf={csrf}"))
            .await;
        assert_eq!(r.status, 400);
        assert!(r.body.contains("reason: required"), "{}", r.body);
        assert!(pending.lock().expect("lock").contains_key("pd:h1"));
        // A held alert that is not pending: nothing to decide, said so.
        let r = http(addr, "POST", "/review/approve", Some(&reviewer), &format!("incident=nope&csrf={csrf}")).await;
        assert_eq!((r.status, r.head.contains("done=stale")), (303, true), "{}", r.head);

        let operator = sign_in(addr, OPERATOR).await;
        assert_eq!(http(addr, "GET", "/map", Some(&operator), "").await.status, 200);
        let slid = http(addr, "GET", "/map?hours=30", Some(&operator), "").await;
        assert!(slid.body.contains("value=\"24\"") && slid.body.contains("/map/fragment?hours=24"), "{}", slid.body);
        assert_eq!(http(addr, "GET", "/review", Some(&operator), "").await.status, 403);
        // Signing out needs the token too, then the session is gone.
        let map = http(addr, "GET", "/map", Some(&operator), "").await;
        assert_eq!(http(addr, "POST", "/logout", Some(&operator), "").await.status, 403);
        assert_eq!(http(addr, "POST", "/logout", Some(&operator), &format!("csrf={}", map.csrf())).await.status, 303);
        assert_eq!(http(addr, "GET", "/map", Some(&operator), "").await.status, 401);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_public_page_and_the_script_need_no_session_and_carry_the_headers() {
        let (addr, _) = serve().await;
        let page = http(addr, "GET", "/transparency", None, "").await;
        assert_eq!(page.status, 200);
        assert!(page.head.to_ascii_lowercase().contains("x-frame-options: deny"), "{}", page.head);
        let js = http(addr, "GET", "/static/console.js", None, "").await;
        assert_eq!(js.status, 200);
        assert!(js.head.to_ascii_lowercase().contains("content-type: text/javascript"), "{}", js.head);
        assert_eq!(http(addr, "GET", "/nowhere", None, "").await.status, 404);
    }
}
