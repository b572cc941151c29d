//! Several connections of one tenant: each receives the tenant's whole stream, with its own
//! cursor (the documented choice; see the README's gRPC API section). A connection that
//! drops and resumes does not disturb the others.

use std::collections::BTreeSet;
use std::time::Duration;

use hexcast_core::Topic;
use hexcast_proto::v1 as pb;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::auth::{ALPHA, drain, notification, start};
use crate::common;

pub(crate) type Pair = (String, String);

pub(crate) fn pairs(batches: &[pb::NotificationBatch]) -> Vec<Pair> {
    batches
        .iter()
        .flat_map(|b| {
            let alert = b.alert.as_ref().map(|a| a.alert_id.clone()).unwrap_or_default();
            b.subscriber_ids.iter().map(move |s| (alert.clone(), s.clone()))
        })
        .collect()
}

pub(crate) async fn publish(producer: &FutureProducer, topic: &str, from: usize, to: usize) -> BTreeSet<Pair> {
    let mut sent = BTreeSet::new();
    for i in from..to {
        let ids: Vec<String> = (0..5).map(|j| format!("s{i}-{j}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let alert = format!("alert-{i}");
        let payload = notification("alpha", &refs, &alert);
        let rec = FutureRecord::to(topic).key("alpha").payload(&payload).partition(0);
        producer.send(rec, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("delivered");
        sent.extend(ids.into_iter().map(|s| (alert.clone(), s)));
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_of_one_tenant_each_receive_the_whole_stream_with_their_own_cursor() {
    let server = start("fanout").await;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &server.cfg.kafka.brokers).create().expect("producer");
    let topic = server.rt.names.name(Topic::Notifications).to_owned();
    let first = publish(&producer, &topic, 0, 10).await;

    let open = |max_batch_ids: u32, cursor: String| {
        let channel = server.channel.clone();
        async move {
            let req = pb::SubscribeRequest { from_beginning: cursor.is_empty(), cursor, max_batch_ids };
            common::push(channel, ALPHA.1).subscribe(req).await.expect("subscribe").into_inner()
        }
    };
    // Three connections of the same tenant, with different batch sizes.
    let mut a = open(0, String::new()).await;
    let mut b = open(2, String::new()).await;
    let mut c = open(3, String::new()).await;
    // c drops after four batches and resumes from its cursor.
    let mut c_got = Vec::new();
    for _ in 0..4 {
        c_got.push(c.message().await.expect("c").expect("batch"));
    }
    drop(c);
    let (a_got, b_got) = tokio::join!(drain(&mut a, 10), drain(&mut b, 30));
    assert_eq!(pairs(&a_got).into_iter().collect::<BTreeSet<_>>(), first);
    assert_eq!(pairs(&a_got).len(), first.len(), "a: no duplicates");
    assert_eq!(pairs(&b_got).into_iter().collect::<BTreeSet<_>>(), first);
    assert_eq!(pairs(&b_got).len(), first.len(), "b: no duplicates");
    assert!(b_got.iter().all(|x| x.subscriber_ids.len() <= 2));

    // More notifications while c is away; everyone gets them, c by resuming.
    let second = publish(&producer, &topic, 10, 14).await;
    let cursor = c_got.last().map(|x| x.cursor.clone()).expect("cursor");
    let mut c = open(3, cursor).await;
    let (a_more, b_more, c_more) = tokio::join!(drain(&mut a, 4), drain(&mut b, 12), drain(&mut c, 20));
    assert_eq!(pairs(&a_more).into_iter().collect::<BTreeSet<_>>(), second);
    assert_eq!(pairs(&b_more).into_iter().collect::<BTreeSet<_>>(), second);
    c_got.extend(c_more);
    let all: BTreeSet<Pair> = first.union(&second).cloned().collect();
    let c_pairs = pairs(&c_got);
    assert_eq!(c_pairs.len(), all.len(), "c: no duplicates, nothing lost");
    assert_eq!(c_pairs.into_iter().collect::<BTreeSet<_>>(), all);
    server.stop().await;
}
