//! Relays (cascading): a track's copy to a copy of its room elsewhere, on another worker
//! of this node or on another node. Pure data and decisions.
//!
//! A relay is a down-track whose subscriber is a room copy, not a participant. The track's
//! home forwards each packet of the layers the copy wants **unchanged** (original SSRC,
//! sequence number, timestamp, VP8 fields): there it is re-published as a track of the
//! copy and fanned out by the copy's own forwarders, so each subscriber's numbering is
//! kept continuous by its own munger whichever side switches layers. What flows back
//! upstream is an [`Upstream`] message: the layers the copy's subscribers want (merged by
//! the copy; the home merges them with its own subscribers' for dynacast) and keyframe
//! requests.

use crate::allocator::MAX_LAYERS;
use confab_proto::TrackId;
use std::time::{Duration, Instant};

/// A room copy a relay leads to (a worker of this node or another node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayKey(pub u32);

/// How long a layer a copy asked for stays wanted without being asked for again. A copy
/// repeats its wants more often than this ([`WANTS_EVERY`]).
pub const WANTS_GRACE: Duration = Duration::from_secs(2);
/// How often a copy repeats its wants upstream, changed or not.
pub const WANTS_EVERY: Duration = Duration::from_millis(500);

/// One relay of a track: which of its layers the copy at `to` wants.
#[derive(Debug, Clone)]
pub struct RelayOut {
    pub to: RelayKey,
    /// When each layer was last wanted by the copy.
    pub wanted_at: [Option<Instant>; MAX_LAYERS],
    /// Packets relayed.
    pub packets: u64,
}

impl RelayOut {
    pub fn new(to: RelayKey) -> Self {
        Self {
            to,
            wanted_at: [None; MAX_LAYERS],
            packets: 0,
        }
    }

    /// Whether layer `layer` was wanted within [`WANTS_GRACE`] of `now`.
    pub fn wants(&self, layer: u8, now: Instant) -> bool {
        self.wanted_at
            .get(layer as usize)
            .copied()
            .flatten()
            .is_some_and(|at| now.saturating_duration_since(at) < WANTS_GRACE)
    }

    /// Whether the copy wants any layer (a relay nobody wants any more can be dropped).
    pub fn wants_any(&self, now: Instant) -> bool {
        (0..MAX_LAYERS as u8).any(|l| self.wants(l, now))
    }

    /// The copy wants the layers of `mask` (bit i = layer i) as of `now`.
    pub fn set_wants(&mut self, mask: u8, now: Instant) {
        for (i, w) in self.wanted_at.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *w = Some(now);
            }
        }
    }
}

/// A relay as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelaySummary {
    pub track: TrackId,
    /// The worker (or node) of the copy it goes to.
    pub to: u32,
    /// The layers the copy wants now (bit i = layer i).
    pub layers: u8,
    pub packets: u64,
}

/// What a room copy sends to the home of a track it relays.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upstream {
    /// The layers the copy's subscribers want (bit i = layer i); 0 = none any more.
    Wants { track: TrackId, layers: u8 },
    /// A subscriber of the copy waits for a keyframe of `layer`.
    Keyframe { track: TrackId, layer: u8 },
}

/// The copy side: when to repeat a relayed track's wants upstream.
#[derive(Debug, Clone, Copy, Default)]
pub struct WantsAnnouncer {
    last: Option<(u8, Instant)>,
}

impl WantsAnnouncer {
    /// The wants to send now, if any: at once when they changed, and every
    /// [`WANTS_EVERY`] while some layer is wanted (a relay that hears nothing expires).
    pub fn poll(&mut self, layers: u8, now: Instant) -> Option<u8> {
        let due = match self.last {
            None => layers != 0,
            Some((sent, at)) => {
                sent != layers || (layers != 0 && now.saturating_duration_since(at) >= WANTS_EVERY)
            }
        };
        if due {
            self.last = Some((layers, now));
        }
        due.then_some(layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants_expire_unless_repeated() {
        let t0 = Instant::now();
        let mut r = RelayOut::new(RelayKey(1));
        assert!(!r.wants_any(t0));
        r.set_wants(0b101, t0);
        assert!(r.wants(0, t0) && !r.wants(1, t0) && r.wants(2, t0));
        let later = t0 + WANTS_GRACE;
        assert!(!r.wants_any(later), "not repeated: expired");
        r.set_wants(0b010, later);
        assert!(r.wants(1, later) && !r.wants(0, later));
        assert!(!r.wants(7, later), "no such layer");
    }

    #[test]
    fn wants_are_announced_on_change_and_repeated() {
        let t0 = Instant::now();
        let mut a = WantsAnnouncer::default();
        assert_eq!(a.poll(0, t0), None, "nothing wanted, nothing said");
        assert_eq!(a.poll(0b1, t0), Some(0b1));
        assert_eq!(a.poll(0b1, t0 + WANTS_EVERY / 2), None);
        assert_eq!(a.poll(0b11, t0 + WANTS_EVERY / 2), Some(0b11), "changed");
        let t1 = t0 + WANTS_EVERY / 2 + WANTS_EVERY;
        assert_eq!(a.poll(0b11, t1), Some(0b11), "repeated");
        assert!(
            WANTS_EVERY * 2 < WANTS_GRACE,
            "a repeat arrives before expiry"
        );
        assert_eq!(a.poll(0, t1), Some(0), "none any more: said once");
        assert_eq!(a.poll(0, t1 + WANTS_EVERY * 3), None);
    }
}
