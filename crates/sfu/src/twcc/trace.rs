//! Recorded feedback traces: what a subscriber connection sent and the transport-wide
//! feedback it got back, so the delay signal can be replayed offline on what a real path
//! did (draft-ietf-rmcat-gcc tuning is done on traces, not on guesses).
//!
//! Recording costs nothing unless asked for: run the server with
//! `RUST_LOG=info,confab_cc_trace=trace` and every subscriber connection's sends and
//! feedback are logged under that target. [`Trace::from_log`] reads one connection's out
//! of such a log, [`Trace::to_compact`] writes the short form kept as test fixtures
//! (`s <µs> <transport seq> <size>` per packet, `f <µs> <hex>` per feedback packet), and [`replay`] runs
//! a trace through [`TransportCc`] as the live path would, reporting every group the
//! detector judged.

use super::{CcSignal, TransportCc};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::shared::marshal::{Marshal, Unmarshal};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The tracing target the trace is logged under.
pub const TARGET: &str = "confab_cc_trace";

/// The times in a trace are counted from this, the first traced event in the process.
fn epoch(now: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| now)
}

/// A number for each traced connection, so that one log holds many.
pub(super) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn micros(now: Instant) -> u64 {
    now.saturating_duration_since(epoch(now)).as_micros() as u64
}

pub(super) fn sent(cc: u64, seq: u16, size: usize, now: Instant) {
    tracing::trace!(target: TARGET, cc, t_us = micros(now), seq, size, "send");
}

pub(super) fn feedback(cc: u64, fb: &TransportLayerCc, now: Instant) {
    if tracing::enabled!(target: TARGET, tracing::Level::TRACE)
        && let Ok(bytes) = fb.marshal()
    {
        tracing::trace!(target: TARGET, cc, t_us = micros(now), fb = %hex(&bytes), "feedback");
    }
}

/// One recorded event, `at` from the trace's start.
#[derive(Debug, Clone)]
pub enum Event {
    Sent { at: Duration, seq: u16, size: usize },
    Feedback { at: Duration, fb: TransportLayerCc },
}

#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub events: Vec<Event>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn parse_feedback(hex: &str) -> Option<TransportLayerCc> {
    let hex = hex.trim_matches('"');
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let mut buf = bytes::Bytes::from(bytes?);
    TransportLayerCc::unmarshal(&mut buf).ok()
}

impl Trace {
    /// The connections a log holds traces of, in the order they first appear.
    pub fn connections(log: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        for line in log.lines().filter(|l| l.contains(TARGET)) {
            if let Some(id) = field(line, "cc").and_then(|v| v.parse().ok())
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids
    }

    /// Connection `cc`'s events out of a server log (the tracing formatter's `key=value`
    /// fields), times counted from its first.
    pub fn from_log(log: &str, cc: u64) -> Trace {
        let id = cc.to_string();
        let mut events = Vec::new();
        let mut start = None;
        for line in log.lines().filter(|l| l.contains(TARGET)) {
            if field(line, "cc") != Some(id.as_str()) {
                continue;
            }
            let Some(t) = field(line, "t_us").and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            let at = Duration::from_micros(t - *start.get_or_insert(t));
            if let (Some(seq), Some(size)) = (
                field(line, "seq").and_then(|v| v.parse().ok()),
                field(line, "size").and_then(|v| v.parse().ok()),
            ) {
                events.push(Event::Sent { at, seq, size });
            } else if let Some(fb) = field(line, "fb").and_then(parse_feedback) {
                events.push(Event::Feedback { at, fb });
            }
        }
        Trace { events }
    }

    /// The short form kept as a fixture.
    pub fn to_compact(&self) -> String {
        let mut out = String::new();
        for e in &self.events {
            match e {
                Event::Sent { at, seq, size } => {
                    out += &format!("s {} {seq} {size}\n", at.as_micros());
                }
                Event::Feedback { at, fb } => {
                    let hex = fb.marshal().map(|b| hex(&b)).unwrap_or_default();
                    out += &format!("f {} {hex}\n", at.as_micros());
                }
            }
        }
        out
    }

    pub fn from_compact(text: &str) -> Trace {
        let events = text
            .lines()
            .filter_map(|line| {
                let mut w = line.split_whitespace();
                let kind = w.next()?;
                let at = Duration::from_micros(w.next()?.parse().ok()?);
                match kind {
                    "s" => Some(Event::Sent {
                        at,
                        seq: w.next()?.parse().ok()?,
                        size: w.next()?.parse().ok()?,
                    }),
                    "f" => Some(Event::Feedback {
                        at,
                        fb: parse_feedback(w.next()?)?,
                    }),
                    _ => None,
                }
            })
            .collect();
        Trace { events }
    }
}

/// One feedback packet's reading, as the live path made it.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub at: Duration,
    pub signal: CcSignal,
    /// The detector's input (the weighed trend) and threshold after this packet.
    pub trend: f64,
    pub threshold_ms: f64,
}

/// Runs `trace` through a fresh [`TransportCc`]: the sends are numbered as they were,
/// and each feedback packet is read at the time it arrived.
pub fn replay(trace: &Trace) -> Vec<Step> {
    let t0 = Instant::now();
    let mut cc = TransportCc::new(1);
    let mut steps = Vec::new();
    for e in &trace.events {
        match e {
            Event::Sent { at, seq, size } => {
                cc.next_seq = *seq;
                cc.on_send(0, 0, *size, t0 + *at);
            }
            Event::Feedback { at, fb } => {
                if let Some(signal) = cc.on_feedback(fb, t0 + *at) {
                    steps.push(Step {
                        at: *at,
                        signal,
                        trend: cc.trend.last,
                        threshold_ms: cc.detector.threshold_ms(),
                    });
                }
            }
        }
    }
    steps
}
