//! Codec payload inspection: which codec a mime type names, and whether an RTP payload
//! starts a keyframe. A parser per codec, because a down-track may only start (or switch
//! layers) on a keyframe of the codec it carries.

/// The codecs Confab forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
    /// Anything else: forwarded without keyframe gating.
    Other,
}

impl Codec {
    pub fn from_mime(mime: &str) -> Codec {
        let m = mime.to_ascii_lowercase();
        match m.as_str() {
            "audio/opus" => Codec::Opus,
            "video/vp8" => Codec::Vp8,
            "video/vp9" => Codec::Vp9,
            "video/h264" => Codec::H264,
            _ => Codec::Other,
        }
    }

    pub fn is_video(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::Vp9 | Codec::H264)
    }

    /// RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            _ => 90_000,
        }
    }

    /// Whether `payload` is the first packet of a keyframe. `false` for anything that
    /// cannot be parsed: a broken payload never unblocks a waiting down-track.
    pub fn is_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Codec::Vp8 => Vp8Descriptor::parse(payload).is_some_and(|d| d.is_keyframe),
            Codec::Vp9 => vp9_is_keyframe(payload),
            Codec::H264 => h264_is_keyframe(payload),
            Codec::Opus | Codec::Other => false,
        }
    }
}

/// The VP8 payload descriptor (RFC 7741 §4.2), and whether the packet begins a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// Start of a VP8 partition.
    pub start: bool,
    pub partition_id: u8,
    /// The picture id and whether it is the 15-bit form.
    pub picture_id: Option<(u16, bool)>,
    pub tl0picidx: Option<u8>,
    pub tid: Option<u8>,
    /// The layer-sync bit: the frame depends only on base-layer frames.
    pub layer_sync: bool,
    pub keyidx: Option<u8>,
    /// Byte offset of the picture id within the payload, for in-place rewriting.
    pub picture_id_offset: Option<usize>,
    /// Byte offset of TL0PICIDX within the payload.
    pub tl0picidx_offset: Option<usize>,
    /// Length of the descriptor in bytes.
    pub len: usize,
    pub is_keyframe: bool,
}

/// What a down-track writes into a VP8 payload: its picture id and TL0PICIDX, at the
/// descriptor's offsets. Applied to the copy being encrypted (the payload itself is shared
/// by every down-track), and again to a retransmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Patch {
    /// (offset, picture id, 15-bit form)
    picture_id: Option<(usize, u16, bool)>,
    /// (offset, TL0PICIDX)
    tl0picidx: Option<(usize, u8)>,
}

impl Vp8Patch {
    /// The patch that writes `picture_id` and `tl0picidx` where `d` has them.
    pub fn new(d: &Vp8Descriptor, picture_id: Option<(u16, bool)>, tl0picidx: Option<u8>) -> Self {
        Self {
            picture_id: d
                .picture_id_offset
                .zip(picture_id)
                .map(|(off, (pid, long))| (off, pid, long)),
            tl0picidx: d.tl0picidx_offset.zip(tl0picidx),
        }
    }

    /// Writes the fields into `payload` (bytes out of range are left alone).
    pub fn apply(&self, payload: &mut [u8]) {
        if let Some((off, pid, long)) = self.picture_id {
            if long {
                if off + 1 < payload.len() {
                    payload[off] = 0x80 | ((pid >> 8) as u8 & 0x7f);
                    payload[off + 1] = pid as u8;
                }
            } else if off < payload.len() {
                payload[off] = (pid as u8) & 0x7f;
            }
        }
        if let Some((off, tl0)) = self.tl0picidx
            && off < payload.len()
        {
            payload[off] = tl0;
        }
    }
}

impl Vp8Descriptor {
    pub fn parse(p: &[u8]) -> Option<Vp8Descriptor> {
        let b0 = *p.first()?;
        let mut d = Vp8Descriptor {
            start: b0 & 0x10 != 0,
            partition_id: b0 & 0x07,
            ..Default::default()
        };
        let mut i = 1;
        if b0 & 0x80 != 0 {
            let x = *p.get(i)?;
            i += 1;
            let (has_i, has_l, has_t, has_k) =
                (x & 0x80 != 0, x & 0x40 != 0, x & 0x20 != 0, x & 0x10 != 0);
            if has_i {
                let m = *p.get(i)?;
                d.picture_id_offset = Some(i);
                if m & 0x80 != 0 {
                    let lo = *p.get(i + 1)?;
                    d.picture_id = Some(((((m & 0x7f) as u16) << 8) | lo as u16, true));
                    i += 2;
                } else {
                    d.picture_id = Some(((m & 0x7f) as u16, false));
                    i += 1;
                }
            }
            if has_l {
                d.tl0picidx_offset = Some(i);
                d.tl0picidx = Some(*p.get(i)?);
                i += 1;
            }
            if has_t || has_k {
                let b = *p.get(i)?;
                if has_t {
                    d.tid = Some(b >> 6);
                    d.layer_sync = b & 0x20 != 0;
                }
                if has_k {
                    d.keyidx = Some(b & 0x1f);
                }
                i += 1;
            }
        }
        d.len = i;
        // The VP8 payload header follows the descriptor in the first packet of a frame:
        // its lowest bit P is 0 for a keyframe (RFC 6386 §9.1).
        if d.start && d.partition_id == 0 {
            let h = *p.get(i)?;
            d.is_keyframe = h & 0x01 == 0;
        }
        Some(d)
    }
}

/// Width and height from a VP8 keyframe's frame header (RFC 6386 §9.1): `frame` is the
/// payload after the payload descriptor.
pub fn vp8_dimensions(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((w, h))
}

