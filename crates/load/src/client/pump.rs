//! Synthetic media: what a simulated participant sends, and the pump that sends it.

#[allow(unused_imports)]
use super::*;

/// Largest synthetic video payload per packet (a frame larger than this spans packets).
pub const MAX_VIDEO_PAYLOAD: usize = 1100;

/// What a [`Pump`] sends.
#[derive(Debug, Clone, Copy)]
pub struct MediaPlan {
    pub audio: bool,
    pub video: bool,
    /// Video frames per second.
    pub fps: u32,
    /// Bytes per video frame, split into packets of at most [`MAX_VIDEO_PAYLOAD`].
    pub video_bytes: usize,
    /// Audio packets are 20 ms of Opus.
    pub audio_bytes: usize,
    pub keyframe_every: Duration,
    /// RFC 6464 level put in every audio packet: 0 loudest, 127 silence.
    pub audio_level: u8,
}

impl Default for MediaPlan {
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            fps: 30,
            video_bytes: 1000,
            audio_bytes: 100,
            keyframe_every: Duration::from_secs(2),
            audio_level: 127,
        }
    }
}

/// Sends synthetic media until dropped. A keyframe goes out on the plan's interval and
/// whenever the server asks for one.
pub struct Pump {
    task: tokio::task::JoinHandle<()>,
    pub sent: Arc<AtomicU64>,
    mid_rid: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::atomic::AtomicU8>,
}

impl Pump {
    /// Holds back the video layers whose bit is set in `mask` (bit 0: the lowest): they
    /// send nothing until released, as a browser's late-starting or paused encodings.
    pub fn hold_layers(&self, mask: u8) {
        self.held.store(mask, Ordering::Relaxed);
    }

