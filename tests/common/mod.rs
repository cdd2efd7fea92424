//! Shared harness of the integration tests: an in-process server on free ports, and
//! helpers around the Rust client. Waits are on events with deadlines, never sleeps.
#![allow(dead_code)]

use confab::{Config, Server};
use confab_load::client::{Client, ClientOptions, Event, Publish, layer_of_index};
use confab_load::media::{SynthCodec, read_stamp};
use confab_proto::{ClientMessage, MediaKind, ParticipantId, Quality, TrackId};
use std::collections::HashSet;
use std::sync::Once;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(15);

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "confab=warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A test configuration: loopback, free ports, one media worker.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.http.bind = "127.0.0.1:0".parse().unwrap();
    c.media.port = 0;
    c.media.workers = 1;
    c
}

/// [`test_config`] with two media workers and rooms that grow a copy on the second worker
/// past `per_worker` participants (issue 15).
pub fn spread_config(per_worker: usize) -> Config {
    let mut c = test_config();
    c.media.workers = 2;
    c.room.participants_per_worker = per_worker;
    c
}

pub async fn start() -> Server {
    start_with(test_config()).await
}

pub async fn start_with(config: Config) -> Server {
    init_tracing();
    Server::start(config).await.expect("server starts")
}

pub async fn join(server: &Server, room: &str, name: &str, publish: Publish) -> Client {
    Client::connect(ClientOptions::new(server.ws_url(), room, name).publish(publish))
        .await
        .unwrap_or_else(|e| panic!("{name} joins {room}: {e:#}"))
}

/// Waits until `c` received RTP on `n` distinct tracks, returning (track, participant, kind).
pub async fn wait_tracks(c: &mut Client, n: usize) -> Vec<(TrackId, ParticipantId, MediaKind)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while out.len() < n {
        let got = c
            .wait_for(WAIT, "rtp on a new track", |e| match e {
                Event::Rtp {
                    track,
                    participant,
                    kind,
                    ..
                } if !seen.contains(track) => Some((track.clone(), participant.clone(), *kind)),
                _ => None,
            })
            .await
            .unwrap();
        seen.insert(got.0.clone());
        out.push(got);
    }
    out
}

