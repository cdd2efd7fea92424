//! The transport side of send-side bandwidth estimation on one subscriber connection
//! (transport-wide congestion control, draft-holmer-rmcat-transport-wide-cc-extensions):
//! every packet the egress sends carries a transport-wide sequence number, and the
//! subscriber's feedback says which arrived and when, on its own clock.
//!
//! This turns that feedback into a [`CcSignal`]: whether the path's queue is growing (the
//! delay gradient of draft-ietf-rmcat-gcc §5), what the subscriber is actually receiving,
//! and how many packets it lost. The grouping of packets into bursts and the overuse
//! detector with its adaptive threshold are webrtc-rs' (`rtc-interceptor`). The filter
//! between them is libwebrtc's trendline (a least-squares slope of the smoothed accumulated
//! delay over the last 20 groups) rather than the crate's Kalman filter: measured on the
//! closed-loop test in `bwe`, the Kalman filter's trend stayed above the threshold for
//! seconds after the queue had drained, and each of those readings said overuse again. What to do about it, the rate, is the
//! room's estimate's business ([`crate::bwe::Bwe`]), beside the allocator it feeds.
//!
//! webrtc-rs' own congestion-control interceptor cannot be used as is: it sees only packets
//! written through `rtc`'s pipeline, and the egress writes around it ([`crate::egress`]).
//! Its parts are used directly instead. No IO and no clock here: instants are handed in.

use rtc::interceptor::{
    ArrivalGroupAccumulator, History, InterGroupDelay, OveruseDetector, Usage, convert_twcc,
};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub mod trace;

/// Records of unacknowledged packets older than this are dropped (a path that stopped
/// reporting must not grow the history without bound).
const PRUNE_HORIZON: Duration = Duration::from_secs(2);

/// The received rate is measured over this much of the subscriber's clock.
const RATE_WINDOW: Duration = Duration::from_millis(250);
/// Groups the trend's slope is fitted over.
const TREND_WINDOW: usize = 20;
/// Smoothing of the accumulated delay before the fit.
const TREND_SMOOTHING: f64 = 0.9;
/// The slope is weighed by how many deltas it rests on, up to this many, and by a gain, to
/// compare with the detector's threshold (libwebrtc's `min(deltas, 60) * slope * 4`).
const TREND_DELTAS: u32 = 60;
const TREND_GAIN: f64 = 4.0;

/// The standing queue is the least one-way delay over this much of the latest departures,
/// above the least over [`BASE_WINDOW`]. Short, because a real overuse must be confirmed
/// before the bottleneck's buffer overflows: replayed on recorded traces, a 200 ms window
/// confirmed a 1.6 Mbit/s layer on a 1 Mbit/s link (200 ms of buffer) 200 ms after the
/// trend did, and the relay dropped packets; 50 ms confirms it with the trend. A window
/// still holds the first packet of a frame (at 30 fps, or the audio between frames), which
/// sees the queue drained when the path carries the rate...
const QUEUE_WINDOW: Duration = Duration::from_millis(50);
/// ...kept in one-second buckets: a queue that drains shows the path's delay again within
/// this...
const BASE_WINDOW: Duration = Duration::from_secs(10);
/// ...and a queue that stands this long without the trend saying it grows is taken as the
/// path's own delay (a route that changed, a relay that adds its delay at once) and
/// becomes the base. Before, such a step was read as a queue for the whole base window:
/// every rise of the trend in those 10 s was confirmed as overuse (recorded on the jitter
/// profile, whose relay adds 50 ms at once: 10 s on the middle layer).
const REBASE_AFTER: Duration = Duration::from_secs(1);
/// A growing trend is overuse only with a standing queue of at least this. A frame that a
/// bottleneck spreads out but drains before the next one (a link that starts shaping, a
/// switch to a larger layer that still fits) raises the trend for a moment but leaves no
/// standing queue: the packets between frames see the base delay. Measured on a recorded
/// trace (`twcc/halving.cc`): a 2.5 Mbit/s link taking 1.5 Mbit/s of 6-packet frames
/// delayed each frame's last packet by 22 ms, the trend crossed the threshold, and the
/// subscriber was moved to the middle layer for good; the audio packets between frames
/// were 1 to 2 ms late.
const STANDING_QUEUE: Duration = Duration::from_millis(10);
/// On a path with jitter, the least delay of 50 ms of packets sits above the base by the
/// jitter alone, and a queue of 10 ms stands most of the time: the trend would decide
/// alone, and jitter tips it over the threshold. So the standing queue asked for is
/// [`STANDING_QUEUE`] plus twice how far above the base it sits while nothing grows
/// (smoothed with this gain per feedback packet, about 2 s; counted up to [`JITTER_CAP`]).
const JITTER_GAIN: f64 = 0.05;
const JITTER_CAP: Duration = Duration::from_millis(40);

