//! `hexcast cap-export`: alerts (canonical proto JSON lines, as `hexcast policy` prints
//! them or a dump of the `alerts` topic holds them) written out as OASIS CAP 1.2, so an
//! authority or a WEA gateway can rebroadcast them. It must never write the precise target:
//! every area comes from [`Alert::public_view`] (a circle around the coarse cell's centroid,
//! or coarse cells as polygons), and the only texts are the alert's own template texts.
//!
//! Identifiers are stable: a message's identifier is its alert id (one per incident
//! version), the sender is fixed by the caller, and an update or a close of an incident
//! names every earlier message of the same incident in this export in `<references>`
//! (`sender,identifier,sent` triples). A close is a `Cancel` with the response type
//! `AllClear`. An alert that needs subscriber attributes (a CPR call) is exported with
//! scope `Restricted`, never `Public`. Each language of the alert is one `<info>` block.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufWriter, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use hexcast_core::{Alert, Area, EventKind, Severity, Timestamp, Urgency};
use hexcast_proto::v1 as pb;

/// The CAP 1.2 namespace.
pub const CAP_NS: &str = "urn:oasis:names:tc:emergency:cap:1.2";

/// `hexcast cap-export`.
#[derive(Debug, Clone, clap::Args)]
pub struct CapExportArgs {
    /// The CAP `<sender>`: a stable, globally unique name of this hexcast deployment
    /// (for example a domain name); no spaces, commas, `<` or `&`.
    #[arg(long, default_value = "hexcast")]
    pub sender: String,
    /// The CAP `<senderName>` shown to people.
    #[arg(long, default_value = "hexcast")]
    pub sender_name: String,
    /// The CAP `<status>`: Actual, Exercise, System, Test or Draft (a replay of old data
    /// should say Exercise or Test).
    #[arg(long, default_value = "Actual")]
    pub status: String,
    /// Write one `<identifier>.xml` file per alert into this folder (created if missing);
    /// default: one CAP document per line on stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Why an export option is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapExportError {
    /// The sender is empty or has a character CAP forbids.
    #[error("invalid sender `{0}`: must be non-empty without spaces, commas, `<` or `&`")]
    Sender(String),
    /// Not a CAP status.
    #[error("invalid status `{0}`: expected Actual, Exercise, System, Test or Draft")]
    Status(String),
}

/// One CAP document of an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapMessage {
    /// Its `<identifier>`.
    pub identifier: String,
    /// The whole document, on one line.
    pub xml: String,
}

/// Turns alerts into CAP 1.2 messages, remembering each incident's earlier messages so an
/// update or close references them.
#[derive(Debug)]
pub struct CapExporter {
    sender: String,
    sender_name: String,
    status: &'static str,
    /// Incident id -> (identifier, sent) of the messages already written, oldest first.
    earlier: HashMap<String, Vec<(String, String)>>,
}

const STATUSES: [&str; 5] = ["Actual", "Exercise", "System", "Test", "Draft"];

/// Whether `s` may be a CAP identifier or sender: non-empty, no whitespace, comma, `<`, `&`.
fn cap_token_ok(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || matches!(c, ',' | '<' | '&'))
}

/// An identifier CAP accepts: characters it forbids become `_`.
pub fn cap_identifier(alert_id: &str) -> String {
    alert_id.chars().map(|c| if c.is_whitespace() || matches!(c, ',' | '<' | '&') { '_' } else { c }).collect()
}

/// A CAP date-time: second precision, UTC written `-00:00` as CAP 1.2 requires.
pub fn cap_time(t: Timestamp) -> String {
    let secs = t.0.div_euclid(1000);
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S-00:00").to_string()
}

/// Text as XML character data: markup escaped, characters XML 1.0 forbids dropped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// The CAP `<category>` of a hexcast category family.
pub fn cap_category(alert: &Alert) -> &'static str {
    match alert.category.family() {
        "crime" => "Security",
        "fire" => "Fire",
        "medical" => "Health",
        "hazard" => "Safety",
        "traffic" => "Transport",
        "weather" => "Met",
        "geo" => "Geo",
        "public" => "Safety",
        _ => "Other",
    }
}

