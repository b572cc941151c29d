//! policy: decides what may alert and strips personal data. Nothing it emits may contain a
//! name, phone number, medical detail, unit count, street address, source free text or the
//! precise incident point: an [`Alert`] has no field that could hold them, the headline is
//! built from a template, and the location is coarsened to an H3 cell. Every decision, for
//! or against, is written to the audit topic with the rule that made it.

mod config;
pub mod redact;

pub use config::{
    PolicyConfig, PolicyConfigError, PolygonLoader, Region, Rules, TenantRules, TimeoutAction, valid_language_tag,
};

use hexcast_core::{
    Alert, AlertText, Area, Decision, EventKind, HeldAlert, IncidentEvent, IntoRecord, LatLng, OutRecord,
    PolicyDecision, ReasonCode, Severity, Stage, StageCtx, Timestamp,
};

/// What policy emits.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyOut {
    /// An alert for the spatial stage.
    Alert(Alert),
    /// An alert held for a reviewer (the `review` topic).
    Held(HeldAlert),
    /// An audit record.
    Decision(PolicyDecision),
}

impl IntoRecord for PolicyOut {
    fn into_record(self) -> OutRecord {
        match self {
            PolicyOut::Alert(a) => a.into_record(),
            PolicyOut::Held(h) => h.into_record(),
            PolicyOut::Decision(d) => d.into_record(),
        }
    }
}

/// Policy never rejects an input as malformed: every event gets a decision.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub enum PolicyError {}

impl ReasonCode for PolicyError {
    fn reason_code(&self) -> &'static str {
        match *self {}
    }
}

/// The policy stage.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
}

/// Why an event may alert: the rule, and the attributes a subscriber needs (private
/// incidents only).
struct Verdict {
    rule: &'static str,
    attributes: Vec<String>,
}

impl Policy {
    /// A policy stage with a validated configuration.
    pub fn new(cfg: PolicyConfig) -> Self {
        Self { cfg }
    }

    /// The configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Decides under `rules`; `Err((rule, reason))` when the event may not alert.
    fn decide(
        &self,
        rules: &Rules,
        event: &IncidentEvent,
        now: Timestamp,
    ) -> Result<Verdict, (&'static str, &'static str)> {
        let i = &event.incident;
        // A close is the all-clear of an alert already sent: it reaches that alert's
        // recipients of record whatever its age or severity now, under the same category
        // rules (an incident that could not alert has no recipients to tell).
        let close = event.kind == EventKind::Close;
        if rules.deny.iter().any(|p| i.category.matches_prefix(p)) {
            return Err(("deny_categories", "category_denied"));
        }
        if !rules.allow.iter().any(|p| i.category.matches_prefix(p)) {
            return Err(("allow_categories", "category_not_allowed"));
        }
        if !close && now.millis_since(i.occurred_at) > (rules.max_age_secs as i64).saturating_mul(1000) {
            return Err(("max_age", "too_old"));
        }
        if !close && rules.min_severity != Severity::Unspecified && i.severity < rules.min_severity {
            return Err(("min_severity", "below_min_severity"));
        }
        // A feed that says nothing does not make an incident public: the category decides.
        let community = i.community_threat.unwrap_or_else(|| self.cfg.community_threat_for(i.category));
        if !community {
            // One household's emergency: only subscribers who can help, if anyone.
            return match self.cfg.attributes_for(i.category) {
                Some(attrs) => Ok(Verdict { rule: "community_at_large", attributes: attrs.to_vec() }),
                None => Err(("community_at_large", "not_community_threat")),
            };
        }
        Ok(Verdict { rule: "allow_categories", attributes: Vec::new() })
    }

    /// The area to notify, centered on the coarse cell rather than the precise point. The
    /// radius grows by the distance from the cell's centroid to the point, so everyone
    /// inside the intended circle is still covered.
    fn target(&self, rules: &Rules, event: &IncidentEvent) -> Option<Area> {
        let i = &event.incident;
        if let Some(area) = i.areas.iter().find(|a| !matches!(a, Area::Point(_))) {
            return Some(area.clone());
        }
        let point = i.location?;
        let snap = point.cell(self.cfg.target_resolution);
        let c = h3o::LatLng::from(snap);
        let center = LatLng::new(c.lat(), c.lng()).ok()?;
        let radius = rules.radius_for(i.category) + center.distance_m(point);
        Area::circle(center, radius.ceil()).ok()
    }
}

impl Stage for Policy {
    type In = IncidentEvent;
    type Out = PolicyOut;
    type Reject = PolicyError;

