//! What simulated subscribers measure: packets, bytes, loss and duplicates (from the
//! synthetic payload's index), latency (from its send time), time to first video frame.
//! One lock per packet: fine for a load generator at tens of thousands of packets/s, and
//! the generator reports its own CPU so a saturated generator is never mistaken for a
//! saturated server.

use crate::media::{SynthCodec, read_stamp};
use confab_proto::TrackId;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One stream as one subscriber receives it: a track, or one simulcast layer of it (the
/// synthetic index carries the layer in its top byte, each layer counting on its own).
///
/// A subscriber gets a layer only while the server forwards it, so a layer can stop and
/// start again (a switch, a pause): a jump of more than [`TrackRecv::PAUSE_US`] of send
/// time ends a segment, and what was skipped between segments is not counted as lost. On
/// loopback no loss burst lasts that long.
#[derive(Debug, Default, Clone)]
struct TrackRecv {
    first: u64,
    highest: u64,
    /// Send time of `highest`.
    highest_sent_us: u64,
    /// Expected packets of the segments before the current one.
    closed: u64,
    unique: u64,
    /// Indices seen in the last 4096, to count duplicates.
    window: Vec<u64>,
}

impl TrackRecv {
    const WINDOW: u64 = 4096;
    const PAUSE_US: u64 = 300_000;

    fn new(first: u64) -> Self {
        Self {
            first,
            highest: first,
            highest_sent_us: 0,
            closed: 0,
            unique: 0,
            window: vec![0; (Self::WINDOW / 64) as usize],
        }
    }

    /// Records an index sent at `sent_us`; `false` for a duplicate (or one too old to tell).
    fn record(&mut self, index: u64, sent_us: u64) -> bool {
        if self.unique > 0
            && index > self.highest + 1
            && sent_us > self.highest_sent_us + Self::PAUSE_US
        {
            // Forwarding resumed after a pause or a layer switch: a new segment.
            self.closed += self.highest - self.first + 1;
            self.first = index;
            self.highest = index;
            self.window.iter_mut().for_each(|w| *w = 0);
        }
        if index < self.first || index + Self::WINDOW <= self.highest {
            return false;
        }
        if index >= self.highest {
            self.highest_sent_us = sent_us;
        }
        if index > self.highest {
            // Up to and including `index`: its bit last meant the index WINDOW before it.
            for i in (self.highest + 1)..=index.min(self.highest + Self::WINDOW) {
                let b = i % Self::WINDOW;
                self.window[(b / 64) as usize] &= !(1 << (b % 64));
            }
            self.highest = index;
        }
        let b = index % Self::WINDOW;
        let (w, m) = ((b / 64) as usize, 1u64 << (b % 64));
        if self.window[w] & m != 0 {
            return false;
        }
        self.window[w] |= m;
        self.unique += 1;
        true
    }

    fn expected(&self) -> u64 {
        if self.unique == 0 {
            0
        } else {
            self.closed + self.highest - self.first + 1
        }
    }
}

struct Inner {
    /// By (subscriber, track, simulcast layer).
    tracks: HashMap<(usize, TrackId, u8), TrackRecv>,
    packets: u64,
    bytes: u64,
    duplicates: u64,
    corrupt: u64,
    latency_us: Histogram<u64>,
    /// Latency of the current reporting interval (reset by [`RecvStats::take_interval`]).
    interval_latency_us: Histogram<u64>,
    interval_packets: u64,
    ttff_ms: Histogram<u64>,
}

/// Receive-side measurements shared by all simulated subscribers of a run.
pub struct RecvStats {
    inner: Mutex<Inner>,
}

impl Default for RecvStats {
    fn default() -> Self {
        Self::new()
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// A summary of one run's receive side.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecvSummary {
    pub packets: u64,
    pub bytes: u64,
    pub expected: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    pub corrupt: u64,
    pub latency_us: Percentiles,
    pub ttff_ms: Percentiles,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

impl RecvStats {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                tracks: HashMap::new(),
                packets: 0,
                bytes: 0,
                duplicates: 0,
                corrupt: 0,
                latency_us: hist(),
                interval_latency_us: hist(),
                interval_packets: 0,
                ttff_ms: hist(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one packet received by `subscriber` on `track`.
    pub fn packet(
        &self,
        subscriber: usize,
        track: &TrackId,
        codec: SynthCodec,
        payload: &[u8],
        now_us: u64,
    ) {
        let stamp = read_stamp(codec, payload);
        let mut g = self.lock();
        g.packets += 1;
        g.interval_packets += 1;
        g.bytes += payload.len() as u64;
        let Some(s) = stamp else {
            g.corrupt += 1;
            return;
        };
        if !s.intact {
            g.corrupt += 1;
        }
        let key = (subscriber, track.clone(), (s.index >> 56) as u8);
        let fresh = g
            .tracks
            .entry(key)
            .or_insert_with(|| TrackRecv::new(s.index))
            .record(s.index, s.sent_us);
        if !fresh {
            g.duplicates += 1;
            return;
        }
        let lat = now_us.saturating_sub(s.sent_us).max(1);
        let _ = g.latency_us.record(lat);
        let _ = g.interval_latency_us.record(lat);
    }

    pub fn first_frame(&self, after: Duration) {
        let _ = self.lock().ttff_ms.record(after.as_millis().max(1) as u64);
    }

    /// Starts the measured window: forgets everything received so far (ramp-up).
    pub fn begin_window(&self) {
        let mut g = self.lock();
        g.tracks.clear();
        g.packets = 0;
        g.bytes = 0;
        g.duplicates = 0;
        g.corrupt = 0;
        g.latency_us.reset();
    }

    /// Packets and latency p99 since the last call, for the timeline.
    pub fn take_interval(&self) -> (u64, u64) {
        let mut g = self.lock();
        let p99 = if g.interval_latency_us.is_empty() {
            0
        } else {
            g.interval_latency_us.value_at_quantile(0.99)
        };
        let n = g.interval_packets;
        g.interval_packets = 0;
        g.interval_latency_us.reset();
        (n, p99)
    }

    pub fn summary(&self) -> RecvSummary {
        let g = self.lock();
        let expected: u64 = g.tracks.values().map(TrackRecv::expected).sum();
        let unique: u64 = g.tracks.values().map(|t| t.unique).sum();
        let lost = expected.saturating_sub(unique);
        RecvSummary {
            packets: g.packets,
            bytes: g.bytes,
            expected,
            lost,
            loss_pct: if expected == 0 {
                0.0
            } else {
                100.0 * lost as f64 / expected as f64
            },
            duplicates: g.duplicates,
            corrupt: g.corrupt,
            latency_us: Percentiles::of(&g.latency_us),
            ttff_ms: Percentiles::of(&g.ttff_ms),
        }
    }
}

/// Join timings of simulated participants.
pub struct JoinStats {
    inner: Mutex<(Histogram<u64>, u64, u64)>,
}

impl Default for JoinStats {
    fn default() -> Self {
        Self::new()
    }
}

impl JoinStats {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new((hist(), 0, 0)),
        }
    }
    pub fn joined(&self, took: Duration) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = g.0.record(took.as_millis().max(1) as u64);
        g.1 += 1;
    }
    pub fn failed(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).2 += 1;
    }
    /// (joined, failed, join time percentiles in ms)
    pub fn summary(&self) -> (u64, u64, Percentiles) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.1, g.2, Percentiles::of(&g.0))
    }
}

