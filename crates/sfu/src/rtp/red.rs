//! Audio redundancy (RFC 2198, `audio/red`): each packet carries the previous packets'
//! payloads beside its own, so that a receiver recovers a lost packet from the next one
//! (Chromium decodes it when it negotiated `red/48000/2`).
//!
//! [`RedEncoder`] makes RED from a plain Opus stream, one encoder per down-track: the
//! redundancy is what that subscriber was last sent, so it is right whatever the
//! subscriber joined or was paused. [`blocks`] reads a RED payload back (tests, and a
//! receiver's count of what it recovered). [`RedDecoder`] turns a publisher's RED back
//! into plain Opus as it arrives, restoring what its uplink lost: everything past the
//! publisher's connection (forwarding, recording, relays) sees one format.
//!
//! Wire format: one 4-byte header per redundant block (`F=1`, block payload type, 14-bit
//! timestamp offset back from the packet's, 10-bit length), a 1-byte header for the
//! primary (`F=0`, payload type), then the blocks' data, oldest first, the primary last.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;

/// Previous packets carried in each packet. Two make a lost packet unrecoverable only
/// when three in a row are lost: at 5 % random loss, 1 in 8,000 (1 in 400 with one;
/// arithmetic, not measured).
pub const DISTANCE: usize = 2;
/// The largest timestamp offset a block header can say (14 bits): 341 ms of Opus.
const MAX_OFFSET: u32 = (1 << 14) - 1;
/// The largest block a header can say (10 bits).
const MAX_BLOCK: usize = (1 << 10) - 1;

/// Makes RED packets from one stream's payloads.
#[derive(Debug, Clone)]
pub struct RedEncoder {
    /// The payload type of the blocks (the subscriber's Opus).
    primary_pt: u8,
    /// The last payloads sent, oldest first, with their RTP timestamps.
    recent: VecDeque<(u32, Bytes)>,
}

impl RedEncoder {
    pub fn new(primary_pt: u8) -> Self {
        Self {
            primary_pt: primary_pt & 0x7f,
            recent: VecDeque::with_capacity(DISTANCE),
        }
    }

    /// The RED payload for `payload` at RTP time `ts`, carrying the previous payloads that
    /// still fit a block header (sent less than [`MAX_OFFSET`] ago, at most [`MAX_BLOCK`]
    /// bytes). A packet older than the last one (reordered) goes out without redundancy
    /// and is not kept.
    pub fn encode(&mut self, ts: u32, payload: &Bytes) -> Bytes {
        let newer = self
            .recent
            .back()
            .is_none_or(|(last, _)| ts.wrapping_sub(*last) as i32 > 0);
        // The blocks carried, oldest first, with their offsets back from `ts`.
        let mut blocks: [Option<(u32, &Bytes)>; DISTANCE] = [None; DISTANCE];
        if newer {
            for (slot, (t, p)) in blocks.iter_mut().zip(&self.recent) {
                let offset = ts.wrapping_sub(*t);
                if offset <= MAX_OFFSET && p.len() <= MAX_BLOCK && !p.is_empty() {
                    *slot = Some((offset, p));
                }
            }
        }
        let blocks = blocks.iter().flatten();
        let data: usize = blocks.clone().map(|(_, p)| 4 + p.len()).sum();
        let mut out = BytesMut::with_capacity(data + 1 + payload.len());
        for (offset, p) in blocks.clone() {
            out.put_u8(0x80 | self.primary_pt);
            out.put_u8((offset >> 6) as u8);
            out.put_u8((((offset & 0x3f) << 2) as u8) | ((p.len() >> 8) as u8 & 0x03));
            out.put_u8(p.len() as u8);
        }
        out.put_u8(self.primary_pt);
        for (_, p) in blocks {
            out.put_slice(p);
        }
        out.put_slice(payload);
        if newer {
            if self.recent.len() == DISTANCE {
                self.recent.pop_front();
            }
            self.recent.push_back((ts, payload.clone()));
        }
        out.freeze()
    }
}

/// The primary (newest) block of a RED payload, without reading the others; `None` when
/// the headers do not describe the payload.
pub fn primary(payload: &Bytes) -> Option<Bytes> {
    let mut at = 0;
    let mut redundant = 0;
    while *payload.get(at)? & 0x80 != 0 {
        let h = payload.get(at..at + 4)?;
        redundant += (usize::from(h[2] & 0x03) << 8) | usize::from(h[3]);
        at += 4;
    }
    let start = at + 1 + redundant;
    (start <= payload.len()).then(|| payload.slice(start..))
}

/// One block of a RED payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub payload_type: u8,
    /// How far back from the packet's timestamp this block's is (0 for the primary).
    pub ts_offset: u32,
    pub data: Bytes,
}

