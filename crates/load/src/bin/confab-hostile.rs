//! `confab-hostile`: replays the hostile-load probes of issue 12 against a running server,
//! one phase per run, and says whether an honest newcomer can still join and `/healthz`
//! still answers while the attack goes on. Driven by `scripts/soak-hostile.sh`, which
//! samples the server's memory and descriptors around each phase.
//!
//! Phases (all bounded in time and count; loopback only):
//! - `storm`: two attackers send ~45 `publish` a second each, carrying a 59 KB offer of
//!   one audio and 590 receive-only sections (rejoining whenever thrown out), while two
//!   honest participants talk; reports the honest ones' audio packets and largest gap.
//! - `mids`: one connection at a time sends `publish` 40 times a second naming 3,600 new
//!   mids with garbage SDP (reconnecting whenever thrown out).
//! - `idle`: up to 2,000 WebSockets from one address (127.0.0.2) that never join (kept
//!   open, answering pings).
//! - `slowloris`: 1,000 HTTP connections sending one header byte every 10 s.
//! - `halfjoin`: 300 clients join and never answer their subscriber offer.

use clap::Parser;
use confab_load::client::{Client, ClientOptions, Event, MediaPlan, Publish};
use confab_proto::{MediaKind, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "confab-hostile",
    about = "Hostile-load probes against a Confab server"
)]
struct Cli {
    /// storm | mids | idle | slowloris | halfjoin
    phase: String,
    /// The server's HTTP address.
    #[arg(long, default_value = "127.0.0.1:18080")]
    http: String,
    /// How long the attack lasts, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

fn join_msg(room: &str, name: &str) -> Message {
    Message::Text(
        serde_json::json!({"type":"join","protocol":1,"room":room,"name":name})
            .to_string()
            .into(),
    )
}

fn storm_offer(extra: usize) -> String {
    let mids: Vec<String> = (0..=extra).map(|i| i.to_string()).collect();
    let mut sdp = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n\
         a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\n\
         a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
         a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n",
        mids.join(" ")
    );
    for i in 1..=extra {
        sdp.push_str(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{i}\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n"
        ));
    }
    sdp
}