fn cap_severity(s: Severity) -> &'static str {
    match s {
        Severity::Extreme => "Extreme",
        Severity::Severe => "Severe",
        Severity::Moderate => "Moderate",
        Severity::Minor => "Minor",
        Severity::Unspecified => "Unknown",
    }
}

fn cap_urgency(u: Urgency) -> &'static str {
    match u {
        Urgency::Immediate => "Immediate",
        Urgency::Expected => "Expected",
        Urgency::Future => "Future",
        Urgency::Past => "Past",
        Urgency::Unspecified => "Unknown",
    }
}

fn msg_type(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Update => "Update",
        EventKind::Close => "Cancel",
        _ => "Alert",
    }
}

/// `lat,lon` as CAP writes a point (WGS 84, latitude first).
fn point(lat: f64, lng: f64) -> String {
    format!("{lat:.6},{lng:.6}")
}

/// The `<polygon>`s and `<circle>`s of a public target.
pub fn cap_geometry(target: &Area, coarse: h3o::CellIndex) -> (Vec<String>, Vec<String>) {
    let cell_polygon = |c: h3o::CellIndex| {
        let ring: Vec<h3o::LatLng> = c.boundary().iter().copied().collect();
        let mut pts: Vec<String> = ring.iter().map(|p| point(p.lat(), p.lng())).collect();
        if let Some(first) = pts.first().cloned() {
            pts.push(first);
        }
        pts.join(" ")
    };
    match target {
        Area::Circle { center, radius_m } => {
            (Vec::new(), vec![format!("{} {:.3}", point(center.lat(), center.lng()), radius_m / 1000.0)])
        }
        Area::Point(p) => (Vec::new(), vec![format!("{} 0", point(p.lat(), p.lng()))]),
        Area::Cells(cells) if !cells.is_empty() => (cells.iter().map(|c| cell_polygon(*c)).collect(), Vec::new()),
        // The public view only yields circles and cells; anything else is shown as the
        // coarse cell, never as the shape itself.
        _ => (vec![cell_polygon(coarse)], Vec::new()),
    }
}

impl CapExporter {
    /// An exporter for one sender.
    pub fn new(sender: &str, sender_name: &str, status: &str) -> Result<Self, CapExportError> {
        if !cap_token_ok(sender) {
            return Err(CapExportError::Sender(sender.to_owned()));
        }
        let status =
            STATUSES.iter().find(|s| **s == status).ok_or_else(|| CapExportError::Status(status.to_owned()))?;
        Ok(Self { sender: sender.to_owned(), sender_name: sender_name.to_owned(), status, earlier: HashMap::new() })
    }

    /// The CAP message of one alert (its public view).
    pub fn export(&mut self, alert: &Alert) -> CapMessage {
        let alert = alert.public_view();
        let identifier = cap_identifier(&alert.alert_id);
        let sent = cap_time(alert.issued_at);
        let earlier = self.earlier.get(&alert.incident_id).map_or(&[][..], Vec::as_slice);
        let mut x = String::with_capacity(2048);
        x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        let _ = write!(x, "<alert xmlns=\"{CAP_NS}\">");
        let _ = write!(x, "<identifier>{}</identifier>", esc(&identifier));
        let _ = write!(x, "<sender>{}</sender>", esc(&self.sender));
        let _ = write!(x, "<sent>{sent}</sent>");
        let _ = write!(x, "<status>{}</status>", self.status);
        let _ = write!(x, "<msgType>{}</msgType>", msg_type(alert.kind));
        if alert.required_attributes.is_empty() {
            x.push_str("<scope>Public</scope>");
        } else {
            let _ = write!(
                x,
                "<scope>Restricted</scope><restriction>{}</restriction>",
                esc(&format!("only for recipients with: {}", alert.required_attributes.join(", ")))
            );
        }
        if alert.kind != EventKind::New {
            if earlier.is_empty() {
                x.push_str("<note>earlier messages of this incident are not in this export</note>");
            } else {
                let refs: Vec<String> =
                    earlier.iter().map(|(id, sent)| format!("{},{},{}", esc(&self.sender), esc(id), sent)).collect();
                let _ = write!(x, "<references>{}</references>", refs.join(" "));
            }
        }
        let _ = write!(x, "<incidents>{}</incidents>", esc(&cap_identifier(&alert.incident_id)));
        // One <info> per language: the default first, then each of the alert's other texts.
        self.write_info(&mut x, &alert, &alert.language, &alert.headline, &alert.body);
        for t in &alert.texts {
            self.write_info(&mut x, &alert, &t.language, &t.headline, &t.body);
        }
        x.push_str("</alert>");
        self.earlier.entry(alert.incident_id.clone()).or_default().push((identifier.clone(), sent));
        CapMessage { identifier, xml: x }
    }

