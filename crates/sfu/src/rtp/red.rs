//! Audio redundancy (RFC 2198, `audio/red`): each packet carries the previous packets'
//! payloads beside its own, so that a receiver recovers a lost packet from the next one
//! (Chromium decodes it when it negotiated `red/48000/2`).
//!
//! [`RedEncoder`] makes RED from a plain Opus stream, one encoder per down-track: the
//! redundancy is what that subscriber was last sent, so it is right whatever the
//! subscriber joined or was paused. [`blocks`] reads a RED payload back (tests, and a
//! receiver's count of what it recovered).
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
}
