//! Hostile input on Apache Kafka and over real gRPC: every bad raw record becomes a dead
//! letter with the expected reason (at the stage that can tell), valid records among them
//! still become alerts, and every bad gRPC request gets the right status naming the field.
//! The README's "Bad input" table points at these tests.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use hexcast::Target;
use hexcast_api::Tokens;
use hexcast_core::{Topic, header};
use hexcast_proto::v1 as pb;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::common;

fn cap(id: &str, sent: &str, polygon: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>{id}</identifier><sender>fd@example.org</sender>
<sent>{sent}</sent><status>Actual</status><msgType>Alert</msgType><scope>Public</scope>
<info><category>Safety</category><event>Explosion</event><urgency>Immediate</urgency><severity>Severe</severity>
<certainty>Observed</certainty><headline>h</headline><area><areaDesc>a</areaDesc><polygon>{polygon}</polygon></area></info></alert>"#
    )
    .into_bytes()
}

/// RFC 3339 UTC of Unix milliseconds (days-to-civil, proleptic Gregorian).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}-00:00", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn cad(id: &str, lat: &str, lng: &str, occurred_at: &str) -> Vec<u8> {
    format!(r#"{{"id":"{id}","call_type":"ARMED ROBBERY","lat":{lat},"lng":{lng},"occurred_at":{occurred_at}}}"#)
        .into_bytes()
}

const BILLION_LAUGHS: &str = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;"><!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol4;</identifier></alert>"#;
const XXE: &str = r#"<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>"#;

/// (key, format header, payload, expected dead letter: (stage, reason), or None if valid).
type Case = (&'static str, Option<&'static str>, Vec<u8>, Option<(&'static str, &'static str)>);

fn cases(now_ms: i64) -> Vec<Case> {
    let now = now_ms.to_string();
    // A minute ago: recent enough for the policy's age rule.
    let sent = rfc3339(now_ms - 60_000);
    let sent = sent.as_str();
    let square = "40.0,-75.0 40.01,-75.0 40.01,-74.99 40.0,-74.99 40.0,-75.0";
    let bad = |s, r| Some((s, r));
    vec![
        ("valid-1", Some("cad-json"), cad("valid-1", "39.95", "-75.16", &now), None),
        ("malformed-json", Some("cad-json"), b"{\"id\": \"x\", \"lat\": ".to_vec(), bad("ingest", "malformed_json")),
        ("nan-string", Some("cad-json"), cad("n1", "\"NaN\"", "-75", &now), bad("ingest", "malformed_json")),
        ("nan-literal", Some("cad-json"), cad("n2", "NaN", "-75", &now), bad("ingest", "malformed_json")),
        ("infinite", Some("cad-json"), cad("n3", "1e400", "-75", &now), bad("ingest", "malformed_json")),
        ("lat-out-of-range", Some("cad-json"), cad("n4", "95", "-75", &now), bad("ingest", "invalid_coordinates")),
        ("lng-out-of-range", Some("cad-json"), cad("n5", "40", "-181", &now), bad("ingest", "invalid_coordinates")),
        (
            "far-past",
            Some("cad-json"),
            cad("n6", "40", "-75", "\"1900-01-01T00:00:00Z\""),
            bad("ingest", "invalid_time"),
        ),
        (
            "far-future",
            Some("cad-json"),
            cad("n7", "40", "-75", "\"2999-01-01T00:00:00Z\""),
            bad("ingest", "invalid_time"),
        ),
        ("huge", Some("cad-json"), vec![b' '; 100_000], bad("ingest", "oversized_payload")),
        ("no-format", None, cad("n8", "40", "-75", &now), bad("ingest", "missing_format")),
        ("unknown-format", Some("fax"), b"hello".to_vec(), bad("ingest", "unknown_format")),
        ("billion-laughs", Some("cap-xml"), BILLION_LAUGHS.as_bytes().to_vec(), bad("ingest", "xml_entity_refused")),
        ("xxe", Some("cap-xml"), XXE.as_bytes().to_vec(), bad("ingest", "xml_entity_refused")),
        ("malformed-xml", Some("cap-xml"), b"<alert><identifier>x</alert>".to_vec(), bad("ingest", "malformed_xml")),
        (
            "cap-nan-polygon",
            Some("cap-xml"),
            cap("nanpoly", sent, "NaN,-75.0 40.01,-75.0 40.01,-74.99 40.0,-75.0"),
            bad("ingest", "invalid_polygon"),
        ),
        (
            "cap-out-of-range-polygon",
            Some("cap-xml"),
            cap("oorpoly", sent, "95,-75.0 40.01,-75.0 40.01,-74.99 95,-75.0"),
            bad("ingest", "invalid_polygon"),
        ),
        ("malformed-csv", Some("csv-montco"), b"lat,lng,desc\n\"40.1,-75".to_vec(), bad("ingest", "malformed_csv")),
        ("malformed-eido", Some("eido-json"), b"{\"eido".to_vec(), bad("ingest", "malformed_json")),
        // Valid to ingest and policy, too large for the spatial stage's cover limit (set to
        // 100,000 resolution-9 cells here): the spatial stage dead-letters the alert.
        (
            "large-polygon",
            Some("cap-xml"),
            cap("large", sent, "39,-76 41,-76 41,-74 39,-74 39,-76"),
            bad("spatial", "area_too_large"),
        ),
        // A continent: the policy stage cannot place it and records a rejection in the
        // audit topic (checked below), so it never reaches the spatial stage.
        ("giant-polygon", Some("cap-xml"), cap("giant", sent, "20,-130 55,-130 55,-60 20,-60 20,-130"), None),
        // Self-intersecting (a bow tie): accepted and covered as drawn, never a crash.
        (
            "bowtie",
            Some("cap-xml"),
            cap("bowtie", sent, "40.0,-75.0 40.01,-74.99 40.0,-74.99 40.01,-75.0 40.0,-75.0"),
            None,
        ),
        ("cap-square", Some("cap-xml"), cap("square", sent, square), None),
        ("valid-2", Some("cad-json"), cad("valid-2", "39.96", "-75.15", &now), None),
    ]
}

