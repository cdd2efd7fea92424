//! Faults (issue 6): a dropped signaling connection is resumed without the others seeing
//! anything; a participant that really vanished is removed within 10 s; SIGTERM drains.

mod common;

use common::*;
use confab_load::client::{Client, ClientOptions, Event, JoinRefused, MediaPlan, Publish};
use confab_load::netem::Relay;
use confab_proto::chat::ChatOut;
use confab_proto::{ErrorCode, ParticipantId, PcTarget, ServerMessage};
use std::time::{Duration, Instant};

async fn chat_open(c: &mut Client) {
    c.wait_for(WAIT, "chat open", |e| {
        matches!(e, Event::ChatOpen).then_some(())
    })
    .await
    .unwrap();
}

/// Everything `c` has received so far, without waiting.
async fn drain(c: &mut Client) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = c.next_event(Duration::ZERO).await {
        out.push(e);
    }
    out
}

fn left(events: &[Event], who: &ParticipantId) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::Server(ServerMessage::ParticipantLeft { participant_id }) if participant_id == who)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_never_seen_leaving() {
    let server = start().await;
    let mut a = join(&server, "resume", "alice", Publish::NONE).await;
    let mut b = join(&server, "resume", "bob", Publish::AUDIO_VIDEO).await;
    let pump = b.start_media(MediaPlan::default());
    wait_tracks(&mut a, 2).await;
    let b_id = b.id.clone();

    // Bob's WebSocket breaks; while he is away carol joins.
    b.drop_signaling();
    wait_until(|| server.resumes_parked() == 1).await;
    let mut c = join(&server, "resume", "carol", Publish::NONE).await;
    assert!(
        c.others.iter().any(|p| p.id == b_id),
        "bob is still in the room while away"
    );

    b.resume().await.expect("the session resumes");
    assert_eq!(b.id, b_id);
    let mut others: Vec<String> = b.others.iter().map(|p| p.name.to_string()).collect();
    others.sort();
    assert_eq!(
        others,
        ["alice", "carol"],
        "the fresh joined lists the room"
    );
    // What bob missed is delivered after it.
    let joined = wait_server(&mut b, "carol's arrival", |m| match m {
        ServerMessage::ParticipantJoined { participant } => Some(participant.id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(joined, c.id);

    // Signaling works again: a mute reaches the others.
    b.send(&confab_proto::ClientMessage::Mute {
        source: confab_proto::TrackSource::Microphone,
        muted: true,
    });
    wait_server(&mut c, "bob muted", |m| match m {
        ServerMessage::ParticipantUpdated { participant }
            if participant.id == b_id && participant.tracks.iter().any(|t| t.muted) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    // His media never stopped, and alice never saw him leave.
    for _ in 0..20 {
        a.wait_for(WAIT, "bob's media", |e| match e {
            Event::Rtp { participant, .. } if *participant == b_id => Some(()),
            _ => None,
        })
        .await
        .unwrap();
    }
    let seen = drain(&mut a).await;
    assert!(!left(&seen, &b_id), "alice saw bob leave");
    assert_eq!(server.sfu.stats().participants, 3);
    assert_eq!(server.resumes_parked(), 0);

    // Chat still flows both ways on the unchanged data channel.
    chat_open(&mut c).await;
    c.chat("welcome back").await.unwrap();
    let text = b
        .wait_for(WAIT, "chat", |e| match e {
            Event::Chat(ChatOut::Chat {
                text,
                history: false,
                ..
            }) => Some(text.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(text, "welcome back");
    drop(pump);
    server.stop().await;
}

/// The port of each candidate `c` gathered for `target` (host candidates only: loopback).
fn candidate_ports(c: &Client, target: PcTarget) -> Vec<u16> {
    c.local_candidates()
        .into_iter()
        .filter(|(t, _)| *t == target)
        .filter_map(|(_, cand)| cand.split_whitespace().nth(5)?.parse().ok())
        .collect()
}

/// Waits for `n` RTP packets from `from` that arrive from now on; the other events
/// received so far are added to `seen`.
async fn fresh_rtp(
    c: &mut Client,
    from: &ParticipantId,
    n: usize,
    what: &str,
    seen: &mut Vec<Event>,
) {
    seen.extend(
        drain(c)
            .await
            .into_iter()
            .filter(|e| !matches!(e, Event::Rtp { .. })),
    );
    for _ in 0..n {
        c.wait_for(WAIT, what, |e| match e {
            Event::Rtp { participant, .. } if participant == from => Some(()),
            _ => None,
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_follows_a_client_to_its_new_address() {
    // Issue 16: a client whose address changes (here its sockets are rebound to new ports,
    // as a move to another network does) restarts ICE on both connections; the server
    // follows it to the new address with new credentials; nobody sees it leave.
    let server = start().await;
    let mut a = join(&server, "restart", "alice", Publish::AUDIO_VIDEO).await;
    let mut b = join(&server, "restart", "bob", Publish::AUDIO_VIDEO).await;
    let pump_a = a.start_media(MediaPlan::default());
    let pump_b = b.start_media(MediaPlan::default());
    wait_tracks(&mut a, 2).await;
    wait_tracks(&mut b, 2).await;
    let (a_id, b_id) = (a.id.clone(), b.id.clone());
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    fresh_rtp(&mut b, &a_id, 10, "alice's media before", &mut seen_b).await;
    let sub_ufrag = a.server_ufrag().await.unwrap();
    let pub_ufrag = a.publisher_server_ufrag().await.unwrap();
    let sub_ports = candidate_ports(&a, PcTarget::Subscriber);
    let pub_ports = candidate_ports(&a, PcTarget::Publisher);
    assert!(!sub_ports.is_empty() && !pub_ports.is_empty());

    let started = Instant::now();
    a.restart_ice().await.expect("ICE restarts");
    fresh_rtp(
        &mut a,
        &b_id,
        20,
        "bob's media after the restart",
        &mut seen_a,
    )
    .await;
    fresh_rtp(
        &mut b,
        &a_id,
        20,
        "alice's media after the restart",
        &mut seen_b,
    )
    .await;
    let resumed = started.elapsed();
    println!(
        "media resumed both ways {} ms after the restart began",
        resumed.as_millis()
    );
    assert!(
        resumed < Duration::from_secs(3),
        "media resumed after {resumed:?}"
    );

    // New credentials on both connections, and new local ports: the old paths are gone.
    assert_ne!(a.server_ufrag().await.unwrap(), sub_ufrag);
    assert_ne!(a.publisher_server_ufrag().await.unwrap(), pub_ufrag);
    let new_sub: Vec<u16> = candidate_ports(&a, PcTarget::Subscriber)[sub_ports.len()..].to_vec();
    let new_pub: Vec<u16> = candidate_ports(&a, PcTarget::Publisher)[pub_ports.len()..].to_vec();
    assert!(
        !new_sub.is_empty() && new_sub.iter().all(|p| !sub_ports.contains(p)),
        "the subscriber connection rebound: {sub_ports:?} -> {new_sub:?}"
    );
    assert!(
        !new_pub.is_empty() && new_pub.iter().all(|p| !pub_ports.contains(p)),
        "the publisher connection rebound: {pub_ports:?} -> {new_pub:?}"
    );
    assert_eq!(server.sfu.stats().ice_restarts, 2);

    // Same participant; bob saw no leave and no join.
    seen_b.extend(drain(&mut b).await);
    assert!(!left(&seen_b, &a_id), "bob saw alice leave");
    assert!(
        !seen_b
            .iter()
            .any(|e| matches!(e, Event::Server(ServerMessage::ParticipantJoined { .. }))),
        "bob saw someone join"
    );
    assert_eq!(server.sfu.stats().participants, 2);

    // Chat still reaches her on the restarted subscriber connection.
    if !seen_b.iter().any(|e| matches!(e, Event::ChatOpen)) {
        chat_open(&mut b).await;
    }
    b.chat("still there?").await.unwrap();
    a.wait_for(WAIT, "chat after the restart", |e| match e {
        Event::Chat(ChatOut::Chat {
            text,
            history: false,
            ..
        }) if text == "still there?" => Some(()),
        _ => None,
    })
    .await
    .unwrap();
    drop((pump_a, pump_b));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclaimed_session_leaves_when_its_window_ends() {
    let mut config = test_config();
    config.signal.resume_window_ms = 300;
    let server = start_with(config).await;
    let mut a = join(&server, "window", "alice", Publish::NONE).await;
    let mut b = join(&server, "window", "bob", Publish::NONE).await;
    let b_id = b.id.clone();
    b.drop_signaling();
    let gone = wait_server(&mut a, "bob left", |m| match m {
        ServerMessage::ParticipantLeft { participant_id } => Some(participant_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(gone, b_id);
    // Too late now; and a made-up token never worked.
    let err = b.resume().await.expect_err("the window is over");
    let refused = err.downcast_ref::<JoinRefused>().expect("a refusal");
    assert_eq!(refused.code, ErrorCode::ResumeFailed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_resume_token_is_refused() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = start().await;
    let _a = join(&server, "forged", "alice", Publish::NONE).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    ws.send(Message::Text(
        r#"{"type":"join","protocol":1,"room":"forged","name":"x","resume":"0123456789abcdef"}"#
            .into(),
    ))
    .await
    .unwrap();
    let t = loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match frame {
            Message::Text(t) => break t,
            Message::Ping(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    match serde_json::from_str::<ServerMessage>(&t).unwrap() {
        ServerMessage::Error { code, fatal, .. } => {
            assert_eq!((code, fatal), (ErrorCode::ResumeFailed, true))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.sfu.stats().participants, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_participant_is_removed_within_ten_seconds() {
    // Bob's media goes through a relay that can pull his cable.
    let mut config = test_config();
    config.media.announce_ip = Some("127.0.0.2".parse().unwrap());
    let server = start_with(config).await;
    let announced = server.sfu.media_addrs()[0];
    let real = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), announced.port());
    let relay = Relay::start(announced, real, Vec::new())
        .await
        .expect("the relay binds");

    let mut a = join(&server, "cable", "alice", Publish::NONE).await;
    let bob_ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let mut b = Client::connect(
        ClientOptions::new(server.ws_url(), "cable", "bob")
            .publish(Publish::AUDIO_VIDEO)
            .bind_ip(bob_ip),
    )
    .await
    .unwrap();
    let pump = b.start_media(MediaPlan::default());
    wait_tracks(&mut a, 2).await;
    let b_id = b.id.clone();

    // No close frame, no DTLS alert, no more packets: the tab is simply gone.
    relay.cut(bob_ip);
    b.drop_signaling();
    let cut = Instant::now();
    let gone = a
        .wait_for(Duration::from_secs(10), "bob removed", |e| match e {
            Event::Server(ServerMessage::ParticipantLeft { participant_id }) => {
                Some(participant_id.clone())
            }
            _ => None,
        })
        .await
        .expect("bob removed within 10 s");
    assert_eq!(gone, b_id);
    eprintln!("vanished participant removed after {:?}", cut.elapsed());
    wait_until(|| server.sfu.stats().participants == 1).await;
    // Its parked session is dropped when the session task sees the removal, which may be
    // just after the media plane counted it gone: waited for, with the usual deadline.
    wait_until(|| server.resumes_parked() == 0).await;
    drop(pump);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_newcomers_and_lets_meetings_finish() {
    let server = start().await;
    let url = server.ws_url();
    let mut a = join(&server, "drain", "alice", Publish::NONE).await;
    let mut b = join(&server, "drain", "bob", Publish::NONE).await;
    chat_open(&mut a).await;
    chat_open(&mut b).await;
    let (force_tx, force_rx) = tokio::sync::oneshot::channel::<()>();
    let draining = tokio::spawn(server.drain(Duration::from_secs(60), async {
        let _ = force_rx.await;
    }));

    // Everyone is told, without being disconnected.
    for c in [&mut a, &mut b] {
        let msg = c
            .wait_for(WAIT, "drain notice", |e| match e {
                Event::Server(ServerMessage::Error {
                    code: ErrorCode::ServerShuttingDown,
                    fatal,
                    message,
                    ..
                }) => Some((*fatal, message.clone())),
                _ => None,
            })
            .await
            .unwrap();
        assert!(!msg.0, "{}", msg.1);
        assert!(msg.1.contains("60 s"), "{}", msg.1);
    }
    // Nobody new gets in.
    let Err(err) =
        Client::connect(ClientOptions::new(url, "drain", "late").publish(Publish::NONE)).await
    else {
        panic!("joins are refused while draining")
    };
    let refused = err.downcast_ref::<JoinRefused>().expect("a refusal");
    assert_eq!(refused.code, ErrorCode::ServerShuttingDown);
    // The meeting goes on.
    a.chat("still here").await.unwrap();
    let text = b
        .wait_for(WAIT, "chat", |e| match e {
            Event::Chat(ChatOut::Chat { text, .. }) => Some(text.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(text, "still here");
    // When the last one leaves, the drain ends well before its deadline.
    a.leave().await;
    b.leave().await;
    tokio::time::timeout(WAIT, draining)
        .await
        .expect("drained once the room emptied")
        .unwrap();
    drop(force_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_disconnects_who_is_left() {
    let server = start().await;
    let mut a = join(&server, "deadline", "alice", Publish::NONE).await;
    let draining = tokio::spawn(server.drain(Duration::from_millis(200), std::future::pending()));
    let msg = a
        .wait_for(WAIT, "fatal shutdown", |e| match e {
            Event::Server(ServerMessage::Error {
                code: ErrorCode::ServerShuttingDown,
                fatal: true,
                message,
                ..
            }) => Some(message.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert!(msg.contains("shutting down"), "{msg}");
    a.wait_for(WAIT, "socket closed", |e| {
        matches!(e, Event::Closed).then_some(())
    })
    .await
    .unwrap();
    tokio::time::timeout(WAIT, draining).await.unwrap().unwrap();
}

/// The message of the fatal `internal` error a client is told.
async fn wait_internal(c: &mut Client, what: &str) -> String {
    wait_server(c, what, |m| match m {
        ServerMessage::Error {
            code: ErrorCode::Internal,
            fatal: true,
            message,
            ..
        } => Some(message.clone()),
        _ => None,
    })
    .await
}

/// A panic while handling one room (in a command, a peer's timer, or a flush of its
/// output) closes that room only: its participants are told (fatal `internal`), the
/// other room on the same worker goes on, and the failed room can be joined afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_one_room_spares_the_others() {
    use confab_sfu::FaultPoint;
    // One media worker: every room lives on the same thread.
    let server = start().await;
    let mut b1 = join(&server, "spared", "b1", Publish::NONE).await;
    let b2 = join(&server, "spared", "b2", Publish::AUDIO_VIDEO).await;
    let pump = b2.start_media(MediaPlan::default());
    wait_tracks(&mut b1, 2).await;
    for (n, point) in [FaultPoint::Command, FaultPoint::Timer, FaultPoint::Flush]
        .into_iter()
        .enumerate()
    {
        let name = format!("doomed-{n}");
        let mut a1 = join(&server, &name, "a1", Publish::NONE).await;
        let mut a2 = join(&server, &name, "a2", Publish::NONE).await;
        let room = confab_proto::RoomId::parse(&name).unwrap();
        assert!(server.sfu.inject_panic(&room, point).await);
        // The failed room's participants are told and disconnected...
        for c in [&mut a1, &mut a2] {
            let msg = wait_internal(c, "room failed").await;
            assert!(msg.contains("join again"), "{point:?}: {msg}");
        }
        wait_until(|| {
            server.sfu.stats().rooms_failed == n as i64 + 1 && server.sfu.stats().rooms == 1
        })
        .await;
        assert_eq!(server.sfu.stats().participants, 2, "{point:?}");
        // ...the other room on the same worker goes on.
        for _ in 0..50 {
            b1.wait_for(WAIT, "media", |e| {
                matches!(e, Event::Rtp { .. }).then_some(())
            })
            .await
            .unwrap();
        }
        // And the failed room can be joined afresh.
        let mut c1 = join(&server, &name, "c1", Publish::NONE).await;
        let c2 = join(&server, &name, "c2", Publish::NONE).await;
        assert_eq!(c2.others.len(), 1, "a fresh room: {:?}", c2.others);
        chat_open(&mut c1).await;
        c1.leave().await;
        c2.leave().await;
        wait_until(|| server.sfu.stats().rooms == 1).await;
    }
    drop(pump);
    server.stop().await;
}

/// A panic that escapes every room's isolation takes the worker down: everyone on it is
/// told (fatal `internal`), the worker is restarted on the same port, and a room created
/// afterwards works, with the gauges back in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_worker_is_restarted() {
    let server = start().await;
    let addrs = server.sfu.media_addrs();
    let mut a1 = join(&server, "first", "a1", Publish::NONE).await;
    let mut b1 = join(&server, "second", "b1", Publish::NONE).await;
    let room = confab_proto::RoomId::parse("first").unwrap();
    assert!(
        server
            .sfu
            .inject_panic(&room, confab_sfu::FaultPoint::Worker)
            .await
    );
    for c in [&mut a1, &mut b1] {
        let msg = wait_internal(c, "worker failed").await;
        assert!(msg.contains("join again"), "{msg}");
    }
    wait_until(|| {
        let s = server.sfu.stats();
        s.workers_restarted == 1 && s.participants == 0 && s.rooms == 0 && s.peer_connections == 0
    })
    .await;
    drop((a1, b1));
    // The same worker, on the same port, serves a new meeting end to end.
    assert_eq!(server.sfu.media_addrs(), addrs);
    let mut c1 = join(&server, "after", "c1", Publish::NONE).await;
    let c2 = join(&server, "after", "c2", Publish::AUDIO_VIDEO).await;
    let pump = c2.start_media(MediaPlan::default());
    wait_tracks(&mut c1, 2).await;
    c1.wait_for(WAIT, "media", |e| {
        matches!(e, Event::Rtp { .. }).then_some(())
    })
    .await
    .unwrap();
    drop(pump);
    server.stop().await;
}

/// A room spread over two workers whose first copy fails: that copy's participants are
/// told to rejoin; on the other worker the room goes on and its participants see them
/// leave (issue 15: a failure stays inside its copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_of_a_room_takes_only_its_own_participants() {
    let server = start_with(spread_config(2)).await;
    let mut a1 = join(&server, "spread", "a1", Publish::NONE).await;
    let mut a2 = join(&server, "spread", "a2", Publish::NONE).await;
    let b1 = join(&server, "spread", "b1", Publish::AUDIO_VIDEO).await;
    let mut b2 = join(&server, "spread", "b2", Publish::NONE).await;
    let pump = b1.start_media(MediaPlan::default());
    // Everyone knows everyone (a1 and a2 see b1's media through the relay).
    wait_tracks(&mut a1, 2).await;
    wait_tracks(&mut b2, 2).await;
    let room = confab_proto::RoomId::parse("spread").unwrap();
    // The first copy (a1's and a2's) fails.
    assert!(
        server
            .sfu
            .inject_panic(&room, confab_sfu::FaultPoint::Command)
            .await
    );
    for c in [&mut a1, &mut a2] {
        wait_internal(c, "copy failed").await;
    }
    // On the other worker, b2 sees both leave, and still gets b1's media.
    let (a1_id, a2_id) = (a1.id.clone(), a2.id.clone());
    let mut gone = Vec::new();
    while gone.len() < 2 {
        let id = wait_server(&mut b2, "participant_left", |m| match m {
            ServerMessage::ParticipantLeft { participant_id } => Some(participant_id.clone()),
            _ => None,
        })
        .await;
        gone.push(id);
    }
    gone.sort();
    let mut want = vec![a1_id, a2_id];
    want.sort();
    assert_eq!(gone, want);
    b2.clear_backlog();
    sample_rtp(&mut b2, 50).await;
    drop(pump);
    server.stop().await;
}
