//! Shared harness of the integration tests: an in-process server on free ports, and
//! helpers around the Rust client. Waits are on events with deadlines, never sleeps.
#![allow(dead_code)]

pub mod relay;

use confab::{Config, Server};
use confab_load::client::{Client, ClientOptions, Event, Publish};
use confab_proto::{MediaKind, ParticipantId, TrackId};
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
