//! Active-speaker detection from the RFC 6464 audio level that publishers put in every
//! audio packet (0 = loudest, 127 = silence, in -dBov).
//!
//! Per participant: a loudness smoothed exponentially per 20 ms of audio (a packet after
//! a longer gap, as Opus DTX sends silence, weighs as the frames it stands for); a speaker
//! becomes active above
//! `on` and inactive only after staying below `off` for `hold` (hysteresis, so a pause
//! between words does not drop them). The room's speakers are ranked loudest first, but
//! the ranking is sticky: a speaker who becomes active joins at the end (newcomers among
//! themselves loudest first), and moves ahead of the one ranked just before it only after
//! being louder by `switch_margin` for `switch_hold` without a break. Two people talking
//! equally loud keep their order instead of swapping at every fluctuation. The list is
//! re-announced only when its membership or its first entry changes, and not more often
//! than `min_interval`: clients highlight the dominant speaker without flicker.

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
    /// How much louder (smoothed loudness, in dB) a speaker must be than the one ranked
    /// before it to move ahead...
    pub switch_margin: f64,
    /// ...for this long without a break.
    pub switch_hold: Duration,
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
            // Smoothed levels of two people talking equally loud wander a few dB apart;
            // someone who starts talking over the others is 10-20 dB louder. 300 ms keeps a
            // clear takeover well under a second (about 0.6 s from silence at 20 dB louder).
            switch_margin: 6.0,
            switch_hold: Duration::from_millis(300),
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    loudness: f64,
    active: bool,
    below_since: Option<Instant>,
    last_active: Option<Instant>,
    /// Since when this speaker is louder than the one ranked before it by the margin.
    ahead_since: Option<Instant>,
    /// When its last packet came.
    last_at: Option<Instant>,
}

/// The audio frame the smoothing is counted in: a packet that comes later than this after
/// the one before (Opus DTX sends silence as a packet every 400 ms) weighs as the frames it
/// stands for, so that silence sent sparsely decays the loudness as fast as silence sent
/// in full.
const FRAME: Duration = Duration::from_millis(20);

/// Speakers of one room, keyed by participant.
#[derive(Debug, Clone)]
pub struct SpeakerDetector<K> {
    cfg: SpeakerConfig,
    states: HashMap<K, State>,
    /// The sticky ranking of active speakers, as of the last `poll`.
    order: Vec<K>,
    announced: Vec<K>,
    announced_at: Option<Instant>,
}

