//! `hexcast decode TOPIC`: prints a topic's records as JSON lines, for operators (the
//! payloads are protobuf). Every partition is read from the beginning to its current end,
//! read_committed, through the runtime's changelog reader; each line holds the partition,
//! the key and the payload in canonical proto3 JSON (`null` for a tombstone). It only
//! reads: nothing is committed and no group offset is stored.

#![allow(clippy::print_stdout)]

use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use hexcast_core::Topic;
use hexcast_proto::v1 as pb;
use prost::Message;

use crate::config::Config;

/// `hexcast decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// The topic's base name (without `kafka.topic_prefix`), for example `notifications` or
    /// `alerts.recipients`.
    pub topic: String,
    /// Config file (TOML); environment `HEXCAST__SECTION__KEY` overrides it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override one key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Seconds allowed to reach the end of every partition.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

fn json_of<M: Message + Default + serde::Serialize>(bytes: &[u8]) -> serde_json::Value {
    match M::decode(bytes) {
        Ok(m) => serde_json::to_value(&m).unwrap_or(serde_json::Value::Null),
        Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
    }
}

/// One record as a JSON object: `{"partition", "key", "value"}`, the value decoded by the
/// topic's payload type (`null` for a tombstone; raw feed payloads as text).
pub fn record_json(topic: Topic, partition: i32, key: &[u8], value: Option<&[u8]>) -> serde_json::Value {
    let key_text = String::from_utf8_lossy(key);
    let value = match value {
        None => serde_json::Value::Null,
        Some(v) => match topic {
            Topic::Raw => serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            Topic::Normalized => json_of::<pb::Incident>(v),
            Topic::DeadLetter => json_of::<pb::DeadLetter>(v),
            Topic::Unique => json_of::<pb::IncidentEvent>(v),
            Topic::Alerts => json_of::<pb::Alert>(v),
            Topic::Audit => json_of::<pb::PolicyDecision>(v),
            Topic::Review if key_text == "tick" => serde_json::Value::String("tick".into()),
            Topic::Review if key_text.starts_with("d:") => json_of::<pb::ReviewVerdict>(v),
            Topic::Review => json_of::<pb::HeldAlert>(v),
            Topic::Indexed => json_of::<pb::IndexedAlert>(v),
            Topic::Subscriptions => json_of::<pb::Subscription>(v),
            Topic::Notifications => json_of::<pb::NotificationBatch>(v),
            Topic::DedupState => json_of::<pb::DedupEntry>(v),
            Topic::Requests => json_of::<pb::GeoRequest>(v),
            Topic::RequestResponses => json_of::<pb::ConsentedResponse>(v),
            Topic::Transparency => json_of::<pb::TransparencyEntry>(v),
            Topic::Assets => json_of::<pb::Asset>(v),
            Topic::Recipients => json_of::<pb::AlertRecipients>(v),
        },
    };
    serde_json::json!({ "partition": partition, "key": key_text, "value": value })
}

/// Prints every record of the topic, one JSON line each.
pub fn run(args: DecodeArgs) -> anyhow::Result<()> {
    let topic = Topic::ALL.into_iter().find(|t| t.base_name() == args.topic).with_context(|| {
        let names: Vec<&str> = Topic::ALL.iter().map(|t| t.base_name()).collect();
        format!("unknown topic `{}` (expected one of {})", args.topic, names.join(", "))
    })?;
    let cfg = Config::load(args.config.as_deref(), &args.sets)?;
    let rt = crate::runtime(&cfg);
    let records = hexcast_runtime::changelog::read_changelog_partitioned(
        &rt,
        "decode",
        topic,
        Duration::from_secs(args.timeout_secs),
    )?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (partition, key, value) in records {
        serde_json::to_writer(&mut out, &record_json(topic, partition, &key, value.as_deref()))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_by_topic_to_canonical_json_and_tombstones_to_null() {
        let batch = pb::NotificationBatch {
            tenant: "alpha".into(),
            subscriber_ids: vec!["s1".into()],
            expires_at_ms: 1_700_000_000_000,
            collapse_key: "hx-0123456789abcdef".into(),
            ..Default::default()
        };
        let line = record_json(Topic::Notifications, 1, b"alpha", Some(&batch.encode_to_vec()));
        assert_eq!(line["partition"], 1);
        assert_eq!(line["key"], "alpha");
        assert_eq!(line["value"]["subscriberIds"][0], "s1");
        assert_eq!(line["value"]["collapseKey"], "hx-0123456789abcdef");
        // proto3 JSON writes 64-bit integers as strings.
        assert_eq!(line["value"]["expiresAtMs"], "1700000000000");
        assert!(record_json(Topic::Recipients, 0, b"x/0/0", None)["value"].is_null());
        assert_eq!(record_json(Topic::Raw, 0, b"k", Some(b"{\"id\":1}"))["value"], "{\"id\":1}");
        assert!(record_json(Topic::Alerts, 0, b"k", Some(&[0xff, 0xff]))["value"]["undecodable"].is_string());
    }
}
