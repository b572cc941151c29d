//! The domain model: what flows between stages, validated. Conversions to and from the
//! protobuf wire types happen here and only here, so a stage can rely on every field being
//! present and in range (a category from the taxonomy, coordinates that are real, ids that
//! are not empty).

use h3o::CellIndex;
use hexcast_proto::v1 as pb;

use crate::geo::{Area, GeoError, LatLng};
use crate::record::{DecodeError, FromRecord, InRecord, IntoRecord, OutRecord, Topic, decode_proto};
use crate::taxonomy::{Category, UnknownCategory};
use crate::time::Timestamp;
use crate::{Certainty, Decision, IncidentStatus, Severity, Urgency};

/// Why a wire message is not a valid domain value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeModelError {
    /// A required field is missing or empty.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A geometry is invalid.
    #[error("invalid `{field}`: {source}")]
    Geo { field: &'static str, source: GeoError },
    /// The category is not in the taxonomy.
    #[error(transparent)]
    Category(#[from] UnknownCategory),
    /// An enum value this version does not know.
    #[error("unknown value {value} for `{field}`")]
    UnknownEnum { field: &'static str, value: i32 },
    /// A number outside its range.
    #[error("value {value} out of range for `{field}`")]
    OutOfRange { field: &'static str, value: i64 },
}

fn geo_err(field: &'static str) -> impl FnOnce(GeoError) -> DecodeModelError {
    move |source| DecodeModelError::Geo { field, source }
}

fn non_empty(s: String, field: &'static str) -> Result<String, DecodeModelError> {
    if s.is_empty() { Err(DecodeModelError::Missing(field)) } else { Ok(s) }
}

fn opt_ts(ms: i64) -> Option<Timestamp> {
    (ms != 0).then_some(Timestamp(ms))
}

fn enum_of<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E, DecodeModelError> {
    E::try_from(value).map_err(|_| DecodeModelError::UnknownEnum { field, value })
}

/// Personal and operational data. Only ingest and dedup may hold it; policy never copies it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sensitive {
    /// Names of persons.
    pub names: Vec<String>,
    /// Phone numbers.
    pub phones: Vec<String>,
    /// Medical details.
    pub medical_notes: Vec<String>,
    /// Units dispatched.
    pub unit_count: u32,
    /// Precise street address.
    pub address: String,
    /// Source free text.
    pub free_text: String,
    /// The source's texts per language (CAP: one `<info>` block per language); `free_text`
    /// holds the first. Empty when the source has one untagged text.
    pub texts: Vec<LocalizedText>,
}

/// One language's text of an incident, as the source wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalizedText {
    /// Language tag as the source gives it (`en-US`, `fr-CA`).
    pub language: String,
    /// Short headline.
    pub headline: String,
    /// Description of the event.
    pub description: String,
    /// Recommended action.
    pub instruction: String,
}

impl From<&LocalizedText> for pb::LocalizedText {
    fn from(t: &LocalizedText) -> Self {
        pb::LocalizedText {
            language: t.language.clone(),
            headline: t.headline.clone(),
            description: t.description.clone(),
            instruction: t.instruction.clone(),
        }
    }
}

impl From<pb::LocalizedText> for LocalizedText {
    fn from(t: pb::LocalizedText) -> Self {
        LocalizedText {
            language: t.language,
            headline: t.headline,
            description: t.description,
            instruction: t.instruction,
        }
    }
}

/// A canonical incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// `<source>:<source_id>`, or a merged id chosen by dedup.
    pub id: String,
    /// Producer identity.
    pub source: String,
    /// The source's own id.
    pub source_id: String,
    /// Monotonic version at the source.
    pub version: i64,
    /// Canonical category.
    pub category: Category,
    /// The feed's own call type.
    pub raw_type: String,
    /// Severity.
    pub severity: Severity,
    /// Urgency.
    pub urgency: Urgency,
    /// Certainty.
    pub certainty: Certainty,
    /// Status at the source.
    pub status: IncidentStatus,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// When the source last changed it.
    pub updated_at: Timestamp,
    /// When it stops being relevant.
    pub expires_at: Option<Timestamp>,
    /// Precise location, when the source gives a point.
    pub location: Option<LatLng>,
    /// Areas given by the source.
    pub areas: Vec<Area>,
    /// Personal data.
    pub sensitive: Sensitive,
    /// Source id this one updates or cancels.
    pub references: Option<String>,
    /// Whether it threatens the community at large, when the feed says so; `None`: the
    /// policy decides by category (never "public" merely because the field is absent).
    pub community_threat: Option<bool>,
    /// When the raw record was published.
    pub published_at: Option<Timestamp>,
}

impl Incident {
    /// The canonical id for a source and its own id.
    pub fn make_id(source: &str, source_id: &str) -> String {
        format!("{source}:{source_id}")
    }

    /// Whether the source has closed or cancelled it.
    pub fn is_closed(&self) -> bool {
        matches!(self.status, IncidentStatus::Closed | IncidentStatus::Cancelled)
    }
}

