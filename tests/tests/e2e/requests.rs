//! Geofenced requests and registered assets on Apache Kafka, over real gRPC sockets:
//! - a request reaches exactly the subscribers in its area (each backend only its own),
//!   two answer yes, one no, and the agency's stream yields exactly the two yeses;
//! - no RPC gives an agency recipient identities, counts or declines, roles are enforced
//!   and agencies and backends are isolated from each other;
//! - a cardiac-arrest alert arrives carrying the public AEDs within 400 m, nearest first.

use std::collections::BTreeSet;
use std::time::Duration;

use hexcast::Target;
use hexcast_api::{Role, Tokens};
use hexcast_core::{LatLng, Topic};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::assets_client::AssetsClient;
use hexcast_proto::v1::requests_client::RequestsClient;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::common;

const ALPHA: (&str, &str) = ("alpha", "alpha-token-0123456789");
const BETA: (&str, &str) = ("beta", "beta-token-0123456789ab");
const PD: (&str, &str) = ("pd", "pd-agency-token-0123456789");
const SHERIFF: (&str, &str) = ("sheriff", "sheriff-agency-token-0123");

fn tokens() -> Tokens {
    Tokens::with_roles([
        (ALPHA.0.to_owned(), ALPHA.1.to_owned(), Role::Backend),
        (BETA.0.to_owned(), BETA.1.to_owned(), Role::Backend),
        (PD.0.to_owned(), PD.1.to_owned(), Role::Agency),
        (SHERIFF.0.to_owned(), SHERIFF.1.to_owned(), Role::Agency),
    ])
}

fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    req.metadata_mut().insert("authorization", value);
    req
}

fn center() -> LatLng {
    LatLng::new(40.2415, -75.2838).expect("valid")
}

