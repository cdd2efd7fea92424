//! Synthetic but valid media. Each payload starts with the codec's own header (a VP8
//! payload descriptor and frame header, or one Opus TOC byte) followed by a stamp: a magic
//! tag, the packet index and the send time. The rest is a pattern derived from the index,
//! so a receiver can check every byte arrived intact and measure loss and latency.

use bytes::{BufMut, Bytes, BytesMut};
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"CFB1";
/// Bytes before the stamp: the VP8 payload descriptor (5: X, I with a 15-bit picture id,
/// L with TL0PICIDX) and 10 bytes of VP8 frame header; or the Opus TOC byte.
const VP8_HEADER: usize = 5 + 10;
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

/// VP8 fields of a synthetic video packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Meta {
    /// First packet of a frame (the descriptor's S bit).
    pub start: bool,
    pub keyframe: bool,
    /// 15-bit picture id, one per frame.
    pub picture_id: u16,
    pub tl0picidx: u8,
    pub width: u16,
    pub height: u16,
}

/// A synthetic payload of `size` bytes (at least the headers and stamp). `vp8` describes
/// a video packet; `None` makes an Opus one.
pub fn payload(vp8: Option<Vp8Meta>, index: u64, size: usize, sent_us: u64) -> Bytes {
    let header = match vp8 {
        Some(_) => VP8_HEADER,
        None => OPUS_HEADER,
    };
    let size = size.max(header + STAMP);
    let mut b = BytesMut::with_capacity(size);
    match vp8 {
        Some(m) => {
            // Descriptor: X and S bits (PID 0); I and L; 15-bit picture id; TL0PICIDX.
            b.put_u8(if m.start { 0x90 } else { 0x80 });
            b.put_u8(0xC0);
            b.put_u16(0x8000 | (m.picture_id & 0x7fff));
            b.put_u8(m.tl0picidx);
            // Frame header (RFC 6386 §9.1): the 3-byte tag (P = 0 for a keyframe, version 0,
            // shown, a first partition of 10 bytes), the start code, 14-bit width and height.
            b.put_u8(if m.keyframe { 0x50 } else { 0x51 });
            b.put_slice(&[0x01, 0x00, 0x9d, 0x01, 0x2a]);
            b.put_u16_le(m.width & 0x3fff);
            b.put_u16_le(m.height & 0x3fff);
        }
        // TOC: config 31 (CELT FB 20 ms), mono, one frame.
        None => b.put_u8(0xf8),
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

    fn meta(start: bool, keyframe: bool) -> Option<Vp8Meta> {
        Some(Vp8Meta {
            start,
            keyframe,
            picture_id: 0x1234,
            tl0picidx: 9,
            width: 640,
            height: 360,
        })
    }

    #[test]
    fn roundtrip() {
        for (codec, vp8) in [
            (SynthCodec::Vp8, meta(true, true)),
            (SynthCodec::Opus, None),
        ] {
            let p = payload(vp8, 42, 300, 123);
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
    fn vp8_header_is_what_the_server_parses() {
        use confab_sfu::rtp::codec::{Codec, Vp8Descriptor, vp8_dimensions};
        let key = payload(meta(true, true), 1, 100, 0);
        let d = Vp8Descriptor::parse(&key).unwrap();
        assert!(d.is_keyframe);
        assert_eq!(d.picture_id, Some((0x1234, true)));
        assert_eq!(d.tl0picidx, Some(9));
        assert_eq!(vp8_dimensions(&key[d.len..]), Some((640, 360)));
        assert!(!Codec::Vp8.is_keyframe(&payload(meta(true, false), 1, 100, 0)));
        assert!(!Codec::Vp8.is_keyframe(&payload(meta(false, true), 1, 100, 0)));
    }
}
