//! Network profiles (issue 17): one publisher (three simulcast layers and audio) and
//! subscribers behind the impairment relay ([`confab_load::netem`]), whose network follows
//! a profile (a cap, a cap that halves, loss, jitter, a 4G-like trace, keyframes toward 50
//! subscribers on shallow links). It measures what a
//! person would notice: the bitrate received against what the network offered, video
//! freezes, and how long the server took to adapt down and back up.
//!
//! The server must announce the relay's address (`media.announce_ip`) and listen on the
//! port given here:
//!
//! ```text
//! CONFAB_MEDIA__ANNOUNCE_IP=127.0.0.2 CONFAB_MEDIA__WORKERS=1 confab --media-port 50000 &
//! confab-network --url ws://127.0.0.1:8080/ws --media-port 50000 --profile halving --twcc
//! ```
//! `benches/network.sh` runs every profile with and without transport-wide feedback (the
//! delay-based estimate against the loss-only one) and writes docs-ready tables.
//!
//! A freeze is counted as WebRTC's statistics do: a frame that arrives more than
//! max(3 × the mean frame interval, the mean + 150 ms) after the one before it. A frame
//! arrives with its last packet (the RTP marker), retransmissions included.

use clap::{Parser, ValueEnum};
use confab_load::client::{Client, ClientOptions, Event, MediaPlan, Publish, layer_of_index};
use confab_load::media::{SynthCodec, read_stamp};
use confab_load::netem::{Relay, Rule};
use confab_proto::MediaKind;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Profile {
    /// A 1 Mbit/s link (200 ms of queue) throughout: the top layer does not fit.
    Steady,
    /// 2.5 Mbit/s, halved at 10 s for 15 s, then 2.5 Mbit/s again.
    Halving,
    /// 2 % of the packets lost at random, no cap.
    Loss2,
    /// 5 % lost at random, no cap.
    Loss5,
    /// 5 % lost in bursts of 4 on average, no cap.
    Bursty,
    /// 50 ms of delay and up to 100 ms of jitter, order kept, no cap.
    Jitter,
    /// A synthetic 4G-like link: the cap moves every second between 0.6 and 4 Mbit/s
    /// (a fixed walk), 40 ms of delay, 20 ms of jitter, 0.5 % loss, 150 ms of queue.
    Lte,
    /// Keyframes toward many subscribers (50 unless `--subscribers` says otherwise): the
    /// publisher sends one layer, two 40 kB keyframes a second (a high-resolution
    /// keyframe's size), and each subscriber's link is 2.5 Mbit/s with 40 ms of queue
    /// (12.5 kB, a third of a keyframe). A keyframe sent at line rate overflows it; one
    /// paced at the connection's rate does not.
    Keyframes,
}

/// The keyframes profile's link.
const KEYFRAME_LINK_BPS: u64 = 2_500_000;

#[derive(Debug, Parser, Serialize)]
#[command(about = "Confab under network profiles: bitrate, freezes, adaptation")]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// The server's media UDP port (the relay takes it on `--relay-ip`).
    #[arg(long, default_value_t = 50000)]
    media_port: u16,
    /// The address the server announces; the relay listens there.
    #[arg(long, default_value = "127.0.0.2")]
    relay_ip: IpAddr,
    /// Where the subscribers sit (the profile applies to this address).
    #[arg(long, default_value = "127.0.0.3")]
    subscriber_ip: IpAddr,
    #[arg(long, value_enum)]
    profile: Profile,
    /// Subscribers (default: 2, and 50 for the keyframes profile).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Seconds measured.
    #[arg(long, default_value_t = 40)]
    duration: u64,
    /// The publisher's top layer, kbit/s (the others are 1/3 and 1/8 of it).
    #[arg(long, default_value_t = 1500)]
    top_kbps: u64,
    /// Subscribers send transport-wide feedback (the delay-based estimate); without it
    /// the server has their receiver reports' loss only.
    #[arg(long)]
    twcc: bool,
    /// Subscribers take RED audio.
    #[arg(long)]
    red: bool,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    chart: Option<PathBuf>,
}

