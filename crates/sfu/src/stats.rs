//! Counters and timing histograms. Each media worker has its own set, which only it
//! writes (relaxed atomics on cache lines no other core writes), and whoever reports them
//! (metrics, tests) sums the workers' snapshots. Each counter is independent and read
//! approximately.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($(#[$m:meta])* $name:ident / $snap:ident { $($(#[$fm:meta])* $field:ident: $ty:ident),* $(,)? }) => {
        $(#[$m])*
        // Aligned so that two workers' sets never share a cache line.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct $name { $($(#[$fm])* pub $field: $ty,)* }

        /// A point-in-time copy of the counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub struct $snap { $($(#[$fm])* pub $field: i64,)* }

        impl $name {
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Relaxed) as i64,)* }
            }
        }

        impl $snap {
            /// Adds `other`'s counts (another worker's) to these.
            pub fn merge(&mut self, other: &$snap) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

counters!(
    /// Media-plane counters. Gauges are `AtomicI64`, counters `AtomicU64`.
    SfuStats / StatsSnapshot {
        rooms: AtomicI64,
        participants: AtomicI64,
        peer_connections: AtomicI64,
        published_tracks: AtomicI64,
        down_tracks: AtomicI64,
        /// Datagrams received on the media sockets.
        datagrams_in: AtomicU64,
        datagrams_out: AtomicU64,
        bytes_in: AtomicU64,
        bytes_out: AtomicU64,
        /// Datagrams from an address no peer connection knows.
        datagrams_unroutable: AtomicU64,
        /// ICE-TCP connections open now.
        tcp_connections: AtomicI64,
        /// ICE-TCP connections refused or closed early: over the cap, or silent.
        tcp_refused: AtomicU64,
        /// ICE restarts: a connection given new local credentials (the client's offer
        /// restarted, or it asked for the subscriber connection's with `restart_ice`).
        ice_restarts: AtomicU64,
        /// GSO sends (each several datagrams to one destination in one buffer).
        segmented_sends: AtomicU64,
        /// Datagrams the kernel refused to queue (socket buffer full).
        send_drops: AtomicU64,
        rtp_in: AtomicU64,
        rtp_out: AtomicU64,
        rtp_duplicates: AtomicU64,
        /// Audio packets a publisher's uplink lost, restored from the RED packets after them.
        red_restored: AtomicU64,
        /// RED packets from publishers whose headers did not describe them (dropped).
        red_malformed: AtomicU64,
        /// Packets a down-track did not forward (waiting for a keyframe, padding, old).
        rtp_dropped: AtomicU64,
        /// Keyframe requests (PLI/FIR) received from subscribers.
        keyframe_requests_in: AtomicU64,
        /// NACKs from subscribers (answered by the retransmission buffer).
        nacks_in: AtomicU64,
        /// Packets sent again for those NACKs.
        retransmissions: AtomicU64,
        /// Transport-wide congestion control feedback packets from subscribers.
        twcc_feedback_in: AtomicU64,
        /// Times a subscriber's estimate backed off because the queue toward it grew.
        bwe_overuse: AtomicU64,
        /// Probe clusters sent toward subscribers before an upgrade (`crate::probe`), and
        /// those whose feedback measured what the path carried of them.
        bwe_probes: AtomicU64,
        bwe_probes_measured: AtomicU64,
        /// Keyframe requests sent to publishers, after throttling.
        keyframe_requests_out: AtomicU64,
        chat_messages: AtomicU64,
        chat_dropped: AtomicU64,
        /// Signaling events dropped because a client did not read them.
        events_dropped: AtomicU64,
        /// Room events (webhooks) dropped because their consumer was behind.
        room_events_dropped: AtomicU64,
        /// Rooms closed by an internal error (a panic caught in the worker).
        rooms_failed: AtomicU64,
        /// Media workers restarted after a panic escaped every room's isolation.
        workers_restarted: AtomicU64,
        /// Recordings in progress.
        recordings: AtomicI64,
        /// Packets a recording or hook never got (its queue was full).
        recording_dropped: AtomicU64,
        /// RTP payload bytes handed to recordings and hooks.
        recording_bytes: AtomicU64,
        /// Publishes refused because the participant's signaling budget was spent.
        signaling_over_budget: AtomicU64,
        /// Participants removed for not completing their first negotiation in time.
        negotiation_timeouts: AtomicU64,
        /// RTP packets sent to another worker's copy of a room (relays).
        relayed_packets: AtomicU64,
        /// Relay messages dropped because the other worker's link was full.
        relay_dropped: AtomicU64,
    }
);

impl SfuStats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
    pub fn gauge(c: &AtomicI64, delta: i64) {
        c.fetch_add(delta, Relaxed);
    }
}

