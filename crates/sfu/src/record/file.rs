//! The file recorder: each track as it arrives, in a container ordinary tools play —
//! VP8/VP9 in IVF, Opus in Ogg, H.264 as an Annex B stream — plus `manifest.json` listing
//! every file with its participant, track, codec and wall-clock start (from the
//! publisher's RTCP sender reports), so that tracks can be synchronised and mixed.
//!
//! A small reorder buffer per track absorbs reordering; a gap that it cannot fill makes the
//! video writer wait for the next keyframe (and asks for one) rather than write a broken
//! frame. With simulcast, the best layer received is recorded, switching up at a keyframe,
//! and down at one when the layer recorded has been silent for a second (the media plane
//! keeps the top layer on while a room is recorded).
//!
//! IVF is written here rather than with `rtc::media`'s writer because that one stamps
//! frames with their index, which misplaces every frame of a variable-rate browser stream;
//! these are stamped in milliseconds of RTP time, and the header's length field holds the
//! duration in the same unit (what ffmpeg reads it as).

use crate::record::Reorder;
use crate::rtp::Codec;
use crate::sink::{TrackMeta, TrackSink, ntp_to_unix_ms};
use confab_proto::TrackId;
use rtc::media::io::Writer;
use rtc::rtp::packetizer::Depacketizer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One recorded file, as listed in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub participant_id: String,
    pub participant_name: String,
    pub track_id: String,
    pub kind: confab_proto::MediaKind,
    pub source: confab_proto::TrackSource,
    pub codec: String,
    /// Wall-clock time of the file's first media sample, ms since the Unix epoch: from
    /// the RTCP sender report mapping when one arrived, else from the packet's arrival.
    pub start_unix_ms: i64,
    /// Whether `start_unix_ms` comes from a sender report.
    pub start_from_sender_report: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Gaps in the stream (lost packets the reorder buffer could not wait for).
    pub gaps: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub room: String,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// Packets the recorder never got because its queue was full (never slowing media).
    pub dropped_packets: u64,
    pub files: Vec<FileEntry>,
}

trait MediaFile: Send {
    fn write(&mut self, p: &rtc::rtp::Packet, pts90k: u64) -> std::io::Result<()>;
    fn close(&mut self) -> std::io::Result<()>;
}

struct TrackFile {
    meta: TrackMeta,
    path: PathBuf,
    file: Box<dyn MediaFile>,
    reorder: Reorder,
    layer: Option<u8>,
    /// Video: drop until a keyframe (start, or after a gap).
    waiting_key: bool,
    wants_key: bool,
    /// Unwrapped RTP time of the current layer, and the offset that keeps the file's
    /// clock continuous across layer switches.
    last_ts: Option<u32>,
    ts_ext: u64,
    pts_base: Option<i64>,
    last_pts: u64,
    last_at: Option<SystemTime>,
    /// The first packet written: (SSRC, RTP time).
    first: Option<(u32, u32)>,
    /// The latest sender report of each SSRC (simulcast layers have their own RTP
    /// clocks): RTP time and Unix ms.
    sr: HashMap<u32, (u32, i64)>,
    start: Option<(i64, bool)>,
    packets: u64,
    bytes: u64,
    gaps: u64,
}

/// Records a room into a directory.
pub struct FileRecorder {
    dir: PathBuf,
    room: String,
    started: SystemTime,
    tracks: HashMap<TrackId, TrackFile>,
    done: Vec<FileEntry>,
    finished: Option<Manifest>,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl FileRecorder {
    pub fn new(dir: &Path, room: &str) -> std::io::Result<FileRecorder> {
        std::fs::create_dir_all(dir)?;
        Ok(FileRecorder {
            dir: dir.to_path_buf(),
            room: room.to_string(),
            started: SystemTime::now(),
            tracks: HashMap::new(),
            done: Vec::new(),
            finished: None,
        })
    }

    /// The manifest written by `finish`.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.finished.as_ref()
    }

