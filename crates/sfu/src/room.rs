//! A room's media topology: who publishes which track, and which down-tracks each
//! published track feeds. Pure data and decisions; the worker owns the peers and does
//! the writing.
//!
//! Nouns, as in mediasoup: a [`PublishedTrack`] is a producer, a [`DownTrack`] a consumer.

use crate::chat::ChatLog;
use crate::forwarder::{Decision, DropReason, Forwarder, PacketInfo};
use crate::keyframe::KeyframeThrottle;
use crate::peer::{ParticipantKey, PeerKey, TrackCodec};
use crate::rtp::SeqTracker;
use crate::rtp::munger::Rewritten;
use confab_proto::{MediaKind, RoomId, TrackId, TrackInfo, TrackSource};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Room {
    pub id: RoomId,
    /// Participants in join order.
    pub members: Vec<ParticipantKey>,
    pub tracks: HashMap<TrackId, PublishedTrack>,
    pub chat: ChatLog,
}

impl Room {
    pub fn new(id: RoomId, chat_history: usize) -> Self {
        Self {
            id,
            members: Vec::new(),
            tracks: HashMap::new(),
            chat: ChatLog::new(chat_history),
        }
    }
}

/// A track a participant publishes.
pub struct PublishedTrack {
    pub id: TrackId,
    pub owner: ParticipantKey,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
    pub codec: TrackCodec,
    /// The publisher connection and the track's id there, to send keyframe requests.
    pub pub_peer: PeerKey,
    pub rtc_id: String,
    pub seq: SeqTracker,
    pub keyframes: KeyframeThrottle,
    pub down: Vec<DownTrack>,
}

/// One subscriber's copy of a published track.
pub struct DownTrack {
    pub subscriber: ParticipantKey,
    pub sub_peer: PeerKey,
    /// Index of the sender slot in the subscriber connection.
    pub slot: usize,
    pub forwarder: Forwarder,
}

/// Counts of what happened to one incoming packet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub forwarded: u32,
    pub dropped: u32,
}

impl PublishedTrack {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: TrackId,
        owner: ParticipantKey,
        kind: MediaKind,
        source: TrackSource,
        codec: TrackCodec,
        pub_peer: PeerKey,
        rtc_id: String,
        keyframe_interval: Duration,
    ) -> Self {
        Self {
            id,
            owner,
            kind,
            source,
            muted: false,
            codec,
            pub_peer,
            rtc_id,
            seq: SeqTracker::new(),
            keyframes: KeyframeThrottle::new(keyframe_interval),
            down: Vec::new(),
        }
    }

    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            id: self.id.clone(),
            kind: self.kind,
            source: self.source,
            muted: self.muted,
        }
    }

    pub fn add_down(&mut self, subscriber: ParticipantKey, sub_peer: PeerKey, slot: usize) {
        self.down.push(DownTrack {
            subscriber,
            sub_peer,
            slot,
            forwarder: Forwarder::new(self.codec.codec),
        });
    }

    /// Removes the down-track of `subscriber`, returning it.
    pub fn remove_down(&mut self, subscriber: ParticipantKey) -> Option<DownTrack> {
        let i = self.down.iter().position(|d| d.subscriber == subscriber)?;
        Some(self.down.swap_remove(i))
    }

    pub fn down_of(&mut self, subscriber: ParticipantKey) -> Option<&mut DownTrack> {
        self.down.iter_mut().find(|d| d.subscriber == subscriber)
    }

    /// Whether some down-track waits for a keyframe.
    pub fn wants_keyframe(&self) -> bool {
        self.down
            .iter()
            .any(|d| d.forwarder.needs_keyframe().is_some())
    }

    /// Runs one incoming packet through every down-track's forwarder; `emit` is called
    /// for each down-track that forwards it, with the rewritten numbering.
    pub fn fan_out(
        &mut self,
        info: &PacketInfo,
        now: Instant,
        mut emit: impl FnMut(&DownTrack, Rewritten),
    ) -> Fanout {
        let mut f = Fanout::default();
        for d in &mut self.down {
            match d.forwarder.on_packet(info, now) {
                Decision::Forward(rw) => {
                    f.forwarded += 1;
                    emit(d, rw);
                }
                Decision::Drop(DropReason::Paused) => {}
                Decision::Drop(_) => f.dropped += 1,
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::Codec;
    use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

    fn track(codec: Codec) -> PublishedTrack {
        PublishedTrack::new(
            TrackId::from_suffix("t"),
            1,
            MediaKind::Video,
            TrackSource::Camera,
            TrackCodec {
                codec,
                rtp: RTCRtpCodec::default(),
            },
            10,
            "rtc".into(),
            Duration::from_millis(500),
        )
    }

    #[test]
    fn fan_out_reaches_active_down_tracks_only() {
        let now = Instant::now();
        let mut t = track(Codec::Vp8);
        t.add_down(2, 20, 0);
        t.add_down(3, 30, 0);
        t.add_down(4, 40, 1);
        t.down_of(2).unwrap().forwarder.set_active(true);
        t.down_of(4).unwrap().forwarder.set_active(true);
        assert!(t.wants_keyframe());
        let key = PacketInfo {
            layer: 0,
            ext_seq: 100,
            ts: 0,
            keyframe: true,
            padding_only: false,
        };
        let mut got = vec![];
        let f = t.fan_out(&key, now, |d, rw| got.push((d.subscriber, rw.seq)));
        assert_eq!(got, vec![(2, 100), (4, 100)]);
        assert_eq!(
            f,
            Fanout {
                forwarded: 2,
                dropped: 0
            }
        );
        assert!(!t.wants_keyframe());
        assert!(t.remove_down(2).is_some());
        assert!(t.remove_down(2).is_none());
        let mut got = vec![];
        t.fan_out(
            &PacketInfo {
                ext_seq: 101,
                keyframe: false,
                ..key
            },
            now,
            |d, _| got.push(d.subscriber),
        );
        assert_eq!(got, vec![4]);
    }
}
