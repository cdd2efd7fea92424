//! Signaling messages: JSON text frames over the `/ws` WebSocket.
//!
//! Every message is an object whose `type` field names it (`snake_case`). The full
//! reference, with the order in which they flow, is `docs/protocol.md`; keep the two in step.

use crate::ids::{DisplayName, ParticipantId, RequestId, RoomId, TrackId};
use serde::{Deserialize, Serialize};

/// Which of a participant's two peer connections a message is about.
///
/// Confab uses two peer connections per participant, as LiveKit does: the client offers on
/// the *publisher* connection (its own camera and microphone), the server offers on the
/// *subscriber* connection (everyone else's tracks, and the chat data channel). Each side
/// only ever offers on its own connection, so offers never collide (no glare).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcTarget {
    Publisher,
    Subscriber,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

/// What a published track shows: the UI lays out and labels tracks by source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Microphone,
    Camera,
    Screen,
    #[default]
    Unknown,
}

/// The highest video quality a subscriber wants of a track. For simulcast tracks the
/// server picks the layer (low, medium, high) within this and within the bandwidth toward
/// the subscriber; `off` pauses the track for that subscriber.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Off,
    Low,
    Medium,
    #[default]
    High,
}

/// An ICE candidate, in the browser's `RTCIceCandidateInit` JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "sdpMLineIndex"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// One track the client offers in a `publish`, identified by its transceiver's mid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTrack {
    pub mid: String,
    #[serde(default)]
    pub source: TrackSource,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Must be the first message. Answered by `joined` (then an `offer`), or a fatal `error`.
    Join {
        protocol: u32,
        room: RoomId,
        name: DisplayName,
        /// An access token (JWT) for `room`: required when the server requires tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The `resume_token` of an earlier `joined`: continue that session (same
        /// participant, tracks and subscriptions) after the WebSocket dropped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        /// A connection check (the `/check` page): with the same token checks as a join
        /// to `room`, the connection gets a room of its own (hidden, receive-only, for
        /// [`crate::CHECK_LIFETIME`]) to try the media paths without being seen in `room`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        check: bool,
    },
    /// An SDP offer on the publisher connection: first publish or any later change.
    Publish {
        sdp: String,
        #[serde(default)]
        tracks: Vec<PublishTrack>,
    },
    /// The answer to the server's last `offer` on the subscriber connection.
    Answer { sdp: String },
    /// A trickled ICE candidate of the client's side of `target`.
    Candidate {
        target: PcTarget,
        candidate: IceCandidate,
    },
    /// Mute or unmute the published track of `source` (microphone off, camera off).
    Mute { source: TrackSource, muted: bool },
    /// How this client wants a remote track: subscribed or not, the highest quality, and
    /// (for video) the size it is rendered at, from which the server picks a layer.
    Subscription {
        track_id: TrackId,
        #[serde(default = "default_true")]
        subscribed: bool,
        #[serde(default)]
        quality: Quality,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
    },
    /// Participants whose video this client always wants, whatever the last-N selection.
    Pin { participant_ids: Vec<ParticipantId> },
    /// Restart ICE on the subscriber connection (the client's network changed, or the
    /// connection went `disconnected`/`failed`): the server's next `offer` carries fresh ICE
    /// credentials. The publisher connection restarts with a `publish` whose offer has new
    /// credentials.
    RestartIce,
    /// Raise or lower one's own hand: everyone sees it in `participant.hand_raised`.
    RaiseHand { raised: bool },
    /// Lower another participant's hand (a room admin, from its token's `room_admin`).
    LowerHand { participant_id: ParticipantId },
    /// A short-lived emoji reaction, shown to everyone (`reaction`). At most 5 in any 5 s.
    Reaction { emoji: Emoji },
    /// Leave the room; the server closes the connection after `participant_left` reaches others.
    Leave,
}

/// The reactions a participant may send: a small fixed set, as meeting pages offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Emoji {
    #[serde(rename = "\u{1F44D}")]
    ThumbsUp,
    #[serde(rename = "\u{1F44F}")]
    Clap,
    #[serde(rename = "\u{1F602}")]
    Laugh,
    #[serde(rename = "\u{2764}\u{FE0F}", alias = "\u{2764}")]
    Heart,
    #[serde(rename = "\u{1F389}")]
    Party,
    #[serde(rename = "\u{1F62E}")]
    Surprised,
}

