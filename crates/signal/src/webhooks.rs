//! Webhooks: every room event is POSTed as JSON to each configured URL, signed with
//! HMAC-SHA256 over the body (`X-Confab-Signature: sha256=<hex>`), numbered with a
//! per-room sequence number, delivered in order per URL with retries and exponential
//! backoff. Events reach the dispatcher through a bounded queue the media workers never
//! wait on (a full queue drops and counts), and delivery runs on its own thread: a slow
//! or dead endpoint delays only webhooks.

use confab_sfu::RoomEvent;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Endpoints that receive every event. Empty: webhooks off.
    pub urls: Vec<String>,
    /// HMAC-SHA256 key for the signature header.
    pub secret: String,
    /// Events queued before new ones are dropped.
    pub queue: usize,
    /// Delivery attempts per event and URL.
    pub max_attempts: u32,
    /// First retry delay; doubles at each attempt.
    pub backoff_ms: u64,
    pub timeout_ms: u64,
    /// Put in every event, to tell nodes apart. Empty on a node of a cluster: the
    /// server puts its `cluster.node_id` here.
    pub node_id: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: String::new(),
            queue: 1024,
            max_attempts: 5,
            backoff_ms: 200,
            timeout_ms: 5_000,
            node_id: String::new(),
        }
    }
}

#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    /// Deliveries given up after `max_attempts`.
    pub failed: AtomicU64,
}

/// The body of a webhook: the event's fields plus its name, room sequence number, node
/// and time.
#[derive(Debug, Serialize)]
struct Body<'a> {
    #[serde(flatten)]
    event: &'a RoomEvent,
    seq: u64,
    node: &'a str,
    created_at: u64,
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts the dispatcher; returns the queue workers send events to.
pub fn start(config: WebhookConfig, stats: Arc<WebhookStats>) -> mpsc::Sender<RoomEvent> {
    let (tx, mut rx) = mpsc::channel::<RoomEvent>(config.queue.max(16));
    let spawned = std::thread::Builder::new()
        .name("confab-webhooks".into())
        .spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
                .http_status_as_error(false)
                .build()
                .into();
            let mut seqs: HashMap<String, u64> = HashMap::new();
            while let Some(event) = rx.blocking_recv() {
                let seq = seqs.entry(event.room().to_string()).or_insert(0);
                *seq += 1;
                let body = Body {
                    event: &event,
                    seq: *seq,
                    node: &config.node_id,
                    created_at: SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                };
                let Ok(json) = serde_json::to_vec(&body) else {
                    continue;
                };
                let sig = signature(config.secret.as_bytes(), &json);
                for url in &config.urls {
                    deliver(&agent, &config, &stats, url, event.name(), &json, &sig);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the webhook dispatcher");
    }
    tx
}

fn deliver(
    agent: &ureq::Agent,
    config: &WebhookConfig,
    stats: &WebhookStats,
    url: &str,
    event: &str,
    json: &[u8],
    sig: &str,
) {
    let mut delay = Duration::from_millis(config.backoff_ms);
    for attempt in 1..=config.max_attempts.max(1) {
        let r = agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Confab-Event", event)
            .header("X-Confab-Signature", sig)
            .send(json);
        match r {
            Ok(resp) if resp.status().is_success() => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(resp) => {
                tracing::debug!(%url, status = %resp.status(), attempt, "webhook refused");
            }
            Err(e) => tracing::debug!(%url, error = %e, attempt, "webhook failed"),
        }
        if attempt < config.max_attempts {
            stats.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(delay);
            delay *= 2;
        }
    }
    stats.failed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%url, event, "webhook delivery given up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc_4231_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn body_carries_event_name_and_sequence() {
        let ev = RoomEvent::RoomStarted {
            room: confab_proto::RoomId::parse("r").unwrap(),
        };
        let v = serde_json::to_value(Body {
            event: &ev,
            seq: 3,
            node: "n1",
            created_at: 7,
        })
        .unwrap();
        assert_eq!(v["event"], "room_started");
        assert_eq!(v["room"], "r");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["node"], "n1");
    }
}
