//! The egress of forwarded RTP: one [`DownStream`] per down-track, beside `rtc`'s
//! per-packet write pipeline.
//!
//! `rtc`'s `RTCRtpSender::write_rtp` costs several times what forwarding needs: it rebuilds
//! the sender's parameters (vectors and codec clones) and allocates the track id per
//! packet, passes the packet through the interceptor chain (sender report accounting, NACK
//! buffer), marshals it, then encrypts it into another copy. A forwarded packet needs its
//! header rewritten, one encryption into the datagram, and a note of what was sent. So a
//! subscriber connection's DTLS-SRTP keys are exported once (`export_srtp_keys`, our patch
//! of rtc 0.21.1: patches/rtc.patch) and each down-track gets an SRTP context of its own,
//! with the bookkeeping per stream that the interceptors did per packet:
//! - sender reports (RFC 3550 §6.4.1) every [`REPORT_INTERVAL`] while it sends;
//! - a retransmission history for video: the last [`HISTORY`] rewritten packets (their
//!   payloads shared with every other down-track), sent again on the media SSRC when the
//!   subscriber NACKs one (same sequence number and rollover counter: with AES-GCM the
//!   same nonce under another header, the transport-wide number differing), and copied
//!   into probe clusters ([`crate::probe`]) on the RTX stream (RFC 4588);
//! - packet and octet counts.
//!
//! `rtc` still owns everything else on the connection: ICE, DTLS, the data channel, the
//! RTCP it receives. Its own SRTP context never sends on a down-track's SSRC (it sends no
//! RTP on a subscriber connection, and no sender reports: that interceptor is not
//! installed), so no two contexts ever protect one SRTP stream.
//!
//! No IO here: the caller sends the datagrams returned.

use crate::rtp::codec::Vp8Patch;
use bytes::{Bytes, BytesMut};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Sender reports per down-track while it sends (rtc's interceptor used the same).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The first report follows a stream's first packet this soon, so that a receiver can
/// synchronise audio and video early.
const FIRST_REPORT: Duration = Duration::from_millis(100);
/// Video packets kept for retransmission per down-track: about 0.8 s at 2.5 Mbit/s, 2.5 s
/// at 800 kbit/s; a retransmission older than that would arrive too late to be played.
/// A history holds the packets themselves (their payloads shared with the other
/// down-tracks, except after a simulcast switch, when each copy's picture ids differ): at
/// 512 a 25 x 25 simulcast meeting took 5.1 MB per participant, 1.4 MB before.
pub const HISTORY: usize = 256;

/// A packet is sent again at most this many times: a receiver that still asks after that
/// is not getting the copies (its replay window refuses a packet that old, or the path
/// loses everything), and more would only add to what it cannot take.
pub const MAX_RESENDS: u8 = 3;

/// The keys that protect what this side sends on one connection.
#[derive(Clone)]
pub struct LocalKeys {
    profile: ProtectionProfile,
    key: Vec<u8>,
    salt: Vec<u8>,
}

impl std::fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeys")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl LocalKeys {
    pub fn new(profile: ProtectionProfile, key: Vec<u8>, salt: Vec<u8>) -> Self {
        Self { profile, key, salt }
    }

    pub fn profile(&self) -> ProtectionProfile {
        self.profile
    }

    fn context(&self) -> Option<Context> {
        let crypto = crypto()?;
        Context::new(
            &self.key,
            &self.salt,
            self.profile,
            None,
            None,
            crypto.crypto(),
        )
        .ok()
    }
}

/// The crypto provider `rtc` uses by default (ring: AES-NI where the CPU has it).
fn crypto() -> Option<&'static Arc<dyn rtc::crypto::RTCCryptoProvider>> {
    static PROVIDER: OnceLock<Option<Arc<dyn rtc::crypto::RTCCryptoProvider>>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| rtc::crypto::default_provider().ok())
        .as_ref()
}

/// What a down-track is sent as on its subscriber's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    pub ssrc: u32,
    pub payload_type: u8,
    pub clock_rate: u32,
    /// Keep a retransmission history (video).
    pub retransmit: bool,
    /// Send audio as RED (`payload_type` is then the subscriber's `audio/red`), its
    /// blocks of this payload type (the subscriber's Opus).
    pub red: Option<u8>,
    /// The RTX stream (RFC 4588) the subscriber's answer accepted for this video stream:
    /// probe clusters are sent on it ([`DownStream::probe_copy`]).
    pub rtx: Option<Rtx>,
}

