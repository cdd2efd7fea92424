//! The relay link's datagrams between two nodes: pure encoding, authentication and
//! decoding (no socket here).
//!
//! ```text
//! "CR" | version 1 | kind | seq (u32, big endian) | node id (u8 length + bytes) | body | tag
//! ```
//!
//! The tag is HMAC-SHA256 of everything before it under the cluster secret, truncated to
//! 16 bytes: a datagram from anyone without the secret, or altered on the way, is refused
//! before anything in it is read.
//!
//! Encrypted (`cluster.relay_encrypt`, the kind's top bit set): everything after the node
//! id is sealed with AES-128-GCM instead, the header up to the node id being the
//! associated data (authenticated, not hidden), after a 12-byte nonce:
//!
//! ```text
//! "CR" | 1 | kind | 0x80 | seq | node id | nonce | AES-128-GCM(rest) | GCM tag
//! ```
//!
//! Each sender has its own key, derived from the cluster secret and its node id with HKDF:
//! nonces (4 random bytes drawn at start, then a counter) never repeat under one key
//! across nodes, and a receiver derives (and caches) the key of each sender it hears. A
//! node that encrypts refuses unencrypted datagrams (no downgrade); any node reads both. `seq` numbers a sender's media datagrams toward one
//! node (1, 2, 3...; 0 on the others): the receiver asks for the gaps again ([`Kind::Nack`]).

use hmac::{KeyInit, Mac};

const MAGIC: &[u8; 2] = b"CR";
const VERSION: u8 = 1;
pub const TAG_LEN: usize = 16;
/// Sequence numbers asked again in one NACK at most.
pub const MAX_NACKS: usize = 64;

/// What a datagram carries. It borrows: encoding reads from the sender's own buffers,
/// decoding points into the datagram (or the opened plaintext), so a relayed packet is
/// not copied into strings and vectors on its way through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    /// An RTP packet of `track`, from the copy of `room` on worker `from` to the copy on
    /// worker `to`, sent at `sent_us` (the sender's clock, microseconds since the Unix
    /// epoch: the hop's latency, where the clocks agree).
    Media {
        room: &'a str,
        from: u8,
        to: u8,
        track: &'a str,
        sent_us: u64,
        rtp: &'a [u8],
    },
    /// What a copy sends back to a track's home (layer wants, keyframe requests), JSON.
    Upstream {
        room: &'a str,
        from: u8,
        to: u8,
        json: &'a [u8],
    },
    /// Liveness and round-trip time: answered with a `Pong` carrying the same stamp.
    Ping(u64),
    Pong(u64),
    /// Media datagrams the receiver missed, by `seq`.
    Nack(Vec<u32>),
}

impl Kind<'_> {
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
pub struct Datagram<'a> {
    /// The sending node's id.
    pub node: &'a str,
    pub seq: u32,
    pub kind: Kind<'a>,
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

const SEALED: u8 = 0x80;
const NONCE_LEN: usize = ring::aead::NONCE_LEN;

/// A node's keys from the cluster secret: HMAC, and with encryption its own sealing key
/// and the others' opening keys.
pub struct Key {
    mac: hmac::Hmac<sha2::Sha256>,
    secret: Vec<u8>,
    seal: Option<Sealer>,
    open: std::collections::HashMap<String, ring::aead::LessSafeKey>,
}

struct Sealer {
    key: ring::aead::LessSafeKey,
    prefix: [u8; 4],
    counter: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// The AES-128-GCM key of the node `node` under `secret`.
fn node_key(secret: &[u8], node: &str) -> ring::aead::LessSafeKey {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"confab relay v1");
    let info = [node.as_bytes()];
    let prk = salt.extract(secret);
    let okm = prk
        .expand(&info, &ring::aead::AES_128_GCM)
        .expect("an AES-128 key is a valid HKDF length");
    ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(okm))
}

impl Key {
    /// Authentication only.
    pub fn new(secret: &[u8]) -> Key {
        Key {
            mac: hmac::Hmac::new_from_slice(secret).expect("HMAC takes any key length"),
            secret: secret.to_vec(),
            seal: None,
            open: Default::default(),
        }
    }

    /// Authentication and encryption, for the node `node` (the id it sends as).
    pub fn encrypting(secret: &[u8], node: &str) -> Key {
        let mut k = Key::new(secret);
        k.seal = Some(Sealer {
            key: node_key(secret, node),
            prefix: rand::random(),
            counter: 0,
        });
        k
    }

    fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
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

/// Encodes and authenticates (or seals) a datagram.
pub fn encode(key: &mut Key, d: &Datagram<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let sealed = if key.seal.is_some() { SEALED } else { 0 };
    out.push(d.kind.code() | sealed);
    out.extend_from_slice(&d.seq.to_be_bytes());
    put_str(&mut out, d.node);
    let header = out.len();
    match &d.kind {
        Kind::Media {
            room,
            from,
            to,
            track,
            sent_us,
            rtp,
        } => {
            put_str(&mut out, room);
            out.push(*from);
            out.push(*to);
            put_str(&mut out, track);
            out.extend_from_slice(&sent_us.to_be_bytes());
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
    if let Some(sealer) = key.seal.as_mut() {
        sealer.counter += 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&sealer.prefix);
        nonce[4..].copy_from_slice(&sealer.counter.to_be_bytes());
        let mut body = out.split_off(header);
        let aad = ring::aead::Aad::from(&out[..]);
        let n = ring::aead::Nonce::assume_unique_for_key(nonce);
        if sealer
            .key
            .seal_in_place_append_tag(n, aad, &mut body)
            .is_err()
        {
            // Only for bodies beyond GCM's limit (64 GB): never a datagram.
            return Vec::new();
        }
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        return out;
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

    fn string(&mut self) -> Result<&'a str, WireError> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|_| WireError::Malformed)
    }
}

/// Authenticates (or opens) and decodes a datagram. A sealed one is opened into
/// `scratch` (reused by the caller), and what is decoded points into it.
pub fn decode<'a>(
    key: &mut Key,
    data: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<Datagram<'a>, WireError> {
    if data.len() < 8 + TAG_LEN || &data[..2] != MAGIC || data[2] != VERSION {
        return Err(WireError::Foreign);
    }
    let body: &'a [u8] = if data[3] & SEALED != 0 {
        open(key, data, scratch)?;
        let opened: &'a Vec<u8> = scratch;
        opened
    } else {
        if key.seal.is_some() {
            // This node encrypts: a cleartext datagram is a downgrade.
            return Err(WireError::Unauthentic);
        }
        let (body, tag) = data.split_at(data.len() - TAG_LEN);
        // Constant time: the comparison does not tell how much of a forged tag was right.
        let mut mac = key.mac.clone();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| WireError::Unauthentic)?;
        body
    };
    let mut r = Reader(&body[3..]);
    let code = r.u8()? & !SEALED;
    let seq = r.u32()?;
    let node = r.string()?;
    let kind = match code {
        1 => {
            let room = r.string()?;
            let from = r.u8()?;
            let to = r.u8()?;
            let track = r.string()?;
            let sent_us = r.u64()?;
            Kind::Media {
                room,
                from,
                to,
                track,
                sent_us,
                rtp: r.0,
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
                json: r.0,
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

/// Opens a sealed datagram into `out`: the header as it came, then the opened rest.
fn open(key: &mut Key, data: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    // The header: magic, version, kind, seq, node id (read before it is authenticated,
    // to find the sender's key; a lie there fails the tag).
    let node_len = *data.get(8).ok_or(WireError::Unauthentic)? as usize;
    let header = 9 + node_len;
    if data.len() < header + NONCE_LEN + TAG_LEN {
        return Err(WireError::Unauthentic);
    }
    let node = std::str::from_utf8(&data[9..header]).map_err(|_| WireError::Unauthentic)?;
    if !key.open.contains_key(node) {
        // One key per sender heard; an attacker cannot fill this without the secret...
        // but it can name senders: keep the cache small.
        if key.open.len() >= 1_024 {
            key.open.clear();
        }
        let k = node_key(&key.secret, node);
        key.open.insert(node.to_string(), k);
    }
    let k = &key.open[node];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&data[header..header + NONCE_LEN]);
    // One copy: header and ciphertext side by side in `out`, opened in place there.
    out.clear();
    out.extend_from_slice(&data[..header]);
    out.extend_from_slice(&data[header + NONCE_LEN..]);
    let aad = ring::aead::Aad::from(&data[..header]);
    let plain = k
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            aad,
            &mut out[header..],
        )
        .map_err(|_| WireError::Unauthentic)?
        .len();
    out.truncate(header + plain);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Datagram<'static>> {
        let d = |seq, kind| Datagram {
            node: "node-1",
            seq,
            kind,
        };
        vec![
            d(
                7,
                Kind::Media {
                    room: "standup",
                    from: 1,
                    to: 0,
                    track: "TR_abc",
                    sent_us: 1_764_000_000_000_000,
                    rtp: &[0x80, 96, 0, 1, 2, 3, 4, 5],
                },
            ),
            d(
                0,
                Kind::Upstream {
                    room: "standup",
                    from: 0,
                    to: 1,
                    json: br#"{"wants":{}}"#,
                },
            ),
            d(0, Kind::Ping(123_456_789)),
            d(0, Kind::Pong(u64::MAX)),
            d(0, Kind::Nack(vec![1, 2, u32::MAX])),
        ]
    }

    #[test]
    fn round_trips() {
        let mut key = Key::new(b"a cluster secret of some length");
        for d in samples() {
            let bytes = encode(&mut key, &d);
            assert_eq!(decode(&mut key, &bytes, &mut Vec::new()), Ok(d));
        }
    }

    #[test]
    fn sealed_datagrams_round_trip_and_hide_their_payload() {
        let secret = b"a cluster secret of some length";
        let mut sender = Key::encrypting(secret, "node-1");
        let mut receiver = Key::encrypting(secret, "node-2");
        let mut plain_receiver = Key::new(secret);
        let mut wrong = Key::encrypting(b"another secret, just as long...", "node-2");
        for d in samples() {
            let bytes = encode(&mut sender, &d);
            assert_eq!(
                decode(&mut receiver, &bytes, &mut Vec::new()),
                Ok(d.clone())
            );
            assert_eq!(
                decode(&mut plain_receiver, &bytes, &mut Vec::new()),
                Ok(d.clone())
            );
            assert_eq!(
                decode(&mut wrong, &bytes, &mut Vec::new()),
                Err(WireError::Unauthentic)
            );
            for i in 3..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x01;
                assert!(
                    decode(&mut receiver, &b, &mut Vec::new()).is_err(),
                    "byte {i} altered"
                );
            }
            // A second copy gets another nonce: no two datagrams share one.
            assert_ne!(encode(&mut sender, &d), bytes);
        }
        let media = &samples()[0];
        let bytes = encode(&mut sender, media);
        let rtp = [0x80u8, 96, 0, 1, 2, 3, 4, 5];
        assert!(
            !bytes.windows(rtp.len()).any(|w| w == rtp),
            "payload hidden"
        );
        assert!(!bytes.windows(7).any(|w| w == b"standup"), "room hidden");
        // A node that encrypts refuses cleartext (no downgrade).
        let clear = encode(&mut plain_receiver, media);
        assert_eq!(
            decode(&mut receiver, &clear, &mut Vec::new()),
            Err(WireError::Unauthentic)
        );
    }

    #[test]
    fn a_wrong_secret_or_any_altered_byte_is_refused() {
        let mut key = Key::new(b"a cluster secret of some length");
        let mut other = Key::new(b"another secret, just as long...");
        for d in samples() {
            let bytes = encode(&mut key, &d);
            assert_eq!(
                decode(&mut other, &bytes, &mut Vec::new()),
                Err(WireError::Unauthentic)
            );
            for i in 3..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x01;
                assert!(
                    decode(&mut key, &b, &mut Vec::new()).is_err(),
                    "byte {i} altered"
                );
            }
            for n in 0..bytes.len() {
                assert!(
                    decode(&mut key, &bytes[..n], &mut Vec::new()).is_err(),
                    "cut at {n}"
                );
            }
        }
        assert_eq!(
            decode(&mut key, b"garbage garbage garbage", &mut Vec::new()),
            Err(WireError::Foreign)
        );
    }

    #[test]
    fn authentic_but_malformed_is_refused_without_panic() {
        let mut key = Key::new(b"a cluster secret of some length");
        // A body that claims a longer string than there is, correctly tagged.
        let mut body = vec![b'C', b'R', VERSION, 1, 0, 0, 0, 1, 200, b'x'];
        let tag = key.tag(&body);
        body.extend_from_slice(&tag);
        assert_eq!(
            decode(&mut key, &body, &mut Vec::new()),
            Err(WireError::Malformed)
        );
        let mut body = vec![b'C', b'R', VERSION, 9, 0, 0, 0, 1, 1, b'x'];
        let tag = key.tag(&body);
        body.extend_from_slice(&tag);
        assert_eq!(
            decode(&mut key, &body, &mut Vec::new()),
            Err(WireError::Malformed)
        );
    }
}
