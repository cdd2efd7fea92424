//! Downlink bandwidth estimation from the loss a subscriber reports (RTCP receiver
//! reports), as in the loss-based half of GCC (draft-ietf-rmcat-gcc §6): above 10 % loss
//! the estimate drops to what was delivered, below 2 % it grows 8 % per report, in between
//! it holds. It reacts only once loss appears, which is what a link limited by a policer
//! or a full queue produces; a delay-based estimator (transport-wide CC) would react
//! earlier and is the next step.
//!
//! Growth is bounded by what is sent (1.5x: no growing on no evidence), which alone would
//! keep a subscriber that was once moved down on the lower layer for good: the lower layer
//! is all it is sent, so the estimate can never reach the upper one's cost (measured: after
//! a 600 kbit/s cap was lifted, a subscriber stayed on the middle layer). So after
//! [`PROBE_AFTER`] of clean reports the estimate probes upward, 15 % a report up to three
//! times what is sent: the allocator's next upgrade is the probe. A probe that ends in
//! loss doubles the wait before the next one (up to [`PROBE_MAX_WAIT`]); a long clean run
//! resets it.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BweConfig {
    pub initial_bps: u64,
    pub min_bps: u64,
    pub max_bps: u64,
}

impl Default for BweConfig {
    fn default() -> Self {
        Self {
            initial_bps: 3_000_000,
            min_bps: 100_000,
            max_bps: 20_000_000,
        }
    }
}

/// Clean reports for this long before the estimate may grow past what is sent.
pub const PROBE_AFTER: Duration = Duration::from_secs(2);
/// The longest wait between probes (after probes that ended in loss).
pub const PROBE_MAX_WAIT: Duration = Duration::from_secs(30);
/// A drop this soon after probing began counts against the probe.
const PROBE_FAILED_WITHIN: Duration = Duration::from_secs(5);

/// One subscriber's downlink estimate.
#[derive(Debug, Clone)]
pub struct LossBwe {
    cfg: BweConfig,
    estimate: u64,
    last_increase: Option<Instant>,
    /// Since when every report was under 2 % loss.
    clean_since: Option<Instant>,
    /// Clean time needed before probing.
    probe_wait: Duration,
    /// When the estimate last went past what is sent (a probe began).
    probing_since: Option<Instant>,
}

impl LossBwe {
    pub fn new(cfg: BweConfig) -> Self {
        Self {
            cfg,
            estimate: cfg.initial_bps,
            last_increase: None,
            clean_since: None,
            probe_wait: PROBE_AFTER,
            probing_since: None,
        }
    }

    pub fn estimate_bps(&self) -> u64 {
        self.estimate
    }

    /// A receiver report: `fraction_lost` is the RTCP field (0..=255 for 0..100 %) and
    /// `sent_bps` what was sent toward this subscriber over the report's interval.
    pub fn on_report(&mut self, fraction_lost: u8, sent_bps: u64, now: Instant) -> u64 {
        let loss = fraction_lost as f64 / 256.0;
        if loss > 0.10 {
            let delivered = (sent_bps as f64 * (1.0 - 0.5 * loss)) as u64;
            self.estimate = delivered.min(self.estimate).max(self.cfg.min_bps);
            self.clean_since = None;
            if self
                .probing_since
                .is_some_and(|t| now.saturating_duration_since(t) < PROBE_FAILED_WITHIN)
            {
                self.probe_wait = (self.probe_wait * 2).min(PROBE_MAX_WAIT);
            }
            self.probing_since = None;
        } else if loss < 0.02 {
            let clean = now.saturating_duration_since(*self.clean_since.get_or_insert(now));
            if clean >= PROBE_MAX_WAIT {
                self.probe_wait = PROBE_AFTER;
            }
            // At most one increase per 200 ms, however many streams report.
            if self
                .last_increase
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(200))
            {
                // Growing past what is actually sent would be growing on no evidence...
                let ceiling = (sent_bps as f64 * 1.5).max(self.cfg.min_bps as f64) as u64;
                let grown = if clean >= self.probe_wait {
                    // ...unless a clean run says to try: the next upgrade is the probe.
                    let probe_cap = (sent_bps * 3).max(self.cfg.initial_bps);
                    ((self.estimate as f64 * 1.15) as u64).min(probe_cap.max(ceiling))
                } else {
                    ((self.estimate as f64 * 1.08) as u64).min(ceiling)
                };
                let grown = grown.max(self.estimate).min(self.cfg.max_bps);
                if grown > ceiling && self.probing_since.is_none() {
                    self.probing_since = Some(now);
                }
                if grown <= ceiling {
                    self.probing_since = None;
                }
                self.estimate = grown;
                self.last_increase = Some(now);
            }
        } else {
            self.clean_since = None;
        }
        self.estimate
    }
}