    fn open(&self, meta: &TrackMeta) -> std::io::Result<(PathBuf, Box<dyn MediaFile>)> {
        let stem = format!("{}-{}", meta.participant, meta.track);
        let path = |ext: &str| super::path::join(&self.dir, &format!("{stem}.{ext}"));
        Ok(match meta.codec {
            Codec::Vp8 | Codec::Vp9 => {
                let path = path("ivf")?;
                let fourcc = if meta.codec == Codec::Vp8 {
                    *b"VP80"
                } else {
                    *b"VP90"
                };
                (
                    path.clone(),
                    Box::new(IvfFile::create(&path, fourcc, meta.codec)?),
                )
            }
            Codec::Opus => {
                let path = path("ogg")?;
                let w = rtc::media::io::ogg_writer::OggWriter::new(
                    BufWriter::new(File::create(&path)?),
                    meta.clock_rate,
                    meta.channels.max(1) as u8,
                )
                .map_err(std::io::Error::other)?;
                (path, Box::new(WriterFile(w)))
            }
            Codec::H264 => {
                let path = path("h264")?;
                let w = rtc::media::io::h26x_writer::H26xWriter::new(
                    BufWriter::new(File::create(&path)?),
                    false,
                );
                (path, Box::new(WriterFile(w)))
            }
            Codec::Other => {
                return Err(std::io::Error::other(format!(
                    "no container for {}",
                    meta.mime
                )));
            }
        })
    }

    fn close(&mut self, track: &TrackId) {
        let Some(mut t) = self.tracks.remove(track) else {
            return;
        };
        for (p, _, _) in t.reorder.drain() {
            write_packet(&mut t, &p);
        }
        if let Err(e) = t.file.close() {
            tracing::warn!(error = %e, path = %t.path.display(), "recording: closing a file failed");
        }
        let (start, from_sr) = t.start.unwrap_or((unix_ms(self.started), false));
        self.done.push(FileEntry {
            path: t
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            participant_id: t.meta.participant.to_string(),
            participant_name: t.meta.participant_name.to_string(),
            track_id: t.meta.track.to_string(),
            kind: t.meta.kind,
            source: t.meta.source,
            codec: t.meta.mime.clone(),
            start_unix_ms: start,
            start_from_sender_report: from_sr,
            packets: t.packets,
            bytes: t.bytes,
            gaps: t.gaps,
        });
    }
}

/// The wall-clock time (Unix ms) of RTP time `ts`, from a sender report's mapping of
/// `sr_ts` to `sr_ms`.
fn wall_ms(ts: u32, sr_ts: u32, sr_ms: i64, clock_rate: u32) -> i64 {
    let d = ts.wrapping_sub(sr_ts) as i32 as i64;
    sr_ms + d * 1000 / clock_rate.max(1) as i64
}

/// How long the recorded layer may be silent before another one takes over.
const LAYER_SILENCE: Duration = Duration::from_secs(1);

fn write_packet(t: &mut TrackFile, p: &rtc::rtp::Packet) {
    // The file's clock: RTP time of this layer, unwrapped, rebased at switches.
    let ts = p.header.timestamp;
    if let Some(last) = t.last_ts {
        let d = ts.wrapping_sub(last) as i32 as i64;
        t.ts_ext = (t.ts_ext as i64 + d).max(0) as u64;
    }
    t.last_ts = Some(ts);
    let base = *t.pts_base.get_or_insert(t.ts_ext as i64);
    // (Only IVF uses it; Ogg and Annex B keep their own clocks.)
    let pts = (t.ts_ext as i64 - base).max(0) as u64;
    t.last_pts = pts;
    if let Err(e) = t.file.write(p, pts) {
        tracing::debug!(error = %e, "recording: write failed");
    }
    t.packets += 1;
    t.bytes += p.payload.len() as u64;
}