/// The delay trend: the slope of the smoothed accumulated one-way delay variation over the
/// last [`TREND_WINDOW`] groups, against when they left.
#[derive(Debug, Default)]
struct Trendline {
    first: Option<Instant>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    deltas: u32,
    window: VecDeque<(f64, f64)>,
    trend: f64,
    /// The last weighed trend handed to the detector.
    last: f64,
}

impl Trendline {
    /// Folds in one inter-group delay; returns the weighed trend for the detector.
    fn update(&mut self, d: &InterGroupDelay) -> f64 {
        let first = *self.first.get_or_insert(d.at);
        self.deltas = (self.deltas + 1).min(TREND_DELTAS);
        self.accumulated_ms += d.delta_ms;
        self.smoothed_ms =
            TREND_SMOOTHING * self.smoothed_ms + (1.0 - TREND_SMOOTHING) * self.accumulated_ms;
        let x = d.at.saturating_duration_since(first).as_secs_f64() * 1000.0;
        self.window.push_back((x, self.smoothed_ms));
        if self.window.len() > TREND_WINDOW {
            self.window.pop_front();
        }
        if self.window.len() == TREND_WINDOW
            && let Some(slope) = slope(&self.window)
        {
            self.trend = slope;
        }
        self.last = self.trend * f64::from(self.deltas) * TREND_GAIN;
        self.last
    }
}

/// The least-squares slope of `points`; `None` when they share one x.
fn slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den > 0.0).then(|| num / den)
}

/// The least one-way delay lately against the least over a longer time: the queue that
/// does not drain between bursts. One-way delays mix two clocks; their offset cancels out.
#[derive(Debug, Default)]
struct StandingQueue {
    anchor: Option<Instant>,
    /// (departure, delay in µs), increasing delays: the front is the window's least.
    recent: VecDeque<(Instant, i64)>,
    /// The latest departure seen (reports may come out of order).
    newest: Option<Instant>,
    /// (start of a second of departures, its least delay).
    base: VecDeque<(Instant, i64)>,
    /// Since when (a departure) the queue has stood without growing.
    standing_since: Option<Instant>,
    /// How far above the base the queue sits while nothing grows (µs, smoothed).
    jitter_us: f64,
}

impl StandingQueue {
    fn add(&mut self, departure: Instant, arrival: Duration) {
        let anchor = *self.anchor.get_or_insert(departure);
        let owd = arrival.as_micros() as i64
            - departure.saturating_duration_since(anchor).as_micros() as i64;
        while self.recent.back().is_some_and(|b| b.1 >= owd) {
            self.recent.pop_back();
        }
        self.recent.push_back((departure, owd));
        let newest = self.newest.map_or(departure, |n| n.max(departure));
        self.newest = Some(newest);
        while self
            .recent
            .front()
            .is_some_and(|f| newest.saturating_duration_since(f.0) > QUEUE_WINDOW)
        {
            self.recent.pop_front();
        }
        match self.base.back_mut() {
            Some(b) if departure.saturating_duration_since(b.0) < Duration::from_secs(1) => {
                b.1 = b.1.min(owd);
            }
            _ => {
                self.base.push_back((departure, owd));
                let buckets = BASE_WINDOW.as_secs() as usize;
                while self.base.len() > buckets {
                    self.base.pop_front();
                }
            }
        }
    }

