//! The frame every page shares (head, navigation, footer), the static style sheet and
//! script, the security headers on every response, and small formatting helpers. Pages are
//! maud templates: every interpolated value is HTML-escaped by construction. No inline
//! script or style anywhere, so the Content-Security-Policy can forbid both.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

/// The Content-Security-Policy of every response: scripts and styles from the console's own
/// files only, no inline code, no framing, forms posting to the console only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The style sheet.
pub const CSS: &str = include_str!("../assets/console.css");
/// The script: polling and countdowns.
pub const JS: &str = include_str!("../assets/console.js");

/// The headers every response carries.
pub fn security_headers() -> [(HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

/// Which page a frame belongs to (navigation highlight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The index.
    Home,
    /// Review queue.
    Review,
    /// Live map.
    Map,
    /// Transparency log.
    Transparency,
    /// Sign-in.
    Login,
}

/// A whole page. `user` is the signed-in name shown in the header; `csrf` the session's
/// token for the sign-out form.
pub fn frame(title: &str, nav: Nav, user: Option<(&str, &str)>, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hexcast" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "hexcast" }
                    nav {
                        (item(Nav::Review, "/review", "Review queue"))
                        (item(Nav::Map, "/map", "Live map"))
                        (item(Nav::Transparency, "/transparency", "Transparency"))
                    }
                    @if let Some((name, csrf)) = user {
                        form.signout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            span.who { (name) }
                            button type="submit" { "Sign out" }
                        }
                    } @else if nav != Nav::Login && nav != Nav::Transparency && nav != Nav::Home {
                        a.signin href="/login" { "Sign in" }
                    }
                }
                main { (body) }
                footer { "hexcast console · no personal data is shown on any page" }
            }
        }
    }
}

/// An HTML response with the security headers.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, security_headers(), [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string())
        .into_response()
}

/// A short error page.
pub fn error_page(status: StatusCode, title: &str, message: &str, sign_in: bool) -> Response {
    let body = html! {
        section.card {
            h1 { (title) }
            p { (message) }
            @if sign_in { p { a href="/login" { "Sign in" } } }
        }
    };
    respond(status, frame(title, Nav::Home, None, body))
}

/// `ms` as a short duration: `42 s`, `7 min`, `3 h 05 min`; negative as `0 s`.
pub fn duration(ms: i64) -> String {
    let s = (ms.max(0) / 1_000) as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3_600, (s % 3_600) / 60),
    }
}

/// Unix ms as `2026-11-30 02:30 UTC`.
pub fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// `SEVERITY_EXTREME` as `extreme`.
pub fn severity(s: hexcast_core::Severity) -> String {
    s.as_str_name().trim_start_matches("SEVERITY_").to_ascii_lowercase()
}

/// The CSS class of a category family (`crime.hostage` -> `cat-crime`): a fixed palette,
/// unknown families share one colour.
pub fn category_class(category: &str) -> &'static str {
    match category.split('.').next().unwrap_or_default() {
        "crime" => "cat-crime",
        "fire" => "cat-fire",
        "medical" => "cat-medical",
        "traffic" => "cat-traffic",
        "hazard" | "hazmat" | "weather" => "cat-hazard",
        _ => "cat-other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_read_well() {
        assert_eq!(duration(-5), "0 s");
        assert_eq!(duration(42_000), "42 s");
        assert_eq!(duration(125_000), "2 min 05 s");
        assert_eq!(duration(3 * 3_600_000 + 5 * 60_000), "3 h 05 min");
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(severity(hexcast_core::Severity::Extreme), "extreme");
        assert_eq!(category_class("crime.hostage"), "cat-crime");
        assert_eq!(category_class("x"), "cat-other");
    }

    #[test]
    fn frames_escape_values_and_load_no_inline_code() {
        let page = frame("<b>", Nav::Review, Some(("ana\"><script>", "tok")), html! { p { "body" } }).into_string();
        assert!(!page.contains("<b>") && !page.contains("\"><script>"), "{page}");
        assert!(!page.contains("<script>") && !page.contains("style="), "{page}");
        assert!(page.contains("<script src=\"/static/console.js\" defer></script>"), "{page}");
    }
}
