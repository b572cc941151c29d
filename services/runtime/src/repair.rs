//! Repair of a consumer group blocked by a hanging transactional offset commit.
//!
//! After an unclean broker stop (SIGKILL of the JVM) Apache Kafka 4.3.1 was seen to finish a
//! stage's transaction as committed in its transaction log while the COMMIT marker never
//! reached the group's `__consumer_offsets` partition (reproduced with
//! `HEXCAST_FAULTS_BROKER_STOP=kill scripts/faults.sh 60 20 3 24`; see
//! docs/runbook-hanging-transaction.md). The transactional offset commit then stays pending
//! for good: every OffsetFetch of a read_committed consumer answers `UNSTABLE_OFFSET_COMMIT`,
//! librdkafka retries it without a word, and the stage never reads again.
//!
//! The producer that left the pending commit can close it: a new transaction of the same
//! transactional id that commits offsets for the same group writes its marker to the same
//! `__consumer_offsets` partition, and the group coordinator applies that marker to every
//! pending offset of the producer id. So the repair
//!
//! 1. reads the pending offset commits of this group after the partition's last stable
//!    offset (read_uncommitted),
//! 2. reads how this stage's previous transaction ended from `__transaction_state`, and keeps
//!    only the pending commits written while that transaction was open (the ones of this
//!    producer),
//! 3. if that transaction committed, commits the pending offsets again in one transaction:
//!    the group ends exactly where the lost marker would have left it, so nothing is read
//!    twice and nothing is skipped. If it aborted, nothing is done (see
//!    [`Finding::LastAborted`]): the stage stays flagged stalled for the runbook.
//!
//! This module holds the pure parts (record decoding, the plan) and the reads; the runner
//! runs the transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Kafka's internal topic of committed offsets.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's internal topic of transaction states.
pub(crate) const TXN_STATE_TOPIC: &str = "__transaction_state";

/// Java's `String.hashCode` (over UTF-16 code units), which Kafka uses to place a group
/// and a transactional id on a partition of its internal topics.
pub(crate) fn java_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The partition of an internal topic with `partitions` partitions that holds `key`.
pub(crate) fn partition_of(key: &str, partitions: i32) -> i32 {
    (java_hash(key) & 0x7fff_ffff) % partitions.max(1)
}

/// A big-endian cursor over a record key or value.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i8(&mut self) -> Option<i8> {
        self.take(1).map(|b| i8::from_be_bytes([b[0]]))
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes)
    }
    /// A string with an int16 length (the keys of both internal topics are not flexible).
    fn str16(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.i16()?).ok()?;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// An offset commit read from `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetCommit {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Decodes an offset commit record (key versions 0-1, any value version: the offset is the
/// first field of every version). Other record kinds (group metadata, consumer-protocol
/// records) and tombstones give `None`.
pub(crate) fn decode_offset_commit(key: &[u8], value: Option<&[u8]>) -> Option<OffsetCommit> {
    let mut k = Cursor(key);
    if !matches!(k.i16()?, 0 | 1) {
        return None;
    }
    let group = k.str16()?.to_owned();
    let topic = k.str16()?.to_owned();
    let partition = k.i32()?;
    let mut v = Cursor(value?);
    let _version = v.i16()?;
    let offset = v.i64()?;
    Some(OffsetCommit { group, topic, partition, offset })
}

/// The state of a transactional id as `__transaction_state` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Other,
}

/// Decodes a transaction-state record of `transactional_id`: the key (version 0, the id)
/// and the status, which every value version keeps at the same place (after the producer
/// id, epoch and timeout). Records of other ids and tombstones give `None`.
pub(crate) fn decode_txn_status(key: &[u8], value: Option<&[u8]>, transactional_id: &str) -> Option<TxnStatus> {
    let mut k = Cursor(key);
    if k.i16()? != 0 || k.str16()? != transactional_id {
        return None;
    }
    let mut v = Cursor(value?);
    let _version = v.i16()?;
    let _producer_id = v.i64()?;
    let _epoch = v.i16()?;
    let _timeout_ms = v.i32()?;
    Some(match v.i8()? {
        0 => TxnStatus::Empty,
        1 => TxnStatus::Ongoing,
        2 => TxnStatus::PrepareCommit,
        3 => TxnStatus::PrepareAbort,
        4 => TxnStatus::CompleteCommit,
        5 => TxnStatus::CompleteAbort,
        _ => TxnStatus::Other,
    })
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: its offsets stand.
    Commit,
    /// Aborted: its offsets are void.
    Abort,
}

