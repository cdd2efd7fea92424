//! Chat messages on the `chat` data channel (JSON text).
//!
//! The client sends [`ChatIn`]; the server validates it, stamps the sender and the time,
//! keeps it in the room's history and relays a [`ChatOut`] to everyone else. The sender's
//! identity is never read from the client.

use crate::ids::{DisplayName, ParticipantId, RequestId};
use serde::{Deserialize, Serialize};

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChatIn {
    Chat {
        text: String,
        /// Echoed on the signaling `error` that refuses this message, if one does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<RequestId>,
    },
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatOut {
    Chat {
        /// Per-room sequence number, increasing.
        id: u64,
        from: ParticipantId,
        name: DisplayName,
        text: String,
        /// Milliseconds since the Unix epoch, stamped by the server.
        ts: u64,
        /// True when replayed from history to a late joiner.
        #[serde(default)]
        history: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_in_rejects_spoofed_sender() {
        assert!(
            serde_json::from_str::<ChatIn>(r#"{"type":"chat","text":"hi","from":"PA_x"}"#).is_err()
        );
        assert_eq!(
            serde_json::from_str::<ChatIn>(r#"{"type":"chat","text":"hi"}"#).unwrap(),
            ChatIn::Chat {
                text: "hi".into(),
                request_id: None
            }
        );
    }
}
