//! A network impairment relay: a UDP proxy that stands between clients and the server's
//! media port, as a lossy or narrow network would. The server announces the relay's
//! address, clients send to it, and it forwards each client's datagrams from a socket of
//! its own (so the server's replies come back through it). Toward clients whose address
//! matches a rule, it limits the bitrate, either as a policer (what exceeds the rate is
//! dropped at once) or as a router's queue (what exceeds it waits, up to a limit, and is
//! dropped past it: the delay a congestion controller can see before loss), delays with
//! jitter, and loses RTP at random, alone or in bursts; it counts what it dropped and which
//! RTP packets it saw twice (retransmissions). Rules change while it runs
//! ([`Relay::set_rule`]). The integration tests and the network benchmark
//! (`confab-network`) use it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::net::UdpSocket;

/// What happens to server → client traffic for clients on `ip`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The clients it applies to ([`Rule::applies_to`]).
    pub ip: IpAddr,
    /// Fraction of RTP media packets dropped (every n-th, deterministic).
    pub drop_every: Option<u64>,
    /// The rate limit, in bits per second: a token-bucket policer (200 ms of burst)...
    pub rate_bps: Option<u64>,
    /// ...or, when set, a FIFO queue drained at `rate_bps` that holds at most this much
    /// time's worth of packets (all server -> client datagrams share it, as on a link).
    pub queue: Option<std::time::Duration>,
    /// One-way delay added to every server -> client datagram, plus up to `jitter` more
    /// drawn per datagram. Order is kept (a datagram never leaves before the one ahead of
    /// it), as on a path whose queues vary rather than one that reorders.
    pub delay: std::time::Duration,
    pub jitter: std::time::Duration,
    /// Fraction of RTP packets lost at random (drawn from a generator seeded per client,
    /// so a run is repeatable)...
    pub loss: f64,
    /// ...in bursts of this mean length (a Gilbert model: a loss starts a burst that
    /// ends with probability 1 / `burst` per packet), or one at a time when `None`.
    pub burst: Option<f64>,
    /// Client -> server: a FIFO queue drained at this rate (bits per second), holding at
    /// most `queue` (200 ms when unset) and dropping past it: an uplink that is the
    /// publisher's bottleneck. `None`: not limited.
    pub uplink_bps: Option<u64>,
    /// Client -> server: fraction of RTP packets lost at random (seeded per client, like
    /// `loss`), one at a time.
    pub uplink_loss: f64,
}

impl Rule {
    /// Whether the rule is for clients on `ip` (an unspecified address: for every client).
    pub fn applies_to(&self, ip: IpAddr) -> bool {
        self.ip == ip || self.ip.is_unspecified()
    }

    /// No impairment yet for clients on `ip` (`0.0.0.0`: every client).
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            drop_every: None,
            rate_bps: None,
            queue: None,
            delay: std::time::Duration::ZERO,
            jitter: std::time::Duration::ZERO,
            loss: 0.0,
            burst: None,
            uplink_bps: None,
            uplink_loss: 0.0,
        }
    }
}

#[derive(Debug, Default)]
pub struct RelayStats {
    pub rtp_to_clients: AtomicU64,
    pub dropped: AtomicU64,
    /// Client -> server datagrams dropped by an uplink's full queue or its `uplink_loss`.
    pub uplink_dropped: AtomicU64,
    /// Client -> server bytes received.
    pub uplink_bytes: AtomicU64,
    /// RTP packets (ssrc, seq) forwarded to a client more than once.
    pub retransmitted: AtomicU64,
    /// The most bytes each client was sent in 10 ms (from when datagrams reached the
    /// relay: a burst the server sends at once shows whole), by the client's address.
    peaks: std::sync::Mutex<Vec<(IpAddr, Arc<AtomicU64>)>>,
}

impl RelayStats {
    /// The most bytes any one client was sent in 10 ms.
    pub fn peak_10ms_bytes(&self) -> u64 {
        let peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner());
        peaks
            .iter()
            .map(|(_, p)| p.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// The most bytes each client on `ip` was sent in 10 ms, since it joined or since
    /// [`RelayStats::reset_peaks`].
    pub fn peaks_10ms(&self, ip: IpAddr) -> Vec<u64> {
        let peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner());
        peaks
            .iter()
            .filter(|(on, _)| *on == ip)
            .map(|(_, p)| p.load(Ordering::Relaxed))
            .collect()
    }

    /// Forgets the peaks so far (a measurement starts).
    pub fn reset_peaks(&self) {
        let peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner());
        for (_, p) in peaks.iter() {
            p.store(0, Ordering::Relaxed);
        }
    }
}