/// A lock-free latency histogram in microseconds: four buckets per power of two (about 19 %
/// resolution), enough to tell 0.3 ms from 2 ms from 20 ms at a glance and cheap enough to
/// record every forwarded packet.
pub struct LatencyHistogram {
    buckets: [AtomicU64; Self::BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .finish()
    }
}

/// Percentiles of a [`LatencyHistogram`], in microseconds (bucket upper bounds), with the
/// raw bucket counts so that a reader can subtract two snapshots to get a window.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LatencySnapshot {
    pub count: u64,
    pub p50_us: u64,
    #[serde(default)]
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub buckets: Vec<u64>,
}

impl LatencySnapshot {
    /// Percentiles of bucket counts (as in [`LatencySnapshot::buckets`]).
    pub fn from_counts(counts: &[u64]) -> LatencySnapshot {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return LatencySnapshot {
                buckets: counts.to_vec(),
                ..Default::default()
            };
        }
        let at = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return LatencyHistogram::upper(i);
                }
            }
            LatencyHistogram::upper(counts.len().saturating_sub(1))
        };
        let max = counts
            .iter()
            .rposition(|c| *c > 0)
            .map_or(0, LatencyHistogram::upper);
        LatencySnapshot {
            count: total,
            p50_us: at(0.50),
            p95_us: at(0.95),
            p99_us: at(0.99),
            max_us: max,
            buckets: counts.to_vec(),
        }
    }

    /// The latencies of both (two workers' histograms, say).
    pub fn merge(&mut self, other: &LatencySnapshot) {
        let n = self.buckets.len().max(other.buckets.len());
        let counts: Vec<u64> = (0..n)
            .map(|i| {
                self.buckets.get(i).copied().unwrap_or(0)
                    + other.buckets.get(i).copied().unwrap_or(0)
            })
            .collect();
        *self = LatencySnapshot::from_counts(&counts);
    }

    /// The latencies recorded between `earlier` and `self`.
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| c.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        LatencySnapshot::from_counts(&counts)
    }
}

impl LatencyHistogram {
    const BUCKETS: usize = 4 * 40;

    fn index(us: u64) -> usize {
        let v = us.max(1);
        let e = 63 - v.leading_zeros() as usize;
        let sub = if e >= 2 {
            ((v >> (e - 2)) & 3) as usize
        } else {
            0
        };
        (e * 4 + sub).min(Self::BUCKETS - 1)
    }

    /// The largest value that lands in bucket `i`.
    fn upper(i: usize) -> u64 {
        let (e, sub) = (i / 4, (i % 4) as u64);
        if e < 2 {
            return (1u64 << (e + 1)) - 1;
        }
        ((4 + sub + 1) << (e - 2)) - 1
    }

