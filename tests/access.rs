//! Access control and limits (issue 6): tokens are checked, grants are enforced by the
//! server, and every configured limit answers with its own error code while the room goes on.

mod common;

use common::*;
use confab_load::client::{Client, ClientOptions, Event, JoinRefused, Publish};
use confab_proto::chat::ChatOut;
use confab_proto::signal::Grants;
use confab_proto::{ErrorCode, ServerMessage};
use confab_signal::auth::{AuthConfig, Claims, mint, now_secs};

const SECRET: &str = "a test secret that is long enough for HS256";

fn auth() -> AuthConfig {
    AuthConfig {
        required: true,
        secret: SECRET.into(),
        ..AuthConfig::default()
    }
}

fn claims(room: &str, identity: &str, grants: Grants) -> Claims {
    Claims {
        sub: identity.into(),
        name: Some(format!("{identity} (token)")),
        room: room.into(),
        grants,
        exp: now_secs() + 600,
        nbf: None,
        iat: Some(now_secs()),
        jti: None,
    }
}

fn token(room: &str, identity: &str, grants: Grants) -> String {
    mint(&auth(), &claims(room, identity, grants)).unwrap()
}

async fn start_secured() -> confab::Server {
    let mut c = test_config();
    c.auth = auth();
    start_with(c).await
}

async fn connect(
    server: &confab::Server,
    room: &str,
    name: &str,
    token: Option<String>,
    publish: Publish,
) -> anyhow::Result<Client> {
    let mut o = ClientOptions::new(server.ws_url(), room, name).publish(publish);
    if let Some(t) = token {
        o = o.token(t);
    }
    Client::connect(o).await
}

/// The refusal code of a join that must fail.
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

async fn chat_open(c: &mut Client) {
    c.wait_for(WAIT, "chat open", |e| {
        matches!(e, Event::ChatOpen).then_some(())
    })
    .await
    .unwrap();
}

async fn next_chat(c: &mut Client) -> String {
    c.wait_for(WAIT, "chat", |e| match e {
        Event::Chat(ChatOut::Chat { text, .. }) => Some(text.clone()),
        _ => None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn joins_without_a_valid_token_are_refused() {
    let server = start_secured().await;
    let all = Grants::default();

    let (code, msg) = refusal(connect(&server, "r", "anon", None, Publish::NONE).await);
    assert_eq!(code, ErrorCode::Unauthorized, "{msg}");
    assert!(msg.contains("requires an access token"), "{msg}");

    let (code, _) =
        refusal(connect(&server, "r", "x", Some("not.a.jwt".into()), Publish::NONE).await);
    assert_eq!(code, ErrorCode::Unauthorized);

    let mut expired = claims("r", "late", all);
    expired.exp = now_secs() - 5;
    let t = mint(&auth(), &expired).unwrap();
    let (code, msg) = refusal(connect(&server, "r", "late", Some(t), Publish::NONE).await);
    assert_eq!(
        (code, msg.contains("expired")),
        (ErrorCode::Unauthorized, true),
        "{msg}"
    );

    let other_key = AuthConfig {
        secret: "somebody else's secret, also long enough".into(),
        ..auth()
    };
    let forged = mint(&other_key, &claims("r", "mallory", all)).unwrap();
    let (code, _) = refusal(connect(&server, "r", "mallory", Some(forged), Publish::NONE).await);
    assert_eq!(code, ErrorCode::Unauthorized);

    let (code, msg) = refusal(
        connect(
            &server,
            "r",
            "ada",
            Some(token("elsewhere", "ada", all)),
            Publish::NONE,
        )
        .await,
    );
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(msg.contains("elsewhere"), "{msg}");

    // Nobody refused is in the room; the valid token gets in, named by its token.
    assert_eq!(server.sfu.stats().participants, 0);
    let ada = connect(
        &server,
        "r",
        "typed name",
        Some(token("r", "ada", all)),
        Publish::NONE,
    )
    .await
    .expect("a valid token joins");
    let mut bob = connect(
        &server,
        "r",
        "bob",
        Some(token("*", "bob", all)),
        Publish::NONE,
    )
    .await
    .expect("a token for any room joins");
    let names: Vec<String> = bob.others.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names, vec!["ada (token)".to_string()]);
    assert!(bob.others.iter().any(|p| p.id == ada.id));
    bob.clear_backlog();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_check_gets_a_hidden_room_of_its_own() {
    // The /check page's joins: the token is checked for the meeting's room, but the check
    // lands in a room of its own, hidden and receive-only; nobody in the meeting sees it.
    let server = start_secured().await;
    let all = Grants::default();
    let mut ada = connect(
        &server,
        "meet",
        "ada",
        Some(token("meet", "ada", all)),
        Publish::NONE,
    )
    .await
    .unwrap();
    let mut check = Client::connect(
        ClientOptions::new(server.ws_url(), "meet", "check")
            .token(token("meet", "bob", all))
            .check(),
    )
    .await
    .expect("a check with a token for the room joins");
    assert!(check.others.is_empty(), "alone in its own room");
    check
        .wait_for(WAIT, "the check's media connection", |e| {
            matches!(
                e,
                Event::SubscriberState(webrtc::peer_connection::RTCPeerConnectionState::Connected)
            )
            .then_some(())
        })
        .await
        .unwrap();
    let stats = server.sfu.stats();
    assert_eq!((stats.rooms, stats.participants), (2, 2));
    let mut seen = Vec::new();
    while let Ok(e) = ada.next_event(std::time::Duration::ZERO).await {
        seen.push(e);
    }
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Server(ServerMessage::ParticipantJoined { .. }))),
        "the meeting saw the check: {seen:?}"
    );
    // A token for another room is refused as for a join.
    let other = Client::connect(
        ClientOptions::new(server.ws_url(), "meet", "check")
            .token(token("elsewhere", "bob", all))
            .check(),
    )
    .await;
    assert_eq!(refusal(other).0, ErrorCode::Unauthorized);
    check.leave().await;
    ada.leave().await;
    server.stop().await;
}

