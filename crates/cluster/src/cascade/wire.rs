//! The relay link's datagrams between two nodes: pure encoding, authentication and
//! decoding (no socket here).
//!
//! ```text
//! "CR" | version 1 | kind | seq (u32, big endian) | node id (u8 length + bytes) | body | tag
//! ```
//!
//! The tag is HMAC-SHA256 of everything before it under the cluster secret, truncated to
//! 16 bytes: a datagram from anyone without the secret, or altered on the way, is refused
//! before anything in it is read. `seq` numbers a sender's media datagrams toward one
//! node (1, 2, 3...; 0 on the others): the receiver asks for the gaps again ([`Kind::Nack`]).

use hmac::{KeyInit, Mac};

const MAGIC: &[u8; 2] = b"CR";
const VERSION: u8 = 1;
pub const TAG_LEN: usize = 16;
/// Sequence numbers asked again in one NACK at most.
pub const MAX_NACKS: usize = 64;

/// What a datagram carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An RTP packet of `track`, from the copy of `room` on worker `from` to the copy on
    /// worker `to`.
    Media {
        room: String,
        from: u8,
        to: u8,
        track: String,
        rtp: Vec<u8>,
    },
    /// What a copy sends back to a track's home (layer wants, keyframe requests), JSON.
    Upstream {
        room: String,
        from: u8,
        to: u8,
        json: Vec<u8>,
    },
    /// Liveness and round-trip time: answered with a `Pong` carrying the same stamp.
    Ping(u64),
    Pong(u64),
    /// Media datagrams the receiver missed, by `seq`.
    Nack(Vec<u32>),
}

impl Kind {
    fn code(&self) -> u8 {
        match self {
            Kind::Media { .. } => 1,
            Kind::Upstream { .. } => 2,
            Kind::Ping(_) => 3,
            Kind::Pong(_) => 4,
            Kind::Nack(_) => 5,
        }
    }
}

/// One datagram, as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sending node's id.
    pub node: String,
    pub seq: u32,
    pub kind: Kind,
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Not a relay datagram of this version.
    Foreign,
    /// Authentication failed (wrong secret, altered, truncated).
    Unauthentic,
    /// Authentic but malformed (a node of another build?).
    Malformed,
}

/// The HMAC key of a cluster secret.
#[derive(Clone)]
pub struct Key(hmac::Hmac<sha2::Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        Key(hmac::Hmac::new_from_slice(secret).expect("HMAC takes any key length"))
    }

    fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.0.clone();
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(255);
    out.push(n as u8);
    out.extend_from_slice(&b[..n]);
}

/// Encodes and authenticates a datagram.
pub fn encode(key: &Key, d: &Datagram) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(d.kind.code());
    out.extend_from_slice(&d.seq.to_be_bytes());
    put_str(&mut out, &d.node);
    match &d.kind {
        Kind::Media {
            room,
            from,
            to,
            track,
            rtp,
        } => {
            put_str(&mut out, room);
            out.push(*from);
            out.push(*to);
            put_str(&mut out, track);
            out.extend_from_slice(rtp);
        }
        Kind::Upstream {
            room,
            from,
            to,
            json,
        } => {
            put_str(&mut out, room);
            out.push(*from);
            out.push(*to);
            out.extend_from_slice(json);
        }
        Kind::Ping(t) | Kind::Pong(t) => out.extend_from_slice(&t.to_be_bytes()),
        Kind::Nack(seqs) => {
            for s in seqs.iter().take(MAX_NACKS) {
                out.extend_from_slice(&s.to_be_bytes());
            }
        }
    }
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Malformed)
    }
}

