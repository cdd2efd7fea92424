//! Which remote path a peer's datagrams are shown as and sent to, and the STUN helpers
//! the worker routes by.

use std::collections::VecDeque;
use std::net::SocketAddr;

/// Follows the client's nominated path.
///
/// The rtc 0.21 ICE-lite agent keeps the first nominated candidate pair forever and judges
/// consent on it alone. A browser with two interfaces may nominate another pair later and
/// refresh consent only there: the agent then declares the connection failed while media
/// flows, and keeps sending to a path the client left. So the agent is always shown the
/// first path (every authenticated datagram from another path is presented as coming from
/// it, and the answers to STUN requests go back where they came from), while media goes to
/// the path the client nominated last.
#[derive(Debug, Default, Clone)]
pub struct Paths {
    primary: Option<SocketAddr>,
    active: Option<SocketAddr>,
    pending_nomination: Option<SocketAddr>,
    /// STUN requests received on another path: where their answers go (transaction id).
    answers: VecDeque<([u8; 12], SocketAddr)>,
}

fn stun_transaction(buf: &[u8]) -> Option<[u8; 12]> {
    buf.get(8..20)?.try_into().ok()
}

fn stun_use_candidate(buf: &[u8]) -> bool {
    use rtc::stun::attributes::ATTR_USE_CANDIDATE;
    use rtc::stun::message::Message;
    let mut m = Message::new();
    m.raw = buf.to_vec();
    m.decode().is_ok() && m.contains(ATTR_USE_CANDIDATE)
}

impl Paths {
    /// The address to present to the agent for a datagram from `from`. `authenticated`:
    /// `from` already passed an ICE check for this peer.
    pub fn inbound(&mut self, data: &[u8], from: SocketAddr, authenticated: bool) -> SocketAddr {
        let stun = is_stun(data);
        let nominates = stun && stun_use_candidate(data);
        let Some(primary) = self.primary else {
            if nominates {
                self.pending_nomination = Some(from);
            }
            return from;
        };
        if from == primary {
            if nominates {
                self.active = Some(from);
            }
            return from;
        }
        if !authenticated {
            if nominates {
                self.pending_nomination = Some(from);
            }
            return from;
        }
        if nominates {
            self.active = Some(from);
        }
        if stun && let Some(tx) = stun_transaction(data) {
            if self.answers.len() >= 32 {
                self.answers.pop_front();
            }
            self.answers.push_back((tx, from));
        }
        primary
    }

    /// The agent accepted a check from `to`. True when `to` becomes the first path (of
    /// the connection, or since an ICE restart): the paths before it are released.
    pub fn accepted(&mut self, to: SocketAddr) -> bool {
        let first = self.primary.is_none();
        if first {
            self.primary = Some(to);
            self.active = Some(to);
        }
        if self.pending_nomination == Some(to) {
            self.pending_nomination = None;
            self.active = Some(to);
        }
        first
    }

    /// ICE restarted (new credentials): the agent starts over, and so do the paths. Media
    /// keeps going to the last nominated path until a check passes on the new ones (it may
    /// still work: a restart is also asked for on a mere suspicion).
    pub fn restart(&mut self) {
        self.primary = None;
        self.pending_nomination = None;
        self.answers.clear();
    }

    /// Where media goes: the path the client nominated last (`None` before any check
    /// passed).
    pub fn media(&self) -> Option<SocketAddr> {
        self.active.or(self.primary)
    }

    /// Where to send a datagram the agent addressed to `to`.
    pub fn outbound(&mut self, data: &[u8], to: SocketAddr) -> SocketAddr {
        if Some(to) != self.primary {
            return to;
        }
        if is_stun(data)
            && let Some(tx) = stun_transaction(data)
            && let Some(i) = self.answers.iter().position(|(t, _)| *t == tx)
        {
            return self.answers.remove(i).map_or(to, |(_, a)| a);
        }
        self.active.unwrap_or(to)
    }
}