impl From<&Sensitive> for pb::SensitiveData {
    fn from(s: &Sensitive) -> Self {
        pb::SensitiveData {
            names: s.names.clone(),
            phones: s.phones.clone(),
            medical_notes: s.medical_notes.clone(),
            unit_count: s.unit_count,
            address: s.address.clone(),
            free_text: s.free_text.clone(),
            texts: s.texts.iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::SensitiveData> for Sensitive {
    fn from(s: pb::SensitiveData) -> Self {
        Sensitive {
            names: s.names,
            phones: s.phones,
            medical_notes: s.medical_notes,
            unit_count: s.unit_count,
            address: s.address,
            free_text: s.free_text,
            texts: s.texts.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<&Incident> for pb::Incident {
    fn from(i: &Incident) -> Self {
        pb::Incident {
            id: i.id.clone(),
            source: i.source.clone(),
            source_id: i.source_id.clone(),
            version: i.version,
            category: i.category.as_str().to_owned(),
            raw_type: i.raw_type.clone(),
            severity: i.severity as i32,
            urgency: i.urgency as i32,
            certainty: i.certainty as i32,
            status: i.status as i32,
            occurred_at_ms: i.occurred_at.0,
            updated_at_ms: i.updated_at.0,
            expires_at_ms: i.expires_at.map_or(0, |t| t.0),
            location: i.location.map(Into::into),
            areas: i.areas.iter().map(Into::into).collect(),
            sensitive: Some((&i.sensitive).into()),
            references: i.references.clone().unwrap_or_default(),
            community_threat: i.community_threat,
            published_at_ms: i.published_at.map_or(0, |t| t.0),
        }
    }
}

impl TryFrom<pb::Incident> for Incident {
    type Error = DecodeModelError;
    fn try_from(p: pb::Incident) -> Result<Self, Self::Error> {
        let location = p.location.as_ref().map(LatLng::try_from).transpose().map_err(geo_err("location"))?;
        let areas = p.areas.iter().map(Area::try_from).collect::<Result<Vec<_>, _>>().map_err(geo_err("areas"))?;
        // A close may carry only the id (a CAD state feed's removal event): dedup gives it
        // the location it remembers. Anything open must say where it is.
        let closed =
            matches!(IncidentStatus::try_from(p.status), Ok(IncidentStatus::Closed | IncidentStatus::Cancelled));
        if location.is_none() && areas.is_empty() && !closed {
            return Err(DecodeModelError::Missing("location"));
        }
        Ok(Incident {
            id: non_empty(p.id, "id")?,
            source: non_empty(p.source, "source")?,
            source_id: non_empty(p.source_id, "source_id")?,
            version: p.version,
            category: Category::parse(&p.category)?,
            raw_type: p.raw_type,
            severity: enum_of("severity", p.severity)?,
            urgency: enum_of("urgency", p.urgency)?,
            certainty: enum_of("certainty", p.certainty)?,
            status: enum_of("status", p.status)?,
            occurred_at: Timestamp(p.occurred_at_ms),
            updated_at: Timestamp(p.updated_at_ms),
            expires_at: opt_ts(p.expires_at_ms),
            location,
            areas,
            sensitive: p.sensitive.map(Into::into).unwrap_or_default(),
            references: (!p.references.is_empty()).then_some(p.references),
            community_threat: p.community_threat,
            published_at: opt_ts(p.published_at_ms),
        })
    }
}

impl FromRecord for Incident {
    fn from_record(record: &InRecord) -> Result<Self, DecodeError> {
        decode_proto::<pb::Incident, _>(record)
    }
}

impl IntoRecord for Incident {
    fn into_record(self) -> OutRecord {
        OutRecord::proto(Topic::Normalized, self.id.clone(), &pb::Incident::from(&self), "hexcast.v1.Incident")
    }
}

/// What dedup decided an incident report is.
pub use hexcast_proto::v1::EventKind;

/// One deduplicated incident event.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentEvent {
    /// New, update or close.
    pub kind: EventKind,
    /// The merged incident.
    pub incident: Incident,
    /// Source reports merged so far.
    pub merged_ids: Vec<String>,
}

impl From<&IncidentEvent> for pb::IncidentEvent {
    fn from(e: &IncidentEvent) -> Self {
        pb::IncidentEvent {
            kind: e.kind as i32,
            incident: Some((&e.incident).into()),
            merged_ids: e.merged_ids.clone(),
        }
    }
}

impl TryFrom<pb::IncidentEvent> for IncidentEvent {
    type Error = DecodeModelError;
    fn try_from(p: pb::IncidentEvent) -> Result<Self, Self::Error> {
        let kind: EventKind = enum_of("kind", p.kind)?;
        if kind == EventKind::Unspecified {
            return Err(DecodeModelError::Missing("kind"));
        }
        Ok(IncidentEvent {
            kind,
            incident: p.incident.ok_or(DecodeModelError::Missing("incident"))?.try_into()?,
            merged_ids: p.merged_ids,
        })
    }
}

impl FromRecord for IncidentEvent {
    fn from_record(record: &InRecord) -> Result<Self, DecodeError> {
        decode_proto::<pb::IncidentEvent, _>(record)
    }
}

impl IntoRecord for IncidentEvent {
    fn into_record(self) -> OutRecord {
        OutRecord::proto(
            Topic::Unique,
            self.incident.id.clone(),
            &pb::IncidentEvent::from(&self),
            "hexcast.v1.IncidentEvent",
        )
    }
}

/// A redacted public alert. Holds no personal data by construction: it has no field that
/// could carry a name, phone, address or source free text.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Stable alert id.
    pub alert_id: String,
    /// Incident it was made from.
    pub incident_id: String,
    /// New, update or close.
    pub kind: EventKind,
    /// Category.
    pub category: Category,
    /// Severity.
    pub severity: Severity,
    /// Urgency.
    pub urgency: Urgency,
    /// Headline from a template (at most 90 characters).
    pub headline: String,
    /// Body from a template (at most 360 characters).
    pub body: String,
    /// Block- or area-level place description.
    pub place: String,
    /// Coarse location cell; its centroid is shown to users.
    pub coarse_cell: CellIndex,
    /// Area to notify.
    pub target: Area,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// When policy issued it.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Option<Timestamp>,
    /// Attributes a subscriber needs to receive it; empty: public.
    pub required_attributes: Vec<String>,
    /// Tenants whose own rules reject it.
    pub excluded_tenants: Vec<String>,
    /// Policy rule that allowed it.
    pub rule: String,
    /// When the raw record was published.
    pub published_at: Option<Timestamp>,
    /// Language of `headline` and `body` (BCP 47); [`DEFAULT_LANGUAGE`] unless the policy
    /// says otherwise.
    pub language: String,
    /// The headline and body in other languages, one per language.
    pub texts: Vec<AlertText>,
}

/// The language of an alert's text when nothing else is said.
pub const DEFAULT_LANGUAGE: &str = "en";

/// One language's headline and body of an alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertText {
    /// BCP 47 tag.
    pub language: String,
    /// Headline (at most 90 characters).
    pub headline: String,
    /// Body (at most 360 characters).
    pub body: String,
}

/// Whether a preferred language tag accepts an available one: equal ignoring case, or the
/// preference is more specific than what is available (`es-MX` accepts `es`).
fn language_accepts(preferred: &str, available: &str) -> bool {
    preferred.eq_ignore_ascii_case(available)
        || preferred
            .get(..available.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(available) && preferred[available.len()..].starts_with('-'))
}

impl Alert {
    /// The language of this alert's texts that a subscriber with these preferences gets:
    /// the first preference the alert has (exactly, or `es` for `es-MX`), else the
    /// alert's default language.
    pub fn language_for(&self, preferred: &[String]) -> &str {
        for p in preferred {
            if language_accepts(p, &self.language) {
                return &self.language;
            }
            if let Some(t) = self.texts.iter().find(|t| t.language.eq_ignore_ascii_case(p)) {
                return &t.language;
            }
            if let Some(t) = self.texts.iter().find(|t| language_accepts(p, &t.language)) {
                return &t.language;
            }
        }
        &self.language
    }

    /// The alert as sent in one language: `headline`, `body` and `language` in that
    /// language (the default when it has none) and no other texts.
    pub fn in_language(&self, language: &str) -> Alert {
        let mut a = Alert { texts: Vec::new(), ..self.clone() };
        if let Some(t) = self.texts.iter().find(|t| t.language == language) {
            a.language = t.language.clone();
            a.headline = t.headline.clone();
            a.body = t.body.clone();
        }
        a
    }
}

impl Alert {
    /// A minimal new alert for a target area: severe, immediate, public, with empty
    /// headline and rule. For benches, tests and offline tools that only need an area.
    pub fn synthetic(alert_id: &str, category: Category, target: Area) -> Alert {
        let coarse_cell = crate::cells::cover(&target, h3o::Resolution::Zero, 1_000)
            .ok()
            .and_then(|c| c.first().copied())
            .unwrap_or_else(|| CellIndex::base_cells().next().unwrap_or_else(|| unreachable!("122 base cells")));
        Alert {
            alert_id: alert_id.to_owned(),
            incident_id: alert_id.split('@').next().unwrap_or(alert_id).to_owned(),
            kind: EventKind::New,
            category,
            severity: Severity::Severe,
            urgency: Urgency::Immediate,
            headline: String::new(),
            body: String::new(),
            place: String::new(),
            coarse_cell,
            target,
            occurred_at: Timestamp(0),
            issued_at: Timestamp(0),
            expires_at: None,
            required_attributes: Vec::new(),
            excluded_tenants: Vec::new(),
            rule: String::new(),
            published_at: None,
            language: DEFAULT_LANGUAGE.to_owned(),
            texts: Vec::new(),
        }
    }
}

/// Largest public cover of a polygon target, in cells before compaction: a larger area is
/// shown at a coarser resolution.
const MAX_PUBLIC_CELLS: usize = 20_000;

impl Alert {
    /// The alert as it may leave hexcast (push streams, exports, agency and reviewer
    /// responses): the same alert with a target that locates the incident no more finely
    /// than its coarse cell. The precise target (a circle around a fine cell near the
    /// call, or the source's polygon) stays on the internal topics and is what matching
    /// uses; subscribers are chosen before this view is taken.
    ///
    /// - A circle, point or disc becomes a circle around the centroid of the coarse cell
    ///   (or, for a circle far larger than that cell, of the coarse cell holding its
    ///   center) whose radius is the original radius plus one and a half circumradii of
    ///   that cell, rounded up to 100 m: it contains the original circle and depends only
    ///   on the coarse cell and the category's radius.
    /// - A polygon becomes the cells at the coarse resolution that touch it (compacted), or
    ///   at a coarser resolution when that cover would exceed 20,000 cells.
    /// - Explicit cells finer than the coarse resolution become their coarse parents.
    pub fn public_view(&self) -> Alert {
        Alert { target: public_target(&self.target, self.coarse_cell), ..self.clone() }
    }
}

fn public_target(target: &Area, coarse: CellIndex) -> Area {
    use crate::cells::{centroid, circumradius_m, cover};
    let res = coarse.resolution();
    let disc = match target {
        Area::Point(p) => Some((*p, 0.0)),
        Area::Circle { center, radius_m } => Some((*center, *radius_m)),
        Area::CellDisc { cell, radius_m } => Some((centroid(*cell), radius_m + circumradius_m(*cell))),
        _ => None,
    };
    if let Some((center, radius_m)) = disc {
        let cell =
            if centroid(coarse).distance_m(center) <= 1.5 * circumradius_m(coarse) { coarse } else { center.cell(res) };
        let grown = ((radius_m + 1.5 * circumradius_m(cell)) / 100.0).ceil() * 100.0;
        if let Ok(circle) = Area::circle(centroid(cell), grown) {
            return circle;
        }
    }
    if let Area::Cells(cells) = target {
        let mut out: Vec<CellIndex> = cells.iter().map(|c| c.parent(res).unwrap_or(*c)).collect();
        out.sort_unstable();
        out.dedup();
        return Area::Cells(out);
    }
    // Polygons, and discs too large for a circle: the cells they touch, as coarse as needed.
    for r in (0..=u8::from(res)).rev() {
        let Ok(r) = h3o::Resolution::try_from(r) else { continue };
        match cover(target, r, MAX_PUBLIC_CELLS) {
            Ok(mut cells) if !cells.is_empty() => {
                let fine = cells.clone();
                return Area::Cells(if CellIndex::compact(&mut cells).is_ok() { cells } else { fine });
            }
            Err(crate::cells::CoverError::TooLarge { .. }) => continue,
            _ => break,
        }
    }
    Area::Cells(vec![coarse])
}

impl From<&Alert> for pb::Alert {
    fn from(a: &Alert) -> Self {
        let centroid = h3o::LatLng::from(a.coarse_cell);
        pb::Alert {
            alert_id: a.alert_id.clone(),
            incident_id: a.incident_id.clone(),
            kind: a.kind as i32,
            category: a.category.as_str().to_owned(),
            severity: a.severity as i32,
            urgency: a.urgency as i32,
            headline: a.headline.clone(),
            coarse_location: Some(pb::LatLng { lat: centroid.lat(), lng: centroid.lng() }),
            coarse_cell: u64::from(a.coarse_cell),
            target: Some((&a.target).into()),
            occurred_at_ms: a.occurred_at.0,
            issued_at_ms: a.issued_at.0,
            expires_at_ms: a.expires_at.map_or(0, |t| t.0),
            required_attributes: a.required_attributes.clone(),
            rule: a.rule.clone(),
            published_at_ms: a.published_at.map_or(0, |t| t.0),
            body: a.body.clone(),
            place: a.place.clone(),
            excluded_tenants: a.excluded_tenants.clone(),
            language: a.language.clone(),
            texts: a
                .texts
                .iter()
                .map(|t| pb::AlertText {
                    language: t.language.clone(),
                    headline: t.headline.clone(),
                    body: t.body.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::Alert> for Alert {
    type Error = DecodeModelError;
    fn try_from(p: pb::Alert) -> Result<Self, Self::Error> {
        let target = p.target.as_ref().ok_or(DecodeModelError::Missing("target"))?;
        Ok(Alert {
            alert_id: non_empty(p.alert_id, "alert_id")?,
            incident_id: non_empty(p.incident_id, "incident_id")?,
            kind: enum_of("kind", p.kind)?,
            category: Category::parse(&p.category)?,
            severity: enum_of("severity", p.severity)?,
            urgency: enum_of("urgency", p.urgency)?,
            headline: p.headline,
            body: p.body,
            place: p.place,
            coarse_cell: CellIndex::try_from(p.coarse_cell).map_err(|_| DecodeModelError::Geo {
                field: "coarse_cell",
                source: GeoError::InvalidCell(p.coarse_cell),
            })?,
            target: Area::try_from(target).map_err(geo_err("target"))?,
            occurred_at: Timestamp(p.occurred_at_ms),
            issued_at: Timestamp(p.issued_at_ms),
            expires_at: opt_ts(p.expires_at_ms),
            required_attributes: p.required_attributes,
            excluded_tenants: p.excluded_tenants,
            rule: p.rule,
            published_at: opt_ts(p.published_at_ms),
            language: if p.language.is_empty() { DEFAULT_LANGUAGE.to_owned() } else { p.language },
            texts: p
                .texts
                .into_iter()
                .map(|t| AlertText { language: t.language, headline: t.headline, body: t.body })
                .collect(),
        })
    }
}

impl FromRecord for Alert {
    fn from_record(record: &InRecord) -> Result<Self, DecodeError> {
        decode_proto::<pb::Alert, _>(record)
    }
}

impl IntoRecord for Alert {
    fn into_record(self) -> OutRecord {
        OutRecord::proto(Topic::Alerts, self.alert_id.clone(), &pb::Alert::from(&self), "hexcast.v1.Alert")
    }
}

/// One policy decision, for the audit topic.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDecision {
    /// Incident decided on.
    pub incident_id: String,
    /// Outcome.
    pub decision: Decision,
    /// Rule that decided.
    pub rule: String,
    /// Reason code.
    pub reason: &'static str,
    /// Category.
    pub category: Category,
    /// When.
    pub decided_at: Timestamp,
    /// Alert id, when allowed.
    pub alert_id: Option<String>,
    /// Reviewer, for human decisions.
    pub reviewer: Option<String>,
    /// The reviewer's own words, for human decisions.
    pub note: String,
}

impl IntoRecord for PolicyDecision {
    fn into_record(self) -> OutRecord {
        let msg = pb::PolicyDecision {
            incident_id: self.incident_id.clone(),
            decision: self.decision as i32,
            rule: self.rule,
            reason: self.reason.to_owned(),
            category: self.category.as_str().to_owned(),
            decided_at_ms: self.decided_at.0,
            alert_id: self.alert_id.unwrap_or_default(),
            reviewer: self.reviewer.unwrap_or_default(),
            note: self.note,
        };
        OutRecord::proto(Topic::Audit, self.incident_id, &msg, "hexcast.v1.PolicyDecision")
    }
}

/// An alert waiting for a reviewer (the `review` topic, keyed by incident id).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldAlert {
    /// The redacted alert, released as is when approved.
    pub alert: Alert,
    /// When policy held it.
    pub held_at: Timestamp,
    /// When the timeout rule applies.
    pub deadline: Timestamp,
    /// Whether the timeout releases it (else it is dropped).
    pub release_on_timeout: bool,
    /// The rule that held it.
    pub rule: String,
}

impl From<&HeldAlert> for pb::HeldAlert {
    fn from(h: &HeldAlert) -> Self {
        pb::HeldAlert {
            alert: Some((&h.alert).into()),
            held_at_ms: h.held_at.0,
            deadline_ms: h.deadline.0,
            on_timeout: if h.release_on_timeout { "release" } else { "drop" }.to_owned(),
            rule: h.rule.clone(),
        }
    }
}

impl TryFrom<pb::HeldAlert> for HeldAlert {
    type Error = DecodeModelError;
    fn try_from(p: pb::HeldAlert) -> Result<Self, Self::Error> {
        let release_on_timeout = match p.on_timeout.as_str() {
            "release" => true,
            "drop" => false,
            _ => return Err(DecodeModelError::Missing("on_timeout")),
        };
        Ok(HeldAlert {
            alert: p.alert.ok_or(DecodeModelError::Missing("alert"))?.try_into()?,
            held_at: Timestamp(p.held_at_ms),
            deadline: Timestamp(p.deadline_ms),
            release_on_timeout,
            rule: p.rule,
        })
    }
}

impl IntoRecord for HeldAlert {
    fn into_record(self) -> OutRecord {
        OutRecord::proto(
            Topic::Review,
            self.alert.incident_id.clone(),
            &pb::HeldAlert::from(&self),
            "hexcast.v1.HeldAlert",
        )
    }
}

/// An alert routed to one shard with its cover cells in that shard.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedAlert {
    /// The alert.
    pub alert: Alert,
    /// This record's shard.
    pub shard: u32,
    /// Every shard the cover touches, ascending.
    pub shards: Vec<u32>,
    /// The geofenced request this record routes, if it is one (see `Requests.Create`).
    pub request: Option<pb::GeoRequest>,
}

impl From<&IndexedAlert> for pb::IndexedAlert {
    fn from(a: &IndexedAlert) -> Self {
        pb::IndexedAlert {
            alert: Some((&a.alert).into()),
            shard: a.shard,
            shards: a.shards.clone(),
            request: a.request.clone(),
        }
    }
}

impl TryFrom<pb::IndexedAlert> for IndexedAlert {
    type Error = DecodeModelError;
    fn try_from(p: pb::IndexedAlert) -> Result<Self, Self::Error> {
        Ok(IndexedAlert {
            alert: p.alert.ok_or(DecodeModelError::Missing("alert"))?.try_into()?,
            shard: p.shard,
            shards: p.shards,
            request: p.request,
        })
    }
}

impl FromRecord for IndexedAlert {
    fn from_record(record: &InRecord) -> Result<Self, DecodeError> {
        decode_proto::<pb::IndexedAlert, _>(record)
    }
}

impl IntoRecord for IndexedAlert {
    fn into_record(self) -> OutRecord {
        let partition = self.shard as i32;
        OutRecord::proto(
            Topic::Indexed,
            self.alert.alert_id.clone(),
            &pb::IndexedAlert::from(&self),
            "hexcast.v1.IndexedAlert",
        )
        .on_partition(partition)
    }
}

/// What a subscriber accepts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionFilter {
    /// Category prefixes; empty: all.
    pub categories: Vec<String>,
    /// Minimum severity.
    pub min_severity: Severity,
    /// Attributes of the subscriber.
    pub attributes: Vec<String>,
}

impl SubscriptionFilter {
    /// Whether an alert passes this filter.
    pub fn accepts(&self, alert: &Alert) -> bool {
        let category_ok =
            self.categories.is_empty() || self.categories.iter().any(|p| alert.category.matches_prefix(p));
        let severity_ok = self.min_severity == Severity::Unspecified || alert.severity >= self.min_severity;
        let attributes_ok = alert.required_attributes.iter().all(|a| self.attributes.contains(a));
        category_ok && severity_ok && attributes_ok
    }
}

/// One stored area of a subscriber: only cells, never coordinates.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// A point (radius 0) or circle whose center is somewhere in `cell`.
    Disc {
        /// Cell at the configured precision holding the center.
        cell: CellIndex,
        /// Radius in meters.
        radius_m: f32,
    },
    /// A polygon or an explicit set, as cells.
    Cells(Vec<CellIndex>),
}

impl From<&Place> for Area {
    fn from(p: &Place) -> Self {
        match p {
            Place::Disc { cell, radius_m } => Area::CellDisc { cell: *cell, radius_m: f64::from(*radius_m) },
            Place::Cells(c) => Area::Cells(c.clone()),
        }
    }
}

/// A stored subscription: areas only as H3 cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Tenant (push backend).
    pub tenant: String,
    /// Subscriber id within the tenant.
    pub subscriber_id: String,
    /// The subscriber's areas.
    pub places: Vec<Place>,
    /// Filters.
    pub filter: SubscriptionFilter,
    /// Shards the places touch, ascending.
    pub shards: Vec<u32>,
    /// Last change.
    pub updated_at: Timestamp,
    /// Languages, quiet hours and rate cap.
    pub delivery: Delivery,
}

/// How a subscriber wants to be told: languages, quiet hours, a rate cap. The default
/// (nothing set) is every alert at once in the alert's default language.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Delivery {
    /// Preferred languages, most preferred first.
    pub languages: Vec<String>,
    /// A daily quiet window.
    pub quiet_hours: Option<QuietHours>,
    /// At most this many alerts per rolling hour; 0: no cap.
    pub max_alerts_per_hour: u32,
}

impl Delivery {
    /// Whether quiet hours or a cap apply at all.
    pub fn limits(&self) -> bool {
        self.quiet_hours.is_some() || self.max_alerts_per_hour > 0
    }
}

/// Minutes in a day.
pub const MINUTES_PER_DAY: u16 = 1440;

/// A daily quiet window, in local minutes after midnight of an IANA time zone; it may cross
/// midnight. The zone's name is checked where subscriptions enter (the API).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuietHours {
    /// Start, minutes after local midnight.
    pub start_minute: u16,
    /// End, minutes after local midnight.
    pub end_minute: u16,
    /// IANA time zone name.
    pub time_zone: String,
}