impl ClientMessage {
    /// The wire name of this message's type, for logs and error reports.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Publish { .. } => "publish",
            ClientMessage::Answer { .. } => "answer",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::Subscription { .. } => "subscription",
            ClientMessage::Pin { .. } => "pin",
            ClientMessage::RestartIce => "restart_ice",
            ClientMessage::RaiseHand { .. } => "raise_hand",
            ClientMessage::LowerHand { .. } => "lower_hand",
            ClientMessage::Reaction { .. } => "reaction",
            ClientMessage::Leave => "leave",
        }
    }

    /// Decodes one text frame, telling apart broken JSON, an unknown type and bad fields so
    /// that the client gets an error it can act on.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        Self::decode_request(text).1
    }

    /// Decodes one text frame and the `request_id` it carries (see [`RequestId`]). The id
    /// is returned whenever it could be read, also when the rest of the message is refused,
    /// so that the refusal can name the request.
    pub fn decode_request(text: &str) -> (Option<RequestId>, Result<Self, DecodeError>) {
        const NOT_AN_OBJECT: &str = "a message must be a JSON object with a string field \"type\"";
        let mut map = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => return (None, Err(DecodeError::Invalid(NOT_AN_OBJECT.into()))),
            Err(e) => return (None, Err(DecodeError::Malformed(e.to_string()))),
        };
        let id = match map.remove("request_id") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => match RequestId::from_json(&v) {
                Ok(id) => Some(id),
                Err(e) => return (None, Err(DecodeError::Invalid(e.into()))),
            },
        };
        let ty = match map.get("type") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(_) => None,
            None => return (id, Err(DecodeError::Invalid(NOT_AN_OBJECT.into()))),
        };
        match serde_json::from_value::<ClientMessage>(serde_json::Value::Object(map)) {
            Ok(m) => (id, Ok(m)),
            Err(e) => {
                let err = match ty {
                    Some(ty) if !KNOWN_CLIENT_TYPES.contains(&ty.as_str()) => {
                        DecodeError::UnknownType(truncate(&ty, 64))
                    }
                    _ => DecodeError::Invalid(e.to_string()),
                };
                (id, Err(err))
            }
        }
    }
}

const KNOWN_CLIENT_TYPES: &[&str] = &[
    "join",
    "publish",
    "answer",
    "candidate",
    "mute",
    "subscription",
    "pin",
    "restart_ice",
    "raise_hand",
    "lower_hand",
    "reaction",
    "leave",
];

fn default_true() -> bool {
    true
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Why a text frame could not be turned into a [`ClientMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Malformed(_) => ErrorCode::MalformedMessage,
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::Invalid(_) => ErrorCode::InvalidMessage,
        }
    }
}

/// A track as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
    /// Published as simulcast (several layers).
    #[serde(default)]
    pub simulcast: bool,
}

/// A participant as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub name: DisplayName,
    /// Milliseconds since the Unix epoch.
    pub joined_at: u64,
    pub tracks: Vec<TrackInfo>,
    /// The participant raised its hand (absent: not raised).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hand_raised: bool,
}

/// Maps a transceiver of the subscriber connection to the remote track it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedTrack {
    pub mid: String,
    pub track_id: TrackId,
    pub participant_id: ParticipantId,
    pub kind: MediaKind,
    pub source: TrackSource,
}

/// What a participant may do, from its access token (everything, without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_chat: bool,
    /// May use the admin API on its room (remove participants, mute tracks, record).
    pub room_admin: bool,
    /// Not shown to the others (a recorder, a moderator watching): never announced,
    /// and publishes and chats nothing.
    pub hidden: bool,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            can_publish: true,
            can_subscribe: true,
            can_chat: true,
            room_admin: false,
            hidden: false,
        }
    }
}

/// Limits the client should respect, sent in `joined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    pub chat_max_bytes: usize,
    pub chat_history: usize,
    pub max_message_bytes: usize,
}

/// An ICE server for the client's peer connections (as in `RTCIceServer`): a TURN
/// server with the short-lived credentials minted for this participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What a [`ServerMessage::Downlink`] estimate rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownlinkSignal {
    /// Nothing measured yet: the initial guess.
    Initial,
    /// The loss in the participant's receiver reports.
    Loss,
    /// Its transport-wide congestion control feedback (delay and loss), as browsers send.
    Delay,
}

