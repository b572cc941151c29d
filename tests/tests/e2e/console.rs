//! The web console in a real browser (Debian's `chromium` driven over WebDriver by
//! `chromedriver`), on a real pipeline on Apache Kafka:
//! - a reviewer signs in; two held `crime.hostage` alerts appear on the open page without a
//!   reload; approving one releases it and a push backend receives it on Push.Subscribe;
//!   the other is rejected with a reason, which the page's decision list (from the audit
//!   topic) and the audit topic itself show;
//! - the public transparency page lists a request made through Requests.Create and holds
//!   no recipient data; the operator's live map shows the released alert;
//! - without a session a page answers 401, a form post without the CSRF token 403, and
//!   every page carries the strict Content-Security-Policy.
//!
//! Screenshots of the three pages (1280x800, and the review queue at 390x844) are written to
//! `docs/console/`. Without chromium or chromedriver the test fails with one line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hexcast::Target;
use hexcast_api::{Role, Tokens};
use hexcast_core::{
    Category, Certainty, EventKind, Incident, IncidentEvent, IncidentStatus, IntoRecord, LatLng, Severity, Timestamp,
    Topic, Urgency,
};
use hexcast_proto::v1 as pb;
use hexcast_proto::v1::requests_client::RequestsClient;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::common;

const REVIEWER: (&str, &str) = ("ana", "ana-reviewer-token-0123");
const OPERATOR: (&str, &str) = ("oscar", "oscar-operator-token-0123");
const BACKEND: (&str, &str) = ("alpha", "alpha-token-0123456789");
const AGENCY: (&str, &str) = ("pd", "pd-agency-token-0123456789");
const SUBSCRIBER: &str = "alpha-subscriber-7f3a";
const CASE: &str = "2026-HX-0042";

/// The place of both incidents and of the subscriber.
fn scene() -> LatLng {
    LatLng::new(40.1, -75.3).expect("valid")
}

fn hostage(id: &str, now_ms: i64) -> IncidentEvent {
    let incident = Incident {
        id: Incident::make_id("pd", id),
        source: "pd".into(),
        source_id: id.into(),
        version: 1,
        category: Category::parse("crime.hostage").expect("known"),
        raw_type: "HOSTAGE".into(),
        severity: Severity::Extreme,
        urgency: Urgency::Immediate,
        certainty: Certainty::Observed,
        status: IncidentStatus::Active,
        occurred_at: Timestamp(now_ms),
        updated_at: Timestamp(now_ms),
        expires_at: None,
        location: Some(scene()),
        areas: vec![],
        sensitive: Default::default(),
        references: None,
        community_threat: Some(true),
        published_at: None,
    };
    IncidentEvent { kind: EventKind::New, incident, merged_ids: vec![] }
}

fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    req.metadata_mut().insert("authorization", value);
    req
}

/// An executable: `env` if set, else the first of `names` on PATH. Fails with one line.
fn tool(env: &str, names: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env).map(PathBuf::from) {
        assert!(
            p.is_file(),
            "{env}={}: no such file (the console browser test needs chromium and chromedriver)",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found: the console browser test needs Debian's chromium and chromium-driver \
         (apt-get install -y chromium chromium-driver) or {env} set",
        names[0]
    )
}

/// chromedriver, stopped when dropped.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client) {
    let chromium = tool("HEXCAST_CHROMIUM", &["chromium", "chromium-browser"]);
    let chromedriver = tool("HEXCAST_CHROMEDRIVER", &["chromedriver"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let driver = Driver(
        std::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display())),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--hide-scrollbars", "--force-device-scale-factor=1"],
        }),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let client = loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "chromedriver did not start a session: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    (driver, client)
}

/// One HTTP/1.1 exchange on a fresh connection: (status, lowercased head, body).
async fn http(addr: SocketAddr, method: &str, path: &str, cookie: Option<&str>, body: &str) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect console");
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("receive");
        response
    })
    .await
    .expect("http exchange");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Waits for an element whose text contains `text`.