/// Sends `message()` every `every` on fresh joined connections until `until`,
/// reconnecting whenever the server closes one. Returns how often it was closed.
async fn flood(
    ws_url: String,
    room: String,
    name: String,
    every: Duration,
    until: Instant,
    mut message: impl FnMut() -> Message,
) -> u32 {
    let mut closed = 0;
    while Instant::now() < until {
        let Ok((ws, _)) = tokio_tungstenite::connect_async(&ws_url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        if tx.send(join_msg(&room, &name)).await.is_err() {
            continue;
        }
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        let mut tick = tokio::time::interval(every);
        while Instant::now() < until && !reader.is_finished() {
            tick.tick().await;
            if tx.send(message()).await.is_err() {
                break;
            }
        }
        if reader.is_finished() {
            closed += 1;
        }
        reader.abort();
    }
    closed
}

/// The idle attacker's own address (loopback): the caps it meets are per address, and
/// the newcomer who must still get in comes from 127.0.0.1.
const ATTACKER_IP: [u8; 4] = [127, 0, 0, 2];

/// A WebSocket to `ws_url` (at `http`) from `from`.
async fn connect_from(
    from: [u8; 4],
    http: &str,
    ws_url: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>
{
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(from), 0).into())?;
    let stream = socket.connect(http.parse()?).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(ws_url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// Whether a newcomer joins (joined, and its chat channel opens) within 10 s.
async fn newcomer(ws_url: &str) -> bool {
    let attempt = async {
        let mut c = Client::connect(ClientOptions::new(ws_url, "newcomer", "newcomer"))
            .await
            .ok()?;
        c.wait_for(Duration::from_secs(10), "chat open", |e| {
            matches!(e, Event::ChatOpen).then_some(())
        })
        .await
        .ok()?;
        c.leave().await;
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(12), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Whether `/healthz` answers 200 within 5 s.
async fn healthz(http: &str) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(http).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        String::from_utf8_lossy(&out)
            .starts_with("HTTP/1.1 200")
            .then_some(())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Audio packets from others and the largest gap between two, until `until`.
async fn listen(mut c: Client, until: Instant) -> (usize, Duration, bool) {
    let mut last: Option<Instant> = None;
    let (mut n, mut gap, mut removed) = (0, Duration::ZERO, false);
    while Instant::now() < until {
        match c.next_event(until - Instant::now()).await {
            Ok(Event::Rtp {
                kind: MediaKind::Audio,
                ..
            }) => {
                let now = Instant::now();
                if let Some(l) = last {
                    gap = gap.max(now - l);
                }
                last = Some(now);
                n += 1;
            }
            Ok(Event::Server(ServerMessage::Error { fatal: true, .. })) | Ok(Event::Closed) => {
                removed = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    c.leave().await;
    (n, gap, removed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ws_url = format!("ws://{}/ws", cli.http);
    let duration = Duration::from_secs(cli.seconds);
    let start = Instant::now();
    let until = start + duration;
    // The checks run halfway through the attack.
    let check = {
        let (ws_url, http) = (ws_url.clone(), cli.http.clone());
        tokio::spawn(async move {
            tokio::time::sleep(duration / 2).await;
            (newcomer(&ws_url).await, healthz(&http).await)
        })
    };
    let mut report = serde_json::json!({"phase": cli.phase});
    match cli.phase.as_str() {
        "storm" => {
            let mut talkers = Vec::new();
            for name in ["ada", "bob"] {
                let c =
                    Client::connect(ClientOptions::new(&ws_url, "storm", name).publish(Publish {
                        audio: true,
                        video: false,
                        simulcast: false,
                    }))
                    .await?;
                talkers.push(c);
            }
            let pumps: Vec<_> = talkers
                .iter()
                .map(|c| {
                    c.start_media(MediaPlan {
                        video: false,
                        ..MediaPlan::default()
                    })
                })
                .collect();
            let offer = serde_json::json!({"type":"publish","sdp":storm_offer(590),"tracks":[{"mid":"0","source":"microphone"}]}).to_string();
            let attackers: Vec<_> = ["eve", "mallory"]
                .into_iter()
                .map(|n| {
                    let offer = offer.clone();
                    tokio::spawn(flood(
                        ws_url.clone(),
                        "storm".into(),
                        n.into(),
                        Duration::from_millis(22),
                        until,
                        move || Message::Text(offer.clone().into()),
                    ))
                })
                .collect();
            let listens: Vec<_> = talkers
                .into_iter()
                .map(|c| tokio::spawn(listen(c, until)))
                .collect();
            let mut honest = Vec::new();
            for l in listens {
                let (n, gap, removed) = l.await?;
                honest.push(serde_json::json!({"audio_packets": n, "max_gap_ms": gap.as_secs_f64() * 1e3, "removed": removed}));
            }
            let mut thrown_out = 0;
            for a in attackers {
                thrown_out += a.await?;
            }
            drop(pumps);
            report["honest"] = serde_json::json!(honest);
            report["attackers_thrown_out"] = thrown_out.into();
        }
        "mids" => {
            let mut serial = 0u64;
            let thrown_out = flood(
                ws_url.clone(),
                "mids".into(),
                "mallory".into(),
                Duration::from_millis(25),
                until,
                move || {
                    let tracks: Vec<_> = (0..3600)
                        .map(|_| {
                            serial += 1;
                            serde_json::json!({"mid": serial.to_string()})
                        })
                        .collect();
                    Message::Text(
                        serde_json::json!({"type":"publish","sdp":"garbage","tracks":tracks})
                            .to_string()
                            .into(),
                    )
                },
            )
            .await;
            report["thrown_out"] = thrown_out.into();
        }
        "idle" => {
            let mut open = Vec::new();
            let mut refused = 0;
            for _ in 0..2000 {
                if Instant::now() >= until {
                    break;
                }
                match connect_from(ATTACKER_IP, &cli.http, &ws_url).await {
                    Ok(ws) => open.push(ws),
                    Err(_) => refused += 1,
                }
            }
            // Keep them, answering pings, until the end.
            let mut closed_by_server = 0;
            let mut keep = Vec::new();
            for ws in open {
                keep.push(tokio::spawn(async move {
                    let (_tx, mut rx) = ws.split();
                    while let Some(Ok(m)) = rx.next().await {
                        if matches!(m, Message::Close(_)) {
                            return true;
                        }
                    }
                    true
                }));
            }
            tokio::time::sleep_until(until.into()).await;
            let accepted = keep.len();
            for k in keep {
                if k.is_finished() {
                    closed_by_server += 1;
                }
                k.abort();
            }
            report["accepted"] = accepted.into();
            report["refused"] = refused.into();
            report["closed_by_server"] = closed_by_server.into();
        }
        "slowloris" => {
            let mut conns = Vec::new();
            let mut failed = 0;
            for _ in 0..1000 {
                match TcpStream::connect(&cli.http).await {
                    Ok(s) => conns.push(s),
                    Err(_) => failed += 1,
                }
            }
            let opened = conns.len();
            let mut cut = 0;
            // One byte of a request every 10 s on each until the end, or until cut off.
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            let mut alive: Vec<Option<TcpStream>> = conns.into_iter().map(Some).collect();
            let request = b"GET / HTTP/1.1\r\nHost: x\r\n";
            let mut at = 0;
            while Instant::now() < until {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tokio::time::sleep_until(until.into()) => break,
                }
                for s in alive.iter_mut() {
                    if let Some(c) = s
                        && c.write_all(&request[at % request.len()..][..1])
                            .await
                            .is_err()
                    {
                        *s = None;
                        cut += 1;
                    }
                }
                at += 1;
            }
            // A connection the server closed shows on the next write or as EOF.
            for c in alive.iter_mut().flatten() {
                let mut b = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(5), c.read(&mut b)).await
                {
                    cut += 1;
                }
            }
            report["opened"] = opened.into();
            report["connect_failed"] = failed.into();
            report["cut_by_server"] = cut.into();
        }
        "halfjoin" => {
            let mut held = Vec::new();
            let mut joined = 0;
            for i in 0..300 {
                if Instant::now() >= until {
                    break;
                }
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&ws_url).await else {
                    continue;
                };
                if ws
                    .send(join_msg("halfjoin", &format!("h{i}")))
                    .await
                    .is_err()
                {
                    continue;
                }
                joined += 1;
                held.push(tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                }));
            }
            tokio::time::sleep_until(until.into()).await;
            let removed = held.iter().filter(|h| h.is_finished()).count();
            for h in held {
                h.abort();
            }
            report["joined"] = joined.into();
            report["removed_by_server"] = removed.into();
        }
        other => anyhow::bail!("unknown phase {other}"),
    }
    let (newcomer_ok, healthz_ok) = check.await?;
    report["newcomer_joined"] = newcomer_ok.into();
    report["healthz"] = healthz_ok.into();
    report["seconds"] = start.elapsed().as_secs().into();
    println!("{report}");
    Ok(())
}