/// One video track a participant receives, in a [`ServerMessage::Downlink`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownlinkTrack {
    pub track_id: TrackId,
    /// The layer forwarded now (0 the lowest); `None` while none is (paused, or waiting
    /// for a keyframe of the layer chosen).
    pub layer: Option<u8>,
    /// How many layers the publisher sends.
    pub layers: u8,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        protocol: u32,
        room: RoomId,
        participant: ParticipantInfo,
        /// Everyone else already in the room.
        participants: Vec<ParticipantInfo>,
        config: ClientConfig,
        /// What this participant may do.
        #[serde(default)]
        grants: Grants,
        /// Send it back as `join.resume` on a new WebSocket to continue this session
        /// after a disconnection (valid while the server keeps the session).
        #[serde(default)]
        resume_token: String,
        /// ICE servers (TURN, with credentials for this participant) for both peer
        /// connections; absent when the server has none configured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// The `request_id` of the `join` this answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<RequestId>,
    },
    /// The answer to the client's `publish`.
    Answer {
        sdp: String,
        /// The `request_id` of the `publish` this answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<RequestId>,
    },
    /// An offer on the subscriber connection; the client replies with `answer`.
    Offer {
        sdp: String,
        tracks: Vec<SubscribedTrack>,
    },
    /// A trickled ICE candidate of the server's side of `target`.
    Candidate {
        target: PcTarget,
        candidate: IceCandidate,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    /// A participant's tracks, their mute state or its raised hand changed.
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
    },
    /// Who is speaking now, loudest first (empty when nobody is).
    ActiveSpeakers {
        speakers: Vec<ParticipantId>,
    },
    /// A participant reacted (everyone gets it, the sender too).
    Reaction {
        participant_id: ParticipantId,
        emoji: Emoji,
    },
    /// Dynacast: which simulcast encodings of the client's published track (by mid) are
    /// wanted by someone. The client pauses the others (`RTCRtpEncodingParameters.active`)
    /// to save its uplink, and resumes them when they are listed again.
    PublisherLayers {
        mid: String,
        active_rids: Vec<String>,
    },
    /// How the server sees this participant's downlink, for a quality panel: its estimate
    /// of the bandwidth toward the participant, what the estimate rests on, and the layer
    /// each video track it receives is forwarded at. Sent when it changed, at most every
    /// 2 s.
    Downlink {
        estimate_bps: u64,
        signal: DownlinkSignal,
        tracks: Vec<DownlinkTrack>,
    },
    /// Answers `join` on a node that does not host `room` (several nodes sharing one
    /// Redis): join again at `url`, the WebSocket of the node that does. The server closes
    /// the connection after it. A client follows one redirect per join.
    Redirect {
        url: String,
        room: RoomId,
        /// The id of the node that hosts the room.
        node: String,
    },
    /// Something the client sent was refused. When `fatal`, the server closes the connection.
    Error {
        code: ErrorCode,
        message: String,
        fatal: bool,
        /// The `request_id` of the message (or chat frame) refused, when one caused it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<RequestId>,
    },
}