/// The instant a simulated subscriber started joining, to measure time to first frame.
#[derive(Debug, Clone, Copy)]
pub struct JoinClock(pub Instant);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_duplicates() {
        let mut t = TrackRecv::new(10);
        for i in [10, 11, 13, 13, 14, 12, 12] {
            t.record(i, i * 1000);
        }
        assert_eq!(t.unique, 5);
        assert_eq!(t.expected(), 5);
        let mut t = TrackRecv::new(0);
        for i in [0, 1, 5] {
            assert!(t.record(i, i * 1000));
        }
        assert!(!t.record(1, 1000));
        assert_eq!(t.expected() - t.unique, 3);
    }

    #[test]
    fn a_long_stream_has_no_false_duplicates() {
        // More packets than the duplicate window: each index's bit is reused every 4,096.
        let mut t = TrackRecv::new(0);
        for i in 0..10_000 {
            assert!(t.record(i, i * 1_000), "index {i} taken for a duplicate");
        }
        assert!(!t.record(9_999, 10_000_000));
        assert_eq!((t.unique, t.expected()), (10_000, 10_000));
        // A jump of more than the window, then a late one from before it: too old to tell.
        assert!(t.record(20_000, 10_001_000));
        assert!(!t.record(10_500, 10_002_000));
    }

    #[test]
    fn a_pause_is_not_loss() {
        // 0..10 at 20 ms, then forwarding stops for 2 s (a switch away and back): 100 later.
        let mut t = TrackRecv::new(0);
        for i in 0..10 {
            assert!(t.record(i, i * 20_000));
        }
        for i in 110..120 {
            assert!(t.record(i, i * 20_000));
        }
        assert_eq!((t.unique, t.expected()), (20, 20));
        // A short gap still is loss.
        assert!(t.record(125, 125 * 20_000));
        assert_eq!(t.expected() - t.unique, 5);
    }
}
