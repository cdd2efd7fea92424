//! Operations: recordings that ordinary tools read (checked with ffprobe), the RTP forwarder
//! feeding a real ffmpeg, webhooks (order, signatures, retries), Prometheus metrics and the
//! admin API (with and without its key).

mod common;

use common::*;
use confab_load::client::{Event, MediaPlan, Publish};
use confab_proto::{ErrorCode, ServerMessage};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const KEY: &str = "test-admin-key";

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A blocking HTTP call on the blocking pool: (status, body).
async fn http(
    method: &'static str,
    url: String,
    key: Option<&'static str>,
    body: Option<&'static str>,
) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = key.map(|k| format!("Bearer {k}"));
        let resp = match method {
            "GET" => {
                let mut r = agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            "DELETE" => {
                let mut r = agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = agent.post(&url).header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.unwrap_or(""))
            }
        };
        let mut resp = resp.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, text)
    })
    .await
    .unwrap()
}

/// ffprobe's view of a media file: (codec name, duration in seconds).
fn ffprobe(path: &Path) -> (String, f64) {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed (scripts/test.sh installs Debian's ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codec = v["streams"][0]["codec_name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codec, duration)
}

fn recording_config(dir: &Path) -> confab::Config {
    let mut c = test_config();
    c.admin.api_key = KEY.into();
    c.recording.dir = dir.to_path_buf();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_plays_in_ffprobe_and_has_a_manifest() {
    let dir = scratch_dir("recording");
    let server = start_with(recording_config(&dir)).await;
    let a = join(&server, "rec", "alice", Publish::AUDIO_VIDEO).await;
    let _pump = a.start_media(MediaPlan::default());
    wait_until(|| server.sfu.stats().published_tracks == 2).await;
    let url = format!("{}/api/rooms/rec/recording", server.url());
    let (status, body) = http("POST", url.clone(), Some(KEY), None).await;
    assert_eq!(status, 201, "{body}");
    // A second start is refused.
    assert_eq!(http("POST", url.clone(), Some(KEY), None).await.0, 409);
    // Record about four seconds of media: wait for the packets, not for the clock.
    let t0 = Instant::now();
    let base = server.sfu.stats().rtp_in;
    wait_until(|| server.sfu.stats().rtp_in - base >= 4 * 80).await;
    let (status, body) = http("DELETE", url.clone(), Some(KEY), None).await;
    let recorded = t0.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let manifest_path = PathBuf::from(reply["manifest"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{manifest}");
    let rec_dir = manifest_path.parent().unwrap();
    let mut codecs = Vec::new();
    for f in files {
        assert_eq!(f["participant_id"], a.id.as_str());
        assert!(f["start_unix_ms"].as_i64().unwrap() > 1_700_000_000_000);
        let (codec, duration) = ffprobe(&rec_dir.join(f["path"].as_str().unwrap()));
        // Within 10 % of the time recorded (plus the first keyframe's wait for video).
        assert!(
            (duration - recorded).abs() <= recorded * 0.10 + 0.3,
            "{codec}: {duration:.2} s recorded for {recorded:.2} s"
        );
        codecs.push(codec);
    }
    codecs.sort();
    assert_eq!(codecs, ["opus", "vp8"]);
    assert_eq!(manifest["dropped_packets"], 0);
    assert!(server.sfu.stats().recording_bytes > 0);
    // `confab mux`: the participant's audio and video in one file ffprobe reads.
    let muxed = confab_sfu::record::mux::run(rec_dir, None, None).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&muxed)
        .output()
        .unwrap();
    let mut streams: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    streams.sort();
    assert_eq!(streams, ["opus", "vp8"], "{}", muxed.display());
    let (_, duration) = ffprobe(&muxed);
    assert!(
        (duration - recorded).abs() <= recorded * 0.10 + 0.3,
        "muxed: {duration:.2} s for {recorded:.2} s"
    );
    server.stop().await;
}

/// What a custom sink saw: lifecycle calls in order, and packets per track.
#[derive(Default)]
struct Seen {
    calls: Vec<String>,
    packets: std::collections::HashMap<String, u64>,
}

struct CountingSink(Arc<Mutex<Seen>>);

impl confab_sfu::sink::TrackSink for CountingSink {
    fn track_started(&mut self, meta: &confab_sfu::sink::TrackMeta) {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("started {:?}", meta.kind));
    }
    fn rtp(
        &mut self,
        track: &confab_proto::TrackId,
        _layer: u8,
        _keyframe: bool,
        _packet: &rtc::rtp::Packet,
        _at: std::time::SystemTime,
    ) {
        *self
            .0
            .lock()
            .unwrap()
            .packets
            .entry(track.to_string())
            .or_default() += 1;
    }
    fn track_ended(&mut self, _track: &confab_proto::TrackId) {
        self.0.lock().unwrap().calls.push("ended".into());
    }
    fn finish(&mut self, dropped: u64) {
        self.0
            .lock()
            .unwrap()
            .calls
            .push(format!("finish {dropped}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_track_sink_gets_every_track_and_its_lifecycle() {
    let dir = scratch_dir("sink");
    let server = start_with(recording_config(&dir)).await;
    let a = join(&server, "sink", "alice", Publish::AUDIO_VIDEO).await;
    // Bob keeps the room open when alice leaves.
    let _b = join(&server, "sink", "bob", Publish::NONE).await;
    let _pump = a.start_media(MediaPlan::default());
    wait_until(|| server.sfu.stats().published_tracks == 2).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let room = confab_proto::RoomId::parse("sink").unwrap();
    server
        .sfu
        .start_recording_with(&room, vec![Box::new(CountingSink(seen.clone()))])
        .await
        .unwrap();
    wait_until(|| {
        let s = seen.lock().unwrap();
        s.packets.len() == 2 && s.packets.values().all(|n| *n >= 50)
    })
    .await;
    // The participant leaves: both tracks end, then the recording is stopped.
    a.leave().await;
    wait_until(|| seen.lock().unwrap().calls.len() == 4).await;
    assert!(
        !seen
            .lock()
            .unwrap()
            .calls
            .iter()
            .any(|c| c.starts_with("finish"))
    );
    server.sfu.stop_recording(&room).await.unwrap();
    let calls = seen.lock().unwrap().calls.clone();
    let mut started: Vec<_> = calls[..2].to_vec();
    started.sort();
    assert_eq!(started, ["started Audio", "started Video"]);
    assert_eq!(calls[2..], ["ended", "ended", "finish 0"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rtp_forwarder_feeds_a_real_ffmpeg() {
    let dir = scratch_dir("hook");
    let mut config = recording_config(&dir);
    // One ffmpeg per track, reading the forwarded RTP through the SDP file.
    config.recording.command = Some(
        "exec ffmpeg -nostdin -loglevel info -protocol_whitelist file,udp,rtp \
         -analyzeduration 500000 -probesize 100000 -i \"$CONFAB_SDP\" -c copy -y \"$CONFAB_DIR/hook-$CONFAB_KIND.mkv\" 2> \"$CONFAB_DIR/hook-$CONFAB_KIND.log\""
            .into(),
    );
    let server = start_with(config).await;
    let a = join(&server, "hook", "alice", Publish::AUDIO_VIDEO).await;
    let _pump = a.start_media(MediaPlan::default());
    wait_until(|| server.sfu.stats().published_tracks == 2).await;
    let room = confab_proto::RoomId::parse("hook").unwrap();
    let rec = server.sfu.start_recording(&room).await.unwrap();
    let base = server.sfu.stats().rtp_in;
    wait_until(|| server.sfu.stats().rtp_in - base >= 4 * 80).await;
    server.sfu.stop_recording(&room).await.unwrap();
    for kind in ["video", "audio"] {
        let out = rec.join(format!("hook-{kind}.mkv"));
        let (codec, duration) = ffprobe(&out);
        assert_eq!(codec, if kind == "video" { "vp8" } else { "opus" });
        assert!(duration > 1.0, "{kind}: {duration} s");
    }
    // The SDP files describe the streams.
    let sdps: Vec<_> = std::fs::read_dir(&rec)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sdp"))
        .collect();
    assert_eq!(sdps.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_arrive_in_order_signed_and_retried() {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    // A receiver that refuses its first delivery with 500.
    let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Default::default();
    let calls = Arc::new(Mutex::new(0u32));
    let (r, c) = (received.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (r, c) = (r.clone(), c.clone());
            async move {
                let mut n = c.lock().unwrap();
                *n += 1;
                r.lock().unwrap().push((headers, body));
                if *n == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut config = test_config();
    config.webhooks.urls = vec![hook];
    config.webhooks.secret = "s3cret".into();
    config.webhooks.backoff_ms = 20;
    config.webhooks.node_id = "node-a".into();
    let server = start_with(config).await;
    let a = join(&server, "hooks", "alice", Publish::AUDIO_VIDEO).await;
    let _pump = a.start_media(MediaPlan::default());
    wait_until(|| server.sfu.stats().published_tracks == 2).await;
    a.leave().await;
    // room_started, participant_joined, 2 track_published, 2 track_unpublished,
    // participant_left, room_finished: 8 events, the first delivered twice.
    let want = [
        "room_started",
        "participant_joined",
        "track_published",
        "track_published",
        "track_unpublished",
        "track_unpublished",
        "participant_left",
        "room_finished",
    ];
    wait_until(|| received.lock().unwrap().len() > want.len()).await;
    let got = received.lock().unwrap().clone();
    // The refused first delivery came again, identical.
    assert_eq!(got[0].1, got[1].1, "retried after the 500");
    let mut seqs = Vec::new();
    let mut names = Vec::new();
    for (headers, body) in got.iter().skip(1) {
        let sig = headers["x-confab-signature"].to_str().unwrap();
        assert_eq!(
            sig,
            confab_signal::webhooks::signature(b"s3cret", body),
            "valid signature"
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["room"], "hooks");
        assert_eq!(v["node"], "node-a");
        assert_eq!(
            headers["x-confab-event"].to_str().unwrap(),
            v["event"].as_str().unwrap()
        );
        names.push(v["event"].as_str().unwrap().to_string());
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(names, want);
    assert_eq!(
        seqs,
        (1..=want.len() as u64).collect::<Vec<_>>(),
        "monotonic per room"
    );
    server.stop().await;
}

/// Parses the Prometheus text format into name -> value (no labels are used).
fn scrape(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((
                parts.next()?.trim_end_matches("_total").to_string(),
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_health_answers() {
    let server = start().await;
    let (status, text) = http("GET", format!("{}/metrics", server.url()), None, None).await;
    assert_eq!(status, 200);
    let before = scrape(&text);
    assert_eq!(before["confab_participants"], 0.0);
    let a = join(&server, "m", "alice", Publish::AUDIO_VIDEO).await;
    let mut b = join(&server, "m", "bob", Publish::NONE).await;
    let _pump = a.start_media(MediaPlan::default());
    wait_tracks(&mut b, 2).await;
    let after = scrape(
        &http("GET", format!("{}/metrics", server.url()), None, None)
            .await
            .1,
    );
    assert_eq!(after["confab_participants"], 2.0);
    assert_eq!(after["confab_tracks"], 2.0);
    assert!(after["confab_rtp_packets_out"] > before["confab_rtp_packets_out"]);
    assert!(after["confab_bytes_in"] > 0.0);
    // Round-trip time, once bob's receiver reports answer the server's sender reports
    // (each side reports about once a second).
    wait_until(|| server.sfu.loop_stats().rtt.count > 0).await;
    let text = http("GET", format!("{}/metrics", server.url()), None, None)
        .await
        .1;
    let rtt = scrape(&text)["confab_rtt_p50_microseconds"];
    assert!(rtt > 0.0 && rtt < 1_000_000.0, "loopback RTT {rtt} us");
    assert_eq!(
        http("GET", format!("{}/healthz", server.url()), None, None)
            .await
            .0,
        200
    );
    assert_eq!(
        http("GET", format!("{}/readyz", server.url()), None, None)
            .await
            .0,
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_key_and_acts() {
    let dir = scratch_dir("admin");
    let server = start_with(recording_config(&dir)).await;
    let base = server.url();
    // The document is public and valid JSON.
    let (status, doc) = http("GET", format!("{base}/api/openapi.json"), None, None).await;
    assert_eq!(status, 200);
    assert!(
        serde_json::from_str::<serde_json::Value>(&doc).unwrap()["paths"]["/api/rooms"].is_object()
    );
    // Refused without the key, or with a wrong one.
    assert_eq!(
        http("GET", format!("{base}/api/rooms"), None, None).await.0,
        401
    );
    assert_eq!(
        http("GET", format!("{base}/api/rooms"), Some("wrong"), None)
            .await
            .0,
        401
    );

    let a = join(&server, "adm", "alice", Publish::AUDIO_VIDEO).await;
    let mut b = join(&server, "adm", "bob", Publish::AUDIO_VIDEO).await;
    let mut c = join(&server, "adm", "carol", Publish::NONE).await;
    let _pa = a.start_media(MediaPlan::default());
    wait_until(|| server.sfu.stats().published_tracks >= 2).await;
    let (status, rooms) = http("GET", format!("{base}/api/rooms"), Some(KEY), None).await;
    assert_eq!(status, 200);
    let rooms: serde_json::Value = serde_json::from_str(&rooms).unwrap();
    assert_eq!(rooms[0]["room"], "adm");
    assert_eq!(rooms[0]["participants"].as_array().unwrap().len(), 3);
    assert_eq!(
        http("GET", format!("{base}/api/rooms/nope"), Some(KEY), None)
            .await
            .0,
        404
    );

    // Mute alice's video for everyone: carol sees it muted.
    let video = rooms[0]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == a.id.as_str())
        .and_then(|p| {
            p["tracks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["kind"] == "video")
                .cloned()
        })
        .expect("alice's video");
    let (status, _) = http(
        "POST",
        format!(
            "{base}/api/rooms/adm/tracks/{}/mute",
            video["id"].as_str().unwrap()
        ),
        Some(KEY),
        Some(r#"{"muted":true}"#),
    )
    .await;
    assert_eq!(status, 204);
    wait_server(&mut c, "alice's video muted", |m| match m {
        ServerMessage::ParticipantUpdated { participant } if participant.id == a.id => participant
            .tracks
            .iter()
            .any(|t| t.kind == confab_proto::MediaKind::Video && t.muted)
            .then_some(()),
        _ => None,
    })
    .await;

    // Remove bob: he is told, the others see him leave.
    let (status, _) = http(
        "DELETE",
        format!("{base}/api/rooms/adm/participants/{}", b.id),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, 204);
    wait_error(&mut b, ErrorCode::Removed).await;
    let left = wait_server(&mut c, "bob left", |m| match m {
        ServerMessage::ParticipantLeft { participant_id } => Some(participant_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, b.id);

    // Close the room: everyone is told.
    assert_eq!(
        http("DELETE", format!("{base}/api/rooms/adm"), Some(KEY), None)
            .await
            .0,
        204
    );
    wait_error(&mut c, ErrorCode::Removed).await;
    c.wait_for(WAIT, "closed", |e| matches!(e, Event::Closed).then_some(()))
        .await
        .unwrap();
    wait_until(|| server.sfu.stats().rooms == 0).await;
    assert_eq!(
        http("DELETE", format!("{base}/api/rooms/adm"), Some(KEY), None)
            .await
            .0,
        404
    );
    drop(a);
    server.stop().await;

    // No key configured: the admin API is off.
    let server = start().await;
    assert_eq!(
        http(
            "GET",
            format!("{}/api/rooms", server.url()),
            Some(KEY),
            None
        )
        .await
        .0,
        403
    );
    server.stop().await;
}
