//! Each subscriber's downlink estimate, the budget the allocator shares out.
//!
//! Two signals feed it, as in GCC (draft-ietf-rmcat-gcc):
//! - **Delay**, when the subscriber sends transport-wide congestion control feedback
//!   (Chromium does once it is negotiated): [`crate::twcc::TransportCc`] turns each feedback
//!   packet into a [`CcSignal`]. A growing queue (overuse) drops the estimate to 85 % of what
//!   the subscriber is receiving, before a bottleneck's buffer overflows; a draining one
//!   holds it. The loss the feedback shows is the loss signal.
//! - **Loss** only, from receiver reports, for a subscriber that sends no such feedback.
//!   While feedback flows, receiver reports are not used (they would count the same loss
//!   twice, late).
//!
//! The loss rule (§6): above 10 % loss the estimate drops to what was delivered, below 2 %
//! it grows 8 % per 200 ms, in between it holds.
//!
//! Growth is bounded by what is sent (1.5x: no growing on no evidence), which alone would
//! keep a subscriber that was once moved down on the lower layer for good: the lower layer
//! is all it is sent, so the estimate can never reach the upper one's cost (measured: after
//! a 600 kbit/s cap was lifted, a subscriber stayed on the middle layer). So after
//! [`PROBE_AFTER`] of clean reports, when the allocator wants more than the estimate
//! ([`Bwe::set_wanted`]), the estimate probes upward:
//! - **With the delay signal**, it asks for a probe cluster ([`crate::probe`]: 50 ms at
//!   [`PROBE_HEADROOM`] times what is wanted, RTX copies of packets already sent) and takes
//!   what the path carried of it as the estimate. The upgrade follows only a probe the path
//!   carried; one it did not costs a few packets' queue, not a keyframe and a layer's loss.
//! - **Without it** (or when a cluster cannot be sent or measured: no RTX negotiated,
//!   nothing to copy), the estimate grows 15 % a report up to three times what is sent,
//!   and the allocator's next upgrade is the probe.
//!
//! A probe that raised the estimate by a fifth or more is followed by the next one
//! [`PROBE_AGAIN`] later. A probe that falls short, or ends in overuse or loss, doubles the
//! wait before the next one
//! (up to [`PROBE_MAX_WAIT_CLUSTER`] with probe clusters; without them up to
//! [`PROBE_MAX_WAIT`], or [`PROBE_MAX_WAIT_DELAY`] with the delay signal, which catches an
//! upgrade that does not fit before it costs much loss); a long clean run resets it.

use crate::twcc::CcSignal;
use std::time::{Duration, Instant};

mod meter;
pub use meter::{RateMeter, ntp_time, rtt_from_report};

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
/// The same with the delay signal: a link that widens is found within this.
pub const PROBE_MAX_WAIT_DELAY: Duration = Duration::from_secs(8);
/// The same with probe clusters ([`crate::probe`]), which cost a link that cannot carry
/// them a few packets' queue rather than a layer's loss: probed more often.
pub const PROBE_MAX_WAIT_CLUSTER: Duration = Duration::from_secs(4);
/// A drop this soon after probing began counts against the probe.
const PROBE_FAILED_WITHIN: Duration = Duration::from_secs(5);
/// A probe cluster is sent at this multiple of what the allocator wants: an upgrade needs
/// 20 % headroom over its cost ([`crate::allocator`]).
pub const PROBE_HEADROOM: f64 = 1.25;
/// A probe cluster is sent at no more than this multiple of the estimate.
const PROBE_STEP: u64 = 2;
/// A cluster that carried at least this fraction of its rate reached it.
const PROBE_REACHED: f64 = 0.9;
/// A cluster that carried this multiple of the estimate before it raised it enough to
/// probe again after [`PROBE_AGAIN`] (libwebrtc probes further when a probe carried 70 %
/// of its rate; here the measure is the estimate's rise, since a cluster's rate is often
/// what is wanted rather than twice the estimate).
const PROBE_RAISED: f64 = 1.2;
const PROBE_AGAIN: Duration = Duration::from_millis(300);
/// A probe asked for that has no outcome after this long was never sent (or its feedback
/// never came): the next growth is the upgrade itself.
const PROBE_ANSWER: Duration = Duration::from_millis(1500);

