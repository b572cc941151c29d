//! Recipients of record: per incident and matcher shard, the (tenant, subscriber) pairs the
//! shard notified, so that the incident's updates and its close reach the same people even
//! after they moved. The set is the matcher's state; its changelog is the compacted
//! `alerts.recipients` topic (partition = shard), written in the transaction that consumes
//! the alert and read back by the stage's factory, so it is exactly as of the committed
//! input. It holds subscription keys only, never places, and never outlives the alert: an
//! entry is tombstoned at the close and once the alert has expired.

use std::collections::{BTreeMap, BTreeSet};

use hexcast_core::{OutRecord, Timestamp, Topic};
use hexcast_proto::v1 as pb;
use prost::Message as _;

/// The payload schema of a recipients record.
pub const SCHEMA: &str = "hexcast.v1.AlertRecipients";

/// One incident's recipients in one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Subscription keys `<tenant>/<subscriber id>`.
    pub keys: BTreeSet<String>,
    /// When the entry is forgotten.
    pub expires_at: Timestamp,
    /// Chunk records the changelog holds for it (so a smaller rewrite tombstones the rest).
    pub chunks: u32,
}

/// The recipients of record of every incident, by (incident id, shard).
#[derive(Debug, Clone, Default)]
pub struct Recipients {
    entries: BTreeMap<(String, u32), Entry>,
    /// Chunk size of the changelog records.
    chunk_keys: usize,
}

/// What a restore read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Entries rebuilt.
    pub entries: usize,
    /// Records that were not recipients records (skipped).
    pub malformed: usize,
}

/// The changelog key of one chunk.
fn record_key(incident_id: &str, shard: u32, chunk: u32) -> String {
    format!("{incident_id}/{shard}/{chunk}")
}

/// `(incident id, shard, chunk)` of a changelog key; the incident id may hold `/`.
fn parse_key(key: &str) -> Option<(&str, u32, u32)> {
    let (rest, chunk) = key.rsplit_once('/')?;
    let (incident, shard) = rest.rsplit_once('/')?;
    Some((incident, shard.parse().ok()?, chunk.parse().ok()?))
}

impl Recipients {
    /// An empty state writing chunks of at most `chunk_keys` keys.
    pub fn new(chunk_keys: usize) -> Self {
        Self { entries: BTreeMap::new(), chunk_keys: chunk_keys.max(1) }
    }