/// Waits for a server message accepted by `f`.
pub async fn wait_server<T>(
    c: &mut Client,
    what: &str,
    mut f: impl FnMut(&confab_proto::ServerMessage) -> Option<T>,
) -> T {
    c.wait_for(WAIT, what, |e| match e {
        Event::Server(m) => f(m),
        _ => None,
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits for an error message with `code`.
pub async fn wait_error(c: &mut Client, code: confab_proto::ErrorCode) -> String {
    wait_server(c, &format!("error {code:?}"), |m| match m {
        confab_proto::ServerMessage::Error {
            code: got, message, ..
        } if *got == code => Some(message.clone()),
        _ => None,
    })
    .await
}

/// Checks a received packet's synthetic payload: it must carry a stamp and be intact.
pub fn assert_intact(kind: MediaKind, packet: &rtc::rtp::Packet) {
    use confab_load::media::{SynthCodec, read_stamp};
    let codec = match kind {
        MediaKind::Audio => SynthCodec::Opus,
        MediaKind::Video => SynthCodec::Vp8,
    };
    let stamp = read_stamp(codec, &packet.payload).unwrap_or_else(|| {
        panic!(
            "packet without a synthetic stamp: {} bytes",
            packet.payload.len()
        )
    });
    assert!(stamp.intact, "payload of packet {} corrupted", stamp.index);
}

/// Consumes `n` RTP packets and returns the set of (track, participant) they came on,
/// checking every payload.
pub async fn sample_rtp(c: &mut Client, n: usize) -> HashSet<(TrackId, ParticipantId)> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let (t, p) = c
            .wait_for(WAIT, "rtp", |e| match e {
                Event::Rtp {
                    track,
                    participant,
                    kind,
                    packet,
                } => {
                    assert_intact(*kind, packet);
                    Some((track.clone(), participant.clone()))
                }
                _ => None,
            })
            .await
            .unwrap();
        seen.insert((t, p));
    }
    seen
}

/// Polls `cond` until it holds, failing after [`WAIT`]. For server-side state that has no
/// event of its own (counters); polling at 10 ms is a wait on a condition, not a sleep.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first video track `c` receives, and the participant it comes from.
pub async fn video_track(c: &mut Client) -> (TrackId, ParticipantId) {
    c.wait_for(WAIT, "video", |e| match e {
        Event::Rtp {
            track,
            participant,
            kind: MediaKind::Video,
            ..
        } => Some((track.clone(), participant.clone())),
        _ => None,
    })
    .await
    .unwrap()
}

/// Waits until `c` receives video on `track` from layer `want`.
pub async fn wait_layer(c: &mut Client, track: &TrackId, want: u8) {
    receive_layer(c, track, want, 1, &format!("layer {want}")).await;
}

/// Waits until `c` received `n` video packets of layer `want` on `track`.
pub async fn receive_layer(c: &mut Client, track: &TrackId, want: u8, n: usize, what: &str) {
    for i in 0..n {
        c.wait_for(
            WAIT,
            &format!("{what} (packet {i} of {n} from layer {want})"),
            |e| match e {
                Event::Rtp {
                    track: t,
                    kind: MediaKind::Video,
                    packet,
                    ..
                } if t == track => read_stamp(SynthCodec::Vp8, &packet.payload)
                    .filter(|s| layer_of_index(s.index) == want)
                    .map(|_| ()),
                _ => None,
            },
        )
        .await
        .unwrap();
    }
}

pub fn subscribe(c: &Client, track: &TrackId, quality: Quality, height: Option<u32>) {
    c.send(&ClientMessage::Subscription {
        track_id: track.clone(),
        subscribed: quality != Quality::Off,
        quality,
        width: None,
        height,
    });
}

/// Records every video packet of `track` that `c` receives while it asks for the low,
/// then the medium, then the high layer (20 packets into each): (sequence number,
/// timestamp, VP8 picture id, layer sent).
pub async fn record_layer_switches(c: &mut Client, track: &TrackId) -> Vec<(u16, u32, u16, u8)> {
    let mut seen: Vec<(u16, u32, u16, u8)> = Vec::new();
    for (quality, layer) in [
        (Quality::Low, 0u8),
        (Quality::Medium, 1),
        (Quality::High, 2),
    ] {
        subscribe(c, track, quality, None);
        loop {
            let (seq, ts, payload) = c
                .wait_for(WAIT, "video", |e| match e {
                    Event::Rtp {
                        track: t,
                        kind: MediaKind::Video,
                        packet,
                        ..
                    } if t == track => Some((
                        packet.header.sequence_number,
                        packet.header.timestamp,
                        packet.payload.clone(),
                    )),
                    _ => None,
                })
                .await
                .unwrap();
            let d = confab_sfu::rtp::codec::Vp8Descriptor::parse(&payload).unwrap();
            let l = layer_of_index(read_stamp(SynthCodec::Vp8, &payload).unwrap().index);
            seen.push((seq, ts, d.picture_id.unwrap().0, l));
            // A few frames into the new layer.
            if seen.iter().rev().take_while(|p| p.3 == layer).count() >= 20 {
                break;
            }
        }
    }
    seen
}

/// What [`record_layer_switches`] saw went through every layer as one stream: sequence
/// numbers without a gap (loopback loses nothing), timestamps never back, picture ids
/// the same frame or the next.
pub fn assert_continuous(seen: &[(u16, u32, u16, u8)]) {
    let layers: Vec<u8> = seen.iter().map(|p| p.3).collect();
    assert!(
        layers.contains(&0) && layers.contains(&1) && layers.contains(&2),
        "{layers:?}"
    );
    for w in seen.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(
            b.0,
            a.0.wrapping_add(1),
            "sequence gap between {a:?} and {b:?}"
        );
        assert!(
            b.1.wrapping_sub(a.1) < u32::MAX / 2,
            "timestamp went back: {a:?} {b:?}"
        );
        let step = b.2.wrapping_sub(a.2) & 0x7fff;
        assert!(step <= 1, "picture id jumped by {step}: {a:?} {b:?}");
    }
}

/// A port free on UDP and TCP on loopback now (for a server setting that cannot be 0).
pub fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
