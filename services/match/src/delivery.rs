//! Per-subscriber delivery limits: quiet hours (in the subscriber's IANA time zone) and a
//! cap on alerts per rolling hour. Severe and extreme alerts, and alerts that target an
//! attribute (a CPR call reaches only subscribers who have it), bypass both. A notification
//! held by quiet hours waits until the window ends and is then delivered, unless its alert
//! expired first; one over the cap is not sent. Every suppression is counted by reason.
//!
//! Deterministic: every decision takes `now` from the caller (the stage context), never a
//! clock. It must never delay or drop a bypassing alert.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{NaiveTime, TimeZone as _, Timelike as _};
use hexcast_core::{Alert, Delivery, QuietHours, Severity, Timestamp};

/// Why a notification was not sent when matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Suppressed {
    /// Held for the end of the subscriber's quiet hours.
    QuietHours,
    /// Over the subscriber's alerts-per-hour cap: not sent.
    RateCap,
    /// Held by quiet hours, then expired before the window ended: not sent.
    ExpiredInQuietHours,
    /// Held by quiet hours, but the held set was full: not sent.
    DeferredOverflow,
}

impl Suppressed {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Suppressed::QuietHours => "quiet_hours",
            Suppressed::RateCap => "rate_cap",
            Suppressed::ExpiredInQuietHours => "expired_in_quiet_hours",
            Suppressed::DeferredOverflow => "deferred_overflow",
        }
    }
}

/// The counter of suppressed notifications, labelled `reason`.
pub const SUPPRESSED_TOTAL: &str = "hexcast_push_suppressed_total";
/// The counter of held notifications delivered at the end of quiet hours.
pub const DEFERRED_DELIVERED_TOTAL: &str = "hexcast_push_deferred_delivered_total";

/// What to do with one (alert, subscriber) pair now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it now.
    Send,
    /// Held until this instant (the end of the quiet window).
    Defer(Timestamp),
    /// Not sent (over the cap, or the held set is full).
    Drop(Suppressed),
}

/// Whether an alert ignores quiet hours and caps: severe or extreme, or targeted at a
/// subscriber attribute (responder alerts such as CPR).
pub fn bypasses(alert: &Alert) -> bool {
    alert.severity >= Severity::Severe || !alert.required_attributes.is_empty()
}

/// A valid IANA time zone name, for the API's checks.
pub fn parse_time_zone(name: &str) -> Option<chrono_tz::Tz> {
    name.parse::<chrono_tz::Tz>().ok()
}

const HOUR_MS: i64 = 3_600_000;

/// If `now` falls in the quiet window, the instant it ends. An unknown zone is read as UTC
/// (the API refuses one; this keeps the matcher total).
pub fn quiet_until(q: &QuietHours, now: Timestamp) -> Option<Timestamp> {
    if q.start_minute == q.end_minute {
        return None;
    }
    let tz = parse_time_zone(&q.time_zone).unwrap_or(chrono_tz::UTC);
    let utc = chrono::DateTime::from_timestamp_millis(now.0)?;
    let local = utc.with_timezone(&tz);
    let minute = (local.hour() * 60 + local.minute()) as u16;
    let (start, end) = (q.start_minute, q.end_minute);
    let inside = if start < end { minute >= start && minute < end } else { minute >= start || minute < end };
    if !inside {
        return None;
    }
    let mut day = local.date_naive();
    if start > end && minute >= start {
        day = day.succ_opt()?;
    }
    let end_time = NaiveTime::from_hms_opt(u32::from(end / 60), u32::from(end % 60), 0)?;
    let naive = day.and_time(end_time);
    // A daylight-saving gap has no such local time: the window ends an hour later.
    let resolved = tz
        .from_local_datetime(&naive)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())?;
    Some(Timestamp(resolved.timestamp_millis().max(now.0 + 1)))
}

/// One notification held by quiet hours.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// Tenant.
    pub tenant: String,
    /// Subscriber.
    pub subscriber_id: String,
    /// Language chosen for the subscriber.
    pub language: String,
    /// The alert as it will be sent (public view).
    pub alert: Alert,
    /// When it was matched.
    pub matched_at: Timestamp,
}

