//! Bad input from one client gets that client a clear error and changes nothing for
//! anyone else: a witness pair keeps exchanging media through every case.

mod common;

use common::*;
use confab_load::client::{Client, Event, MediaPlan, Publish};
use confab_load::media::{SynthCodec, read_stamp};
use confab_proto::{ErrorCode, MediaKind, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(server: &confab::Server) -> Ws {
    tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap()
        .0
}

/// The next server message on a raw socket, or None once it closed.
async fn next_msg(ws: &mut Ws) -> Option<ServerMessage> {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("server answers");
        match frame {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// The next error on a raw socket, skipping room traffic (offers, participant events).
async fn expect_error(ws: &mut Ws, code: ErrorCode, fatal: bool) {
    loop {
        match next_msg(ws).await {
            Some(ServerMessage::Error {
                code: c,
                fatal: f,
                message,
                ..
            }) => {
                assert_eq!((c, f), (code, fatal), "{message}");
                assert!(!message.is_empty());
                return;
            }
            Some(ServerMessage::Offer { .. })
            | Some(ServerMessage::ParticipantJoined { .. })
            | Some(ServerMessage::ParticipantUpdated { .. })
            | Some(ServerMessage::ParticipantLeft { .. }) => continue,
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }
}

const JOIN: &str = r#"{"type":"join","protocol":1,"room":"bad","name":"mallory"}"#;

/// The witness subscriber still receives new media from the witness publisher.
async fn witness_still_flows(w: &mut Client) {
    w.clear_backlog();
    let first = w
        .wait_for(WAIT, "witness media", |e| match e {
            Event::Rtp {
                kind: MediaKind::Video,
                packet,
                ..
            } => read_stamp(SynthCodec::Vp8, &packet.payload),
            _ => None,
        })
        .await
        .unwrap();
    let later = w
        .wait_for(WAIT, "more witness media", |e| match e {
            Event::Rtp {
                kind: MediaKind::Video,
                packet,
                ..
            } => read_stamp(SynthCodec::Vp8, &packet.payload).filter(|s| s.index > first.index + 5),
            _ => None,
        })
        .await
        .unwrap();
    assert!(later.intact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signaling_input_is_refused_and_harms_nobody() {
    let server = start().await;
    let w1 = join(&server, "bad", "witness-pub", Publish::AUDIO_VIDEO).await;
    let mut w2 = join(&server, "bad", "witness-sub", Publish::NONE).await;
    let _pump = w1.start_media(MediaPlan::default());
    wait_tracks(&mut w2, 2).await;

    // Before join.
    let mut ws = raw(&server).await;
    ws.send(Message::text("{this is not json")).await.unwrap();
    expect_error(&mut ws, ErrorCode::MalformedMessage, false).await;
    ws.send(Message::text(r#"{"type":"teleport"}"#))
        .await
        .unwrap();
    expect_error(&mut ws, ErrorCode::UnknownType, false).await;
    ws.send(Message::text(r#"{"type":"answer","sdp":"v=0"}"#))
        .await
        .unwrap();
    expect_error(&mut ws, ErrorCode::NotJoined, false).await;
    ws.send(Message::text(
        r#"{"type":"join","protocol":1,"room":"no spaces allowed","name":"x"}"#,
    ))
    .await
    .unwrap();
    expect_error(&mut ws, ErrorCode::InvalidMessage, false).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    expect_error(&mut ws, ErrorCode::InvalidMessage, false).await;
    // 65 KiB: over the 64 KiB limit, under the hard cap: refused, connection kept.
    let big = format!(r#"{{"type":"answer","sdp":"{}"}}"#, "x".repeat(65 * 1024));
    ws.send(Message::text(big)).await.unwrap();
    expect_error(&mut ws, ErrorCode::MessageTooLarge, false).await;
    // Still usable: a valid join works on the same connection.
    ws.send(Message::text(JOIN)).await.unwrap();
    assert!(matches!(
        next_msg(&mut ws).await,
        Some(ServerMessage::Joined { .. })
    ));
    // The subscriber offer follows: the bad answer below must find it pending.
    assert!(matches!(
        next_msg(&mut ws).await,
        Some(ServerMessage::Offer { .. })
    ));
    ws.send(Message::text(JOIN)).await.unwrap();
    expect_error(&mut ws, ErrorCode::AlreadyJoined, false).await;
    ws.send(Message::text(
        r#"{"type":"publish","sdp":"this is not sdp"}"#,
    ))
    .await
    .unwrap();
    expect_error(&mut ws, ErrorCode::InvalidSdp, false).await;
    ws.send(Message::text(
        r#"{"type":"answer","sdp":"neither is this"}"#,
    ))
    .await
    .unwrap();
    expect_error(&mut ws, ErrorCode::InvalidSdp, false).await;
    ws.send(Message::text(
        r#"{"type":"candidate","target":"subscriber","candidate":{"candidate":"candidate:garbage"}}"#,
    ))
    .await
    .unwrap();
    expect_error(&mut ws, ErrorCode::InvalidMessage, false).await;
    ws.send(Message::text(
        r#"{"type":"candidate","target":"publisher","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}}"#,
    ))
    .await
    .unwrap();
    expect_error(&mut ws, ErrorCode::OutOfOrder, false).await;

    // Over the hard cap: the WebSocket layer closes this connection (code 1009), possibly
    // while the frame is still being written.
    let _ = ws.send(Message::text("x".repeat(2 * 1024 * 1024))).await;
    assert!(next_msg(&mut ws).await.is_none(), "connection closed");

    // A wrong protocol version is fatal.
    let mut ws = raw(&server).await;
    ws.send(Message::text(
        r#"{"type":"join","protocol":99,"room":"bad","name":"x"}"#,
    ))
    .await
    .unwrap();
    expect_error(&mut ws, ErrorCode::UnsupportedProtocol, true).await;
    assert!(
        next_msg(&mut ws).await.is_none(),
        "closed after a fatal error"
    );

    witness_still_flows(&mut w2).await;
    server.stop().await;
}

/// A valid offer with one audio section (mid "0"), from a sans-IO peer connection.
fn audio_offer() -> String {
    use rtc::peer_connection::RTCPeerConnectionBuilder;
    use rtc::peer_connection::configuration::media_engine::MediaEngine;
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media)
        .build(std::time::Instant::now())
        .unwrap();
    pc.add_transceiver_from_kind(RtpCodecKind::Audio, None)
        .unwrap();
    pc.create_offer(None).unwrap().sdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_of_a_joined_client() {
    let server = start().await;
    let w1 = join(&server, "bad2", "witness-pub", Publish::AUDIO_VIDEO).await;
    let mut w2 = join(&server, "bad2", "witness-sub", Publish::NONE).await;
    let _pump = w1.start_media(MediaPlan::default());
    wait_tracks(&mut w2, 2).await;

    let mut m = join(&server, "bad2", "mallory", Publish::NONE).await;
    m.wait_for(WAIT, "chat open", |e| {
        matches!(e, Event::ChatOpen).then_some(())
    })
    .await
    .unwrap();
    // The client answered the server's offer: another answer is out of order.
    wait_until(|| server.sfu.stats().down_tracks == 4).await;
    m.send_raw(r#"{"type":"answer","sdp":"v=0"}"#);
    wait_error(&mut m, ErrorCode::OutOfOrder).await;
    // Publish naming a mid its offer lacks.
    let offer = audio_offer();
    m.send_raw(
        serde_json::json!({"type":"publish","sdp":offer,"tracks":[{"mid":"99","source":"camera"}]})
            .to_string(),
    );
    wait_error(&mut m, ErrorCode::UnknownTrack).await;
    // Chat: too long, not a chat frame, a spoofed sender.
    m.chat(&"x".repeat(4097)).await.unwrap();
    wait_error(&mut m, ErrorCode::ChatTooLong).await;
    m.chat_raw("garbage").await.unwrap();
    wait_error(&mut m, ErrorCode::ChatInvalid).await;
    m.chat_raw(r#"{"type":"chat","text":"hi","from":"PA_someone_else"}"#)
        .await
        .unwrap();
    wait_error(&mut m, ErrorCode::ChatInvalid).await;
    // Exactly 4 KiB is fine and reaches the witness with the server-stamped sender.
    m.chat(&"y".repeat(4096)).await.unwrap();
    let from = w2
        .wait_for(WAIT, "mallory's chat", |e| match e {
            Event::Chat(confab_proto::ChatOut::Chat { from, text, .. }) if text.len() == 4096 => {
                Some(from.clone())
            }
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(from, m.id);
    assert_eq!(
        server.sfu.stats().chat_messages,
        1,
        "refused chat is not relayed"
    );

    witness_still_flows(&mut w2).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_with_a_fatal_error() {
    let mut config = test_config();
    config.room.max_participants = 2;
    let server = start_with(config).await;
    let _a = join(&server, "small", "a", Publish::NONE).await;
    let _b = join(&server, "small", "b", Publish::NONE).await;
    let err = Client::connect(
        confab_load::client::ClientOptions::new(server.ws_url(), "small", "c")
            .publish(Publish::NONE),
    )
    .await
    .err()
    .expect("third join refused");
    assert!(format!("{err:#}").contains("RoomFull"), "{err:#}");
    // Another room is unaffected.
    let _c = join(&server, "other", "c", Publish::NONE).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_is_removed_and_others_told() {
    let server = start().await;
    let mut a = join(&server, "gone", "alice", Publish::NONE).await;
    let b = join(&server, "gone", "bob", Publish::AUDIO_VIDEO).await;
    let _pb = b.start_media(MediaPlan::default());
    wait_tracks(&mut a, 2).await;
    let b_id = b.id.clone();
    drop(_pb);
    b.vanish().await;
    let left = wait_server(&mut a, "participant_left", |m| match m {
        ServerMessage::ParticipantLeft { participant_id } => Some(participant_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, b_id);
    wait_until(|| server.sfu.stats().participants == 1).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_tells_every_client() {
    let server = start().await;
    let mut a = join(&server, "bye", "alice", Publish::NONE).await;
    let stop = tokio::spawn(server.stop());
    let msg = wait_error(&mut a, ErrorCode::ServerShuttingDown).await;
    assert!(msg.contains("shutting down"));
    a.wait_for(WAIT, "socket closed", |e| {
        matches!(e, Event::Closed).then_some(())
    })
    .await
    .unwrap();
    stop.await.unwrap();
}

/// Every reply names the request that caused it: `joined` the join, an `invalid_sdp` about
/// the subscriber answer the answer (never a pending publish), a refused publish the
/// publish, and a refusal before joining the refused message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_carry_the_request_id() {
    use confab_proto::RequestId;
    let server = start().await;
    let mut ws = raw(&server).await;
    ws.send(Message::text(
        r#"{"type":"pin","participant_ids":[],"request_id":"early"}"#,
    ))
    .await
    .unwrap();
    match next_msg(&mut ws).await {
        Some(ServerMessage::Error {
            code: ErrorCode::NotJoined,
            request_id,
            ..
        }) => assert_eq!(request_id, Some(RequestId::Text("early".into()))),
        other => panic!("{other:?}"),
    }
    ws.send(Message::text(
        r#"{"type":"join","protocol":1,"room":"ids","name":"ada","request_id":1}"#,
    ))
    .await
    .unwrap();
    match next_msg(&mut ws).await {
        Some(ServerMessage::Joined { request_id, .. }) => {
            assert_eq!(request_id, Some(RequestId::Number(1)))
        }
        other => panic!("{other:?}"),
    }
    // The subscriber offer follows; answer it wrongly, then publish an unusable offer.
    match next_msg(&mut ws).await {
        Some(ServerMessage::Offer { .. }) => {}
        other => panic!("{other:?}"),
    }
    ws.send(Message::text(
        r#"{"type":"answer","sdp":"v=0\r\n","request_id":2}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        r#"{"type":"publish","sdp":"v=0\r\nnot an offer","tracks":[],"request_id":3}"#,
    ))
    .await
    .unwrap();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        match next_msg(&mut ws).await {
            Some(ServerMessage::Error {
                code,
                fatal: false,
                request_id,
                ..
            }) => replies.push((request_id, code)),
            Some(ServerMessage::ActiveSpeakers { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        replies,
        [
            (Some(RequestId::Number(2)), ErrorCode::InvalidSdp),
            (Some(RequestId::Number(3)), ErrorCode::InvalidSdp)
        ]
    );
    // A bad request id is refused, and not echoed.
    ws.send(Message::text(
        r#"{"type":"pin","participant_ids":[],"request_id":-4}"#,
    ))
    .await
    .unwrap();
    match next_msg(&mut ws).await {
        Some(ServerMessage::Error {
            code: ErrorCode::InvalidMessage,
            request_id: None,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}