impl TrackSink for FileRecorder {
    fn track_started(&mut self, meta: &TrackMeta) {
        match self.open(meta) {
            Ok((path, file)) => {
                tracing::info!(track = %meta.track, path = %path.display(), "recording track");
                self.tracks.insert(
                    meta.track.clone(),
                    TrackFile {
                        meta: meta.clone(),
                        path,
                        file,
                        reorder: Reorder::default(),
                        layer: None,
                        waiting_key: meta.codec.is_video(),
                        wants_key: meta.codec.is_video(),
                        last_ts: None,
                        ts_ext: 0,
                        pts_base: None,
                        last_pts: 0,
                        last_at: None,
                        first: None,
                        sr: HashMap::new(),
                        start: None,
                        packets: 0,
                        bytes: 0,
                        gaps: 0,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, track = %meta.track, "recording: cannot open a file")
            }
        }
    }

    fn rtp(
        &mut self,
        track: &TrackId,
        layer: u8,
        keyframe: bool,
        packet: &rtc::rtp::Packet,
        at: SystemTime,
    ) {
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        let video = t.meta.codec.is_video();
        // Simulcast: record the best layer seen, switching up at one of its keyframes.
        // The layer recorded has gone quiet (the publisher paused it, or its link cannot
        // carry it): another layer takes over at its next keyframe.
        let silent = t
            .last_at
            .and_then(|a| at.duration_since(a).ok())
            .is_some_and(|d| d >= LAYER_SILENCE);
        match t.layer {
            Some(l) if layer == l => {}
            Some(l) if keyframe && (layer > l || silent) => {
                for (p, _, _) in t.reorder.drain() {
                    write_packet(t, &p);
                }
                // Continue the file's clock across the switch by wall time.
                let gap90k = t
                    .last_at
                    .and_then(|a| at.duration_since(a).ok())
                    .map_or(1, |d| (d.as_micros() as u64 * 90 / 1000).max(1));
                t.pts_base = Some(-((t.last_pts + gap90k) as i64));
                t.ts_ext = 0;
                t.last_ts = None;
                t.layer = Some(layer);
                t.waiting_key = false;
            }
            Some(_) => {
                if silent {
                    t.wants_key = true; // the media plane throttles the requests
                }
                return;
            }
            None => {
                if video && !keyframe {
                    return;
                }
                t.layer = Some(layer);
                t.waiting_key = false;
            }
        }
        t.last_at = Some(at);
        if t.first.is_none() {
            let (ssrc, ts) = (packet.header.ssrc, packet.header.timestamp);
            t.first = Some((ssrc, ts));
            t.start = Some(match t.sr.get(&ssrc) {
                Some(&(sr_ts, sr_ms)) => (wall_ms(ts, sr_ts, sr_ms, t.meta.clock_rate), true),
                None => (unix_ms(at), false),
            });
        }
        for (p, gap, key) in t.reorder.push(packet.clone(), keyframe, at) {
            if gap {
                t.gaps += 1;
                if video {
                    t.waiting_key = true;
                    t.wants_key = true;
                }
            }
            if t.waiting_key {
                if !key {
                    continue;
                }
                t.waiting_key = false;
            }
            write_packet(t, &p);
        }
    }

    fn sender_report(&mut self, track: &TrackId, ssrc: u32, ntp: u64, rtp_ts: u32) {
        if let Some(t) = self.tracks.get_mut(track) {
            let ms = ntp_to_unix_ms(ntp);
            if t.sr.len() < 8 || t.sr.contains_key(&ssrc) {
                t.sr.insert(ssrc, (rtp_ts, ms));
            }
            // A report that arrives after the first packet still dates the file.
            if let (Some((first_ssrc, first_ts)), Some((_, false))) = (t.first, t.start)
                && first_ssrc == ssrc
            {
                t.start = Some((wall_ms(first_ts, rtp_ts, ms, t.meta.clock_rate), true));
            }
        }
    }

    fn track_ended(&mut self, track: &TrackId) {
        self.close(track);
    }

    fn finish(&mut self, dropped: u64) {
        let ids: Vec<TrackId> = self.tracks.keys().cloned().collect();
        for id in ids {
            self.close(&id);
        }
        let manifest = Manifest {
            room: self.room.clone(),
            started_unix_ms: unix_ms(self.started),
            finished_unix_ms: unix_ms(SystemTime::now()),
            dropped_packets: dropped,
            files: std::mem::take(&mut self.done),
        };
        let path = self.dir.join("manifest.json");
        match serde_json::to_vec_pretty(&manifest) {
            Ok(json) => {
                if let Err(e) = std::fs::write(&path, json) {
                    tracing::warn!(error = %e, "recording: cannot write the manifest");
                }
            }
            Err(e) => tracing::warn!(error = %e, "recording: manifest"),
        }
        self.finished = Some(manifest);
    }

    fn keyframes_wanted(&mut self) -> Vec<TrackId> {
        self.tracks
            .iter_mut()
            .filter_map(|(id, t)| std::mem::take(&mut t.wants_key).then(|| id.clone()))
            .collect()
    }
}

/// An `rtc::media` writer (Ogg, Annex B) as a [`MediaFile`]; they keep their own clocks.
struct WriterFile<W: Writer + Send>(W);

impl<W: Writer + Send> MediaFile for WriterFile<W> {
    fn write(&mut self, p: &rtc::rtp::Packet, _pts: u64) -> std::io::Result<()> {
        self.0.write_rtp(p).map_err(std::io::Error::other)
    }
    fn close(&mut self) -> std::io::Result<()> {
        self.0.close().map_err(std::io::Error::other)
    }
}

/// VP8/VP9 in IVF with frames stamped from RTP time (timebase 1/1000).
struct IvfFile {
    out: BufWriter<File>,
    codec: Codec,
    frame: Vec<u8>,
    frame_pts: u64,
    frames: u32,
    last_ms: u64,
    size: Option<(u16, u16)>,
    vp8: rtc::rtp::codec::vp8::Vp8Packet,
    vp9: rtc::rtp::codec::vp9::Vp9Packet,
}

impl IvfFile {
    fn create(path: &Path, fourcc: [u8; 4], codec: Codec) -> std::io::Result<IvfFile> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(&ivf_header(fourcc, 0, 0, 0))?;
        Ok(IvfFile {
            out,
            codec,
            frame: Vec::new(),
            frame_pts: 0,
            frames: 0,
            last_ms: 0,
            size: None,
            vp8: Default::default(),
            vp9: Default::default(),
        })
    }

