//! Confab signaling: the HTTP surface of the server.
//!
//! - [`router`]: the axum router: the web client, `/ws`, health and stats.
//! - [`session`]: one WebSocket connection, generic over its sink and stream so that it is
//!   tested with channels. A small state machine (not joined, joined) that turns client
//!   messages into media-plane commands and media-plane events into server messages.
//! - [`assets`]: the web client (`web/`), embedded in the binary.
//! - [`admin`]: the admin API (API key, OpenAPI document); [`metrics`]: Prometheus.
//! - [`webhooks`]: signed, ordered, retried delivery of room events.
//! - [`auth`]: access tokens (JWT) and the grants they carry.
//! - [`guard`]: caps on connections that have not joined, and the counters of every
//!   budget and deadline that bites.
//! - Several nodes: the session asks `confab_cluster::Cluster` where a room not open here
//!   lives, and redirects the client there (`ServerMessage::Redirect`).

pub mod admin;
pub mod assets;
pub mod auth;
pub mod guard;
pub mod metrics;
pub mod resume;
pub mod router;
pub mod session;
pub mod turn;
pub mod webhooks;

pub use router::{AppState, SignalConfig, router};