/// The network at `t` seconds: the rule, and the bandwidth it offers (bit/s; `None`:
/// not limited).
fn network(profile: Profile, ip: IpAddr, t: u64) -> (Rule, Option<u64>) {
    let capped = |bps: u64, queue_ms: u64| Rule {
        rate_bps: Some(bps),
        queue: Some(Duration::from_millis(queue_ms)),
        ..Rule::new(ip)
    };
    match profile {
        Profile::Steady => (capped(1_000_000, 200), Some(1_000_000)),
        Profile::Keyframes => (capped(KEYFRAME_LINK_BPS, 40), Some(KEYFRAME_LINK_BPS)),
        Profile::Halving => {
            let bps = if (10..25).contains(&t) {
                1_250_000
            } else {
                2_500_000
            };
            (capped(bps, 200), Some(bps))
        }
        Profile::Loss2 | Profile::Loss5 | Profile::Bursty => {
            let loss = if profile == Profile::Loss2 {
                0.02
            } else {
                0.05
            };
            let burst = (profile == Profile::Bursty).then_some(4.0);
            let rule = Rule {
                loss,
                burst,
                ..Rule::new(ip)
            };
            (rule, None)
        }
        Profile::Jitter => {
            let rule = Rule {
                delay: Duration::from_millis(50),
                jitter: Duration::from_millis(100),
                ..Rule::new(ip)
            };
            (rule, None)
        }
        Profile::Lte => {
            // A fixed walk, so that every run sees the same trace.
            const STEPS: [u64; 20] = [
                3200, 2600, 1800, 1100, 700, 600, 900, 1500, 2400, 3600, 4000, 3100, 2000, 1300,
                800, 1000, 1700, 2800, 3500, 2200,
            ];
            let bps = STEPS[(t as usize) % STEPS.len()] * 1000;
            let rule = Rule {
                delay: Duration::from_millis(40),
                jitter: Duration::from_millis(20),
                loss: 0.005,
                ..capped(bps, 150)
            };
            (rule, Some(bps))
        }
    }
}

/// What one subscriber received, per 100 ms and per frame.
#[derive(Debug, Default)]
struct Seen {
    /// Bytes received per 100 ms bucket (RTP payload + 12).
    bytes: Vec<u64>,
    /// The highest video layer received per 100 ms bucket.
    layer: Vec<Option<u8>>,
    /// Arrival of each frame's last packet, seconds since the start.
    frames: Vec<f64>,
}

impl Seen {
    fn bucket(&mut self, at: f64) -> usize {
        let i = (at * 10.0) as usize;
        if self.bytes.len() <= i {
            self.bytes.resize(i + 1, 0);
            self.layer.resize(i + 1, None);
        }
        i
    }
}

#[derive(Debug, Serialize)]
struct Second {
    t_s: u64,
    available_kbps: Option<f64>,
    /// Mean over the subscribers.
    received_kbps: f64,
    /// The lowest top layer any subscriber got in that second.
    layer: Option<u8>,
}

#[derive(Debug, Serialize)]
struct Summary {
    profile: Profile,
    twcc: bool,
    red: bool,
    subscribers: usize,
    duration_s: u64,
    mean_received_kbps: f64,
    mean_available_kbps: Option<f64>,
    /// Per subscriber, per minute.
    freezes_per_min: f64,
    freeze_ms_per_min: f64,
    /// Seconds with the top layer, as a share of all subscriber-seconds.
    top_layer_pct: f64,
    /// From the cap's halving until every subscriber's received rate fits it (halving).
    adapt_down_s: Option<f64>,
    /// From the cap's return until every subscriber gets the top layer again (halving).
    adapt_up_s: Option<f64>,
    /// The most bytes a subscriber was sent in any 10 ms during the profile (as the relay
    /// saw them arrive): the median subscriber's and the worst one's.
    peak_10ms_bytes_median: u64,
    peak_10ms_bytes_max: u64,
    seconds: Vec<Second>,
}

