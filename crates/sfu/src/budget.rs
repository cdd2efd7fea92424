//! How much media-thread time one participant's signaling may take: a token bucket of
//! time, refilled at a fixed share of a second per second. The worker charges it with
//! what parsing and answering a participant's offers actually cost; a participant whose
//! bucket is empty is refused (`rate_limited`), and one refused too often is removed.
//!
//! Pure: time is passed in, costs are passed in.

use std::time::{Duration, Instant};

/// What the worker does with a participant's next costly request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Refused: the budget is spent. `strikes` counts refusals so far.
    Refuse {
        strikes: u32,
    },
    /// Refused too often: remove the participant.
    Remove,
}

#[derive(Debug, Clone)]
pub struct WorkBudget {
    /// Time left to spend (may go below zero by one request's cost: the cost of a request
    /// is known only after it ran).
    left_us: i64,
    capacity_us: i64,
    refill_us_per_s: i64,
    at: Instant,
    strikes: u32,
    max_strikes: u32,
}

impl WorkBudget {
    /// `per_second` of media-thread time per second, up to `burst` at once; removal after
    /// `max_strikes` refusals.
    pub fn new(now: Instant, per_second: Duration, burst: Duration, max_strikes: u32) -> Self {
        let capacity_us = burst.as_micros().min(i64::MAX as u128) as i64;
        Self {
            left_us: capacity_us,
            capacity_us,
            refill_us_per_s: per_second.as_micros().min(i64::MAX as u128) as i64,
            at: now,
            strikes: 0,
            max_strikes,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at);
        self.at = now;
        let add = (dt.as_micros() as i128 * self.refill_us_per_s as i128 / 1_000_000) as i64;
        self.left_us = self.left_us.saturating_add(add).min(self.capacity_us);
    }

    /// Whether a request may run now.
    pub fn admit(&mut self, now: Instant) -> Admit {
        self.refill(now);
        if self.left_us > 0 {
            return Admit::Yes;
        }
        self.strikes += 1;
        if self.strikes >= self.max_strikes {
            Admit::Remove
        } else {
            Admit::Refuse {
                strikes: self.strikes,
            }
        }
    }

    /// Charges what an admitted request cost.
    pub fn charge(&mut self, cost: Duration) {
        let us = cost.as_micros().min(i64::MAX as u128) as i64;
        self.left_us = self.left_us.saturating_sub(us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn refuses_when_spent_and_refills_with_time() {
        let t0 = Instant::now();
        let mut b = WorkBudget::new(t0, 20 * MS, 100 * MS, 3);
        // A burst of 100 ms is admitted; the request that overdraws it still ran.
        for _ in 0..4 {
            assert_eq!(b.admit(t0), Admit::Yes);
            b.charge(30 * MS);
        }
        assert_eq!(b.admit(t0), Admit::Refuse { strikes: 1 });
        // 20 ms a second: after one second the 20 ms overdraft is paid back, not more.
        assert_eq!(b.admit(t0 + 1000 * MS), Admit::Refuse { strikes: 2 });
        assert_eq!(b.admit(t0 + 1100 * MS), Admit::Yes);
        b.charge(10 * MS);
        // A long pause refills up to the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..4 {
            assert_eq!(b.admit(later), Admit::Yes);
            b.charge(30 * MS);
        }
        assert_eq!(b.admit(later), Admit::Remove);
    }

    #[test]
    fn an_honest_pace_is_never_refused() {
        // One 5 ms offer a second against 20 ms a second: never refused, for an hour.
        let t0 = Instant::now();
        let mut b = WorkBudget::new(t0, 20 * MS, 100 * MS, 3);
        for s in 0..3600u64 {
            assert_eq!(b.admit(t0 + Duration::from_secs(s)), Admit::Yes);
            b.charge(5 * MS);
        }
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = WorkBudget::new(t0, 20 * MS, 100 * MS, 3);
        b.charge(100 * MS);
        assert_eq!(
            b.admit(t0 - Duration::from_secs(5)),
            Admit::Refuse { strikes: 1 }
        );
    }
}
