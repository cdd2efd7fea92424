//! Worker-local keys. Plain integers on the wire of the worker's own tables, newtypes so
//! that one is never passed for another; strings (room, participant and track ids) stay
//! at the edges.

/// A participant, unique on its worker (handed out by [`crate::Sfu`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantKey(pub u64);

/// A peer connection of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u64);

/// A published track in its room: an index into the room's slab, reused once the track
/// is gone (a stale key finds nothing or another track of the same room; it is only
/// held by the publisher's peer, which forgets it when the track closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackKey(pub usize);

/// A room on its worker: an index into the worker's slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(pub usize);

impl std::fmt::Display for ParticipantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