impl<K: Clone + Eq + Hash + Ord> SpeakerDetector<K> {
    pub fn new(cfg: SpeakerConfig) -> Self {
        Self {
            cfg,
            states: HashMap::new(),
            order: Vec::new(),
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
            ahead_since: None,
            last_at: None,
        });
        let frames = s.last_at.map_or(1.0, |t| {
            (now.saturating_duration_since(t)
                .min(Duration::from_secs(2))
                .as_secs_f64()
                / FRAME.as_secs_f64())
            .max(1.0)
        });
        s.last_at = Some(now);
        let keep = (1.0 - cfg.alpha).powf(frames);
        s.loudness = s.loudness * keep + loudness * (1.0 - keep);
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
        self.order.retain(|k| k != who);
    }

    /// When `who` was last heard speaking.
    pub fn last_active(&self, who: &K) -> Option<Instant> {
        self.states.get(who).and_then(|s| s.last_active)
    }

    /// Smoothed loudness, 0..=127.
    pub fn loudness(&self, who: &K) -> f64 {
        self.states.get(who).map_or(0.0, |s| s.loudness)
    }

    /// Active speakers, dominant first: the sticky ranking, then those who became active
    /// since the last `poll`, loudest first.
    pub fn speakers(&self) -> Vec<K> {
        let active = |k: &K| self.states.get(k).is_some_and(|s| s.active);
        let mut out: Vec<K> = self.order.iter().filter(|k| active(k)).cloned().collect();
        let mut new: Vec<(&K, f64)> = self
            .states
            .iter()
            .filter(|(k, s)| s.active && !self.order.contains(k))
            .map(|(k, s)| (k, s.loudness))
            .collect();
        new.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        out.extend(new.into_iter().map(|(k, _)| k.clone()));
        out
    }

    /// Updates the sticky ranking: a speaker louder than the one before it by the margin,
    /// continuously for the hold time, moves ahead of every speaker just before it that it
    /// beats by the margin.
    fn rerank(&mut self, now: Instant) {
        self.order = self.speakers();
        for s in self.states.values_mut().filter(|s| !s.active) {
            s.ahead_since = None;
        }
        let (margin, hold) = (self.cfg.switch_margin, self.cfg.switch_hold);
        let loudness =
            |states: &HashMap<K, State>, k: &K| states.get(k).map_or(0.0, |s| s.loudness);
        for j in 1..self.order.len() {
            let me = loudness(&self.states, &self.order[j]);
            let ahead = me > loudness(&self.states, &self.order[j - 1]) + margin;
            let Some(s) = self.states.get_mut(&self.order[j]) else {
                continue;
            };
            if !ahead {
                s.ahead_since = None;
                continue;
            }
            let since = *s.ahead_since.get_or_insert(now);
            if now.saturating_duration_since(since) < hold {
                continue;
            }
            s.ahead_since = None;
            let mut to = j - 1;
            while to > 0 && me > loudness(&self.states, &self.order[to - 1]) + margin {
                to -= 1;
            }
            let k = self.order.remove(j);
            self.order.insert(to, k);
        }
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
        // The ranking moves on every poll, announced or not, so that the hold times run.
        self.rerank(now);
        if self
            .announced_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.min_interval)
        {
            return None;
        }
        let current = self.order.clone();
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

    /// With Opus DTX a speaker who stops talking sends a packet every 400 ms: it stops
    /// being active about as soon as one whose silence comes every 20 ms (per-packet
    /// smoothing kept it active for about 3 s; now about 1.2 s, against 0.8 s).
    #[test]
    fn silence_sent_sparsely_ends_speaking_as_soon() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        for t in (0..600).step_by(20) {
            d.level(&1u32, 20, ms(t));
        }
        assert_eq!(d.speakers(), vec![1]);
        // DTX: silence every 400 ms from 600 ms on.
        let mut t = 600;
        while d.speakers() == vec![1] {
            t += 400;
            d.level(&1u32, 127, ms(t));
            assert!(
                t < 2_000,
                "still speaking {} ms after the talking stopped",
                t - 580
            );
        }
    }

    /// Level of one speaker at `t` ms: `None` sends no packet.
    type Voice = fn(u64) -> Option<u8>;

    /// Speakers 0, 1, ... for `ms` milliseconds, one packet each every 20 ms (staggered),
    /// polled every 100 ms as the worker does: the announcements, with their times (ms).
    fn simulate(voices: &[Voice], ms: u64) -> Vec<(u64, Vec<u32>)> {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut out = Vec::new();
        for t in (0..ms).step_by(5) {
            for (who, voice) in voices.iter().enumerate() {
                if t % 20 == (who as u64 * 5) % 20
                    && let Some(level) = voice(t)
                {
                    d.level(&(who as u32), level, t0 + Duration::from_millis(t));
                }
            }
            if t % 100 == 0
                && let Some(list) = d.poll(t0 + Duration::from_millis(t))
            {
                out.push((t, list));
            }
        }
        out
    }

    /// A deterministic pseudo-random level in `base - spread ..= base + spread`.
    fn jitter(seed: u64, t: u64, base: u8, spread: u8) -> u8 {
        let mut x = (t / 20 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        base - spread + (x % (2 * spread as u64 + 1)) as u8
    }

    #[test]
    fn equally_loud_speakers_keep_their_order() {
        let cases: &[(&str, Voice, Voice)] = &[
            ("steady", |_| Some(50), |_| Some(50)),
            (
                "alternating packets",
                |t| Some(if (t / 20) % 2 == 0 { 40 } else { 60 }),
                |t| Some(if (t / 20) % 2 == 0 { 60 } else { 40 }),
            ),
            (
                "independent jitter of +-10 dB",
                |t| Some(jitter(1, t, 50, 10)),
                |t| Some(jitter(2, t, 50, 10)),
            ),
            (
                "turns 3 dB louder every half second",
                |t| Some(if (t / 500) % 2 == 0 { 47 } else { 50 }),
                |t| Some(if (t / 500) % 2 == 0 { 50 } else { 47 }),
            ),
            (
                "syllables out of phase",
                |t| Some(if t % 300 < 200 { 40 } else { 70 }),
                |t| Some(if (t + 150) % 300 < 200 { 40 } else { 70 }),
            ),
        ];
        for (name, a, b) in cases {
            let got = simulate(&[*a, *b], 10_000);
            let both: Vec<_> = got.iter().filter(|(_, l)| l.len() == 2).collect();
            assert!(!both.is_empty(), "{name}: both speak: {got:?}");
            let firsts: std::collections::BTreeSet<u32> = both.iter().map(|(_, l)| l[0]).collect();
            assert_eq!(
                firsts.len(),
                1,
                "{name}: the dominant speaker flaps: {got:?}"
            );
            assert!(got.len() <= 2, "{name}: announced again and again: {got:?}");
        }
    }

    #[test]
    fn a_clearly_louder_speaker_takes_over() {
        // The bound: the detector's hold time plus the minimum interval between
        // announcements (1 s). Without the margin a takeover took 0-200 ms here, with it
        // 400-600 ms.
        let cfg = SpeakerConfig::default();
        let bound = (cfg.hold + cfg.min_interval).as_millis() as u64;
        let cases: &[(&str, Voice, Voice)] = &[
            (
                "a newcomer 20 dB louder",
                |_| Some(50),
                |t| Some(if t < 3000 { 127 } else { 30 }),
            ),
            (
                "the second of two equal speakers raises their voice by 20 dB",
                |_| Some(50),
                |t| (t >= 500).then_some(if t < 3000 { 50 } else { 30 }),
            ),
            (
                "the second of two jittery speakers gets 15 dB louder",
                |t| Some(jitter(3, t, 55, 8)),
                |t| (t >= 500).then(|| jitter(4, t, if t < 3000 { 55 } else { 40 }, 8)),
            ),
            (
                "the dominant speaker falls silent",
                |t| Some(if t < 3000 { 40 } else { 127 }),
                |t| (t >= 500).then_some(50),
            ),
        ];
        for (name, a, b) in cases {
            let got = simulate(&[*a, *b], 6000);
            // 0 leads before the change...
            let before: Vec<_> = got.iter().filter(|(t, _)| *t < 3000).collect();
            assert_eq!(before.last().map(|(_, l)| l[0]), Some(0), "{name}: {got:?}");
            // ...1 within the bound after it, and for good.
            let (at, _) = got
                .iter()
                .find(|(t, l)| *t >= 3000 && l.first() == Some(&1))
                .unwrap_or_else(|| panic!("{name}: 1 never takes over: {got:?}"));
            assert!(
                *at - 3000 <= bound,
                "{name}: took {} ms (bound {bound} ms): {got:?}",
                at - 3000
            );
            assert!(
                got.iter()
                    .filter(|(t, _)| t > at)
                    .all(|(_, l)| l.first() == Some(&1)),
                "{name}: flips back: {got:?}"
            );
        }
    }

    #[test]
    fn a_louder_speaker_passes_several_at_once() {
        // 0 and 1 talk equally; 2 joins 20 dB louder and goes straight to the top.
        let got = simulate(
            &[|_| Some(50), |_| Some(50), |t| (t >= 2000).then_some(30)],
            4000,
        );
        let (at, list) = got
            .iter()
            .find(|(_, l)| l.first() == Some(&2))
            .unwrap_or_else(|| panic!("2 never leads: {got:?}"));
        assert!(*at <= 3000, "{got:?}");
        assert_eq!(list.len(), 3);
    }

    #[test]
    fn level_byte() {
        assert_eq!(audio_level(&[0x80 | 30]), Some(30));
        assert_eq!(audio_level(&[127]), Some(127));
        assert_eq!(audio_level(&[]), None);
    }
}