    fn write_info(&self, x: &mut String, alert: &Alert, language: &str, headline: &str, body: &str) {
        x.push_str("<info>");
        let _ = write!(x, "<language>{}</language>", esc(language));
        let _ = write!(x, "<category>{}</category>", cap_category(alert));
        let what = hexcast_policy::redact::what_in(alert.category, language);
        let _ = write!(x, "<event>{}</event>", esc(&what));
        if alert.kind == EventKind::Close {
            x.push_str("<responseType>AllClear</responseType>");
        }
        let _ = write!(x, "<urgency>{}</urgency>", cap_urgency(alert.urgency));
        let _ = write!(x, "<severity>{}</severity>", cap_severity(alert.severity));
        // hexcast's alerts do not carry the source's certainty.
        x.push_str("<certainty>Unknown</certainty>");
        let _ = write!(
            x,
            "<eventCode><valueName>hexcast-category</valueName><value>{}</value></eventCode>",
            esc(alert.category.as_str())
        );
        let _ = write!(x, "<effective>{}</effective>", cap_time(alert.issued_at));
        if alert.occurred_at.0 != 0 {
            let _ = write!(x, "<onset>{}</onset>", cap_time(alert.occurred_at));
        }
        if let Some(t) = alert.expires_at {
            let _ = write!(x, "<expires>{}</expires>", cap_time(t));
        }
        let _ = write!(x, "<senderName>{}</senderName>", esc(&self.sender_name));
        if !headline.is_empty() {
            let _ = write!(x, "<headline>{}</headline>", esc(headline));
        }
        if !body.is_empty() {
            let _ = write!(x, "<description>{}</description>", esc(body));
        }
        x.push_str("<area>");
        let desc = if alert.place.is_empty() { "the area around the incident" } else { alert.place.as_str() };
        let _ = write!(x, "<areaDesc>{}</areaDesc>", esc(desc));
        let (polygons, circles) = cap_geometry(&alert.target, alert.coarse_cell);
        for p in polygons {
            let _ = write!(x, "<polygon>{p}</polygon>");
        }
        for c in circles {
            let _ = write!(x, "<circle>{c}</circle>");
        }
        let _ = write!(x, "<geocode><valueName>H3</valueName><value>{}</value></geocode>", alert.coarse_cell);
        x.push_str("</area></info>");
    }
}

