//! Webhooks: every room event is POSTed as JSON to each configured URL, signed with
//! HMAC-SHA256 over the body (`X-Confab-Signature: sha256=<hex>`), numbered with a
//! per-room sequence number, delivered in order per URL with retries and exponential
//! backoff. Events reach the dispatcher through a bounded queue the media workers never
//! wait on (a full queue drops and counts).
//!
//! The dispatcher numbers, serialises and signs each event once, then hands it to every
//! URL's own delivery thread through that URL's own bounded queue (`webhooks.queue`
//! events): a slow or dead endpoint (up to `max_attempts` timeouts and backoffs per
//! event, ~28 s with the defaults) delays only its own deliveries, and when its queue is
//! full its new events are dropped and counted (`confab_webhooks_dropped`), never held
//! by the others. Order is kept per URL.
//!
//! A room's sequence number is forgotten some time after the room finished (events such
//! as `recording_finished` may come after `room_finished`): the [`FINISHED_ROOMS`] most
//! recently finished are remembered, so the numbers stay monotonic for late events and
//! memory stays bounded.

use confab_sfu::RoomEvent;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
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
    /// Events queued before new ones are dropped: toward the dispatcher, and toward each
    /// URL on its own.
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
    /// Events not delivered to one URL because its queue was full (its endpoint is
    /// slow or down).
    pub dropped: AtomicU64,
}

/// Finished rooms whose sequence numbers are remembered, for their late events.
pub const FINISHED_ROOMS: usize = 4096;

/// Per-room sequence numbers, bounded: a room's entry leaves the live map when the room
/// finishes, and is remembered among the last [`FINISHED_ROOMS`] finished.
#[derive(Default)]
struct Sequences {
    live: HashMap<String, u64>,
    finished: VecDeque<(String, u64)>,
}

/// Where an event stands in its room's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Starts,
    Ends,
    During,
}

impl Life {
    fn of(e: &RoomEvent) -> Life {
        match e {
            RoomEvent::RoomStarted { .. } => Life::Starts,
            RoomEvent::RoomFinished { .. } => Life::Ends,
            _ => Life::During,
        }
    }
}

impl Sequences {
    /// The next number of `room`'s events.
    fn next(&mut self, room: &str, life: Life) -> u64 {
        let n = if let Some(s) = self.live.get_mut(room) {
            *s += 1;
            *s
        } else if let Some(i) = self.finished.iter().position(|(r, _)| r == room) {
            // A late event of a finished room stays among the finished; the room
            // starting again makes it live again.
            self.finished[i].1 += 1;
            let n = self.finished[i].1;
            if life == Life::Starts {
                self.finished.remove(i);
                self.live.insert(room.to_string(), n);
            }
            return n;
        } else {
            self.live.insert(room.to_string(), 1);
            1
        };
        if life == Life::Ends {
            self.live.remove(room);
            if self.finished.len() >= FINISHED_ROOMS {
                self.finished.pop_front();
            }
            self.finished.push_back((room.to_string(), n));
        }
        n
    }
}

/// One event, ready to send: serialised and signed once for every URL.
struct Delivery {
    event: &'static str,
    json: Vec<u8>,
    sig: String,
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

/// Starts the dispatcher and one delivery thread per URL; returns the queue workers
/// send events to.
pub fn start(config: WebhookConfig, stats: Arc<WebhookStats>) -> mpsc::Sender<RoomEvent> {
    let (tx, mut rx) = mpsc::channel::<RoomEvent>(config.queue.max(16));
    let config = Arc::new(config);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut queues = Vec::new();
    for (i, url) in config.urls.iter().enumerate() {
        let (q, deliveries) = std::sync::mpsc::sync_channel::<Arc<Delivery>>(config.queue.max(1));
        let (agent, config, stats, url2) =
            (agent.clone(), config.clone(), stats.clone(), url.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("confab-webhook-{i}"))
            .spawn(move || {
                while let Ok(d) = deliveries.recv() {
                    deliver(&agent, &config, &stats, &url2, d.event, &d.json, &d.sig);
                }
            });
        match spawned {
            Ok(_) => queues.push((url.clone(), q)),
            Err(e) => tracing::error!(error = %e, %url, "cannot start a webhook delivery thread"),
        }
    }
    let spawned = std::thread::Builder::new()
        .name("confab-webhooks".into())
        .spawn(move || {
            let mut seqs = Sequences::default();
            while let Some(event) = rx.blocking_recv() {
                let body = Body {
                    event: &event,
                    seq: seqs.next(event.room().as_str(), Life::of(&event)),
                    node: &config.node_id,
                    created_at: SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                };
                let Ok(json) = serde_json::to_vec(&body) else {
                    continue;
                };
                let sig = signature(config.secret.as_bytes(), &json);
                let d = Arc::new(Delivery {
                    event: event.name(),
                    json,
                    sig,
                });
                for (url, q) in &queues {
                    if let Err(std::sync::mpsc::TrySendError::Full(_)) = q.try_send(d.clone()) {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%url, event = d.event, "webhook queue full: event dropped");
                    }
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
    fn sequences_are_per_room_monotonic_and_bounded() {
        use Life::*;
        let mut s = Sequences::default();
        // (room, event, number)
        let cases: &[(&str, Life, u64)] = &[
            ("a", Starts, 1),
            ("b", Starts, 1),
            ("a", During, 2),
            ("a", Ends, 3),
            // A late event of a finished room goes on from its last number, and the
            // room is not live again for it...
            ("a", During, 4),
            ("b", Ends, 2),
        ];
        for (room, life, want) in cases {
            assert_eq!(s.next(room, *life), *want, "{room} {life:?}");
        }
        assert!(s.live.is_empty(), "{:?}", s.live);
        // ...until it starts again.
        assert_eq!(s.next("a", Starts), 5);
        assert_eq!(s.live.get("a"), Some(&5));
        // However many rooms come and go, what is kept stays bounded.
        for i in 0..FINISHED_ROOMS + 100 {
            let room = format!("r{i}");
            s.next(&room, Starts);
            s.next(&room, During);
            s.next(&room, Ends);
            s.next(&room, During); // recording_finished, after the room
        }
        assert_eq!(s.live.len(), 1);
        assert_eq!(s.finished.len(), FINISHED_ROOMS);
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