pub struct Relay {
    pub addr: SocketAddr,
    pub stats: Arc<RelayStats>,
    /// Clients whose traffic is dropped both ways (a pulled cable).
    cut: Arc<std::sync::Mutex<HashSet<IpAddr>>>,
    /// The rules in force, changeable while running ([`Relay::set_rule`]).
    rules: Arc<std::sync::Mutex<Vec<Rule>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_rtp(b: &[u8]) -> bool {
    // RFC 7983: 128..=191 is RTP/RTCP; RTCP payload types are 192..=223 (200-206 mostly).
    b.len() >= 12 && (128..=191).contains(&b[0]) && !(192..=223).contains(&b[1])
}

/// Whether the next packet is lost under `rule`'s random loss. In bursts, the loss rate
/// stays `loss`: a burst starts with probability `loss / (burst × (1 - loss))` per packet
/// delivered and ends with probability `1 / burst` per packet lost.
fn lost(rng: &mut rand::rngs::StdRng, in_burst: &mut bool, rule: Rule) -> bool {
    use rand::Rng;
    if rule.loss <= 0.0 {
        return false;
    }
    match rule.burst {
        None => rng.random_bool(rule.loss.min(1.0)),
        Some(len) => {
            let len = len.max(1.0);
            if *in_burst {
                *in_burst = !rng.random_bool(1.0 / len);
            } else {
                let start = (rule.loss / (len * (1.0 - rule.loss))).min(1.0);
                *in_burst = rng.random_bool(start);
            }
            *in_burst
        }
    }
}

/// A link's queue: each datagram sent on the returned channel leaves `socket` for `to`
/// at the instant it comes with.
fn delay_line(
    socket: Arc<UdpSocket>,
    to: SocketAddr,
) -> tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Instant)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Instant)>();
    tokio::spawn(async move {
        while let Some((d, at)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            let _ = socket.send_to(&d, to).await;
        }
    });
    tx
}

/// One client's way to the server through the relay.
struct Leg {
    socket: Arc<UdpSocket>,
    up: tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Instant)>,
    up_free: Instant,
    /// For `uplink_loss`.
    rng: rand::rngs::StdRng,
}

fn is_cut(cut: &std::sync::Mutex<HashSet<IpAddr>>, ip: IpAddr) -> bool {
    cut.lock().unwrap_or_else(|e| e.into_inner()).contains(&ip)
}