    pub fn record(&self, us: u64) {
        self.buckets[Self::index(us)].fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        LatencySnapshot::from_counts(&counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for v in [
            1u64,
            2,
            3,
            4,
            5,
            7,
            8,
            100,
            999,
            1000,
            1500,
            20_000,
            1 << 30,
        ] {
            let i = LatencyHistogram::index(v);
            assert!(LatencyHistogram::upper(i) >= v, "{v}");
            if i > 0 {
                assert!(LatencyHistogram::upper(i - 1) < v, "{v}");
            }
            // within 25 %
            assert!(
                LatencyHistogram::upper(i) as f64 <= v as f64 * 1.25 + 1.0,
                "{v}"
            );
        }
    }

    /// What two workers counted is reported as one.
    #[test]
    fn workers_snapshots_add_up() {
        let (a, b) = (SfuStats::default(), SfuStats::default());
        SfuStats::add(&a.rtp_out, 3);
        SfuStats::add(&b.rtp_out, 4);
        SfuStats::gauge(&b.rooms, 1);
        let mut sum = StatsSnapshot::default();
        sum.merge(&a.snapshot());
        sum.merge(&b.snapshot());
        assert_eq!((sum.rtp_out, sum.rooms), (7, 1));

        let (x, y) = (LatencyHistogram::default(), LatencyHistogram::default());
        x.record(100);
        for _ in 0..3 {
            y.record(10_000);
        }
        let mut l = LatencySnapshot::default();
        l.merge(&x.snapshot());
        l.merge(&y.snapshot());
        assert_eq!(l.count, 4);
        assert!((10_000..=12_500).contains(&l.p50_us), "{l:?}");
    }

    #[test]
    fn percentiles() {
        let h = LatencyHistogram::default();
        for _ in 0..99 {
            h.record(100);
        }
        h.record(10_000);
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert!((100..=125).contains(&s.p50_us), "{s:?}");
        assert!((100..=125).contains(&s.p99_us), "{s:?}");
        assert!((10_000..=12_500).contains(&s.max_us), "{s:?}");
        h.record(10_000);
        h.record(10_000);
        let w = h.snapshot().since(&s);
        assert_eq!(w.count, 2);
        assert!((10_000..=12_500).contains(&w.p50_us), "{w:?}");
    }
}

/// Timing of the workers' loops: how long packets wait in the server, how long a pass
/// takes, and how late timers fire (a loaded or descheduled worker shows here first).
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Arrival at the socket to the last copy handed to the kernel, per forwarded packet.
    pub forward_latency: LatencyHistogram,
    /// Duration of each pass of a worker loop that did work.
    pub pass_time: LatencyHistogram,
    /// How late the loop woke after a timer deadline.
    pub timer_lag: LatencyHistogram,
    /// Round-trip time to subscribers, from their RTCP receiver reports.
    pub rtt: LatencyHistogram,
    /// A relayed packet's arrival at its home worker's socket to its handling by the copy
    /// of the room on this worker (the relay hop).
    pub relay_hop: LatencyHistogram,
}

/// A copy of [`LoopStats`].
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoopSnapshot {
    pub forward_latency: LatencySnapshot,
    pub pass_time: LatencySnapshot,
    pub timer_lag: LatencySnapshot,
    pub rtt: LatencySnapshot,
    #[serde(default)]
    pub relay_hop: LatencySnapshot,
}

impl LoopSnapshot {
    /// Adds another worker's histograms to these.
    pub fn merge(&mut self, other: &LoopSnapshot) {
        self.forward_latency.merge(&other.forward_latency);
        self.pass_time.merge(&other.pass_time);
        self.timer_lag.merge(&other.timer_lag);
        self.rtt.merge(&other.rtt);
        self.relay_hop.merge(&other.relay_hop);
    }
}

impl LoopStats {
    pub fn snapshot(&self) -> LoopSnapshot {
        LoopSnapshot {
            forward_latency: self.forward_latency.snapshot(),
            pass_time: self.pass_time.snapshot(),
            timer_lag: self.timer_lag.snapshot(),
            rtt: self.rtt.snapshot(),
            relay_hop: self.relay_hop.snapshot(),
        }
    }
}
