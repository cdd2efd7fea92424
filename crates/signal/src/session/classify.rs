//! The session state machine's first step, pure: what one text frame from a client is
//! (refused, fatal, a join, a leave, or a message for the media plane), by whether the
//! connection has joined yet.

use confab_proto::{
    ClientMessage, DisplayName, ErrorCode, PROTOCOL_VERSION, RequestId, RoomId, ServerMessage,
};

/// What to do with one text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Tell the client it sent something wrong; keep the connection.
    Refuse(ServerMessage),
    /// Tell the client and close the connection.
    Fatal(ServerMessage),
    Join {
        room: RoomId,
        name: DisplayName,
        token: Option<String>,
        resume: Option<String>,
        /// A connection check: a room of its own (see `ClientMessage::Join`).
        check: bool,
    },
    Leave,
    /// Anything else a joined participant sends: passed to the media plane as it is.
    Forward(ClientMessage),
}

/// The session state machine: not joined -> joined -> closed. Returns the frame's
/// `request_id` too (refusals already carry it).
pub fn classify(joined: bool, text: &str, max_message_bytes: usize) -> (Option<RequestId>, Step) {
    if text.len() > max_message_bytes {
        return (
            None,
            Step::Refuse(ServerMessage::error(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes exceeds the limit of {max_message_bytes} bytes",
                    text.len()
                ),
            )),
        );
    }
    let (id, msg) = ClientMessage::decode_request(text);
    let step = match msg {
        Err(e) => Step::Refuse(ServerMessage::error(e.code(), e.to_string())),
        Ok(msg) => classify_message(joined, msg),
    };
    let step = match step {
        Step::Refuse(m) => Step::Refuse(m.reply_to(id.clone())),
        Step::Fatal(m) => Step::Fatal(m.reply_to(id.clone())),
        s => s,
    };
    (id, step)
}

fn classify_message(joined: bool, msg: ClientMessage) -> Step {
    match (joined, msg) {
        (
            false,
            ClientMessage::Join {
                protocol,
                room,
                name,
                token,
                resume,
                check,
            },
        ) => {
            if protocol != PROTOCOL_VERSION {
                Step::Fatal(ServerMessage::fatal(
                    ErrorCode::UnsupportedProtocol,
                    format!(
                        "protocol version {protocol} is not supported; this server speaks {PROTOCOL_VERSION}"
                    ),
                ))
            } else if check && resume.is_some() {
                Step::Fatal(ServerMessage::fatal(
                    ErrorCode::InvalidMessage,
                    "a connection check cannot resume a session",
                ))
            } else {
                Step::Join {
                    room,
                    name,
                    token,
                    resume,
                    check,
                }
            }
        }
        (true, ClientMessage::Join { .. }) => Step::Refuse(ServerMessage::error(
            ErrorCode::AlreadyJoined,
            "this connection has already joined a room",
        )),
        (false, m) => Step::Refuse(ServerMessage::error(
            ErrorCode::NotJoined,
            format!("{} before join: send join first", m.type_name()),
        )),
        (true, ClientMessage::Leave) => Step::Leave,
        (true, m) => Step::Forward(m),
    }
}