/// The limiter of one matcher: recent deliveries per subscriber (for the cap), the held
/// notifications (for quiet hours) and the suppression counts.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    recent: HashMap<(String, String), VecDeque<Timestamp>>,
    held: BTreeMap<(Timestamp, u64), Held>,
    seq: u64,
    max_held: usize,
    counts: BTreeMap<Suppressed, u64>,
    delivered_late: u64,
}

/// Held notifications kept at most, per matcher.
pub const DEFAULT_MAX_HELD: usize = 1_000_000;

impl Limiter {
    /// A limiter holding at most `max_held` notifications.
    pub fn new(max_held: usize) -> Self {
        Self { max_held, ..Self::default() }
    }

    fn count(&mut self, why: Suppressed) {
        *self.counts.entry(why).or_default() += 1;
        metrics::counter!(SUPPRESSED_TOTAL, "reason" => why.as_str()).increment(1);
    }

    /// Suppressions so far, by reason.
    pub fn suppressed(&self, why: Suppressed) -> u64 {
        self.counts.get(&why).copied().unwrap_or(0)
    }

    /// Held notifications delivered so far.
    pub fn delivered_late(&self) -> u64 {
        self.delivered_late
    }

    /// Notifications held now.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Records a delivery to a subscriber (it counts toward the cap).
    fn record(&mut self, tenant: &str, subscriber_id: &str, now: Timestamp) {
        let q = self.recent.entry((tenant.to_owned(), subscriber_id.to_owned())).or_default();
        q.push_back(now);
        if q.len() > 256 {
            q.pop_front();
        }
    }

    /// Deliveries to a subscriber in the hour before `now`.
    fn in_last_hour(&mut self, tenant: &str, subscriber_id: &str, now: Timestamp) -> usize {
        let key = (tenant.to_owned(), subscriber_id.to_owned());
        let Some(q) = self.recent.get_mut(&key) else { return 0 };
        while q.front().is_some_and(|t| t.0 <= now.0 - HOUR_MS) {
            q.pop_front();
        }
        if q.is_empty() {
            self.recent.remove(&key);
            return 0;
        }
        q.len()
    }

    /// Decides one (alert, subscriber) pair at `now`. A bypassing alert is always sent (and
    /// still counts toward the cap). A `Defer` is held here until [`Limiter::due`].
    pub fn decide(
        &mut self,
        alert: &Alert,
        tenant: &str,
        subscriber_id: &str,
        delivery: &Delivery,
        language: &str,
        now: Timestamp,
    ) -> Verdict {
        if !delivery.limits() || bypasses(alert) {
            if delivery.max_alerts_per_hour > 0 {
                self.record(tenant, subscriber_id, now);
            }
            return Verdict::Send;
        }
        if let Some(until) = delivery.quiet_hours.as_ref().and_then(|q| quiet_until(q, now)) {
            if self.held.len() >= self.max_held {
                self.count(Suppressed::DeferredOverflow);
                return Verdict::Drop(Suppressed::DeferredOverflow);
            }
            self.count(Suppressed::QuietHours);
            self.seq += 1;
            let held = Held {
                tenant: tenant.to_owned(),
                subscriber_id: subscriber_id.to_owned(),
                language: language.to_owned(),
                alert: alert.clone(),
                matched_at: now,
            };
            self.held.insert((until, self.seq), held);
            return Verdict::Defer(until);
        }
        if self.cap_reached(tenant, subscriber_id, delivery, now) {
            self.count(Suppressed::RateCap);
            return Verdict::Drop(Suppressed::RateCap);
        }
        if delivery.max_alerts_per_hour > 0 {
            self.record(tenant, subscriber_id, now);
        }
        Verdict::Send
    }

    fn cap_reached(&mut self, tenant: &str, subscriber_id: &str, delivery: &Delivery, now: Timestamp) -> bool {
        let cap = delivery.max_alerts_per_hour as usize;
        cap > 0 && self.in_last_hour(tenant, subscriber_id, now) >= cap
    }