/// The last transaction of a transactional id that reached a decision: its outcome and
/// the window (broker timestamps, ms) during which it was open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastTxn {
    pub outcome: Outcome,
    pub opened_ms: i64,
    pub decided_ms: i64,
}

/// From the state records of one transactional id, oldest first (status, broker
/// timestamp): the last transaction that was decided (PrepareCommit or PrepareAbort), with
/// the time its first partition was added.
pub(crate) fn last_decided(history: &[(TxnStatus, i64)]) -> Option<LastTxn> {
    let end = history.iter().rposition(|(s, _)| matches!(s, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort))?;
    let (status, decided_ms) = history[end];
    let outcome = if status == TxnStatus::PrepareCommit { Outcome::Commit } else { Outcome::Abort };
    // The transaction began at the first Ongoing record after the previous end state.
    let mut opened_ms = decided_ms;
    for (s, ts) in history[..end].iter().rev() {
        match s {
            TxnStatus::Ongoing => opened_ms = *ts,
            _ => break,
        }
    }
    Some(LastTxn { outcome, opened_ms, decided_ms })
}

/// What the repair transaction commits: for each held partition with a pending commit of
/// the hanging transaction, the pending offset if it committed, else the stable one (so
/// the abort stays an abort; the log start when nothing stable exists).
pub(crate) fn plan(
    pending: &BTreeMap<i32, i64>,
    stable: &BTreeMap<i32, i64>,
    log_start: &BTreeMap<i32, i64>,
    outcome: Outcome,
) -> BTreeMap<i32, i64> {
    pending
        .iter()
        .filter_map(|(p, pending_offset)| {
            let offset = match outcome {
                Outcome::Commit => Some(*pending_offset),
                Outcome::Abort => stable.get(p).or_else(|| log_start.get(p)).copied(),
            };
            offset.map(|o| (*p, o))
        })
        .collect()
}

/// Reads one partition of an internal topic from `from` to its high watermark
/// (read_uncommitted), calling `each(key, value, timestamp_ms)`; bounded by `timeout`.
fn read_partition(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
    timeout: Duration,
    mut each: impl FnMut(&[u8], Option<&[u8]>, i64),
) -> KafkaResult<()> {
    if from >= until {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let ts = m.timestamp().to_millis().unwrap_or(0);
                each(m.key().unwrap_or_default(), m.payload(), ts);
                if m.offset() + 1 >= until {
                    return Ok(());
                }
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
        // A range that ends with transaction markers delivers no record at its end; the
        // position steps over them.
        let position = consumer.position()?;
        let done = position.elements().iter().any(|e| matches!(e.offset(), Offset::Offset(o) if o >= until));
        if done {
            return Ok(());
        }
    }
    Err(KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut))
}

/// What the reads found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The group's offsets partition has no open transaction: not this failure.
    NoOpenTransaction,
    /// Open transactions hold commits of this group for held partitions, but none written
    /// during this producer's last decided transaction (another instance's, or one still in
    /// progress).
    NotOurs {
        /// Pending commits of the group for held partitions.
        pending_commits: usize,
    },
    /// This stage's transaction log shows no decided transaction to finish.
    NoDecision,
    /// The last decided transaction of this producer aborted. An aborted transaction may
    /// never have added the offsets partition (it failed before its offsets were sent), so
    /// the pending commit may be an earlier, committed transaction's: closing it either way
    /// could skip or repeat records, so it is left for the runbook (the stage is flagged
    /// stalled). Seen once in a broker-SIGKILL fault run, where rewinding to the stable
    /// offsets repeated one alert's notifications.
    LastAborted {
        /// Pending commits of the group for held partitions.
        pending_commits: usize,
    },
    /// Commit these offsets (input topic partition -> offset) to close it.
    Repair {
        /// How the hanging transaction ended in the transaction log.
        outcome: Outcome,
        /// What to commit.
        offsets: BTreeMap<i32, i64>,
    },
}