async fn upsert(channel: &Channel, token: &str, id: &str, at: LatLng, attributes: &[&str]) {
    common::subscriptions(channel.clone(), token)
        .upsert(pb::UpsertRequest {
            subscription: Some(pb::Subscription {
                subscriber_id: id.to_owned(),
                areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(at.into())) }],
                filter: Some(pb::SubscriptionFilter {
                    attributes: attributes.iter().map(|s| (*s).to_owned()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("upsert");
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every batch a backend receives until `want` subscriber ids are in, plus a settling
/// period in which a duplicate would show up.
async fn receive(channel: Channel, token: &str, want: usize) -> Vec<pb::NotificationBatch> {
    let mut stream = common::push(channel, token)
        .subscribe(pb::SubscribeRequest { from_beginning: true, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let mut got = Vec::new();
    let mut ids = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let wait = if ids >= want {
            Duration::from_secs(3)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(batch))) => {
                ids += batch.subscriber_ids.len();
                got.push(batch);
            }
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => break,
        }
    }
    got
}

fn ids_of(batches: &[pb::NotificationBatch]) -> Vec<String> {
    let mut ids: Vec<String> = batches.iter().flat_map(|b| b.subscriber_ids.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_reaches_its_area_and_the_agency_sees_exactly_the_two_yeses() {
    let cfg = common::config("requests");
    hexcast::create_topics(&cfg).await.expect("create topics");
    let rt = hexcast::runtime(&cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &[Target::Push], Some(tokens()), Some(listener), shutdown.clone())
        .await
        .expect("start push");
    let push = running.push.as_ref().expect("push running");
    let channel = Channel::from_shared(format!("http://{}", push.addr)).expect("uri").connect().await.expect("connect");

    // Inside a 250 m circle: two of alpha's, one of beta's. Outside: one of each.
    let c = center();
    upsert(&channel, ALPHA.1, "alpha-inside-north", c.destination(0.0, 50.0), &[]).await;
    upsert(&channel, ALPHA.1, "alpha-inside-east", c.destination(90.0, 150.0), &[]).await;
    upsert(&channel, ALPHA.1, "alpha-outside", c.destination(0.0, 2_000.0), &[]).await;
    upsert(&channel, BETA.1, "beta-inside-south", c.destination(180.0, 100.0), &[]).await;
    upsert(&channel, BETA.1, "beta-outside", c.destination(270.0, 5_000.0), &[]).await;
    wait_for("5 subscribers in the index", || push.index.len() == 5).await;

    let mut requests = RequestsClient::new(channel.clone());
    let now = (rt.clock)().as_millis();
    let create = pb::CreateGeoRequest {
        area: Some(pb::Area {
            shape: Some(pb::area::Shape::Circle(pb::Circle { center: Some(c.into()), radius_m: 250.0 })),
        }),
        window_start_ms: now - 3 * 3_600_000,
        window_end_ms: now - 3_600_000,
        case_number: "2024-1234".into(),
        text: "Doorbell video of this street between 14:00 and 16:00, please".into(),
    };
    // Bounds: an area over half a mile across and a window over 12 h are refused by field.
    let too_wide = pb::CreateGeoRequest {
        area: Some(pb::Area {
            shape: Some(pb::area::Shape::Circle(pb::Circle { center: Some(c.into()), radius_m: 500.0 })),
        }),
        ..create.clone()
    };
    let status = requests.create(bearer(PD.1, too_wide)).await.expect_err("too wide");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("area:"), "{}", status.message());
    let too_long = pb::CreateGeoRequest { window_start_ms: now - 14 * 3_600_000, ..create.clone() };
    let status = requests.create(bearer(PD.1, too_long)).await.expect_err("too long");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("window_end_ms:"), "{}", status.message());
    // Backends cannot create requests.
    let status = requests.create(bearer(ALPHA.1, create.clone())).await.expect_err("backend create");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    let created = requests.create(bearer(PD.1, create.clone())).await.expect("create").into_inner();
    let id = created.request_id.clone();
    assert_eq!((created.agency.as_str(), created.case_number.as_str()), ("pd", "2024-1234"));
    assert_eq!(created.state, pb::RequestState::Open as i32);

    // Each backend receives the request for exactly its own subscribers in the area.
    let (alpha, beta) = tokio::join!(receive(channel.clone(), ALPHA.1, 2), receive(channel.clone(), BETA.1, 1));
    assert_eq!(ids_of(&alpha), ["alpha-inside-east", "alpha-inside-north"]);
    assert_eq!(ids_of(&beta), ["beta-inside-south"]);
    for b in alpha.iter().chain(&beta) {
        let r = b.request.as_ref().expect("the notification carries the request");
        assert_eq!((r.request_id.as_str(), r.text.as_str()), (id.as_str(), create.text.as_str()));
        assert!(b.nearby_assets.is_empty());
    }

    // Two yeses (alpha's north retries its yes: it counts once), one no.
    let yes = |sub: &str, text: &str| pb::RespondRequest {
        request_id: id.clone(),
        subscriber_id: sub.to_owned(),
        consent: true,
        shared: Some(pb::SharedContent {
            text: text.to_owned(),
            media_urls: vec![format!("https://media.example/{sub}.mp4")],
        }),
    };
    let no =
        pb::RespondRequest { request_id: id.clone(), subscriber_id: "alpha-inside-east".into(), ..Default::default() };
    let a = requests.respond(bearer(ALPHA.1, yes("alpha-inside-north", "a car at 14:37"))).await.expect("yes");
    let b = requests.respond(bearer(ALPHA.1, no)).await.expect("no");
    // Yes and no look the same to the backend too: an empty message.
    assert_eq!(a.into_inner().encode_to_vec(), b.into_inner().encode_to_vec());
    requests.respond(bearer(ALPHA.1, yes("alpha-inside-north", "a car at 14:37"))).await.expect("retry");
    requests.respond(bearer(BETA.1, yes("beta-inside-south", "someone running at 15:10"))).await.expect("yes");
    // A backend answers only for its own subscribers.
    let status = requests.respond(bearer(BETA.1, yes("alpha-inside-east", "x"))).await.expect_err("not beta's");
    assert_eq!(status.code(), tonic::Code::NotFound);
    // ...and only for subscribers the request could have reached.
    let status = requests.respond(bearer(ALPHA.1, yes("alpha-outside", "x"))).await.expect_err("outside");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    // An agency cannot answer.
    let status = requests.respond(bearer(PD.1, yes("alpha-inside-east", "x"))).await.expect_err("agency");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // The agency's stream: exactly the two yeses, with what was shared, and no identity.
    let mut stream = requests
        .stream_responses(bearer(PD.1, pb::StreamResponsesRequest { request_id: id.clone() }))
        .await
        .expect("stream")
        .into_inner();
    let mut answers = Vec::new();
    loop {
        let wait = if answers.len() >= 2 { Duration::from_secs(3) } else { Duration::from_secs(60) };
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(a))) => answers.push(a),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => break,
        }
    }
    let texts: BTreeSet<String> =
        answers.iter().map(|a| a.shared.as_ref().map(|s| s.text.clone()).unwrap_or_default()).collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(texts, BTreeSet::from(["a car at 14:37".to_owned(), "someone running at 15:10".to_owned()]));
    for a in &answers {
        assert_eq!(a.request_id, id);
        assert_eq!(a.response_id.len(), 32);
        assert!(!a.response_id.contains("alpha") && !a.response_id.contains("beta"));
    }
    drop(stream);

    // Another agency learns nothing, not even that the request exists: the same NOT_FOUND
    // as for an id that was never issued.
    let sheriff = |id: &str| {
        let mut r = requests.clone();
        let id = id.to_owned();
        async move {
            let get = r.get(bearer(SHERIFF.1, pb::GetGeoRequest { request_id: id.clone() })).await;
            let cancel = r.cancel(bearer(SHERIFF.1, pb::CancelGeoRequest { request_id: id.clone() })).await;
            let stream =
                r.stream_responses(bearer(SHERIFF.1, pb::StreamResponsesRequest { request_id: id.clone() })).await;
            [get.err(), cancel.err(), stream.err()]
                .map(|s| s.map(|s| (s.code(), s.message().replace(&id, "ID"))).expect("refused"))
        }
    };
    let theirs = sheriff(&id).await;
    let unknown = sheriff("0123456789abcdef0123456789abcdef").await;
    assert_eq!(theirs, unknown);
    assert!(theirs.iter().all(|(code, _)| *code == tonic::Code::NotFound), "{theirs:?}");
    // Backends have no agency view of requests; agencies no backend view of subscribers.
    let status = requests.get(bearer(ALPHA.1, pb::GetGeoRequest { request_id: id.clone() })).await.expect_err("get");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = common::push(channel.clone(), PD.1)
        .subscribe(pb::SubscribeRequest { from_beginning: true, ..Default::default() })
        .await
        .expect_err("agency subscribe");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = common::subscriptions(channel.clone(), PD.1)
        .get(pb::GetRequest { subscriber_id: "alpha-inside-north".into() })
        .await
        .expect_err("agency get subscriber");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // Get returns the request as made: nothing about recipients.
    let got = requests.get(bearer(PD.1, pb::GetGeoRequest { request_id: id.clone() })).await.expect("get");
    assert_eq!(got.into_inner(), created);

    // Cancel: later answers are refused.
    let cancelled =
        requests.cancel(bearer(PD.1, pb::CancelGeoRequest { request_id: id.clone() })).await.expect("cancel");
    assert_eq!(cancelled.into_inner().state, pb::RequestState::Cancelled as i32);
    let status = requests.respond(bearer(BETA.1, yes("beta-inside-south", "late"))).await.expect_err("cancelled");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    // The recipients are told, on the same durable path: beta's stream from the start now
    // holds the request and its cancellation for its one subscriber.
    let beta = receive(channel.clone(), BETA.1, 2).await;
    let states: Vec<(i32, Vec<String>)> =
        beta.iter().map(|b| (b.request.as_ref().map_or(0, |r| r.state), b.subscriber_ids.clone())).collect();
    let inside = vec!["beta-inside-south".to_owned()];
    assert_eq!(states, [(pb::RequestState::Open as i32, inside.clone()), (pb::RequestState::Cancelled as i32, inside)]);

    // The public transparency log has the request made and cancelled, with coarse cells
    // and no recipient data; the responses topic has no decline.
    let brokers = cfg.kafka.brokers.clone();
    let names = rt.names.clone();
    let (log, responses) = tokio::task::spawn_blocking(move || {
        let (settle, t) = (Duration::from_secs(1), Duration::from_secs(30));
        (
            common::read_topic(&brokers, names.name(Topic::Transparency), "read_committed", 2, settle, t),
            common::read_topic(&brokers, names.name(Topic::RequestResponses), "read_committed", 3, settle, t),
        )
    })
    .await
    .expect("reader");
    assert_eq!(log.len(), 2);
    let subscribers = ["alpha-inside-north", "alpha-inside-east", "beta-inside-south", "alpha", "beta"];
    let mut states = Vec::new();
    for m in &log {
        let payload = m.payload().expect("payload");
        for s in subscribers {
            assert!(!payload.windows(s.len()).any(|w| w == s.as_bytes()), "transparency record names {s}");
        }
        let e = pb::TransparencyEntry::decode(payload).expect("entry");
        assert_eq!(
            (e.request_id.as_str(), e.agency.as_str(), e.case_number.as_str()),
            (id.as_str(), "pd", "2024-1234")
        );
        assert_eq!((e.window_start_ms, e.window_end_ms), (create.window_start_ms, create.window_end_ms));
        assert!(!e.cells.is_empty());
        for cell in e.cells {
            let cell = h3o::CellIndex::try_from(cell).expect("cell");
            assert_eq!(cell.resolution(), h3o::Resolution::Seven);
        }
        states.push(e.state);
    }
    assert_eq!(states, [pb::RequestState::Open as i32, pb::RequestState::Cancelled as i32]);
    let responders: Vec<String> = responses
        .iter()
        .map(|m| {
            let h = m.headers().and_then(|h| h.iter().find(|h| h.key == "hexcast-responder").and_then(|h| h.value));
            String::from_utf8_lossy(h.unwrap_or_default()).into_owned()
        })
        .collect();
    assert_eq!(responders.len(), 3, "two yeses and one retried yes: {responders:?}");
    assert!(!responders.iter().any(|r| r.ends_with("alpha-inside-east")), "a decline was written: {responders:?}");

    shutdown.cancel();
    running.join().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cardiac_arrest_alert_carries_the_public_aeds_within_400_m_nearest_first() {
    let cfg = common::config("assets");
    hexcast::create_topics(&cfg).await.expect("create topics");
    let rt = hexcast::runtime(&cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = hexcast::start(&cfg, &rt, &Target::ALL, Some(tokens()), Some(listener), shutdown.clone())
        .await
        .expect("start pipeline");
    let push = running.push.as_ref().expect("push running");
    let channel = Channel::from_shared(format!("http://{}", push.addr)).expect("uri").connect().await.expect("connect");

    // The incident at the center of a resolution-10 cell (policy's target resolution), so that policy's snapping of the
    // target keeps the center where it is.
    let cell = center().cell(h3o::Resolution::Ten);
    let c = h3o::LatLng::from(cell);
    let c = LatLng::new(c.lat(), c.lng()).expect("valid");
    let mut assets = AssetsClient::new(channel.clone());
    let register = |id: &str, kind: &str, at: LatLng, vis: pb::AssetVisibility| pb::AssetRequest {
        asset: Some(pb::Asset {
            asset_id: id.to_owned(),
            kind: kind.to_owned(),
            location: Some(at.into()),
            access_notes: format!("{id}: lobby, 24/7"),
            visibility: vis as i32,
            ..Default::default()
        }),
    };
    use pb::AssetVisibility::{Agency, OwnerConsent, Public};
    for (token, id, kind, bearing, d, vis) in [
        (ALPHA.1, "aed-300", "aed", 0.0, 300.0, Public),
        (ALPHA.1, "aed-30", "aed", 90.0, 30.0, Public),
        (BETA.1, "aed-150", "aed", 200.0, 150.0, Public),
        (BETA.1, "aed-600", "aed", 45.0, 600.0, Public),
        (ALPHA.1, "camera-20", "camera", 10.0, 20.0, Public),
        (PD.1, "aed-agency-60", "aed", 300.0, 60.0, Agency),
        (BETA.1, "aed-consent-40", "aed", 120.0, 40.0, OwnerConsent),
    ] {
        assets.register(bearer(token, register(id, kind, c.destination(bearing, d), vis))).await.expect("register");
    }
    // Registering twice conflicts; a bad field is named.
    let status = assets.register(bearer(ALPHA.1, register("aed-30", "aed", c, Public))).await.expect_err("exists");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let status = assets.register(bearer(ALPHA.1, register("x", "AED", c, Public))).await.expect_err("kind");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("asset.kind:"), "{}", status.message());

    // Owners are isolated: another tenant cannot update or delete an asset it does not own
    // (its key space is its own), and the owner's asset is unchanged.
    let status = assets
        .update(bearer(BETA.1, register("aed-30", "aed", c.destination(0.0, 5_000.0), Public)))
        .await
        .expect_err("not beta's");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let deleted = assets.delete(bearer(BETA.1, pb::DeleteAssetRequest { asset_id: "aed-30".into() })).await;
    assert!(!deleted.expect("delete").into_inner().existed);
    // An update moves an asset: the 300 m one goes to 900 m and back.
    assets
        .update(bearer(ALPHA.1, register("aed-300", "aed", c.destination(0.0, 900.0), Public)))
        .await
        .expect("update");
    assert_eq!(lookup_keys(&assets, ALPHA.1, c).await, ["alpha/aed-30", "beta/aed-150"]);
    assets
        .update(bearer(ALPHA.1, register("aed-300", "aed", c.destination(0.0, 300.0), Public)))
        .await
        .expect("update");

    // Lookups by role: agencies see public and agency assets, backends public ones, nobody
    // the owner-consent one.
    let lookup = |token: &'static str| {
        let mut a = assets.clone();
        async move {
            let req =
                pb::NearbyLookupRequest { point: Some(c.into()), radius_m: 400.0, kinds: vec!["aed".into()], limit: 0 };
            let found = a.nearby_lookup(bearer(token, req)).await.expect("lookup").into_inner().assets;
            found.into_iter().map(|a| a.asset_key).collect::<Vec<_>>()
        }
    };
    assert_eq!(lookup(PD.1).await, ["alpha/aed-30", "pd/aed-agency-60", "beta/aed-150", "alpha/aed-300"]);
    assert_eq!(lookup(ALPHA.1).await, ["alpha/aed-30", "beta/aed-150", "alpha/aed-300"]);
    let status = assets
        .nearby_lookup(bearer(
            PD.1,
            pb::NearbyLookupRequest { point: Some(c.into()), radius_m: 0.0, ..Default::default() },
        ))
        .await
        .expect_err("radius");
    assert!(status.message().starts_with("radius_m:"), "{}", status.message());

    // A CPR-trained subscriber next door; a cardiac arrest at the center.
    upsert(&channel, ALPHA.1, "cpr-neighbor", c.destination(45.0, 80.0), &["cpr_trained"]).await;
    wait_for("the subscriber in the index", || push.index.len() == 1).await;
    let now_ms = (rt.clock)().as_millis();
    let body = serde_json::json!({
        "id": "ca-1", "version": 1, "call_type": "CARDIAC ARREST", "lat": c.lat(), "lng": c.lng(),
        "occurred_at": now_ms, "address": "1 TEST ST",
    });
    common::publish_raw(
        &cfg.kafka.brokers,
        rt.names.name(Topic::Raw),
        &[("ca-1".into(), body.to_string().into_bytes())],
    )
    .await;
    let got = receive(channel.clone(), ALPHA.1, 1).await;
    assert_eq!(ids_of(&got), ["cpr-neighbor"]);
    let batch = &got[0];
    let alert = batch.alert.as_ref().expect("alert");
    assert_eq!(alert.category, "medical.cardiac_arrest");
    assert!(batch.request.is_none());
    let keys: Vec<&str> = batch.nearby_assets.iter().map(|a| a.asset_key.as_str()).collect();
    // What leaves hexcast locates the incident no more finely than its coarse cell: the
    // alert's public target is centered on the coarse centroid, and the nearby AEDs are the
    // public ones within 400 m of that center (never of the precise call location).
    let public_center = match alert.target.as_ref().and_then(|a| a.shape.as_ref()) {
        Some(pb::area::Shape::Circle(circle)) => {
            LatLng::try_from(circle.center.as_ref().expect("center")).expect("valid center")
        }
        other => panic!("a point incident's public target is a circle: {other:?}"),
    };
    let coarse = h3o::LatLng::from(h3o::CellIndex::try_from(alert.coarse_cell).expect("coarse cell"));
    assert!(public_center.distance_m(LatLng::new(coarse.lat(), coarse.lng()).expect("valid")) < 1.0);
    assert_eq!(keys, lookup_keys(&assets, ALPHA.1, public_center).await);
    for a in &batch.nearby_assets {
        assert!(a.distance_m <= 400.0, "{} at {} m", a.asset_key, a.distance_m);
        assert_eq!(a.kind, "aed");
        assert!(a.access_notes.ends_with("lobby, 24/7"));
    }

    shutdown.cancel();
    running.join().await.expect("clean shutdown");
}

async fn lookup_keys(assets: &AssetsClient<Channel>, token: &str, c: LatLng) -> Vec<String> {
    let req = pb::NearbyLookupRequest { point: Some(c.into()), radius_m: 400.0, kinds: vec!["aed".into()], limit: 0 };
    let found = assets.clone().nearby_lookup(bearer(token, req)).await.expect("lookup").into_inner().assets;
    found.into_iter().map(|a| a.asset_key).collect()
}

/// No message an agency can receive from Requests has a field that could carry a recipient
/// or a count: checked on the service descriptors themselves, so a field added later fails.
#[test]
fn no_agency_visible_message_has_a_recipient_or_count_field() {
    let set = prost_types::FileDescriptorSet::decode(hexcast_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let messages: std::collections::HashMap<String, &prost_types::DescriptorProto> = set
        .file
        .iter()
        .flat_map(|f| f.message_type.iter().map(move |m| (format!(".{}.{}", f.package(), m.name()), m)))
        .collect();
    let service = set.file.iter().flat_map(|f| &f.service).find(|s| s.name() == "Requests").expect("Requests service");
    let mut todo: Vec<String> = service.method.iter().map(|m| m.output_type().to_owned()).collect();
    let mut seen = BTreeSet::new();
    let forbidden = ["count", "recipient", "subscriber", "tenant", "declin", "delivered", "total"];
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(m) = messages.get(&name) else { continue };
        for f in &m.field {
            let lower = f.name().to_lowercase();
            assert!(!forbidden.iter().any(|w| lower.contains(w)), "{name}.{} could leak recipients", f.name());
            if !f.type_name().is_empty() {
                todo.push(f.type_name().to_owned());
            }
        }
    }
    assert!(seen.contains(".hexcast.v1.ConsentedResponse") && seen.contains(".hexcast.v1.GeoRequest"));
}
