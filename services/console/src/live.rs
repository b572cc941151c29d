//! The operators' live map: the active alerts, each as its public view (coarse cells and
//! the display location, never the precise target the `alerts` topic carries), coloured by
//! category, with the number of subscribers notified so far (counts only, from the
//! `notifications` topic; never an id). Updates replace an alert, a close ends it, an
//! expired one is no longer active; a window of the last hours (the page's slider) shows
//! the ended ones too, as long as the table keeps them.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use h3o::CellIndex;
use hexcast_core::cells::{centroid, cover};
use hexcast_core::{Alert, Area, EventKind, Timestamp};
use hexcast_proto::v1 as pb;
use maud::{Markup, html};
use prost::Message as _;

use crate::map::{Layer, MAX_DRAWN, Marker, Outline, svg};
use crate::page::{category_class, duration, severity, utc};

/// Most alerts kept (the newest).
pub const MAX_KEPT: usize = 5_000;

/// The cells of an alert's public view: the coarse cells of its published target.
pub fn public_cells(alert: &Alert) -> Vec<CellIndex> {
    let public = alert.public_view();
    let res = alert.coarse_cell.resolution();
    match &public.target {
        Area::Cells(cells) => cells.clone(),
        area => cover(area, res, MAX_DRAWN).unwrap_or_else(|_| vec![alert.coarse_cell]),
    }
}

/// One alert on the map.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveAlert {
    /// Alert id.
    pub alert_id: String,
    /// Category.
    pub category: String,
    /// Severity, as a word.
    pub severity: String,
    /// Headline as published.
    pub headline: String,
    /// Place as published.
    pub place: String,
    /// Public cells.
    pub cells: Vec<CellIndex>,
    /// The display location (the coarse cell's centroid).
    pub display: h3o::LatLng,
    /// Issued, Unix ms.
    pub issued_ms: i64,
    /// Expiry, Unix ms.
    pub expires_ms: Option<i64>,
    /// Updates received after the first.
    pub updates: u32,
    /// When it was closed, Unix ms.
    pub closed_ms: Option<i64>,
}

impl LiveAlert {
    /// Neither closed nor expired at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.closed_ms.is_none() && self.expires_ms.is_none_or(|e| e > now.0)
    }
}

/// Active alerts and notified counts, kept in step with `alerts` and `notifications`.
#[derive(Debug, Default)]
pub struct LiveAlerts {
    alerts: RwLock<HashMap<String, LiveAlert>>,
    notified: RwLock<HashMap<String, u64>>,
    closed: AtomicU64,
    version: AtomicU64,
}

