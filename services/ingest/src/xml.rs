//! A small, safe XML reader for CAP and PIDF-LO: bytes are decoded (declared encoding, or
//! Latin-1 when a document claims UTF-8 but is not), then read with quick-xml into a tree of
//! elements keyed by local name (namespace prefixes dropped, because real feeds use `cap:`,
//! default namespaces and none at all for the same elements). It must never resolve a DTD,
//! an external entity or any entity beyond the five predefined ones and character
//! references: a document with `<!DOCTYPE` or `<!ENTITY` is refused outright, so nothing
//! here can be made to read a file or a URL or to expand a "billion laughs".

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::IngestError;

/// Deeper nesting than any CAP, EDXL or PIDF-LO document needs; bounds the stack.
const MAX_DEPTH: usize = 64;
/// Elements per document; bounds memory on hostile input.
const MAX_ELEMENTS: usize = 200_000;

/// One element: its local name, its direct text (concatenated) and its children.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child with that local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with that local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of the first child with that name, when not empty.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim()).filter(|t| !t.is_empty())
    }

    /// Every descendant (depth first, self included) with that local name.
    pub fn descendants<'a>(&'a self, name: &'a str, out: &mut Vec<&'a Element>) {
        if self.name == name {
            out.push(self);
        }
        for c in &self.children {
            c.descendants(name, out);
        }
    }
}

/// The `encoding` pseudo-attribute of the XML declaration, when there is one.
fn declared_encoding(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(256)];
    let head: String = head.iter().take_while(|&&b| b != b'>').map(|&b| b as char).collect();
    let head = head.strip_prefix("<?xml").or_else(|| head.trim_start().strip_prefix("<?xml"))?;
    let at = head.find("encoding")?;
    let rest = head[at + "encoding".len()..].trim_start().strip_prefix('=')?.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &rest[1..];
    let end = rest.find(quote)?;
    Some(rest[..end].trim().to_ascii_lowercase())
}

/// Decodes a document to text. A BOM wins; then the declared encoding. A document that
/// declares (or defaults to) UTF-8 but is not valid UTF-8 is read as Windows-1252 (a
/// superset of Latin-1): real CAP feeds do that, and refusing them loses real alerts.
pub(crate) fn decode(bytes: &[u8]) -> Result<Cow<'_, str>, IngestError> {
    if let Some((enc, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let body = &bytes[bom_len..];
        return enc
            .decode_without_bom_handling_and_without_replacement(body)
            .ok_or_else(|| IngestError::UnsupportedEncoding(enc.name().to_owned()));
    }
    match declared_encoding(bytes).as_deref() {
        None | Some("utf-8" | "utf8") => match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(_) => Ok(encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes).0),
        },
        Some(label) => {
            let enc = encoding_rs::Encoding::for_label(label.as_bytes())
                .ok_or_else(|| IngestError::UnsupportedEncoding(label.to_owned()))?;
            enc.decode_without_bom_handling_and_without_replacement(bytes)
                .ok_or_else(|| IngestError::UnsupportedEncoding(label.to_owned()))
        }
    }
}

fn predefined(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

/// Parses a document into its top-level elements.
pub(crate) fn parse(bytes: &[u8]) -> Result<Vec<Element>, IngestError> {
    let text = decode(bytes)?;
    parse_str(&text)
}

/// Parses text into its top-level elements (several only for fragments).
pub(crate) fn parse_str(text: &str) -> Result<Vec<Element>, IngestError> {
    // Checked on the raw text too, so a declaration hidden where the reader would not
    // report it as a DOCTYPE event still refuses the document.
    if text.contains("<!DOCTYPE") || text.contains("<!doctype") {
        return Err(IngestError::XmlEntityRefused("doctype"));
    }
    if text.contains("<!ENTITY") {
        return Err(IngestError::XmlEntityRefused("entity declaration"));
    }
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut roots = Vec::new();
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| IngestError::MalformedXml(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(IngestError::XmlEntityRefused("doctype")),
            Event::Start(s) | Event::Empty(s) if stack.len() >= MAX_DEPTH || count >= MAX_ELEMENTS => {
                let _ = s;
                return Err(IngestError::MalformedXml("document too deep or too large".to_owned()));
            }
            Event::Start(s) => {
                count += 1;
                stack.push(Element { name: s.local_name().into_inner().to_owned(), ..Element::default() });
            }
            Event::Empty(s) => {
                count += 1;
                let el = Element { name: s.local_name().into_inner().to_owned(), ..Element::default() };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => roots.push(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| IngestError::MalformedXml("unmatched end tag".to_owned()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => roots.push(el),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => predefined(&r).ok_or(IngestError::XmlEntityRefused("undeclared entity"))?,
                    Err(e) => return Err(IngestError::MalformedXml(e.to_string())),
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push(c);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(IngestError::MalformedXml("unclosed element".to_owned()));
    }
    if roots.is_empty() {
        return Err(IngestError::MalformedXml("no root element".to_owned()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexcast_core::ReasonCode;

    #[test]
    fn namespaces_are_dropped_and_references_resolved() {
        let roots =
            parse(br#"<?xml version="1.0"?><cap:alert xmlns:cap="x"><cap:a>1 &amp; &#50;</cap:a><b/></cap:alert>"#)
                .expect("valid");
        assert_eq!(roots[0].name, "alert");
        assert_eq!(roots[0].child_text("a"), Some("1 & 2"));
        assert!(roots[0].child("b").is_some());
    }

    #[test]
    fn dtds_and_unknown_entities_are_refused() {
        let dtd = br#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>"#;
        assert_eq!(parse(dtd).expect_err("dtd").reason_code(), "xml_entity_refused");
        assert_eq!(parse(b"<a>&x;</a>").expect_err("entity").reason_code(), "xml_entity_refused");
    }

    #[test]
    fn latin1_is_decoded_declared_or_not() {
        let declared = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>Caf\xe9</a>";
        assert_eq!(parse(declared).expect("latin1")[0].text, "Caf\u{e9}");
        let mislabelled = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><a>Caf\xe9</a>";
        assert_eq!(parse(mislabelled).expect("fallback")[0].text, "Caf\u{e9}");
        let unknown = b"<?xml version=\"1.0\" encoding=\"x-klingon\"?><a/>";
        assert_eq!(parse(unknown).expect_err("unknown").reason_code(), "unsupported_encoding");
    }

    #[test]
    fn malformed_documents_are_refused() {
        for doc in [&b"<a><b></a>"[..], b"<a>", b"", b"just text", b"</a>"] {
            assert_eq!(parse(doc).expect_err("malformed").reason_code(), "malformed_xml", "{doc:?}");
        }
    }
}