/// Bits per second over a sliding window, from byte counts.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    rate_bps: u64,
}

impl RateMeter {
    const WINDOW: Duration = Duration::from_millis(1000);

    pub fn add(&mut self, bytes: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Self::WINDOW {
            self.rate_bps = self.bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64;
            self.bytes = 0;
            self.window_start = Some(now);
        }
        self.bytes += bytes as u64;
    }

    /// The rate over the last complete window (during the first window, the rate so far,
    /// and at least 1 once anything arrived: a stream that just started is available);
    /// 0 once the stream stopped for two windows.
    pub fn rate_bps(&self, now: Instant) -> u64 {
        match self.window_start {
            Some(s) if now.saturating_duration_since(s) < Self::WINDOW * 2 => {
                if self.rate_bps > 0 {
                    self.rate_bps
                } else {
                    let ms = now.saturating_duration_since(s).as_millis().max(100) as u64;
                    (self.bytes * 8 * 1000 / ms).max(1)
                }
            }
            _ => 0,
        }
    }
}

/// The NTP time (RFC 3550: seconds since 1900 in the high 32 bits) of `t`.
pub fn ntp_time(t: std::time::SystemTime) -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    ((d.as_secs() + NTP_UNIX_OFFSET) << 32) | frac
}

/// The round-trip time a reception report shows (RFC 3550 6.4.1): `now` as NTP time,
/// less the report's LSR (middle 32 bits of our last sender report's NTP time) and DLSR
/// (how long the receiver held it), both in 1/65536 s. None without a sender report yet,
/// or for a result that is not plausible (a clock step, a forged report).
pub fn rtt_from_report(now_ntp: u64, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let now = (now_ntp >> 16) as u32;
    let rtt = now.wrapping_sub(lsr).wrapping_sub(dlsr);
    // Above 60 s it is a negative difference that wrapped.
    (rtt < 60 << 16).then(|| Duration::from_micros((u64::from(rtt) * 1_000_000) >> 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_backs_off_and_clean_reports_grow() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut b = LossBwe::new(BweConfig::default());
        assert_eq!(b.estimate_bps(), 3_000_000);
        // 25 % loss while sending 2 Mbps: down to what was delivered (about 1.75 Mbps).
        let e = b.on_report(64, 2_000_000, at(0));
        assert!((1_700_000..=1_800_000).contains(&e), "{e}");
        // 5 % loss: hold.
        assert_eq!(b.on_report(13, 1_500_000, at(1000)), e);
        // No loss: grow 8 % per report, not past 1.5x what is sent.
        let e2 = b.on_report(0, 1_500_000, at(2000));
        assert_eq!(e2, (e as f64 * 1.08) as u64);
        // Two reports within 200 ms count once.
        assert_eq!(b.on_report(0, 1_500_000, at(2100)), e2);
        // Sending 1 Mbps, the estimate (1.89 Mbps) is past 1.5x of it: no growth in the
        // first 2 s of clean reports, then probing, up to 3x what is sent.
        assert_eq!(
            b.on_report(0, 1_000_000, at(3000)),
            e2,
            "clean for 1 s only"
        );
        let mut last = e2;
        for i in 0..50 {
            last = b.on_report(0, 1_000_000, at(4000 + i * 1000));
        }
        assert_eq!(last, 3_000_000, "probed up to 3x of 1 Mbps sent");
    }

    #[test]
    fn a_subscriber_moved_down_probes_back_up() {
        // The measured case: capped, moved to the middle layer (~450 kbit/s sent), then
        // the cap is lifted. Reports every second. The top layer needs about 1.5 Mbit/s.
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut b = LossBwe::new(BweConfig::default());
        let dropped = b.on_report(60, 700_000, at(0));
        assert!(dropped < 700_000);
        let mut s = 1;
        let mut e = dropped;
        while e < 1_500_000 {
            e = b.on_report(0, 450_000, at(s));
            s += 1;
            assert!(s < 30, "stuck at {e}");
        }
        assert!(s <= 12, "1.5 Mbit/s reached after {s} s of clean reports");
    }

    #[test]
    fn failed_probes_wait_longer_each_time() {
        let t0 = Instant::now();
        let mut b = LossBwe::new(BweConfig::default());
        let mut now = t0;
        let mut report = |b: &mut LossBwe, lost: u8, ms: u64| {
            now += Duration::from_millis(ms);
            b.on_report(lost, 450_000, now)
        };
        report(&mut b, 60, 0);
        // Clean until a probe begins, then loss: the next probe waits twice as long.
        let mut waits = Vec::new();
        for _ in 0..3 {
            let mut clean = 0;
            let start = b.estimate_bps();
            while b.estimate_bps() <= (450_000.0 * 1.5) as u64 && b.estimate_bps() >= start {
                report(&mut b, 0, 1000);
                clean += 1;
                assert!(clean < 100);
            }
            waits.push(clean);
            report(&mut b, 60, 1000);
        }
        assert!(waits[1] > waits[0] && waits[2] > waits[1], "{waits:?}");
    }

    #[test]
    fn floor_and_ceiling() {
        let t0 = Instant::now();
        let mut b = LossBwe::new(BweConfig::default());
        assert_eq!(b.on_report(255, 10_000, t0), 100_000);
        let mut b = LossBwe::new(BweConfig {
            max_bps: 3_100_000,
            ..Default::default()
        });
        assert_eq!(b.on_report(0, 10_000_000, t0), 3_100_000);
    }

    #[test]
    fn rate_meter() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..=100 {
            m.add(1250, t0 + Duration::from_millis(i * 10));
        }
        // A stream that just started is available at once.
        let mut fresh = RateMeter::default();
        fresh.add(100, t0);
        assert!(fresh.rate_bps(t0) > 0);
        // 1250 bytes every 10 ms = 1 Mbps
        let r = m.rate_bps(t0 + Duration::from_millis(1000));
        assert!((990_000..=1_010_000).contains(&r), "{r}");
        assert_eq!(m.rate_bps(t0 + Duration::from_secs(5)), 0);
    }

    #[test]
    fn rtt_from_reception_reports() {
        let sent = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lsr = (ntp_time(sent) >> 16) as u32;
        // Held 100 ms by the receiver, answered 130 ms after the report left: 30 ms.
        let now = ntp_time(sent + Duration::from_millis(130));
        let dlsr = (0.100 * 65536.0) as u32;
        let rtt = rtt_from_report(now, lsr, dlsr).unwrap();
        assert!((rtt.as_micros() as i64 - 30_000).abs() < 100, "{rtt:?}");
        // No sender report yet; a report from the future.
        assert_eq!(rtt_from_report(now, 0, 0), None);
        assert_eq!(rtt_from_report(now, lsr, 65536), None);
        // Across the NTP era's 32-bit wrap of the middle bits.
        let lsr = u32::MAX - 10;
        let now = u64::from(20u32) << 16;
        assert_eq!(
            rtt_from_report(now, lsr, 0),
            Some(Duration::from_micros((31 * 1_000_000) >> 16))
        );
    }
}
