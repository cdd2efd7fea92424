//! Errors of the media plane. Packets from the network never produce these: a bad packet
//! is dropped and counted. These are for operations a caller asked for.

use std::fmt::Display;

/// A peer-connection operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The SDP could not be parsed or applied.
    #[error("invalid SDP: {0}")]
    Sdp(String),
    #[error("invalid ICE candidate: {0}")]
    Candidate(String),
    #[error("webrtc: {0}")]
    Rtc(String),
}

impl PeerError {
    pub(crate) fn rtc(e: impl Display) -> Self {
        PeerError::Rtc(e.to_string())
    }
    pub(crate) fn sdp(e: impl Display) -> Self {
        PeerError::Sdp(e.to_string())
    }
    pub(crate) fn candidate(e: impl Display) -> Self {
        PeerError::Candidate(e.to_string())
    }
}

/// Starting the media plane failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind media socket {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the DTLS certificate: {0}")]
    Certificate(String),
    #[error("cannot start media worker: {0}")]
    Thread(std::io::Error),
    #[error("invalid media configuration: {0}")]
    Config(String),
}

/// A join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("room {room} is full ({max} participants)")]
    RoomFull { room: String, max: usize },
    #[error("the media server is shutting down")]
    ShuttingDown,
    #[error("this server holds its maximum of {max} rooms")]
    TooManyRooms { max: usize },
    /// An administrator removed this identity from the room, and it may not come back yet.
    #[error("an administrator removed you from room {room}: you may join it again in {seconds} s")]
    Banned { room: String, seconds: u64 },
}