    fn flush_frame(&mut self) -> std::io::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        if self.size.is_none() && self.codec == Codec::Vp8 {
            self.size = crate::rtp::codec::vp8_dimensions(&self.frame);
        }
        self.out
            .write_all(&(self.frame.len() as u32).to_le_bytes())?;
        // RTP time (90 kHz) to the file's millisecond timebase.
        self.last_ms = self.frame_pts / 90;
        self.out.write_all(&self.last_ms.to_le_bytes())?;
        self.out.write_all(&self.frame)?;
        self.frames += 1;
        self.frame.clear();
        Ok(())
    }
}

/// `length`: libvpx reads it as a frame count, ffmpeg as a duration in timebase units;
/// the duration (ms) is written, which players use.
fn ivf_header(fourcc: [u8; 4], width: u16, height: u16, length: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(b"DKIF");
    h[4..6].copy_from_slice(&0u16.to_le_bytes());
    h[6..8].copy_from_slice(&32u16.to_le_bytes());
    h[8..12].copy_from_slice(&fourcc);
    h[12..14].copy_from_slice(&width.to_le_bytes());
    h[14..16].copy_from_slice(&height.to_le_bytes());
    // timebase: 1/1000 (denominator, then numerator)
    h[16..20].copy_from_slice(&1_000u32.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..28].copy_from_slice(&length.to_le_bytes());
    h
}

