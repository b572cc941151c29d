//! redact: the only text an alert carries is built here, from templates and a coarsened
//! place. It must never copy a name, phone number, medical note, unit count, house number,
//! source free text or coordinate into its output: the place keeps only street and area
//! words (a house number becomes its hundred block), drops every token with digits other
//! than a ZIP or an ordinal street name, and drops every word of the incident's names.

use hexcast_core::taxonomy::CATEGORIES;
use hexcast_core::{Category, EventKind, Timestamp};

/// The Wireless Emergency Alerts limits.
pub const MAX_HEADLINE_CHARS: usize = 90;
/// The Wireless Emergency Alerts limit of the long message.
pub const MAX_BODY_CHARS: usize = 360;

/// Placeholders a template may use.
pub const PLACEHOLDERS: [&str; 4] = ["{what}", "{What}", "{place}", "{time}"];

/// A headline and body template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Headline template.
    pub headline: String,
    /// Body template.
    pub body: String,
}

/// The built-in template of a category family.
pub fn builtin_template(category: Category) -> Template {
    let (headline, body) = match category.family() {
        "crime" => (
            "{What} reported near {place}",
            "Police are responding to a report of {what} near {place}, reported at {time}. Avoid the area, \
             stay inside if you are nearby, and follow instructions from officials.",
        ),
        "fire" => (
            "{What} near {place}",
            "Firefighters are responding to a {what} near {place}, reported at {time}. Avoid the area and keep \
             roads clear for emergency vehicles.",
        ),
        "hazard" => (
            "{What} near {place}",
            "Emergency crews are responding to a {what} near {place}, reported at {time}. Stay away from the \
             area and follow instructions from officials.",
        ),
        "medical" => (
            "CPR needed near {place}",
            "Someone near {place} is in {what}, reported at {time}. If you are trained in CPR and able to \
             help, go now; emergency services are on the way.",
        ),
        _ => (
            "{What} near {place}",
            "Officials report a {what} near {place} at {time}. Follow instructions from officials.",
        ),
    };
    Template { headline: headline.to_owned(), body: body.to_owned() }
}

/// A short noun phrase for a category: the taxonomy description up to its first comma or
/// "or", for example "robbery" or "building fire".
pub fn what(category: Category) -> String {
    let desc = match category.as_str() {
        "crime.shots_fired" => "shots fired",
        "crime.shooting" => "shooting",
        "crime.vehicle_break_in" => "vehicle break-in",
        "crime.hostage" => "hostage situation",
        "medical.cardiac_arrest" => "cardiac arrest",
        other => CATEGORIES.iter().find(|(p, _)| *p == other).map_or("incident", |(_, d)| d),
    };
    let cut = desc.find(',').unwrap_or(desc.len());
    let desc = &desc[..cut];
    let desc = desc.split(" or ").next().unwrap_or(desc);
    desc.trim().to_owned()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// `HH:MM UTC` of a time.
pub fn clock(t: Timestamp) -> String {
    let mins = t.0.div_euclid(60_000);
    format!("{:02}:{:02} UTC", mins.div_euclid(60).rem_euclid(24), mins.rem_euclid(60))
}

fn is_ordinal(t: &str) -> bool {
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && digits <= 3 && matches!(t[digits..].to_ascii_uppercase().as_str(), "ST" | "ND" | "RD" | "TH")
}

fn is_word(t: &str) -> bool {
    t.chars().any(char::is_alphabetic) && t.chars().all(|c| c.is_alphabetic() || c == '\'' || c == '.' || c == '-')
}

/// The words of `text` a place may keep: words, ordinal street names and (when `zip`) a
/// five-digit ZIP; never a word of a person's name.
fn clean(text: &str, name_words: &[String], zip: bool) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '/' || c == '#')
        .filter(|t| !t.is_empty())
        .filter(|t| is_word(t) || is_ordinal(t) || (zip && t.len() == 5 && t.chars().all(|c| c.is_ascii_digit())))
        .filter(|t| !name_words.iter().any(|n| n.eq_ignore_ascii_case(t.trim_matches(|c: char| !c.is_alphanumeric()))))
        .map(str::to_owned)
        .collect()
}

