//! Holding under hostile load (issue 12), what names, operators and side channels can do:
//! names that reach the file system stay inside their directory, display names are
//! cleaned and told apart, a kick lasts (a ban) and a token can be revoked, one dead
//! webhook endpoint never holds up another, and racing joins start one recording.
//! Every wait is on an event with a deadline.

mod common;

use common::*;
use confab_load::client::{Client, ClientOptions, JoinRefused, Publish};
use confab_proto::signal::Grants;
use confab_proto::{ErrorCode, RoomId, ServerMessage};
use confab_signal::auth::{AuthConfig, Claims, mint, now_secs};
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a test secret that is long enough for HS256";
const KEY: &str = "test-admin-key";

fn auth() -> AuthConfig {
    AuthConfig {
        required: true,
        secret: SECRET.into(),
        ..AuthConfig::default()
    }
}

fn token(room: &str, identity: &str, jti: Option<&str>) -> (String, u64) {
    let exp = now_secs() + 600;
    let claims = Claims {
        sub: identity.into(),
        name: Some(identity.into()),
        room: room.into(),
        grants: Grants::default(),
        exp,
        nbf: None,
        iat: Some(now_secs()),
        jti: jti.map(str::to_string),
    };
    (mint(&auth(), &claims).unwrap(), exp)
}

/// A server that requires tokens and has an admin key.
async fn start_secured(kick_ban_ms: u64) -> confab::Server {
    let mut c = test_config();
    c.auth = auth();
    c.admin.api_key = KEY.into();
    c.room.kick_ban_ms = kick_ban_ms;
    start_with(c).await
}

async fn connect(server: &confab::Server, room: &str, token: &str) -> anyhow::Result<Client> {
    let o = ClientOptions::new(server.ws_url(), room, "typed")
        .publish(Publish::NONE)
        .token(token);
    Client::connect(o).await
}

/// The refusal of a join that must fail: (code, message).
fn refusal(r: anyhow::Result<Client>) -> (ErrorCode, String) {
    match r {
        Ok(_) => panic!("the join was accepted"),
        Err(e) => {
            let refused = e
                .downcast_ref::<JoinRefused>()
                .unwrap_or_else(|| panic!("not a refusal: {e:#}"));
            (refused.code, refused.message.clone())
        }
    }
}

/// A blocking HTTP call on the blocking pool, with the admin key: (status, body).
async fn http(method: &'static str, url: String, body: Option<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = format!("Bearer {KEY}");
        let resp = match method {
            "GET" => agent.get(&url).header("Authorization", &auth).call(),
            "DELETE" => agent.delete(&url).header("Authorization", &auth).call(),
            _ => agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_default()),
        };
        let mut resp = resp.expect("HTTP request");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    })
    .await
    .unwrap()
}

