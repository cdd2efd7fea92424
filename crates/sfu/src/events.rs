//! Room lifecycle events, for webhooks and anyone else watching from outside the media
//! plane. Workers send them with `try_send` on a bounded channel: a consumer that falls
//! behind loses events (counted), it never slows a worker.

use confab_proto::{MediaKind, ParticipantId, RoomId, TrackId, TrackSource};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RoomEvent {
    RoomStarted {
        room: RoomId,
    },
    RoomFinished {
        room: RoomId,
    },
    ParticipantJoined {
        room: RoomId,
        participant_id: ParticipantId,
        name: String,
        /// The access token's subject, when the participant joined with one.
        #[serde(skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
    },
    ParticipantLeft {
        room: RoomId,
        participant_id: ParticipantId,
        reason: String,
    },
    TrackPublished {
        room: RoomId,
        participant_id: ParticipantId,
        track_id: TrackId,
        kind: MediaKind,
        source: TrackSource,
        codec: String,
    },
    TrackUnpublished {
        room: RoomId,
        participant_id: ParticipantId,
        track_id: TrackId,
    },
    RecordingStarted {
        room: RoomId,
        dir: String,
    },
    RecordingFinished {
        room: RoomId,
        dir: String,
        manifest: Option<String>,
        files: Vec<String>,
        dropped_packets: u64,
    },
}

impl RoomEvent {
    pub fn room(&self) -> &RoomId {
        match self {
            RoomEvent::RoomStarted { room }
            | RoomEvent::RoomFinished { room }
            | RoomEvent::ParticipantJoined { room, .. }
            | RoomEvent::ParticipantLeft { room, .. }
            | RoomEvent::TrackPublished { room, .. }
            | RoomEvent::TrackUnpublished { room, .. }
            | RoomEvent::RecordingStarted { room, .. }
            | RoomEvent::RecordingFinished { room, .. } => room,
        }
    }

    /// The event's name, as in webhook bodies.
    pub fn name(&self) -> &'static str {
        match self {
            RoomEvent::RoomStarted { .. } => "room_started",
            RoomEvent::RoomFinished { .. } => "room_finished",
            RoomEvent::ParticipantJoined { .. } => "participant_joined",
            RoomEvent::ParticipantLeft { .. } => "participant_left",
            RoomEvent::TrackPublished { .. } => "track_published",
            RoomEvent::TrackUnpublished { .. } => "track_unpublished",
            RoomEvent::RecordingStarted { .. } => "recording_started",
            RoomEvent::RecordingFinished { .. } => "recording_finished",
        }
    }
}
