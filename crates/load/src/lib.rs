//! The Confab load generator's library: a Rust client that speaks Confab's signaling
//! protocol over a real WebSocket and real WebRTC (webrtc-rs), and synthetic media whose
//! payloads carry an index and a send time. The integration tests use the same client.
//!
//! - [`client`]: join, publish, subscribe, chat, events.
//! - [`media`]: synthetic VP8 and Opus RTP packets, and their verification.
//! - [`sim`]: a lighter simulated participant on the sans-IO core, for load runs.
//! - [`stats`]: what simulated subscribers measure (loss, duplicates, latency, first frame).

pub mod client;
pub mod media;
pub mod netem;
pub mod sim;
pub mod stats;