impl Relay {
    /// Listens on `listen` and forwards to `server`.
    pub async fn start(
        listen: SocketAddr,
        server: SocketAddr,
        rules: Vec<Rule>,
    ) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let st = stats.clone();
        let cut: Arc<std::sync::Mutex<HashSet<IpAddr>>> = Default::default();
        let cut_in = cut.clone();
        let rules = Arc::new(std::sync::Mutex::new(rules));
        let rules_in = rules.clone();
        let task = tokio::spawn(async move {
            // client address -> the relay's socket toward the server for that client, the
            // uplink's queue toward it, and when that queue is free again
            let mut legs: HashMap<SocketAddr, Leg> = HashMap::new();
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                st.uplink_bytes.fetch_add(n as u64, Ordering::Relaxed);
                if is_cut(&cut_in, client.ip()) {
                    continue;
                }
                let leg = match legs.entry(client) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let Ok(l) = UdpSocket::bind((listen.ip(), 0)).await else {
                            continue;
                        };
                        let l = Arc::new(l);
                        // Server -> client direction of this leg.
                        let (front, st, cut) = (front.clone(), st.clone(), cut_in.clone());
                        let rules = rules_in.clone();
                        let back = l.clone();
                        // The shaped link's queue: datagrams and when they leave it.
                        let link_tx = delay_line(front.clone(), client);
                        let peak = Arc::new(AtomicU64::new(0));
                        st.peaks
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((client.ip(), peak.clone()));
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 2048];
                            let mut seen = HashSet::new();
                            let mut count = 0u64;
                            let mut tokens = 0f64;
                            let mut last = Instant::now();
                            // When the shaped link is free again, and when the last
                            // datagram left (or will).
                            let mut busy_until = Instant::now();
                            let mut last_at = Instant::now();
                            // The last 10 ms of datagrams toward the client, and their bytes.
                            let mut window: std::collections::VecDeque<(Instant, usize)> =
                                Default::default();
                            let mut window_bytes = 0usize;
                            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
                                u64::from(client.port()),
                            );
                            let mut in_burst = false;
                            loop {
                                let Ok((n, _)) = back.recv_from(&mut buf).await else {
                                    return;
                                };
                                let d = &buf[..n];
                                let now = Instant::now();
                                window.push_back((now, n));
                                window_bytes += n;
                                while let Some(&(t, b)) = window.front() {
                                    if now - t <= std::time::Duration::from_millis(10) {
                                        break;
                                    }
                                    window.pop_front();
                                    window_bytes -= b;
                                }
                                peak.fetch_max(window_bytes as u64, Ordering::Relaxed);
                                if is_cut(&cut, client.ip()) {
                                    continue;
                                }
                                let rule = rules
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .iter()
                                    .copied()
                                    .find(|r| r.applies_to(client.ip()));
                                if is_rtp(d) {
                                    st.rtp_to_clients.fetch_add(1, Ordering::Relaxed);
                                    let key = (
                                        u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
                                        u16::from_be_bytes([d[2], d[3]]),
                                    );
                                    // Seen before (forwarded or dropped): a retransmission.
                                    if !seen.insert(key) {
                                        st.retransmitted.fetch_add(1, Ordering::Relaxed);
                                    }
                                    if let Some(r) = rule {
                                        count += 1;
                                        if r.drop_every.is_some_and(|k| count.is_multiple_of(k)) {
                                            st.dropped.fetch_add(1, Ordering::Relaxed);
                                            continue;
                                        }
                                        if lost(&mut rng, &mut in_burst, r) {
                                            st.dropped.fetch_add(1, Ordering::Relaxed);
                                            continue;
                                        }
                                        if let (Some(bps), None) = (r.rate_bps, r.queue) {
                                            tokens = (tokens
                                                + (now - last).as_secs_f64() * bps as f64 / 8.0)
                                                .min(bps as f64 / 8.0 / 5.0);
                                            last = now;
                                            if tokens < n as f64 {
                                                st.dropped.fetch_add(1, Ordering::Relaxed);
                                                continue;
                                            }
                                            tokens -= n as f64;
                                        }
                                    }
                                }
                                // When it leaves: after the queue ahead of it (queue mode),
                                // the delay and the jitter, never before the one ahead.
                                let mut at = now;
                                if let Some(Rule {
                                    rate_bps: Some(bps),
                                    queue: Some(limit),
                                    ..
                                }) = rule
                                {
                                    let start = busy_until.max(now);
                                    if start - now > limit {
                                        st.dropped.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                    busy_until = start
                                        + std::time::Duration::from_secs_f64(
                                            n as f64 * 8.0 / bps as f64,
                                        );
                                    at = busy_until;
                                }
                                if let Some(r) = rule {
                                    at += r.delay + r.jitter.mul_f64(rand::random::<f64>());
                                }
                                at = at.max(last_at);
                                last_at = at;
                                if at > now {
                                    let _ = link_tx.send((d.to_vec(), at));
                                    continue;
                                }
                                let _ = front.send_to(d, client).await;
                            }
                        });
                        // The uplink's queue: datagrams and when they reach the server.
                        let up = delay_line(l.clone(), server);
                        v.insert(Leg {
                            socket: l,
                            up,
                            up_free: Instant::now(),
                            rng: rand::SeedableRng::seed_from_u64(u64::from(client.port()) + 1),
                        })
                    }
                };
                let rule = rules_in
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .copied()
                    .find(|r| r.applies_to(client.ip()));
                if let Some(r) = rule
                    && r.uplink_loss > 0.0
                    && is_rtp(&buf[..n])
                    && rand::Rng::random_bool(&mut leg.rng, r.uplink_loss.min(1.0))
                {
                    st.uplink_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Some((bps, queue)) = rule.and_then(|r| Some((r.uplink_bps?, r.queue))) {
                    let now = Instant::now();
                    let start = leg.up_free.max(now);
                    if start - now > queue.unwrap_or(std::time::Duration::from_millis(200)) {
                        st.uplink_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    leg.up_free =
                        start + std::time::Duration::from_secs_f64(n as f64 * 8.0 / bps as f64);
                    let _ = leg.up.send((buf[..n].to_vec(), leg.up_free));
                    continue;
                }
                let _ = leg.socket.send_to(&buf[..n], server).await;
            }
        });
        Ok(Relay {
            addr,
            stats,
            cut,
            rules,
            task,
        })
    }

    /// Replaces the rule for `rule.ip` (the network changes under a running call).
    pub fn set_rule(&self, rule: Rule) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.retain(|r| r.ip != rule.ip);
        rules.push(rule);
    }

    /// Lifts every rule for clients on `ip`.
    pub fn clear_rule(&self, ip: IpAddr) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| r.ip != ip);
    }

    /// From now on, nothing passes to or from clients on `ip`.
    pub fn cut(&self, ip: IpAddr) {
        self.cut
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The loss rate and the mean length of the loss runs over `n` packets.
    fn measure(rule: Rule, n: usize) -> (f64, f64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut in_burst = false;
        let (mut lost_total, mut runs, mut prev) = (0usize, 0usize, false);
        for _ in 0..n {
            let l = lost(&mut rng, &mut in_burst, rule);
            lost_total += usize::from(l);
            runs += usize::from(l && !prev);
            prev = l;
        }
        (
            lost_total as f64 / n as f64,
            lost_total as f64 / runs.max(1) as f64,
        )
    }

    #[test]
    fn loss_comes_at_the_rate_asked_alone_or_in_bursts() {
        let ip = IpAddr::from([127, 0, 0, 3]);
        let random = Rule {
            loss: 0.05,
            ..Rule::new(ip)
        };
        let (rate, run) = measure(random, 200_000);
        assert!((0.045..0.055).contains(&rate), "{rate}");
        assert!(run < 1.2, "random losses seldom touch: {run}");
        let bursty = Rule {
            burst: Some(4.0),
            ..random
        };
        let (rate, run) = measure(bursty, 200_000);
        assert!((0.045..0.055).contains(&rate), "{rate}");
        assert!((3.6..4.4).contains(&run), "mean burst {run}");
        assert_eq!(measure(Rule::new(ip), 1_000).0, 0.0);
    }
}
