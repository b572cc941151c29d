//! `docs/CONFIGURATION.md` stays in step with the config structs. The key set of
//! [`hexcast::Config`] is read from its `Deserialize` impls themselves (serde tells a
//! deserializer every struct's field names), so a field added to any section without a line
//! in the doc fails here, as does a documented key that no struct accepts. The shipped
//! example `config/hexcast.toml` must load and every key it sets must be documented.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::rc::Rc;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Path segment that stands for "an element of this array" (`push.assets.enrich[]`).
const ELEMENT: &str = "[]";

/// What the value at the probed path turned out to be.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A struct (a TOML table) with these fields.
    Struct(&'static [&'static str]),
    /// A sequence; its elements are probed at `<path>[]`.
    Seq,
    /// Anything else: a number, string, enum, map with free keys, ...
    Leaf,
}

/// Aborts a probe once the value at the target path has shown its shape.
#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// A deserializer that walks down `path` (one key per struct, one element per sequence) and
/// reports the shape of the value found there.
struct Probe {
    path: Vec<String>,
    found: Rc<RefCell<Option<Shape>>>,
}

impl Probe {
    fn stop<T>(&self, shape: Shape) -> Result<T, Stop> {
        *self.found.borrow_mut() = Some(shape);
        Err(Stop("probed".to_owned()))
    }

    fn child(&self) -> Self {
        Self { path: self.path[1..].to_vec(), found: Rc::clone(&self.found) }
    }
}

impl<'de> Deserializer<'de> for Probe {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        if self.path.is_empty() { self.stop(Shape::Leaf) } else { Err(Stop(format!("no table at {:?}", self.path))) }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        match self.path.first() {
            None => self.stop(Shape::Struct(fields)),
            Some(key) => visitor.visit_map(OneKey { key: Some(key.clone()), value: Some(self.child()) }),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.path.first().map(String::as_str) {
            None => self.stop(Shape::Seq),
            Some(ELEMENT) => visitor.visit_seq(OneElement(Some(self.child()))),
            Some(_) => Err(Stop(format!("no table at {:?}", self.path))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct tuple tuple_struct map enum identifier ignored_any
    }
}

/// A map with the one key on the probed path.
struct OneKey {
    key: Option<String>,
    value: Option<Probe>,
}

impl<'de> MapAccess<'de> for OneKey {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        match self.key.take() {
            Some(key) => seed.deserialize(de::IntoDeserializer::<Stop>::into_deserializer(key)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let probe = self.value.take().ok_or_else(|| Stop("value asked twice".to_owned()))?;
        seed.deserialize(probe)
    }
}

/// A sequence with the one element on the probed path.
struct OneElement(Option<Probe>);

impl<'de> SeqAccess<'de> for OneElement {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Stop> {
        self.0.take().map(|probe| seed.deserialize(probe)).transpose()
    }
}

fn shape_at<T: for<'de> Deserialize<'de>>(path: &[String]) -> Shape {
    let found = Rc::new(RefCell::new(None));
    let result = T::deserialize(Probe { path: path.to_vec(), found: Rc::clone(&found) });
    assert!(result.is_err(), "a probe of {path:?} deserialized a whole value");
    let shape = *found.borrow();
    shape.unwrap_or_else(|| panic!("no value at {path:?}: {:?}", result.err()))
}

/// Every key `T` accepts, dotted (`push.requests.max_window_ms`, `push.assets.enrich[].max`):
/// the leaves of its tables, and each array of tables' element keys.
fn keys_of<T: for<'de> Deserialize<'de>>() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        match shape_at::<T>(&path) {
            Shape::Struct(fields) => {
                for f in fields {
                    let mut child = path.clone();
                    child.push((*f).to_owned());
                    todo.push(child);
                }
            }
            Shape::Seq => {
                let mut child = path.clone();
                child.push(ELEMENT.to_owned());
                // An array of scalars is a leaf; an array of tables has keys of its own.
                match shape_at::<T>(&child) {
                    Shape::Struct(_) => todo.push(child),
                    _ => {
                        keys.insert(dotted(&path));
                    }
                }
            }
            Shape::Leaf => {
                keys.insert(dotted(&path));
            }
        }
    }
    keys
}

fn dotted(path: &[String]) -> String {
    path.join(".").replace(".[]", "[]")
}

fn repo_file(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// The keys in the doc's key tables: first cells like "| `section.key` |" between the
/// `config-keys:begin` and `config-keys:end` markers.
fn documented_keys() -> BTreeSet<String> {
    let path = repo_file("docs/CONFIGURATION.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let begin = text.find("<!-- config-keys:begin -->").expect("docs/CONFIGURATION.md has a config-keys:begin marker");
    let end = text.find("<!-- config-keys:end -->").expect("docs/CONFIGURATION.md has a config-keys:end marker");
    assert!(begin < end, "config-keys markers out of order");
    text[begin..end]
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(key, _)| key.to_owned()))
        .filter(|key| !key.is_empty() && !key.contains(' '))
        .collect()
}

/// The keys the example file sets (commented-out lines do not count): `[section]` and
/// `[[array.of.tables]]` headers, then `key = value` lines. A header that is itself a key
/// (a map with free keys such as `[kafka.client]`) counts as that key.
fn example_keys(text: &str, accepted: &BTreeSet<String>) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(header) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = format!("{}[]", header.trim());
        } else if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = header.trim().to_owned();
            if accepted.contains(&section) {
                keys.insert(section.clone());
            }
        } else if let Some((key, _)) = line.split_once('=') {
            if accepted.contains(&section) {
                continue; // a free key inside a map-valued key
            }
            let key = key.trim().trim_matches('"');
            keys.insert(if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") });
        }
    }
    keys
}

