//! Garbage datagrams sprayed at the media port are dropped and counted; nobody notices.
//! Likewise garbage and silence on the ICE-TCP port (issue 16).

mod common;

use common::*;
use confab_load::client::{Event, MediaPlan, Publish};
use confab_proto::MediaKind;
use rand::Rng;

fn stun_binding_request(username: &str) -> Vec<u8> {
    use rtc::stun::message::{BINDING_REQUEST, Message, TransactionId};
    use rtc::stun::textattrs::Username;
    let mut m = Message::new();
    m.build(&[
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(
            rtc::stun::attributes::ATTR_USERNAME,
            username.into(),
        )),
    ])
    .unwrap();
    // No MESSAGE-INTEGRITY: the agent must refuse it.
    m.raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_udp_is_dropped_and_media_flows_on() {
    let server = start().await;
    let a = join(&server, "spray", "alice", Publish::AUDIO_VIDEO).await;
    let mut b = join(&server, "spray", "bob", Publish::NONE).await;
    let _pump = a.start_media(MediaPlan::default());
    wait_tracks(&mut b, 2).await;
    let media = server.sfu.media_addrs()[0];
    let ufrag = b.server_ufrag().await.expect("server ufrag in the offer");

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::rng();
    // Bursts the kernel will not drop: each is handled before the next is sent.
    for burst in 0..50 {
        let before = server.sfu.stats();
        for i in 0..60 {
            let dgram: Vec<u8> = match i % 6 {
                // random bytes of random length
                0 => (0..rng.random_range(0..1500))
                    .map(|_| rng.random())
                    .collect(),
                // RTP-looking (version 2) with random payload
                1 => {
                    let mut v: Vec<u8> = (0..200).map(|_| rng.random()).collect();
                    v[0] = 0x80;
                    v[1] = 96;
                    v
                }
                // RTCP-looking (PT 200-206)
                2 => {
                    let mut v: Vec<u8> = (0..60).map(|_| rng.random()).collect();
                    v[0] = 0x80;
                    v[1] = 201;
                    v
                }
                // DTLS-looking record
                3 => {
                    let mut v: Vec<u8> = (0..100).map(|_| rng.random()).collect();
                    v[0] = 22;
                    v
                }
                // STUN naming a real peer's ufrag, without integrity
                4 => stun_binding_request(&format!("{ufrag}:intruder")),
                // truncated STUN header
                _ => vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42],
            };
            sock.send_to(&dgram, media).await.unwrap();
        }
        // Every non-STUN one is unroutable: dropped before any peer sees it. (The STUN
        // ones reach the agent, which refuses them.)
        wait_until(|| server.sfu.stats().datagrams_unroutable - before.datagrams_unroutable >= 50)
            .await;
        assert_eq!(server.sfu.stats().participants, 2, "burst {burst}");
    }
    // ...and media still flows to bob, intact.
    b.clear_backlog();
    let got = sample_rtp(&mut b, 100).await;
    assert!(got.iter().all(|(_, p)| *p == a.id));
    // The intruder's check was not answered with a route: the server never sends to it.
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(200),
            sock.recv_from(&mut [0u8; 1500])
        )
        .await
        .is_err(),
        "no answer to unauthenticated datagrams"
    );
    b.wait_for(WAIT, "still video", |e| {
        matches!(
            e,
            Event::Rtp {
                kind: MediaKind::Video,
                ..
            }
        )
        .then_some(())
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silence_on_ice_tcp_are_refused_and_media_flows_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start().await;
    let a = join(&server, "tcp-spray", "alice", Publish::AUDIO_VIDEO).await;
    let mut b = join(&server, "tcp-spray", "bob", Publish::NONE).await;
    let _pump = a.start_media(MediaPlan::default());
    wait_tracks(&mut b, 2).await;
    // The worker listens on TCP (on its UDP port's number when that is free on TCP).
    let media = server.sfu.media_tcp_addrs()[0];
    let before = server.sfu.stats();
    // Framed garbage (RFC 4571: a length, then bytes): every frame is unroutable.
    let mut framed = tokio::net::TcpStream::connect(media).await.unwrap();
    let mut rng = rand::rng();
    for _ in 0..100 {
        let len: u16 = rng.random_range(1..1200);
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend((0..len).map(|_| rng.random::<u8>()));
        framed.write_all(&frame).await.unwrap();
    }
    wait_until(|| server.sfu.stats().datagrams_unroutable - before.datagrams_unroutable >= 100)
        .await;
    // A connection that never sends a frame (half-open) is closed after 5 s and counted.
    let mut silent = tokio::net::TcpStream::connect(media).await.unwrap();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        silent.read(&mut [0u8; 16]),
    )
    .await
    .expect("the silent connection is closed within 10 s");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    wait_until(|| server.sfu.stats().tcp_refused > before.tcp_refused).await;
    // A length prefix that promises more than ever comes: just an unfinished frame.
    framed.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    assert_eq!(server.sfu.stats().participants, 2);
    b.clear_backlog();
    let got = sample_rtp(&mut b, 100).await;
    assert!(got.iter().all(|(_, p)| *p == a.id));
    drop(framed);
    wait_until(|| server.sfu.stats().tcp_connections == 0).await;
    server.stop().await;
}
