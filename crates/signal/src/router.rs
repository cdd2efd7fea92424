//! Routes: `/` and `/room/{name}` serve the meeting page, `/ws` upgrades to signaling,
//! `/healthz` and `/readyz` answer liveness and readiness, `/metrics` is for Prometheus,
//! `/api/stats` reports counters as JSON, `/api/...` is the admin API (see
//! [`crate::admin`]), and anything else is looked up among the web client's files.

use crate::assets;
use crate::session::{self, SessionEnv, SessionLimits};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use confab_sfu::Sfu;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Signaling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    /// Largest text message accepted; larger ones get a `message_too_large` error.
    pub max_message_bytes: usize,
    /// Hard cap at the WebSocket layer: a larger frame closes the connection (1009).
    pub hard_max_message_bytes: usize,
    /// Interval of WebSocket pings; a client silent for three intervals is disconnected.
    pub ping_interval_ms: u64,
    /// Messages one connection may send per second (twice as many in a burst).
    pub messages_per_second: u32,
    /// New signaling connections (joins) per second from one IP address (twice as many
    /// in a burst); 0 = no limit.
    pub joins_per_second_per_ip: u32,
    /// Pages allowed to open the WebSocket, by their `Origin` (`https://meet.example.com`).
    /// Empty: the server's own origin only. `*`: any. Clients that send no `Origin`
    /// (native apps, the load generator) are not browsers and are not checked.
    pub allowed_origins: Vec<String>,
    /// How long a participant whose WebSocket dropped (no close frame) stays in its room
    /// for the client to come back with `join.resume`; 0 = leave at once.
    pub resume_window_ms: u64,
    /// A WebSocket must send `join` within this time, or it is closed (`timeout`).
    pub join_timeout_ms: u64,
    /// WebSockets that have not joined yet, from one address and in total; more are
    /// refused (HTTP 503) until some join or close.
    pub max_pending_per_ip: u32,
    pub max_pending: u32,
    /// Media sections a `publish` offer may have, receive-only and stopped ones included.
    pub max_offer_sections: usize,
    /// `publish` offers one participant may send per second (five times as many in a
    /// burst); refused beyond, and the connection closed after 20 refusals.
    pub publishes_per_second: u32,
    /// The admin API key (from the `[admin]` section); none disables the admin API.
    #[serde(skip)]
    pub admin_api_key: Option<String>,
    /// TURN servers and the secret that mints participants' credentials (from the
    /// `[turn]` section).
    #[serde(skip)]
    pub turn: crate::turn::TurnConfig,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            hard_max_message_bytes: 1024 * 1024,
            ping_interval_ms: 5_000,
            messages_per_second: 50,
            joins_per_second_per_ip: 50,
            allowed_origins: Vec::new(),
            resume_window_ms: 15_000,
            join_timeout_ms: 10_000,
            max_pending_per_ip: 32,
            max_pending: 1024,
            max_offer_sections: 16,
            publishes_per_second: 2,
            admin_api_key: None,
            turn: Default::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub sfu: Sfu,
    pub config: Arc<SignalConfig>,
    pub sessions: Arc<AtomicI64>,
    pub webhooks: Arc<crate::webhooks::WebhookStats>,
    /// False once shutdown began: `/readyz` then fails so load balancers drain.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    pub verifier: Arc<crate::auth::Verifier>,
    /// Sessions whose connection dropped, waiting to be resumed.
    pub resumes: crate::resume::Resumes,
    /// Several nodes sharing a Redis; `None` for a single node.
    pub cluster: Option<confab_cluster::Cluster>,
    /// Budgets and deadlines of the signaling edge, and what they refused.
    pub guards: Arc<crate::guard::Guards>,
    /// The embedded TURN server's counts (zero when it is off).
    pub turn: Arc<crate::turn::TurnStats>,
    joins: Option<Arc<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>>,
}

