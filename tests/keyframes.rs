//! Keyframe requests: a new subscriber makes the server ask the publisher for a keyframe
//! (so its video starts at once), and subscribers' PLIs are relayed upstream, throttled.

mod common;

use common::*;
use confab_load::client::{Event, MediaPlan, Publish};
use confab_proto::MediaKind;
use std::time::{Duration, Instant};

/// A plan whose periodic keyframes are rare, so that any keyframe request the publisher
/// sees comes from the server.
fn rare_keyframes() -> MediaPlan {
    MediaPlan {
        keyframe_every: Duration::from_secs(3600),
        ..MediaPlan::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_subscriber_triggers_a_keyframe_request() {
    let server = start().await;
    let mut a = join(&server, "kf", "alice", Publish::AUDIO_VIDEO).await;
    let _pa = a.start_media(rare_keyframes());
    // Nobody subscribes yet: wait until the publisher's tracks are in the room.
    wait_until(|| server.sfu.stats().published_tracks == 2).await;
    let before = server.sfu.stats().keyframe_requests_out;
    let mut b = join(&server, "kf", "bob", Publish::NONE).await;
    a.wait_for(WAIT, "keyframe request", |e| {
        matches!(e, Event::KeyframeRequested).then_some(())
    })
    .await
    .unwrap();
    assert!(server.sfu.stats().keyframe_requests_out > before);
    // The subscriber's video starts with that keyframe.
    let first = b
        .wait_for(WAIT, "first video packet", |e| match e {
            Event::Rtp {
                kind: MediaKind::Video,
                packet,
                ..
            } => Some(packet.payload.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert!(
        confab_sfu::rtp::Codec::Vp8.is_keyframe(&first),
        "video must start on a keyframe"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_pli_reaches_the_publisher_throttled() {
    let server = start().await;
    let mut a = join(&server, "pli", "alice", Publish::AUDIO_VIDEO).await;
    let mut b = join(&server, "pli", "bob", Publish::NONE).await;
    let _pa = a.start_media(rare_keyframes());
    let tracks = wait_tracks(&mut b, 2).await;
    let (video, _, _) = tracks
        .iter()
        .find(|(_, _, k)| *k == MediaKind::Video)
        .unwrap()
        .clone();
    // Settle: the join's own keyframe request has been answered.
    a.wait_for(WAIT, "join keyframe request", |e| {
        matches!(e, Event::KeyframeRequested).then_some(())
    })
    .await
    .unwrap();
    a.take_keyframe_request();
    let s0 = server.sfu.stats();
    let t0 = Instant::now();
    // A decoder in trouble asks every 20 ms; keep asking for a second and until the
    // publisher has heard of it.
    let mut sent = 0i64;
    while t0.elapsed() < Duration::from_secs(1) || !a.take_keyframe_request() {
        assert!(
            t0.elapsed() < WAIT,
            "the publisher never got the subscriber's request"
        );
        b.request_keyframe(&video).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(|| server.sfu.stats().keyframe_requests_in - s0.keyframe_requests_in >= sent).await;
    let elapsed = t0.elapsed();
    // At most one relayed request per interval, however many were asked for.
    let interval = test_config().room.keyframe_interval_ms as u128;
    let out = server.sfu.stats().keyframe_requests_out - s0.keyframe_requests_out;
    let allowed = 1 + (elapsed.as_millis() / interval) as i64;
    assert!(sent >= 40, "{sent}");
    assert!(
        out >= 1 && out <= allowed,
        "{out} requests relayed for {sent} in {elapsed:?}"
    );
    server.stop().await;
}