/// A place no finer than a street block or an area, from an address of the form
/// `street, area..., zip`: `1234 MAIN ST, LOWER MERION` becomes `1200 block of MAIN ST`,
/// an intersection or a bare street gives its area (`LOWER MERION, 19003`), and failing that
/// its first street. `names` are the incident's sensitive names: none of their words appear.
pub fn place(address: &str, names: &[String]) -> String {
    let name_words: Vec<String> = names
        .iter()
        .flat_map(|n| n.split(|c: char| !c.is_alphanumeric()).map(str::to_owned).collect::<Vec<_>>())
        .filter(|w| w.chars().count() >= 2)
        .collect();
    let mut parts = address.split(',').map(str::trim).filter(|p| !p.is_empty());
    let street = parts.next().unwrap_or("");
    let area: Vec<String> = parts.flat_map(|p| clean(p, &name_words, true)).collect();
    let digits: String = street.chars().take_while(char::is_ascii_digit).collect();
    let after = &street[digits.len()..];
    let intersection = street.contains('&') || street.contains('/') || street.contains(" AND ");
    if !digits.is_empty() && !intersection && after.starts_with(|c: char| c.is_whitespace() || c.is_alphabetic()) {
        let name = clean(after, &name_words, false);
        // A leading number glued to letters ("12A") is a unit, not an ordinal street.
        if !name.is_empty()
            && !is_ordinal(&street[..street.find(char::is_whitespace).unwrap_or(street.len())])
            && let Ok(n) = digits.parse::<u64>()
        {
            return format!("{} block of {}", n / 100 * 100, name.join(" "));
        }
    }
    if !area.is_empty() {
        return area.join(" ");
    }
    let first = street.split(['&', '/']).next().unwrap_or("");
    let first = first.split(" AND ").next().unwrap_or(first);
    clean(first, &name_words, false).join(" ")
}

fn fill(template: &str, what: &str, place: &str, time: &str) -> String {
    template
        .replace("{What}", &capitalize(what))
        .replace("{what}", what)
        .replace("{place}", place)
        .replace("{time}", time)
}

/// Cuts `s` to `max` characters at a word boundary.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let cut: String = s.chars().take(max).collect();
    match cut.rfind(' ') {
        Some(i) if i > 0 => cut[..i].to_owned(),
        _ => cut,
    }
}

/// Headline and body of an alert, within the WEA limits. A long place is shortened first;
/// a template that is still too long is cut at a word boundary.
pub fn render(t: &Template, kind: EventKind, category: Category, place: &str, at: Timestamp) -> (String, String) {
    let what = what(category);
    let place = if place.is_empty() { "your area".to_owned() } else { place.to_owned() };
    let time = clock(at);
    let prefix = if kind == EventKind::Update { "Update: " } else { "" };
    let fit = |template: &str, max: usize| {
        let budget = max.saturating_sub(prefix.len());
        let mut p = place.clone();
        loop {
            let text = fill(template, &what, &p, &time);
            if text.chars().count() <= budget || p.is_empty() {
                return format!("{prefix}{}", shorten(&text, budget));
            }
            p = shorten(&p, p.chars().count().saturating_sub(1));
        }
    };
    (fit(&t.headline, MAX_HEADLINE_CHARS), fit(&t.body, MAX_BODY_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_is_a_hundred_block_or_an_area_never_a_house_number() {
        assert_eq!(place("1234 MAIN ST, LOWER MERION, 19003", &[]), "1200 block of MAIN ST");
        assert_eq!(place("REINDEER CT & DEAD END, NEW HANOVER, 19525", &[]), "NEW HANOVER 19525");
        assert_eq!(place("42 5TH AVE", &[]), "0 block of 5TH AVE");
        assert_eq!(place("ELM ST & OAK AVE", &[]), "ELM ST");
        assert_eq!(place("12 SMITH RD, JOHN SMITH HOUSE", &["John Smith".to_owned()]), "0 block of RD");
        assert_eq!(place("215-555-0199 MAIN ST", &[]), "MAIN ST");
        assert_eq!(place("", &[]), "");
    }

    #[test]
    fn texts_fit_the_wea_limits() {
        let c = Category::parse("crime.shots_fired").expect("known");
        let long = "VERY ".repeat(80);
        let (h, b) = render(&builtin_template(c), EventKind::Update, c, &long, Timestamp(0));
        assert!(h.chars().count() <= MAX_HEADLINE_CHARS, "{h}");
        assert!(b.chars().count() <= MAX_BODY_CHARS, "{b}");
        assert!(h.starts_with("Update: Shots fired"), "{h}");
        let (h, _) = render(&builtin_template(c), EventKind::New, c, "1200 block of MAIN ST", Timestamp(3_600_000));
        assert_eq!(h, "Shots fired reported near 1200 block of MAIN ST");
        assert_eq!(clock(Timestamp(3_600_000 + 5 * 60_000)), "01:05 UTC");
    }
}
