//! The review queue page: the pending holds, oldest first, each with its category,
//! severity, the headline, body and place exactly as they would be published, how long it
//! has been held and how long until the timeout rule applies, and a map of the area it
//! would reach (its public view: coarse cells and the display location); an Approve form
//! and a Reject form with a required reason. Below, the recent review decisions from the
//! audit topic. Rendering only: the verdict path is the Review service's.

use std::hash::{Hash as _, Hasher as _};

use hexcast_core::Timestamp;
use hexcast_core::cells::centroid;
use hexcast_review::Pending;
use maud::{Markup, html};

use crate::audit::ReviewAudit;
use crate::live::public_cells;
use crate::map::{Layer, Marker, Outline, svg};
use crate::page::{category_class, duration, severity, utc};

/// The pending holds, oldest first.
pub fn pending_oldest_first(pending: &hexcast_review::PendingMap) -> Vec<(String, Pending)> {
    let map = pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut list: Vec<(String, Pending)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    list.sort_by(|(a_id, a), (b_id, b)| (a.held.held_at, a_id).cmp(&(b.held.held_at, b_id)));
    list
}

/// A version of the fragment: changes when a hold comes or goes or a decision is audited.
pub fn version(pending: &[(String, Pending)], audit: &ReviewAudit) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (id, _) in pending {
        id.hash(&mut h);
    }
    format!("{:x}-{}", h.finish(), audit.version())
}

fn hold(id: &str, p: &Pending, csrf: &str, now: Timestamp, outlines: &[Outline]) -> Markup {
    let a = &p.held.alert;
    let cells = public_cells(a);
    let display = centroid(a.coarse_cell);
    let marker = h3o::LatLng::new(display.lat(), display.lng()).ok().map(|at| Marker {
        at,
        class: "display".into(),
        title: "display location".into(),
    });
    let sev = severity(a.severity);
    html! {
        article.card.hold data-incident=(id) {
            div.meta {
                span class=(format!("badge {}", category_class(a.category.as_str()))) { (a.category.as_str()) }
                span class=(format!("badge sev-{sev}")) { (sev) }
                span { "held " span data-since=(p.held.held_at.0) { (duration(now.0 - p.held.held_at.0)) } }
                span { "timeout in " strong data-deadline=(p.held.deadline.0) { (duration(p.held.deadline.0 - now.0)) } }
                span.muted { "then " (if p.held.release_on_timeout { "released" } else { "dropped" }) }
            }
            div.published {
                div.headline { (a.headline) }
                @if !a.body.is_empty() { div.body { (a.body) } }
                div.place.muted { (a.place) }
            }
            (svg(
                &[Layer { cells: cells.clone(), class: "area".into(), title: format!("{} cells notified", cells.len()) }],
                marker.as_slice(),
                outlines,
                320,
                200,
                "area the alert would reach",
            ))
            div.actions {
                form method="post" action="/review/approve" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="incident" value=(id);
                    input type="text" name="reason" placeholder="note (optional)" maxlength="1000" aria-label="approval note";
                    button.approve type="submit" { "Approve" }
                }
                form method="post" action="/review/reject" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="incident" value=(id);
                    input type="text" name="reason" placeholder="reason (required)" required maxlength="1000" aria-label="rejection reason";
                    button.reject type="submit" { "Reject" }
                }
            }
        }
    }
}

/// The live part of the review page (refreshed by polling).
pub fn fragment(
    pending: &[(String, Pending)],
    audit: &ReviewAudit,
    csrf: &str,
    now: Timestamp,
    outlines: &[Outline],
) -> Markup {
    let decisions = audit.list();
    html! {
        p.muted { (pending.len()) " held, oldest first" }
        div.queue {
            @for (id, p) in pending { (hold(id, p, csrf, now, outlines)) }
        }
        @if pending.is_empty() { div.card { "Nothing is waiting for review." } }
        h2 { "Recent decisions" }
        div.scroll {
            table #decisions {
                thead { tr { th { "When" } th { "Incident" } th { "Category" } th { "Outcome" } th { "By" } th { "Note" } } }
                tbody {
                    @for d in &decisions {
                        tr data-incident=(d.incident_id) {
                            td { (utc(d.decided_at_ms)) }
                            td { (d.incident_id) }
                            td { (d.category) }
                            td.outcome { (d.reason) }
                            td { @if d.reviewer.is_empty() { "timeout rule" } @else { (d.reviewer) } }
                            td.note { (d.note) }
                        }
                    }
                    @if decisions.is_empty() { tr { td colspan="6" { "No decisions yet." } } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::{Alert, Area, Category, HeldAlert, LatLng};

    fn pending(id: &str, held_at: i64, headline: &str) -> Pending {
        let c = LatLng::new(40.1, -75.3).expect("valid");
        let mut alert = Alert::synthetic(
            id,
            Category::parse("crime.hostage").expect("known"),
            Area::circle(c, 500.0).expect("valid"),
        );
        alert.coarse_cell = c.cell(h3o::Resolution::Eight);
        alert.headline = headline.into();
        Pending {
            held: HeldAlert {
                alert,
                held_at: Timestamp(held_at),
                deadline: Timestamp(held_at + 600_000),
                release_on_timeout: false,
                rule: "hold".into(),
            },
            partition: 0,
        }
    }

    #[test]
    fn queue_is_oldest_first_escaped_and_every_form_carries_the_csrf_token() {
        let map = hexcast_review::PendingMap::default();
        map.lock().expect("lock").insert("b".into(), pending("b", 2_000, "second"));
        map.lock().expect("lock").insert("a".into(), pending("a", 5_000, "<img src=x onerror=alert(1)>"));
        let list = pending_oldest_first(&map);
        assert_eq!(list.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["b", "a"]);
        let html = fragment(&list, &ReviewAudit::default(), "tok123", Timestamp(65_000), &[]).into_string();
        assert!(!html.contains("<img"), "{html}");
        assert_eq!(html.matches("<form").count(), 4);
        assert_eq!(html.matches("name=\"csrf\" value=\"tok123\"").count(), 4);
        assert!(html.contains("held <span data-since=\"2000\">1 min 03 s</span>"), "{html}");
        assert!(html.find("second").unwrap_or(usize::MAX) < html.find("&lt;img").unwrap_or(0));
    }
}
