//! `confab-load`: joins a running Confab server with simulated participants over the real
//! signaling protocol and real WebRTC, and measures what they receive.
//!
//! ```text
//! confab-load --url ws://127.0.0.1:8080/ws --rooms 1 --publishers 1 --subscribers 50 \
//!             --duration 30 --server-pid $(pgrep -x confab) --json out.json --chart out.svg
//! ```

use anyhow::Context;
use clap::{Parser, ValueEnum};
use confab_load::client::{Client, ClientOptions, MediaPlan, Publish, Pump, RtpSink};
use confab_load::sim::{self, SimControl, SimOptions};
use confab_load::stats::{JoinStats, Percentiles, RecvStats, RecvSummary};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Media {
    /// Audio and video.
    Av,
    Audio,
    Video,
}

#[derive(Parser, Debug, Clone, Serialize)]
#[command(name = "confab-load", about = "Load generator for Confab")]
struct Args {
    /// Signaling URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishing participants per room (they also receive everyone else).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Receive-only participants per room.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// What publishers send.
    #[arg(long, value_enum, default_value = "av")]
    media: Media,
    /// Video bitrate per publisher, kbit/s.
    #[arg(long, default_value_t = 500)]
    video_bitrate: u32,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Publish video as three simulcast layers (q, h, f: 1/8, 1/3 and all of the
    /// bitrate); subscribers ask for the high layer.
    #[arg(long)]
    simulcast: bool,
    /// Measured window, seconds (after the ramp and a 2 s warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Joins per second.
    #[arg(long, default_value_t = 20.0)]
    ramp: f64,
    /// Server process to measure (CPU seconds, RSS).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a chart (SVG) of throughput, server CPU and latency over time.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Room name prefix.
    #[arg(long, default_value = "load")]
    room_prefix: String,
    /// No progress bar (for scripts).
    #[arg(long)]
    quiet: bool,
    /// Client implementation: `sim` (sans-IO, cheap) or `async` (webrtc-rs' async layer).
    #[arg(long, value_enum, default_value = "sim")]
    client: ClientKind,
    /// Generator runtime threads (1 keeps it on one core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Media over ICE-TCP only (no UDP socket), with `--client async`.
    #[arg(long)]
    tcp: bool,
    /// Subscribers send transport-wide congestion control feedback, as browsers do (the
    /// server stamps and records every packet to them), with `--client async`.
    #[arg(long)]
    twcc: bool,
    /// Subscribers take redundant audio (RFC 2198 RED), as browsers do (the server makes
    /// it from the publishers' Opus), with `--client async`.
    #[arg(long)]
    red: bool,
}

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    cpu_s: f64,
    rss_mb: f64,
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn proc_sample(pid: &str, tck: f64) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Some(ProcSample {
        cpu_s: (utime + stime) / tck,
        rss_mb: rss_kb / 1024.0,
    })
}

/// The server's own counters, from `/api/stats`.
#[derive(Debug, Clone, Default)]
struct ServerCounters {
    rtp_out: u64,
    datagrams_out: u64,
    participants: i64,
    timing: confab_sfu::LoopSnapshot,
}