/// Authenticates and decodes a datagram.
pub fn decode(key: &Key, data: &[u8]) -> Result<Datagram, WireError> {
    if data.len() < 8 + TAG_LEN || &data[..2] != MAGIC || data[2] != VERSION {
        return Err(WireError::Foreign);
    }
    let (body, tag) = data.split_at(data.len() - TAG_LEN);
    // Constant time: the comparison does not tell how much of a forged tag was right.
    let mut mac = key.0.clone();
    mac.update(body);
    mac.verify_truncated_left(tag)
        .map_err(|_| WireError::Unauthentic)?;
    let mut r = Reader(&body[3..]);
    let code = r.u8()?;
    let seq = r.u32()?;
    let node = r.string()?;
    let kind = match code {
        1 => {
            let room = r.string()?;
            let from = r.u8()?;
            let to = r.u8()?;
            let track = r.string()?;
            Kind::Media {
                room,
                from,
                to,
                track,
                rtp: r.0.to_vec(),
            }
        }
        2 => {
            let room = r.string()?;
            let from = r.u8()?;
            let to = r.u8()?;
            Kind::Upstream {
                room,
                from,
                to,
                json: r.0.to_vec(),
            }
        }
        3 => Kind::Ping(r.u64()?),
        4 => Kind::Pong(r.u64()?),
        5 => {
            if r.0.len() % 4 != 0 || r.0.len() / 4 > MAX_NACKS {
                return Err(WireError::Malformed);
            }
            let mut seqs = Vec::new();
            while !r.0.is_empty() {
                seqs.push(r.u32()?);
            }
            Kind::Nack(seqs)
        }
        _ => return Err(WireError::Malformed),
    };
    Ok(Datagram { node, seq, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Datagram> {
        let d = |seq, kind| Datagram {
            node: "node-1".into(),
            seq,
            kind,
        };
        vec![
            d(
                7,
                Kind::Media {
                    room: "standup".into(),
                    from: 1,
                    to: 0,
                    track: "TR_abc".into(),
                    rtp: vec![0x80, 96, 0, 1, 2, 3, 4, 5],
                },
            ),
            d(
                0,
                Kind::Upstream {
                    room: "standup".into(),
                    from: 0,
                    to: 1,
                    json: br#"{"wants":{}}"#.to_vec(),
                },
            ),
            d(0, Kind::Ping(123_456_789)),
            d(0, Kind::Pong(u64::MAX)),
            d(0, Kind::Nack(vec![1, 2, u32::MAX])),
        ]
    }

    #[test]
    fn round_trips() {
        let key = Key::new(b"a cluster secret of some length");
        for d in samples() {
            let bytes = encode(&key, &d);
            assert_eq!(decode(&key, &bytes), Ok(d));
        }
    }

    #[test]
    fn a_wrong_secret_or_any_altered_byte_is_refused() {
        let key = Key::new(b"a cluster secret of some length");
        let other = Key::new(b"another secret, just as long...");
        for d in samples() {
            let bytes = encode(&key, &d);
            assert_eq!(decode(&other, &bytes), Err(WireError::Unauthentic));
            for i in 3..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x01;
                assert!(decode(&key, &b).is_err(), "byte {i} altered");
            }
            for n in 0..bytes.len() {
                assert!(decode(&key, &bytes[..n]).is_err(), "cut at {n}");
            }
        }
        assert_eq!(
            decode(&key, b"garbage garbage garbage"),
            Err(WireError::Foreign)
        );
    }

    #[test]
    fn authentic_but_malformed_is_refused_without_panic() {
        let key = Key::new(b"a cluster secret of some length");
        // A body that claims a longer string than there is, correctly tagged.
        let mut body = vec![b'C', b'R', VERSION, 1, 0, 0, 0, 1, 200, b'x'];
        let tag = key.tag(&body);
        body.extend_from_slice(&tag);
        assert_eq!(decode(&key, &body), Err(WireError::Malformed));
        let mut body = vec![b'C', b'R', VERSION, 9, 0, 0, 0, 1, 1, b'x'];
        let tag = key.tag(&body);
        body.extend_from_slice(&tag);
        assert_eq!(decode(&key, &body), Err(WireError::Malformed));
    }
}