/// Machine-readable error codes; `message` carries the human-readable text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedMessage,
    UnknownType,
    InvalidMessage,
    MessageTooLarge,
    UnsupportedProtocol,
    NotJoined,
    AlreadyJoined,
    RoomFull,
    InvalidSdp,
    OutOfOrder,
    UnknownTrack,
    ChatTooLong,
    ChatInvalid,
    SlowConsumer,
    MediaFailed,
    Removed,
    ServerShuttingDown,
    Internal,
    /// No valid access token: missing, malformed, badly signed, expired, or for another
    /// room. Fatal.
    Unauthorized,
    /// The token does not grant this (publish, chat).
    Forbidden,
    /// Too many messages, chat messages or joins in too short a time.
    RateLimited,
    /// A configured limit is reached (rooms on the server, tracks per participant).
    LimitReached,
    /// The session to resume is gone (expired or unknown): join afresh. Fatal.
    ResumeFailed,
    /// The room is not on this node and cannot be placed on one now (the cluster's Redis
    /// is unreachable, or no node takes new rooms): try again in a moment. Fatal.
    ClusterUnavailable,
    /// A deadline passed: no `join` within the join deadline, or the first negotiation
    /// (the answer to the first subscriber offer) not completed in time. Fatal.
    Timeout,
    /// An administrator removed this identity from the room; it may not rejoin until the
    /// ban ends (the message says when). Fatal.
    Banned,
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            fatal: false,
            request_id: None,
        }
    }

    pub fn fatal(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            fatal: true,
            request_id: None,
        }
    }

    /// This message as the reply to `request` (for the messages that can be replies:
    /// `joined`, `answer`, `error`; the others are returned as they are).
    pub fn reply_to(mut self, request: Option<RequestId>) -> Self {
        if let ServerMessage::Joined { request_id, .. }
        | ServerMessage::Answer { request_id, .. }
        | ServerMessage::Error { request_id, .. } = &mut self
        {
            *request_id = request;
        }
        self
    }

    /// The request this message replies to, if any.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            ServerMessage::Joined { request_id, .. }
            | ServerMessage::Answer { request_id, .. }
            | ServerMessage::Error { request_id, .. } => request_id.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_are_one_of_a_fixed_set() {
        let m = ClientMessage::decode("{\"type\":\"reaction\",\"emoji\":\"\u{1F44F}\"}").unwrap();
        assert_eq!(m, ClientMessage::Reaction { emoji: Emoji::Clap });
        // The heart with or without its emoji presentation selector; it goes out with it.
        for heart in ["\u{2764}", "\u{2764}\u{FE0F}"] {
            let m = ClientMessage::decode(&format!(r#"{{"type":"reaction","emoji":"{heart}"}}"#));
            assert_eq!(
                m.unwrap(),
                ClientMessage::Reaction {
                    emoji: Emoji::Heart
                }
            );
        }
        assert_eq!(
            serde_json::to_string(&Emoji::Heart).unwrap(),
            "\"\u{2764}\u{FE0F}\""
        );
        let bad = ClientMessage::decode(r#"{"type":"reaction","emoji":"<b>x</b>"}"#);
        assert_eq!(bad.unwrap_err().code(), ErrorCode::InvalidMessage);
        let unknown_field = ClientMessage::decode(r#"{"type":"raise_hand","raised":true,"x":1}"#);
        assert_eq!(unknown_field.unwrap_err().code(), ErrorCode::InvalidMessage);
    }

    #[test]
    fn a_lowered_hand_is_not_written() {
        let info = ParticipantInfo {
            id: ParticipantId::from_wire("PA_a"),
            name: DisplayName::parse("Ada").unwrap(),
            joined_at: 1,
            tracks: Vec::new(),
            hand_raised: false,
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(!json.contains("hand_raised"), "{json}");
        let raised = ParticipantInfo {
            hand_raised: true,
            ..info
        };
        let json = serde_json::to_string(&raised).unwrap();
        assert!(json.contains("\"hand_raised\":true"), "{json}");
    }

    #[test]
    fn decode_join() {
        let m = ClientMessage::decode(r#"{"type":"join","protocol":1,"room":"r1","name":"Ada"}"#)
            .unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                protocol: 1,
                room: RoomId::parse("r1").unwrap(),
                name: DisplayName::parse("Ada").unwrap(),
                token: None,
                resume: None,
                check: false,
            }
        );
    }

    #[test]
    fn decode_errors_are_classified() {
        let cases: &[(&str, ErrorCode)] = &[
            ("{not json", ErrorCode::MalformedMessage),
            ("", ErrorCode::MalformedMessage),
            (r#"{"type":"dance"}"#, ErrorCode::UnknownType),
            (r#"{"type":7}"#, ErrorCode::InvalidMessage),
            (r#"{"no_type":1}"#, ErrorCode::InvalidMessage),
            (r#"[1,2]"#, ErrorCode::InvalidMessage),
            (r#""leave""#, ErrorCode::InvalidMessage),
            (r#"{"type":"join","room":"r"}"#, ErrorCode::InvalidMessage),
            (
                r#"{"type":"join","protocol":1,"room":"bad room","name":"x"}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"join","protocol":1,"room":"r","name":"x","extra":1}"#,
                ErrorCode::InvalidMessage,
            ),
            (
                r#"{"type":"mute","source":"nose","muted":true}"#,
                ErrorCode::InvalidMessage,
            ),
        ];
        for (text, code) in cases {
            let err = ClientMessage::decode(text).unwrap_err();
            assert_eq!(err.code(), *code, "{text}: {err}");
        }
    }

    #[test]
    fn request_ids_are_read_and_echoed() {
        let (id, m) = ClientMessage::decode_request(r#"{"type":"leave","request_id":7}"#);
        assert_eq!(
            (id, m),
            (Some(RequestId::Number(7)), Ok(ClientMessage::Leave))
        );
        let (id, m) = ClientMessage::decode_request(r#"{"request_id":"a-1","type":"dance"}"#);
        assert_eq!(id, Some(RequestId::Text("a-1".into())));
        assert_eq!(m.unwrap_err().code(), ErrorCode::UnknownType);
        let (id, m) =
            ClientMessage::decode_request(r#"{"type":"mute","source":"nose","request_id":"x"}"#);
        assert_eq!(
            id,
            Some(RequestId::Text("x".into())),
            "echoed on a refusal too"
        );
        assert_eq!(m.unwrap_err().code(), ErrorCode::InvalidMessage);
        let (id, _) = ClientMessage::decode_request(r#"{"type":"leave","request_id":null}"#);
        assert_eq!(id, None);
        let long = "x".repeat(65);
        for bad in [
            "-1".to_string(),
            "1.5".into(),
            "9007199254740993".into(),
            r#""""#.into(),
            format!(r#""{long}""#),
            "[1]".into(),
            "true".into(),
        ] {
            let (id, m) =
                ClientMessage::decode_request(&format!(r#"{{"type":"leave","request_id":{bad}}}"#));
            assert_eq!(id, None, "{bad}");
            assert_eq!(m.unwrap_err().code(), ErrorCode::InvalidMessage, "{bad}");
        }
        let reply =
            ServerMessage::error(ErrorCode::Forbidden, "no").reply_to(Some(RequestId::Number(3)));
        let v: serde_json::Value = serde_json::to_value(&reply).unwrap();
        assert_eq!(v["request_id"], 3);
        let v = serde_json::to_value(ServerMessage::error(ErrorCode::Forbidden, "no")).unwrap();
        assert!(v.get("request_id").is_none(), "absent when not a reply");
        let offer = ServerMessage::Offer {
            sdp: String::new(),
            tracks: vec![],
        };
        assert_eq!(offer.clone().reply_to(Some(RequestId::Number(1))), offer);
    }

    #[test]
    fn unknown_type_is_truncated() {
        let long = "x".repeat(1000);
        let err = ClientMessage::decode(&format!(r#"{{"type":"{long}"}}"#)).unwrap_err();
        match err {
            DecodeError::UnknownType(t) => assert_eq!(t.len(), 64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn candidate_uses_browser_field_names() {
        let m = ClientMessage::decode(
            r#"{"type":"candidate","target":"publisher","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abc"}}"#,
        )
        .unwrap();
        let ClientMessage::Candidate { target, candidate } = m else {
            panic!()
        };
        assert_eq!(target, PcTarget::Publisher);
        assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
        assert_eq!(candidate.sdp_mline_index, Some(0));
        assert_eq!(candidate.username_fragment.as_deref(), Some("abc"));
    }

    #[test]
    fn server_messages_are_tagged_snake_case() {
        let m = ServerMessage::error(ErrorCode::RoomFull, "full");
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "room_full");
        assert_eq!(v["fatal"], false);
        let m = ServerMessage::Redirect {
            url: "ws://10.0.0.2:8080/ws".into(),
            room: RoomId::parse("r").unwrap(),
            node: "n2".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "redirect");
        assert_eq!(v["url"], "ws://10.0.0.2:8080/ws");
        let v =
            serde_json::to_value(ServerMessage::fatal(ErrorCode::ClusterUnavailable, "x")).unwrap();
        assert_eq!(v["code"], "cluster_unavailable");
        let leave = ClientMessage::decode(r#"{"type":"leave"}"#).unwrap();
        assert_eq!(leave, ClientMessage::Leave);
    }
}