/// Reads what a repair needs for `group` (whose consumer holds `held` partitions of
/// `topic`) and the stage's `transactional_id`. `config` is the client configuration
/// (bootstrap, security) of the stage.
pub fn investigate(
    config: &ClientConfig,
    group: &str,
    transactional_id: &str,
    topic: &str,
    held: &BTreeSet<i32>,
    timeout: Duration,
) -> KafkaResult<Finding> {
    let client = |isolation: &str| -> KafkaResult<BaseConsumer> {
        let mut c = config.clone();
        c.set("group.id", format!("{group}-repair"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", isolation);
        c.create()
    };
    let uncommitted = client("read_uncommitted")?;
    let committed = client("read_committed")?;

    let partitions_of = |t: &str| -> KafkaResult<i32> {
        let md = uncommitted.fetch_metadata(Some(t), timeout)?;
        Ok(md.topics().first().map_or(0, |t| t.partitions().len() as i32))
    };
    let offsets_partition = partition_of(group, partitions_of(OFFSETS_TOPIC)?);
    let (_, stable_end) = committed.fetch_watermarks(OFFSETS_TOPIC, offsets_partition, timeout)?;
    let (_, high) = uncommitted.fetch_watermarks(OFFSETS_TOPIC, offsets_partition, timeout)?;
    if stable_end >= high {
        return Ok(Finding::NoOpenTransaction);
    }
    // Pending commits of this group for held partitions, with their broker timestamps.
    let mut pending: Vec<(i32, i64, i64)> = Vec::new();
    read_partition(&uncommitted, OFFSETS_TOPIC, offsets_partition, stable_end, high, timeout, |k, v, ts| {
        if let Some(c) = decode_offset_commit(k, v)
            && c.group == group
            && c.topic == topic
            && held.contains(&c.partition)
        {
            pending.push((c.partition, c.offset, ts));
        }
    })?;

    let state_partition = partition_of(transactional_id, partitions_of(TXN_STATE_TOPIC)?);
    let (low, high) = uncommitted.fetch_watermarks(TXN_STATE_TOPIC, state_partition, timeout)?;
    let mut history = Vec::new();
    read_partition(&uncommitted, TXN_STATE_TOPIC, state_partition, low, high, timeout, |k, v, ts| {
        if let Some(s) = decode_txn_status(k, v, transactional_id) {
            history.push((s, ts));
        }
    })?;
    let Some(last) = last_decided(&history) else { return Ok(Finding::NoDecision) };
    // A committed transaction always holds the offsets partition (every transaction of the
    // runner sends offsets), so its marker would have closed any earlier pending commit of
    // this producer: a pending commit left now is that transaction's own. An aborted one
    // proves nothing (see `Finding::LastAborted`).
    if last.outcome == Outcome::Abort {
        return Ok(Finding::LastAborted { pending_commits: pending.len() });
    }

    // Ours: written while our last decided transaction was open. The slack covers the
    // clocks of two brokers (the transaction and the group coordinator may differ); it is
    // small so that a commit another instance made just after ours is not taken for ours.
    const SLACK_MS: i64 = 200;
    let mut ours: BTreeMap<i32, i64> = BTreeMap::new();
    let pending_commits = pending.len();
    for (p, offset, ts) in pending {
        if ts + SLACK_MS >= last.opened_ms && ts <= last.decided_ms + SLACK_MS {
            ours.insert(p, offset);
        }
    }
    if ours.is_empty() {
        return Ok(Finding::NotOurs { pending_commits });
    }
    let mut tpl = TopicPartitionList::new();
    for p in ours.keys() {
        tpl.add_partition(topic, *p);
    }
    // The stable offsets (an OffsetFetch without require_stable is answered) and log starts.
    let mut stable_client_cfg = config.clone();
    stable_client_cfg
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted");
    let stable_client: BaseConsumer = stable_client_cfg.create()?;
    let stable: BTreeMap<i32, i64> = stable_client
        .committed_offsets(tpl, timeout)?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    let mut log_start = BTreeMap::new();
    for p in ours.keys() {
        log_start.insert(*p, uncommitted.fetch_watermarks(topic, *p, timeout)?.0);
    }
    Ok(Finding::Repair { outcome: last.outcome, offsets: plan(&ours, &stable, &log_start, last.outcome) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn str16(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn offset_key(version: i16, group: &str, topic: &str, partition: i32) -> Vec<u8> {
        let mut k = version.to_be_bytes().to_vec();
        str16(&mut k, group);
        str16(&mut k, topic);
        k.extend_from_slice(&partition.to_be_bytes());
        k
    }

    fn txn_record(id: &str, version: i16, status: i8) -> (Vec<u8>, Vec<u8>) {
        let mut k = 0i16.to_be_bytes().to_vec();
        str16(&mut k, id);
        let mut v = version.to_be_bytes().to_vec();
        v.extend_from_slice(&7i64.to_be_bytes());
        v.extend_from_slice(&2i16.to_be_bytes());
        v.extend_from_slice(&10_000i32.to_be_bytes());
        v.push(status as u8);
        v.push(0); // rest of the value: not read
        (k, v)
    }

    #[test]
    fn java_hash_matches_java() {
        // Values of "".hashCode(), "a".hashCode(), "hello".hashCode() and a string whose
        // hash overflows, as Java computes them.
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("hello"), 99_162_322);
        assert_eq!(java_hash("faults-3-7385-ingest"), {
            "faults-3-7385-ingest".bytes().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
        });
        // Non-BMP characters count as two UTF-16 units.
        assert_eq!(java_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
        // The partition is never negative even when the hash is i32::MIN-like.
        for s in ["polygenelubricants", "faults-3-7385-ingest", "x"] {
            let p = partition_of(s, 50);
            assert!((0..50).contains(&p), "{s}: {p}");
        }
    }

    #[test]
    fn offset_commits_decode_and_other_records_do_not() {
        let key = offset_key(1, "g", "t", 3);
        let mut value = 3i16.to_be_bytes().to_vec();
        value.extend_from_slice(&190i64.to_be_bytes());
        value.extend_from_slice(&[0; 14]);
        assert_eq!(
            decode_offset_commit(&key, Some(&value)),
            Some(OffsetCommit { group: "g".into(), topic: "t".into(), partition: 3, offset: 190 })
        );
        // A tombstone, a group metadata key (version 2), a truncated key.
        assert_eq!(decode_offset_commit(&key, None), None);
        let mut meta = 2i16.to_be_bytes().to_vec();
        str16(&mut meta, "g");
        assert_eq!(decode_offset_commit(&meta, Some(&value)), None);
        assert_eq!(decode_offset_commit(&key[..key.len() - 2], Some(&value)), None);
    }

    #[test]
    fn txn_status_decodes_for_its_own_id_only() {
        for (version, code, want) in [
            (0, 2, TxnStatus::PrepareCommit),
            (1, 3, TxnStatus::PrepareAbort),
            (1, 4, TxnStatus::CompleteCommit),
            (0, 1, TxnStatus::Ongoing),
        ] {
            let (k, v) = txn_record("stage-a", version, code);
            assert_eq!(decode_txn_status(&k, Some(&v), "stage-a"), Some(want));
            assert_eq!(decode_txn_status(&k, Some(&v), "stage-b"), None);
            assert_eq!(decode_txn_status(&k, None, "stage-a"), None);
        }
    }

    #[test]
    fn the_last_decided_transaction_and_its_open_window() {
        use TxnStatus::*;
        let history = [
            (Empty, 1),
            (Ongoing, 10),
            (PrepareCommit, 12),
            (CompleteCommit, 13),
            (Ongoing, 20),
            (Ongoing, 21),
            (PrepareAbort, 25),
            (CompleteAbort, 40),
            (Empty, 50),
        ];
        assert_eq!(last_decided(&history), Some(LastTxn { outcome: Outcome::Abort, opened_ms: 20, decided_ms: 25 }));
        assert_eq!(
            last_decided(&history[..4]),
            Some(LastTxn { outcome: Outcome::Commit, opened_ms: 10, decided_ms: 12 })
        );
        assert_eq!(last_decided(&[(Empty, 1), (Ongoing, 2)]), None);
    }

    #[test]
    fn the_plan_keeps_a_commit_and_undoes_an_abort() {
        let pending = BTreeMap::from([(0, 190), (2, 77)]);
        let stable = BTreeMap::from([(0, 185), (1, 5)]);
        let start = BTreeMap::from([(0, 0), (2, 40)]);
        assert_eq!(plan(&pending, &stable, &start, Outcome::Commit), pending);
        // Aborted: back to the stable offset, or the log start where nothing was committed.
        assert_eq!(plan(&pending, &stable, &start, Outcome::Abort), BTreeMap::from([(0, 185), (2, 40)]));
    }
}