impl MediaFile for IvfFile {
    fn write(&mut self, p: &rtc::rtp::Packet, pts: u64) -> std::io::Result<()> {
        if p.payload.is_empty() {
            return Ok(());
        }
        // A new frame starts with a new timestamp.
        if !self.frame.is_empty() && pts != self.frame_pts {
            self.flush_frame()?;
        }
        let data = match self.codec {
            Codec::Vp9 => self.vp9.depacketize(&p.payload),
            _ => self.vp8.depacketize(&p.payload),
        }
        .map_err(std::io::Error::other)?;
        if self.frame.is_empty() {
            self.frame_pts = pts;
        }
        self.frame.extend_from_slice(&data);
        if p.header.marker {
            self.flush_frame()?;
        }
        Ok(())
    }

    fn close(&mut self) -> std::io::Result<()> {
        self.flush_frame()?;
        let (w, h) = self.size.unwrap_or((0, 0));
        let fourcc = if self.codec == Codec::Vp9 {
            *b"VP90"
        } else {
            *b"VP80"
        };
        self.out.flush()?;
        let f = self.out.get_mut();
        f.seek(SeekFrom::Start(0))?;
        // The last frame lasts about as long as the average one.
        let avg = if self.frames > 1 {
            self.last_ms / (self.frames as u64 - 1)
        } else {
            0
        };
        let length = (self.last_ms + avg).min(u32::MAX as u64) as u32;
        f.write_all(&ivf_header(fourcc, w, h, length))?;
        f.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_proto::{DisplayName, MediaKind, ParticipantId, RoomId, TrackSource};

    fn meta() -> TrackMeta {
        TrackMeta {
            room: RoomId::parse("r").unwrap(),
            participant: ParticipantId::from_wire("PA_1"),
            participant_name: DisplayName::parse("Ada").unwrap(),
            track: TrackId::from_wire("TR_1"),
            kind: MediaKind::Video,
            source: TrackSource::Camera,
            codec: Codec::Vp8,
            mime: "video/VP8".into(),
            clock_rate: 90_000,
            channels: 0,
            payload_type: 96,
        }
    }

    /// One single-packet VP8 frame: payload descriptor (start of partition 0) and a frame
    /// tag (a keyframe carries the start code and 320x180).
    fn frame(ssrc: u32, seq: u16, ts: u32, key: bool) -> rtc::rtp::Packet {
        let mut payload = vec![0x10];
        if key {
            payload.extend_from_slice(&[0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a, 64, 1, 180, 0]);
        } else {
            payload.extend_from_slice(&[0x51, 0x01, 0x00, 0, 0, 0]);
        }
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                ssrc,
                sequence_number: seq,
                timestamp: ts,
                marker: true,
                payload_type: 96,
                ..Default::default()
            },
            payload: payload.into(),
        }
    }

    /// The frames of an IVF file: (timestamp ms, size).
    fn ivf_frames(path: &Path) -> Vec<(u64, u32)> {
        let data = std::fs::read(path).unwrap();
        assert_eq!(&data[0..4], b"DKIF");
        let mut out = Vec::new();
        let mut at = 32;
        while at + 12 <= data.len() {
            let size = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            let pts = u64::from_le_bytes(data[at + 4..at + 12].try_into().unwrap());
            out.push((pts, size));
            at += 12 + size as usize;
        }
        out
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "confab-file-test-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_switch_up_to_another_layer_keeps_the_file_going() {
        let dir = scratch("switch");
        let mut rec = FileRecorder::new(&dir, "r").unwrap();
        let m = meta();
        rec.track_started(&m);
        let t0 = SystemTime::now();
        let at = |i: u64| t0 + Duration::from_millis(i * 33);
        // Layer 0 (its own SSRC, sequence and RTP clock) for 30 frames...
        for i in 0..30u16 {
            let p = frame(100, 5000 + i, 1_000 + 3000 * i as u32, i == 0);
            rec.rtp(&m.track, 0, i == 0, &p, at(i as u64));
        }
        // ...then layer 2, from a keyframe, in a sequence space far behind.
        for i in 0..30u16 {
            let p = frame(300, 10 + i, 7_000_000 + 3000 * i as u32, i == 0);
            rec.rtp(&m.track, 2, i == 0, &p, at(30 + i as u64));
        }
        // A late packet of layer 0 is no longer written.
        rec.rtp(&m.track, 0, false, &frame(100, 5030, 91_000, false), at(60));
        rec.finish(0);
        let manifest = rec.manifest().unwrap();
        let frames = ivf_frames(&dir.join(&manifest.files[0].path));
        assert_eq!(frames.len(), 60);
        // One clock across the switch: 33 ms a frame, the switch one wall-clock frame on.
        let pts: Vec<u64> = frames.iter().map(|f| f.0).collect();
        assert!(pts.windows(2).all(|w| w[1] > w[0]), "{pts:?}");
        assert_eq!(pts[29], 29 * 3000 / 90);
        assert!((pts[30] as i64 - pts[29] as i64 - 33).abs() <= 1, "{pts:?}");
        assert!(
            (pts[59] as i64 - pts[30] as i64 - 29 * 3000 / 90).abs() <= 1,
            "{pts:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_silent_layer_gives_way_to_another_at_its_keyframe() {
        let dir = scratch("down");
        let mut rec = FileRecorder::new(&dir, "r").unwrap();
        let m = meta();
        rec.track_started(&m);
        // A new video track asks for a keyframe to start from.
        assert_eq!(rec.keyframes_wanted(), vec![m.track.clone()]);
        let t0 = SystemTime::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Layer 2 for 10 frames, then it stops; layer 1 keeps coming.
        for i in 0..10u16 {
            let p = frame(300, 100 + i, 3000 * i as u32, i == 0);
            rec.rtp(&m.track, 2, i == 0, &p, at(33 * i as u64));
        }
        // Within the second, layer 1 is ignored, keyframe or not.
        rec.rtp(&m.track, 1, true, &frame(200, 1, 50_000, true), at(500));
        assert!(rec.keyframes_wanted().is_empty());
        // After it, layer 1 makes the recorder ask for a keyframe, and takes over at one.
        rec.rtp(&m.track, 1, false, &frame(200, 2, 90_000, false), at(1_400));
        assert_eq!(rec.keyframes_wanted(), vec![m.track.clone()]);
        for i in 0..5u16 {
            let p = frame(200, 3 + i, 93_000 + 3000 * i as u32, i == 0);
            rec.rtp(&m.track, 1, i == 0, &p, at(1_433 + 33 * i as u64));
        }
        rec.finish(0);
        let frames = ivf_frames(&dir.join(&rec.manifest().unwrap().files[0].path));
        assert_eq!(frames.len(), 15);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_recorded_layers_sender_report_dates_the_file() {
        let dir = scratch("sr");
        let mut rec = FileRecorder::new(&dir, "r").unwrap();
        let m = meta();
        rec.track_started(&m);
        // NTP for 2026-01-01T00:00:00Z (Unix 1767225600).
        let ntp = |unix: u64| (unix + 2_208_988_800) << 32;
        // A report from another layer, whose RTP clock has nothing to do with this one.
        rec.sender_report(&m.track, 300, ntp(1_767_225_600), 77_000_000);
        let now = SystemTime::now();
        rec.rtp(&m.track, 0, true, &frame(100, 1, 90_000, true), now);
        rec.rtp(&m.track, 0, false, &frame(100, 2, 93_000, false), now);
        // The wall clock dates it until this layer's own report arrives: its RTP time
        // 0 is 2026-01-01T00:00:00Z, so the first packet (RTP 90000) is one second later.
        rec.sender_report(&m.track, 100, ntp(1_767_225_600), 0);
        rec.sender_report(&m.track, 300, ntp(1_767_225_700), 77_000_000);
        rec.finish(0);
        let f = &rec.manifest().unwrap().files[0];
        assert!(f.start_from_sender_report);
        assert_eq!(f.start_unix_ms, 1_767_225_601_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