/// Transport-wide feedback is the signal while some arrived this recently.
const FEEDBACK_FRESH: Duration = Duration::from_secs(2);
/// Loss in transport-wide feedback is judged over at least this many packets and this
/// long (or [`LOSS_PERIOD`], however few). A shorter window reads random loss as
/// congestion: at 5 % random loss, 200 ms of a 1.5 Mbit/s layer (30 packets) lose more
/// than 10 % about one time in 16 (binomial arithmetic, not measured), and each time
/// the estimate fell (`benches/network.sh loss5`: 239 kbit/s received of a 1.5 Mbit/s
/// layer that the path carried).
const LOSS_SAMPLE: u32 = 50;
const LOSS_SAMPLE_TIME: Duration = Duration::from_secs(1);
/// On overuse the estimate drops to this fraction of what is received.
const OVERUSE_BACKOFF: f64 = 0.85;
/// One back-off on overuse per this long: the queue takes a while to drain after it, and
/// the detector says overuse until it does (libwebrtc waits a round trip and 100 ms).
const OVERUSE_INTERVAL: Duration = Duration::from_millis(300);
/// Loss reported this soon after a back-off is the queue that caused it (already acted on).
const LOSS_AFTER_BACKOFF: Duration = Duration::from_secs(1);
/// Loss in transport-wide feedback is judged at least this often, however few packets.
const LOSS_PERIOD: Duration = Duration::from_secs(2);

/// Which signal moved the estimate last (shown to operators and in the client's stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signal {
    /// Nothing yet: the initial guess.
    #[default]
    Initial,
    /// Receiver reports' loss.
    Loss,
    /// Transport-wide feedback: delay and loss.
    Delay,
}

/// One subscriber's downlink estimate.
#[derive(Debug, Clone)]
pub struct Bwe {
    cfg: BweConfig,
    estimate: u64,
    last_increase: Option<Instant>,
    /// Since when every report was under 2 % loss.
    clean_since: Option<Instant>,
    /// Clean time needed before probing.
    probe_wait: Duration,
    /// When the estimate last went past what is sent (a probe began), and what was sent
    /// then (the path carried it).
    probing_since: Option<Instant>,
    probe_base: u64,
    /// When transport-wide feedback last arrived.
    feedback_at: Option<Instant>,
    /// Transport-wide feedback's packets reported and lost, not judged yet, and since when.
    sample: (u32, u32),
    sample_since: Option<Instant>,
    last_backoff: Option<Instant>,
    signal: Signal,
    /// What the allocator would send with no limit (0: not known yet).
    wanted: u64,
    /// A probe cluster asked for (when, and its rate), until its outcome; and the request,
    /// until the connection takes it.
    probe: Option<(Instant, u64)>,
    probe_request: Option<u64>,
    /// The last probe had no outcome: grow the old way until the next back-off.
    probe_fallback: bool,
}

impl Bwe {
    pub fn new(cfg: BweConfig) -> Self {
        Self {
            cfg,
            estimate: cfg.initial_bps,
            last_increase: None,
            clean_since: None,
            probe_wait: PROBE_AFTER,
            probing_since: None,
            probe_base: 0,
            feedback_at: None,
            sample: (0, 0),
            sample_since: None,
            last_backoff: None,
            signal: Signal::Initial,
            wanted: 0,
            probe: None,
            probe_request: None,
            probe_fallback: false,
        }
    }

    /// What the allocator would send this subscriber with no limit on its bandwidth, when
    /// that is more than the estimate lets it send (0 otherwise): a probe is asked for
    /// only then.
    pub fn set_wanted(&mut self, bps: u64) {
        self.wanted = bps;
    }

    /// A probe cluster to send now, at this rate, if one was asked for (once).
    pub fn take_probe(&mut self) -> Option<u64> {
        self.probe_request.take()
    }

    pub fn estimate_bps(&self) -> u64 {
        self.estimate
    }