/// The blocks of a RED payload, redundant ones first, the primary last; `None` when the
/// headers do not describe the payload.
pub fn blocks(payload: &Bytes) -> Option<Vec<Block>> {
    let mut headers = Vec::new();
    let mut at = 0;
    loop {
        let first = *payload.get(at)?;
        if first & 0x80 == 0 {
            headers.push((first & 0x7f, 0, None));
            at += 1;
            break;
        }
        let h = payload.get(at..at + 4)?;
        let offset = (u32::from(h[1]) << 6) | (u32::from(h[2]) >> 2);
        let len = (usize::from(h[2] & 0x03) << 8) | usize::from(h[3]);
        headers.push((first & 0x7f, offset, Some(len)));
        at += 4;
    }
    let mut out = Vec::with_capacity(headers.len());
    for (payload_type, ts_offset, len) in headers {
        let end = match len {
            Some(len) => at + len,
            None => payload.len(),
        };
        if end > payload.len() {
            return None;
        }
        out.push(Block {
            payload_type,
            ts_offset,
            data: payload.slice(at..end),
        });
        at = end;
    }
    Some(out)
}

/// Turns one publisher's RED stream back into plain Opus packets as they arrive: each
/// packet's primary, and before it the packets lost on the way that its redundant blocks
/// still carry (a browser sends RED when the answer lists `audio/red` before Opus).
///
/// A redundant block has no sequence number of its own: as every sender does it, the
/// newest redundant block is the packet sent just before, the next one the packet before
/// that. Only the sequence numbers missing just before a packet are restored; a block
/// that is not older than the one after it (a sender that skipped one) ends the
/// restoring. Duplicates (a restored packet arriving late after all) are the track's to
/// drop, as any other (`rtp::SeqTracker`).
#[derive(Debug, Clone)]
pub struct RedDecoder {
    red_pt: u8,
    opus_pt: u8,
    /// The newest sequence number handed on.
    newest: Option<u16>,
}

/// What [`RedDecoder::push`] did with one packet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Lost packets restored from its redundant blocks.
    pub restored: usize,
    /// Dropped: its headers do not describe its payload.
    pub malformed: bool,
}

impl RedDecoder {
    /// For a stream whose `audio/red` is `red_pt` and whose Opus is `opus_pt`.
    pub fn new(red_pt: u8, opus_pt: u8) -> Self {
        Self {
            red_pt,
            opus_pt,
            newest: None,
        }
    }

    /// `seq` is the newest handed on, unless it is late.
    fn advance(&mut self, seq: u16) {
        if self.newest.is_none_or(|n| seq.wrapping_sub(n) as i16 > 0) {
            self.newest = Some(seq);
        }
    }

    /// Hands `pkt` on as plain Opus through `out`, after the lost packets it restores
    /// (oldest first); a packet that is not RED is handed on as it is.
    pub fn push(
        &mut self,
        mut pkt: rtc::rtp::Packet,
        mut out: impl FnMut(rtc::rtp::Packet),
    ) -> Decoded {
        let seq = pkt.header.sequence_number;
        // How many sequence numbers are missing just before this one (none when late).
        let ahead = self.newest.map(|n| seq.wrapping_sub(n));
        let missing = ahead.map_or(0, |d| if d as i16 > 0 { usize::from(d - 1) } else { 0 });
        if pkt.header.payload_type != self.red_pt {
            self.advance(seq);
            out(pkt);
            return Decoded::default();
        }
        let Some((primary, redundant)) = blocks(&pkt.payload).and_then(|mut b| Some((b.pop()?, b)))
        else {
            // Not advanced past: the next packet restores it, if it carries it.
            return Decoded {
                restored: 0,
                malformed: true,
            };
        };
        self.advance(seq);
        // Newest redundant block first: block k back is sequence number `seq - k - 1`.
        let mut restore: [Option<(u16, u32, Bytes)>; DISTANCE] = Default::default();
        let mut later_offset = 0;
        for (k, b) in redundant
            .into_iter()
            .rev()
            .take(missing.min(DISTANCE))
            .enumerate()
        {
            if b.ts_offset <= later_offset || b.payload_type != self.opus_pt || b.data.is_empty() {
                break;
            }
            later_offset = b.ts_offset;
            restore[k] = Some((
                seq.wrapping_sub(k as u16 + 1),
                pkt.header.timestamp.wrapping_sub(b.ts_offset),
                b.data,
            ));
        }
        let mut restored = 0;
        for (s, ts, data) in restore.into_iter().rev().flatten() {
            let mut header = pkt.header.clone();
            header.sequence_number = s;
            header.timestamp = ts;
            header.payload_type = self.opus_pt;
            header.marker = false;
            restored += 1;
            out(rtc::rtp::Packet {
                header,
                payload: data,
            });
        }
        pkt.header.payload_type = self.opus_pt;
        pkt.payload = primary.data;
        out(pkt);
        Decoded {
            restored,
            malformed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opus(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    #[test]
    fn each_packet_carries_the_two_before_it() {
        let mut red = RedEncoder::new(111);
        let first = red.encode(1000, &opus(1, 80));
        assert_eq!(
            blocks(&first).unwrap(),
            [Block {
                payload_type: 111,
                ts_offset: 0,
                data: opus(1, 80)
            }],
            "nothing before the first"
        );
        red.encode(1960, &opus(2, 90));
        let third = red.encode(2920, &opus(3, 70));
        let b = blocks(&third).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].ts_offset, b[0].data.clone()), (1920, opus(1, 80)));
        assert_eq!((b[1].ts_offset, b[1].data.clone()), (960, opus(2, 90)));
        assert_eq!((b[2].ts_offset, b[2].data.clone()), (0, opus(3, 70)));
        assert!(b.iter().all(|b| b.payload_type == 111));
        assert_eq!(third.len(), 4 + 4 + 1 + 80 + 90 + 70);
        assert_eq!(primary(&third), Some(opus(3, 70)));
        assert_eq!(primary(&first), Some(opus(1, 80)));
        // The fourth no longer carries the first.
        let b = blocks(&red.encode(3880, &opus(4, 60))).unwrap();
        assert_eq!(b[0].data, opus(2, 90));
    }