#[tokio::test]
async fn open_dev_mode_grants_everything_but_room_admin() {
    let server = start().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The grants come in `joined`, which the client consumes: read them off a raw socket.
    let url = server.ws_url();
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            r#"{"type":"join","protocol":1,"room":"open","name":"dev"}"#.into(),
        ))
        .await
        .unwrap();
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m
                && let Ok(ServerMessage::Joined {
                    grants,
                    resume_token,
                    ..
                }) = serde_json::from_str(&t)
            {
                let _ = tx.send((grants, resume_token));
                break;
            }
        }
    });
    let (grants, resume) = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    assert_eq!(grants, Grants::default());
    assert!(!grants.room_admin);
    assert!(!resume.is_empty(), "joined carries a resume token");
    server.stop().await;
}

#[tokio::test]
async fn publishing_and_chatting_need_their_grants() {
    let server = start_secured().await;
    let all = Grants::default();
    let viewer = Grants {
        can_publish: false,
        can_chat: false,
        ..all
    };
    let mut watcher = connect(
        &server,
        "g",
        "watcher",
        Some(token("g", "watcher", all)),
        Publish::NONE,
    )
    .await
    .unwrap();
    let mut v = connect(
        &server,
        "g",
        "viewer",
        Some(token("g", "viewer", viewer)),
        Publish::AUDIO_VIDEO,
    )
    .await
    .unwrap();
    let msg = wait_error(&mut v, ErrorCode::Forbidden).await;
    assert!(msg.contains("publish"), "{msg}");

    chat_open(&mut v).await;
    chat_open(&mut watcher).await;
    v.chat("may I?").await.unwrap();
    let msg = wait_error(&mut v, ErrorCode::Forbidden).await;
    assert!(msg.contains("chat"), "{msg}");
    // The refused message was never relayed: the next one the watcher sees is a later one.
    let mut talker = connect(
        &server,
        "g",
        "talker",
        Some(token("g", "talker", all)),
        Publish::NONE,
    )
    .await
    .unwrap();
    chat_open(&mut talker).await;
    talker.chat("allowed").await.unwrap();
    assert_eq!(next_chat(&mut watcher).await, "allowed");

    // The viewer, refused twice, is still in the room and still receives the room's chat.
    assert_eq!(next_chat(&mut v).await, "allowed");
    assert_eq!(
        server.sfu.stats().published_tracks,
        0,
        "nothing was published"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_can_subscribe_nothing_is_received() {
    let server = start_secured().await;
    let all = Grants::default();
    let deaf = Grants {
        can_subscribe: false,
        ..all
    };
    let mut n = connect(
        &server,
        "s",
        "deaf",
        Some(token("s", "deaf", deaf)),
        Publish::NONE,
    )
    .await
    .unwrap();
    let mut control = connect(
        &server,
        "s",
        "control",
        Some(token("s", "control", all)),
        Publish::NONE,
    )
    .await
    .unwrap();
    let p = connect(
        &server,
        "s",
        "pub",
        Some(token("s", "pub", all)),
        Publish::AUDIO_VIDEO,
    )
    .await
    .unwrap();
    let _pump = p.start_media(Default::default());
    wait_tracks(&mut control, 2).await;
    for _ in 0..100 {
        control
            .wait_for(WAIT, "rtp", |e| {
                matches!(e, Event::Rtp { .. }).then_some(())
            })
            .await
            .unwrap();
    }
    // By now the control got 100 packets; the participant without the grant was told of the
    // tracks (room events) but got no media and no subscriber offer for them.
    let mut announced = false;
    while let Ok(e) = n.next_event(std::time::Duration::ZERO).await {
        match e {
            Event::Rtp { .. } | Event::TrackStarted { .. } => panic!("received media: {e:?}"),
            Event::Server(ServerMessage::ParticipantUpdated { participant })
                if !participant.tracks.is_empty() =>
            {
                announced = true
            }
            _ => {}
        }
    }
    assert!(announced, "the tracks were announced");
    server.stop().await;
}

#[tokio::test]
async fn hidden_participants_are_never_announced() {
    let server = start_secured().await;
    let all = Grants::default();
    let mut a = connect(
        &server,
        "h",
        "alice",
        Some(token("h", "alice", all)),
        Publish::NONE,
    )
    .await
    .unwrap();
    let hidden = Grants {
        hidden: true,
        ..all
    };
    let ghost = connect(
        &server,
        "h",
        "ghost",
        Some(token("h", "ghost", hidden)),
        Publish::NONE,
    )
    .await
    .unwrap();
    let c = connect(
        &server,
        "h",
        "carol",
        Some(token("h", "carol", all)),
        Publish::NONE,
    )
    .await
    .unwrap();
    assert_eq!(c.others.len(), 1, "carol sees alice only: {:?}", c.others);
    assert!(c.others.iter().all(|p| p.id != ghost.id));
    // Alice hears of carol, and of nobody before her (events arrive in order).
    let first = wait_server(&mut a, "participant joined", |m| match m {
        ServerMessage::ParticipantJoined { participant } => Some(participant.id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(first, c.id);
    // The ghost leaves unseen too: alice's next leave is carol's.
    let carol = c.id.clone();
    ghost.leave().await;
    c.leave().await;
    let left = wait_server(&mut a, "participant left", |m| match m {
        ServerMessage::ParticipantLeft { participant_id } => Some(participant_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, carol);
    server.stop().await;
}

/// A blocking GET or DELETE on the blocking pool: the status.
async fn http(method: &'static str, url: String, bearer: Option<String>) -> u16 {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = bearer.map(|k| format!("Bearer {k}"));
        let resp = if method == "DELETE" {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        } else {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        };
        resp.expect("HTTP request").status().as_u16()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn room_admin_tokens_open_the_admin_api_for_their_room_only() {
    let mut c = test_config();
    c.auth = auth();
    c.admin.api_key = "the-api-key".into();
    let server = start_with(c).await;
    let all = Grants::default();
    let admin = Grants {
        room_admin: true,
        ..all
    };
    let mut victim = connect(
        &server,
        "adm",
        "victim",
        Some(token("adm", "victim", all)),
        Publish::NONE,
    )
    .await
    .unwrap();
    let base = server.url();
    let room = format!("{base}/api/rooms/adm");
    let mod_token = token("adm", "moderator", admin);

    assert_eq!(
        http("GET", room.clone(), Some(mod_token.clone())).await,
        200
    );
    assert_eq!(
        http("GET", room.clone(), Some(token("adm", "plain", all))).await,
        401,
        "no room_admin"
    );
    assert_eq!(
        http("GET", room.clone(), Some(token("other", "m", admin))).await,
        401,
        "another room"
    );
    assert_eq!(http("GET", room.clone(), None).await, 401);
    // Server-wide calls need the API key itself.
    assert_eq!(
        http("GET", format!("{base}/api/rooms"), Some(mod_token.clone())).await,
        401
    );
    assert_eq!(
        http(
            "GET",
            format!("{base}/api/rooms"),
            Some("the-api-key".into())
        )
        .await,
        200
    );

    // The moderator removes a participant of its room.
    let kick = format!("{room}/participants/{}", victim.id);
    assert_eq!(http("DELETE", kick, Some(mod_token)).await, 204);
    wait_error(&mut victim, ErrorCode::Removed).await;
    server.stop().await;
}

#[tokio::test]
async fn each_limit_answers_with_its_error() {
    let mut c = test_config();
    c.room.max_rooms = 1;
    c.room.max_tracks_per_participant = 1;
    c.room.chat_per_second = 1;
    c.signal.messages_per_second = 2;
    let server = start_with(c).await;

    // Rooms on the server.
    let mut a = join(&server, "first", "a", Publish::NONE).await;
    let (code, msg) = refusal(connect(&server, "second", "b", None, Publish::NONE).await);
    assert_eq!(code, ErrorCode::LimitReached, "{msg}");

    // Tracks per participant: audio and video is two.
    let mut p = connect(&server, "first", "p", None, Publish::AUDIO_VIDEO)
        .await
        .unwrap();
    let msg = wait_error(&mut p, ErrorCode::LimitReached).await;
    assert!(msg.contains("at most 1"), "{msg}");

    // Chat rate.
    chat_open(&mut a).await;
    chat_open(&mut p).await;
    for i in 0..4 {
        a.chat(&format!("spam {i}")).await.unwrap();
    }
    let msg = wait_error(&mut a, ErrorCode::RateLimited).await;
    assert!(msg.contains("chat"), "{msg}");
    assert_eq!(
        next_chat(&mut p).await,
        "spam 0",
        "the first one went through"
    );

    // Signaling messages per connection: a burst of harmless messages.
    for _ in 0..20 {
        a.send_raw(r#"{"type":"pin","participant_ids":[]}"#);
    }
    let msg = wait_error(&mut a, ErrorCode::RateLimited).await;
    assert!(msg.contains("messages per second"), "{msg}");

    // Everyone is still here.
    assert_eq!(server.sfu.stats().participants, 2);
    server.stop().await;
}

#[tokio::test]
async fn joins_per_address_are_limited() {
    let mut c = test_config();
    c.signal.joins_per_second_per_ip = 1;
    let server = start_with(c).await;
    let mut kept = Vec::new();
    let mut refused = None;
    // A burst of two is allowed; one more a second. Ten joins in a row cannot all pass.
    for i in 0..10 {
        match connect(&server, "ip", &format!("c{i}"), None, Publish::NONE).await {
            Ok(c) => kept.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let (code, msg) = refusal(Err(refused.expect("a join was refused")));
    assert_eq!(code, ErrorCode::RateLimited, "{msg}");
    assert!(kept.len() >= 2, "the burst passed: {}", kept.len());
    server.stop().await;
}

#[tokio::test]
async fn websockets_from_foreign_pages_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = start().await;
    let url = server.ws_url();
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let with_origin = |origin: &str| {
        let mut r = url.as_str().into_client_request().unwrap();
        r.headers_mut().insert("Origin", origin.parse().unwrap());
        r
    };
    let err = tokio_tungstenite::connect_async(with_origin("http://evil.example"))
        .await
        .expect_err("a foreign origin is refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("not an HTTP refusal: {other}"),
    }
    // The server's own pages are welcome.
    tokio_tungstenite::connect_async(with_origin(&format!("http://{host}")))
        .await
        .expect("the same origin is accepted");
    server.stop().await;
}