/// A config shape with every construct the probe must see through.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sample {
    count: std::num::NonZeroU32,
    #[serde(default)]
    nested: Nested,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    extra: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    optional: Option<Nested>,
}

#[allow(dead_code)]
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct Nested {
    listen: Option<std::net::SocketAddr>,
    mode: Mode,
}

#[allow(dead_code)]
#[derive(Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Text,
    Json,
}

#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    category: String,
    radius_m: f64,
}

#[test]
fn the_probe_lists_every_leaf_of_a_sample_config() {
    let keys: Vec<String> = keys_of::<Sample>().into_iter().collect();
    assert_eq!(
        keys,
        [
            "count",
            "extra",
            "names",
            "nested.listen",
            "nested.mode",
            "optional.listen",
            "optional.mode",
            "rules[].category",
            "rules[].radius_m"
        ]
    );
}

#[test]
fn the_probe_finds_nested_tables_arrays_of_tables_and_leaves() {
    let keys = keys_of::<hexcast::Config>();
    for key in [
        "kafka.brokers",
        "kafka.client",
        "geo.precision",
        "push.requests.max_window_ms",
        "push.assets.enrich[].radius_m",
    ] {
        assert!(keys.contains(key), "{key} missing from {keys:?}");
    }
    assert!(!keys.contains("push.requests"), "a table is not a key");
    assert!(!keys.contains("push.assets.enrich"), "an array of tables is not a key");
}

#[test]
fn configuration_doc_lists_exactly_the_keys_the_config_accepts() {
    let accepted = keys_of::<hexcast::Config>();
    let documented = documented_keys();
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "config keys missing from docs/CONFIGURATION.md: {undocumented:?}; \
         documented keys no config struct accepts: {unknown:?}"
    );
}

#[test]
fn every_key_the_example_config_sets_is_documented_and_loads() {
    let path = repo_file("config/hexcast.toml");
    hexcast::Config::load(Some(&path), &[]).expect("config/hexcast.toml loads");
    let text = std::fs::read_to_string(&path).expect("read config/hexcast.toml");
    let accepted = keys_of::<hexcast::Config>();
    let set = example_keys(&text, &accepted);
    assert!(set.len() > 40, "the example sets only {} keys: {set:?}", set.len());
    let documented = documented_keys();
    let missing: Vec<_> = set.difference(&documented).collect();
    assert!(missing.is_empty(), "keys of config/hexcast.toml missing from docs/CONFIGURATION.md: {missing:?}");
}