    #[test]
    fn what_a_header_cannot_say_is_left_out() {
        let mut red = RedEncoder::new(111);
        // After a DTX pause of 400 ms the offset (19,200) does not fit 14 bits.
        red.encode(0, &opus(1, 10));
        let b = blocks(&red.encode(19_200, &opus(2, 10))).unwrap();
        assert_eq!(b.len(), 1);
        // A block over 1,023 bytes is not carried; the one after it is.
        red.encode(20_160, &opus(3, 1_100));
        let b = blocks(&red.encode(21_120, &opus(4, 10))).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].data, opus(2, 10));
        // The timestamp wraps.
        let mut red = RedEncoder::new(111);
        red.encode(u32::MAX - 100, &opus(1, 5));
        let b = blocks(&red.encode(859, &opus(2, 5))).unwrap();
        assert_eq!(b[0].ts_offset, 960);
    }

    #[test]
    fn a_late_packet_goes_alone_and_is_not_kept() {
        let mut red = RedEncoder::new(111);
        red.encode(1000, &opus(1, 5));
        red.encode(1960, &opus(2, 5));
        let late = red.encode(1500, &opus(9, 5));
        assert_eq!(blocks(&late).unwrap().len(), 1);
        let b = blocks(&red.encode(2920, &opus(3, 5))).unwrap();
        assert_eq!(
            b.iter().map(|b| b.data[0]).collect::<Vec<_>>(),
            [1, 2, 3],
            "the late one is not redundancy"
        );
    }

    #[test]
    fn a_long_block_length_is_written_in_ten_bits() {
        let mut red = RedEncoder::new(111);
        red.encode(0, &opus(1, 1_000));
        let b = blocks(&red.encode(960, &opus(2, 3))).unwrap();
        assert_eq!(b[0].data.len(), 1_000);
    }

    #[test]
    fn broken_headers_are_refused() {
        for bad in [
            &[][..],
            &[0x80, 0, 0][..],
            &[0x80 | 111, 0, 4, 200, 111, 1, 2][..],
        ] {
            assert_eq!(blocks(&Bytes::copy_from_slice(bad)), None, "{bad:?}");
            assert_eq!(primary(&Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }

    /// A RED packet as a sender makes it: `seq`, 20 ms frames, payload byte `seq`.
    fn sent(red: &mut RedEncoder, seq: u16) -> rtc::rtp::Packet {
        let ts = 1_000 + u32::from(seq) * 960;
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 63,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 7,
                marker: seq == 0,
                ..Default::default()
            },
            payload: red.encode(ts, &opus(seq as u8, 20 + seq as usize % 5)),
        }
    }

    /// What `decoder` hands on for the packets `arrive` (of `sent` ones), as (seq, ts,
    /// payload type, first payload byte).
    fn decode(arrive: &[u16], sent_upto: u16) -> (Vec<(u16, u32, u8, u8)>, usize) {
        let mut enc = RedEncoder::new(111);
        let packets: Vec<_> = (0..=sent_upto).map(|s| sent(&mut enc, s)).collect();
        let mut dec = RedDecoder::new(63, 111);
        let mut out = Vec::new();
        let mut recovered = 0;
        for &s in arrive {
            recovered += dec
                .push(packets[usize::from(s)].clone(), |p| {
                    out.push((
                        p.header.sequence_number,
                        p.header.timestamp,
                        p.header.payload_type,
                        p.payload[0],
                    ))
                })
                .restored;
        }
        (out, recovered)
    }

    #[test]
    fn what_the_uplink_lost_is_restored_in_order_as_opus() {
        // 2 is lost, then 5 and 6: each is restored before the packet that carried it.
        let (out, recovered) = decode(&[0, 1, 3, 4, 7, 8], 8);
        let seqs: Vec<u16> = out.iter().map(|o| o.0).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(recovered, 3);
        for (seq, ts, pt, first) in out {
            assert_eq!(ts, 1_000 + u32::from(seq) * 960, "{seq}");
            assert_eq!(pt, 111);
            assert_eq!(first, seq as u8, "the frame sent as {seq}");
        }
    }

    #[test]
    fn three_lost_in_a_row_leave_one_gap() {
        let (out, recovered) = decode(&[0, 4], 4);
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), [0, 2, 3, 4]);
        assert_eq!(recovered, 2);
    }

    #[test]
    fn only_what_is_missing_before_a_packet_is_restored() {
        // 3 restores 1 and 2; the late 2 and 1 are handed on as they are (the track
        // drops them as duplicates), and restore nothing.
        let (out, recovered) = decode(&[0, 3, 2, 1, 4], 4);
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            [0, 1, 2, 3, 2, 1, 4]
        );
        assert_eq!(recovered, 2);
        // After a gap of three, 4 restores 2 and 3; 1 comes late.
        let (out, _) = decode(&[0, 4, 1], 4);
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), [0, 2, 3, 4, 1]);
    }

    #[test]
    fn plain_opus_passes_and_counts_as_received() {
        let mut enc = RedEncoder::new(111);
        let mut dec = RedDecoder::new(63, 111);
        let mut out = Vec::new();
        let mut plain = sent(&mut enc, 1);
        plain.header.payload_type = 111;
        plain.payload = opus(1, 9);
        dec.push(sent(&mut enc, 0), |p| out.push(p));
        dec.push(plain.clone(), |p| out.push(p));
        // Packet 2 carries 1 and 0, both handed on already.
        let d = dec.push(sent(&mut enc, 2), |p| out.push(p));
        assert_eq!(d.restored, 0);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1], plain);
    }

    #[test]
    fn a_malformed_packet_is_restored_from_the_next() {
        let mut enc = RedEncoder::new(111);
        let packets: Vec<_> = (0..3).map(|s| sent(&mut enc, s)).collect();
        let mut dec = RedDecoder::new(63, 111);
        let mut out = Vec::new();
        dec.push(packets[0].clone(), |p| out.push(p));
        let mut bad = packets[1].clone();
        bad.payload = Bytes::from_static(&[0x80 | 111, 0, 4, 200, 111, 1]);
        assert!(dec.push(bad, |p| out.push(p)).malformed);
        assert_eq!(dec.push(packets[2].clone(), |p| out.push(p)).restored, 1);
        let got: Vec<_> = out
            .iter()
            .map(|p| (p.header.sequence_number, p.payload[0]))
            .collect();
        assert_eq!(got, [(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn bad_red_and_blocks_that_do_not_fit_are_not_trusted() {
        let mut dec = RedDecoder::new(63, 111);
        let mut enc = RedEncoder::new(111);
        let mut out = Vec::new();
        dec.push(sent(&mut enc, 0), |p| out.push(p));
        let mut bad = sent(&mut enc, 1);
        bad.payload = Bytes::from_static(&[0x80 | 111, 0, 4, 200, 111, 1]);
        assert!(dec.push(bad, |p| out.push(p)).malformed);
        // A block of another payload type (not the Opus it wraps) is not restored.
        let mut other = RedEncoder::new(100);
        other.encode(1_000 + 2 * 960, &opus(2, 5));
        let mut p = sent(&mut enc, 3);
        p.payload = other.encode(1_000 + 3 * 960, &opus(3, 5));
        let d = dec.push(p, |p| out.push(p));
        assert_eq!((d.restored, d.malformed), (0, false));
        assert_eq!(
            out.iter()
                .map(|p| p.header.sequence_number)
                .collect::<Vec<_>>(),
            [0, 3]
        );
        // Nothing from the network makes it panic, the sequence numbers wrap.
        let mut dec = RedDecoder::new(63, 111);
        for s in [65_534u16, 65_535, 1, 0, 2, 40_000, 2] {
            let mut p = sent(&mut RedEncoder::new(111), 0);
            p.header.sequence_number = s;
            dec.push(p, |_| {});
        }
    }
}
