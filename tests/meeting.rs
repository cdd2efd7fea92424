//! The core meeting path with real WebRTC over loopback: webrtc-rs clients publish
//! synthetic VP8 and Opus over the real signaling protocol; each receives exactly the
//! others' tracks, intact; chat is relayed; late joiners catch up; leaving cleans up.

mod common;

use common::*;
use confab_load::client::{Event, MediaPlan, Publish};
use confab_proto::{ChatOut, ParticipantId, ServerMessage};
use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_each_receive_exactly_the_others() {
    let server = start().await;
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol"] {
        clients.push(join(&server, "standup", name, Publish::AUDIO_VIDEO).await);
    }
    let _pumps: Vec<_> = clients
        .iter()
        .map(|c| c.start_media(MediaPlan::default()))
        .collect();
    let ids: Vec<ParticipantId> = clients.iter().map(|c| c.id.clone()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let tracks = wait_tracks(c, 4).await;
        let from: HashSet<_> = tracks.iter().map(|(_, p, _)| p.clone()).collect();
        let others: HashSet<_> = ids.iter().filter(|p| **p != ids[i]).cloned().collect();
        assert_eq!(
            from, others,
            "participant {i} receives from exactly the others"
        );
        let kinds: Vec<_> = tracks.iter().map(|(_, _, k)| *k).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == confab_proto::MediaKind::Video)
                .count(),
            2
        );
        // Keep sampling: nothing else ever arrives, and every payload is intact.
        let sampled = sample_rtp(c, 300).await;
        let known: HashSet<_> = tracks
            .iter()
            .map(|(t, p, _)| (t.clone(), p.clone()))
            .collect();
        assert!(
            sampled.is_subset(&known),
            "unexpected tracks: {:?}",
            sampled.difference(&known)
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_the_others_not_the_sender() {
    let server = start().await;
    let mut a = join(&server, "chat", "alice", Publish::NONE).await;
    let mut b = join(&server, "chat", "bob", Publish::NONE).await;
    let mut c = join(&server, "chat", "carol", Publish::NONE).await;
    for x in [&mut a, &mut b, &mut c] {
        x.wait_for(WAIT, "chat open", |e| {
            matches!(e, Event::ChatOpen).then_some(())
        })
        .await
        .unwrap();
    }
    a.chat("hello from alice").await.unwrap();
    for x in [&mut b, &mut c] {
        let (from, name, text) = x
            .wait_for(WAIT, "chat", |e| match e {
                Event::Chat(ChatOut::Chat {
                    from,
                    name,
                    text,
                    history: false,
                    ..
                }) => Some((from.clone(), name.to_string(), text.clone())),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(
            (from, name.as_str(), text.as_str()),
            (a.id.clone(), "alice", "hello from alice")
        );
    }
    // The sender gets no copy: b replies, a receives b's reply and nothing of its own first.
    b.chat("hi alice").await.unwrap();
    let first = a
        .wait_for(WAIT, "chat", |e| match e {
            Event::Chat(m) => Some(m.clone()),
            _ => None,
        })
        .await
        .unwrap();
    let ChatOut::Chat { from, text, .. } = first;
    assert_eq!((from, text.as_str()), (b.id.clone(), "hi alice"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_tracks_and_chat_history() {
    let mut config = test_config();
    config.room.chat_history = 3;
    let server = start_with(config).await;
    let mut a = join(&server, "late", "alice", Publish::AUDIO_VIDEO).await;
    let _pa = a.start_media(MediaPlan::default());
    a.wait_for(WAIT, "chat open", |e| {
        matches!(e, Event::ChatOpen).then_some(())
    })
    .await
    .unwrap();
    for i in 0..5 {
        a.chat(&format!("message {i}")).await.unwrap();
    }
    // Wait until the server has all five before the late joiner arrives.
    wait_until(|| server.sfu.stats().chat_messages >= 5).await;
    let mut b = join(&server, "late", "bob", Publish::NONE).await;
    assert_eq!(b.others.len(), 1);
    assert_eq!(b.others[0].id, a.id);
    let mut history = Vec::new();
    while history.len() < 3 {
        let text = b
            .wait_for(WAIT, "history", |e| match e {
                Event::Chat(ChatOut::Chat {
                    text,
                    history: true,
                    ..
                }) => Some(text.clone()),
                _ => None,
            })
            .await
            .unwrap();
        history.push(text);
    }
    assert_eq!(history, ["message 2", "message 3", "message 4"]);
    let tracks = wait_tracks(&mut b, 2).await;
    assert!(tracks.iter().all(|(_, p, _)| *p == a.id));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_removes_the_participant_and_its_tracks() {
    let server = start().await;
    let mut a = join(&server, "leave", "alice", Publish::AUDIO_VIDEO).await;
    let mut b = join(&server, "leave", "bob", Publish::AUDIO_VIDEO).await;
    let _pa = a.start_media(MediaPlan::default());
    let _pb = b.start_media(MediaPlan::default());
    wait_tracks(&mut b, 2).await;
    wait_tracks(&mut a, 2).await;
    assert_eq!(server.sfu.stats().published_tracks, 4);
    let b_id = b.id.clone();
    b.leave().await;
    let left = wait_server(&mut a, "participant_left", |m| match m {
        ServerMessage::ParticipantLeft { participant_id } => Some(participant_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, b_id);
    // The server renegotiates a's subscriber connection without b's tracks.
    wait_until(|| {
        let s = server.sfu.stats();
        s.participants == 1
            && s.published_tracks == 2
            && s.down_tracks == 0
            && s.peer_connections == 2
    })
    .await;
    server.stop().await;
}
