//! A pacer per subscriber connection: forwarded video leaves at a bounded rate, so that a
//! keyframe or a layer switch (tens of packets at once) does not reach the subscriber's
//! bottleneck as one burst at line rate, which a shallow router buffer or a policer drops.
//!
//! A leaky bucket (webrtc-rs' `rtc-interceptor` [`Pacer`]: budget from elapsed time, no
//! clock of its own) at [`PACING_FACTOR`] times the subscriber's estimate (capped by what
//! its allocation sends: `Room::pacing_bps`), as libwebrtc paces at 2.5 times its target:
//! fast enough that the pacer never becomes the bottleneck, slow enough to spread a burst. The bucket holds [`BURST`] worth of the rate, so a frame
//! of a few packets still leaves at once. Audio is never held (it is small and late audio
//! is worse than late video): it is sent at once and spends the budget like the rest.
//!
//! Nothing waits more than [`MAX_WAIT`]: past it, the oldest is released whatever the
//! budget (an estimate far below what is sent would otherwise grow the queue without
//! bound). Items are released in order. Generic over what is queued; no IO.

use rtc::interceptor::Pacer as Bucket;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Pacing rate over the estimate.
pub const PACING_FACTOR: f64 = 2.5;
/// The bucket holds this much time at the pacing rate.
pub const BURST: Duration = Duration::from_millis(10);
/// No packet waits longer than this.
pub const MAX_WAIT: Duration = Duration::from_millis(250);
/// Past this many waiting, what comes is sent at once (a bound on memory).
pub const MAX_QUEUED: usize = 2048;
/// The pacing rate never goes below this (a burst of a small estimate's stream still
/// leaves within a few frames).
pub const MIN_RATE_BPS: f64 = 500_000.0;

/// What to do with an item handed to the pacer.
#[derive(Debug, PartialEq, Eq)]
pub enum Paced<T> {
    /// Send it now.
    Now(T),
    /// It waits: ask [`PacedQueue::next_release`] when.
    Queued,
}

/// One connection's pacer.
#[derive(Debug)]
pub struct PacedQueue<T> {
    bucket: Bucket,
    /// Items waiting, their size in bits and when they came.
    queue: VecDeque<(T, f64, Instant)>,
}

impl<T> PacedQueue<T> {
    /// A pacer for a subscriber whose estimate is `estimate_bps`.
    pub fn new(estimate_bps: u64) -> Self {
        let rate = pacing_rate(estimate_bps);
        Self {
            bucket: Bucket::new(rate).with_burst_bits(rate * BURST.as_secs_f64()),
            queue: VecDeque::new(),
        }
    }

    /// The subscriber's estimate changed.
    pub fn set_estimate(&mut self, estimate_bps: u64) {
        let rate = pacing_rate(estimate_bps);
        if (rate - self.bucket.target_bitrate()).abs() < 1.0 {
            return;
        }
        // The burst follows the rate (a burst set on the bucket would stay as it was).
        let budget = self.bucket.budget_bits();
        self.bucket = Bucket::new(rate).with_burst_bits(rate * BURST.as_secs_f64());
        if budget < self.bucket.budget_bits() {
            self.bucket.consume(self.bucket.budget_bits() - budget);
        }
    }

    /// The rate items leave at, in bits per second.
    pub fn rate_bps(&self) -> u64 {
        self.bucket.target_bitrate() as u64
    }

    /// An item of `bytes` to send; `urgent` ones (audio) are never held.
    pub fn push(&mut self, item: T, bytes: usize, urgent: bool, now: Instant) -> Paced<T> {
        let bits = bytes as f64 * 8.0;
        self.bucket.refill(now);
        if urgent || self.queue.len() >= MAX_QUEUED {
            self.bucket.consume(bits);
            return Paced::Now(item);
        }
        if self.queue.is_empty() && self.bucket.can_afford(bits) {
            self.bucket.consume(bits);
            return Paced::Now(item);
        }
        self.queue.push_back((item, bits, now));
        Paced::Queued
    }