/// An RTX stream: its own SSRC and payload type, and its own sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtx {
    pub ssrc: u32,
    pub payload_type: u8,
}

/// One down-track's outgoing SRTP stream.
pub struct DownStream {
    params: StreamParams,
    srtp: Context,
    packets: u32,
    octets: u32,
    /// The last packet's RTP timestamp and when it was sent: a report's RTP time.
    last: Option<(u32, Instant)>,
    next_report: Option<Instant>,
    /// Allocated at the first packet written (a down-track that never sends costs
    /// nothing); empty for audio.
    history: Vec<Option<Sent>>,
    retransmitted: u64,
    /// NACKed packets not sent again because a copy had left less than a round trip ago.
    resend_skipped: u64,
    red: Option<crate::rtp::red::RedEncoder>,
    /// The newest sequence number written (where probe copies are counted back from), and
    /// the RTX stream's next sequence number.
    newest: Option<u16>,
    rtx_seq: u16,
}

/// What a history keeps of a packet sent: the header fields a copy of this stream does
/// not share with every other (SSRC and payload type are the stream's; extensions are
/// stripped before forwarding) and the shared payload. About half of a whole
/// `rtp::Packet`, of which each video down-track keeps [`HISTORY`].
#[derive(Clone)]
struct Sent {
    seq: u16,
    timestamp: u32,
    marker: bool,
    padding: bool,
    csrc: Option<Box<[u32]>>,
    payload: Bytes,
    patch: Option<Vp8Patch>,
    /// When it was last sent again, and how many times it was.
    resent: Option<Instant>,
    resends: u8,
}

impl Sent {
    fn of(pkt: rtp::Packet, patch: Option<Vp8Patch>) -> Self {
        let h = pkt.header;
        Self {
            seq: h.sequence_number,
            timestamp: h.timestamp,
            marker: h.marker,
            padding: h.padding,
            csrc: (!h.csrc.is_empty()).then(|| h.csrc.into_boxed_slice()),
            payload: pkt.payload,
            patch,
            resent: None,
            resends: 0,
        }
    }

    fn packet(&self, params: &StreamParams) -> rtp::Packet {
        rtp::Packet {
            header: rtp::Header {
                version: 2,
                padding: self.padding,
                marker: self.marker,
                payload_type: params.payload_type,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: params.ssrc,
                csrc: self
                    .csrc
                    .as_deref()
                    .map(<[u32]>::to_vec)
                    .unwrap_or_default(),
                ..Default::default()
            },
            payload: self.payload.clone(),
        }
    }
}

impl DownStream {
    /// `None` when the keys' profile has no implementation in the crypto provider.
    pub fn new(keys: &LocalKeys, params: StreamParams) -> Option<Self> {
        Some(Self {
            params,
            srtp: keys.context()?,
            packets: 0,
            octets: 0,
            last: None,
            next_report: None,
            history: Vec::new(),
            retransmitted: 0,
            resend_skipped: 0,
            red: params.red.map(crate::rtp::red::RedEncoder::new),
            newest: None,
            rtx_seq: rand::random(),
        })
    }