    fn name(&self) -> &'static str {
        "policy"
    }

    fn process(&mut self, event: IncidentEvent, ctx: &StageCtx, out: &mut Vec<PolicyOut>) -> Result<(), PolicyError> {
        let i = &event.incident;
        let (rules, region) = self.cfg.rules_at(i.location);
        let scoped = |rule: &str| region.map_or_else(|| rule.to_owned(), |r| format!("region:{r}.{rule}"));
        let mut decision = PolicyDecision {
            incident_id: i.id.clone(),
            decision: Decision::Rejected,
            rule: String::new(),
            reason: "",
            category: i.category,
            decided_at: ctx.now,
            alert_id: None,
            reviewer: None,
            note: String::new(),
        };
        // The target and coarse cell only for events that may alert: most do not.
        let verdict = self.decide(rules, &event, ctx.now);
        let target = match &verdict {
            Err(_) => None,
            Ok(_) => self.target(rules, &event).and_then(|t| {
                let coarse = match i.location {
                    Some(p) => Some(p.cell(self.cfg.coarse_resolution)),
                    None => hexcast_core::cells::cover(&t, self.cfg.coarse_resolution, 1_000_000)
                        .ok()
                        .and_then(|c| c.first().copied()),
                };
                coarse.map(|c| (t, c))
            }),
        };
        match (verdict, target) {
            (Err((rule, reason)), _) => {
                decision.rule = scoped(rule);
                decision.reason = reason;
            }
            (Ok(_), None) => {
                decision.rule = scoped("target_area");
                decision.reason = "no_location";
            }
            (Ok(verdict), Some((target, coarse_cell))) => {
                let alert_id = format!("{}@{}", i.id, i.version);
                let place = redact::place(&i.sensitive.address, &i.sensitive.names);
                let language = self.cfg.default_language().to_owned();
                let (headline, body) = redact::render_in(
                    &language,
                    &self.cfg.template_for(i.category),
                    event.kind,
                    i.category,
                    &place,
                    i.occurred_at,
                );
                // The other languages, each from its own template (never the source's text).
                let texts = self.cfg.languages[1..]
                    .iter()
                    .filter_map(|l| {
                        let t = self.cfg.template_in(i.category, l)?;
                        let (headline, body) = redact::render_in(l, &t, event.kind, i.category, &place, i.occurred_at);
                        Some(AlertText { language: l.clone(), headline, body })
                    })
                    .collect();
                let excluded_tenants = self
                    .cfg
                    .tenants
                    .iter()
                    .filter(|t| self.decide(&t.rules, &event, ctx.now).is_err())
                    .map(|t| t.tenant.clone())
                    .collect();
                let alert =
                    Alert {
                        alert_id: alert_id.clone(),
                        incident_id: i.id.clone(),
                        kind: event.kind,
                        category: i.category,
                        severity: i.severity,
                        urgency: i.urgency,
                        headline,
                        body,
                        place,
                        coarse_cell,
                        target,
                        occurred_at: i.occurred_at,
                        issued_at: ctx.now,
                        // The feed's expiry (CAP `expires`), else the category's lifetime; a
                        // close ends the alert now.
                        expires_at: Some(match (event.kind, i.expires_at) {
                            (EventKind::Close, _) => ctx.now,
                            (_, Some(t)) => t,
                            (_, None) => Timestamp(ctx.now.0.saturating_add(
                                (self.cfg.expires_after_secs_for(i.category) as i64).saturating_mul(1000),
                            )),
                        }),
                        required_attributes: verdict.attributes,
                        excluded_tenants,
                        rule: scoped(verdict.rule),
                        published_at: i.published_at,
                        language,
                        texts,
                    };
                decision.alert_id = Some(alert_id);
                if rules.holds(i.category) && event.kind != EventKind::Close {
                    let timeout_ms = (self.cfg.hold_timeout_secs as i64).saturating_mul(1000);
                    decision.decision = Decision::Held;
                    decision.rule = scoped("hold");
                    decision.reason = "held_for_review";
                    out.push(PolicyOut::Held(HeldAlert {
                        alert,
                        held_at: ctx.now,
                        deadline: Timestamp(ctx.now.0.saturating_add(timeout_ms)),
                        release_on_timeout: self.cfg.hold_timeout_action == TimeoutAction::Release,
                        rule: scoped("hold"),
                    }));
                } else {
                    decision.decision = Decision::Allowed;
                    decision.rule = scoped(verdict.rule);
                    decision.reason = "allowed";
                    out.push(PolicyOut::Alert(alert));
                }
            }
        }
        // Labels are bounded: three outcomes, and the rules of the policy file. A batch the
        // runner retries counts again: the audit topic is the exact record.
        let outcome = match decision.decision {
            Decision::Allowed => "allowed",
            Decision::Held => "held",
            _ => "rejected",
        };
        metrics::counter!("hexcast_policy_decisions_total", "decision" => outcome, "rule" => decision.rule.clone())
            .increment(1);
        out.push(PolicyOut::Decision(decision));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::{Category, Certainty, Incident, IncidentStatus, Sensitive, Timestamp, Urgency};

    const NOW: Timestamp = Timestamp(1_700_000_000_000);

    fn event(category: &str, age_ms: i64) -> IncidentEvent {
        let incident = Incident {
            id: "pd:9".into(),
            source: "pd".into(),
            source_id: "9".into(),
            version: 1,
            category: Category::parse(category).expect("known"),
            raw_type: "ARMED ROBBERY AT 12 ELM ST".into(),
            severity: Severity::Severe,
            urgency: Urgency::Immediate,
            certainty: Certainty::Observed,
            status: IncidentStatus::Active,
            occurred_at: Timestamp(NOW.0 - age_ms),
            updated_at: Timestamp(NOW.0 - age_ms),
            expires_at: None,
            location: Some(LatLng::new(40.123_456, -75.345_678).expect("valid")),
            areas: vec![],
            sensitive: Sensitive {
                names: vec!["Jane Q Public".into()],
                phones: vec!["215-555-0199".into()],
                medical_notes: vec!["diabetic".into()],
                unit_count: 4,
                address: "12 ELM ST".into(),
                free_text: "caller Jane says suspect fled".into(),
                texts: Vec::new(),
            },
            references: None,
            community_threat: Some(true),
            published_at: None,
        };
        IncidentEvent { kind: EventKind::New, incident, merged_ids: vec![] }
    }

    fn run(e: IncidentEvent) -> Vec<PolicyOut> {
        let mut out = Vec::new();
        Policy::new(PolicyConfig::seed()).process(e, &StageCtx::at(NOW), &mut out).expect("total");
        out
    }

    #[test]
    fn allowed_category_emits_alert_and_audit() {
        let out = run(event("crime.robbery", 60_000));
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], PolicyOut::Alert(a) if a.alert_id == "pd:9@1"));
        assert!(matches!(&out[1], PolicyOut::Decision(d) if d.decision == Decision::Allowed));
    }

    #[test]
    fn denied_and_stale_incidents_are_audited_not_alerted() {
        for (cat, age, reason) in [
            ("crime.assault", 0, "category_denied"),
            ("public.death_investigation", 0, "category_denied"),
            ("weather.storm", 0, "category_not_allowed"),
            ("traffic.collision", 0, "category_denied"),
            ("crime.robbery", 3_601_000, "too_old"),
        ] {
            let out = run(event(cat, age));
            assert_eq!(out.len(), 1, "{cat}");
            assert!(
                matches!(&out[0], PolicyOut::Decision(d) if d.reason == reason && d.decision == Decision::Rejected),
                "{cat}"
            );
        }
    }

    #[test]
    fn alert_carries_no_personal_data_and_no_precise_point() {
        let out = run(event("crime.robbery", 0));
        let PolicyOut::Alert(alert) = &out[0] else { panic!("expected an alert") };
        let OutRecord { payload, .. } = alert.clone().into_record();
        let bytes = payload.expect("payload");
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["Jane", "215-555", "diabetic", "12 ELM", "fled"] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
        assert_eq!(alert.place, "0 block of ELM ST");
        let Area::Circle { center, radius_m } = alert.target else { panic!("circle") };
        let point = LatLng::new(40.123_456, -75.345_678).expect("valid");
        assert!(center != point, "precise point leaked");
        // The whole intended circle is inside the target.
        assert!(center.distance_m(point) + PolicyConfig::seed().radius_for(alert.category) <= radius_m);
    }

    #[test]
    fn expiry_is_the_feeds_else_the_categorys_lifetime_and_a_close_ends_it_now() {
        let cfg = PolicyConfig::parse(
            "allow = [\"crime\"]\ndefault_expires_after_secs = 600\n[expires_after_secs]\n\"crime.robbery\" = 7200\n",
            "p.toml",
        )
        .expect("valid");
        let alert_of = |out: Vec<PolicyOut>| match out.into_iter().next() {
            Some(PolicyOut::Alert(a)) => a,
            other => panic!("expected an alert, got {other:?}"),
        };
        let robbery = alert_of(run_with(cfg.clone(), event("crime.robbery", 0), NOW));
        assert_eq!(robbery.expires_at, Some(Timestamp(NOW.0 + 7_200_000)));
        let burglary = alert_of(run_with(cfg.clone(), event("crime.burglary", 0), NOW));
        assert_eq!(burglary.expires_at, Some(Timestamp(NOW.0 + 600_000)));
        let mut cap = event("crime.robbery", 0);
        cap.incident.expires_at = Some(Timestamp(NOW.0 + 5_000));
        assert_eq!(alert_of(run_with(cfg.clone(), cap, NOW)).expires_at, Some(Timestamp(NOW.0 + 5_000)));
        // A close, hours later and below any severity floor, still alerts: its all-clear
        // expires at once.
        let mut close = event("crime.robbery", 5 * 3_600_000);
        close.kind = EventKind::Close;
        close.incident.severity = Severity::Minor;
        let a = alert_of(run_with(cfg.clone(), close.clone(), NOW));
        assert_eq!((a.kind, a.expires_at), (EventKind::Close, Some(NOW)));
        // ...but not for a category that may never alert.
        close.incident.category = hexcast_core::Category::parse("weather.storm").expect("known");
        assert!(!run_with(cfg, close, NOW).iter().any(|o| matches!(o, PolicyOut::Alert(_))));
        for bad in ["default_expires_after_secs = 0", "[expires_after_secs]\n\"nope\" = 5"] {
            assert!(PolicyConfig::parse(&format!("allow = [\"crime\"]\n{bad}\n"), "p.toml").is_err(), "{bad}");
        }
    }

    fn run_with(cfg: PolicyConfig, e: IncidentEvent, now: Timestamp) -> Vec<PolicyOut> {
        let mut out = Vec::new();
        Policy::new(cfg).process(e, &StageCtx::at(now), &mut out).expect("total");
        out
    }

    #[test]
    fn held_categories_go_to_review_not_alerts() {
        let out = run(event("crime.hostage", 0));
        assert_eq!(out.len(), 2);
        let PolicyOut::Held(h) = &out[0] else { panic!("expected a held alert: {out:?}") };
        assert_eq!(h.deadline.0 - h.held_at.0, 900_000);
        assert!(!h.release_on_timeout);
        assert!(matches!(&out[1], PolicyOut::Decision(d) if d.decision == Decision::Held && d.rule == "hold"));
    }

    #[test]
    fn private_cardiac_arrest_alerts_only_cpr_trained_and_other_private_calls_do_not_alert() {
        let mut e = event("medical.cardiac_arrest", 0);
        e.incident.community_threat = Some(false);
        let out = run(e);
        let PolicyOut::Alert(a) = &out[0] else { panic!("expected an alert") };
        assert_eq!(a.required_attributes, vec!["cpr_trained".to_owned()]);
        let mut e = event("crime.robbery", 0);
        e.incident.community_threat = Some(false);
        let out = run(e);
        assert!(matches!(&out[..], [PolicyOut::Decision(d)] if d.reason == "not_community_threat"));
    }

    /// A `cad-json` cardiac arrest whose feed does not say whether it threatens the
    /// community reaches only CPR-trained subscribers, as the same call through a mapping
    /// does; only a feed that says `community_threat: true` makes it public.
    #[test]
    fn cad_json_cardiac_arrest_without_community_threat_is_private() {
        use hexcast_ingest::{Ingest, RawIncident};
        let alert_of = |extra: &str| {
            let payload = format!(
                r#"{{"source":"pd","id":"77","call_type":"CARDIAC ARREST","category":"medical.cardiac_arrest",
                "lat":40.12,"lng":-75.34,"occurred_at":{}{extra}}}"#,
                NOW.0 - 1_000
            );
            let raw = RawIncident { format: "cad-json".into(), source: None, payload: payload.into_bytes() };
            let mut incidents = Vec::new();
            Ingest::default().process(raw, &StageCtx::at(NOW), &mut incidents).expect("valid");
            let incident = incidents.pop().and_then(hexcast_ingest::IngestOut::incident).expect("one incident");
            let out = run(IncidentEvent { kind: EventKind::New, incident, merged_ids: vec![] });
            match &out[0] {
                PolicyOut::Alert(a) => a.required_attributes.clone(),
                other => panic!("expected an alert: {other:?}"),
            }
        };
        assert_eq!(alert_of(""), vec!["cpr_trained".to_owned()], "absent field: private");
        assert_eq!(alert_of(r#","community_threat":false"#), vec!["cpr_trained".to_owned()]);
        assert!(alert_of(r#","community_threat":true"#).is_empty(), "the feed says public");
    }

    #[test]
    fn region_and_tenant_overrides_apply_and_are_named_in_the_audit() {
        let at = LatLng::new(40.123_456, -75.345_678).expect("valid");
        let text = format!(
            "allow = [\"crime\"]\n[[region]]\nname = \"north\"\ncells = [\"{}\"]\ndeny = [\"crime.robbery\"]\n[tenant.strict]\nmin_severity = \"extreme\"\n",
            at.cell(h3o::Resolution::Six)
        );
        let cfg = PolicyConfig::parse(&text, "p").expect("valid");
        let out = run_with(cfg.clone(), event("crime.robbery", 0), NOW);
        assert!(matches!(&out[..], [PolicyOut::Decision(d)] if d.rule == "region:north.deny_categories"), "{out:?}");
        let out = run_with(cfg, event("crime.burglary", 0), NOW);
        let PolicyOut::Alert(a) = &out[0] else { panic!("expected an alert") };
        assert_eq!(a.excluded_tenants, vec!["strict".to_owned()]);
        assert_eq!(a.rule, "region:north.allow_categories");
    }

    #[test]
    fn policy_is_deterministic() {
        let a = run(event("crime.robbery", 1000));
        let b = run(event("crime.robbery", 1000));
        assert_eq!(a, b);
    }

    fn digits_of(s: &str) -> Vec<String> {
        s.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(str::to_owned).collect()
    }

    proptest::proptest! {
        /// Whatever personal data the incident carries, the alert (every text field, the
        /// whole encoded record) holds none of it: no name word, no phone digits, no medical
        /// note, no house number other than as its hundred block, no raw point.
        #[test]
        fn redaction_never_lets_sensitive_content_through(
            first in "[A-Z][a-z]{3,8}",
            last in "[A-Z][a-z]{3,8}",
            phone in "[2-9][0-9]{2}-[0-9]{3}-[0-9]{4}",
            house in 1u32..99_999,
            street in "(OAK|ELM|PINE|MAPLE|CEDAR) (ST|AVE|RD)",
            note in "(diabetic|seizure|overdose|pregnant) [a-z]{4,10}",
            lat in 39.0f64..41.0,
            lng in -76.0f64..-74.0,
            with_name_in_address in proptest::bool::ANY,
        ) {
            let mut e = event("crime.robbery", 0);
            let point = LatLng::new(lat, lng).expect("valid");
            e.incident.location = Some(point);
            let name = format!("{first} {last}");
            e.incident.sensitive = Sensitive {
                names: vec![name.clone()],
                phones: vec![phone.clone()],
                medical_notes: vec![note.clone()],
                unit_count: 7,
                address: if with_name_in_address {
                    format!("{house} {street} APT {phone}, {last} RESIDENCE, 19401")
                } else {
                    format!("{house} {street}, NORRISTOWN, 19401")
                },
                free_text: format!("caller {name} at {phone} reports {note}"),
                texts: Vec::new(),
            };
            let out = run(e);
            let PolicyOut::Alert(alert) = &out[0] else { panic!("expected an alert") };
            let texts = format!("{} | {} | {}", alert.headline, alert.body, alert.place);
            let bytes = alert.clone().into_record().payload.expect("payload");
            let raw = String::from_utf8_lossy(&bytes).into_owned();
            for hay in [&texts, &raw] {
                proptest::prop_assert!(!hay.contains(&first) && !hay.contains(&last), "name in {hay}");
                proptest::prop_assert!(!hay.contains(&phone[4..]), "phone in {hay}");
                proptest::prop_assert!(!hay.contains(&note), "note in {hay}");
            }
            proptest::prop_assert!(alert.headline.chars().count() <= redact::MAX_HEADLINE_CHARS);
            proptest::prop_assert!(alert.body.chars().count() <= redact::MAX_BODY_CHARS);
            // The only number in the text is the hundred block, the ZIP or the time.
            let block = (house / 100 * 100).to_string();
            for d in digits_of(&texts) {
                proptest::prop_assert!(
                    d != house.to_string() || d == block,
                    "house number {house} in {texts}"
                );
                proptest::prop_assert!(!phone.contains(&d) || d.len() < 3 || d == block || d == "19401", "phone digits {d} in {texts}");
            }
            // The raw point is not in the alert: its coarse location is a resolution-8 cell.
            let pb = hexcast_proto::v1::Alert::from(alert);
            let c = pb.coarse_location.expect("coarse");
            proptest::prop_assert!(c.lat != lat || c.lng != lng);
            proptest::prop_assert_eq!(alert.coarse_cell.resolution(), h3o::Resolution::Eight);
            let Area::Circle { center, .. } = &alert.target else { panic!("circle") };
            proptest::prop_assert!(*center != point, "target centered on the raw point");
        }
    }
}
