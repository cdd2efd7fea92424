//! The recording hook: a [`TrackSink`] receives the RTP packets of a room's tracks and
//! their lifecycle, away from the media path.
//!
//! A worker hands each published packet (after duplicate removal, before any rewriting) to
//! every [`Tap`] of the room with a non-blocking `try_send` on a bounded channel; a full
//! channel drops the packet and counts it. A tap's session runs on its own thread and
//! drives its sinks, so a slow disk or a slow sink can never delay forwarding.
//!
//! Built-in sinks live in [`crate::record`]: the file recorder, the plain-RTP forwarder and
//! the external-command hook.

use crate::rtp::Codec;
use confab_proto::{DisplayName, MediaKind, ParticipantId, RoomId, TrackId, TrackSource};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

/// What a sink knows of a track when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackMeta {
    pub room: RoomId,
    pub participant: ParticipantId,
    pub participant_name: DisplayName,
    pub track: TrackId,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub codec: Codec,
    pub mime: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub payload_type: u8,
}

/// One thing that happened to a room's tracks, as a tap delivers it.
#[derive(Debug, Clone)]
pub enum TapEvent {
    TrackStarted(TrackMeta),
    Rtp {
        track: TrackId,
        /// Simulcast layer (0 for a single-layer track).
        layer: u8,
        keyframe: bool,
        packet: rtc::rtp::Packet,
        at: SystemTime,
    },
    /// A publisher's RTCP sender report: maps the track's RTP clock to wall-clock (NTP).
    SenderReport {
        track: TrackId,
        ssrc: u32,
        ntp: u64,
        rtp_ts: u32,
    },
    TrackEnded(TrackId),
}

/// Receives a room's tracks. Called on the tap's own thread, never on the media path.
pub trait TrackSink: Send {
    fn track_started(&mut self, meta: &TrackMeta);
    fn rtp(
        &mut self,
        track: &TrackId,
        layer: u8,
        keyframe: bool,
        packet: &rtc::rtp::Packet,
        at: SystemTime,
    );
    fn sender_report(&mut self, _track: &TrackId, _ssrc: u32, _ntp: u64, _rtp_ts: u32) {}
    fn track_ended(&mut self, track: &TrackId);
    /// The session ends: finish files, stop processes. `dropped` packets never reached the
    /// sink (the tap's queue was full).
    fn finish(&mut self, dropped: u64);
    /// Tracks whose stream has a gap and needs a keyframe to go on cleanly.
    fn keyframes_wanted(&mut self) -> Vec<TrackId> {
        Vec::new()
    }
}

/// The worker's end of a tap: where it sends a room's events.
#[derive(Clone)]
pub struct Tap {
    pub id: u64,
    tx: SyncSender<TapEvent>,
    pub dropped: Arc<AtomicU64>,
}

impl Tap {
    pub fn new(id: u64, capacity: usize) -> (Tap, Receiver<TapEvent>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        (
            Tap {
                id,
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Never blocks: a full queue drops the event and counts it. `false` once the
    /// session is gone.
    pub fn send(&self, ev: TapEvent) -> bool {
        match self.tx.try_send(ev) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// RTCP NTP time (seconds since 1900 in 32.32 fixed point) to Unix milliseconds.
pub fn ntp_to_unix_ms(ntp: u64) -> i64 {
    const NTP_UNIX_OFFSET: i64 = 2_208_988_800;
    let secs = (ntp >> 32) as i64 - NTP_UNIX_OFFSET;
    let frac = ((ntp & 0xffff_ffff) * 1000) >> 32;
    secs * 1000 + frac as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_conversion() {
        // 2026-01-01T00:00:00Z = 1767225600 Unix seconds; NTP adds 2208988800. Half a second.
        let ntp = ((1_767_225_600u64 + 2_208_988_800) << 32) | 0x8000_0000;
        assert_eq!(ntp_to_unix_ms(ntp), 1_767_225_600_500);
    }

    #[test]
    fn a_full_tap_drops_and_counts() {
        let (tap, rx) = Tap::new(1, 2);
        for _ in 0..5 {
            assert!(tap.send(TapEvent::TrackEnded(TrackId::from_wire("t"))));
        }
        assert_eq!(tap.dropped.load(Ordering::Relaxed), 3);
        drop(rx);
        assert!(!tap.send(TapEvent::TrackEnded(TrackId::from_wire("t"))));
    }
}
