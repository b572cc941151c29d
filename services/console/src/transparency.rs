//! The public transparency page: every geofenced request an agency made, read from the
//! `transparency` topic (agency, case number, area as coarse cells, window, created and
//! cancelled times) and a per-agency summary (requests per month, median area). The topic
//! holds no recipient data and this page adds none: no count, no response, no subscriber.

use std::collections::BTreeMap;
use std::sync::RwLock;

use h3o::CellIndex;
use hexcast_proto::v1 as pb;
use maud::{Markup, html};
use prost::Message as _;

use crate::map::{Layer, Outline, svg};
use crate::page::utc;

/// Most requests the page keeps (the newest); older ones stay in the topic.
pub const MAX_KEPT: usize = 10_000;

/// One request as the public sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicRequest {
    /// Request id.
    pub request_id: String,
    /// Agency.
    pub agency: String,
    /// Case number.
    pub case_number: String,
    /// The area's coarse cells.
    pub cells: Vec<CellIndex>,
    /// Requested window, Unix ms.
    pub window: (i64, i64),
    /// When it was created, Unix ms.
    pub created_ms: Option<i64>,
    /// When it was cancelled, Unix ms.
    pub cancelled_ms: Option<i64>,
}

impl PublicRequest {
    /// The area in km².
    pub fn area_km2(&self) -> f64 {
        self.cells.iter().map(|c| c.area_km2()).sum()
    }
}

/// The transparency log, kept in step with the `transparency` topic by a follower.
#[derive(Debug, Default)]
pub struct TransparencyLog {
    by_id: RwLock<BTreeMap<String, PublicRequest>>,
    /// Bumped on every change (the page's version for polling).
    version: std::sync::atomic::AtomicU64,
}