    /// The next item due by `now`, if any.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        let &(_, bits, since) = self.queue.front()?;
        self.bucket.refill(now);
        let overdue = now.saturating_duration_since(since) >= MAX_WAIT;
        if !overdue && !self.bucket.can_afford(bits) {
            return None;
        }
        self.bucket.consume(bits);
        self.queue.pop_front().map(|(item, _, _)| item)
    }

    /// When the first waiting item is due (`None` when nothing waits).
    pub fn next_release(&self) -> Option<Instant> {
        let &(_, bits, since) = self.queue.front()?;
        let deadline = since + MAX_WAIT;
        Some(
            self.bucket
                .affordable_at(bits)
                .map_or(deadline, |t| t.min(deadline)),
        )
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

fn pacing_rate(estimate_bps: u64) -> f64 {
    (estimate_bps as f64 * PACING_FACTOR).max(MIN_RATE_BPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Releases everything pushed at `t0` by polling every millisecond; returns when each
    /// item left, in ms after `t0`.
    fn drain(p: &mut PacedQueue<u32>, t0: Instant, first: Vec<(u32, u64)>) -> Vec<(u32, u64)> {
        let mut out = first;
        let mut ms = 0;
        while !p.is_empty() {
            let now = t0 + Duration::from_millis(ms);
            if let Some(at) = p.next_release() {
                assert!(at >= t0, "due times are not in the past of the queue");
            }
            while let Some(i) = p.pop(now) {
                out.push((i, ms));
            }
            ms += 1;
            assert!(ms < 10_000);
        }
        out
    }

    /// A keyframe of 50 packets of 1,200 bytes (480 kbit) to a subscriber estimated at 2
    /// Mbit/s: paced at 5 Mbit/s, it leaves over about 96 ms instead of at once, in order,
    /// and no 10 ms holds more than the rate allows plus one bucket.
    #[test]
    fn a_keyframe_leaves_at_the_pacing_rate() {
        let t0 = Instant::now();
        let mut p = PacedQueue::new(2_000_000);
        assert_eq!(p.rate_bps(), 5_000_000);
        let mut now_sent = Vec::new();
        for i in 0..50 {
            if let Paced::Now(i) = p.push(i, 1200, false, t0) {
                now_sent.push((i, 0));
            }
        }
        assert!(
            now_sent.len() < 10,
            "only a bucket's worth at once: {}",
            now_sent.len()
        );
        let sent = drain(&mut p, t0, now_sent);
        assert_eq!(
            sent.iter().map(|s| s.0).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>(),
            "in order"
        );
        let last = sent.last().unwrap().1;
        assert!((80..=110).contains(&last), "last left after {last} ms");
        for w in 0..last {
            let bytes: u64 = sent.iter().filter(|s| s.1 >= w && s.1 < w + 10).count() as u64 * 1200;
            assert!(
                bytes * 8 <= 5_000_000 / 100 + 50_000 + 9_600,
                "{bytes} bytes in the 10 ms from {w}"
            );
        }
    }

    /// Audio goes at once even behind a queue, and spends the budget.
    #[test]
    fn audio_is_never_held() {
        let t0 = Instant::now();
        let mut p = PacedQueue::new(1_000_000);
        for i in 0..20 {
            p.push(i, 1200, false, t0);
        }
        assert!(!p.is_empty());
        assert_eq!(p.push(99, 100, true, t0), Paced::Now(99));
    }

    /// An estimate far below what is sent does not hold anything past the deadline.
    #[test]
    fn nothing_waits_past_the_deadline() {
        let t0 = Instant::now();
        let mut p = PacedQueue::new(100_000);
        let queued = (0..200)
            .filter(|&i| p.push(i, 1200, false, t0) == Paced::Queued)
            .count();
        assert!(queued > 190);
        let due = p.next_release().unwrap();
        assert!(due <= t0 + MAX_WAIT);
        let mut n = 0;
        while p.pop(t0 + MAX_WAIT).is_some() {
            n += 1;
        }
        assert_eq!(n, queued, "every overdue one leaves at the deadline");
    }

    /// Below the burst, with nothing waiting, packets are not delayed at all.
    #[test]
    fn an_idle_pacer_adds_no_delay() {
        let t0 = Instant::now();
        let mut p = PacedQueue::new(3_000_000);
        for ms in 0..100u64 {
            // One 1,000-byte packet every 2 ms: 4 Mbit/s, under the 7.5 Mbit/s rate.
            let now = t0 + Duration::from_millis(ms * 2);
            assert_eq!(p.push(ms, 1000, false, now), Paced::Now(ms));
        }
    }

    #[test]
    fn the_rate_follows_the_estimate_with_a_floor() {
        let mut p: PacedQueue<()> = PacedQueue::new(3_000_000);
        assert_eq!(p.rate_bps(), 7_500_000);
        p.set_estimate(100_000);
        assert_eq!(p.rate_bps(), 500_000);
    }
}
