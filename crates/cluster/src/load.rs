//! The node's own load between two heartbeats: rates from counters, and the process's CPU
//! (from `/proc/self/stat` on Linux; `None` elsewhere).

use std::time::Instant;

/// Turns a monotonic counter into a per-second rate between two readings.
#[derive(Debug, Default)]
pub struct Rate {
    last: Option<(Instant, u64)>,
}

impl Rate {
    /// The rate since the previous call (0 at the first).
    pub fn update(&mut self, now: Instant, value: u64) -> u64 {
        let rate = match self.last {
            Some((t, v)) => {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                if dt > 0.0 {
                    (value.saturating_sub(v) as f64 / dt).round() as u64
                } else {
                    0
                }
            }
            None => 0,
        };
        self.last = Some((now, value));
        rate
    }
}

/// CPU used by this process, in percent of one core, between two readings.
#[derive(Debug, Default)]
pub struct Cpu {
    last: Option<(Instant, f64)>,
}

impl Cpu {
    pub fn update(&mut self, now: Instant) -> Option<f32> {
        let secs = process_cpu_seconds()?;
        let pct = self.last.and_then(|(t, s)| {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            (dt > 0.0).then(|| ((secs - s) / dt * 100.0) as f32)
        });
        self.last = Some((now, secs));
        pct
    }
}

/// User + system CPU seconds of this process (Linux, at 100 ticks per second).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu(&stat)
}

fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_between_readings() {
        let t0 = Instant::now();
        let mut r = Rate::default();
        assert_eq!(r.update(t0, 100), 0);
        assert_eq!(r.update(t0 + Duration::from_millis(500), 600), 1000);
        // A counter that went back (a restart) reads as no traffic, not a wrap.
        assert_eq!(r.update(t0 + Duration::from_secs(1), 10), 0);
    }

    #[test]
    fn stat_parsing() {
        let stat = "1234 (confab (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }
}