impl TransparencyLog {
    /// Applies one `TransparencyEntry`: the first entry of a request creates it, a
    /// cancelled one stamps its cancellation. Replays are harmless.
    pub fn apply_entry(&self, e: pb::TransparencyEntry) {
        let Ok(mut map) = self.by_id.write() else { return };
        let cancelled = e.state == pb::RequestState::Cancelled as i32;
        let r = map.entry(e.request_id.clone()).or_insert_with(|| PublicRequest {
            request_id: e.request_id.clone(),
            agency: e.agency.clone(),
            case_number: e.case_number.clone(),
            cells: Vec::new(),
            window: (e.window_start_ms, e.window_end_ms),
            created_ms: None,
            cancelled_ms: None,
        });
        r.cells = e.cells.iter().filter_map(|c| CellIndex::try_from(*c).ok()).collect();
        r.window = (e.window_start_ms, e.window_end_ms);
        if cancelled {
            r.cancelled_ms = Some(e.at_ms);
        } else {
            r.created_ms = Some(r.created_ms.map_or(e.at_ms, |c| c.min(e.at_ms)));
        }
        while map.len() > MAX_KEPT {
            let oldest = map
                .iter()
                .min_by_key(|(_, r)| r.created_ms.or(r.cancelled_ms).unwrap_or(i64::MIN))
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            map.remove(&oldest);
        }
        self.version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every request, newest first.
    pub fn list(&self) -> Vec<PublicRequest> {
        let Ok(map) = self.by_id.read() else { return Vec::new() };
        let mut out: Vec<PublicRequest> = map.values().cloned().collect();
        out.sort_by(|a, b| (b.created_ms, &b.request_id).cmp(&(a.created_ms, &a.request_id)));
        out
    }

    /// Changes so far.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl hexcast_runtime::follower::Table for TransparencyLog {
    fn apply(&self, _key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(bytes) = value else { return Ok(()) };
        let e = pb::TransparencyEntry::decode(bytes).map_err(|e| format!("undecodable transparency entry: {e}"))?;
        self.apply_entry(e);
        Ok(())
    }
}

/// Per agency: requests per month (`YYYY-MM`, by creation) and the median area in km².
pub fn summary(requests: &[PublicRequest]) -> BTreeMap<String, (BTreeMap<String, usize>, f64)> {
    let mut by_agency: BTreeMap<String, (BTreeMap<String, usize>, Vec<f64>)> = BTreeMap::new();
    for r in requests {
        let entry = by_agency.entry(r.agency.clone()).or_default();
        if let Some(month) =
            r.created_ms.and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.format("%Y-%m").to_string())
        {
            *entry.0.entry(month).or_default() += 1;
        }
        entry.1.push(r.area_km2());
    }
    by_agency.into_iter().map(|(agency, (months, areas))| (agency, (months, median(areas)))).collect()
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

/// The page body.
pub fn body(log: &TransparencyLog, outlines: &[Outline]) -> Markup {
    let requests = log.list();
    let summary = summary(&requests);
    html! {
        h1 { "Geofenced requests: the public log" }
        p.muted {
            "Every request a public agency sent to the people in an area, as the agency filed it: "
            "case number, area (H3 resolution-7 cells), time window, when it was created and "
            "cancelled. Who received a request, how many did, and who answered is never published."
        }
        h2 { "Per agency" }
        div.scroll {
            table #summary {
                thead { tr { th { "Agency" } th { "Requests per month" } th { "Median area" } } }
                tbody {
                    @for (agency, (months, median_km2)) in &summary {
                        tr {
                            td { (agency) }
                            td { @for (month, n) in months { span.month { (month) ": " (n) } " " } }
                            td { (format!("{median_km2:.1} km²")) }
                        }
                    }
                    @if summary.is_empty() { tr { td colspan="3" { "No requests yet." } } }
                }
            }
        }
        h2 { "Requests" }
        div.scroll {
            table #requests {
                thead {
                    tr { th { "Agency" } th { "Case" } th { "Area" } th { "Window" } th { "Created" } th { "Cancelled" } }
                }
                tbody {
                    @for r in &requests {
                        tr data-request=(r.request_id) {
                            td { (r.agency) }
                            td.case { (r.case_number) }
                            td {
                                (svg(&[Layer { cells: r.cells.clone(), class: "request".into(), title: format!("case {}", r.case_number) }], &[], outlines, 160, 110, &format!("area of case {}", r.case_number)))
                                span.muted { (r.cells.len()) " cells, " (format!("{:.1} km²", r.area_km2())) }
                            }
                            td { (utc(r.window.0)) " – " (utc(r.window.1)) }
                            td { (r.created_ms.map(utc).unwrap_or_default()) }
                            td { (r.cancelled_ms.map(utc).unwrap_or_else(|| "—".to_owned())) }
                        }
                    }
                    @if requests.is_empty() { tr { td colspan="6" { "No requests yet." } } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, agency: &str, at_ms: i64, state: pb::RequestState) -> pb::TransparencyEntry {
        let cell = h3o::LatLng::new(40.1, -75.3).expect("valid").to_cell(h3o::Resolution::Seven);
        pb::TransparencyEntry {
            request_id: id.into(),
            agency: agency.into(),
            case_number: format!("case-{id}"),
            cells: vec![u64::from(cell)],
            window_start_ms: 0,
            window_end_ms: 1,
            at_ms,
            state: state as i32,
        }
    }

    #[test]
    fn created_and_cancelled_entries_make_one_row_and_replays_change_nothing() {
        let log = TransparencyLog::default();
        let e = entry("r1", "pd", 1_000, pb::RequestState::Open);
        log.apply_entry(e.clone());
        log.apply_entry(entry("r1", "pd", 5_000, pb::RequestState::Cancelled));
        log.apply_entry(e);
        let list = log.list();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].created_ms, list[0].cancelled_ms), (Some(1_000), Some(5_000)));
    }

    #[test]
    fn summary_counts_per_month_and_takes_the_median_area() {
        let log = TransparencyLog::default();
        let nov = 1_764_460_800_000; // 2025-11-30
        log.apply_entry(entry("a", "pd", nov, pb::RequestState::Open));
        log.apply_entry(entry("b", "pd", nov + 1, pb::RequestState::Open));
        log.apply_entry(entry("c", "sheriff", 0, pb::RequestState::Open));
        let s = summary(&log.list());
        assert_eq!(s["pd"].0.get("2025-11"), Some(&2));
        assert_eq!(s["sheriff"].0.get("1970-01"), Some(&1));
        assert!((s["pd"].1 - 5.16).abs() < 0.1, "a resolution-7 cell is about 5.2 km²: {}", s["pd"].1);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
