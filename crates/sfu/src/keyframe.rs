//! Keyframe-request throttling: at most one request per publisher track (and layer) per
//! interval, however many subscribers ask. Chromium answers a PLI within ~50 ms; asking
//! more often only costs the publisher bits.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last: Option<Instant>,
}

impl KeyframeThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// Whether a request may go out now; if so, it is recorded as sent.
    pub fn try_request(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut k = KeyframeThrottle::new(ms(500));
        let cases = [
            (0, true),
            (1, false),
            (499, false),
            (500, true),
            (600, false),
            (1000, true),
        ];
        for (at, want) in cases {
            assert_eq!(k.try_request(t0 + ms(at)), want, "at {at} ms");
        }
    }
}