impl LiveAlerts {
    /// Applies one alert record.
    pub fn apply_alert(&self, alert: &Alert) {
        let Ok(mut map) = self.alerts.write() else { return };
        if alert.kind == EventKind::Close {
            if let Some(a) = map.get_mut(&alert.alert_id)
                && a.closed_ms.is_none()
            {
                a.closed_ms = Some(alert.issued_at.0);
                self.closed.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let display = centroid(alert.coarse_cell);
            let updates = map.get(&alert.alert_id).map_or(0, |a| a.updates + 1);
            map.insert(
                alert.alert_id.clone(),
                LiveAlert {
                    alert_id: alert.alert_id.clone(),
                    category: alert.category.as_str().to_owned(),
                    severity: severity(alert.severity),
                    headline: alert.headline.clone(),
                    place: alert.place.clone(),
                    cells: public_cells(alert),
                    display: h3o::LatLng::new(display.lat(), display.lng())
                        .unwrap_or_else(|_| alert.coarse_cell.into()),
                    issued_ms: alert.issued_at.0,
                    expires_ms: alert.expires_at.map(|t| t.0),
                    updates,
                    closed_ms: None,
                },
            );
            while map.len() > MAX_KEPT {
                let oldest = map.values().min_by_key(|a| a.issued_ms).map(|a| a.alert_id.clone()).unwrap_or_default();
                map.remove(&oldest);
            }
        }
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies one notification batch: its count of subscribers, never their ids.
    pub fn apply_batch(&self, batch: &pb::NotificationBatch) {
        if batch.request.is_some() {
            // Requests' recipients are counted nowhere.
            return;
        }
        let Some(alert) = &batch.alert else { return };
        if let Ok(mut m) = self.notified.write() {
            *m.entry(alert.alert_id.clone()).or_default() += batch.subscriber_ids.len() as u64;
        }
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Active alerts at `now`, newest first, with their notified counts.
    pub fn active(&self, now: Timestamp) -> Vec<(LiveAlert, u64)> {
        self.select(|a| a.is_active(now))
    }

    /// The alerts active at `now` or issued in the last `hours`, newest first.
    pub fn window(&self, now: Timestamp, hours: u32) -> Vec<(LiveAlert, u64)> {
        let since = now.0 - i64::from(hours) * 3_600_000;
        self.select(|a| a.is_active(now) || a.issued_ms >= since || a.closed_ms.is_some_and(|c| c >= since))
    }

    fn select(&self, keep: impl Fn(&LiveAlert) -> bool) -> Vec<(LiveAlert, u64)> {
        let (Ok(alerts), Ok(notified)) = (self.alerts.read(), self.notified.read()) else { return Vec::new() };
        let mut out: Vec<(LiveAlert, u64)> = alerts
            .values()
            .filter(|a| keep(a))
            .map(|a| (a.clone(), notified.get(&a.alert_id).copied().unwrap_or(0)))
            .collect();
        out.sort_by(|(a, _), (b, _)| (b.issued_ms, &b.alert_id).cmp(&(a.issued_ms, &a.alert_id)));
        out
    }

    /// Alerts closed since start.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Changes so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }
}

/// The follower table of `alerts`.
#[derive(Debug)]
pub struct AlertsTable(pub std::sync::Arc<LiveAlerts>);

impl hexcast_runtime::follower::Table for AlertsTable {
    fn apply(&self, _key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(bytes) = value else { return Ok(()) };
        let alert = pb::Alert::decode(bytes).map_err(|e| format!("undecodable alert: {e}"))?;
        let alert = Alert::try_from(alert).map_err(|e| format!("invalid alert: {e}"))?;
        self.0.apply_alert(&alert);
        Ok(())
    }
}

/// The follower table of `notifications`.
#[derive(Debug)]
pub struct NotificationsTable(pub std::sync::Arc<LiveAlerts>);

impl hexcast_runtime::follower::Table for NotificationsTable {
    fn apply(&self, _key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(bytes) = value else { return Ok(()) };
        let batch = pb::NotificationBatch::decode(bytes).map_err(|e| format!("undecodable batch: {e}"))?;
        self.0.apply_batch(&batch);
        Ok(())
    }
}

/// The live part of the map page (refreshed by polling): the active alerts, or with
/// `hours` > 0 also those of the last `hours` that have ended.
pub fn fragment(live: &LiveAlerts, now: Timestamp, hours: u32, outlines: &[Outline]) -> Markup {
    let active = if hours == 0 { live.active(now) } else { live.window(now, hours) };
    let shown = active.iter().filter(|(a, _)| a.is_active(now)).count();
    let layers: Vec<Layer> = active
        .iter()
        .rev()
        .map(|(a, _)| Layer {
            cells: a.cells.clone(),
            class: category_class(&a.category).to_owned(),
            title: format!("{}: {}", a.category, a.headline),
        })
        .collect();
    let markers: Vec<Marker> = active
        .iter()
        .map(|(a, _)| Marker { at: a.display, class: "display".into(), title: format!("{} ({})", a.place, a.category) })
        .collect();
    html! {
        p.muted {
            (shown) " active alerts"
            @if hours > 0 { " · " (active.len() - shown) " ended in the last " (hours) " h" }
            " · " (live.closed()) " closed since start"
        }
        div.legend {
            @for (class, label) in [("cat-crime", "crime"), ("cat-fire", "fire"), ("cat-medical", "medical"), ("cat-traffic", "traffic"), ("cat-hazard", "hazard"), ("cat-other", "other")] {
                span class=(class) { (label) }
            }
        }
        div.card { (svg(&layers, &markers, outlines, 640, 400, "active alerts")) }
        div.scroll {
            table #alerts {
                thead { tr { th { "Category" } th { "Severity" } th { "Headline" } th { "Place" } th { "Issued" } th { "Expires in" } th { "Notified" } th { "Status" } } }
                tbody {
                    @for (a, n) in &active {
                        tr data-alert=(a.alert_id) {
                            td { span class=(format!("badge {}", category_class(&a.category))) { (a.category) } }
                            td { (a.severity) }
                            td { (a.headline) @if a.updates > 0 { " " span.muted { "(" (a.updates) " updates)" } } }
                            td { (a.place) }
                            td { (utc(a.issued_ms)) }
                            td { @if let Some(e) = a.expires_ms { span data-deadline=(e) { (duration(e - now.0)) } } @else { "—" } }
                            td.notified { (n) }
                            td.status {
                                @if let Some(c) = a.closed_ms { "closed " (utc(c)) }
                                @else if a.is_active(now) { "active" }
                                @else { "expired" }
                            }
                        }
                    }
                    @if active.is_empty() { tr { td colspan="8" { "No alerts." } } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::{Category, LatLng};

    fn alert(id: &str, kind: EventKind) -> Alert {
        let c = LatLng::new(40.1, -75.3).expect("valid");
        let mut a = Alert::synthetic(
            id,
            Category::parse("crime.hostage").expect("known"),
            Area::circle(c, 800.0).expect("valid"),
        );
        a.kind = kind;
        a.coarse_cell = c.cell(h3o::Resolution::Eight);
        a
    }

    #[test]
    fn updates_replace_closes_remove_and_counts_never_hold_ids() {
        let live = LiveAlerts::default();
        live.apply_alert(&alert("a1", EventKind::New));
        live.apply_alert(&alert("a1", EventKind::Update));
        live.apply_alert(&alert("a2", EventKind::New));
        let mut batch = pb::NotificationBatch {
            alert: Some(pb::Alert::from(&alert("a1", EventKind::New))),
            subscriber_ids: vec!["s1".into(), "s2".into()],
            ..Default::default()
        };
        live.apply_batch(&batch);
        batch.subscriber_ids = vec!["s3".into()];
        live.apply_batch(&batch);
        batch.request = Some(pb::GeoRequest::default());
        live.apply_batch(&batch);
        let active = live.active(Timestamp(0));
        let a1 = active.iter().find(|(a, _)| a.alert_id == "a1").expect("a1");
        assert_eq!((a1.0.updates, a1.1), (1, 3));
        let mut close = alert("a2", EventKind::Close);
        close.issued_at = Timestamp(7_200_000);
        live.apply_alert(&close);
        live.apply_alert(&close);
        let now = Timestamp(3 * 3_600_000);
        assert_eq!(live.active(now).len(), 1);
        assert_eq!(live.closed(), 1, "a repeated close counts once");
        // The slider's window: closed an hour ago, in the last 2 h but not in the last 0.
        let ended: Vec<String> =
            live.window(now, 2).into_iter().filter(|(a, _)| !a.is_active(now)).map(|(a, _)| a.alert_id).collect();
        assert_eq!(ended, vec!["a2".to_owned()]);
        assert!(fragment(&live, now, 2, &[]).into_string().contains("closed 1970-01-01 02:00 UTC"));
        let html = fragment(&live, now, 0, &[]).into_string();
        assert!(!html.contains("s1") && !html.contains("s3"), "{html}");
    }

    #[test]
    fn the_map_shows_coarse_cells_not_the_precise_target() {
        let a = alert("a1", EventKind::New);
        let cells = public_cells(&a);
        assert!(!cells.is_empty());
        assert!(cells.iter().all(|c| c.resolution() == a.coarse_cell.resolution()), "{cells:?}");
    }
}