    /// Puts the previous packets' payloads into `pkt` when this stream sends RED (before
    /// it is sized for the pacer and written; called once per packet, by
    /// `Peer::write_rtp`).
    pub fn add_redundancy(&mut self, pkt: &mut rtp::Packet) {
        if let Some(red) = &mut self.red
            && !pkt.payload.is_empty()
        {
            pkt.payload = red.encode(pkt.header.timestamp, &pkt.payload);
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.params.ssrc
    }

    /// Rewrites `pkt`'s SSRC and payload type to this stream's (and its VP8 fields, by
    /// `patch`, in the bytes encrypted: the payload stays shared), adds the transport-wide
    /// sequence number `twcc` (extension id, number) if there is one, and returns the
    /// protected datagram. `scratch` is reused across calls (the packet before encryption).
    pub fn write(
        &mut self,
        mut pkt: rtp::Packet,
        patch: Option<Vp8Patch>,
        twcc: Option<(u8, u16)>,
        now: Instant,
        scratch: &mut Vec<u8>,
    ) -> Option<Bytes> {
        pkt.header.ssrc = self.params.ssrc;
        pkt.header.payload_type = self.params.payload_type;
        let datagram = self.protect(&mut pkt, patch, twcc, scratch)?;
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(pkt.payload.len() as u32);
        self.last = Some((pkt.header.timestamp, now));
        self.next_report.get_or_insert(now + FIRST_REPORT);
        if self.params.retransmit {
            if self.history.is_empty() {
                self.history = vec![None; HISTORY];
            }
            let i = usize::from(pkt.header.sequence_number) % HISTORY;
            self.newest = Some(pkt.header.sequence_number);
            self.history[i] = Some(Sent::of(pkt, patch));
        }
        Some(datagram)
    }

    fn protect(
        &mut self,
        pkt: &mut rtp::Packet,
        patch: Option<Vp8Patch>,
        twcc: Option<(u8, u16)>,
        scratch: &mut Vec<u8>,
    ) -> Option<Bytes> {
        self.protect_at(pkt, patch, 0, twcc, scratch)
    }

    /// [`DownStream::protect`] with the VP8 fields `skip` bytes into the payload (after an
    /// RTX packet's original sequence number).
    fn protect_at(
        &mut self,
        pkt: &mut rtp::Packet,
        patch: Option<Vp8Patch>,
        skip: usize,
        twcc: Option<(u8, u16)>,
        scratch: &mut Vec<u8>,
    ) -> Option<Bytes> {
        if let Some((id, seq)) = twcc {
            stamp(&mut pkt.header, id, seq);
        }
        scratch.clear();
        scratch.resize(pkt.marshal_size(), 0);
        let n = pkt.marshal_to(scratch).ok()?;
        if let Some(patch) = patch {
            let payload = pkt.header.marshal_size() + skip;
            patch.apply(scratch.get_mut(payload..n)?);
        }
        self.srtp
            .encrypt_rtp_with_header(&scratch[..n], &pkt.header)
            .ok()
            .map(BytesMut::freeze)
    }

    /// The packet `seq` again, if it is still in the history and was not already sent
    /// again within `min_gap` (a round trip: the receiver asks again until the copy
    /// arrives, and behind a queue it asks several times for one loss; each extra copy
    /// would only lengthen the queue). Sent under a new transport-wide sequence number
    /// from `cc`, if the connection numbers its packets.
    pub fn retransmit(
        &mut self,
        seq: u16,
        cc: Option<&mut crate::twcc::TransportCc>,
        now: Instant,
        min_gap: Duration,
        scratch: &mut Vec<u8>,
    ) -> Option<Bytes> {
        let sent = self
            .history
            .get_mut(usize::from(seq) % HISTORY)?
            .as_mut()
            .filter(|s| s.seq == seq)?;
        if sent.resends >= MAX_RESENDS
            || sent
                .resent
                .is_some_and(|t| now.saturating_duration_since(t) < min_gap)
        {
            self.resend_skipped += 1;
            return None;
        }
        sent.resent = Some(now);
        sent.resends += 1;
        let (pkt, patch) = (sent.packet(&self.params), sent.patch);
        // On the media SSRC even with RTX: rtc 0.21's NACK generator (webrtc-rs clients)
        // does not clear a packet recovered from RTX and asks again until its limit
        // (`tests/conference.rs loss_is_repaired_without_retransmission_storms`: 144
        // retransmissions for 60 lost packets on RTX, at most 1.2 per loss on the SSRC).
        let datagram = self.send_again(pkt, patch, None, cc, now, scratch)?;
        self.retransmitted += 1;
        Some(datagram.0)
    }

    /// For a probe cluster ([`crate::probe`]): the packet `back` before the newest one
    /// written, sent again on the RTX stream under a new transport-wide number from `cc`.
    /// The subscriber recovers a packet it already has and drops it; its feedback counts
    /// it. On the media SSRC it would not even be counted: the receiver's SRTP replay check
    /// refuses a sequence number it has seen. Returns the datagram and its size on the
    /// wire; `None` without RTX, or when that packet is not in the history.
    pub fn probe_copy(
        &mut self,
        back: u16,
        cc: &mut crate::twcc::TransportCc,
        now: Instant,
        scratch: &mut Vec<u8>,
    ) -> Option<(Bytes, usize)> {
        let rtx = self.params.rtx?;
        let seq = self.newest?.wrapping_sub(back);
        let sent = self
            .history
            .get(usize::from(seq) % HISTORY)?
            .as_ref()
            .filter(|s| s.seq == seq)?;
        let (pkt, patch) = (sent.packet(&self.params), sent.patch);
        self.send_again(pkt, patch, Some(rtx), Some(cc), now, scratch)
    }

    /// A packet from the history, protected again: on the RTX stream when there is one
    /// (its own SSRC and sequence number, the original's before the payload, RFC 4588 §4:
    /// a fresh SRTP nonce, and no replay check to fail), else as it was. Under a new
    /// transport-wide number from `cc`, if the connection numbers its packets. Returns the
    /// datagram and its size on the wire.
    fn send_again(
        &mut self,
        mut pkt: rtp::Packet,
        patch: Option<Vp8Patch>,
        rtx: Option<Rtx>,
        cc: Option<&mut crate::twcc::TransportCc>,
        now: Instant,
        scratch: &mut Vec<u8>,
    ) -> Option<(Bytes, usize)> {
        let mut skip = 0;
        if let Some(rtx) = rtx {
            let mut payload = BytesMut::with_capacity(2 + pkt.payload.len());
            payload.extend_from_slice(&pkt.header.sequence_number.to_be_bytes());
            payload.extend_from_slice(&pkt.payload);
            pkt.payload = payload.freeze();
            pkt.header.ssrc = rtx.ssrc;
            pkt.header.payload_type = rtx.payload_type;
            pkt.header.sequence_number = self.rtx_seq;
            self.rtx_seq = self.rtx_seq.wrapping_add(1);
            skip = 2;
        }
        let size = wire_size(pkt.payload.len() + 12);
        let twcc = cc.map(|cc| {
            let ssrc = pkt.header.ssrc;
            (
                cc.ext_id(),
                cc.on_send(ssrc, pkt.header.sequence_number, size, now),
            )
        });
        let datagram = self.protect_at(&mut pkt, patch, skip, twcc, scratch)?;
        Some((datagram, size))
    }

    /// A sender report if one is due: `wall` is the NTP clock that receivers' reports
    /// refer back to (round-trip times are computed from it).
    pub fn report(&mut self, now: Instant, wall: SystemTime) -> Option<Bytes> {
        let due = self.next_report?;
        if now < due {
            return None;
        }
        self.next_report = Some(now + REPORT_INTERVAL);
        let (ts, at) = self.last?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let rtp_time = ts.wrapping_add((elapsed * f64::from(self.params.clock_rate)) as u32);
        let sr = SenderReport {
            ssrc: self.params.ssrc,
            ntp_time: crate::bwe::ntp_time(wall),
            rtp_time,
            packet_count: self.packets,
            octet_count: self.octets,
            reports: Vec::new(),
            profile_extensions: Bytes::new(),
        };
        let raw = sr.marshal().ok()?;
        self.srtp.encrypt_rtcp(&raw).ok().map(BytesMut::freeze)
    }

    /// Packets and payload octets sent (wrapping, as in a sender report), and
    /// retransmissions.
    pub fn counts(&self) -> (u32, u32, u64) {
        (self.packets, self.octets, self.retransmitted)
    }

    /// NACKed packets not sent again (a copy was already on its way).
    pub fn resend_skipped(&self) -> u64 {
        self.resend_skipped
    }
}

/// A packet's size on the wire from its RTP size: the transport-wide sequence number's
/// extension block (8 bytes) and the SRTP tag (16 at most) added. Close enough for the
/// received-rate measurement and the pacer's budget, which is all it is used for.
pub fn wire_size(rtp: usize) -> usize {
    rtp + 8 + 16
}

/// Puts the transport-wide sequence number `seq` in `header` under extension `id` (one-byte
/// form: forwarded packets carry no other extension, they are stripped on the way in).
fn stamp(header: &mut rtp::Header, id: u8, seq: u16) {
    header.extensions.clear();
    header.extension = false;
    header.extensions_padding = 0;
    if header
        .set_extension(id, Bytes::copy_from_slice(&seq.to_be_bytes()))
        .is_err()
    {
        header.extension = false;
    }
}

/// The sequence numbers a generic NACK (RFC 4585 §6.2.1) asks for: `packet_id` and each
/// of the 16 following whose bit is set in `lost`.
pub fn nacked(packet_id: u16, lost: u16) -> impl Iterator<Item = u16> {
    std::iter::once(packet_id).chain(
        (0..16u16)
            .filter(move |i| lost & (1 << i) != 0)
            .map(move |i| packet_id.wrapping_add(i + 1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> LocalKeys {
        LocalKeys::new(ProtectionProfile::AeadAes128Gcm, vec![7; 16], vec![9; 12])
    }

    fn params(retransmit: bool) -> StreamParams {
        StreamParams {
            red: None,
            rtx: None,
            ssrc: 0x1234_5678,
            payload_type: 96,
            clock_rate: 90_000,
            retransmit,
        }
    }

    fn packet(seq: u16, ts: u32, len: usize) -> rtp::Packet {
        rtp::Packet {
            header: rtp::Header {
                version: 2,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 1,
                payload_type: 100,
                ..Default::default()
            },
            payload: Bytes::from(vec![0xab; len]),
        }
    }

    /// `d` decrypted by `rx` and parsed.
    fn read(rx: &mut Context, d: &Bytes) -> rtp::Packet {
        let plain = rx.decrypt_rtp(d).unwrap();
        let mut b = &plain[..];
        <rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut b).unwrap()
    }

    /// A VP8 packet of 100 bytes (`fill` after its descriptor) whose picture id a
    /// down-track rewrites (0x1234 -> 0x0105), and that rewrite.
    fn vp8_rewritten(seq: u16, ts: u32, fill: u8) -> (rtp::Packet, Vp8Patch) {
        let mut vp8 = packet(seq, ts, 100);
        vp8.payload = Bytes::from([&[0x90u8, 0x80, 0x92, 0x34][..], &[fill; 96][..]].concat());
        let desc = crate::rtp::codec::Vp8Descriptor::parse(&vp8.payload).unwrap();
        (vp8, Vp8Patch::new(&desc, Some((0x0105, true)), None))
    }

    /// A receiver with the same keys decrypts what the stream sends, under its SSRC and
    /// payload type.
    #[test]
    fn a_receiver_with_the_keys_decrypts_each_packet() {
        let mut tx = DownStream::new(&keys(), params(true)).unwrap();
        let mut rx = keys().context().unwrap();
        let mut scratch = Vec::new();
        let now = Instant::now();
        for seq in [65_534u16, 65_535, 0, 1] {
            let d = tx
                .write(packet(seq, 3000, 900), None, None, now, &mut scratch)
                .unwrap();
            assert_eq!(d.len(), 12 + 900 + 16, "header, payload and the GCM tag");
            let plain = rx.decrypt_rtp(&d).unwrap();
            let mut b = &plain[..];
            let p = <rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut b).unwrap();
            assert_eq!(p.header.sequence_number, seq);
            assert_eq!(p.header.ssrc, 0x1234_5678);
            assert_eq!(p.header.payload_type, 96);
            assert_eq!(&p.payload[..], &[0xab; 900][..]);
        }
        assert_eq!(tx.counts(), (4, 3600, 0));
    }

    /// A NACKed packet is sent again, byte for byte; one that left the history, or never
    /// was in it (audio), is not.
    #[test]
    fn retransmits_what_the_history_holds() {
        let mut tx = DownStream::new(&keys(), params(true)).unwrap();
        let mut scratch = Vec::new();
        let now = Instant::now();
        let (vp8, patch) = vp8_rewritten(10, 0, 0);
        let first = tx
            .write(vp8.clone(), Some(patch), None, now, &mut scratch)
            .unwrap();
        let mut rx = keys().context().unwrap();
        let plain = rx.decrypt_rtp(&first).unwrap();
        assert_eq!(
            &plain[12 + 2..12 + 4],
            &[0x81, 0x05],
            "the patch is in what is sent"
        );
        assert_eq!(
            &vp8.payload[2..4],
            &[0x92, 0x34],
            "not in the shared payload"
        );
        for seq in 11..(11 + HISTORY as u16 - 1) {
            tx.write(packet(seq, 0, 100), None, None, now, &mut scratch)
                .unwrap();
        }
        assert_eq!(
            tx.retransmit(10, None, now, Duration::ZERO, &mut scratch)
                .unwrap(),
            first,
            "the same bytes, patch included"
        );
        tx.write(
            packet(10 + HISTORY as u16, 0, 100),
            None,
            None,
            now,
            &mut scratch,
        );
        assert!(
            tx.retransmit(10, None, now, Duration::ZERO, &mut scratch)
                .is_none(),
            "overwritten"
        );
        assert_eq!(tx.counts().2, 1);

        let mut audio = DownStream::new(&keys(), params(false)).unwrap();
        audio
            .write(packet(5, 0, 100), None, None, now, &mut scratch)
            .unwrap();
        assert!(
            audio
                .retransmit(5, None, now, Duration::ZERO, &mut scratch)
                .is_none()
        );

        // Marker, CSRCs and padding survive the history.
        let mut odd = packet(400, 9, 50);
        odd.header.marker = true;
        odd.header.csrc = vec![7, 8];
        odd.header.padding = true;
        let sent = tx.write(odd, None, None, now, &mut scratch).unwrap();
        assert_eq!(
            tx.retransmit(400, None, now, Duration::ZERO, &mut scratch)
                .unwrap(),
            sent
        );
    }

    /// A packet NACKed again within the gap (a round trip) is not sent again; after it, it
    /// is, up to [`MAX_RESENDS`] times. Each copy carries its own transport-wide sequence
    /// number in the extension.
    #[test]
    fn resends_once_per_round_trip_each_with_its_own_transport_number() {
        let mut tx = DownStream::new(&keys(), params(true)).unwrap();
        let mut rx = keys().context().unwrap();
        let mut cc = crate::twcc::TransportCc::new(5);
        let mut scratch = Vec::new();
        let t0 = Instant::now();
        let gap = Duration::from_millis(100);
        let first = tx
            .write(packet(7, 0, 300), None, Some((5, 41)), t0, &mut scratch)
            .unwrap();
        let p = read(&mut rx, &first);
        assert_eq!(p.header.get_extension(5).unwrap()[..], [0, 41]);
        assert_eq!(&p.payload[..], &[0xab; 300][..]);
        let again = tx
            .retransmit(7, Some(&mut cc), t0, gap, &mut scratch)
            .unwrap();
        assert!(
            tx.retransmit(7, Some(&mut cc), t0 + gap / 2, gap, &mut scratch)
                .is_none(),
            "within a round trip"
        );
        assert_eq!(tx.resend_skipped(), 1);
        let later = tx
            .retransmit(7, Some(&mut cc), t0 + gap, gap, &mut scratch)
            .unwrap();
        let mut rx2 = keys().context().unwrap();
        let (a, b) = (read(&mut rx2, &again), read(&mut rx, &later));
        assert_eq!(a.header.get_extension(5).unwrap()[..], [0, 0]);
        assert_eq!(b.header.get_extension(5).unwrap()[..], [0, 1]);
        assert_eq!((a.header.sequence_number, b.header.sequence_number), (7, 7));
        assert_eq!(tx.counts().2, 2);
        assert!(
            tx.retransmit(7, None, t0 + gap * 2, gap, &mut scratch)
                .is_some()
        );
        assert!(
            tx.retransmit(7, None, t0 + gap * 3, gap, &mut scratch)
                .is_none(),
            "three copies at most"
        );
    }

    /// A probe copy is an RTX packet (RFC 4588): the RTX SSRC and payload type, its own
    /// sequence numbers, the original's before the payload (VP8 patch included), a new
    /// transport-wide number; none without RTX or for a packet the history lost.
    #[test]
    fn probe_copies_go_on_the_rtx_stream() {
        let rtx = Rtx {
            ssrc: 0x0bad_f00d,
            payload_type: 97,
        };
        let mut tx = DownStream::new(
            &keys(),
            StreamParams {
                rtx: Some(rtx),
                ..params(true)
            },
        )
        .unwrap();
        let mut rx = keys().context().unwrap();
        let mut cc = crate::twcc::TransportCc::new(5);
        let mut scratch = Vec::new();
        let now = Instant::now();
        let (vp8, patch) = vp8_rewritten(500, 7, 1);
        tx.write(vp8, Some(patch), None, now, &mut scratch).unwrap();
        tx.write(packet(501, 7, 300), None, None, now, &mut scratch)
            .unwrap();
        let (newest, size) = tx.probe_copy(0, &mut cc, now, &mut scratch).unwrap();
        assert_eq!(size, wire_size(12 + 2 + 300));
        let (older, _) = tx.probe_copy(1, &mut cc, now, &mut scratch).unwrap();
        let (a, b) = (read(&mut rx, &newest), read(&mut rx, &older));
        assert_eq!((a.header.ssrc, a.header.payload_type), (rtx.ssrc, 97));
        assert_eq!(
            b.header.sequence_number,
            a.header.sequence_number.wrapping_add(1)
        );
        assert_eq!(a.header.timestamp, 7);
        assert_eq!(&a.payload[..2], &501u16.to_be_bytes());
        assert_eq!(&a.payload[2..], &[0xab; 300][..]);
        assert_eq!(&b.payload[..2], &500u16.to_be_bytes());
        assert_eq!(
            &b.payload[2..6],
            &[0x90, 0x80, 0x81, 0x05],
            "the patch, after the OSN"
        );
        assert_eq!(a.header.get_extension(5).unwrap()[..], [0, 0]);
        assert_eq!(b.header.get_extension(5).unwrap()[..], [0, 1]);
        assert!(
            tx.probe_copy(2, &mut cc, now, &mut scratch).is_none(),
            "never sent"
        );
        assert_eq!(
            tx.counts(),
            (2, 400, 0),
            "probe copies are not the stream's packets"
        );
        // A NACKed packet stays on the media SSRC (see `retransmit`).
        let again = tx
            .retransmit(500, Some(&mut cc), now, Duration::ZERO, &mut scratch)
            .unwrap();
        let mut media_rx = keys().context().unwrap();
        let c = read(&mut media_rx, &again);
        assert_eq!(
            (c.header.ssrc, c.header.sequence_number),
            (0x1234_5678, 500)
        );
        assert_eq!(tx.counts().2, 1);
        let mut plain = DownStream::new(&keys(), params(true)).unwrap();
        plain
            .write(packet(1, 0, 100), None, None, now, &mut scratch)
            .unwrap();
        assert!(
            plain.probe_copy(0, &mut cc, now, &mut scratch).is_none(),
            "no RTX"
        );
    }

    /// Reports start shortly after the first packet, recur every interval, carry the
    /// counts, and extrapolate the RTP time from the last packet by the clock rate.
    #[test]
    fn sender_reports_follow_the_stream() {
        let mut tx = DownStream::new(&keys(), params(false)).unwrap();
        let mut rx = keys().context().unwrap();
        let mut scratch = Vec::new();
        let t0 = Instant::now();
        assert!(
            tx.report(t0, SystemTime::now()).is_none(),
            "nothing sent yet"
        );
        tx.write(packet(1, 90_000, 200), None, None, t0, &mut scratch)
            .unwrap();
        assert!(tx.report(t0, SystemTime::now()).is_none(), "not due yet");
        let at = t0 + FIRST_REPORT;
        let d = tx.report(at, SystemTime::now()).unwrap();
        let plain = rx.decrypt_rtcp(&d).unwrap();
        let mut b = &plain[..];
        let sr = <SenderReport as rtc::shared::marshal::Unmarshal>::unmarshal(&mut b).unwrap();
        assert_eq!(
            (sr.ssrc, sr.packet_count, sr.octet_count),
            (0x1234_5678, 1, 200)
        );
        assert_eq!(
            sr.rtp_time,
            90_000 + 9_000,
            "100 ms at 90 kHz after the packet"
        );
        assert!(
            tx.report(at + REPORT_INTERVAL / 2, SystemTime::now())
                .is_none()
        );
        assert!(tx.report(at + REPORT_INTERVAL, SystemTime::now()).is_some());
    }

    #[test]
    fn nack_bitmask_expands_to_sequence_numbers() {
        assert_eq!(nacked(100, 0).collect::<Vec<_>>(), [100]);
        assert_eq!(nacked(65_535, 0b101).collect::<Vec<_>>(), [65_535, 0, 2]);
        assert_eq!(nacked(1, 0x8000).collect::<Vec<_>>(), [1, 17]);
    }
}
