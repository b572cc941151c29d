//! The way to the cluster: the one function every client config starts from, and the
//! start-up check that uses it. Before any stage starts, one client connects with the
//! configured security settings and fetches metadata, so that a wrong password, a broker
//! certificate the CA does not vouch for or an unreachable broker fails the start with a
//! message that says which, instead of stages that retry quietly forever. Nothing here may
//! print a secret: the password stays inside the librdkafka config.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use crate::config::{KafkaConfig, SecurityProtocol};

/// A librdkafka config with every connection setting of `kafka`: brokers, security,
/// `[kafka.client]`. Callers add their role's settings (group id, transactional id).
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    for (k, v) in kafka.client_properties() {
        cfg.set(k, v);
    }
    cfg
}

/// Why the cluster could not be reached at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The brokers refused the credentials.
    #[error("kafka authentication failed at {brokers} ({login}): {detail}")]
    Authentication { brokers: String, login: String, detail: String },
    /// The TLS handshake failed (untrusted or mismatched certificate, TLS on one side only).
    #[error("kafka tls handshake failed at {brokers} (protocol {protocol}): {detail}")]
    Tls { brokers: String, protocol: String, detail: String },
    /// librdkafka refused the client config (an unreadable key, a property it lacks).
    #[error("kafka client config rejected: {0}")]
    Config(#[source] KafkaError),
    /// No broker answered in time.
    #[error("kafka brokers {brokers} not reachable within {waited_ms} ms (protocol {protocol}): {detail}")]
    Unreachable { brokers: String, protocol: String, waited_ms: u128, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Authentication,
    Tls,
}

/// Records the first authentication or TLS error librdkafka reports, which otherwise only
/// reach a log line while the client retries.
#[derive(Default)]
struct Watch {
    failure: Mutex<Option<(Failure, String)>>,
    last: Mutex<Option<String>>,
}

impl Watch {
    fn failure(&self) -> Option<(Failure, String)> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn last(&self) -> Option<String> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        let kind = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Some(Failure::Authentication)
            }
            Some(RDKafkaErrorCode::SSL) => Some(Failure::Tls),
            _ => None,
        };
        tracing::debug!(%error, reason, "kafka connection check");
        if let Some(kind) = kind
            && let Ok(mut first) = self.failure.lock()
            && first.is_none()
        {
            *first = Some((kind, reason.to_owned()));
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(format!("{error}: {reason}"));
        }
    }
}

// A producer, because its poll hands error events to `ClientContext::error` with
// librdkafka's reason text; a consumer's poll returns them as bare codes.
impl ProducerContext for Watch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, (): ()) {}
}

/// Connects to the cluster with `kafka`'s settings and fetches metadata; fails at the first
/// authentication or TLS error, or after `timeout` without an answer. Blocking: call it
/// from `spawn_blocking` in async code.
pub fn check_connection(kafka: &KafkaConfig, timeout: Duration) -> Result<(), ConnectError> {
    let mut cfg = client_config(kafka);
    // Retry connecting quickly: the check waits for the first answer, not for a backoff.
    cfg.set("reconnect.backoff.ms", "100").set("reconnect.backoff.max.ms", "1000");
    let client: BaseProducer<Watch> = cfg.create_with_context(Watch::default()).map_err(ConnectError::Config)?;
    let brokers = kafka.brokers.clone();
    let protocol = kafka.security.as_ref().map_or(SecurityProtocol::Plaintext, |s| s.protocol()).to_string();
    let start = Instant::now();
    loop {
        let step = timeout.saturating_sub(start.elapsed()).min(Duration::from_millis(400));
        let fetched = client.client().fetch_metadata(None, step);
        // Serves queued events for a while: one poll serves one event, and log lines of
        // every reconnect queue up in front of the error events.
        client.poll(Duration::from_millis(100));
        match client.context().failure() {
            Some((Failure::Authentication, detail)) => {
                let login = match kafka.security.as_ref().and_then(|s| s.sasl_mechanism().map(|m| (s, m))) {
                    Some((s, m)) => match s.sasl_username() {
                        Some(user) => format!("sasl {m} as user `{user}`"),
                        None => format!("sasl {m}"),
                    },
                    None => format!("protocol {protocol}"),
                };
                return Err(ConnectError::Authentication { brokers, login, detail });
            }
            Some((Failure::Tls, detail)) => return Err(ConnectError::Tls { brokers, protocol, detail }),
            None => {}
        }
        match fetched {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() >= timeout => {
                let detail = client.context().last().unwrap_or_else(|| e.to_string());
                return Err(ConnectError::Unreachable { brokers, protocol, waited_ms: timeout.as_millis(), detail });
            }
            Err(_) => {}
        }
    }
}
