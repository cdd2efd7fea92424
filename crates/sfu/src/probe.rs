//! Probing a subscriber's path before a layer upgrade: a short cluster of packets sent at
//! the rate the upgrade would need, and what the subscriber's transport-wide feedback says
//! the path carried of it.
//!
//! Without it the upgrade was the probe: the estimate grew past what was sent, the
//! allocator switched to the next layer (a keyframe and a layer's worth of rate), and a
//! path that could not carry it lost packets from a real bottleneck's buffer before the
//! delay signal moved the subscriber back (measured on a steady 1 Mbit/s link: the top
//! layer tried every 8 s, 12 to 40 packets dropped per 40 s, `benches/network.sh steady`).
//!
//! A cluster is [`DURATION`] long. Everything the connection sends meanwhile belongs to
//! it; [`Prober`] says when to add a packet so that the whole leaves at the target rate.
//! The added packets are copies of video packets the subscriber already has (from the
//! retransmission history): its receiver drops them as duplicates, its feedback reports
//! them like any other (they carry new transport-wide numbers). A cluster short enough
//! leaves at most a few packets' queue at a bottleneck it does not fit (50 ms at 2 Mbit/s
//! on a 1 Mbit/s link: 6 kB, 50 ms), far from what a router's buffer holds. 100 ms clusters
//! every 4 s cost a 1 Mbit/s link with 200 ms of buffer about one dropped packet each
//! (`benches/network.sh steady`, docs/benchmarks.md); 50 ms hold some 12 packets at 2
//! Mbit/s, enough for the rates (the feedback's arrival times are in 250 µs steps).
//!
//! [`ClusterMeter`] reads the result from the feedback, as libwebrtc's probe estimator
//! does: the rate the cluster left at (its bytes but the last, over the time from its
//! first departure to its last) and the rate it arrived at. A path that carries the
//! cluster shows both alike; a narrower one queues it, and the arrival rate is its
//! capacity. libwebrtc reads the arrival rate from the first and last arrivals; here it is
//! read from how fast the one-way delay grew across the cluster (the lowest delay early
//! in it against the lowest late in it), because jitter only adds delay. On the 4G-like
//! profile (20 ms of jitter) a recorded cluster left over 48.5 ms and arrived over 58, and
//! read as 1.6 Mbit/s where the top layer needed 1.84 (1.5, its 20 % headroom, audio):
//! probes kept falling short of it in seconds that had room for it. No IO and no clock
//! here: instants are handed in.

use std::time::{Duration, Instant};

/// How long a cluster lasts.
pub const DURATION: Duration = Duration::from_millis(50);
/// Fewer packets than this arrived: the cluster says nothing (a probe of a connection with
/// no video to copy, feedback lost).
pub const MIN_PACKETS: u32 = 5;
/// An arrival rate below this fraction of the departure rate means the path did not carry
/// the cluster: it is the path's capacity...
const SATURATED: f64 = 0.9;
/// ...of which this much is taken as the estimate (what queued must drain).
const SATURATED_SHARE: f64 = 0.95;
/// An arrival rate above this multiple of the departure rate is not a measurement (the
/// subscriber's clock or reordering).
const MAX_RATIO: f64 = 2.0;
/// A cluster whose feedback has not come back this long after it ended is given up.
const GIVE_UP: Duration = Duration::from_secs(2);
/// The arrivals of at most this many packets are kept for the delay's growth.
const DELAYS: usize = 48;
/// Fewer kept than this: the arrival rate is read from the first and last arrivals alone.
const MIN_DELAYS: usize = 6;

/// What a cluster's feedback said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The path carried this many bits per second of it.
    Carried(u64),
    /// Nothing to go by (too few packets arrived, the arrivals were implausible, or the
    /// feedback never came).
    Unmeasured,
}

/// The sending side of one cluster: when to add a packet.
#[derive(Debug, Clone)]
pub struct Prober {
    target_bps: u64,
    start: Instant,
    /// Bytes the connection sent since the cluster began (media and added packets).
    sent: u64,
}

impl Prober {
    pub fn new(target_bps: u64, now: Instant) -> Self {
        Self {
            target_bps: target_bps.max(1),
            start: now,
            sent: 0,
        }
    }

    pub fn target_bps(&self) -> u64 {
        self.target_bps
    }

    /// The connection sent `bytes` (anything: forwarded media, audio, an added packet).
    pub fn on_sent(&mut self, bytes: usize) {
        self.sent += bytes as u64;
    }

    /// The cluster is over.
    pub fn finished(&self, now: Instant) -> bool {
        now >= self.start + DURATION
    }