fn freezes(frames: &[f64]) -> (usize, f64) {
    let (mut count, mut total) = (0, 0.0);
    let mut recent: std::collections::VecDeque<f64> = Default::default();
    for w in frames.windows(2) {
        let gap = w[1] - w[0];
        if recent.len() >= 10 {
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            if gap > (3.0 * mean).max(mean + 0.150) {
                count += 1;
                total += gap;
            }
        }
        recent.push_back(gap);
        if recent.len() > 30 {
            recent.pop_front();
        }
    }
    (count, total)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = SocketAddr::new([127, 0, 0, 1].into(), args.media_port);
    let relay = Relay::start(
        SocketAddr::new(args.relay_ip, args.media_port),
        server,
        vec![],
    )
    .await
    .map_err(|e| anyhow::anyhow!("the relay cannot listen on the announced address: {e}"))?;
    let room = format!("net-{}", std::process::id());
    let keyframes = args.profile == Profile::Keyframes;
    let publisher = Client::connect(ClientOptions::new(&args.url, &room, "publisher").publish(
        if keyframes {
            Publish::AUDIO_VIDEO
        } else {
            Publish::SIMULCAST
        },
    ))
    .await?;
    let fps = 30;
    let _pump = publisher.start_media(if keyframes {
        MediaPlan {
            fps: 2,
            video_bytes: 40_000,
            keyframe_every: Duration::ZERO,
            ..MediaPlan::default()
        }
    } else {
        MediaPlan {
            fps,
            video_bytes: (args.top_kbps * 1000 / 8 / u64::from(fps)) as usize,
            keyframe_every: Duration::from_secs(10),
            ..MediaPlan::default()
        }
    });
    let subscribers = args.subscribers.unwrap_or(if keyframes { 50 } else { 2 });
    let seen: Vec<Arc<Mutex<Seen>>> = (0..subscribers).map(|_| Default::default()).collect();
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut readers = Vec::new();
    for (i, seen) in seen.iter().enumerate() {
        let mut opts = ClientOptions::new(&args.url, &room, format!("subscriber-{i}"))
            .publish(Publish::NONE)
            .bind_ip(args.subscriber_ip);
        if args.twcc {
            opts = opts.twcc();
        }
        if args.red {
            opts = opts.red();
        }
        let mut c = Client::connect(opts).await?;
        let (seen, start) = (seen.clone(), start.clone());
        readers.push(tokio::spawn(async move {
            // The server's probe clusters are copies of packets already sent (RTX, which
            // the client hands on as the packets they repair): counted once.
            let mut recent = std::collections::VecDeque::new();
            let mut recent_set = std::collections::HashSet::new();
            while let Ok(ev) = c.next_event(Duration::from_secs(3600)).await {
                let Event::Rtp { kind, packet, .. } = ev else {
                    continue;
                };
                let id = (packet.header.ssrc, packet.header.sequence_number);
                if !recent_set.insert(id) {
                    continue;
                }
                recent.push_back(id);
                if recent.len() > 2048
                    && let Some(old) = recent.pop_front()
                {
                    recent_set.remove(&old);
                }
                let Some(t0) = start.get() else { continue };
                let at = t0.elapsed().as_secs_f64();
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                let b = s.bucket(at);
                s.bytes[b] += packet.payload.len() as u64 + 12;
                if kind == MediaKind::Video {
                    if let Some(stamp) = read_stamp(SynthCodec::Vp8, &packet.payload) {
                        let layer = layer_of_index(stamp.index);
                        s.layer[b] = Some(s.layer[b].map_or(layer, |l| l.max(layer)));
                    }
                    if packet.header.marker {
                        s.frames.push(at);
                    }
                }
            }
        }));
    }
    // Everyone receives before the profile starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();
    let _ = start.set(t0);
    let dropped_before = relay
        .stats
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    relay.stats.reset_peaks();
    let mut available = Vec::new();
    for t in 0..args.duration {
        let (rule, bps) = network(args.profile, args.subscriber_ip, t);
        relay.set_rule(rule);
        available.push(bps);
        tokio::time::sleep_until((t0 + Duration::from_secs(t + 1)).into()).await;
    }
    for r in &readers {
        r.abort();
    }
    let seen: Vec<Seen> = seen
        .iter()
        .map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    let mut peaks = relay.stats.peaks_10ms(args.subscriber_ip);
    peaks.sort_unstable();
    let mut summary = summarise(&args, &available, &seen);
    summary.peak_10ms_bytes_median = peaks.get(peaks.len() / 2).copied().unwrap_or(0);
    summary.peak_10ms_bytes_max = peaks.last().copied().unwrap_or(0);
    print(&summary, &relay, dropped_before);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
    }
    if let Some(path) = &args.chart {
        chart(path, &summary)?;
    }
    Ok(())
}