impl From<&Delivery> for Option<pb::DeliveryPreferences> {
    fn from(d: &Delivery) -> Self {
        (*d != Delivery::default()).then(|| pb::DeliveryPreferences {
            languages: d.languages.clone(),
            quiet_hours: d.quiet_hours.as_ref().map(|q| pb::QuietHours {
                start_minute: u32::from(q.start_minute),
                end_minute: u32::from(q.end_minute),
                time_zone: q.time_zone.clone(),
            }),
            max_alerts_per_hour: d.max_alerts_per_hour,
        })
    }
}

impl TryFrom<pb::DeliveryPreferences> for Delivery {
    type Error = DecodeModelError;
    fn try_from(p: pb::DeliveryPreferences) -> Result<Self, Self::Error> {
        let quiet_hours = match p.quiet_hours {
            None => None,
            Some(q) => {
                let minute = |field: &'static str, v: u32| {
                    u16::try_from(v)
                        .ok()
                        .filter(|m| *m < MINUTES_PER_DAY)
                        .ok_or(DecodeModelError::OutOfRange { field, value: i64::from(v) })
                };
                if q.time_zone.is_empty() {
                    return Err(DecodeModelError::Missing("delivery.quiet_hours.time_zone"));
                }
                Some(QuietHours {
                    start_minute: minute("delivery.quiet_hours.start_minute", q.start_minute)?,
                    end_minute: minute("delivery.quiet_hours.end_minute", q.end_minute)?,
                    time_zone: q.time_zone,
                })
            }
        };
        Ok(Delivery { languages: p.languages, quiet_hours, max_alerts_per_hour: p.max_alerts_per_hour })
    }
}

