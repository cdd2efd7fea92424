//! Garbage datagrams sprayed at the media port are dropped and counted; nobody notices.
//! Likewise garbage and silence on the ICE-TCP port, and what the embedded TURN server
//! must refuse (issue 16).

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

/// A TURN client of the `turn` crate on a fresh UDP socket, with these credentials.
async fn turn_client(server: std::net::SocketAddr, user: &str, pass: &str) -> turn::client::Client {
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.into(),
        password: pass.into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: std::sync::Arc::new(conn),
        vnet: None,
    })
    .await
    .unwrap();
    c.listen().await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_turn_server_refuses_what_it_must_and_counts_it() {
    // Issue 16, bad input: wrong and expired credentials, relaying to an address that is
    // not this node's media, an allocation flood and garbage on its TCP port are refused,
    // counted, and the meeting on the node goes on.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use webrtc_util::Conn;
    let mut config = test_config();
    config.turn.port = free_port();
    config.turn.max_allocations = 2;
    let server = start_with(config).await;
    let turn = server.turn.as_ref().expect("the embedded TURN server runs");
    let a = join(&server, "turned", "alice", Publish::AUDIO_VIDEO).await;
    let mut b = join(&server, "turned", "bob", Publish::NONE).await;
    let _pump = a.start_media(MediaPlan::default());
    wait_tracks(&mut b, 2).await;
    let metrics = || ureq_metrics(&server);

    // The credentials the server gives a participant allocate a relay.
    let ice = b
        .ice_servers
        .first()
        .cloned()
        .expect("joined lists the TURN server");
    assert!(
        ice.urls.iter().any(|u| u.ends_with("transport=tcp")),
        "{:?}",
        ice.urls
    );
    let (user, pass) = (ice.username.unwrap(), ice.credential.unwrap());
    let good = turn_client(turn.udp_addr, &user, &pass).await;
    let relay = good
        .allocate()
        .await
        .expect("a minted credential allocates");
    // To the node's media: relayed. Anywhere else: dropped and counted.
    let media = server.sfu.media_addrs()[0];
    let before = server.sfu.stats().datagrams_unroutable;
    relay.send_to(b"to the media port", media).await.unwrap();
    // It arrives (from the relay's address, which no peer knows: unroutable, counted).
    wait_until(|| server.sfu.stats().datagrams_unroutable > before).await;
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay
        .send_to(b"an open proxy?", stranger.local_addr().unwrap())
        .await
        .unwrap();
    wait_until(|| metric(&metrics(), "confab_turn_forbidden_peers_total") >= 1.0).await;
    assert_eq!(metric(&metrics(), "confab_turn_allocations"), 1.0);

    // A wrong password and an expired username allocate nothing.
    let wrong = turn_client(turn.udp_addr, &user, "not-the-password").await;
    assert!(
        wrong.allocate().await.is_err(),
        "a wrong password is refused"
    );
    let expired_user = format!("1000000000:{}", b.id);
    let secret_pass = confab_signal::turn::credential(b"unknown", &expired_user);
    let expired = turn_client(turn.udp_addr, &expired_user, &secret_pass).await;
    assert!(
        expired.allocate().await.is_err(),
        "an expired username is refused"
    );
    assert!(metric(&metrics(), "confab_turn_auth_refused_total") >= 1.0);

    // A flood: past turn.max_allocations (2) every allocation is refused.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let c = turn_client(turn.udp_addr, &user, &pass).await;
        match c.allocate().await {
            Ok(r) => held.push((c, r)),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        (held.len(), refused),
        (1, 3),
        "one more fits under the cap of 2"
    );
    assert!(metric(&metrics(), "confab_turn_allocations_refused_total") >= 3.0);

    // Garbage on its TCP port: the connection is closed and counted.
    let mut g = tokio::net::TcpStream::connect(turn.tcp_addr).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(WAIT, g.read(&mut [0u8; 64]))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    wait_until(|| metric(&metrics(), "confab_turn_tcp_refused_total") >= 1.0).await;
    // A connection that says nothing (half-open) is closed after 5 s, and counted.
    let mut silent = tokio::net::TcpStream::connect(turn.tcp_addr).await.unwrap();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        silent.read(&mut [0u8; 8]),
    )
    .await
    .expect("the silent TURN connection is closed within 10 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    wait_until(|| metric(&metrics(), "confab_turn_tcp_refused_total") >= 2.0).await;

    // The meeting never noticed.
    b.clear_backlog();
    let got = sample_rtp(&mut b, 100).await;
    assert!(got.iter().all(|(_, p)| *p == a.id));
    drop((relay, held));
    good.close().await.unwrap();
    server.stop().await;
}

fn ureq_metrics(server: &confab::Server) -> String {
    ureq::get(format!("http://{}/metrics", server.http_addr))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of an unlabelled metric in an OpenMetrics text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
