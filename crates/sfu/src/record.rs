//! Built-in [`TrackSink`]s and the session that drives them on their own thread.
//!
//! - [`file::FileRecorder`]: each track to a file plus a manifest.
//! - [`rtp::RtpForwarder`]: each track as plain RTP over UDP to a host and port, with an
//!   SDP file for the receiver (ffmpeg, GStreamer).
//! - [`rtp::CommandHook`]: runs a command per track, fed by an RTP forwarder, described by
//!   environment variables.
//! - [`mux`]: one participant's recorded audio and video into one file (`confab mux`).
//! - [`path`]: the one way a name becomes a file name ([`path::join`]), inside its
//!   directory by construction.

pub mod file;
pub mod mux;
pub mod path;
pub mod rtp;

use crate::rtp::SeqTracker;
use crate::sink::{TapEvent, TrackSink};
use confab_proto::{RoomId, TrackId};
use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::time::{Duration, SystemTime};

/// Runs `sinks` on the events of one tap until it closes; `on_keyframe` asks the media
/// plane for a keyframe of a track whose recording has a gap. Returns the sinks, finished.
pub fn run_session(
    room: RoomId,
    events: Receiver<TapEvent>,
    mut sinks: Vec<Box<dyn TrackSink>>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    on_keyframe: impl Fn(&TrackId),
) -> Vec<Box<dyn TrackSink>> {
    let span = tracing::info_span!("recording", room = %room);
    let _g = span.enter();
    tracing::info!(sinks = sinks.len(), "recording started");
    while let Ok(ev) = events.recv() {
        match &ev {
            TapEvent::TrackStarted(meta) => sinks.iter_mut().for_each(|s| s.track_started(meta)),
            TapEvent::Rtp {
                track,
                layer,
                keyframe,
                packet,
                at,
            } => {
                for s in sinks.iter_mut() {
                    s.rtp(track, *layer, *keyframe, packet, *at);
                }
            }
            TapEvent::SenderReport {
                track,
                ssrc,
                ntp,
                rtp_ts,
            } => sinks
                .iter_mut()
                .for_each(|s| s.sender_report(track, *ssrc, *ntp, *rtp_ts)),
            TapEvent::TrackEnded(track) => sinks.iter_mut().for_each(|s| s.track_ended(track)),
        }
        for s in sinks.iter_mut() {
            for t in s.keyframes_wanted() {
                on_keyframe(&t);
            }
        }
    }
    let dropped = dropped.load(std::sync::atomic::Ordering::Relaxed);
    for s in sinks.iter_mut() {
        s.finish(dropped);
    }
    tracing::info!(dropped, "recording finished");
    sinks
}

/// Puts one track's packets back in order: holds up to [`Reorder::DEPTH`] packets or
/// [`Reorder::WAIT`] of arrival time, then releases them by sequence number, flagging a
/// gap where a packet never came.
#[derive(Default)]
pub struct Reorder {
    seq: SeqTracker,
    held: BTreeMap<u64, (rtc::rtp::Packet, bool, SystemTime)>,
    next: Option<u64>,
}

impl Reorder {
    pub const DEPTH: usize = 32;
    pub const WAIT: Duration = Duration::from_millis(150);

    /// Adds a packet; returns those now in order: (packet, gap before it, keyframe).
    pub fn push(
        &mut self,
        p: rtc::rtp::Packet,
        keyframe: bool,
        at: SystemTime,
    ) -> Vec<(rtc::rtp::Packet, bool, bool)> {
        let ext = match self.seq.push(p.header.sequence_number) {
            crate::rtp::SeqResult::New { ext, .. } => ext,
            _ => return Vec::new(),
        };
        if self.next.is_some_and(|n| ext < n) {
            return Vec::new(); // too late: already released past it
        }
        self.held.insert(ext, (p, keyframe, at));
        let mut out = Vec::new();
        while let Some((&first, (_, _, first_at))) = self.held.iter().next() {
            let in_order = self.next.is_none_or(|n| first == n);
            let stale = at.duration_since(*first_at).unwrap_or_default() >= Self::WAIT;
            if !(in_order || self.held.len() > Self::DEPTH || stale) {
                break;
            }
            let (p, key, _) = self.held.remove(&first).expect("first key exists");
            let gap = self.next.is_some_and(|n| first != n);
            self.next = Some(first + 1);
            out.push((p, gap, key));
        }
        out
    }

    /// Everything held, in order, and a fresh start: at the end of a track, or before a
    /// switch to another simulcast layer (another sequence number space).
    pub fn drain(&mut self) -> Vec<(rtc::rtp::Packet, bool, bool)> {
        let held = std::mem::take(self).held;
        held.into_values().map(|(p, k, _)| (p, false, k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                sequence_number: seq,
                ..Default::default()
            },
            payload: Default::default(),
        }
    }

    fn seqs(v: &[(rtc::rtp::Packet, bool, bool)]) -> Vec<(u16, bool)> {
        v.iter()
            .map(|(p, gap, _)| (p.header.sequence_number, *gap))
            .collect()
    }