async fn wait_text(client: &Client, css: &str, text: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(e) = client.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && t.contains(text)
        {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "no `{css}` containing `{text}`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` selects, finding it again if the page redrew it in between.
async fn click(client: &Client, css: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let error = match client.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(_) => return,
                Err(error) => error,
            },
            Err(error) => error,
        };
        assert!(std::time::Instant::now() < deadline, "cannot click `{css}`: {error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `text` into the field `css` selects, finding it again if the page redrew it. The
/// field is cleared first, so a retry does not type the text twice.
async fn type_into(client: &Client, css: &str, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let error = match client.find(Locator::Css(css)).await {
            Ok(e) => match e.clear().await {
                Ok(()) => match e.send_keys(text).await {
                    Ok(()) => return,
                    Err(error) => error,
                },
                Err(error) => error,
            },
            Err(error) => error,
        };
        assert!(std::time::Instant::now() < deadline, "cannot type into `{css}`: {error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gone(client: &Client, css: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while client.find(Locator::Css(css)).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "`{css}` is still on the page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client.wait().at_most(Duration::from_secs(90)).for_element(Locator::Css(css)).await.unwrap_or_else(|e| {
        panic!("no `{css}` on the page: {e}");
    })
}

/// Sizes the window so that the page's viewport is `width` x `height` (the window's outer
/// size includes the browser's frame).
async fn viewport(client: &Client, width: u32, height: u32) {
    client.set_window_size(width, height).await.expect("resize");
    let inner = client.execute("return [window.innerWidth, window.innerHeight];", vec![]).await.expect("inner size");
    let dim = |i: usize| inner.get(i).and_then(serde_json::Value::as_u64).unwrap_or(0) as u32;
    // The frame is (outer - inner); the outer size we want is the viewport plus the frame.
    client
        .set_window_size((2 * width).saturating_sub(dim(0)), (2 * height).saturating_sub(dim(1)))
        .await
        .expect("resize");
}

async fn screenshot(client: &Client, name: &str, width: u32, height: u32) {
    viewport(client, width, height).await;
    let png = client.screenshot().await.expect("screenshot");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
    std::fs::create_dir_all(&dir).expect("docs/console");
    std::fs::write(dir.join(name), &png).expect("write screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    // IHDR: width and height, big-endian, at bytes 16..24.
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().expect("4 bytes")),
        u32::from_be_bytes(png[20..24].try_into().expect("4 bytes")),
    );
    assert_eq!((w, h), (width, height), "{name}: viewport size");
}

async fn sign_in(client: &Client, console: SocketAddr, token: &str) {
    client.goto(&format!("http://{console}/login")).await.expect("login page");
    wait_for(client, "input#token").await.send_keys(token).await.expect("type token");
    client.find(Locator::Css("form.login button[type=submit]")).await.expect("button").click().await.expect("submit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn editors_review_in_a_browser_and_the_public_sees_requests_without_recipients() {
    let started = std::time::Instant::now();
    // Fail fast (one line) without a browser, before any broker work.
    let (_driver, client) = browser().await;

    let mut cfg = common::config("console");
    cfg.console.poll_interval_ms = 300;
    hexcast::create_topics(&cfg).await.expect("topics");
    let rt = hexcast::runtime(&cfg);
    let push_tokens = Tokens::with_roles([
        (BACKEND.0.to_owned(), BACKEND.1.to_owned(), Role::Backend),
        (AGENCY.0.to_owned(), AGENCY.1.to_owned(), Role::Agency),
    ]);
    let reviewers = Tokens::new([(REVIEWER.0.to_owned(), REVIEWER.1.to_owned())]);
    let operators = Tokens::new([(OPERATOR.0.to_owned(), OPERATOR.1.to_owned())]);
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind") };
    let shutdown = CancellationToken::new();
    let running = hexcast::start_with_console(
        &cfg,
        &rt,
        &[Target::Policy, Target::Spatial, Target::Review, Target::Console, Target::Push],
        Some(push_tokens),
        Some(bind().await),
        Some((reviewers, bind().await)),
        Some((operators, bind().await)),
        shutdown.clone(),
    )
    .await
    .expect("start");
    let console = running.console.as_ref().expect("console running").addr;
    let push = running.push.as_ref().expect("push running");
    let channel = Channel::from_shared(format!("http://{}", push.addr)).expect("uri").connect().await.expect("connect");

    // A push backend's subscriber at the scene.
    common::subscriptions(channel.clone(), BACKEND.1)
        .upsert(pb::UpsertRequest {
            subscription: Some(pb::Subscription {
                subscriber_id: SUBSCRIBER.to_owned(),
                areas: vec![pb::Area { shape: Some(pb::area::Shape::Point(scene().into())) }],
                ..Default::default()
            }),
        })
        .await
        .expect("upsert");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while push.index.len() != 1 {
        assert!(std::time::Instant::now() < deadline, "subscriber not indexed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No session: 401, for the page and its fragment alike.
    assert_eq!(http(console, "GET", "/review", None, "").await.0, 401);
    assert_eq!(http(console, "GET", "/review/fragment", None, "").await.0, 401);
    assert_eq!(http(console, "GET", "/map", None, "").await.0, 401);

    // The reviewer signs in and keeps the page open.
    sign_in(&client, console, REVIEWER.1).await;
    wait_for(&client, "section#queue").await;
    let cookies = client.get_all_cookies().await.expect("cookies");
    let session = cookies.iter().find(|c| c.name() == "hexcast_session").expect("session cookie");
    assert_eq!(session.http_only(), Some(true), "{session:?}");
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)", "{session:?}");
    let cookie = format!("hexcast_session={}", session.value());

    // Signed in, the page answers, with the strict CSP; a post without the CSRF token is
    // refused with 403 (and so is one with a wrong token), and nothing is decided.
    let (status, head, _) = http(console, "GET", "/review", Some(&cookie), "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");

    // Two hostage incidents reach policy, which holds them.
    let now_ms = (rt.clock)().as_millis();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &cfg.kafka.brokers).create().expect("producer");
    for id in ["h1", "h2"] {
        let rec = hostage(id, now_ms).into_record();
        let payload = rec.payload.expect("payload");
        producer
            .send(
                FutureRecord::to(rt.names.name(Topic::Unique)).key(&rec.key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    // They appear on the open page without a reload (the page polls).
    wait_for(&client, "article[data-incident=\"pd:h1\"]").await;
    wait_for(&client, "article[data-incident=\"pd:h2\"]").await;
    // Read afresh: the page redraws the queue when a hold arrives, and an element found
    // before that is stale.
    let h1 = "article[data-incident=\"pd:h1\"]";
    let text = wait_text(&client, h1, "timeout in").await;
    assert!(text.contains("crime.hostage") && text.contains("extreme"), "{text}");
    wait_for(&client, &format!("{h1} svg.map polygon")).await;
    let held = running.review.as_ref().expect("review").pending.lock().expect("pending")["pd:h1"].clone();
    assert!(text.contains(&held.held.alert.headline), "the headline as published: {text}");

    for body in ["incident=pd%3Ah1&reason=x", "incident=pd%3Ah1&reason=x&csrf=0000"] {
        let (status, _, _) = http(console, "POST", "/review/reject", Some(&cookie), body).await;
        assert_eq!(status, 403, "{body}");
    }
    assert_eq!(http(console, "POST", "/review/reject", None, "incident=pd%3Ah1&reason=x").await.0, 401);
    assert!(running.review.as_ref().expect("review").pending.lock().expect("pending").contains_key("pd:h1"));

    screenshot(&client, "review.png", 1280, 800).await;
    screenshot(&client, "review-phone.png", 390, 844).await;
    viewport(&client, 1280, 800).await;

    // Approve h1; reject h2 with a reason.
    click(&client, "article[data-incident=\"pd:h1\"] form[action=\"/review/approve\"] button").await;
    wait_text(&client, "p.flash", "Approved").await;
    // Once the queue applied it, the page (polling) drops the card and lists the decision;
    // after that nothing changes under the reviewer's hands.
    wait_text(&client, "#decisions tr[data-incident=\"pd:h1\"]", "approved").await;
    wait_gone(&client, "article[data-incident=\"pd:h1\"]").await;
    let reject = "article[data-incident=\"pd:h2\"] form[action=\"/review/reject\"]";
    type_into(&client, &format!("{reject} input[name=reason]"), "duplicate report").await;
    click(&client, &format!("{reject} button")).await;
    wait_text(&client, "p.flash", "Rejected").await;
    // The decision list (from the audit topic) shows both, by the reviewer, with the reason.
    let row = wait_text(&client, "#decisions tr[data-incident=\"pd:h2\"]", "duplicate report").await;
    assert!(row.contains("rejected_by_reviewer") && row.contains(REVIEWER.0), "{row}");

    // The push backend receives the approved alert.
    let mut stream = common::push(channel.clone(), BACKEND.1)
        .subscribe(pb::SubscribeRequest { from_beginning: true, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let batch = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let b = stream.message().await.expect("stream").expect("stream open");
            if b.alert.as_ref().is_some_and(|a| a.incident_id == "pd:h1") {
                return b;
            }
            assert!(b.alert.as_ref().is_none_or(|a| a.incident_id != "pd:h2"), "the rejected alert was sent");
        }
    })
    .await
    .expect("the approved alert reaches the backend");
    assert_eq!(batch.subscriber_ids, vec![SUBSCRIBER.to_owned()]);
    assert_eq!(batch.alert.as_ref().map(|a| a.category.as_str()), Some("crime.hostage"));

    // The audit topic itself has the rejection with reviewer and reason.
    let (brokers, audit_topic) = (cfg.kafka.brokers.clone(), rt.names.name(Topic::Audit).to_owned());
    let audit = tokio::task::spawn_blocking(move || {
        common::read_topic(&brokers, &audit_topic, "read_committed", 4, Duration::from_secs(1), Duration::from_secs(90))
    })
    .await
    .expect("reader");
    let rejected = audit
        .iter()
        .map(|m| pb::PolicyDecision::decode(m.payload().expect("payload")).expect("decision"))
        .find(|d| d.incident_id == "pd:h2" && d.rule == "review")
        .expect("the rejection is audited");
    assert_eq!(
        (rejected.decision(), rejected.reviewer.as_str(), rejected.note.as_str()),
        (pb::Decision::Rejected, REVIEWER.0, "duplicate report")
    );

    // An agency's request, made over gRPC, on the public page; nothing about recipients.
    let now = (rt.clock)().as_millis();
    let created = RequestsClient::new(channel.clone())
        .create(bearer(
            AGENCY.1,
            pb::CreateGeoRequest {
                area: Some(pb::Area {
                    shape: Some(pb::area::Shape::Circle(pb::Circle { center: Some(scene().into()), radius_m: 250.0 })),
                }),
                window_start_ms: now - 3 * 3_600_000,
                window_end_ms: now - 3_600_000,
                case_number: CASE.into(),
                text: "Doorbell video of this street between 14:00 and 16:00, please".into(),
            },
        ))
        .await
        .expect("create request")
        .into_inner();
    client.delete_all_cookies().await.expect("sign out");
    client.goto(&format!("http://{console}/transparency")).await.expect("transparency page");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let source = client.source().await.expect("source");
        if source.contains(CASE) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "request not listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.refresh().await.expect("reload");
    }
    let row = wait_text(&client, &format!("#requests tr[data-request=\"{}\"]", created.request_id), CASE).await;
    assert!(row.contains(AGENCY.0), "{row}");
    wait_text(&client, "#summary", AGENCY.0).await;
    let (status, _, public) = http(console, "GET", "/transparency", None, "").await;
    assert_eq!(status, 200);
    for secret in [SUBSCRIBER, BACKEND.0, BACKEND.1, "Doorbell", "subscriber_ids"] {
        assert!(!public.contains(secret), "the public page shows `{secret}`");
    }
    screenshot(&client, "transparency.png", 1280, 800).await;

    // The operator's live map shows the released alert with its notified count.
    sign_in(&client, console, OPERATOR.1).await;
    wait_for(&client, "section#live").await;
    let row = wait_text(&client, "#alerts tr[data-alert] td.notified", "1").await;
    assert_eq!(row.trim(), "1");
    wait_text(&client, "#alerts", "crime.hostage").await;
    // A reviewer's page is not the operator's.
    let op_cookie = client.get_all_cookies().await.expect("cookies");
    let op = op_cookie.iter().find(|c| c.name() == "hexcast_session").expect("operator session");
    assert_eq!(http(console, "GET", "/review", Some(&format!("hexcast_session={}", op.value())), "").await.0, 403);
    // The slider's window of the last hours lists it too, as active.
    client.goto(&format!("http://{console}/map?hours=6")).await.expect("map, last 6 h");
    wait_for(&client, "form.slider input#hours").await;
    wait_text(&client, "#alerts td.status", "active").await;
    screenshot(&client, "map.png", 1280, 800).await;

    client.close().await.expect("close browser");
    shutdown.cancel();
    running.join().await.expect("clean stop");
    eprintln!("console browser test took {:.1} s", started.elapsed().as_secs_f64());
}
