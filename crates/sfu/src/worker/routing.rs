//! Routing of a worker's datagrams to its peers: remote addresses learnt from accepted ICE
//! checks, STUN by the ufrag of each peer's last local description (which changes at an
//! ICE restart), and peers added and removed with their routes.

use super::Worker;
use crate::keys::PeerKey;
use crate::peer::{Outgoing, Peer};
use crate::stats::SfuStats;
use std::net::SocketAddr;

impl Worker {
    /// The agent accepted a check from `to` (it answered with a binding success, which it
    /// only does after verifying the message integrity): route `to`'s datagrams to `key`.
    pub(super) fn learn_addr(&mut self, key: PeerKey, to: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&key)
            && p.paths.accepted(to)
        {
            // The first path since an ICE restart: the old ones are released.
            for a in std::mem::take(&mut p.addrs) {
                if a != to && self.by_addr.get(&a) == Some(&key) {
                    self.by_addr.remove(&a);
                }
            }
        }
        if self.peers.get(&key).is_none_or(|p| p.addrs.contains(&to)) {
            return;
        }
        if let Some(old) = self.by_addr.insert(to, key)
            && old != key
            && let Some(p) = self.peers.get_mut(&old)
        {
            p.addrs.retain(|a| *a != to);
        }
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.addrs.push(to);
            // Keep the first (the agent's) path and the latest few.
            if peer.addrs.len() > 4 {
                let gone = peer.addrs.remove(1);
                self.by_addr.remove(&gone);
            }
        }
    }

    pub(super) fn add_peer(&mut self, peer: Peer) -> PeerKey {
        let key = PeerKey(self.next_peer);
        self.next_peer += 1;
        self.peers.insert(key, peer);
        SfuStats::gauge(&self.stats.peer_connections, 1);
        self.mark_touched(key);
        key
    }

    /// Routes STUN by the peer's ufrag after a local description set a new one (its
    /// first, or an ICE restart's).
    pub(super) fn reroute(&mut self, key: PeerKey) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(old) = p.take_ufrag_change() else {
            return;
        };
        if self.by_ufrag.get(&old) == Some(&key) {
            self.by_ufrag.remove(&old);
        }
        self.by_ufrag.insert(p.ufrag.clone(), key);
        if !old.is_empty() {
            SfuStats::inc(&self.stats.ice_restarts);
            tracing::debug!(role = ?p.role, "ICE restarted");
        }
    }

    /// Closes a peer connection, sends its last datagrams and forgets it.
    pub(super) fn remove_peer(&mut self, key: PeerKey) {
        let Some(mut peer) = self.peers.remove(&key) else {
            return;
        };
        peer.close();
        while let Some(out) = peer.poll_write() {
            let (Outgoing::Agent(data, to) | Outgoing::Media(data, to)) = out;
            match self.tcp_conns.get(&to) {
                Some(tx) => {
                    let _ = tx.try_send(data);
                }
                None => {
                    let _ = self.socket.try_send_to(&data, to);
                }
            }
        }
        if self.by_ufrag.get(&peer.ufrag) == Some(&key) {
            self.by_ufrag.remove(&peer.ufrag);
        }
        for a in &peer.addrs {
            if self.by_addr.get(a) == Some(&key) {
                self.by_addr.remove(a);
            }
        }
        if let Some(t) = peer.timer {
            self.timers.remove(&(t, key));
        }
        SfuStats::gauge(&self.stats.peer_connections, -1);
    }
}