    /// The standing queue, after the feedback that said whether the trend finds it
    /// `growing`: one that stood [`REBASE_AFTER`] without growing becomes the base.
    fn settle(&mut self, growing: bool) -> Duration {
        let queue = self.get();
        let (Some(now), Some(&(_, least))) = (self.newest, self.recent.front()) else {
            return queue;
        };
        if !growing {
            let cap = JITTER_CAP.as_micros() as f64;
            self.jitter_us += (queue.as_micros() as f64 - self.jitter_us) * JITTER_GAIN;
            self.jitter_us = self.jitter_us.min(cap);
        }
        if growing || queue < STANDING_QUEUE {
            self.standing_since = None;
            return queue;
        }
        let since = *self.standing_since.get_or_insert(now);
        if now.saturating_duration_since(since) < REBASE_AFTER {
            return queue;
        }
        self.base.clear();
        self.base.push_back((now, least));
        self.standing_since = None;
        Duration::ZERO
    }

    /// The standing queue that confirms a growing trend as overuse on this path.
    fn threshold(&self) -> Duration {
        STANDING_QUEUE + Duration::from_micros(2 * self.jitter_us as u64)
    }

    fn get(&self) -> Duration {
        let (Some(recent), Some(base)) = (
            self.recent.front().map(|r| r.1),
            self.base.iter().map(|b| b.1).min(),
        ) else {
            return Duration::ZERO;
        };
        Duration::from_micros(recent.saturating_sub(base).max(0) as u64)
    }
}

/// What one feedback packet says about the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CcSignal {
    /// The queue toward the subscriber is growing and standing ([`STANDING_QUEUE`], more on
    /// a path with jitter, [`JITTER_GAIN`]): more is sent than the path carries.
    pub overuse: bool,
    /// The queue is draining: hold rather than grow.
    pub underuse: bool,
    /// What the subscriber received over the last quarter second, when there is enough to say.
    pub received_bps: Option<u64>,
    /// Packets reported on, and how many of them never arrived.
    pub reported: u32,
    pub lost: u32,
    /// The standing queue: the least one-way delay lately above the path's least.
    pub queue: Duration,
    /// A probe cluster's outcome, when this feedback completed one ([`crate::probe`]).
    pub probe: Option<crate::probe::Outcome>,
}

/// One subscriber connection's transport-wide sequence numbers and the delay signal.
#[derive(Debug)]
pub struct TransportCc {
    /// The negotiated header-extension id the sequence number is written under.
    ext_id: u8,
    next_seq: u16,
    history: History,
    groups: ArrivalGroupAccumulator,
    trend: Trendline,
    detector: OveruseDetector,
    queue: StandingQueue,
    /// Arrivals on the subscriber's clock and their sizes, over [`RATE_WINDOW`].
    arrivals: VecDeque<(Duration, usize)>,
    /// Smoothed round trip: a packet's departure to the feedback that names it (the queue
    /// toward the subscriber included, which is what a retransmission waits behind).
    srtt: Option<Duration>,
    next_prune: Option<Instant>,
    /// This connection's number in a recorded trace ([`trace`]).
    trace_id: u64,
    /// The record id of the last packet sent, and the probe cluster being sent or waiting
    /// for its feedback.
    last_id: Option<u64>,
    cluster: Option<crate::probe::ClusterMeter>,
}