    /// A packet should be added now: what left so far lags the target rate. Packets go
    /// whole, so the cluster runs up to one packet ahead of the rate.
    pub fn due(&self, now: Instant) -> bool {
        !self.finished(now) && self.sent <= self.owed(now)
    }

    /// When the next packet is due (if nothing else is sent meanwhile), or when the
    /// cluster ends, whichever is first.
    pub fn next_at(&self) -> Instant {
        let at =
            self.start + Duration::from_secs_f64(self.sent as f64 * 8.0 / self.target_bps as f64);
        at.min(self.start + DURATION)
    }

    /// Bytes the target rate allows by `now`.
    fn owed(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).min(DURATION);
        (elapsed.as_secs_f64() * self.target_bps as f64 / 8.0) as u64
    }
}

/// One packet of a cluster as its feedback reported it.
#[derive(Debug, Clone, Copy)]
pub struct Reported {
    pub departure: Instant,
    pub size: usize,
    /// On the subscriber's clock; `None` when it was lost.
    pub arrival: Option<Duration>,
}

/// The receiving side of one cluster: the packets sent while it was open (by their
/// transport-wide record ids, which only grow), and what the feedback said of them.
#[derive(Debug, Clone)]
pub struct ClusterMeter {
    first_id: Option<u64>,
    /// The last member's id, once the cluster has ended (and when it did).
    last_id: Option<u64>,
    ended: Option<Instant>,
    arrived: u32,
    /// Departures: earliest, latest, the latest one's size, and all bytes.
    sent: Option<(Instant, Instant, usize)>,
    sent_bytes: usize,
    /// Arrivals: earliest, the earliest one's size, latest, and all bytes.
    received: Option<(Duration, usize, Duration)>,
    received_bytes: usize,
    /// Each arrived packet's departure (seconds after `origin`) and one-way delay (seconds,
    /// with the clocks' unknown offset), the first [`DELAYS`] of them.
    origin: Option<Instant>,
    delays: [(f64, f64); DELAYS],
    kept: usize,
}

impl ClusterMeter {
    pub fn new() -> Self {
        Self {
            first_id: None,
            last_id: None,
            ended: None,
            arrived: 0,
            sent: None,
            sent_bytes: 0,
            received: None,
            received_bytes: 0,
            origin: None,
            delays: [(0.0, 0.0); DELAYS],
            kept: 0,
        }
    }

    /// A packet was sent while the cluster is open.
    pub fn on_sent(&mut self, id: u64) {
        if self.ended.is_none() {
            self.first_id.get_or_insert(id);
        }
    }

    /// The cluster is over: packets sent from now on are not in it.
    pub fn end(&mut self, last_id: Option<u64>, now: Instant) {
        if self.ended.is_none() {
            self.last_id = self.first_id.and(last_id);
            self.ended = Some(now);
        }
    }

    pub fn is_open(&self) -> bool {
        self.ended.is_none()
    }

    /// Feedback reported packet `id`. Returns the cluster's outcome once the feedback has
    /// gone past its last packet; `None` while it is still to come.
    pub fn on_reported(&mut self, id: u64, p: Reported) -> Option<Outcome> {
        let (first, last) = (self.first_id?, self.ended.and(self.last_id));
        if id < first {
            return None;
        }
        if let Some(last) = last
            && id > last
        {
            return Some(self.result());
        }
        self.sent_bytes += p.size;
        self.sent = Some(match self.sent {
            None => (p.departure, p.departure, p.size),
            Some((lo, hi, _)) if p.departure >= hi => (lo, p.departure, p.size),
            Some((lo, hi, size)) => (lo.min(p.departure), hi, size),
        });
        if let Some(at) = p.arrival {
            self.arrived += 1;
            self.received_bytes += p.size;
            let origin = *self.origin.get_or_insert(p.departure);
            if self.kept < DELAYS {
                let sent = p.departure.saturating_duration_since(origin).as_secs_f64()
                    - origin.saturating_duration_since(p.departure).as_secs_f64();
                self.delays[self.kept] = (sent, at.as_secs_f64() - sent);
                self.kept += 1;
            }
            self.received = Some(match self.received {
                None => (at, p.size, at),
                Some((lo, _, hi)) if at < lo => (at, p.size, hi),
                Some((lo, size, hi)) => (lo, size, hi.max(at)),
            });
        }
        if last == Some(id) {
            return Some(self.result());
        }
        None
    }

    /// The cluster ended long ago and its feedback never completed it.
    pub fn stale(&self, now: Instant) -> bool {
        self.ended
            .is_some_and(|t| now.saturating_duration_since(t) >= GIVE_UP)
            || (self.ended.is_some() && self.last_id.is_none())
    }