impl Subscription {
    /// The record key on the subscriptions topic: `<tenant>/<subscriber_id>`.
    pub fn key(&self) -> String {
        subscription_key(&self.tenant, &self.subscriber_id)
    }
}

/// The record key of a subscription.
pub fn subscription_key(tenant: &str, subscriber_id: &str) -> String {
    format!("{tenant}/{subscriber_id}")
}

/// `(tenant, subscriber id)` of a subscription key (tenants hold no `/`).
pub fn subscription_key_parts(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

impl From<&Subscription> for pb::Subscription {
    fn from(s: &Subscription) -> Self {
        pb::Subscription {
            subscriber_id: s.subscriber_id.clone(),
            tenant: s.tenant.clone(),
            areas: s.places.iter().map(|p| (&Area::from(p)).into()).collect(),
            filter: Some(pb::SubscriptionFilter {
                categories: s.filter.categories.clone(),
                min_severity: s.filter.min_severity as i32,
                attributes: s.filter.attributes.clone(),
            }),
            shards: s.shards.clone(),
            updated_at_ms: s.updated_at.0,
            delivery: (&s.delivery).into(),
        }
    }
}

impl TryFrom<pb::Subscription> for Subscription {
    type Error = DecodeModelError;
    /// Only the stored form is accepted here: areas as cells. Raw geometry from the API is
    /// turned into cells by the push service before it ever becomes a `Subscription`.
    fn try_from(p: pb::Subscription) -> Result<Self, Self::Error> {
        let mut places = Vec::with_capacity(p.areas.len());
        for a in &p.areas {
            places.push(match Area::try_from(a).map_err(geo_err("areas"))? {
                Area::Cells(c) => Place::Cells(c),
                Area::CellDisc { cell, radius_m } => Place::Disc { cell, radius_m: radius_m as f32 },
                _ => return Err(DecodeModelError::Missing("areas (as cells)")),
            });
        }
        if places.is_empty() {
            return Err(DecodeModelError::Missing("areas"));
        }
        let filter = p.filter.unwrap_or_default();
        Ok(Subscription {
            tenant: non_empty(p.tenant, "tenant")?,
            subscriber_id: non_empty(p.subscriber_id, "subscriber_id")?,
            places,
            filter: SubscriptionFilter {
                categories: filter.categories,
                min_severity: enum_of("filter.min_severity", filter.min_severity)?,
                attributes: filter.attributes,
            },
            shards: p.shards,
            updated_at: Timestamp(p.updated_at_ms),
            delivery: p.delivery.map(Delivery::try_from).transpose()?.unwrap_or_default(),
        })
    }
}

/// One alert for many subscribers of one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationBatch {
    /// The alert.
    pub alert: Alert,
    /// Tenant.
    pub tenant: String,
    /// Subscribers.
    pub subscriber_ids: Vec<String>,
    /// Part index among the batches of this alert and tenant.
    pub part: u32,
    /// Number of parts.
    pub parts: u32,
    /// The geofenced request, when this notification is one.
    pub request: Option<pb::GeoRequest>,
    /// Visible assets near the alert, nearest first.
    pub nearby_assets: Vec<pb::NearbyAsset>,
    /// Language of the alert's text in this batch.
    pub language: String,
    /// When quiet hours held it back: when the alert was matched.
    pub deferred_from: Option<Timestamp>,
}