#[test]
fn rfc3339_formats_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00-00:00");
    assert_eq!(rfc3339(1_709_251_199_000), "2024-02-29T23:59:59-00:00");
}

async fn publish(brokers: &str, topic: &str, cases: &[Case]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (key, format, payload, _) in cases {
        let mut headers = OwnedHeaders::new().insert(Header { key: header::SOURCE, value: Some("it") });
        if let Some(f) = format {
            headers = headers.insert(Header { key: header::FORMAT, value: Some(*f) });
        }
        let rec = FutureRecord::to(topic).key(*key).payload(payload).headers(headers);
        producer.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("delivered");
    }
}

fn header_str(m: &rdkafka::message::OwnedMessage, name: &str) -> String {
    m.headers()
        .and_then(|h| {
            h.iter().find(|h| h.key == name).and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_raw_records_are_dead_lettered_with_a_reason_and_valid_ones_still_become_alerts() {
    let mut cfg = common::config("hostile");
    cfg.topics.partitions = NonZeroU32::new(2).expect("nonzero");
    cfg.ingest.max_payload_bytes = NonZeroUsize::new(65_536).expect("nonzero");
    cfg.geo.max_cover_cells = 100_000;
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt = hexcast::runtime(&cfg);
    let shutdown = CancellationToken::new();
    let targets = [Target::Ingest, Target::Dedup, Target::Policy, Target::Spatial];
    let running = hexcast::start(&cfg, &rt, &targets, None, None, shutdown.clone()).await.expect("start");

    let now_ms = (rt.clock)().as_millis();
    let cases = cases(now_ms);
    publish(&cfg.kafka.brokers, rt.names.name(Topic::Raw), &cases).await;
    let bad: Vec<_> = cases.iter().filter(|c| c.3.is_some()).collect();
    let valid = cases.iter().filter(|c| c.3.is_none()).count();

    let brokers = cfg.kafka.brokers.clone();
    let names = rt.names.clone();
    let want_bad = bad.len();
    let (dead, indexed, audit) = tokio::task::spawn_blocking(move || {
        let settle = Duration::from_secs(2);
        let t = Duration::from_secs(90);
        (
            common::read_topic(&brokers, names.name(Topic::DeadLetter), "read_committed", want_bad, settle, t),
            common::read_topic(&brokers, names.name(Topic::Indexed), "read_committed", 4, settle, t),
            common::read_topic(&brokers, names.name(Topic::Audit), "read_committed", valid + 1, settle, t),
        )
    })
    .await
    .expect("reader");
    shutdown.cancel();
    running.join().await.expect("clean stop");

    let audit: Vec<(String, String, String)> = audit
        .iter()
        .map(|m| pb::PolicyDecision::decode(m.payload().unwrap_or_default()).expect("PolicyDecision"))
        .map(|d| (d.incident_id, d.rule, d.reason))
        .collect();
    // The continent: rejected by policy with a recorded decision, not silently dropped.
    assert!(audit.contains(&("it:giant".to_owned(), "target_area".to_owned(), "no_location".to_owned())), "{audit:?}");

    // Dead letters by the key of the record each stage read (a raw key, or an alert id).
    let mut got: BTreeMap<String, (String, String)> = BTreeMap::new();
    for m in &dead {
        let dl = pb::DeadLetter::decode(m.payload().unwrap_or_default()).expect("a DeadLetter");
        assert_eq!(dl.stage, header_str(m, header::DL_STAGE));
        assert_eq!(dl.reason, header_str(m, header::DL_REASON));
        assert!(!dl.detail.is_empty(), "a dead letter without detail: {dl:?}");
        let key = String::from_utf8_lossy(&dl.key).into_owned();
        got.insert(key, (dl.stage, dl.reason));
    }
    for (key, _, payload, want) in &bad {
        let (stage, reason) = want.expect("bad case");
        let found =
            got.iter().find(|(k, _)| k == key || (stage != "ingest" && k.contains(&key.replace("-polygon", ""))));
        let Some((_, (s, r))) = found else { panic!("{key}: no dead letter; got {got:?}; policy decisions {audit:?}") };
        assert_eq!((s.as_str(), r.as_str()), (stage, reason), "{key}");
        if stage == "ingest" {
            let dl = dead
                .iter()
                .map(|m| pb::DeadLetter::decode(m.payload().unwrap_or_default()).expect("dl"))
                .find(|d| d.key == key.as_bytes())
                .expect("dead letter");
            assert_eq!(&dl.payload, payload, "{key}: the original bytes are kept");
        }
    }
    assert_eq!(dead.len(), bad.len(), "one dead letter per bad record, nothing else: {got:?}");

    // Nothing valid was lost next to them.
    let indexed_ids: Vec<String> = indexed
        .iter()
        .map(|m| pb::IndexedAlert::decode(m.payload().unwrap_or_default()).expect("IndexedAlert"))
        .filter_map(|ia| ia.alert.map(|a| a.alert_id))
        .collect();
    for want in ["it:valid-1@", "it:valid-2@", "it:bowtie@", "it:square@"] {
        assert!(indexed_ids.iter().any(|id| id.starts_with(want)), "{want} was not indexed: {indexed_ids:?}");
    }
}

fn point(lat: f64, lng: f64) -> pb::Area {
    pb::Area { shape: Some(pb::area::Shape::Point(pb::LatLng { lat, lng })) }
}

fn polygon(ring: &[(f64, f64)]) -> pb::Area {
    let points = ring.iter().map(|&(lat, lng)| pb::LatLng { lat, lng }).collect();
    pb::Area {
        shape: Some(pb::area::Shape::Polygon(pb::Polygon { exterior: Some(pb::LinearRing { points }), holes: vec![] })),
    }
}

fn upsert(id: &str, areas: Vec<pb::Area>) -> pb::UpsertRequest {
    pb::UpsertRequest { subscription: Some(pb::Subscription { subscriber_id: id.into(), areas, ..Default::default() }) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_grpc_requests_get_the_right_status_naming_the_field() {
    let cfg = common::config("hostile-grpc");
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt = hexcast::runtime(&cfg);
    let token = "alpha-token-0123456789";
    let tokens = Tokens::new([("alpha".to_owned(), token.to_owned())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &[Target::Push], Some(tokens), Some(listener), shutdown.clone())
        .await
        .expect("start push");
    let addr = running.push.as_ref().expect("push").addr;
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");

    // Tokens.
    let ok = upsert("s1", vec![point(40.0, -75.0)]);
    for bad_token in ["", "wrong-token-0123456789", "alpha-token-012345678"] {
        let e = common::subscriptions(channel.clone(), bad_token).upsert(ok.clone()).await.expect_err("bad token");
        assert_eq!(e.code(), Code::Unauthenticated, "{bad_token:?}: {e:?}");
    }
    let mut raw = hexcast_proto::v1::subscriptions_client::SubscriptionsClient::new(channel.clone());
    let e = raw.upsert(ok.clone()).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = common::push(channel.clone(), "nope-nope-nope-nope")
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect_err("bad token");
    assert_eq!(e.code(), Code::Unauthenticated);

    // Bad subscriptions: INVALID_ARGUMENT naming the field.
    let mut subs = common::subscriptions(channel.clone(), token);
    let giant: Vec<(f64, f64)> = vec![(-60.0, -170.0), (70.0, -170.0), (70.0, 170.0), (-60.0, 170.0), (-60.0, -170.0)];
    let cases: Vec<(&str, pb::UpsertRequest, &str)> = vec![
        ("NaN latitude", upsert("s2", vec![point(f64::NAN, -75.0)]), "subscription.areas[0]"),
        ("infinite longitude", upsert("s3", vec![point(40.0, f64::INFINITY)]), "subscription.areas[0]"),
        ("latitude 91", upsert("s4", vec![point(91.0, -75.0)]), "subscription.areas[0]"),
        ("longitude -181", upsert("s5", vec![point(40.0, -181.0)]), "subscription.areas[0]"),
        (
            "negative radius",
            upsert(
                "s6",
                vec![pb::Area {
                    shape: Some(pb::area::Shape::Circle(pb::Circle {
                        center: Some(pb::LatLng { lat: 40.0, lng: -75.0 }),
                        radius_m: -5.0,
                    })),
                }],
            ),
            "subscription.areas[0]",
        ),
        ("giant polygon", upsert("s7", vec![point(40.0, -75.0), polygon(&giant)]), "subscription.areas[1]"),
        ("no area", upsert("s8", vec![]), "subscription.areas"),
        ("empty id", upsert(" ", vec![point(40.0, -75.0)]), "subscription.subscriber_id"),
        ("id with a slash", upsert("a/b", vec![point(40.0, -75.0)]), "subscription.subscriber_id"),
        ("empty area", upsert("s9", vec![pb::Area { shape: None }]), "subscription.areas[0]"),
    ];
    for (what, req, field) in cases {
        let e = subs.upsert(req).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(field), "{what}: `{}` does not name {field}", e.message());
    }
    // A self-intersecting polygon is accepted (covered as drawn), not a crash.
    let bowtie = [(40.0, -75.0), (40.01, -74.99), (40.0, -74.99), (40.01, -75.0), (40.0, -75.0)];
    subs.upsert(upsert("bowtie", vec![polygon(&bowtie)])).await.expect("a bow tie is a valid area");

    // Oversized messages: over the 4 MiB decode limit.
    let huge: Vec<(f64, f64)> =
        (0..300_000).map(|i| (40.0 + (i % 1000) as f64 * 1e-5, -75.0 + (i / 1000) as f64 * 1e-5)).collect();
    let e = subs.upsert(upsert("huge", vec![polygon(&huge)])).await.expect_err("oversized");
    assert_eq!(e.code(), Code::OutOfRange, "oversized: {e:?}");
    assert!(e.message().contains("too large"), "{}", e.message());

    // Cursors.
    let mut push = common::push(channel.clone(), token);
    for bad in ["garbage", "v1.x.1.0", "v1.99.0.0"] {
        let e = push
            .subscribe(pb::SubscribeRequest { cursor: bad.into(), ..Default::default() })
            .await
            .expect_err("bad cursor");
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("cursor"), "{bad}: {}", e.message());
    }

    // The service is still up and serving after all of that.
    subs.upsert(ok).await.expect("a good request still succeeds");
    shutdown.cancel();
    running.join().await.expect("clean stop");
}