/// Whether a datagram is a STUN message (RFC 7983 demultiplexing: first byte 0..=3).
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 4 && buf[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

/// The local ufrag a STUN binding request is addressed to: USERNAME is
/// `<receiver ufrag>:<sender ufrag>` (RFC 8445 §7.2.2).
pub fn stun_target_ufrag(buf: &[u8]) -> Option<String> {
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::message::Message;
    let mut m = Message::new();
    m.raw = buf.to_vec();
    m.decode().ok()?;
    let (v, _) = m.attributes.get(ATTR_USERNAME);
    let s = std::str::from_utf8(&v.value).ok()?;
    let local = s.split(':').next()?;
    (!local.is_empty()).then(|| local.to_owned())
}

/// Whether an outgoing datagram is a STUN binding success response: the agent accepted
/// a check from that address (integrity verified), so it may be routed to this peer.
pub fn is_binding_success(buf: &[u8]) -> bool {
    is_stun(buf) && buf[0] == 0x01 && buf[1] == 0x01
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_classification() {
        let mut req = vec![0u8; 20];
        req[0] = 0x00;
        req[1] = 0x01;
        req[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        assert!(is_stun(&req));
        assert!(!is_binding_success(&req));
        req[0] = 0x01;
        assert!(is_binding_success(&req));
        // DTLS record
        assert!(!is_stun(&[22u8; 40]));
        // too short
        assert!(!is_stun(&[0u8; 8]));
    }

    fn binding_request(tx: &[u8; 12], use_candidate: bool) -> Vec<u8> {
        use rtc::stun::message::{BINDING_REQUEST, Message, TransactionId};
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn rtc::stun::message::Setter>> =
            vec![Box::new(BINDING_REQUEST), Box::new(TransactionId(*tx))];
        if use_candidate {
            setters.push(Box::new(
                rtc::ice::attributes::use_candidate::UseCandidateAttr,
            ));
        }
        m.build(&setters).unwrap();
        m.raw
    }

    #[test]
    fn paths_follow_the_latest_nomination() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:2000".parse().unwrap();
        let media = [0x80u8; 40];
        let mut p = Paths::default();
        // First path: nominated, accepted, shown as is.
        assert_eq!(p.inbound(&binding_request(&[1; 12], true), a, false), a);
        p.accepted(a);
        assert_eq!(p.outbound(&media, a), a);
        // A second path checks (not yet accepted): passed through, answered directly.
        assert_eq!(p.inbound(&binding_request(&[2; 12], false), b, false), b);
        p.accepted(b);
        assert_eq!(p.outbound(&media, a), a, "not nominated: media stays");
        // It is nominated: the agent still sees the first path, media moves to the second,
        // and the answer to that request goes back to the second.
        let req = binding_request(&[3; 12], true);
        assert_eq!(p.inbound(&req, b, true), a);
        let mut answer = req.clone();
        answer[0] = 0x01;
        answer[1] = 0x01;
        assert_eq!(p.outbound(&answer, a), b);
        assert_eq!(p.outbound(&media, a), b);
        // Datagrams on the second path are presented as the first.
        assert_eq!(p.inbound(&media, b, true), a);
        // Nominating the first again moves media back.
        assert_eq!(p.inbound(&binding_request(&[4; 12], true), a, true), a);
        assert_eq!(p.outbound(&media, a), a);
    }

    #[test]
    fn stun_username_is_parsed() {
        use rtc::stun::message::{BINDING_REQUEST, Message, TransactionId};
        use rtc::stun::textattrs::Username;
        let mut m = Message::new();
        m.build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(
                rtc::stun::attributes::ATTR_USERNAME,
                "serverfrag:clientfrag".into(),
            )),
        ])
        .unwrap();
        assert_eq!(stun_target_ufrag(&m.raw).as_deref(), Some("serverfrag"));
        assert_eq!(stun_target_ufrag(&[0u8; 3]), None);
    }

    #[test]
    fn a_garbage_stun_username_is_no_target() {
        assert_eq!(stun_target_ufrag(&[0xffu8; 64]), None);
    }
}
