//! Why a participant leaves a room, and what its session is told.

use confab_proto::{ErrorCode, ServerMessage};

/// Why a participant is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Left,
    SessionGone,
    SlowConsumer,
    MediaFailed,
    Shutdown,
    Kicked,
    /// Its access token was revoked.
    Revoked,
    RoomClosed,
    /// An internal error (a panic) in the room's handling closed it.
    RoomFailed,
    /// It did not complete its first negotiation within `negotiation_timeout_ms`.
    NegotiationTimeout,
    /// Its offers kept costing more media-thread time than its budget.
    OverBudget,
}

impl Removal {
    /// The error the participant's session is told, when it did not leave by itself.
    pub fn notice(self) -> Option<ServerMessage> {
        match self {
            Removal::Left | Removal::SessionGone => None,
            // Its queue is full: the notice cannot be queued; closing the channel tells it.
            Removal::SlowConsumer => None,
            Removal::MediaFailed => Some(ServerMessage::fatal(
                ErrorCode::MediaFailed,
                "the media connection failed (no ICE consent); rejoin",
            )),
            Removal::Shutdown => Some(ServerMessage::fatal(
                ErrorCode::ServerShuttingDown,
                "the server is shutting down",
            )),
            Removal::Revoked => Some(ServerMessage::fatal(
                ErrorCode::Unauthorized,
                "your access token was revoked",
            )),
            Removal::Kicked => Some(ServerMessage::fatal(
                ErrorCode::Removed,
                "an administrator removed you from the room",
            )),
            Removal::RoomClosed => Some(ServerMessage::fatal(
                ErrorCode::Removed,
                "an administrator closed the room",
            )),
            Removal::RoomFailed => Some(ServerMessage::fatal(
                ErrorCode::Internal,
                "this room hit an internal error and was closed; join again",
            )),
            Removal::NegotiationTimeout => Some(ServerMessage::fatal(
                ErrorCode::Timeout,
                "the media connection was not negotiated in time (no answer to the server's offer)",
            )),
            Removal::OverBudget => Some(ServerMessage::fatal(
                ErrorCode::RateLimited,
                "removed: your offers kept exceeding the server's signaling budget",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Left => "left",
            Removal::SessionGone => "session gone",
            Removal::SlowConsumer => "signaling session too slow",
            Removal::MediaFailed => "media connection failed",
            Removal::Shutdown => "server shutting down",
            Removal::Kicked => "removed by an administrator",
            Removal::Revoked => "access token revoked",
            Removal::RoomClosed => "room closed by an administrator",
            Removal::RoomFailed => "room failed (internal error)",
            Removal::NegotiationTimeout => "first negotiation not completed in time",
            Removal::OverBudget => "signaling budget exceeded too often",
        }
    }
}