impl TransportCc {
    pub fn new(ext_id: u8) -> Self {
        Self {
            ext_id,
            next_seq: 0,
            history: History::new(),
            groups: ArrivalGroupAccumulator::default(),
            trend: Trendline::default(),
            detector: OveruseDetector::new(),
            queue: StandingQueue::default(),
            arrivals: VecDeque::new(),
            srtt: None,
            next_prune: None,
            trace_id: trace::next_id(),
            last_id: None,
            cluster: None,
        }
    }

    pub fn ext_id(&self) -> u8 {
        self.ext_id
    }

    /// The smoothed round trip, once feedback named a packet that arrived.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Numbers a packet as it leaves: the transport-wide sequence number to write into it.
    /// `size` is the datagram's size on the wire.
    pub fn on_send(&mut self, ssrc: u32, rtp_seq: u16, size: usize, now: Instant) -> u16 {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        trace::sent(self.trace_id, seq, size, now);
        let id = self
            .history
            .add_outgoing(ssrc, rtp_seq, true, seq, size, now);
        self.last_id = Some(id);
        if let Some(c) = &mut self.cluster {
            c.on_sent(id);
        }
        if self.next_prune.is_none_or(|t| now >= t) {
            self.next_prune = Some(now + PRUNE_HORIZON / 2);
            if let Some(cutoff) = now.checked_sub(PRUNE_HORIZON) {
                self.history.prune_before(cutoff);
            }
        }
        seq
    }

    /// A probe cluster begins: every packet sent until [`TransportCc::end_cluster`] is in
    /// it (a cluster still waiting for its feedback is given up).
    pub fn start_cluster(&mut self) {
        self.cluster = Some(crate::probe::ClusterMeter::new());
    }

    /// The probe cluster is over; its outcome comes with the feedback that completes it.
    pub fn end_cluster(&mut self, now: Instant) {
        if let Some(c) = &mut self.cluster {
            c.end(self.last_id, now);
        }
    }

    /// Feedback from the subscriber. `None` when it names nothing this side has a record of
    /// yet (the previous ones' packets are reported once a later one arrived).
    pub fn on_feedback(&mut self, fb: &TransportLayerCc, now: Instant) -> Option<CcSignal> {
        trace::feedback(self.trace_id, fb, now);
        let acks = convert_twcc(fb);
        let mut rtt = None;
        for ack in acks {
            let r = self.history.on_twcc_feedback(now, ack);
            if ack.arrived {
                rtt = r.or(rtt);
            }
        }
        if let Some(sample) = rtt {
            self.srtt = Some(match self.srtt {
                None => sample,
                Some(s) => (s * 7 + sample) / 8,
            });
        }
        let reports = self.history.take_reports();
        if reports.is_empty() {
            return None;
        }

        let mut usage = self.detector.usage();
        let mut lost = 0;
        let mut probe = None;
        for r in &reports {
            if let Some(c) = &mut self.cluster {
                let p = crate::probe::Reported {
                    departure: r.departure,
                    size: r.size,
                    arrival: r.arrival.filter(|_| r.arrived),
                };
                if let Some(outcome) = c.on_reported(r.id, p) {
                    tracing::trace!(conn = self.trace_id, ?outcome, cluster = ?c, "probe cluster");
                    probe = Some(outcome);
                    self.cluster = None;
                }
            }
            match (r.arrived, r.arrival) {
                (true, Some(at)) => {
                    self.arrived(at, r.size);
                    self.queue.add(r.departure, at);
                }
                (true, None) => {}
                (false, _) => lost += 1,
            }
            if let Some(delay) = self.groups.accumulate(r) {
                let trend = self.trend.update(&delay);
                usage = self.detector.update(delay.at, trend);
            }
        }
        if let Some(c) = self.cluster.as_ref().filter(|c| c.stale(now)) {
            tracing::trace!(conn = self.trace_id, cluster = ?c, "probe cluster given up");
            probe = Some(crate::probe::Outcome::Unmeasured);
            self.cluster = None;
        }
        let queue = self.queue.settle(usage == Usage::Over);
        Some(CcSignal {
            overuse: usage == Usage::Over && queue >= self.queue.threshold(),
            underuse: usage == Usage::Under,
            received_bps: self.received_bps(),
            reported: reports.len() as u32,
            lost,
            queue,
            probe,
        })
    }

