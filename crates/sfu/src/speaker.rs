//! Active-speaker detection from the RFC 6464 audio level that publishers put in every
//! audio packet (0 = loudest, 127 = silence, in -dBov).
//!
//! Per participant: an exponentially smoothed loudness; a speaker becomes active above
//! `on` and inactive only after staying below `off` for `hold` (hysteresis, so a pause
//! between words does not drop them). The room's speakers are ordered loudest first, and
//! the list is re-announced only when its membership or its first entry changes, and not
//! more often than `min_interval`: clients highlight the dominant speaker without flicker.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct SpeakerConfig {
    /// Loudness (127 - level) that makes a speaker active.
    pub on: f64,
    /// Loudness below which a speaker starts to become inactive.
    pub off: f64,
    /// How long a speaker stays active below `off`.
    pub hold: Duration,
    /// Smoothing factor per packet (weight of the new sample).
    pub alpha: f64,
    /// Minimum time between two announcements.
    pub min_interval: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            // -dBov 127 - 60 = loudness 67 is speech at a normal distance; silence ~0-20.
            on: 55.0,
            off: 40.0,
            hold: Duration::from_millis(700),
            alpha: 0.15,
            min_interval: Duration::from_millis(300),
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    loudness: f64,
    active: bool,
    below_since: Option<Instant>,
    last_active: Option<Instant>,
}

/// Speakers of one room, keyed by participant.
#[derive(Debug, Clone)]
pub struct SpeakerDetector<K> {
    cfg: SpeakerConfig,
    states: HashMap<K, State>,
    announced: Vec<K>,
    announced_at: Option<Instant>,
}

impl<K: Clone + Eq + Hash + Ord> SpeakerDetector<K> {
    pub fn new(cfg: SpeakerConfig) -> Self {
        Self {
            cfg,
            states: HashMap::new(),
            announced: Vec::new(),
            announced_at: None,
        }
    }

    /// One audio packet's level (0..=127, 127 = silence).
    pub fn level(&mut self, who: &K, level: u8, now: Instant) {
        let loudness = 127.0 - level.min(127) as f64;
        let cfg = self.cfg;
        let s = self.states.entry(who.clone()).or_insert(State {
            loudness: 0.0,
            active: false,
            below_since: None,
            last_active: None,
        });
        s.loudness = s.loudness * (1.0 - cfg.alpha) + loudness * cfg.alpha;
        if s.loudness >= cfg.on {
            s.active = true;
            s.below_since = None;
            s.last_active = Some(now);
        } else if s.active {
            if s.loudness < cfg.off {
                let since = *s.below_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= cfg.hold {
                    s.active = false;
                    s.below_since = None;
                }
            } else {
                s.below_since = None;
                s.last_active = Some(now);
            }
        }
    }

    /// Forgets a participant (left, or its audio track ended).
    pub fn remove(&mut self, who: &K) {
        self.states.remove(who);
    }

    /// When `who` was last heard speaking.
    pub fn last_active(&self, who: &K) -> Option<Instant> {
        self.states.get(who).and_then(|s| s.last_active)
    }

    /// Smoothed loudness, 0..=127.
    pub fn loudness(&self, who: &K) -> f64 {
        self.states.get(who).map_or(0.0, |s| s.loudness)
    }

    /// Active speakers, loudest first.
    pub fn speakers(&self) -> Vec<K> {
        let mut v: Vec<(&K, f64)> = self
            .states
            .iter()
            .filter(|(_, s)| s.active)
            .map(|(k, s)| (k, s.loudness))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v.into_iter().map(|(k, _)| k.clone()).collect()
    }

    /// The list to announce, if it changed in a way worth telling (membership or the
    /// dominant speaker) and `min_interval` passed since the last announcement. Silent
    /// participants who stop sending packets are expired here too.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<K>> {
        // A participant whose audio stopped (muted, DTX) decays to inactive.
        let hold = self.cfg.hold;
        for s in self.states.values_mut() {
            if s.active
                && s.last_active
                    .is_some_and(|t| now.saturating_duration_since(t) >= hold * 2)
            {
                s.active = false;
            }
        }
        if self
            .announced_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.min_interval)
        {
            return None;
        }
        let current = self.speakers();
        let same_members = current.len() == self.announced.len()
            && current.iter().all(|k| self.announced.contains(k));
        let same_first = current.first() == self.announced.first();
        if same_members && same_first {
            return None;
        }
        self.announced = current.clone();
        self.announced_at = Some(now);
        Some(current)
    }
}

/// Reads the audio level from an RFC 6464 extension payload (one byte: V flag, 7-bit level).
pub fn audio_level(ext: &[u8]) -> Option<u8> {
    ext.first().map(|b| b & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        d: &mut SpeakerDetector<u32>,
        who: u32,
        level: u8,
        t0: Instant,
        from_ms: u64,
        to_ms: u64,
    ) {
        let mut t = from_ms;
        while t < to_ms {
            d.level(&who, level, t0 + Duration::from_millis(t));
            t += 20;
        }
    }

    #[test]
    fn speech_activates_and_silence_deactivates_after_hold() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        feed(&mut d, 1, 127, t0, 0, 200); // silence
        assert!(d.speakers().is_empty());
        feed(&mut d, 1, 40, t0, 200, 600); // speech (loudness 87)
        assert_eq!(d.speakers(), vec![1]);
        // A short pause keeps them active...
        feed(&mut d, 1, 127, t0, 600, 900);
        assert_eq!(d.speakers(), vec![1]);
        // ...a long one does not.
        feed(&mut d, 1, 127, t0, 900, 2000);
        assert!(d.speakers().is_empty());
    }

    #[test]
    fn loudest_first_and_announcements_are_rate_limited() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        feed(&mut d, 1, 50, t0, 0, 500);
        feed(&mut d, 2, 20, t0, 0, 500);
        assert_eq!(d.poll(ms(500)), Some(vec![2, 1]));
        // Nothing changed: nothing to announce.
        assert_eq!(d.poll(ms(900)), None);
        // 2 stops talking: the change is announced, but not before min_interval.
        feed(&mut d, 2, 127, t0, 500, 1600);
        feed(&mut d, 1, 50, t0, 500, 1600);
        assert_eq!(d.speakers(), vec![1]);
        assert_eq!(d.poll(ms(1600)), Some(vec![1]));
        feed(&mut d, 2, 10, t0, 1600, 1700);
        assert_eq!(d.poll(ms(1700)), None, "within min_interval");
        assert!(d.poll(ms(1950)).is_some());
    }

    #[test]
    fn a_stream_that_stops_expires() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        feed(&mut d, 7, 30, t0, 0, 500);
        assert_eq!(d.poll(t0 + Duration::from_millis(500)), Some(vec![7]));
        // No packets at all (muted): expired after twice the hold time.
        assert_eq!(d.poll(t0 + Duration::from_millis(3000)), Some(vec![]));
        assert!(d.last_active(&7).is_some());
    }

    #[test]
    fn level_byte() {
        assert_eq!(audio_level(&[0x80 | 30]), Some(30));
        assert_eq!(audio_level(&[127]), Some(127));
        assert_eq!(audio_level(&[]), None);
    }
}