fn summarise(args: &Args, available: &[Option<u64>], seen: &[Seen]) -> Summary {
    let n = seen.len().max(1) as f64;
    let secs = args.duration as usize;
    let per_second = |s: &Seen, t: usize| -> (u64, Option<u8>) {
        let range = t * 10..((t + 1) * 10).min(s.bytes.len());
        let bytes = s.bytes.get(range.clone()).map_or(0, |b| b.iter().sum());
        let layer = s
            .layer
            .get(range)
            .and_then(|l| l.iter().flatten().max().copied());
        (bytes, layer)
    };
    let mut seconds = Vec::new();
    let mut top_seconds = 0usize;
    for t in 0..secs {
        let mut kbps = 0.0;
        let mut lowest: Option<u8> = None;
        for s in seen {
            let (bytes, layer) = per_second(s, t);
            kbps += bytes as f64 * 8.0 / 1000.0 / n;
            if layer == Some(2) {
                top_seconds += 1;
            }
            lowest = match (lowest, layer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        seconds.push(Second {
            t_s: t as u64,
            available_kbps: available
                .get(t)
                .copied()
                .flatten()
                .map(|b| b as f64 / 1000.0),
            received_kbps: kbps,
            layer: lowest,
        });
    }
    let mean = |v: &mut dyn Iterator<Item = f64>| {
        let (sum, count) = v.fold((0.0, 0usize), |(s, c), x| (s + x, c + 1));
        (count > 0).then(|| sum / count as f64)
    };
    let mean_received_kbps = mean(&mut seconds.iter().map(|s| s.received_kbps)).unwrap_or(0.0);
    let mean_available_kbps = mean(&mut seconds.iter().filter_map(|s| s.available_kbps));
    let minutes = args.duration as f64 / 60.0;
    let (count, total) = seen
        .iter()
        .map(|s| freezes(&s.frames))
        .fold((0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let (adapt_down_s, adapt_up_s) = if args.profile == Profile::Halving {
        // Down: the first second after 10 s in which every subscriber received less than
        // the cap; up: the first 100 ms after 25 s in which all had the top layer.
        let down = (10..25).find(|&t| {
            seen.iter()
                .all(|s| (per_second(s, t).0 as f64 * 8.0) < 1_250_000.0)
        });
        let up = (250..secs * 10).find(|&b| {
            seen.iter()
                .all(|s| s.layer.get(b).copied().flatten() == Some(2))
        });
        (
            down.map(|t| (t - 10) as f64 + 1.0),
            up.map(|b| (b as f64 - 250.0) / 10.0 + 0.1),
        )
    } else {
        (None, None)
    };
    Summary {
        profile: args.profile,
        twcc: args.twcc,
        red: args.red,
        subscribers: seen.len(),
        duration_s: args.duration,
        mean_received_kbps,
        mean_available_kbps,
        freezes_per_min: count as f64 / n / minutes,
        freeze_ms_per_min: total * 1000.0 / n / minutes,
        top_layer_pct: 100.0 * top_seconds as f64 / (n * secs.max(1) as f64),
        adapt_down_s,
        adapt_up_s,
        peak_10ms_bytes_median: 0,
        peak_10ms_bytes_max: 0,
        seconds,
    }
}

/// `dropped_before`: what the relay had dropped when the profile began (the subscribers'
/// first second, from the initial estimate).
fn print(s: &Summary, relay: &Relay, dropped_before: u64) {
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.1} {unit}"));
    let dropped = relay
        .stats
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{:?} ({}): received {:.0} kbit/s of {}; {:.1} freezes/min, {:.0} ms frozen/min; top layer {:.0} % of the time; adapt down {}, up {}; relay dropped {} ({} during the profile); most bytes in 10 ms toward a subscriber: {} (median subscriber), {} (worst)",
        s.profile,
        if s.twcc { "delay + loss" } else { "loss only" },
        s.mean_received_kbps,
        opt(s.mean_available_kbps, "kbit/s available"),
        s.freezes_per_min,
        s.freeze_ms_per_min,
        s.top_layer_pct,
        opt(s.adapt_down_s, "s"),
        opt(s.adapt_up_s, "s"),
        dropped,
        dropped - dropped_before,
        s.peak_10ms_bytes_median,
        s.peak_10ms_bytes_max,
    );
}

fn chart(path: &PathBuf, s: &Summary) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = s
        .seconds
        .iter()
        .map(|x| x.received_kbps.max(x.available_kbps.unwrap_or(0.0)))
        .fold(100.0f64, f64::max)
        * 1.1;
    let caption = format!(
        "{:?}, {}: kbit/s received (blue) and available (red)",
        s.profile,
        if s.twcc { "delay + loss" } else { "loss only" }
    );
    let mut c = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..s.duration_s as f64, 0.0..ymax)?;
    c.configure_mesh().x_desc("seconds").draw()?;
    c.draw_series(LineSeries::new(
        s.seconds
            .iter()
            .map(|x| (x.t_s as f64 + 0.5, x.received_kbps)),
        BLUE,
    ))?;
    c.draw_series(LineSeries::new(
        s.seconds
            .iter()
            .filter_map(|x| Some((x.t_s as f64 + 0.5, x.available_kbps?))),
        RED,
    ))?;
    root.present()?;
    Ok(())
}