    /// The held notifications whose window has ended by `now`, oldest window first. Those
    /// whose alert expired by then are dropped and counted. The cap is not applied again:
    /// the window's end releases what it held.
    pub fn due(&mut self, now: Timestamp) -> Vec<Held> {
        let later = self.held.split_off(&(Timestamp(now.0.saturating_add(1)), 0));
        let ready = std::mem::replace(&mut self.held, later);
        let mut out = Vec::with_capacity(ready.len());
        for (_, h) in ready {
            if h.alert.expires_at.is_some_and(|e| e.0 <= now.0) {
                self.count(Suppressed::ExpiredInQuietHours);
                continue;
            }
            self.record(&h.tenant, &h.subscriber_id, now);
            self.delivered_late += 1;
            metrics::counter!(DEFERRED_DELIVERED_TOTAL).increment(1);
            out.push(h);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::{Area, Category, LatLng};

    /// 2026-01-15 00:00 UTC.
    const DAY: i64 = 1_768_435_200_000;
    const MIN: i64 = 60_000;

    fn alert(severity: Severity, expires_in_min: Option<i64>, at: i64) -> Alert {
        let c = LatLng::new(40.71, -74.0).expect("valid");
        Alert {
            severity,
            expires_at: expires_in_min.map(|m| Timestamp(at + m * MIN)),
            ..Alert::synthetic(
                "pd:1@1",
                Category::parse("crime.burglary").expect("known"),
                Area::circle(c, 400.0).expect("valid"),
            )
        }
    }

    /// Quiet 22:00-07:00 in New York (UTC-5 in January).
    fn night_in_new_york() -> Delivery {
        Delivery {
            quiet_hours: Some(QuietHours {
                start_minute: 22 * 60,
                end_minute: 7 * 60,
                time_zone: "America/New_York".into(),
            }),
            ..Delivery::default()
        }
    }

    /// 23:30 in New York on 2026-01-15 is 04:30 UTC on the 16th; the window ends at 07:00
    /// New York time, 12:00 UTC on the 16th.
    const NIGHT: i64 = DAY + (24 + 4) * 60 * MIN + 30 * MIN;
    const MORNING: i64 = DAY + (24 + 12) * 60 * MIN;

    #[test]
    fn quiet_window_crossing_midnight_ends_at_local_morning() {
        let q = night_in_new_york().quiet_hours.expect("set");
        assert_eq!(quiet_until(&q, Timestamp(NIGHT)), Some(Timestamp(MORNING)));
        // 06:59 local is inside, 07:00 is not, noon is not.
        assert_eq!(quiet_until(&q, Timestamp(MORNING - MIN)), Some(Timestamp(MORNING)));
        assert_eq!(quiet_until(&q, Timestamp(MORNING)), None);
        assert_eq!(quiet_until(&q, Timestamp(DAY + 17 * 60 * MIN)), None);
        // Before midnight local (22:30 = 03:30 UTC next day) the end is the next morning.
        assert_eq!(quiet_until(&q, Timestamp(DAY + (24 + 3) * 60 * MIN + 30 * MIN)), Some(Timestamp(MORNING)));
    }

    #[test]
    fn severe_alert_bypasses_quiet_hours() {
        let mut l = Limiter::new(10);
        let d = night_in_new_york();
        for s in [Severity::Severe, Severity::Extreme] {
            assert_eq!(l.decide(&alert(s, None, NIGHT), "t", "s1", &d, "en", Timestamp(NIGHT)), Verdict::Send);
        }
        // An attribute-targeted alert (a CPR call) bypasses too, whatever its severity.
        let cpr = Alert { required_attributes: vec!["cpr_trained".into()], ..alert(Severity::Minor, None, NIGHT) };
        assert_eq!(l.decide(&cpr, "t", "s1", &d, "en", Timestamp(NIGHT)), Verdict::Send);
        assert_eq!(l.suppressed(Suppressed::QuietHours), 0);
        assert_eq!(l.held_len(), 0);
    }

    #[test]
    fn minor_alert_waits_and_is_delivered_at_the_window_end() {
        let mut l = Limiter::new(10);
        let d = night_in_new_york();
        let a = alert(Severity::Minor, None, NIGHT);
        assert_eq!(l.decide(&a, "t", "s1", &d, "es", Timestamp(NIGHT)), Verdict::Defer(Timestamp(MORNING)));
        assert_eq!(l.suppressed(Suppressed::QuietHours), 1);
        // Not before the end of the window.
        assert!(l.due(Timestamp(MORNING - 1)).is_empty());
        let due = l.due(Timestamp(MORNING));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].subscriber_id.as_str(), due[0].language.as_str()), ("s1", "es"));
        assert_eq!(due[0].matched_at, Timestamp(NIGHT));
        assert_eq!(l.delivered_late(), 1);
        // Delivered once.
        assert!(l.due(Timestamp(MORNING + HOUR_MS)).is_empty());
    }

    #[test]
    fn alert_expired_during_quiet_hours_is_not_delivered() {
        let mut l = Limiter::new(10);
        let d = night_in_new_york();
        let expiring = alert(Severity::Moderate, Some(60), NIGHT);
        let lasting = alert(Severity::Moderate, Some(24 * 60), NIGHT);
        assert!(matches!(l.decide(&expiring, "t", "s1", &d, "en", Timestamp(NIGHT)), Verdict::Defer(_)));
        assert!(matches!(l.decide(&lasting, "t", "s2", &d, "en", Timestamp(NIGHT)), Verdict::Defer(_)));
        let due = l.due(Timestamp(MORNING));
        assert_eq!(due.iter().map(|h| h.subscriber_id.as_str()).collect::<Vec<_>>(), ["s2"]);
        assert_eq!(l.suppressed(Suppressed::ExpiredInQuietHours), 1);
    }

    #[test]
    fn rate_cap_drops_alerts_over_the_hourly_limit_and_recovers() {
        let mut l = Limiter::new(10);
        let d = Delivery { max_alerts_per_hour: 2, ..Delivery::default() };
        let at = |m: i64| Timestamp(DAY + m * MIN);
        let minor = alert(Severity::Minor, None, DAY);
        assert_eq!(l.decide(&minor, "t", "s", &d, "en", at(0)), Verdict::Send);
        assert_eq!(l.decide(&minor, "t", "s", &d, "en", at(10)), Verdict::Send);
        assert_eq!(l.decide(&minor, "t", "s", &d, "en", at(20)), Verdict::Drop(Suppressed::RateCap));
        // Another subscriber has its own count; a severe alert is never capped.
        assert_eq!(l.decide(&minor, "t", "other", &d, "en", at(20)), Verdict::Send);
        assert_eq!(l.decide(&alert(Severity::Severe, None, DAY), "t", "s", &d, "en", at(21)), Verdict::Send);
        // An hour after the first, one slot is free again (the severe one still counts).
        assert_eq!(l.decide(&minor, "t", "s", &d, "en", at(61)), Verdict::Drop(Suppressed::RateCap));
        assert_eq!(l.decide(&minor, "t", "s", &d, "en", at(71)), Verdict::Send);
        assert_eq!(l.suppressed(Suppressed::RateCap), 2);
    }

    #[test]
    fn held_set_is_bounded() {
        let mut l = Limiter::new(1);
        let d = night_in_new_york();
        let a = alert(Severity::Minor, None, NIGHT);
        assert!(matches!(l.decide(&a, "t", "s1", &d, "en", Timestamp(NIGHT)), Verdict::Defer(_)));
        assert_eq!(l.decide(&a, "t", "s2", &d, "en", Timestamp(NIGHT)), Verdict::Drop(Suppressed::DeferredOverflow));
    }

    proptest::proptest! {
        /// Whatever the window, zone and time, a held notification's release instant is
        /// after now and at most a day away, and outside the window.
        #[test]
        fn quiet_until_is_after_now_within_a_day_and_outside_the_window(
            start in 0u16..1440, end in 0u16..1440, at in 0i64..(366 * 24 * 60),
            zone in proptest::sample::select(vec!["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]),
        ) {
            let q = QuietHours { start_minute: start, end_minute: end, time_zone: zone.into() };
            let now = Timestamp(DAY + at * MIN);
            if let Some(until) = quiet_until(&q, now) {
                proptest::prop_assert!(until.0 > now.0 && until.0 <= now.0 + 25 * HOUR_MS, "{:?} -> {:?}", now, until);
                proptest::prop_assert_eq!(quiet_until(&q, until), None);
            }
        }
    }
}
