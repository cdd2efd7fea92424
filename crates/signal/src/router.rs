//! Routes: `/` and `/room/{name}` serve the meeting page, `/ws` upgrades to signaling,
//! `/healthz` and `/readyz` answer liveness and readiness, `/metrics` is for Prometheus,
//! `/api/stats` reports counters as JSON, `/api/...` is the admin API (see
//! [`crate::admin`]), and anything else is looked up among the web client's files.

use crate::assets;
use crate::session::{self, SessionLimits};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
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
    /// The admin API key (from the `[admin]` section); none disables the admin API.
    #[serde(skip)]
    pub admin_api_key: Option<String>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            hard_max_message_bytes: 1024 * 1024,
            ping_interval_ms: 5_000,
            admin_api_key: None,
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
}

impl AppState {
    pub fn new(sfu: Sfu, config: SignalConfig) -> Self {
        Self {
            sfu,
            config: Arc::new(config),
            sessions: Arc::new(AtomicI64::new(0)),
            webhooks: Default::default(),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/room/{name}", get(room_page))
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
    if state.ready.load(Ordering::Relaxed) {
        "ready".into_response()
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
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
}

async fn stats(State(state): State<AppState>) -> Json<StatsBody> {
    Json(StatsBody {
        sessions: state.sessions.load(Ordering::Relaxed),
        media: state.sfu.stats(),
        loop_stats: state.sfu.loop_stats(),
        tokio_tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    })
}

async fn ws(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> impl IntoResponse {
    let limits = SessionLimits {
        max_message_bytes: state.config.max_message_bytes,
        ping_interval: Duration::from_millis(state.config.ping_interval_ms),
    };
    upgrade
        .max_message_size(state.config.hard_max_message_bytes)
        .max_frame_size(state.config.hard_max_message_bytes)
        .on_upgrade(move |socket| async move {
            state.sessions.fetch_add(1, Ordering::Relaxed);
            let (sink, stream) = futures_util::StreamExt::split(socket);
            session::run(sink, stream, state.sfu.clone(), limits).await;
            state.sessions.fetch_sub(1, Ordering::Relaxed);
        })
}
