//! The hanging-commit repair reads Apache Kafka's own records right (`__consumer_offsets`
//! offset commits, `__transaction_state` states), finds nothing to repair on a healthy
//! group, and never mistakes a transaction still in progress for a hanging one. The repair
//! itself is proven by the broker-SIGKILL fault run (docs/runbook-hanging-transaction.md):
//! a hanging commit cannot be made on purpose.

use std::collections::BTreeSet;
use std::time::Duration;

use hexcast_runtime::repair::{Finding, investigate};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_reads_kafkas_internal_records_and_leaves_a_transaction_in_progress_alone() {
    let brokers = common::brokers();
    let prefix = common::unique_prefix("repair");
    let topic = format!("{prefix}input");
    let group = format!("{prefix}group");
    let txn_id = format!("{prefix}txn");
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("admin");
    let created = admin
        .create_topics(&[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create topic");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    tokio::task::spawn_blocking(move || {
        let t = Duration::from_secs(30);
        let client = ClientConfig::new().set("bootstrap.servers", &brokers).clone();
        let producer: BaseProducer = client
            .clone()
            .set("transactional.id", &txn_id)
            .set("transaction.timeout.ms", "60000")
            .create()
            .expect("producer");
        let consumer: BaseConsumer = client.clone().set("group.id", &group).create().expect("consumer");
        let group_md = consumer.group_metadata().expect("group metadata");
        let offsets = |o: i64| {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 1, Offset::Offset(o)).expect("tpl");
            tpl
        };
        producer.init_transactions(t).expect("init");

        // A committed transaction with records and offsets: nothing hangs.
        producer.begin_transaction().expect("begin");
        for i in 0..3 {
            producer
                .send(BaseRecord::<str, str>::to(&topic).partition(1).key("k").payload(&i.to_string()))
                .expect("send");
        }
        producer.send_offsets_to_transaction(&offsets(2), &group_md, t).expect("offsets");
        producer.commit_transaction(t).expect("commit");
        let held = BTreeSet::from([0, 1, 2]);
        let finding = investigate(&client, &group, &txn_id, &topic, &held, t).expect("investigate");
        assert_eq!(finding, Finding::NoOpenTransaction, "a healthy group");

        // A transaction in progress with an offset commit: the commit is found (decoded from
        // the broker's own record) but it is not this producer's last decided transaction
        // (written a second after that one was decided, well outside the clock slack).
        std::thread::sleep(Duration::from_secs(1));
        producer.begin_transaction().expect("begin");
        producer.send_offsets_to_transaction(&offsets(3), &group_md, t).expect("offsets");
        let finding = investigate(&client, &group, &txn_id, &topic, &held, t).expect("investigate");
        assert_eq!(finding, Finding::NotOurs { pending_commits: 1 }, "an open transaction in progress");

        // Another producer commits a transaction with offsets after it: the range to read
        // now ends with a COMMIT marker, which delivers no record (the test broker has one
        // `__consumer_offsets` partition, so both groups share it).
        let other: BaseProducer =
            client.clone().set("transactional.id", format!("{txn_id}-later")).create().expect("producer");
        let other_group: BaseConsumer =
            client.clone().set("group.id", format!("{group}-later")).create().expect("consumer");
        other.init_transactions(t).expect("init");
        other.begin_transaction().expect("begin");
        other
            .send_offsets_to_transaction(&offsets(1), &other_group.group_metadata().expect("metadata"), t)
            .expect("offsets");
        other.commit_transaction(t).expect("commit");
        let finding = investigate(&client, &group, &txn_id, &topic, &held, t).expect("investigate");
        assert_eq!(finding, Finding::NotOurs { pending_commits: 1 }, "a range that ends with a marker");

        // Another partition held only: the pending commit is not on it.
        let finding = investigate(&client, &group, &txn_id, &topic, &BTreeSet::from([0]), t).expect("investigate");
        assert_eq!(finding, Finding::NotOurs { pending_commits: 0 });

        // A transactional id with no decided transaction at all.
        let finding = investigate(&client, &group, &format!("{txn_id}-other"), &topic, &held, t).expect("investigate");
        assert_eq!(finding, Finding::NoDecision);
        producer.abort_transaction(t).expect("abort");
    })
    .await
    .expect("blocking part");
}
