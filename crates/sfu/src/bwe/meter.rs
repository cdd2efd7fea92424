//! Measuring what a subscriber is sent, and the round trip its reception reports show:
//! the inputs of its estimate ([`super::Bwe`]).

use std::time::{Duration, Instant};

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