    /// Whether packets carry the mid and rid header extensions (on at first). Chromium
    /// stops sending them once the receiver's reports show it knows the SSRCs; turning
    /// them off reproduces that.
    pub fn send_mid_rid(&self, on: bool) {
        self.mid_rid.store(on, Ordering::Relaxed);
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    pub fn start_media(&self, plan: MediaPlan) -> Pump {
        self.start_media_holding(plan, 0)
    }

    /// [`Client::start_media`] with the video layers of `held` (a [`Pump::hold_layers`]
    /// mask) held back from the first frame.
    pub fn start_media_holding(&self, plan: MediaPlan, held: u8) -> Pump {
        let audio = if plan.audio { self.audio.clone() } else { None };
        let video = if plan.video { self.video.clone() } else { None };
        let (audio_mid, video_mid) = (self.audio_mid.clone(), self.video_mid.clone());
        let mut red = self
            .red
            .then(|| confab_sfu::rtp::red::RedEncoder::new(OPUS_PT));
        let keyframe = self.shared.keyframe_requested.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let mid_rid = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let with_mid_rid = mid_rid.clone();
        let held = Arc::new(std::sync::atomic::AtomicU8::new(held));
        let holding = held.clone();
        let task = tokio::spawn(async move {
            let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
            let mut video_tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / plan.fps.max(1) as u64));
            let a_ssrc = match &audio {
                Some(t) => t.ssrcs().await.first().copied().unwrap_or(0),
                None => 0,
            };
            // One stream per encoding (three with simulcast), each with its own sequence
            // numbers and picture ids, as a browser's encoder does.
            let mut layers: Vec<LayerState> = Vec::new();
            if let Some(t) = &video {
                let ssrcs = t.ssrcs().await;
                let simulcast = ssrcs.len() > 1;
                for (i, ssrc) in ssrcs.into_iter().enumerate() {
                    let (rid, share, height) = if simulcast {
                        let (r, s, h) = SIMULCAST_LAYERS[i.min(2)];
                        (Some(r), s, h)
                    } else {
                        (None, 1, 720)
                    };
                    layers.push(LayerState {
                        ssrc,
                        rid,
                        layer: i as u64,
                        bytes: (plan.video_bytes / share).max(60),
                        height,
                        seq: rand::random(),
                        picture_id: rand::random::<u16>() & 0x7fff,
                        tl0: rand::random(),
                        index: 0,
                    });
                }
            }
            let (mut a_idx, mut frame) = (0u64, 0u64);
            let mut a_seq = rand::random::<u16>();
            let mut last_key: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = audio_tick.tick(), if audio.is_some() => {
                        let Some(t) = &audio else { continue };
                        let ts = a_idx as u32 * 960;
                        let payload = media::payload(None, a_idx, plan.audio_bytes, media::now_micros());
                        let pkt = match red.as_mut() {
                            Some(red) => rtp_packet(RED_PT, a_ssrc, a_seq, ts, true, red.encode(ts, &payload)),
                            None => rtp_packet(OPUS_PT, a_ssrc, a_seq, ts, true, payload),
                        };
                        let mut exts = vec![rtc::rtp::extension::HeaderExtension::AudioLevel(
                            rtc::rtp::extension::audio_level_extension::AudioLevelExtension {
                                level: plan.audio_level.min(127),
                                voice: plan.audio_level < 127,
                            },
                        )];
                        if let Some(mid) = &audio_mid
                            && with_mid_rid.load(Ordering::Relaxed)
                        {
                            exts.push(text_extension(rtc::sdp::extmap::SDES_MID_URI, mid));
                        }
                        if t.write_rtp_with_extensions(pkt, &exts).await.is_ok() {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        a_idx += 1;
                        a_seq = a_seq.wrapping_add(1);
                    }
                    _ = video_tick.tick(), if video.is_some() => {
                        let Some(t) = &video else { continue };
                        let now = Instant::now();
                        let key = keyframe.swap(false, Ordering::Relaxed)
                            || last_key.is_none_or(|k| now - k >= plan.keyframe_every);
                        if key {
                            last_key = Some(now);
                        }
                        let ts = (frame * 90_000 / plan.fps.max(1) as u64) as u32;
                        let held = holding.load(Ordering::Relaxed);
                        for l in layers.iter_mut() {
                            if held & (1 << l.layer.min(7)) != 0 {
                                continue;
                            }
                            let parts = l.bytes.div_ceil(MAX_VIDEO_PAYLOAD).max(1);
                            let size = l.bytes.div_ceil(parts);
                            if key {
                                l.tl0 = l.tl0.wrapping_add(1);
                            }
                            for part in 0..parts {
                                let meta = media::Vp8Meta {
                                    start: part == 0,
                                    keyframe: key,
                                    picture_id: l.picture_id,
                                    tl0picidx: l.tl0,
                                    width: l.height * 16 / 9,
                                    height: l.height,
                                };
                                // The layer is in the index's top byte, so that a receiver can
                                // tell which layer it got.
                                let index = (l.layer << 56) | l.index;
                                let pkt = rtp_packet(VP8_PT, l.ssrc, l.seq, ts, part + 1 == parts,
                                    media::payload(Some(meta), index, size, media::now_micros()));
                                let mut exts = Vec::new();
                                let mid_rid = with_mid_rid.load(Ordering::Relaxed);
                                if let Some(mid) = video_mid.as_ref().filter(|_| mid_rid) {
                                    exts.push(text_extension(rtc::sdp::extmap::SDES_MID_URI, mid));
                                }
                                if let Some(rid) = l.rid.filter(|_| mid_rid) {
                                    exts.push(text_extension(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI, rid));
                                }
                                if t.write_rtp_with_extensions(pkt, &exts).await.is_ok() {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                }
                                l.index += 1;
                                l.seq = l.seq.wrapping_add(1);
                            }
                            l.picture_id = (l.picture_id + 1) & 0x7fff;
                        }
                        frame += 1;
                    }
                }
            }
        });
        Pump {
            task,
            sent,
            mid_rid,
            held,
        }
    }
}

/// One outgoing video encoding of a pump.
pub(super) struct LayerState {
    pub(super) ssrc: u32,
    pub(super) rid: Option<&'static str>,
    pub(super) layer: u64,
    pub(super) bytes: usize,
    pub(super) height: u16,
    pub(super) seq: u16,
    pub(super) picture_id: u16,
    tl0: u8,
    pub(super) index: u64,
}

/// The layer a synthetic video packet came from (see [`Client::start_media`]).
pub fn layer_of_index(index: u64) -> u8 {
    (index >> 56) as u8
}

pub(super) fn rtp_packet(
    pt: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: bytes::Bytes,
) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload,
    }
}

/// A header extension whose value is a short string (mid, rid).
pub(super) fn text_extension(
    uri: &'static str,
    value: &str,
) -> rtc::rtp::extension::HeaderExtension {
    rtc::rtp::extension::HeaderExtension::Custom {
        uri: uri.into(),
        extension: Box::new(TextExt(bytes::Bytes::copy_from_slice(value.as_bytes()))),
    }
}

#[derive(Debug, Clone)]
pub(super) struct TextExt(bytes::Bytes);

impl rtc::shared::marshal::MarshalSize for TextExt {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl rtc::shared::marshal::Marshal for TextExt {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let n = self.0.len().min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        Ok(n)
    }
}

pub(super) fn encoding(codec: RTCRtpCodec) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(rand::random::<u32>()),
            ..Default::default()
        },
        codec,
        ..Default::default()
    }
}