/// Runs `hexcast cap-export`: Alert JSON lines on stdin; bad lines are reported on stderr
/// with their number and skipped; a summary goes to stderr last.
pub fn cap_export_cmd(args: CapExportArgs) -> anyhow::Result<()> {
    let mut exporter = CapExporter::new(&args.sender, &args.sender_name, &args.status)?;
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut stdout = BufWriter::new(std::io::stdout().lock());
    let (mut read, mut bad, mut written) = (0usize, 0usize, 0usize);
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        read += 1;
        let alert = serde_json::from_str::<pb::Alert>(&line)
            .map_err(anyhow::Error::from)
            .and_then(|a| Alert::try_from(a).map_err(anyhow::Error::from));
        let alert = match alert {
            Ok(a) => a,
            Err(e) => {
                bad += 1;
                eprintln!("{}", serde_json::json!({"line": n + 1, "error": format!("{e:#}")}));
                continue;
            }
        };
        let msg = exporter.export(&alert);
        match &args.out_dir {
            Some(dir) => {
                let name: String =
                    msg.identifier.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect();
                let path = dir.join(format!("{name}.xml"));
                std::fs::write(&path, &msg.xml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => writeln!(stdout, "{}", msg.xml)?,
        }
        written += 1;
    }
    stdout.flush()?;
    eprintln!("{}", serde_json::json!({"read": read, "invalid": bad, "messages": written}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::{Category, LatLng};

    fn alert(kind: EventKind, version: i64) -> Alert {
        let call = LatLng::new(40.1218, -75.3446).expect("valid");
        let snap = hexcast_core::cells::centroid(call.cell(h3o::Resolution::Ten));
        Alert {
            kind,
            coarse_cell: call.cell(h3o::Resolution::Eight),
            headline: "Robbery reported near 1200 block of MAIN ST & <co>".into(),
            body: "Police are responding.".into(),
            place: "1200 block of MAIN ST".into(),
            issued_at: Timestamp(1_450_000_000_000 + version * 60_000),
            occurred_at: Timestamp(1_450_000_000_000),
            ..Alert::synthetic(
                &format!("montco:7@{version}"),
                Category::parse("crime.robbery").expect("known"),
                Area::circle(snap, 800.0).expect("valid"),
            )
        }
    }

    #[test]
    fn times_are_utc_with_the_cap_offset() {
        assert_eq!(cap_time(Timestamp(1_450_000_000_999)), "2015-12-13T09:46:40-00:00");
    }

    #[test]
    fn update_and_close_reference_every_earlier_message_of_the_incident() {
        let mut e = CapExporter::new("hexcast.example.org", "hexcast", "Exercise").expect("valid");
        let first = e.export(&alert(EventKind::New, 1));
        assert!(first.xml.contains("<msgType>Alert</msgType>") && !first.xml.contains("<references>"));
        assert_eq!(first.identifier, "montco:7@1");
        let update = e.export(&alert(EventKind::Update, 2));
        assert!(update.xml.contains("<msgType>Update</msgType>"), "{}", update.xml);
        assert!(
            update.xml.contains("<references>hexcast.example.org,montco:7@1,2015-12-13T09:47:40-00:00</references>"),
            "{}",
            update.xml
        );
        let close = e.export(&alert(EventKind::Close, 3));
        assert!(close.xml.contains("<msgType>Cancel</msgType>") && close.xml.contains("AllClear"));
        assert!(close.xml.contains(",montco:7@1,") && close.xml.contains(",montco:7@2,"), "{}", close.xml);
        // Text is escaped; nothing unescaped breaks the document.
        assert!(first.xml.contains("MAIN ST &amp; &lt;co&gt;"));
    }

    #[test]
    fn the_precise_target_is_never_written() {
        let mut e = CapExporter::new("hexcast", "hexcast", "Actual").expect("valid");
        let a = alert(EventKind::New, 1);
        let Area::Circle { center, .. } = a.target else { panic!("circle") };
        let msg = e.export(&a);
        assert!(!msg.xml.contains(&point(center.lat(), center.lng())), "precise center in {}", msg.xml);
        let coarse = hexcast_core::cells::centroid(a.coarse_cell);
        assert!(msg.xml.contains(&format!("<circle>{} ", point(coarse.lat(), coarse.lng()))), "{}", msg.xml);
    }

    #[test]
    fn attribute_targeted_alerts_are_restricted_and_bad_options_refused() {
        let mut e = CapExporter::new("hexcast", "hexcast", "Actual").expect("valid");
        let a = Alert { required_attributes: vec!["cpr_trained".into()], ..alert(EventKind::New, 1) };
        let xml = e.export(&a).xml;
        assert!(xml.contains("<scope>Restricted</scope><restriction>") && !xml.contains("<scope>Public"));
        assert_eq!(CapExporter::new("a b", "x", "Actual").err(), Some(CapExportError::Sender("a b".into())));
        assert_eq!(CapExporter::new("a", "x", "Real").err(), Some(CapExportError::Status("Real".into())));
    }
}
