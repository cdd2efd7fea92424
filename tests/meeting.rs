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

/// A room spread over two workers (issue 15): with two participants per worker, the third
/// and fourth joiners land on a copy of the room on the other worker. Everyone still sees
/// everyone, receives exactly the others' tracks intact (relayed between the copies), and
/// chats; a participant leaving one copy leaves everyone's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spread_over_two_workers_is_one_meeting() {
    let mut config = spread_config(2);
    config.room.max_participants = 4;
    let server = start_with(config).await;
    // alice and bob on the first worker, carol and dave on a copy on the second.
    let mut alice = join(&server, "spread", "alice", Publish::AUDIO_VIDEO).await;
    let mut bob = join(&server, "spread", "bob", Publish::NONE).await;
    let mut carol = join(&server, "spread", "carol", Publish::AUDIO_VIDEO).await;
    let mut dave = join(&server, "spread", "dave", Publish::NONE).await;
    assert_eq!(server.sfu.hosted_rooms().len(), 1);
    // The room's limit holds across its copies.
    let err = confab_load::client::Client::connect(
        confab_load::client::ClientOptions::new(server.ws_url(), "spread", "eve")
            .publish(Publish::NONE),
    )
    .await
    .err()
    .expect("a fifth join is refused");
    assert!(format!("{err:#}").contains("RoomFull"), "{err:#}");
    // The copy's joiners are told who is on the other worker in their `joined` (a new
    // copy holds it until the other copy's snapshot arrived).
    let names = |c: &confab_load::client::Client| {
        let mut n: Vec<String> = c.others.iter().map(|p| p.name.to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&carol), ["alice", "bob"]);
    assert_eq!(names(&dave), ["alice", "bob", "carol"]);
    // The first copy's participants learn of them as `participant_joined`.
    async fn learn(c: &mut confab_load::client::Client, want: &[&str]) {
        let mut known: HashSet<String> = c.others.iter().map(|p| p.name.to_string()).collect();
        while !want.iter().all(|w| known.contains(*w)) {
            let name = wait_server(c, "participant_joined", |m| match m {
                ServerMessage::ParticipantJoined { participant } => {
                    Some(participant.name.to_string())
                }
                _ => None,
            })
            .await;
            known.insert(name);
        }
    }
    learn(&mut bob, &["alice", "carol", "dave"]).await;
    let _pa = alice.start_media(MediaPlan::default());
    let _pc = carol.start_media(MediaPlan::default());
    // Bob (first worker) gets carol's tracks over the relay, dave (second) alice's.
    let publishers: HashSet<ParticipantId> = [alice.id.clone(), carol.id.clone()].into();
    let (a_id, c_id) = (alice.id.clone(), carol.id.clone());
    for (who, c, expect) in [
        ("bob", &mut bob, publishers.clone()),
        ("dave", &mut dave, publishers),
        ("alice", &mut alice, HashSet::from([c_id])),
        ("carol", &mut carol, HashSet::from([a_id])),
    ] {
        let tracks = wait_tracks(c, expect.len() * 2).await;
        let from: HashSet<_> = tracks.iter().map(|(_, p, _)| p.clone()).collect();
        assert_eq!(from, expect, "{who} receives from the publishers");
        let sampled = sample_rtp(c, 200).await;
        assert!(sampled.iter().all(|(_, p)| expect.contains(p)));
    }
    assert!(server.sfu.stats().relayed_packets > 0);
    assert_eq!(server.sfu.stats().relay_dropped, 0);
    // The admin view: one entry per copy, each with its own participants, and each
    // relaying its publisher's two tracks to the other worker.
    let copies = server.sfu.rooms().await;
    assert_eq!(copies.len(), 2);
    for c in &copies {
        assert_eq!(c.participants.len(), 2, "{c:?}");
        assert_eq!(c.relays.len(), 2, "{c:?}");
        assert!(
            c.relays
                .iter()
                .all(|r| r.to as usize != c.worker && r.packets > 0)
        );
    }
    // Chat crosses the copies both ways.
    for x in [&mut bob, &mut dave] {
        x.wait_for(WAIT, "chat open", |e| {
            matches!(e, Event::ChatOpen).then_some(())
        })
        .await
        .unwrap();
    }
    let said = |x: &'static str| {
        move |e: &Event| match e {
            Event::Chat(ChatOut::Chat { text, .. }) if text == x => Some(()),
            _ => None,
        }
    };
    dave.chat("from the second worker").await.unwrap();
    bob.wait_for(WAIT, "dave's chat", said("from the second worker"))
        .await
        .unwrap();
    bob.chat("from the first worker").await.unwrap();
    dave.wait_for(WAIT, "bob's chat", said("from the first worker"))
        .await
        .unwrap();
    // Carol leaves the second worker: bob on the first sees her go.
    let carol_id = carol.id.clone();
    carol.leave().await;
    let left = wait_server(&mut bob, "participant_left", |m| match m {
        ServerMessage::ParticipantLeft { participant_id } if *participant_id == carol_id => {
            Some(participant_id.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(left, carol_id);
    server.stop().await;
}

/// A 1 → 5 webinar spread over two workers (three participants each): every viewer gets
/// the publisher's audio and video, intact and without a gap in its numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webinar_spread_over_two_workers_reaches_every_viewer() {
    let server = start_with(spread_config(3)).await;
    let host = join(&server, "webinar", "host", Publish::AUDIO_VIDEO).await;
    let mut viewers = Vec::new();
    for i in 0..5 {
        viewers.push(join(&server, "webinar", &format!("viewer{i}"), Publish::NONE).await);
    }
    let _pump = host.start_media(MediaPlan::default());
    for v in &mut viewers {
        let tracks = wait_tracks(v, 2).await;
        assert!(tracks.iter().all(|(_, p, _)| *p == host.id));
        // 150 consecutive video packets: each one more than the last.
        let mut last: Option<u16> = None;
        for _ in 0..150 {
            let seq = v
                .wait_for(WAIT, "video", |e| match e {
                    Event::Rtp {
                        kind: confab_proto::MediaKind::Video,
                        packet,
                        ..
                    } => {
                        assert_intact(confab_proto::MediaKind::Video, packet);
                        Some(packet.header.sequence_number)
                    }
                    _ => None,
                })
                .await
                .unwrap();
            if let Some(l) = last {
                assert_eq!(seq, l.wrapping_add(1), "no gap, no reordering");
            }
            last = Some(seq);
        }
    }
    let s = server.sfu.stats();
    assert!(
        s.relayed_packets > 0,
        "three viewers are on the other worker"
    );
    assert_eq!(s.relay_dropped, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_udp_meets_over_ice_tcp() {
    // Issue 16: a client on a network that blocks UDP (no UDP socket at all) reaches the
    // server's passive TCP candidate on both connections; media flows both ways with a
    // client on UDP, intact, and chat goes over the same TCP connection.
    let server = start().await;
    let mut tcp = confab_load::client::Client::connect(
        confab_load::client::ClientOptions::new(server.ws_url(), "tcp", "tcp")
            .publish(Publish::AUDIO_VIDEO)
            .tcp(),
    )
    .await
    .expect("joins over TCP");
    let mut udp = join(&server, "tcp", "udp", Publish::AUDIO_VIDEO).await;
    let _pumps = (
        tcp.start_media(MediaPlan::default()),
        udp.start_media(MediaPlan::default()),
    );
    for c in [&mut tcp, &mut udp] {
        wait_tracks(c, 2).await;
        sample_rtp(c, 100).await;
    }
    assert!(
        tcp.local_candidates().iter().all(|(_, c)| c
            .split(' ')
            .nth(2)
            .is_some_and(|t| t.eq_ignore_ascii_case("tcp"))),
        "the TCP client has no UDP candidate: {:?}",
        tcp.local_candidates()
    );
    assert_eq!(server.sfu.stats().tcp_connections, 2, "one per connection");
    udp.wait_for(WAIT, "chat open", |e| {
        matches!(e, Event::ChatOpen).then_some(())
    })
    .await
    .unwrap();
    udp.chat("over tcp?").await.unwrap();
    let text = tcp
        .wait_for(WAIT, "chat over TCP", |e| match e {
            Event::Chat(ChatOut::Chat { text, .. }) => Some(text.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(text, "over tcp?");
    server.stop().await;
}
