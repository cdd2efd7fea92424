//! Confab's wire types, shared by the server, the load generator and the tests.
//!
//! - [`ids`]: newtype ids (`RoomId`, `ParticipantId`, `TrackId`) and name validation.
//! - [`signal`]: the JSON messages exchanged over the signaling WebSocket, version
//!   [`PROTOCOL_VERSION`], documented in `docs/protocol.md`.
//! - [`chat`]: the JSON messages carried over the `chat` data channel.
//!
//! No tokio, no webrtc: this crate only describes bytes on the wire.

pub mod chat;
pub mod ids;
pub mod signal;

pub use chat::{ChatIn, ChatOut};
pub use ids::{DisplayName, IdError, ParticipantId, RequestId, RoomId, TrackId};
pub use signal::{
    ClientConfig, ClientMessage, DecodeError, Emoji, ErrorCode, IceCandidate, IceServer, MediaKind,
    ParticipantInfo, PcTarget, Quality, ServerMessage, SubscribedTrack, TrackInfo, TrackSource,
};

/// The signaling protocol version this build speaks. A client names it in `join`.
pub const PROTOCOL_VERSION: u32 = 1;

/// How long a connection check (`join` with `check`) may stay joined.
pub const CHECK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The label of the data channel that carries chat.
pub const CHAT_CHANNEL_LABEL: &str = "chat";