/// VP9 (RFC 9628 §4.2): a keyframe starts with a packet whose P (inter-picture predicted)
/// bit is clear and B (start of frame) is set, in spatial layer 0.
fn vp9_is_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let (i_bit, p_bit, l_bit, b_bit) = (
        b0 & 0x80 != 0,
        b0 & 0x40 != 0,
        b0 & 0x20 != 0,
        b0 & 0x08 != 0,
    );
    if p_bit || !b_bit {
        return false;
    }
    if !l_bit {
        return true;
    }
    let mut i = 1;
    if i_bit {
        let Some(&m) = p.get(i) else { return false };
        i += if m & 0x80 != 0 { 2 } else { 1 };
    }
    // Layer indices: TID(3) U(1) SID(3) D(1)
    p.get(i).is_some_and(|&l| (l >> 1) & 0x07 == 0)
}

/// H.264 (RFC 6184): an IDR slice or an SPS, alone, aggregated in STAP-A, or starting an FU-A.
fn h264_is_keyframe(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    let is_key = |t: u8| t == IDR || t == SPS;
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        24 => {
            // STAP-A: [size:16][NAL]...
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if let Some(&nal) = p.get(i + 2)
                    && is_key(nal & 0x1f)
                {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => p
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_types() {
        assert_eq!(Codec::from_mime("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime("audio/opus"), Codec::Opus);
        assert_eq!(Codec::from_mime("video/H264"), Codec::H264);
        assert_eq!(Codec::from_mime("video/AV1"), Codec::Other);
    }

    #[test]
    fn vp8_descriptors() {
        // (payload, keyframe, picture id, tl0picidx, tid)
        type Case<'a> = (&'a [u8], bool, Option<(u16, bool)>, Option<u8>, Option<u8>);
        let cases: &[Case] = &[
            // S=1 PID=0, no extension, payload header P=0: keyframe
            (&[0x10, 0x00, 0x9d], true, None, None, None),
            // same, P=1: delta frame
            (&[0x10, 0x01, 0x9d], false, None, None, None),
            // not the start of a partition: never a keyframe
            (&[0x00, 0x00], false, None, None, None),
            // X=1, I=1 with 15-bit picture id 0x1234, L=1 TL0PICIDX=7, T=1 TID=2; keyframe
            (
                &[0x90, 0xE0, 0x92, 0x34, 0x07, 0x80, 0x00],
                true,
                Some((0x1234, true)),
                Some(7),
                Some(2),
            ),
            // X=1, I=1, 7-bit picture id 5; delta
            (
                &[0x90, 0x80, 0x05, 0x01],
                false,
                Some((5, false)),
                None,
                None,
            ),
        ];
        for (i, (p, key, pid, tl0, tid)) in cases.iter().enumerate() {
            let d = Vp8Descriptor::parse(p).unwrap();
            assert_eq!(d.is_keyframe, *key, "case {i}");
            assert_eq!(d.picture_id, *pid, "case {i}");
            assert_eq!(d.tl0picidx, *tl0, "case {i}");
            assert_eq!(d.tid, *tid, "case {i}");
            assert_eq!(Codec::Vp8.is_keyframe(p), *key, "case {i}");
        }
        let d = Vp8Descriptor::parse(&[0x90, 0xE0, 0x92, 0x34, 0x07, 0x80, 0x00]).unwrap();
        assert_eq!(d.picture_id_offset, Some(2));
        assert_eq!(d.tl0picidx_offset, Some(4));
        assert_eq!(d.len, 6);
    }

    #[test]
    fn truncated_payloads_are_not_keyframes() {
        for p in [
            &[][..],
            &[0x90],
            &[0x90, 0x80],
            &[0x90, 0x80, 0x85],
            &[0x10],
        ] {
            assert!(!Codec::Vp8.is_keyframe(p), "{p:?}");
            assert!(!Codec::H264.is_keyframe(p), "{p:?}");
            assert!(!Codec::Vp9.is_keyframe(p), "{p:?}");
        }
    }

    #[test]
    fn vp8_keyframe_dimensions() {
        // frame tag (key), start code, 640 x 360 (little endian, 14 bits)
        let f = [0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
        assert_eq!(vp8_dimensions(&f), Some((640, 360)));
        let mut delta = f;
        delta[0] |= 1;
        assert_eq!(vp8_dimensions(&delta), None);
        assert_eq!(vp8_dimensions(&f[..5]), None);
    }

    #[test]
    fn h264_keyframes() {
        assert!(Codec::H264.is_keyframe(&[0x65, 0x88])); // IDR
        assert!(Codec::H264.is_keyframe(&[0x67, 0x42])); // SPS
        assert!(!Codec::H264.is_keyframe(&[0x41, 0x9a])); // non-IDR slice
        // STAP-A with SPS
        assert!(Codec::H264.is_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]));
        // STAP-A with only PPS
        assert!(!Codec::H264.is_keyframe(&[0x78, 0x00, 0x01, 0x68]));
        // FU-A start of IDR, then middle of IDR
        assert!(Codec::H264.is_keyframe(&[0x7c, 0x85, 0x00]));
        assert!(!Codec::H264.is_keyframe(&[0x7c, 0x05, 0x00]));
    }

    #[test]
    fn vp9_keyframes() {
        assert!(Codec::Vp9.is_keyframe(&[0x08])); // B=1, P=0, no layers
        assert!(!Codec::Vp9.is_keyframe(&[0x48])); // P=1
        assert!(!Codec::Vp9.is_keyframe(&[0x00])); // not start of frame
        // L=1, I=1 (7-bit pid), layer byte SID=0
        assert!(Codec::Vp9.is_keyframe(&[0xA8, 0x01, 0x00]));
        // L=1, layer byte SID=1
        assert!(!Codec::Vp9.is_keyframe(&[0x28, 0x02]));
    }
}
