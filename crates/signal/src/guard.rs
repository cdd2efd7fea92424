//! What the signaling edge refuses to hold: caps on connections that have not joined yet
//! (per address and in total), and the counters of every budget and deadline that bites
//! (each also logged, once per [`LOG_EVERY`] and kind, with the count since the last line).
//!
//! An attacker's cheapest weapon is a connection that costs the server memory and a file
//! descriptor while asking for nothing; these caps bound what such connections can hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shortest interval between two log lines about the same kind of refusal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One kind of refusal: how often it bit, and when it was last logged.
#[derive(Debug, Default)]
pub struct Bite {
    pub count: AtomicU64,
    logged: Mutex<Option<(Instant, u64)>>,
}

impl Bite {
    /// Counts one refusal; logs `what` unless the same kind was logged less than
    /// [`LOG_EVERY`] ago.
    pub fn bit(&self, what: &str) {
        let n = self.count.fetch_add(1, Relaxed) + 1;
        let Ok(mut logged) = self.logged.lock() else {
            return;
        };
        let due = logged.is_none_or(|(at, _)| at.elapsed() >= LOG_EVERY);
        if due {
            let since = n - logged.map_or(0, |(_, c)| c);
            *logged = Some((Instant::now(), n));
            tracing::warn!(total = n, since_last_log = since, "{what}");
        }
    }

    pub fn get(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// Every budget and deadline of the signaling edge.
#[derive(Debug, Default)]
pub struct Guards {
    /// A WebSocket that did not `join` within `signal.join_timeout_ms`.
    pub join_timeouts: Bite,
    /// Upgrades refused: too many not-yet-joined connections from one address.
    pub pending_per_ip: Bite,
    /// Upgrades refused: too many not-yet-joined connections in total.
    pub pending_total: Bite,
    /// TCP connections closed at accept: `http.max_connections` reached.
    pub connections_refused: Bite,
    /// Requests refused on a connection accepted into the reserve (only health, metrics
    /// and the admin API are served there).
    pub reserve_refusals: Bite,
    /// HTTP connections closed because their request headers did not arrive in time.
    pub header_timeouts: Bite,
    /// WebSocket frames over `signal.hard_max_message_bytes` (closed with 1009).
    pub oversized_frames: Bite,
    /// `publish` refused: over `signal.publishes_per_second`.
    pub publish_rate: Bite,
    /// `publish` refused before reaching the media thread (too many sections, unknown
    /// mids).
    pub offers_refused: Bite,
    /// Connections closed for abuse (rates exceeded again and again).
    pub abusive_closed: Bite,
    /// TCP connections open now (WebSockets included), kept by the HTTP listener.
    pub connections_open: std::sync::atomic::AtomicUsize,
    pending: Pending,
}

#[derive(Debug, Default)]
struct Pending {
    by_ip: Mutex<HashMap<IpAddr, u32>>,
    total: AtomicU64,
}

/// Caps on connections that have not joined yet.
#[derive(Debug, Clone, Copy)]
pub struct PendingCaps {
    pub per_ip: u32,
    pub total: u32,
}

/// Why a not-yet-joined connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingRefusal {
    PerIp,
    Total,
}

impl Guards {
    /// Holds a slot for a connection from `ip` until it joins (or closes); `Err` when a
    /// cap is reached (counted and logged here).
    pub fn admit_pending(
        self: &Arc<Self>,
        ip: IpAddr,
        caps: PendingCaps,
    ) -> Result<PendingSlot, PendingRefusal> {
        let Ok(mut by_ip) = self.pending.by_ip.lock() else {
            return Err(PendingRefusal::Total);
        };
        if self.pending.total.load(Relaxed) >= u64::from(caps.total) {
            drop(by_ip);
            self.pending_total
                .bit("connection refused: too many connections that have not joined (signal.max_pending)");
            return Err(PendingRefusal::Total);
        }
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= caps.per_ip {
            drop(by_ip);
            self.pending_per_ip.bit(
                "connection refused: too many connections that have not joined from one address \
                 (signal.max_pending_per_ip)",
            );
            return Err(PendingRefusal::PerIp);
        }
        *n += 1;
        self.pending.total.fetch_add(1, Relaxed);
        Ok(PendingSlot {
            guards: self.clone(),
            ip,
        })
    }

