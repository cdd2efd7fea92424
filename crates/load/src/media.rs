//! Synthetic but valid media. Each payload starts with the codec's own header (a VP8
//! payload descriptor and frame header, or one Opus TOC byte) followed by a stamp: a magic
//! tag, the packet index and the send time. The rest is a pattern derived from the index,
//! so a receiver can check every byte arrived intact and measure loss and latency.

use bytes::{BufMut, Bytes, BytesMut};
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"CFB1";
/// Bytes before the stamp: VP8 descriptor + frame header byte, or the Opus TOC byte.
const VP8_HEADER: usize = 2;
const OPUS_HEADER: usize = 1;
const STAMP: usize = 4 + 8 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthCodec {
    Vp8,
    Opus,
}

/// Microseconds since the Unix epoch: comparable between processes on one machine.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A synthetic payload of `size` bytes (at least the headers and stamp). For VP8,
/// `start` marks the first packet of a frame (the descriptor's S bit); `keyframe` only
/// matters there.
pub fn payload(
    codec: SynthCodec,
    index: u64,
    start: bool,
    keyframe: bool,
    size: usize,
    sent_us: u64,
) -> Bytes {
    let header = match codec {
        SynthCodec::Vp8 => VP8_HEADER,
        SynthCodec::Opus => OPUS_HEADER,
    };
    let size = size.max(header + STAMP);
    let mut b = BytesMut::with_capacity(size);
    match codec {
        SynthCodec::Vp8 => {
            // Descriptor: S bit, PID=0, no extensions. Frame header: P bit 0 = keyframe.
            b.put_u8(if start { 0x10 } else { 0x00 });
            b.put_u8(if keyframe { 0x00 } else { 0x01 });
        }
        // TOC: config 31 (CELT FB 20 ms), mono, one frame.
        SynthCodec::Opus => b.put_u8(0xf8),
    }
    b.put_slice(MAGIC);
    b.put_u64(index);
    b.put_u64(sent_us);
    while b.len() < size {
        b.put_u8(pattern(index, b.len()));
    }
    b.freeze()
}

fn pattern(index: u64, pos: usize) -> u8 {
    (index as usize)
        .wrapping_mul(31)
        .wrapping_add(pos.wrapping_mul(7)) as u8
}

/// What a received synthetic payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub index: u64,
    pub sent_us: u64,
    /// Every byte after the stamp matches the pattern.
    pub intact: bool,
}

/// Reads the stamp of a synthetic payload; `None` if it is not one.
pub fn read_stamp(codec: SynthCodec, p: &[u8]) -> Option<Stamp> {
    let header = match codec {
        SynthCodec::Vp8 => VP8_HEADER,
        SynthCodec::Opus => OPUS_HEADER,
    };
    let s = p.get(header..header + STAMP)?;
    if &s[..4] != MAGIC {
        return None;
    }
    let index = u64::from_be_bytes(s[4..12].try_into().ok()?);
    let sent_us = u64::from_be_bytes(s[12..20].try_into().ok()?);
    let intact = p
        .iter()
        .enumerate()
        .skip(header + STAMP)
        .all(|(i, b)| *b == pattern(index, i));
    Some(Stamp {
        index,
        sent_us,
        intact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for codec in [SynthCodec::Vp8, SynthCodec::Opus] {
            let p = payload(codec, 42, true, true, 300, 123);
            assert_eq!(p.len(), 300);
            let s = read_stamp(codec, &p).unwrap();
            assert_eq!((s.index, s.sent_us, s.intact), (42, 123, true));
            let mut bad = p.to_vec();
            bad[299] ^= 1;
            assert!(!read_stamp(codec, &bad).unwrap().intact);
        }
        assert!(read_stamp(SynthCodec::Vp8, b"short").is_none());
    }

    #[test]
    fn vp8_keyframe_bit() {
        assert_eq!(payload(SynthCodec::Vp8, 1, true, true, 50, 0)[1] & 1, 0);
        assert_eq!(payload(SynthCodec::Vp8, 1, true, false, 50, 0)[1] & 1, 1);
        assert_eq!(payload(SynthCodec::Vp8, 1, false, true, 50, 0)[0], 0);
    }
}