    fn result(&self) -> Outcome {
        self.carried().map_or(Outcome::Unmeasured, Outcome::Carried)
    }

    /// What the path carried, in bits per second, if the cluster says.
    fn carried(&self) -> Option<u64> {
        if self.arrived < MIN_PACKETS {
            return None;
        }
        let (lo, hi, last_size) = self.sent?;
        let (first, first_size, latest) = self.received?;
        let send_span = hi.saturating_duration_since(lo).as_secs_f64();
        let recv_span = latest.saturating_sub(first).as_secs_f64();
        if send_span <= 0.0 || recv_span <= 0.0 {
            return None;
        }
        let send = (self.sent_bytes - last_size) as f64 * 8.0 / send_span;
        let recv = (self.received_bytes - first_size) as f64 * 8.0 / recv_span;
        if recv > send * MAX_RATIO {
            return None;
        }
        let recv = self
            .delay_growth()
            .map_or(recv, |g| send / (1.0 + g.max(0.0)));
        let bps = if recv < send * SATURATED {
            recv * SATURATED_SHARE
        } else {
            send.min(recv)
        };
        Some(bps as u64)
    }

    /// How fast the one-way delay grew across the cluster (seconds per second of
    /// sending): 0 on a path that carried it, `send rate / capacity - 1` on a narrower
    /// one, whose queue grows with every packet. Read from the lowest delay in the first
    /// and in the last third of the cluster, not from the first and last arrivals: jitter
    /// only ever adds delay, so the lowest is the queue's (`jitter_is_not_read_as_a_narrower_path`:
    /// 1.45 Mbit/s of 1.5, where the first and last arrivals read 1.18).
    fn delay_growth(&self) -> Option<f64> {
        if self.kept < MIN_DELAYS {
            return None;
        }
        let mut d = self.delays;
        let d = &mut d[..self.kept];
        d.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let third = d.len() / 3;
        let lowest = |part: &[(f64, f64)]| {
            part.iter()
                .copied()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or_default()
        };
        let (early, late) = (lowest(&d[..third]), lowest(&d[d.len() - third..]));
        let span = late.0 - early.0;
        (span > 0.0).then(|| (late.1 - early.1) / span)
    }
}