    fn arrived(&mut self, at: Duration, size: usize) {
        // Reordered reports may go back a little; the window follows the newest.
        let newest = self.arrivals.back().map_or(at, |b| b.0.max(at));
        self.arrivals.push_back((at, size));
        while let Some(&(first, _)) = self.arrivals.front() {
            if newest.saturating_sub(first) <= RATE_WINDOW {
                break;
            }
            self.arrivals.pop_front();
        }
    }

    /// Bytes that arrived after the window's first arrival, over the time since it.
    fn received_bps(&self) -> Option<u64> {
        let first = self.arrivals.front()?.0;
        let last = self.arrivals.iter().map(|a| a.0).max()?;
        let span = last.saturating_sub(first);
        if span < Duration::from_millis(50) {
            return None;
        }
        let bytes: usize = self.arrivals.iter().skip(1).map(|a| a.1).sum();
        Some((bytes as f64 * 8.0 / span.as_secs_f64()) as u64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rtc::interceptor::Acknowledgement;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc,
    };

    /// A bottleneck of `capacity_bps` with a FIFO queue between the server and a
    /// subscriber, `base` one-way delay, and a queue of at most `queue_bytes` (past it,
    /// packets are dropped: a router's tail drop). Returns each packet's arrival time, or
    /// `None` for a drop.
    pub(crate) struct Link {
        pub capacity_bps: u64,
        pub base: Duration,
        pub queue_bytes: usize,
        /// Up to this much more delay per packet, drawn at random (order kept).
        pub jitter: Duration,
        /// When the link is free again, and when its last packet arrived.
        busy_until: Option<Instant>,
        last_arrival: Option<Instant>,
        /// Seeded: repeatable runs.
        rng: rand::rngs::StdRng,
    }

    impl Link {
        pub(crate) fn new(capacity_bps: u64, queue_bytes: usize) -> Self {
            Self {
                capacity_bps,
                base: Duration::from_millis(20),
                queue_bytes,
                jitter: Duration::ZERO,
                busy_until: None,
                last_arrival: None,
                rng: rand::SeedableRng::seed_from_u64(7),
            }
        }

        pub(crate) fn send(&mut self, size: usize, at: Instant) -> Option<Instant> {
            let free = self.busy_until.map_or(at, |b| b.max(at));
            let queued_secs = free.saturating_duration_since(at).as_secs_f64();
            let queued_bytes = queued_secs * self.capacity_bps as f64 / 8.0;
            if queued_bytes + size as f64 > self.queue_bytes as f64 {
                return None;
            }
            let tx = Duration::from_secs_f64(size as f64 * 8.0 / self.capacity_bps as f64);
            self.busy_until = Some(free + tx);
            let jitter = self.jitter.mul_f64(rand::Rng::random::<f64>(&mut self.rng));
            let arrival = (free + tx + self.base + jitter).max(self.last_arrival.unwrap_or(at));
            self.last_arrival = Some(arrival);
            Some(arrival)
        }
    }

    /// A feedback packet as a receiver builds it: `acks` are (transport seq, arrival on
    /// the receiver's clock), consecutive from the first.
    pub(crate) fn feedback(base_seq: u16, arrivals: &[Option<Duration>]) -> TransportLayerCc {
        let reference = arrivals
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or_default();
        let ref_ticks = (reference.as_micros() / 64_000) as u32;
        let mut last = Duration::from_millis(64) * ref_ticks;
        let mut chunks = Vec::new();
        let mut deltas = Vec::new();
        for a in arrivals {
            let symbol = match a {
                None => SymbolTypeTcc::PacketNotReceived,
                Some(t) => {
                    // On the wire in 250 µs units.
                    let delta = (t.as_micros() as i64 - last.as_micros() as i64) / 250 * 250;
                    last = Duration::from_micros((last.as_micros() as i64 + delta) as u64);
                    let small = (0..=255 * 250).contains(&delta);
                    deltas.push(RecvDelta {
                        type_tcc_packet: if small {
                            SymbolTypeTcc::PacketReceivedSmallDelta
                        } else {
                            SymbolTypeTcc::PacketReceivedLargeDelta
                        },
                        delta,
                    });
                    if small {
                        SymbolTypeTcc::PacketReceivedSmallDelta
                    } else {
                        SymbolTypeTcc::PacketReceivedLargeDelta
                    }
                }
            };
            chunks.push(PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: symbol,
                run_length: 1,
            }));
        }
        TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_sequence_number: base_seq,
            packet_status_count: arrivals.len() as u16,
            reference_time: ref_ticks,
            fb_pkt_count: 0,
            packet_chunks: chunks,
            recv_deltas: deltas,
        }
    }

    /// 12 s of one subscriber of the jitter profile (`confab-network`, recorded with
    /// `RUST_LOG=confab_cc_trace=trace`): 3 s of a clean path, then 50 ms more delay and up
    /// to 100 ms of jitter per packet, order kept. The step is read as overuse (a queue
    /// that grew at once); after it the least delay of 50 ms of packets sits 10 to 50 ms
    /// above the base from the jitter alone, and the trend crosses its threshold now and
    /// then (at 6.06 s: 16.6 against 13.1), which a 10 ms standing queue confirmed.
    #[test]
    fn a_recorded_jittery_path_is_overuse_only_at_its_step() {
        let steps = trace::replay(&trace::Trace::from_compact(include_str!("twcc/jitter.cc")));
        assert!(steps.len() > 100, "{}", steps.len());
        let ms = Duration::from_millis;
        assert!(
            steps
                .iter()
                .any(|s| (ms(3_000)..ms(4_000)).contains(&s.at) && s.signal.overuse),
            "the step is overuse"
        );
        let after: Vec<_> = steps.iter().filter(|s| s.at >= ms(4_000)).collect();
        assert!(
            after
                .iter()
                .any(|s| s.trend > s.threshold_ms && s.signal.queue >= STANDING_QUEUE),
            "the jitter tips the trend with a queue standing"
        );
        let late: Vec<_> = after.iter().filter(|s| s.signal.overuse).collect();
        assert!(late.is_empty(), "jitter read as overuse: {late:?}");
    }

    #[test]
    fn under_jitter_a_queue_that_grows_is_still_confirmed() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = StandingQueue::default();
        // 5 s of 20 ms plus up to 59 ms of jitter (deterministic), nothing growing.
        for i in 0..250u64 {
            q.add(t0 + ms(20 * i), ms(20 * i + 20 + (i * 37) % 60));
            q.settle(false);
        }
        let asked = q.threshold();
        assert!(
            asked > ms(20) && asked <= STANDING_QUEUE + 2 * JITTER_CAP,
            "{asked:?}"
        );
        // Then the queue grows by 4 ms a packet: it passes what is asked within 40 packets.
        let confirmed = (250..290u64).find(|&i| {
            q.add(t0 + ms(20 * i), ms(20 * i + 20 + 4 * (i - 250)));
            q.settle(true) >= q.threshold()
        });
        assert!(
            confirmed.is_some(),
            "a growing queue under jitter, asked {asked:?}"
        );
    }

    #[test]
    fn a_delay_that_steps_up_for_good_becomes_the_base_and_a_growing_queue_does_not() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A packet every 20 ms, `owd` one way; the queue after it.
        let at = |q: &mut StandingQueue, i: u64, owd: u64, growing: bool| {
            q.add(t0 + ms(20 * i), ms(20 * i + owd));
            q.settle(growing)
        };
        // 20 ms for 3 s, then 70 ms for good (a new route).
        let mut q = StandingQueue::default();
        for i in 0..150 {
            assert_eq!(at(&mut q, i, 20, false), Duration::ZERO);
        }
        let (mut standing, mut rebased) = (None, None);
        for i in 150..300 {
            let queue = at(&mut q, i, 70, false);
            if queue == ms(50) && standing.is_none() {
                standing = Some(i);
            }
            if standing.is_some() && rebased.is_none() && queue == Duration::ZERO {
                rebased = Some(i);
            }
            if rebased.is_some() {
                assert_eq!(queue, Duration::ZERO, "at {i}: the base stays");
            }
        }
        let (standing, rebased) = (standing.unwrap(), rebased.unwrap());
        assert!(
            standing <= 153,
            "the step reads as a queue at once: {standing}"
        );
        assert_eq!(rebased - standing, 50, "a second later it is the base");
        // A queue the trend finds growing (2 ms more a packet) stays a queue.
        let mut q = StandingQueue::default();
        for i in 0..50 {
            at(&mut q, i, 20, false);
        }
        let mut queue = Duration::ZERO;
        for i in 50..150 {
            queue = at(&mut q, i, 20 + 2 * (i - 50), true);
        }
        assert!(queue >= ms(190), "{queue:?}");
        // A queue that drains is not the base for long: the least delay falls back.
        for i in 150..200 {
            queue = at(&mut q, i, 20, false);
        }
        assert_eq!(queue, Duration::ZERO);
    }

    /// The feedback builder above agrees with the crate's reader.
    #[test]
    fn feedback_round_trips() {
        let arrivals = [
            Some(Duration::from_millis(1000)),
            None,
            Some(Duration::from_millis(1003)),
        ];
        let acks = convert_twcc(&feedback(7, &arrivals));
        assert_eq!(
            acks,
            vec![
                Acknowledgement::received(7, Some(Duration::from_millis(1000)), Default::default()),
                Acknowledgement::lost(8),
                Acknowledgement::received(9, Some(Duration::from_millis(1003)), Default::default()),
            ]
        );
    }

    /// Runs `secs` of `bps` sent as 1200-byte packets over `link`, feedback every 100 ms;
    /// returns the signals.
    fn run(
        cc: &mut TransportCc,
        link: &mut Link,
        t0: Instant,
        bps: u64,
        secs: u64,
    ) -> Vec<CcSignal> {
        let gap = Duration::from_secs_f64(1200.0 * 8.0 / bps as f64);
        let mut signals = Vec::new();
        let mut pending: Vec<(u16, Option<Instant>)> = Vec::new();
        let mut now = t0;
        let mut next_fb = t0 + Duration::from_millis(100);
        let end = t0 + Duration::from_secs(secs);
        while now < end {
            let seq = cc.on_send(5, 0, 1200, now);
            pending.push((seq, link.send(1200, now)));
            now += gap;
            if now >= next_fb {
                // Report what has arrived by now (and what was lost before the last arrival).
                let upto = pending
                    .iter()
                    .rposition(|(_, a)| a.is_some_and(|a| a <= now));
                if let Some(i) = upto {
                    let batch: Vec<_> = pending.drain(..=i).collect();
                    let arrivals: Vec<_> = batch
                        .iter()
                        .map(|(_, a)| a.map(|a| a - t0 + Duration::from_secs(10)))
                        .collect();
                    if let Some(s) = cc.on_feedback(&feedback(batch[0].0, &arrivals), now) {
                        signals.push(s);
                    }
                }
                next_fb += Duration::from_millis(100);
            }
        }
        signals
    }

    #[test]
    fn a_path_with_room_shows_no_overuse() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(3);
        let mut link = Link::new(2_000_000, 100_000);
        let signals = run(&mut cc, &mut link, t0, 1_000_000, 5);
        assert!(signals.len() > 40, "{}", signals.len());
        assert!(signals.iter().all(|s| !s.overuse && s.lost == 0));
        let rx = signals.last().unwrap().received_bps.unwrap();
        assert!((900_000..1_150_000).contains(&rx), "received {rx}");
    }

    #[test]
    fn sending_past_the_bottleneck_is_overuse_before_any_loss() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(3);
        // 600 kbit/s with a deep queue (1 s worth): no loss for a while, only delay.
        let mut link = Link::new(600_000, 75_000);
        let signals = run(&mut cc, &mut link, t0, 1_000_000, 3);
        let first = signals
            .iter()
            .position(|s| s.overuse)
            .expect("overuse is seen");
        assert!(
            signals[..=first].iter().all(|s| s.lost == 0),
            "seen before a packet is lost"
        );
        assert!(first < 10, "within a second: report {first}");
        let rx = signals[first..]
            .iter()
            .find_map(|s| s.received_bps)
            .unwrap();
        assert!((500_000..700_000).contains(&rx), "received {rx}");
    }

    /// Replayed from a recorded trace (`twcc/halving.cc`: one subscriber of `benches/network.sh
    /// halving`, on the 1.5 Mbit/s top layer in 6-packet frames). At 3 s the relay began
    /// shaping it to 2.5 Mbit/s: each frame's last packet came 22 ms late, and the trend
    /// crossed the threshold, but the queue drained between frames. At 12.96 s the link was
    /// halved to 1.25 Mbit/s and the queue grew by 20 ms every 100 ms.
    #[test]
    fn a_recorded_link_that_fits_is_not_overuse_and_a_halved_one_is() {
        let steps = trace::replay(&trace::Trace::from_compact(include_str!("twcc/halving.cc")));
        assert!(steps.len() > 140, "{}", steps.len());
        let ms = Duration::from_millis;
        let (before, after): (Vec<&trace::Step>, Vec<_>) =
            steps.iter().partition(|s| s.at < ms(12_960));
        assert!(
            before
                .iter()
                .any(|s| s.at > ms(3_000) && s.trend > s.threshold_ms),
            "the shaping step raised the trend past the threshold"
        );
        let early: Vec<_> = before.iter().filter(|s| s.signal.overuse).collect();
        assert!(early.is_empty(), "overuse on a link that fits: {early:?}");
        let first = after
            .iter()
            .find(|s| s.signal.overuse)
            .expect("the halving is overuse");
        assert!(first.at < ms(13_500), "seen at {:?}", first.at);
        assert!(first.signal.lost == 0 && first.signal.queue >= STANDING_QUEUE);
    }

    #[test]
    fn the_slope_of_a_line() {
        let pts: VecDeque<_> = (0..20)
            .map(|i| (f64::from(i) * 10.0, f64::from(i) * 3.0 + 7.0))
            .collect();
        assert!((slope(&pts).unwrap() - 0.3).abs() < 1e-9);
        let flat: VecDeque<_> = (0..3).map(|_| (5.0, 1.0)).collect();
        assert_eq!(slope(&flat), None);
    }

    #[test]
    fn feedback_for_unknown_packets_is_ignored() {
        let mut cc = TransportCc::new(3);
        let fb = feedback(500, &[Some(Duration::from_secs(1))]);
        assert_eq!(cc.on_feedback(&fb, Instant::now()), None);
    }

    #[test]
    fn sequence_numbers_wrap_and_the_history_is_bounded() {
        let t0 = Instant::now();
        let mut cc = TransportCc::new(3);
        let mut last = 0;
        for i in 0..70_000u32 {
            last = cc.on_send(1, i as u16, 100, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(last, (69_999u32 % 65_536) as u16);
        assert!(cc.history.len() <= 3_100, "{}", cc.history.len());
    }
}