    /// TCP connections open now.
    pub fn connections(&self) -> usize {
        self.connections_open.load(Relaxed)
    }

    /// Every refusal counter, with its metric name and help text.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 10] {
        [
            (
                "confab_join_timeouts",
                "WebSockets closed for not joining in time",
                self.join_timeouts.get(),
            ),
            (
                "confab_pending_refused_per_ip",
                "WebSocket upgrades refused: too many not-yet-joined connections from one address",
                self.pending_per_ip.get(),
            ),
            (
                "confab_pending_refused_total",
                "WebSocket upgrades refused: too many not-yet-joined connections in total",
                self.pending_total.get(),
            ),
            (
                "confab_connections_refused",
                "TCP connections closed at accept (connection cap) or failed accepts",
                self.connections_refused.get(),
            ),
            (
                "confab_reserve_refusals",
                "Requests refused on a connection of the operations reserve",
                self.reserve_refusals.get(),
            ),
            (
                "confab_header_timeouts",
                "HTTP connections closed for slow request headers or TLS handshakes",
                self.header_timeouts.get(),
            ),
            (
                "confab_oversized_frames",
                "WebSockets closed with 1009 for a frame over the hard limit",
                self.oversized_frames.get(),
            ),
            (
                "confab_publish_rate_refusals",
                "publish offers refused for their rate",
                self.publish_rate.get(),
            ),
            (
                "confab_offers_refused",
                "publish offers refused before the media thread (sections, mids)",
                self.offers_refused.get(),
            ),
            (
                "confab_abusive_closed",
                "Connections closed for exceeding a rate again and again",
                self.abusive_closed.get(),
            ),
        ]
    }

    /// Connections that have not joined yet.
    pub fn pending(&self) -> u64 {
        self.pending.total.load(Relaxed)
    }

    fn release(&self, ip: IpAddr) {
        if let Ok(mut by_ip) = self.pending.by_ip.lock() {
            if let Some(n) = by_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    // Nothing kept for an address once its connections are gone.
                    by_ip.remove(&ip);
                }
            }
            self.pending.total.fetch_sub(1, Relaxed);
            if by_ip.is_empty() {
                by_ip.shrink_to(64);
            }
        }
    }
}

/// A not-yet-joined connection's place under the caps; given back when dropped (the
/// connection joined or closed).
#[derive(Debug)]
pub struct PendingSlot {
    guards: Arc<Guards>,
    ip: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.guards.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_caps_per_address_and_in_total() {
        let g = Arc::new(Guards::default());
        let caps = PendingCaps {
            per_ip: 2,
            total: 3,
        };
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let c: IpAddr = [10, 0, 0, 3].into();
        let a1 = g.admit_pending(a, caps).unwrap();
        let _a2 = g.admit_pending(a, caps).unwrap();
        assert_eq!(g.admit_pending(a, caps).unwrap_err(), PendingRefusal::PerIp);
        let _b1 = g.admit_pending(b, caps).unwrap();
        assert_eq!(g.admit_pending(c, caps).unwrap_err(), PendingRefusal::Total);
        assert_eq!(g.pending_per_ip.get(), 1);
        assert_eq!(g.pending_total.get(), 1);
        // A slot given back (joined or closed) makes room again.
        drop(a1);
        assert_eq!(g.pending(), 2);
        let _c1 = g.admit_pending(c, caps).unwrap();
    }

    #[test]
    fn an_address_is_forgotten_with_its_last_connection() {
        let g = Arc::new(Guards::default());
        let caps = PendingCaps {
            per_ip: 1,
            total: 1000,
        };
        for i in 0..500u32 {
            let ip: IpAddr = std::net::Ipv6Addr::from(u128::from(i)).into();
            drop(g.admit_pending(ip, caps).unwrap());
        }
        assert_eq!(g.pending(), 0);
        assert!(g.pending.by_ip.lock().unwrap().is_empty());
    }
}