impl Default for ClusterMeter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prober adds packets so that everything leaves at the target: 1.5 Mbit/s over
    /// 50 ms is 9,375 bytes, whatever part of it media already was.
    #[test]
    fn the_prober_fills_up_to_the_target_rate() {
        let t0 = Instant::now();
        let mut p = Prober::new(1_500_000, t0);
        let mut added = 0;
        let mut ms = 0;
        while !p.finished(t0 + Duration::from_millis(ms)) {
            let now = t0 + Duration::from_millis(ms);
            if ms % 10 == 0 {
                // Media: a 1,000-byte packet every 10 ms (800 kbit/s).
                p.on_sent(1_000);
            }
            while p.due(now) {
                p.on_sent(1_200);
                added += 1200;
            }
            assert!(p.next_at() > now, "nothing is due before the time it names");
            ms += 1;
        }
        let total = p.sent;
        assert!(
            (9_375..=9_375 + 1_200).contains(&total),
            "{total} bytes in the cluster"
        );
        // Five media packets of 1,000 bytes went out in those 50 ms.
        assert!((4_375..=5_575).contains(&added), "{added} bytes added");
        assert_eq!(p.next_at(), t0 + DURATION, "the end is the last due time");
    }

    /// A cluster sent at `send_bps` in 1,200-byte packets over a link of `link_bps`: the
    /// meter's result.
    fn measure(send_bps: u64, link_bps: u64) -> Outcome {
        measure_with_jitter(send_bps, link_bps, &[])
    }

    /// The same with `jitter[i]` ms added to packet i's delay (order kept, as a queue that
    /// varies keeps it).
    fn measure_with_jitter(send_bps: u64, link_bps: u64, jitter: &[u64]) -> Outcome {
        let t0 = Instant::now();
        let mut m = ClusterMeter::new();
        let gap = Duration::from_secs_f64(1_200.0 * 8.0 / send_bps as f64);
        let tx = Duration::from_secs_f64(1_200.0 * 8.0 / link_bps as f64);
        let mut free = Duration::ZERO;
        let mut last = Duration::ZERO;
        let mut reports = Vec::new();
        for i in 0..16u64 {
            m.on_sent(100 + i);
            let departure = gap * i as u32;
            free = free.max(departure) + tx;
            let extra = jitter.get(i as usize).copied().unwrap_or(0);
            let arrival = (free + Duration::from_millis(extra)).max(last);
            last = arrival;
            reports.push((
                100 + i,
                Reported {
                    departure: t0 + departure,
                    size: 1_200,
                    arrival: Some(arrival + Duration::from_millis(30)),
                },
            ));
        }
        m.end(Some(115), t0 + gap * 16);
        let mut out = None;
        for (id, r) in reports {
            if let Some(res) = m.on_reported(id, r) {
                out = Some(res);
            }
        }
        out.expect("the last packet completes the cluster")
    }

    #[test]
    fn a_path_that_carries_the_cluster_shows_its_rate() {
        let Outcome::Carried(r) = measure(1_500_000, 10_000_000) else {
            panic!("no measurement")
        };
        assert!((1_450_000..=1_550_000).contains(&r), "{r}");
    }

    /// Jitter only adds delay: a cluster whose first packet came early and whose last came
    /// 20 ms late still shows the rate the path carried (1.45 Mbit/s of 1.5; read from the
    /// first and last arrivals alone, 1.18), and a narrower jittery path its capacity.
    #[test]
    fn jitter_is_not_read_as_a_narrower_path() {
        let jitter = [0, 5, 12, 3, 8, 1, 15, 6, 2, 10, 4, 9, 1, 7, 3, 20];
        let Outcome::Carried(r) = measure_with_jitter(1_500_000, 10_000_000, &jitter) else {
            panic!("no measurement")
        };
        assert!((1_400_000..=1_550_000).contains(&r), "{r}");
        let Outcome::Carried(r) = measure_with_jitter(1_500_000, 1_000_000, &jitter) else {
            panic!("no measurement")
        };
        assert!((850_000..=1_050_000).contains(&r), "{r}");
    }

    #[test]
    fn a_narrower_path_shows_its_capacity() {
        let Outcome::Carried(r) = measure(1_500_000, 1_000_000) else {
            panic!("no measurement")
        };
        assert!((900_000..=1_000_000).contains(&r), "{r}");
    }

    /// Packets sent before the cluster opened or after it closed are not in it; a later
    /// packet's report completes it even when its own last packet was lost; too few
    /// arrivals say nothing.
    #[test]
    fn membership_and_completion() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let rep = |ms: u64, arrival: Option<u64>| Reported {
            departure: at(ms),
            size: 1_000,
            arrival: arrival.map(Duration::from_millis),
        };
        let mut m = ClusterMeter::new();
        assert_eq!(m.on_reported(1, rep(0, Some(10))), None, "not open yet");
        for id in 10..20 {
            m.on_sent(id);
        }
        m.end(Some(19), at(100));
        assert!(!m.is_open());
        m.on_sent(25);
        assert_eq!(m.on_reported(9, rep(0, Some(5))), None, "before it");
        for id in 10..19 {
            let ms = (id - 10) * 10;
            assert_eq!(m.on_reported(id, rep(ms, Some(ms + 20))), None);
        }
        // 19 is lost and never reported; 20 is.
        let Some(Outcome::Carried(r)) = m.on_reported(20, rep(100, Some(120))) else {
            panic!("no measurement")
        };
        // 8,000 bytes over 80 ms both ways.
        assert!((790_000..=810_000).contains(&r), "{r}");

        let mut few = ClusterMeter::new();
        for id in 0..3 {
            few.on_sent(id);
        }
        few.end(Some(2), at(100));
        few.on_reported(0, rep(0, Some(1)));
        few.on_reported(1, rep(10, Some(11)));
        assert_eq!(
            few.on_reported(2, rep(20, Some(21))),
            Some(Outcome::Unmeasured)
        );
        assert!(!few.stale(at(1_000)));
        assert!(few.stale(at(100) + GIVE_UP));
        let mut empty = ClusterMeter::new();
        empty.end(None, at(0));
        assert!(empty.stale(at(0)), "nothing was sent in it");
    }

    /// Arrivals faster than departures by more than twice are a clock's doing, not a rate.
    #[test]
    fn implausible_arrivals_are_no_measurement() {
        let t0 = Instant::now();
        let mut m = ClusterMeter::new();
        for id in 0..10u64 {
            m.on_sent(id);
        }
        m.end(Some(9), t0);
        let mut out = None;
        for id in 0..10u64 {
            let r = Reported {
                departure: t0 + Duration::from_millis(id * 10),
                size: 1_000,
                arrival: Some(Duration::from_millis(id)),
            };
            out = m.on_reported(id, r).or(out);
        }
        assert_eq!(out, Some(Outcome::Unmeasured));
    }
}