impl From<&NotificationBatch> for pb::NotificationBatch {
    fn from(n: &NotificationBatch) -> Self {
        pb::NotificationBatch {
            alert: Some((&n.alert).into()),
            tenant: n.tenant.clone(),
            subscriber_ids: n.subscriber_ids.clone(),
            cursor: String::new(),
            part: n.part,
            parts: n.parts,
            request: n.request.clone(),
            nearby_assets: n.nearby_assets.clone(),
            language: n.language.clone(),
            deferred_from_ms: n.deferred_from.map_or(0, |t| t.0),
            expires_at_ms: n.alert.expires_at.map_or(0, |t| t.0),
            expired: false,
            collapse_key: crate::keys::collapse_key(&n.alert.incident_id),
            idempotency_keys: n
                .subscriber_ids
                .iter()
                .map(|s| crate::keys::idempotency_key(&n.alert.alert_id, &n.tenant, s))
                .collect(),
            piece: 0,
            pieces: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident() -> Incident {
        Incident {
            id: "montco:1".into(),
            source: "montco".into(),
            source_id: "1".into(),
            version: 3,
            category: Category::parse("fire.structure").expect("known"),
            raw_type: "Fire: BUILDING FIRE".into(),
            severity: Severity::Severe,
            urgency: Urgency::Immediate,
            certainty: Certainty::Observed,
            status: IncidentStatus::Active,
            occurred_at: Timestamp(1_450_000_000_000),
            updated_at: Timestamp(1_450_000_060_000),
            expires_at: None,
            location: Some(LatLng::new(40.29, -75.58).expect("valid")),
            areas: vec![],
            sensitive: Sensitive { names: vec!["A. Person".into()], address: "1 MAIN ST".into(), ..Default::default() },
            references: None,
            community_threat: Some(true),
            published_at: Some(Timestamp(1_450_000_061_000)),
        }
    }

    #[test]
    fn incident_round_trips_through_proto() {
        let i = incident();
        let back = Incident::try_from(pb::Incident::from(&i)).expect("valid");
        assert_eq!(i, back);
    }

    #[test]
    fn incident_without_location_is_refused() {
        let mut p = pb::Incident::from(&incident());
        p.location = None;
        assert_eq!(Incident::try_from(p), Err(DecodeModelError::Missing("location")));
    }

    #[test]
    fn closed_incident_without_location_is_accepted() {
        let mut i = incident();
        i.location = None;
        i.status = IncidentStatus::Closed;
        assert_eq!(Incident::try_from(pb::Incident::from(&i)), Ok(i.clone()));
        i.status = IncidentStatus::Cancelled;
        assert_eq!(Incident::try_from(pb::Incident::from(&i)), Ok(i));
    }

    #[test]
    fn localized_texts_round_trip_through_proto() {
        let mut i = incident();
        i.sensitive.texts = vec![
            LocalizedText { language: "en-CA".into(), headline: "storm".into(), ..Default::default() },
            LocalizedText {
                language: "fr-CA".into(),
                headline: "orage".into(),
                instruction: "abri".into(),
                ..Default::default()
            },
        ];
        assert_eq!(Incident::try_from(pb::Incident::from(&i)), Ok(i));
    }

    #[test]
    fn alert_texts_round_trip_and_the_subscriber_language_is_chosen() {
        let c = LatLng::new(40.29, -75.58).expect("valid");
        let alert = Alert {
            headline: "Robbery near MAIN ST".into(),
            texts: vec![
                AlertText { language: "es".into(), headline: "Reporte de robo".into(), body: "b".into() },
                AlertText { language: "fr-CA".into(), headline: "Vol".into(), body: "c".into() },
            ],
            ..Alert::synthetic(
                "i@1",
                Category::parse("crime.robbery").expect("known"),
                Area::circle(c, 400.0).expect("valid"),
            )
        };
        assert_eq!(Alert::try_from(pb::Alert::from(&alert)), Ok(alert.clone()));
        let pick =
            |prefs: &[&str]| alert.language_for(&prefs.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>()).to_owned();
        assert_eq!(pick(&[]), "en");
        assert_eq!(pick(&["de", "ES-mx", "en"]), "es", "a region subtag takes the bare language; case ignored");
        assert_eq!(pick(&["fr"]), "en", "fr does not take fr-CA (less specific than offered)");
        assert_eq!(pick(&["fr-CA"]), "fr-CA");
        assert_eq!(pick(&["english"]), "en");
        let es = alert.in_language("es");
        assert_eq!((es.language.as_str(), es.headline.as_str(), es.texts.len()), ("es", "Reporte de robo", 0));
        assert_eq!(alert.in_language("de").headline, "Robbery near MAIN ST");
        // An alert written before languages existed reads as English.
        let mut old = pb::Alert::from(&alert);
        old.language.clear();
        assert_eq!(Alert::try_from(old).map(|a| a.language), Ok("en".to_owned()));
    }

    #[test]
    fn quiet_hours_out_of_range_or_without_zone_are_refused() {
        let q = |start, end, zone: &str| pb::DeliveryPreferences {
            quiet_hours: Some(pb::QuietHours { start_minute: start, end_minute: end, time_zone: zone.into() }),
            ..Default::default()
        };
        assert!(Delivery::try_from(q(1320, 420, "America/New_York")).is_ok());
        assert_eq!(
            Delivery::try_from(q(1440, 0, "UTC")),
            Err(DecodeModelError::OutOfRange { field: "delivery.quiet_hours.start_minute", value: 1440 })
        );
        assert_eq!(Delivery::try_from(q(0, 60, "")), Err(DecodeModelError::Missing("delivery.quiet_hours.time_zone")));
        // The default is not written at all.
        assert_eq!(Option::<pb::DeliveryPreferences>::from(&Delivery::default()), None);
    }

    #[test]
    fn incident_with_unknown_category_is_refused() {
        let mut p = pb::Incident::from(&incident());
        p.category = "crime.jaywalking".into();
        assert!(matches!(Incident::try_from(p), Err(DecodeModelError::Category(_))));
    }

    fn alert_at(target: Area, coarse_cell: CellIndex) -> Alert {
        Alert { coarse_cell, ..Alert::synthetic("i@1", Category::parse("crime.robbery").expect("known"), target) }
    }

    fn circle_of(a: &Area) -> (LatLng, f64) {
        match a {
            Area::Circle { center, radius_m } => (*center, *radius_m),
            other => panic!("expected a circle: {other:?}"),
        }
    }

    /// A policy-made target (a circle around the resolution-10 centroid near the call) is
    /// shown around the coarse cell's centroid, still containing the whole target, and the
    /// same for every call in the coarse cell: the public target says nothing finer.
    #[test]
    fn public_view_of_a_circle_is_centered_on_the_coarse_cell_and_contains_the_target() {
        use crate::cells::centroid;
        let res = h3o::Resolution::Eight;
        let coarse = LatLng::new(40.1218, -75.3446).expect("valid").cell(res);
        let mut publics = Vec::new();
        for child in coarse.children(h3o::Resolution::Twelve).step_by(97) {
            let call = centroid(child);
            let snap = centroid(call.cell(h3o::Resolution::Ten));
            let target = Area::circle(snap, 400.0).expect("valid");
            let public = alert_at(target.clone(), call.cell(res)).public_view();
            let (center, radius) = circle_of(&public.target);
            assert_eq!(center, centroid(call.cell(res)));
            assert!(center.distance_m(snap) + 400.0 <= radius, "target sticks out of the public circle");
            if call.cell(res) == coarse {
                publics.push(radius);
            }
            // Everything else is kept.
            assert_eq!(Alert { target, ..public }, alert_at(Area::circle(snap, 400.0).expect("valid"), call.cell(res)));
        }
        assert!(publics.len() > 10);
        assert!(publics.windows(2).all(|w| w[0] == w[1]), "radius depends on the call within the cell: {publics:?}");
    }

    #[test]
    fn public_view_of_polygons_and_fine_cells_is_coarse_cells() {
        let c = LatLng::new(-33.86, 151.2).expect("valid");
        let ring: Vec<(f64, f64)> = (0..12)
            .map(|i| {
                let p = c.destination(30.0 * f64::from(i), 900.0);
                (p.lng(), p.lat())
            })
            .collect();
        let poly = Area::Polygon(geo::Polygon::new(geo::LineString::from(ring), vec![]));
        let coarse = c.cell(h3o::Resolution::Eight);
        let Area::Cells(cells) = alert_at(poly.clone(), coarse).public_view().target else { panic!("cells") };
        assert!(cells.iter().all(|x| x.resolution() <= h3o::Resolution::Eight));
        // Every cell of the polygon's fine cover lies under a public cell.
        for fine in crate::cells::cover(&poly, h3o::Resolution::Ten, 10_000).expect("cover") {
            assert!(cells.iter().any(|x| fine.parent(x.resolution()) == Some(*x)), "{fine} not covered");
        }
        // A huge polygon is shown coarser rather than refused.
        let big = Area::circle(c, 499_800.0).expect("valid");
        let Area::Cells(cells) = alert_at(big, coarse).public_view().target else { panic!("cells") };
        assert!(!cells.is_empty() && cells.len() <= 20_000);
        let eleven = c.cell(h3o::Resolution::Eleven);
        let parent = eleven.parent(h3o::Resolution::Eight).expect("parent");
        let twelve = eleven.center_child(h3o::Resolution::Twelve).expect("child");
        let fine = Area::Cells(vec![eleven, twelve]);
        assert_eq!(alert_at(fine, parent).public_view().target, Area::Cells(vec![parent]));
    }

    #[test]
    fn filter_checks_category_severity_and_attributes() {
        let c = LatLng::new(40.29, -75.58).expect("valid");
        let alert = Alert {
            alert_id: "a".into(),
            incident_id: "i".into(),
            kind: EventKind::New,
            category: Category::parse("medical.cardiac_arrest").expect("known"),
            severity: Severity::Severe,
            urgency: Urgency::Immediate,
            headline: String::new(),
            body: String::new(),
            place: String::new(),
            coarse_cell: c.cell(h3o::Resolution::Nine),
            target: Area::circle(c, 400.0).expect("valid"),
            occurred_at: Timestamp(0),
            issued_at: Timestamp(0),
            expires_at: None,
            required_attributes: vec!["cpr_trained".into()],
            excluded_tenants: Vec::new(),
            rule: "r".into(),
            published_at: None,
            language: DEFAULT_LANGUAGE.to_owned(),
            texts: Vec::new(),
        };
        let mut f = SubscriptionFilter::default();
        assert!(!f.accepts(&alert), "attribute required");
        f.attributes.push("cpr_trained".into());
        assert!(f.accepts(&alert));
        f.categories.push("crime".into());
        assert!(!f.accepts(&alert));
        f.categories.push("medical".into());
        f.min_severity = Severity::Extreme;
        assert!(!f.accepts(&alert));
    }
}
