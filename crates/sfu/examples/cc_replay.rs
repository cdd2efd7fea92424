//! Replays a recorded feedback trace through the delay signal and the estimate, printing
//! each feedback packet's reading (see `confab_sfu::twcc::trace`).
//!
//! ```text
//! RUST_LOG=info,confab_cc_trace=trace confab ... > server.log    # record
//! cargo run --release -p confab-sfu --example cc_replay -- server.log           # list connections
//! cargo run --release -p confab-sfu --example cc_replay -- server.log 2         # replay one
//! cargo run --release -p confab-sfu --example cc_replay -- server.log 2 out.cc  # keep it compact
//! cargo run --release -p confab-sfu --example cc_replay -- out.cc               # replay that
//! ```

use confab_sfu::bwe::{Bwe, BweConfig, RateMeter};
use confab_sfu::twcc::trace::{Event, Trace, replay};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        anyhow::bail!("usage: cc_replay <server.log | trace.cc> [connection] [out.cc]");
    };
    let text = std::fs::read_to_string(path)?;
    let trace = if text.contains(confab_sfu::twcc::trace::TARGET) {
        let ids = Trace::connections(&text);
        let Some(id) = args.get(1).and_then(|a| a.parse().ok()) else {
            for id in ids {
                let t = Trace::from_log(&text, id);
                println!("connection {id}: {} events", t.events.len());
            }
            return Ok(());
        };
        Trace::from_log(&text, id)
    } else {
        Trace::from_compact(&text)
    };
    if let Some(out) = args.get(2) {
        std::fs::write(out, trace.to_compact())?;
    }
    if std::env::var_os("DELAYS").is_some() {
        // Each packet's one-way delay (arrival on the receiver's clock less departure; the
        // offset between the clocks is constant), instead of the readings.
        let mut sent = std::collections::HashMap::new();
        for e in &trace.events {
            match e {
                Event::Sent { at, seq, size } => {
                    sent.insert(*seq, (*at, *size));
                }
                Event::Feedback { fb, .. } => {
                    for ack in rtc::interceptor::convert_twcc(fb) {
                        if let (Some((dep, size)), Some(arr)) =
                            (sent.get(&ack.sequence_number), ack.arrival)
                        {
                            println!(
                                "{:.3} {} {size} {:.3}",
                                dep.as_secs_f64() * 1000.0,
                                ack.sequence_number,
                                (arr.as_secs_f64() - dep.as_secs_f64()) * 1000.0
                            );
                        }
                    }
                }
            }
        }
        return Ok(());
    }
    // What was sent over the last second, as the live path measures it for the estimate.
    let t0 = Instant::now();
    let mut sends = trace.events.iter().filter_map(|e| match e {
        Event::Sent { at, size, .. } => Some((*at, *size)),
        Event::Feedback { .. } => None,
    });
    let mut meter = RateMeter::default();
    let mut bwe = Bwe::new(BweConfig::default());
    let mut pending = sends.next();
    for step in replay(&trace) {
        while let Some((at, size)) = pending.filter(|(at, _)| *at <= step.at) {
            meter.add(size, t0 + at);
            pending = sends.next();
        }
        let now = t0 + step.at;
        let sent = meter.rate_bps(now);
        let before = bwe.estimate_bps();
        let after = bwe.on_transport_feedback(step.signal, sent, now);
        let s = step.signal;
        println!(
            "{:>8.3} trend {:>7.2} thr {:>6.2} queue {:>5.1} {} rx {:>5} sent {:>5} lost {}/{} estimate {:>5}{}",
            step.at.as_secs_f64(),
            step.trend,
            step.threshold_ms,
            s.queue.as_secs_f64() * 1000.0,
            if s.overuse {
                "OVER "
            } else if s.underuse {
                "under"
            } else {
                "     "
            },
            s.received_bps.map_or(0, |b| b / 1000),
            sent / 1000,
            s.lost,
            s.reported,
            after / 1000,
            if after < before { " <-" } else { "" },
        );
    }
    Ok(())
}