    /// What moved the estimate last.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// A receiver report: `fraction_lost` is the RTCP field (0..=255 for 0..100 %) and
    /// `sent_bps` what was sent toward this subscriber over the report's interval. Ignored
    /// while transport-wide feedback flows.
    pub fn on_report(&mut self, fraction_lost: u8, sent_bps: u64, now: Instant) -> u64 {
        if self
            .feedback_at
            .is_some_and(|t| now.saturating_duration_since(t) < FEEDBACK_FRESH)
        {
            return self.estimate;
        }
        self.signal = Signal::Loss;
        self.on_loss(fraction_lost as f64 / 256.0, sent_bps, now)
    }

    /// Transport-wide feedback, read by [`crate::twcc::TransportCc`]; `sent_bps` as for
    /// [`Bwe::on_report`].
    pub fn on_transport_feedback(&mut self, s: CcSignal, sent_bps: u64, now: Instant) -> u64 {
        self.feedback_at = Some(now);
        self.signal = Signal::Delay;
        self.sample.0 += s.reported;
        self.sample.1 += s.lost;
        let since = *self.sample_since.get_or_insert(now);
        if let Some(outcome) = s.probe {
            self.probe_outcome(outcome, s.overuse, sent_bps, now);
        }
        if s.overuse {
            // The queue grows: back off below what actually gets through, once per
            // interval (it says so until the queue has drained).
            if let Some(received) = s.received_bps
                && self
                    .last_backoff
                    .is_none_or(|t| now.saturating_duration_since(t) >= OVERUSE_INTERVAL)
            {
                let mut target = (received as f64 * OVERUSE_BACKOFF) as u64;
                if self
                    .probing_since
                    .is_some_and(|t| now.saturating_duration_since(t) < PROBE_FAILED_WITHIN)
                {
                    // A probe that did not fit falls back to what flowed before it (what
                    // is received lags the probe by up to its window).
                    target = target.max(self.probe_base);
                }
                self.estimate = target.min(self.estimate).max(self.cfg.min_bps);
                self.last_backoff = Some(now);
            }
            self.backed_off(now);
            return self.estimate;
        }
        let age = now.saturating_duration_since(since);
        if (self.sample.0 >= LOSS_SAMPLE && age >= LOSS_SAMPLE_TIME)
            || (self.sample.0 > 0 && age >= LOSS_PERIOD)
        {
            self.sample_since = Some(now);
            let (reported, lost) = std::mem::take(&mut self.sample);
            let loss = f64::from(lost) / f64::from(reported);
            if loss > 0.10 {
                if self
                    .last_backoff
                    .is_some_and(|t| now.saturating_duration_since(t) < LOSS_AFTER_BACKOFF)
                {
                    // Lost to the queue that made the last back-off: counted already.
                    return self.estimate;
                }
                return self.on_loss(loss, sent_bps, now);
            }
        }
        if s.underuse || self.sample.1 * 10 > self.sample.0 {
            // The queue drains (what is sent now fits: hold until it is empty), or the loss
            // so far is over 10 % (judged once the sample is complete).
            return self.estimate;
        }
        // Loss up to 10 % while the delay shows no queue is not congestion (a radio link, a
        // lossy hop): the estimate grows as on a clean path, at the loss rule's pace (once
        // per 200 ms), not once per judged sample (a second: a probe then took several
        // seconds to reach the next layer). Without the delay signal, the loss rule's
        // 2-10 % hold stays: one spurious decrease under steady random loss was then never
        // undone (`benches/network.sh loss5`).
        self.on_loss(0.0, sent_bps, now)
    }

    /// A probe cluster's feedback came back: the estimate rises to what the path carried
    /// (unless the queue grows right now).
    fn probe_outcome(
        &mut self,
        outcome: crate::probe::Outcome,
        overuse: bool,
        sent_bps: u64,
        now: Instant,
    ) {
        let Some((_, target)) = self.probe.take() else {
            return;
        };
        // The wait before the next probe counts from this one.
        self.clean_since = Some(now);
        let crate::probe::Outcome::Carried(bps) = outcome else {
            self.probe_fallback = true;
            return;
        };
        let bps = bps.min(self.cfg.max_bps);
        let before = self.estimate;
        if !overuse && bps > self.estimate {
            self.estimate = bps;
            self.last_increase = Some(now);
            // An upgrade that then does not fit falls back to what flowed before.
            self.probing_since = Some(now);
            self.probe_base = sent_bps;
        }
        self.probe_wait = if !overuse && bps as f64 >= before as f64 * PROBE_RAISED {
            // The path is wider than the estimate was: the next cluster follows at once
            // (a link that widened is climbed in steps a round trip apart, not seconds).
            PROBE_AGAIN
        } else if (bps as f64) < target as f64 * PROBE_REACHED {
            self.longer_wait(PROBE_MAX_WAIT_CLUSTER)
        } else {
            PROBE_AFTER
        };
    }

