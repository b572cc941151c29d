//! policy: decides what may alert and strips personal data. Nothing it emits may contain a
//! name, phone number, medical detail, unit count, street address, source free text or the
//! precise incident point: an [`Alert`] has no field that could hold them, the headline is
//! built from a template, and the location is coarsened to an H3 cell. Every decision, for
//! or against, is written to the audit topic with the rule that made it.

mod config;

pub use config::{PolicyConfig, PolicyConfigError};

use hexcast_core::taxonomy::CATEGORIES;
use hexcast_core::{
    Alert, Area, Decision, EventKind, IncidentEvent, IntoRecord, LatLng, OutRecord, PolicyDecision, ReasonCode,
    Severity, Stage, StageCtx,
};

/// What policy emits.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyOut {
    /// An alert for the spatial stage.
    Alert(Alert),
    /// An audit record.
    Decision(PolicyDecision),
}

impl IntoRecord for PolicyOut {
    fn into_record(self) -> OutRecord {
        match self {
            PolicyOut::Alert(a) => a.into_record(),
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

impl Policy {
    /// A policy stage with a validated configuration.
    pub fn new(cfg: PolicyConfig) -> Self {
        Self { cfg }
    }

    /// The headline for a category, from the taxonomy description: never source text.
    fn headline(kind: EventKind, category: hexcast_core::Category) -> String {
        let desc = CATEGORIES.iter().find(|(p, _)| *p == category.as_str()).map_or("incident", |(_, d)| d);
        let mut chars = desc.chars();
        let desc = chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default();
        match kind {
            EventKind::Update => format!("Update: {desc} reported nearby"),
            _ => format!("{desc} reported nearby"),
        }
    }

    /// Decides; `Err((rule, reason))` when the event may not alert.
    fn decide(&self, event: &IncidentEvent, ctx: &StageCtx) -> Result<&'static str, (&'static str, &'static str)> {
        let i = &event.incident;
        if event.kind == EventKind::Close {
            return Err(("lifecycle", "closed"));
        }
        if self.cfg.deny.iter().any(|p| i.category.matches_prefix(p)) {
            return Err(("deny_categories", "category_denied"));
        }
        if !self.cfg.allow.iter().any(|p| i.category.matches_prefix(p)) {
            return Err(("allow_categories", "category_not_allowed"));
        }
        if ctx.now.millis_since(i.occurred_at) > (self.cfg.max_age_secs as i64).saturating_mul(1000) {
            return Err(("max_age", "too_old"));
        }
        if self.cfg.min_severity != Severity::Unspecified && i.severity < self.cfg.min_severity {
            return Err(("min_severity", "below_min_severity"));
        }
        if !i.community_threat {
            return Err(("community_at_large", "not_community_threat"));
        }
        Ok("allow_categories")
    }

    /// The area to notify, centered on the coarse cell rather than the precise point. The
    /// radius grows by the distance from the cell's centroid to the point, so everyone
    /// inside the intended circle is still covered.
    fn target(&self, event: &IncidentEvent) -> Option<Area> {
        let i = &event.incident;
        if let Some(area) = i.areas.iter().find(|a| !matches!(a, Area::Point(_))) {
            return Some(area.clone());
        }
        let point = i.location?;
        let snap = point.cell(self.cfg.target_resolution);
        let c = h3o::LatLng::from(snap);
        let center = LatLng::new(c.lat(), c.lng()).ok()?;
        let radius = self.cfg.radius_for(i.category) + center.distance_m(point);
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
        let mut decision = PolicyDecision {
            incident_id: i.id.clone(),
            decision: Decision::Rejected,
            rule: String::new(),
            reason: "",
            category: i.category,
            decided_at: ctx.now,
            alert_id: None,
            reviewer: None,
        };
        let target = self.target(&event).and_then(|t| {
            let coarse = match i.location {
                Some(p) => Some(p.cell(self.cfg.coarse_resolution)),
                None => hexcast_core::cells::cover(&t, self.cfg.coarse_resolution, 1_000_000)
                    .ok()
                    .and_then(|c| c.first().copied()),
            };
            coarse.map(|c| (t, c))
        });
        match (self.decide(&event, ctx), target) {
            (Err((rule, reason)), _) => {
                decision.rule = rule.to_owned();
                decision.reason = reason;
            }
            (Ok(_), None) => {
                decision.rule = "target_area".to_owned();
                decision.reason = "no_location";
            }
            (Ok(rule), Some((target, coarse_cell))) => {
                let alert_id = format!("{}@{}", i.id, i.version);
                out.push(PolicyOut::Alert(Alert {
                    alert_id: alert_id.clone(),
                    incident_id: i.id.clone(),
                    kind: event.kind,
                    category: i.category,
                    severity: i.severity,
                    urgency: i.urgency,
                    headline: Self::headline(event.kind, i.category),
                    coarse_cell,
                    target,
                    occurred_at: i.occurred_at,
                    issued_at: ctx.now,
                    expires_at: i.expires_at,
                    required_attributes: Vec::new(),
                    rule: rule.to_owned(),
                    published_at: i.published_at,
                }));
                decision.decision = Decision::Allowed;
                decision.rule = rule.to_owned();
                decision.reason = "allowed";
                decision.alert_id = Some(alert_id);
            }
        }
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
            },
            references: None,
            community_threat: true,
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
            ("traffic.collision", 0, "category_not_allowed"),
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
        for secret in ["Jane", "215-555", "diabetic", "ELM", "fled"] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
        let Area::Circle { center, radius_m } = alert.target else { panic!("circle") };
        let point = LatLng::new(40.123_456, -75.345_678).expect("valid");
        assert!(center != point, "precise point leaked");
        // The whole intended circle is inside the target.
        assert!(center.distance_m(point) + PolicyConfig::seed().radius_for(alert.category) <= radius_m);
    }
}