impl AppState {
    pub fn new(sfu: Sfu, config: SignalConfig, verifier: crate::auth::Verifier) -> Self {
        let joins = std::num::NonZeroU32::new(config.joins_per_second_per_ip).map(|rate| {
            let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2"));
            Arc::new(governor::RateLimiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Self {
            sfu,
            config: Arc::new(config),
            sessions: Arc::new(AtomicI64::new(0)),
            webhooks: Default::default(),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            verifier: Arc::new(verifier),
            resumes: Default::default(),
            cluster: None,
            guards: Default::default(),
            turn: Default::default(),
            joins,
        }
    }

    /// Forgets what the per-address join limiter keeps of addresses not seen lately (its
    /// store grows with every distinct address, cheaply so over IPv6). Call periodically.
    pub fn prune(&self) {
        if let Some(joins) = &self.joins {
            joins.retain_recent();
            joins.shrink_to_fit();
        }
    }

    /// Addresses the per-address join limiter remembers.
    pub fn join_limiter_len(&self) -> usize {
        self.joins.as_ref().map_or(0, |j| j.len())
    }
}

/// Whether a WebSocket upgrade from a page at `origin` is allowed, for a server reached
/// as `host` (the `Host` header).
pub fn origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true; // not a browser
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // Same origin: the page came from this very server.
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/room/{name}", get(room_page))
        .route("/check", get(|| async { assets::serve("check.html") }))
        .route("/ws", get(ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/stats", get(stats))
        .merge(crate::admin::routes())
        .fallback(get(static_file))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !state.sfu.serving() {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no media worker",
        )
            .into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&state),
    )
        .into_response()
}

async fn index() -> Response {
    assets::serve("index.html")
}

async fn room_page(Path(_name): Path<String>) -> Response {
    // The page reads the room name from its own URL.
    assets::serve("index.html")
}

async fn static_file(uri: axum::http::Uri) -> Response {
    assets::serve(uri.path())
}

#[derive(Serialize)]
struct StatsBody {
    sessions: i64,
    media: confab_sfu::StatsSnapshot,
    #[serde(rename = "loop")]
    loop_stats: confab_sfu::LoopSnapshot,
    tokio_tasks: usize,
    /// With several nodes in cascade mode: the relay link to each other node.
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_links: Option<Vec<confab_cluster::cascade::LinkStats>>,
}

async fn stats(State(state): State<AppState>) -> Json<StatsBody> {
    Json(StatsBody {
        relay_links: state
            .cluster
            .as_ref()
            .and_then(|c| c.cascade())
            .map(|c| c.links()),
        sessions: state.sessions.load(Ordering::Relaxed),
        media: state.sfu.stats(),
        loop_stats: state.sfu.loop_stats(),
        tokio_tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    })
}

async fn ws(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !origin_allowed(&state.config.allowed_origins, origin, host) {
        tracing::info!(
            origin = origin.unwrap_or(""),
            "websocket from a foreign origin refused"
        );
        return (
            StatusCode::FORBIDDEN,
            "this page's origin may not use this server (signal.allowed_origins)",
        )
            .into_response();
    }
    let limited = state
        .joins
        .as_ref()
        .is_some_and(|l| l.check_key(&peer.ip()).is_err());
    // A connection that has not joined costs memory and a descriptor while asking for
    // nothing: a bounded number of them, per address and in total.
    let caps = crate::guard::PendingCaps {
        per_ip: state.config.max_pending_per_ip,
        total: state.config.max_pending,
    };
    let pending = match state.guards.admit_pending(peer.ip(), caps) {
        Ok(slot) => slot,
        Err(why) => {
            let msg = match why {
                crate::guard::PendingRefusal::PerIp => {
                    "too many connections from your address are waiting to join: try again in a moment"
                }
                crate::guard::PendingRefusal::Total => {
                    "the server has too many connections waiting to join: try again in a moment"
                }
            };
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                msg,
            )
                .into_response();
        }
    };
    let limits = SessionLimits {
        max_message_bytes: state.config.max_message_bytes,
        ping_interval: Duration::from_millis(state.config.ping_interval_ms),
        messages_per_second: state.config.messages_per_second,
        resume_window: Duration::from_millis(state.config.resume_window_ms),
        join_timeout: Duration::from_millis(state.config.join_timeout_ms),
        max_offer_sections: state.config.max_offer_sections,
        publishes_per_second: state.config.publishes_per_second,
    };
    let env = SessionEnv {
        sfu: state.sfu.clone(),
        limits,
        verifier: state.verifier.clone(),
        resumes: state.resumes.clone(),
        cluster: state.cluster.clone(),
        guards: state.guards.clone(),
        turn: Arc::new(state.config.turn.clone()),
    };
    upgrade
        .max_message_size(state.config.hard_max_message_bytes)
        .max_frame_size(state.config.hard_max_message_bytes)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = futures_util::StreamExt::split(socket);
            if limited {
                // Said over the socket, so that the page can show it.
                session::refuse(
                    sink,
                    confab_proto::ServerMessage::fatal(
                        confab_proto::ErrorCode::RateLimited,
                        "too many connections from your address: try again in a moment",
                    ),
                )
                .await;
                return;
            }
            state.sessions.fetch_add(1, Ordering::Relaxed);
            session::run(sink, stream, env, Some(pending)).await;
            state.sessions.fetch_sub(1, Ordering::Relaxed);
        })
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        let host = Some("meet.example.com:8443");
        // Not a browser; same origin; a foreign one.
        assert!(origin_allowed(&none, None, host));
        assert!(origin_allowed(
            &none,
            Some("https://meet.example.com:8443"),
            host
        ));
        assert!(!origin_allowed(&none, Some("https://evil.example"), host));
        assert!(!origin_allowed(
            &none,
            Some("https://meet.example.com"),
            host
        ));
        let listed = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(
            &listed,
            Some("https://APP.example.com"),
            host
        ));
        assert!(!origin_allowed(&listed, Some("https://evil.example"), host));
        assert!(origin_allowed(
            &["*".into()],
            Some("https://evil.example"),
            host
        ));
        assert!(!origin_allowed(&none, Some("null"), host));
    }
}