    /// Rebuilds the state from its changelog records (log order per partition), keeping
    /// expired entries: the shard that owns them tombstones them when it next runs.
    pub fn restore(
        chunk_keys: usize,
        records: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> (Self, RestoreStats) {
        let mut stats = RestoreStats::default();
        let mut chunks: BTreeMap<(String, u32), BTreeMap<u32, pb::AlertRecipients>> = BTreeMap::new();
        for (key, value) in records {
            let Some((incident, shard, chunk)) = std::str::from_utf8(&key).ok().and_then(parse_key) else {
                stats.malformed += 1;
                continue;
            };
            let slot = chunks.entry((incident.to_owned(), shard)).or_default();
            match value.as_deref().map(pb::AlertRecipients::decode) {
                None => {
                    slot.remove(&chunk);
                }
                Some(Ok(r)) => {
                    slot.insert(chunk, r);
                }
                Some(Err(_)) => stats.malformed += 1,
            }
        }
        let mut out = Self::new(chunk_keys);
        for (k, parts) in chunks {
            if parts.is_empty() {
                continue;
            }
            let mut entry = Entry {
                expires_at: Timestamp(parts.values().map(|r| r.expires_at_ms).max().unwrap_or(0)),
                chunks: parts.keys().max().map_or(0, |c| c + 1),
                ..Entry::default()
            };
            for r in parts.into_values() {
                entry.keys.extend(r.subscribers);
            }
            out.entries.insert(k, entry);
        }
        stats.entries = out.entries.len();
        (out, stats)
    }

    /// The recipients of `incident_id` in `shard`.
    pub fn get(&self, incident_id: &str, shard: u32) -> Option<&Entry> {
        self.entries.get(&(incident_id.to_owned(), shard))
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces the recipients of `incident_id` in `shard` with `keys` until `expires_at`,
    /// pushing the changelog records (every chunk rewritten, leftover chunks tombstoned).
    /// Writes nothing when neither the set nor the expiry changed.
    pub fn set(
        &mut self,
        incident_id: &str,
        shard: u32,
        keys: BTreeSet<String>,
        expires_at: Timestamp,
        out: &mut Vec<OutRecord>,
    ) {
        if keys.is_empty() {
            self.remove(incident_id, shard, out);
            return;
        }
        let slot = self.entries.entry((incident_id.to_owned(), shard)).or_default();
        if slot.keys == keys && slot.expires_at == expires_at {
            return;
        }
        let list: Vec<&String> = keys.iter().collect();
        let chunks = list.len().div_ceil(self.chunk_keys) as u32;
        for (i, part) in list.chunks(self.chunk_keys).enumerate() {
            let rec = pb::AlertRecipients {
                incident_id: incident_id.to_owned(),
                shard,
                expires_at_ms: expires_at.0,
                chunk: i as u32,
                chunks,
                subscribers: part.iter().map(|k| (*k).clone()).collect(),
            };
            out.push(
                OutRecord::proto(Topic::Recipients, record_key(incident_id, shard, i as u32), &rec, SCHEMA)
                    .on_partition(shard as i32),
            );
        }
        for i in chunks..slot.chunks {
            out.push(
                OutRecord::tombstone(Topic::Recipients, record_key(incident_id, shard, i)).on_partition(shard as i32),
            );
        }
        *slot = Entry { keys, expires_at, chunks };
    }

    /// Forgets the recipients of `incident_id` in `shard`, tombstoning its records.
    pub fn remove(&mut self, incident_id: &str, shard: u32, out: &mut Vec<OutRecord>) {
        if let Some(e) = self.entries.remove(&(incident_id.to_owned(), shard)) {
            for i in 0..e.chunks {
                out.push(
                    OutRecord::tombstone(Topic::Recipients, record_key(incident_id, shard, i))
                        .on_partition(shard as i32),
                );
            }
        }
    }

    /// Forgets every entry of `shard` that expired before `now`.
    pub fn expire(&mut self, shard: u32, now: Timestamp, out: &mut Vec<OutRecord>) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|((_, s), e)| *s == shard && e.expires_at < now)
            .map(|((i, _), _)| i.clone())
            .collect();
        for incident in expired {
            self.remove(&incident, shard, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    fn replay(out: &[OutRecord]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        out.iter().map(|r| (r.key.clone(), r.payload.clone())).collect()
    }

    #[test]
    fn chunks_are_rewritten_and_leftovers_tombstoned_and_restore_sees_the_latest_set() {
        let mut r = Recipients::new(2);
        let mut log = Vec::new();
        r.set("cad/1", 3, keys(&["a/1", "a/2", "b/1", "b/2", "b/3"]), Timestamp(100), &mut log);
        assert_eq!(log.len(), 3);
        assert!(log.iter().all(|o| o.partition == Some(3) && o.topic == Topic::Recipients));
        r.set("cad/1", 3, keys(&["a/1", "b/9"]), Timestamp(200), &mut log);
        // One chunk rewritten, chunks 1 and 2 tombstoned.
        assert_eq!(log.len(), 6);
        assert_eq!(log.iter().filter(|o| o.payload.is_none()).count(), 2);
        let (back, stats) = Recipients::restore(2, replay(&log));
        assert_eq!(stats, RestoreStats { entries: 1, malformed: 0 });
        let e = back.get("cad/1", 3).expect("restored");
        assert_eq!(e.keys, keys(&["a/1", "b/9"]));
        assert_eq!((e.expires_at, e.chunks), (Timestamp(200), 1));
        // The same set again writes nothing.
        let n = log.len();
        r.set("cad/1", 3, keys(&["a/1", "b/9"]), Timestamp(200), &mut log);
        assert_eq!(log.len(), n);
    }

    #[test]
    fn expiry_tombstones_only_the_shards_entries_that_expired() {
        let mut r = Recipients::new(10);
        let mut log = Vec::new();
        r.set("x", 0, keys(&["t/1"]), Timestamp(10), &mut log);
        r.set("y", 0, keys(&["t/1"]), Timestamp(50), &mut log);
        r.set("x", 1, keys(&["t/2"]), Timestamp(10), &mut log);
        log.clear();
        r.expire(0, Timestamp(20), &mut log);
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].key, b"x/0/0".to_vec());
        assert!(log[0].payload.is_none());
        assert!(r.get("x", 0).is_none() && r.get("y", 0).is_some() && r.get("x", 1).is_some());
        let (back, _) = Recipients::restore(10, Vec::<(Vec<u8>, Option<Vec<u8>>)>::new());
        assert!(back.is_empty());
    }

    #[test]
    fn keys_with_slashes_in_the_incident_id_parse() {
        assert_eq!(parse_key("montco/2024/1/7/0"), Some(("montco/2024/1", 7, 0)));
        assert_eq!(parse_key("nope"), None);
    }
}