    #[test]
    fn reordering_is_absorbed_and_gaps_flagged() {
        let t0 = SystemTime::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut r = Reorder::default();
        assert_eq!(seqs(&r.push(pkt(10), true, ms(0))), vec![(10, false)]);
        // 12 before 11: held, then both released in order.
        assert_eq!(seqs(&r.push(pkt(12), false, ms(1))), vec![]);
        assert_eq!(
            seqs(&r.push(pkt(11), false, ms(2))),
            vec![(11, false), (12, false)]
        );
        // 13 lost: 14 waits until it is stale, then goes out with a gap.
        assert_eq!(seqs(&r.push(pkt(14), false, ms(3))), vec![]);
        assert_eq!(
            seqs(&r.push(pkt(15), false, ms(200))),
            vec![(14, true), (15, false)]
        );
        // A duplicate, and a packet too late to use, are ignored.
        assert!(r.push(pkt(15), false, ms(201)).is_empty());
        assert!(r.push(pkt(13), false, ms(202)).is_empty());
        // Wrap-around.
        let mut r = Reorder::default();
        r.push(pkt(65535), true, ms(0));
        assert_eq!(seqs(&r.push(pkt(0), false, ms(1))), vec![(0, false)]);
    }

    /// Every file under `dir`, recursively.
    fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            }
            out.push(p);
        }
        out
    }

    #[test]
    fn no_name_reaches_outside_the_recording_directory() {
        use crate::record::file::FileRecorder;
        use crate::record::rtp::{CommandHook, RtpForwarder};
        use crate::rtp::Codec;
        use crate::sink::TrackMeta;
        use confab_proto::{DisplayName, MediaKind, ParticipantId, TrackSource};
        let hostile = path::hostile_names();
        // A room id is a directory name: every hostile one is refused at the door.
        for bad in &hostile {
            assert!(RoomId::parse(bad).is_err(), "room {bad:?}");
        }
        let root = std::env::temp_dir().join(format!(
            "confab-escape-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let dir = root.join("rec");
        let tmp_before: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| n.to_string_lossy().starts_with("escaped"))
            .collect();
        let sinks: Vec<Box<dyn TrackSink>> = vec![
            Box::new(FileRecorder::new(&dir, "r").unwrap()),
            Box::new(RtpForwarder::new([127, 0, 0, 1].into(), 9, &dir).unwrap()),
            Box::new(CommandHook::new("true", &dir).unwrap()),
        ];
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        let mut n: u16 = 0;
        let mut cases: Vec<(&str, &str)> = Vec::new();
        for bad in &hostile {
            cases.extend([(bad.as_str(), "TR_ok"), ("PA_ok", bad.as_str()), (bad, bad)]);
        }
        // And one track with ordinary ids, which must be recorded.
        cases.push(("PA_ok", "TR_ok"));
        for (p, t) in cases {
            {
                for (codec, kind, mime) in [
                    (Codec::Vp8, MediaKind::Video, "video/VP8"),
                    (Codec::Opus, MediaKind::Audio, "audio/opus"),
                    (Codec::H264, MediaKind::Video, "video/H264"),
                ] {
                    n += 1;
                    let track = TrackId::from_wire(t);
                    let meta = TrackMeta {
                        room: RoomId::parse("r").unwrap(),
                        participant: ParticipantId::from_wire(p),
                        // Names are shown, never used in paths; this one would escape.
                        participant_name: DisplayName::parse("../../escaped").unwrap(),
                        track: track.clone(),
                        kind,
                        source: TrackSource::Camera,
                        codec,
                        mime: mime.into(),
                        clock_rate: 90_000,
                        channels: 2,
                        payload_type: 96,
                    };
                    let mut packet = pkt(n);
                    packet.payload = vec![0x10, 0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a].into();
                    for ev in [
                        TapEvent::TrackStarted(meta),
                        TapEvent::Rtp {
                            track: track.clone(),
                            layer: 0,
                            keyframe: true,
                            packet,
                            at: SystemTime::now(),
                        },
                        TapEvent::TrackEnded(track),
                    ] {
                        tx.send(ev).unwrap();
                    }
                }
            }
        }
        drop(tx);
        let sinks = run_session(
            RoomId::parse("r").unwrap(),
            rx,
            sinks,
            Default::default(),
            |_| {},
        );
        drop(sinks);
        // Every file is directly in the directory (some hostile ids still make a plain
        // name once joined, "PA_ok-...ivf": those are fine); nothing anywhere else, no
        // subdirectory, and the ordinary track was recorded.
        let written = files_under(&root);
        assert!(
            written
                .iter()
                .all(|p| *p == dir || (p.parent() == Some(&dir) && p.is_file())),
            "{written:?}"
        );
        for f in [
            "PA_ok-TR_ok.ivf",
            "PA_ok-TR_ok.ogg",
            "PA_ok-TR_ok.h264",
            "PA_ok-TR_ok.sdp",
        ] {
            assert!(written.contains(&dir.join(f)), "{f} missing: {written:?}");
        }
        let tmp_after: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| n.to_string_lossy().starts_with("escaped"))
            .collect();
        assert_eq!(tmp_after, tmp_before);
        assert!(!std::path::Path::new("/tmp/escaped").exists());
        let manifest: file::Manifest =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert!(manifest.files.iter().any(|f| f.track_id == "TR_ok"));
        for f in &manifest.files {
            assert_eq!(path::safe_component(&f.path), Some(f.path.as_str()));
            assert_eq!(f.participant_name, "../../escaped");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn depth_bounds_the_wait() {
        let t0 = SystemTime::now();
        let mut r = Reorder::default();
        r.push(pkt(1), true, t0);
        let mut out = Vec::new();
        for s in 3..40 {
            out.extend(r.push(pkt(s), false, t0));
        }
        let got = seqs(&out);
        assert_eq!(got.first(), Some(&(3, true)), "released past the missing 2");
        assert!(r.held.len() <= Reorder::DEPTH);
    }
}