fn server_counters(http: &str) -> Option<ServerCounters> {
    let text = ureq::get(format!("{http}/api/stats"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let body: serde_json::Value = serde_json::from_str(&text).ok()?;
    let m = &body["media"];
    Some(ServerCounters {
        rtp_out: m["rtp_out"].as_u64()?,
        datagrams_out: m["datagrams_out"].as_u64()?,
        participants: m["participants"].as_i64()?,
        timing: serde_json::from_value(body["loop"].clone()).unwrap_or_default(),
    })
}

#[derive(Debug, Clone, Serialize)]
struct Sample {
    t_s: f64,
    rx_pps: f64,
    p99_ms: f64,
    server_cpu_pct: f64,
    server_rss_mb: f64,
    load_cpu_pct: f64,
    server_egress_pps: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    args: Args,
    participants: usize,
    joined: u64,
    failed: u64,
    join_ms: Percentiles,
    window_s: f64,
    sent_packets: u64,
    received: RecvSummary,
    server: Option<ServerReport>,
    load_cpu_pct: f64,
    timeline: Vec<Sample>,
}

#[derive(Debug, Serialize)]
struct ServerReport {
    cpu_s: f64,
    cpu_pct: f64,
    rss_mb_start: f64,
    rss_mb_max: f64,
    rss_mb_per_participant: f64,
    egress_rtp_packets: u64,
    egress_rtp_pps: f64,
    egress_datagrams: u64,
    /// The headline number: forwarded RTP packets per second of server CPU.
    egress_packets_per_cpu_s: f64,
    /// Server-added latency (arrival at the server's socket to the last copy sent), as
    /// measured by the server over the window.
    added_latency_us: Percentiles,
    /// Duration of the media worker's loop passes.
    pass_time_us: Percentiles,
    /// How late the media worker woke after its timers (a descheduled core shows here).
    timer_lag_us: Percentiles,
}

fn pct(l: &confab_sfu::LatencySnapshot) -> Percentiles {
    Percentiles {
        count: l.count,
        p50: l.p50_us,
        p95: l.p95_us,
        p99: l.p99_us,
        max: l.max_us,
    }
}

/// Which client implementation simulates participants.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ClientKind {
    /// The sans-IO participant (`confab_load::sim`): one task per participant, cheap.
    Sim,
    /// The async webrtc-rs client the integration tests use.
    Async,
}

struct Sim {
    client: Client,
    _pump: Option<Pump>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.twcc && args.client != ClientKind::Async {
        anyhow::bail!("--twcc needs --client async");
    }
    if args.red && args.client != ClientKind::Async {
        anyhow::bail!("--red needs --client async");
    }
    if args.tcp && args.client != ClientKind::Async {
        anyhow::bail!("--tcp needs --client async (the sans-IO participant speaks UDP only)");
    }
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let local = tokio::task::LocalSet::new();
    rt.block_on(local.run_until(run(args)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "confab_load=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let http = args
        .url
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1)
        .trim_end_matches("/ws")
        .to_string();
    let tck = clk_tck();
    let server_pid = args.server_pid.map(|p| p.to_string());
    let recv = Arc::new(RecvStats::new());
    let joins = Arc::new(JoinStats::new());
    let (audio, video) = match args.media {
        Media::Av => (true, true),
        Media::Audio => (true, false),
        Media::Video => (false, true),
    };
    let plan = MediaPlan {
        audio,
        video,
        fps: args.fps,
        video_bytes: (args.video_bitrate as usize * 1000 / 8 / args.fps.max(1) as usize).max(40),
        audio_bytes: 100,
        keyframe_every: Duration::from_secs(2),
        // Publishers speak (loudness 67): the server's speaker detector has work to do.
        audio_level: 60,
    };
    // The server's memory before anyone joins, for memory per participant.
    let rss_before = server_pid
        .as_deref()
        .and_then(|p| proc_sample(p, tck))
        .map(|s| s.rss_mb);
    let per_room = args.publishers + args.subscribers;
    let total = args.rooms * per_room;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("joining");

    // Ramp: one join every 1/ramp seconds, all running concurrently.
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(0.1));
    let mut handles = Vec::new();
    let mut light = Vec::new();
    let control = Arc::new(SimControl::default());
    let mut n = 0usize;
    for room in 0..args.rooms {
        for i in 0..per_room {
            let publishing = i < args.publishers;
            let opts = ClientOptions::new(
                args.url.clone(),
                format!("{}-{room}", args.room_prefix),
                format!("{}-{room}-{i}", if publishing { "pub" } else { "sub" }),
            )
            .publish(if publishing {
                Publish {
                    audio,
                    video,
                    simulcast: args.simulcast,
                }
            } else {
                Publish::NONE
            })
            .sink(RtpSink::Stats {
                stats: recv.clone(),
                subscriber: n,
            });
            let opts = if args.tcp { opts.tcp() } else { opts };
            let opts = if args.twcc { opts.twcc() } else { opts };
            let opts = if args.red { opts.red() } else { opts };
            let joins = joins.clone();
            let bar = bar.clone();
            if args.client == ClientKind::Sim {
                let sim = SimOptions {
                    url: opts.url.clone(),
                    room: opts.room.clone(),
                    name: opts.name.clone(),
                    publish: opts.publish,
                    plan,
                    stats: recv.clone(),
                    index: n,
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                let control = control.clone();
                // Peer connections are Send but not Sync: keep each participant's task on
                // this thread.
                light.push(tokio::task::spawn_local(async move {
                    if let Err(e) = sim::run(sim, control, tx).await {
                        tracing::warn!(error = %e, "participant ended");
                    }
                }));
                handles.push(tokio::spawn(async move {
                    match rx.await {
                        Ok(Ok(took)) => joins.joined(took),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "join failed");
                            joins.failed();
                        }
                        Err(_) => joins.failed(),
                    }
                    bar.inc(1);
                    None
                }));
                n += 1;
                tokio::time::sleep(gap).await;
                continue;
            }
            handles.push(tokio::spawn(async move {
                let t = Instant::now();
                match Client::connect(opts).await {
                    Ok(c) => {
                        joins.joined(t.elapsed());
                        bar.inc(1);
                        let pump = publishing.then(|| c.start_media(plan));
                        Some(Sim {
                            client: c,
                            _pump: pump,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "join failed");
                        joins.failed();
                        bar.inc(1);
                        None
                    }
                }
            }));
            n += 1;
            tokio::time::sleep(gap).await;
        }
    }
    let mut sims = Vec::new();
    for h in handles {
        if let Ok(Some(s)) = h.await {
            sims.push(s);
        }
    }

    // Warm-up, then the measured window.
    bar.set_message("warming up");
    tokio::time::sleep(Duration::from_secs(2)).await;
    recv.begin_window();
    let sent0: u64 = sims
        .iter()
        .filter_map(|s| s._pump.as_ref())
        .map(|p| p.sent.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>()
        + control.sent.load(std::sync::atomic::Ordering::Relaxed);
    let self_pid = std::process::id().to_string();
    let srv0 = server_pid.as_deref().and_then(|p| proc_sample(p, tck));
    let load0 = proc_sample(&self_pid, tck).unwrap_or_default();
    let http2 = http.clone();
    let cnt0 = tokio::task::spawn_blocking(move || server_counters(&http2))
        .await
        .ok()
        .flatten();
    let t0 = Instant::now();
    let mut timeline = Vec::new();
    let mut rss_max = srv0.map_or(0.0, |s| s.rss_mb);
    let (mut prev_srv, mut prev_load, mut prev_cnt, mut prev_t) = (srv0, load0, cnt0.clone(), t0);
    bar.set_length(args.duration);
    bar.set_position(0);
    while t0.elapsed() < Duration::from_secs(args.duration) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        let dt = (now - prev_t).as_secs_f64();
        let (pkts, p99) = recv.take_interval();
        let srv = server_pid.as_deref().and_then(|p| proc_sample(p, tck));
        let load = proc_sample(&self_pid, tck).unwrap_or_default();
        let h = http.clone();
        let cnt = tokio::task::spawn_blocking(move || server_counters(&h))
            .await
            .ok()
            .flatten();
        if let Some(s) = srv {
            rss_max = rss_max.max(s.rss_mb);
        }
        let sample = Sample {
            t_s: (now - t0).as_secs_f64(),
            rx_pps: pkts as f64 / dt,
            p99_ms: p99 as f64 / 1000.0,
            server_cpu_pct: match (srv, prev_srv) {
                (Some(a), Some(b)) => 100.0 * (a.cpu_s - b.cpu_s) / dt,
                _ => 0.0,
            },
            server_rss_mb: srv.map_or(0.0, |s| s.rss_mb),
            load_cpu_pct: 100.0 * (load.cpu_s - prev_load.cpu_s) / dt,
            server_egress_pps: match (&cnt, &prev_cnt) {
                (Some(a), Some(b)) => (a.rtp_out - b.rtp_out) as f64 / dt,
                _ => 0.0,
            },
        };
        bar.set_message(format!(
            "rx {:.0} pps, p99 {:.1} ms, server cpu {:.0}%, generator cpu {:.0}%",
            sample.rx_pps, sample.p99_ms, sample.server_cpu_pct, sample.load_cpu_pct
        ));
        bar.inc(1);
        timeline.push(sample);
        (prev_srv, prev_load, prev_cnt, prev_t) = (srv, load, cnt, now);
    }
    let window = t0.elapsed().as_secs_f64();
    let srv1 = server_pid.as_deref().and_then(|p| proc_sample(p, tck));
    let load1 = proc_sample(&self_pid, tck).unwrap_or_default();
    let h = http.clone();
    let cnt1 = tokio::task::spawn_blocking(move || server_counters(&h))
        .await
        .ok()
        .flatten();
    let sent1: u64 = sims
        .iter()
        .filter_map(|s| s._pump.as_ref())
        .map(|p| p.sent.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>()
        + control.sent.load(std::sync::atomic::Ordering::Relaxed);
    // Stop sending, let in-flight packets land, then measure.
    for s in &mut sims {
        s._pump = None;
    }
    // (sim participants stop after the measurement below)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = recv.summary();
    bar.finish_and_clear();
    for s in sims {
        s.client.leave().await;
    }
    control
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for h in light {
        let _ = h.await;
    }

    let (joined, failed, join_ms) = joins.summary();
    let server = match (srv0, srv1) {
        (Some(a), Some(b)) => {
            let cpu = b.cpu_s - a.cpu_s;
            let (rtp, dgrams, lat) = match (&cnt0, &cnt1) {
                (Some(x), Some(y)) => (
                    y.rtp_out - x.rtp_out,
                    y.datagrams_out - x.datagrams_out,
                    (
                        y.timing.forward_latency.since(&x.timing.forward_latency),
                        y.timing.pass_time.since(&x.timing.pass_time),
                        y.timing.timer_lag.since(&x.timing.timer_lag),
                    ),
                ),
                _ => (0, 0, Default::default()),
            };
            let participants = cnt1
                .as_ref()
                .map_or(joined as i64, |c| c.participants)
                .max(1) as f64;
            let rss_start = rss_before.unwrap_or(a.rss_mb);
            Some(ServerReport {
                cpu_s: cpu,
                cpu_pct: 100.0 * cpu / window,
                rss_mb_start: rss_start,
                rss_mb_max: rss_max,
                rss_mb_per_participant: (rss_max - rss_start).max(0.0) / participants,
                egress_rtp_packets: rtp,
                egress_rtp_pps: rtp as f64 / window,
                egress_datagrams: dgrams,
                egress_packets_per_cpu_s: if cpu > 0.0 { rtp as f64 / cpu } else { 0.0 },
                added_latency_us: pct(&lat.0),
                pass_time_us: pct(&lat.1),
                timer_lag_us: pct(&lat.2),
            })
        }
        _ => None,
    };
    let report = Report {
        participants: total,
        joined,
        failed,
        join_ms,
        window_s: window,
        sent_packets: sent1 - sent0,
        received,
        server,
        load_cpu_pct: 100.0 * (load1.cpu_s - load0.cpu_s) / window,
        timeline,
        args: args.clone(),
    };
    print_summary(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        chart(path, &report.timeline).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_summary(r: &Report) {
    let rx = &r.received;
    println!(
        "confab-load: {} rooms x ({} publishers + {} subscribers), {:?}, {:.0} s window",
        r.args.rooms, r.args.publishers, r.args.subscribers, r.args.media, r.window_s
    );
    println!(
        "  joined            {} / {} (failed {}), join p50 {} ms, p95 {} ms",
        r.joined, r.participants, r.failed, r.join_ms.p50, r.join_ms.p95
    );
    println!(
        "  packets           sent {} / received {} ({:.0}/s)",
        r.sent_packets,
        rx.packets,
        rx.packets as f64 / r.window_s
    );
    println!(
        "  loss              {:.3} % ({} of {}), duplicates {}, corrupt {}",
        rx.loss_pct, rx.lost, rx.expected, rx.duplicates, rx.corrupt
    );
    println!(
        "  latency           p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        rx.latency_us.p50 as f64 / 1e3,
        rx.latency_us.p95 as f64 / 1e3,
        rx.latency_us.p99 as f64 / 1e3,
        rx.latency_us.max as f64 / 1e3
    );
    println!(
        "  first video frame p50 {} ms, p95 {} ms, max {} ms",
        rx.ttff_ms.p50, rx.ttff_ms.p95, rx.ttff_ms.max
    );
    if let Some(s) = &r.server {
        println!(
            "  server CPU        {:.2} s ({:.0} % of a core), RSS {:.0} -> {:.0} MB ({:.2} MB/participant)",
            s.cpu_s, s.cpu_pct, s.rss_mb_start, s.rss_mb_max, s.rss_mb_per_participant
        );
        println!(
            "  server egress     {} RTP packets ({:.0}/s) = {:.0} packets per CPU-second",
            s.egress_rtp_packets, s.egress_rtp_pps, s.egress_packets_per_cpu_s
        );
        println!(
            "  server-added latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} packets, measured by the server)",
            s.added_latency_us.p50 as f64 / 1e3,
            s.added_latency_us.p99 as f64 / 1e3,
            s.added_latency_us.max as f64 / 1e3,
            s.added_latency_us.count
        );
        println!(
            "  server loop       pass p50 {} us, p99 {} us, max {} us; timer lag p99 {} us, max {} us",
            s.pass_time_us.p50,
            s.pass_time_us.p99,
            s.pass_time_us.max,
            s.timer_lag_us.p99,
            s.timer_lag_us.max
        );
    }
    println!("  generator CPU     {:.0} % of a core", r.load_cpu_pct);
}

fn chart(path: &PathBuf, t: &[Sample]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((3, 1));
    let xmax = t.last().map_or(1.0, |s| s.t_s).max(1.0);
    type Series<'a> = (&'a str, fn(&Sample) -> f64, RGBColor);
    let series: [Series; 3] = [
        ("received packets/s", |s| s.rx_pps, BLUE),
        ("server CPU % (of one core)", |s| s.server_cpu_pct, RED),
        ("latency p99 (ms)", |s| s.p99_ms, GREEN),
    ];
    for (area, (name, f, color)) in areas.iter().zip(series.iter()) {
        let ymax = t.iter().map(f).fold(1.0f64, f64::max) * 1.1;
        let mut c = ChartBuilder::on(area)
            .caption(*name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
        c.configure_mesh().x_desc("seconds").draw()?;
        c.draw_series(LineSeries::new(t.iter().map(|s| (s.t_s, f(s))), color))?;
    }
    root.present()?;
    Ok(())
}