    /// Asks for a probe cluster when more is wanted than the estimate; a probe asked for
    /// that never had an outcome turns to the old way (the upgrade is the probe).
    fn ask_probe(&mut self, sent_bps: u64, now: Instant) {
        if let Some((at, _)) = self.probe {
            if now.saturating_duration_since(at) >= PROBE_ANSWER {
                self.probe = None;
                self.probe_request = None;
                self.probe_fallback = true;
            }
            return;
        }
        // At most twice the estimate: a cluster far above what a path carries would queue
        // more than a router holds (a wide path is found in steps, [`PROBE_AFTER`] apart).
        // The wanted rate may be below the estimate and still not fit: upgrades need
        // headroom. The probe then asks for more than the estimate all the same.
        let cap = (self.estimate * PROBE_STEP).min(self.cfg.max_bps);
        let target = ((self.wanted as f64 * PROBE_HEADROOM) as u64)
            .max((self.estimate as f64 * PROBE_HEADROOM) as u64)
            .min(cap);
        if self.wanted == 0 || target <= self.estimate {
            return;
        }
        self.probe = Some((now, target));
        self.probe_request = Some(target);
        // A cluster that makes the queue grow backs off to what flowed before it.
        self.probing_since = Some(now);
        self.probe_base = sent_bps;
    }

    /// The wait after a probe that failed: twice the last, up to `max` (from
    /// [`PROBE_AFTER`] when the last was the short one after a probe that raised the
    /// estimate).
    fn longer_wait(&self, max: Duration) -> Duration {
        (self.probe_wait.max(PROBE_AFTER) * 2).min(max)
    }

    /// The estimate fell: the next probe waits longer if this one failed.
    fn backed_off(&mut self, now: Instant) {
        self.clean_since = None;
        if self
            .probing_since
            .is_some_and(|t| now.saturating_duration_since(t) < PROBE_FAILED_WITHIN)
        {
            let max = match (self.signal, self.probe_fallback) {
                (Signal::Delay, false) => PROBE_MAX_WAIT_CLUSTER,
                (Signal::Delay, true) => PROBE_MAX_WAIT_DELAY,
                _ => PROBE_MAX_WAIT,
            };
            self.probe_wait = self.longer_wait(max);
        }
        self.probe_fallback = false;
        self.probing_since = None;
    }

    /// The loss rule, with `loss` a fraction.
    fn on_loss(&mut self, loss: f64, sent_bps: u64, now: Instant) -> u64 {
        if loss > 0.10 {
            let delivered = (sent_bps as f64 * (1.0 - 0.5 * loss)) as u64;
            self.estimate = delivered.min(self.estimate).max(self.cfg.min_bps);
            self.last_backoff = Some(now);
            self.backed_off(now);
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
                let probes = self.signal == Signal::Delay && !self.probe_fallback;
                let grown = if clean >= self.probe_wait && !probes {
                    // ...unless a clean run says to try: the next upgrade is the probe.
                    let probe_cap = (sent_bps * 3).max(self.cfg.initial_bps);
                    ((self.estimate as f64 * 1.15) as u64).min(probe_cap.max(ceiling))
                } else {
                    if clean >= self.probe_wait {
                        // ...or, with the delay signal, a probe cluster tries it first.
                        self.ask_probe(sent_bps, now);
                    }
                    ((self.estimate as f64 * 1.08) as u64).min(ceiling)
                };
                let grown = grown.max(self.estimate).min(self.cfg.max_bps);
                if grown > ceiling && grown > self.estimate && self.probing_since.is_none() {
                    self.probing_since = Some(now);
                    self.probe_base = sent_bps;
                }
                if grown <= ceiling && self.probe.is_none() {
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

#[cfg(test)]
mod tests;