async fn kick(server: &confab::Server, room: &str, who: &Client, query: &str) -> u16 {
    let url = format!(
        "{}/api/rooms/{room}/participants/{}{query}",
        server.url(),
        who.id
    );
    http("DELETE", url, None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_keeps_the_identity_out_of_the_room() {
    let server = start_secured(600_000).await;
    let (ada_token, _) = token("r", "ada", None);
    let mut ada = connect(&server, "r", &ada_token).await.unwrap();
    let _bob = connect(&server, "r", &token("r", "bob", None).0)
        .await
        .unwrap();

    assert_eq!(kick(&server, "r", &ada, "").await, 204);
    wait_error(&mut ada, ErrorCode::Removed).await;
    // The same token, at once: refused, and told why and for how long.
    let (code, msg) = refusal(connect(&server, "r", &ada_token).await);
    assert_eq!(code, ErrorCode::Banned, "{msg}");
    assert!(msg.contains("removed you") && msg.contains(" s"), "{msg}");
    // A fresh token for the same identity is the same person: refused too.
    let (code, _) = refusal(connect(&server, "r", &token("r", "ada", Some("new")).0).await);
    assert_eq!(code, ErrorCode::Banned);
    // The ban is for that room only, and for that identity only.
    let elsewhere = connect(&server, "other", &token("*", "ada", None).0).await;
    assert!(elsewhere.is_ok(), "another room");
    let mut carol = connect(&server, "r", &token("r", "carol", None).0)
        .await
        .expect("another identity");

    // `?ban=false` only removes: carol comes straight back.
    assert_eq!(kick(&server, "r", &carol, "?ban=false").await, 204);
    wait_error(&mut carol, ErrorCode::Removed).await;
    connect(&server, "r", &token("r", "carol", None).0)
        .await
        .expect("no ban after ?ban=false");
    assert_eq!(kick(&server, "r", &carol, "?ban=maybe").await, 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ends_by_itself() {
    let server = start_secured(1_500).await;
    let (t, _) = token("r", "ada", None);
    let mut ada = connect(&server, "r", &t).await.unwrap();
    let _witness = connect(&server, "r", &token("r", "bob", None).0)
        .await
        .unwrap();
    assert_eq!(kick(&server, "r", &ada, "").await, 204);
    wait_error(&mut ada, ErrorCode::Removed).await;
    let (code, _) = refusal(connect(&server, "r", &t).await);
    assert_eq!(code, ErrorCode::Banned, "refused first");
    // Then, polling joins (each answered at once), one gets in within the deadline.
    let deadline = Instant::now() + WAIT;
    let mut refused = 1;
    let back = loop {
        match connect(&server, "r", &t).await {
            Ok(c) => break c,
            Err(e) => {
                let r = e.downcast_ref::<JoinRefused>().expect("a refusal");
                assert_eq!(r.code, ErrorCode::Banned, "{}", r.message);
                refused += 1;
                assert!(Instant::now() < deadline, "still banned after {WAIT:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert!(refused >= 1);
    drop(back);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_and_its_holder_removed() {
    let server = start_secured(600_000).await;
    let (revoked, exp) = token("r", "ada", Some("jti-ada-1"));
    let (other, _) = token("r", "ada", Some("jti-ada-2"));
    let mut ada = connect(&server, "r", &revoked).await.unwrap();
    let mut bob = connect(&server, "r", &token("r", "bob", Some("jti-bob")).0)
        .await
        .unwrap();
    let url = format!("{}/api/tokens/revoked", server.url());
    let (status, body) = http(
        "POST",
        url.clone(),
        Some(format!(r#"{{"jti":"jti-ada-1","exp":{exp}}}"#)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["removed"], 1, "{body}");
    // The one in with it is removed, told why; the others see it leave.
    let msg = wait_error(&mut ada, ErrorCode::Unauthorized).await;
    assert!(msg.contains("revoked"), "{msg}");
    let left = wait_server(&mut bob, "ada left", |m| match m {
        ServerMessage::ParticipantLeft { participant_id } => Some(participant_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, ada.id);
    // It cannot join again; another token of the same identity can (no ban: a
    // revocation is about the token).
    let (code, msg) = refusal(connect(&server, "r", &revoked).await);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(msg.contains("revoked"), "{msg}");
    connect(&server, "r", &other)
        .await
        .expect("a different token");
    // Listed until it expires; bad requests are told so.
    let (status, list) = http("GET", url.clone(), None).await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        list,
        serde_json::json!([{ "jti": "jti-ada-1", "exp": exp }])
    );
    assert_eq!(
        http("POST", url.clone(), Some(r#"{"jti":"","exp":1}"#.into()))
            .await
            .0,
        400
    );
    assert_eq!(
        http("POST", url.clone(), Some(r#"{"jti":"x"}"#.into()))
            .await
            .0,
        422
    );
    server.stop().await;
}

/// Joins over a raw socket with `name` exactly as given; returns the name the server
/// gave back in `joined`.
async fn join_raw(server: &confab::Server, room: &str, name: &str) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let join = serde_json::json!({"type": "join", "protocol": 1, "room": room, "name": name});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    loop {
        if let ServerMessage::Joined { participant, .. } = next_message(&mut ws).await {
            return (ws, participant.name.to_string());
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next server message on a raw socket (pings skipped).
async fn next_message(ws: &mut Ws) -> ServerMessage {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer within the deadline");
        match frame {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("no message: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_cleaned_and_told_apart() {
    let server = start().await;
    let (_a, a) = join_raw(&server, "names", "Ada").await;
    let (_b, b) = join_raw(&server, "names", "ada").await;
    // Reversed, with a zero-width space: cleaned to "ADA", then told apart.
    let (_c, c) = join_raw(&server, "names", "\u{202E}ADA\u{200B}").await;
    let (_d, d) = join_raw(&server, "names", "Grace").await;
    assert_eq!([a, b, c, d], ["Ada", "ada (2)", "ADA (3)", "Grace"]);
    // What the others are shown is the final name too.
    let e = join(&server, "names", "Linus", Publish::NONE).await;
    let mut shown: Vec<String> = e.others.iter().map(|p| p.name.to_string()).collect();
    shown.sort();
    assert_eq!(shown, ["ADA (3)", "Ada", "Grace", "ada (2)"]);
    // Invisible only: refused.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    ws.send(Message::Text(
        r#"{"type":"join","protocol":1,"room":"names","name":"\u200b\u2066"}"#.into(),
    ))
    .await
    .unwrap();
    let m = next_message(&mut ws).await;
    assert!(
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::InvalidMessage,
                ..
            }
        ),
        "{m:?}"
    );
    server.stop().await;

    // Off: names stay as given.
    let mut config = test_config();
    config.room.unique_names = false;
    let server = start_with(config).await;
    let (_a, a) = join_raw(&server, "names", "Ada").await;
    let (_b, b) = join_raw(&server, "names", "Ada").await;
    assert_eq!([a, b], ["Ada", "Ada"]);
    server.stop().await;
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_room_name_records_outside_the_recording_directory() {
    let root = scratch_dir("escape");
    let mut config = test_config();
    config.recording.dir = root.join("rec");
    config.recording.auto = "*".into();
    let server = start_with(config).await;
    for bad in [
        ".", "..", "...", ".hidden", "../x", "a/b", "a\\b", "/abs", "nul\0",
    ] {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .unwrap();
        let join = serde_json::json!({"type": "join", "protocol": 1, "room": bad, "name": "m"});
        ws.send(Message::Text(join.to_string().into()))
            .await
            .unwrap();
        let m = next_message(&mut ws).await;
        assert!(
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::InvalidMessage,
                    ..
                }
            ),
            "{bad:?}: {m:?}"
        );
    }
    // An ordinary room is recorded, inside the directory.
    let fine = RoomId::parse("fine").unwrap();
    let a = join(&server, "fine", "alice", Publish::NONE).await;
    wait_until(|| server.sfu.is_recording(&fine)).await;
    server.sfu.close_room(&fine).await.unwrap();
    wait_until(|| !server.sfu.is_recording(&fine)).await;
    drop(a);
    server.stop().await;
    let entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["rec"], "nothing beside the recording directory");
    let rooms: Vec<_> = std::fs::read_dir(root.join("rec"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(rooms, ["fine"]);
}

/// A local webhook receiver: every body it got, in order.
async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Default::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                g.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn events(got: &Mutex<Vec<serde_json::Value>>) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .map(|v| v["event"].as_str().unwrap_or("").to_string())
        .collect()
}

fn scrape(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next()?.trim_end_matches("_total") == name)
                .then(|| parts.next()?.parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_endpoint_never_holds_up_a_live_one() {
    // Dead: accepts connections and never answers (each attempt waits out the timeout).
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/hook", dead.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = dead.accept().await {
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    let (live_url, got) = receiver().await;
    let mut config = test_config();
    // The dead one first: serially, it would hold every event up for minutes.
    config.webhooks.urls = vec![dead_url, live_url];
    config.webhooks.queue = 4;
    config.webhooks.timeout_ms = 5_000;
    config.webhooks.max_attempts = 5;
    let server = start_with(config).await;
    let a = join(&server, "hooks", "alice", Publish::AUDIO_VIDEO).await;
    let _pump = a.start_media(confab_load::client::MediaPlan::default());
    wait_until(|| events(&got).len() >= 4).await;
    a.leave().await;
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
    wait_until(|| events(&got).len() >= want.len()).await;
    assert_eq!(events(&got), want, "in order, none lost");
    // All that while the dead endpoint was being tried, and not yet given up on: its
    // first event is still in its first attempts.
    wait_until(|| accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1).await;
    let metrics = http("GET", format!("{}/metrics", server.url()), None)
        .await
        .1;
    assert_eq!(scrape(&metrics, "confab_webhooks_failed"), 0.0);
    assert_eq!(
        scrape(&metrics, "confab_webhooks_delivered"),
        want.len() as f64
    );
    // Its own queue (4) overflowed: those events are dropped for it alone, counted.
    assert!(
        scrape(&metrics, "confab_webhooks_dropped") >= 1.0,
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_starts_make_one_recording() {
    let root = scratch_dir("race");
    let (hook, got) = receiver().await;
    let mut config = test_config();
    config.recording.dir = root.clone();
    config.recording.auto = "race".into();
    config.webhooks.urls = vec![hook];
    config.webhooks.queue = 256;
    let server = start_with(config).await;
    // Many joins at once into an auto-recorded room: each may start its recording.
    let joins = (0..8).map(|i| {
        let url = server.ws_url();
        async move {
            Client::connect(ClientOptions::new(url, "race", format!("p{i}")).publish(Publish::NONE))
                .await
                .unwrap()
        }
    });
    let clients = futures_util::future::join_all(joins).await;
    let room = RoomId::parse("race").unwrap();
    wait_until(|| server.sfu.is_recording(&room)).await;
    // And explicit starts racing each other: exactly one may win, if any is left.
    let other = RoomId::parse("other").unwrap();
    let witness = join(&server, "other", "w", Publish::NONE).await;
    let starts = (0..8).map(|_| server.sfu.start_recording(&other));
    let results = futures_util::future::join_all(starts).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(results.iter().all(|r| match r {
        Ok(_) => true,
        Err(e) => matches!(e, confab_sfu::ControlError::AlreadyRecording(_)),
    }));
    server.sfu.stop_recording(&other).await.unwrap();
    // The room closes (everyone removed at once): its recording finishes.
    server.sfu.close_room(&room).await.unwrap();
    let recorded = |name: &str| {
        got.lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == name && v["room"] == "race")
            .count()
    };
    wait_until(|| recorded("recording_finished") >= 1).await;
    drop((clients, witness));
    assert_eq!(recorded("recording_started"), 1);
    assert_eq!(recorded("recording_finished"), 1);
    let dirs: Vec<_> = std::fs::read_dir(root.join("race"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].join("manifest.json").is_file());
    server.stop().await;
}
