//! Several nodes sharing one Redis (issue 8): a real `redis-server` on a free loopback
//! port, two or three in-process servers pointed at it, and webrtc-rs clients. A join
//! through any node ends on the room's owner; simultaneous first joins end in one room; a
//! stopped node's rooms are placed again after the TTL; a Redis outage keeps the rooms that
//! exist and refuses new placements until Redis is back. These are of the redirect mode;
//! the cascade mode (a room across nodes, issue 15) has `a_room_across_three_nodes_*`.
//!
//! `redis-server` must be installed (scripts/test.sh does it); without it these tests fail.

mod common;

use common::*;
use confab::{Config, Server};
use confab_load::client::{Client, ClientOptions, Event, JoinRefused, MediaPlan, Publish};
use confab_proto::chat::ChatOut;
use confab_proto::{ErrorCode, MediaKind, ParticipantId, RoomId, ServerMessage};
use std::collections::HashSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "cluster-admin-key";

/// A `redis-server` child process on a loopback port, killed when dropped.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): the cluster tests need it. Install it with \
                     `scripts/need.sh redis-server redis-server` (scripts/test.sh does)"
                )
            });
        let mut redis = Redis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = redis.child.as_mut().map(|c| c.try_wait()) {
                panic!("redis-server on port {port} exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would: connections are reset, nothing is saved).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node of the test cluster: fast heartbeats and a short TTL.
fn node_config(redis: &Redis, id: &str) -> Config {
    let mut c = test_config();
    c.cluster.redis_url = Some(redis.url());
    c.cluster.node_id = Some(id.into());
    // These tests are of the redirect mode; cascade has tests/cascade.rs.
    c.cluster.mode = confab_cluster::ClusterMode::Redirect;
    c.cluster.heartbeat_ms = 100;
    c.cluster.ttl_ms = 1_000;
    c.admin.api_key = KEY.into();
    c
}

async fn start_nodes(redis: &Redis, ids: &[&str]) -> Vec<Server> {
    start_nodes_with(redis, ids, |_| {}).await
}

async fn start_nodes_with(redis: &Redis, ids: &[&str], tweak: impl Fn(&mut Config)) -> Vec<Server> {
    let mut nodes = Vec::new();
    for id in ids {
        let mut config = node_config(redis, id);
        tweak(&mut config);
        nodes.push(start_with(config).await);
    }
    // Each has seen all the others (a heartbeat after the last one registered).
    wait_until(|| {
        nodes
            .iter()
            .all(|n| cluster_of(n).nodes_seen() == ids.len())
    })
    .await;
    nodes
}

fn cluster_of(s: &Server) -> &confab_cluster::Cluster {
    s.cluster().expect("a cluster node")
}

/// Index of the node whose signaling URL `url` is.
fn node_at(nodes: &[Server], url: &str) -> usize {
    nodes
        .iter()
        .position(|n| n.ws_url() == url)
        .unwrap_or_else(|| panic!("{url} is none of the nodes"))
}

async fn connect(node: &Server, room: &str, name: &str, publish: Publish) -> Client {
    Client::connect(ClientOptions::new(node.ws_url(), room, name).publish(publish))
        .await
        .unwrap_or_else(|e| panic!("{name} joins {room}: {e:#}"))
}

async fn refused(node: &Server, room: &str) -> JoinRefused {
    let r = Client::connect(ClientOptions::new(node.ws_url(), room, "late").publish(Publish::NONE))
        .await;
    match r {
        Ok(_) => panic!("a join of {room} was accepted"),
        Err(e) => e
            .downcast::<JoinRefused>()
            .unwrap_or_else(|e| panic!("not a refusal: {e:#}")),
    }
}

async fn http_get(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(&url)
            .header("Authorization", format!("Bearer {KEY}"))
            .call()
            .expect("HTTP request");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    })
    .await
    .unwrap()
}

async fn cluster_view(node: &Server) -> serde_json::Value {
    let (status, body) = http_get(format!("{}/api/cluster", node.url())).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The id of the node that owns `room`, per `GET /api/cluster`.
fn owner_in(view: &serde_json::Value, room: &str) -> Option<String> {
    view["nodes"].as_array()?.iter().find_map(|n| {
        n["rooms_owned"]
            .as_array()?
            .iter()
            .any(|r| r == room)
            .then(|| n["id"].as_str().unwrap_or_default().to_string())
    })
}

async fn metric(node: &Server, name: &str) -> i64 {
    let (_, text) = http_get(format!("{}/metrics", node.url())).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

async fn chat_open(c: &mut Client) {
    c.wait_for(WAIT, "chat open", |e| {
        matches!(e, Event::ChatOpen).then_some(())
    })
    .await
    .unwrap();
}

async fn wait_chat(c: &mut Client, text: &str) {
    c.wait_for(WAIT, &format!("chat {text:?}"), |e| match e {
        Event::Chat(ChatOut::Chat { text: t, .. }) if t == text => Some(()),
        _ => None,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_another_node_ends_on_the_owner() {
    // A webhook receiver, to see which node each event comes from.
    let events: Arc<Mutex<Vec<serde_json::Value>>> = Default::default();
    let ev = events.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let ev = ev.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    ev.lock().unwrap().push(v);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let redis = Redis::start();
    let nodes = start_nodes_with(&redis, &["a", "b"], |c| {
        c.webhooks.urls = vec![hook.clone()]
    })
    .await;

    let mut alice = connect(&nodes[0], "standup", "alice", Publish::AUDIO_VIDEO).await;
    let owner = node_at(&nodes, alice.url());
    let other = 1 - owner;
    // Webhook events carry the id of the node that hosts the room.
    let owner_id = cluster_of(&nodes[owner]).node_id().to_string();
    wait_until(|| {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "room_started" && e["room"] == "standup")
    })
    .await;
    for e in events.lock().unwrap().iter() {
        assert_eq!(e["node"], owner_id.as_str(), "{e}");
    }

    // Bob connects to the node that does not host the room and is sent to the one that does.
    let mut bob = connect(&nodes[other], "standup", "bob", Publish::AUDIO_VIDEO).await;
    assert_eq!(bob.redirected_from(), Some(nodes[other].ws_url().as_str()));
    assert_eq!(bob.url(), nodes[owner].ws_url());
    assert!(bob.others.iter().any(|p| p.id == alice.id));
    assert!(!nodes[other].sfu.hosts(&RoomId::parse("standup").unwrap()));

    // Media both ways, checked packet by packet.
    let _pa = alice.start_media(MediaPlan::default());
    let _pb = bob.start_media(MediaPlan::default());
    let from_bob = wait_tracks(&mut alice, 2).await;
    assert!(from_bob.iter().all(|(_, p, _)| *p == bob.id));
    let from_alice = wait_tracks(&mut bob, 2).await;
    assert!(from_alice.iter().all(|(_, p, _)| *p == alice.id));
    sample_rtp(&mut bob, 50).await;

    // Chat both ways.
    chat_open(&mut alice).await;
    chat_open(&mut bob).await;
    bob.chat("hello from the other node").await.unwrap();
    wait_chat(&mut alice, "hello from the other node").await;
    alice.chat("hello back").await.unwrap();
    wait_chat(&mut bob, "hello back").await;

    // Operations: any node reports the whole cluster and where the room lives.
    let view = cluster_view(&nodes[other]).await;
    assert_eq!(view["node"], cluster_of(&nodes[other]).node_id());
    assert_eq!(view["nodes"].as_array().unwrap().len(), 2, "{view}");
    assert_eq!(
        owner_in(&view, "standup").as_deref(),
        Some(cluster_of(&nodes[owner]).node_id())
    );
    assert_eq!(metric(&nodes[other], "confab_cluster_redis_up").await, 1);
    assert_eq!(metric(&nodes[other], "confab_cluster_nodes").await, 2);
    assert!(metric(&nodes[other], "confab_cluster_redirects_total").await >= 1);
    // Unauthorised callers get nothing.
    let (status, _) = tokio::task::spawn_blocking({
        let url = format!("{}/api/cluster", nodes[0].url());
        move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let resp = agent.get(&url).call().expect("HTTP request");
            (resp.status().as_u16(), ())
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 401);

    alice.leave().await;
    bob.leave().await;
    // The emptied room is released: its name is free for any node again.
    let mut released = false;
    let deadline = Instant::now() + WAIT;
    while !released && Instant::now() < deadline {
        released = owner_in(&cluster_view(&nodes[0]).await, "standup").is_none();
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a condition
    }
    assert!(released, "the emptied room kept its claim");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_joins_end_in_one_room() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, &["a", "b"]).await;
    for i in 0..6 {
        let room = format!("race-{i}");
        let (x, y) = tokio::join!(
            connect(&nodes[0], &room, "x", Publish::NONE),
            connect(&nodes[1], &room, "y", Publish::NONE)
        );
        assert_eq!(x.url(), y.url(), "{room} opened on two nodes");
        // One of them joined second and found the other there.
        let together =
            x.others.iter().any(|p| p.id == y.id) || y.others.iter().any(|p| p.id == x.id);
        assert!(together, "{room}: the two joins are not in one room");
        let id = RoomId::parse(&room).unwrap();
        assert_eq!(
            nodes.iter().filter(|n| n.sfu.hosts(&id)).count(),
            1,
            "{room} is open on both nodes"
        );
        x.leave().await;
        y.leave().await;
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_nodes_rooms_are_placed_again_after_the_ttl() {
    let redis = Redis::start();
    let mut nodes = start_nodes(&redis, &["a", "b", "c"]).await;
    let mut alice = connect(&nodes[0], "weekly", "alice", Publish::NONE).await;
    let owner = node_at(&nodes, alice.url());
    let dead_id = cluster_of(&nodes[owner]).node_id().to_string();

    let dead = nodes.remove(owner);
    dead.stop().await;
    alice
        .wait_for(WAIT, "the connection to close", |e| {
            matches!(e, Event::Closed).then_some(())
        })
        .await
        .unwrap();
    alice.close().await;

    // The survivors see the stopped node drop out once its record expires.
    wait_until(|| nodes.iter().all(|n| cluster_of(n).nodes_seen() == 2)).await;
    let view = cluster_view(&nodes[0]).await;
    assert!(
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["id"] != dead_id.as_str()),
        "{view}"
    );

    // Reconnecting through either survivor lands both on one live node.
    let alice = connect(&nodes[1], "weekly", "alice", Publish::NONE).await;
    let bob = connect(&nodes[0], "weekly", "bob", Publish::NONE).await;
    assert_eq!(alice.url(), bob.url());
    let now_owner = node_at(&nodes, alice.url());
    assert!(bob.others.iter().any(|p| p.id == alice.id));
    let view = cluster_view(&nodes[0]).await;
    assert_eq!(
        owner_in(&view, "weekly").as_deref(),
        Some(cluster_of(&nodes[now_owner]).node_id())
    );
    alice.leave().await;
    bob.leave().await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_rooms_and_refuses_new_placements() {
    let mut redis = Redis::start();
    let port = redis.port;
    let nodes = start_nodes(&redis, &["a", "b"]).await;
    let mut alice = connect(&nodes[0], "daily", "alice", Publish::NONE).await;
    let owner = node_at(&nodes, alice.url());
    let other = 1 - owner;
    let mut bob = connect(&nodes[other], "daily", "bob", Publish::NONE).await;
    assert_eq!(bob.url(), alice.url());
    chat_open(&mut alice).await;
    chat_open(&mut bob).await;

    redis.kill();
    wait_until(|| nodes.iter().all(|n| !cluster_of(n).is_up())).await;
    assert_eq!(metric(&nodes[owner], "confab_cluster_redis_up").await, 0);

    // The meeting goes on: chat is relayed, and a join at the owner is served.
    alice.chat("redis is down").await.unwrap();
    wait_chat(&mut bob, "redis is down").await;
    let carol = connect(&nodes[owner], "daily", "carol", Publish::NONE).await;
    assert!(carol.others.iter().any(|p| p.id == bob.id));

    // What needs a placement is refused, with a clear error, on either node.
    for node in &nodes {
        let e = refused(node, "fresh").await;
        assert_eq!(e.code, ErrorCode::ClusterUnavailable, "{e}");
        assert!(e.message.contains("try again"), "{e}");
    }
    let e = refused(&nodes[other], "daily").await;
    assert_eq!(e.code, ErrorCode::ClusterUnavailable, "{e}");
    assert!(metric(&nodes[other], "confab_cluster_refusals_total").await >= 2);

    // Redis comes back empty: the nodes register again and re-claim their rooms.
    let redis = Redis::start_on(port);
    wait_until(|| {
        nodes
            .iter()
            .all(|n| cluster_of(n).is_up() && cluster_of(n).nodes_seen() == 2)
    })
    .await;
    let dave = connect(&nodes[other], "daily", "dave", Publish::NONE).await;
    assert_eq!(dave.url(), alice.url(), "the room was not claimed again");
    let fresh = connect(&nodes[0], "fresh", "erin", Publish::NONE).await;
    bob.chat("redis is back").await.unwrap();
    wait_chat(&mut alice, "redis is back").await;

    for c in [alice, bob, carol, dave, fresh] {
        c.leave().await;
    }
    for n in nodes {
        n.stop().await;
    }
    drop(redis);
}

/// Cascade mode (issue 15): participants join the node they reach and one room on three
/// nodes is one meeting.
async fn start_cascade(redis: &Redis, ids: &[&str]) -> Vec<Server> {
    start_nodes_with(redis, ids, |c| {
        c.cluster.mode = confab_cluster::ClusterMode::Cascade;
        c.cluster.secret = Some("cascade-test-secret-0123456789".into());
    })
    .await
}

/// Waits until `c` knows (from its `joined` or later `participant_joined`) everyone in
/// `want`.
async fn learn(c: &mut Client, want: &HashSet<ParticipantId>) {
    let mut known: HashSet<ParticipantId> = c.others.iter().map(|p| p.id.clone()).collect();
    while !want.is_subset(&known) {
        let id = wait_server(c, "participant_joined", |m| match m {
            ServerMessage::ParticipantJoined { participant } => Some(participant.id.clone()),
            _ => None,
        })
        .await;
        known.insert(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_across_three_nodes_is_one_meeting() {
    init_tracing();
    let redis = Redis::start();
    let mut nodes = start_cascade(&redis, &["n1", "n2", "n3"]).await;
    // The first participant, alone on node 1, says something before anyone else is
    // there: the others get it in their history, on whichever node they join.
    let mut first = connect(&nodes[0], "cascade", "a0", Publish::AUDIO_VIDEO).await;
    chat_open(&mut first).await;
    first.chat("before the others").await.unwrap();
    // Node 1 has it once a second participant there gets it in its history.
    let mut second = connect(&nodes[0], "cascade", "a1", Publish::AUDIO_VIDEO).await;
    chat_open(&mut second).await;
    wait_chat(&mut second, "before the others").await;
    let mut clients = vec![first, second];
    for (node, name) in [(1, "b0"), (1, "b1"), (2, "c0"), (2, "c1")] {
        let c = connect(&nodes[node], "cascade", name, Publish::AUDIO_VIDEO).await;
        assert_eq!(c.url(), nodes[node].ws_url(), "joined where it connected");
        clients.push(c);
    }
    let ids: Vec<ParticipantId> = clients.iter().map(|c| c.id.clone()).collect();
    let everyone: HashSet<ParticipantId> = ids.iter().cloned().collect();
    assert_eq!(everyone.len(), 6, "ids are unique across nodes");
    for c in clients.iter_mut() {
        let mut others = everyone.clone();
        others.remove(&c.id);
        learn(c, &others).await;
    }
    let _media: Vec<_> = clients
        .iter_mut()
        .map(|c| c.start_media(MediaPlan::default()))
        .collect();
    // Everyone receives the other five's audio and video, payloads intact.
    for c in clients.iter_mut() {
        let mut others = everyone.clone();
        others.remove(&c.id);
        let tracks = wait_tracks(c, 10).await;
        let from: HashSet<ParticipantId> = tracks.iter().map(|(_, p, _)| p.clone()).collect();
        assert_eq!(from, others, "{} receives from the other five", c.id);
        let kinds = tracks
            .iter()
            .filter(|(_, _, k)| *k == MediaKind::Audio)
            .count();
        assert_eq!(kinds, 5, "five audio tracks, five video");
        sample_rtp(c, 200).await;
    }
    // Chat: the last joiner (node 3) got the history; what it says reaches everyone.
    let last = clients.last_mut().unwrap();
    chat_open(last).await;
    last.wait_for(WAIT, "the history", |e| match e {
        Event::Chat(ChatOut::Chat { text, history, .. }) if text == "before the others" => {
            Some(*history)
        }
        _ => None,
    })
    .await
    .map(|h| assert!(h, "replayed as history"))
    .unwrap();
    last.chat("from node three").await.unwrap();
    for c in clients.iter_mut().take(5) {
        chat_open(c).await;
        wait_chat(c, "from node three").await;
    }
    // Each node's relay links carry media to and from the other two.
    // (The links' stats are a snapshot taken every 250 ms: polled until it shows them.)
    for n in &nodes {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = http_get(format!("{}/api/stats", n.url())).await;
            assert_eq!(status, 200);
            let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
            let links = stats["relay_links"].as_array().expect("relay_links");
            let live = links
                .iter()
                .filter(|l| {
                    l["alive"] == true
                        && l["packets_sent"].as_u64() > Some(0)
                        && l["rtt_us"].is_u64()
                })
                .count();
            if live == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "two live links with media and an RTT: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await; // polling interval
        }
    }
    assert!(metric(&nodes[0], "confab_cascade_refused_total").await == 0);
    // Node 1's admin view says where everyone is.
    let (status, body) = http_get(format!("{}/api/rooms/cascade", nodes[0].url())).await;
    assert_eq!(status, 200, "{body}");
    let room: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        room["participants"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    let mut elsewhere: Vec<(String, String)> = room["elsewhere"]
        .as_array()
        .expect("elsewhere")
        .iter()
        .map(|e| {
            (
                e["participant"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    elsewhere.sort();
    let expect = [("b0", "n2"), ("b1", "n2"), ("c0", "n3"), ("c1", "n3")];
    assert_eq!(
        elsewhere,
        expect.map(|(a, b)| (a.to_string(), b.to_string())),
        "{body}"
    );

    // Node 3 stops without a word: its two participants vanish from the other four's
    // views within 10 s, and the four keep talking.
    let crashed = Instant::now();
    let gone: HashSet<ParticipantId> = ids[4..].iter().cloned().collect();
    nodes.remove(2).crash().await;
    let mut survivors: Vec<Client> = clients.drain(..4).collect();
    for c in survivors.iter_mut() {
        let mut left = HashSet::new();
        while left != gone {
            let remaining = Duration::from_secs(10).saturating_sub(crashed.elapsed());
            let id = c
                .wait_for(remaining, "node 3's participants to leave", |e| match e {
                    Event::Server(ServerMessage::ParticipantLeft { participant_id }) => {
                        Some(participant_id.clone())
                    }
                    _ => None,
                })
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
            left.insert(id);
        }
    }
    let took = crashed.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    for c in survivors.iter_mut() {
        // What arrived before the crash is not the question.
        c.clear_backlog();
        let from: HashSet<ParticipantId> = sample_rtp(c, 300)
            .await
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert!(from.is_disjoint(&gone), "nothing from the gone node");
        assert_eq!(from.len(), 3, "still hears the other three");
    }
    for c in survivors {
        c.leave().await;
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cascade_room_outlives_a_redis_outage_and_catches_up() {
    init_tracing();
    let mut redis = Redis::start();
    let port = redis.port;
    let nodes = start_cascade(&redis, &["r1", "r2"]).await;
    let mut ann = connect(&nodes[0], "outage", "ann", Publish::AUDIO_VIDEO).await;
    let mut ben = connect(&nodes[1], "outage", "ben", Publish::AUDIO_VIDEO).await;
    learn(&mut ann, &HashSet::from([ben.id.clone()])).await;
    let _pa = ann.start_media(MediaPlan::default());
    let _pb = ben.start_media(MediaPlan::default());
    wait_tracks(&mut ann, 2).await;
    wait_tracks(&mut ben, 2).await;

    // Redis goes away: the relay link does not need it, media keeps flowing both ways.
    redis.kill();
    let (ann_id, ben_id) = (ann.id.clone(), ben.id.clone());
    for (c, other) in [(&mut ann, ben_id), (&mut ben, ann_id)] {
        c.clear_backlog();
        let from: HashSet<ParticipantId> = sample_rtp(c, 200)
            .await
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(from, HashSet::from([other]));
    }
    // A join on node 2 meanwhile is served (cascade never asks Redis to place a room);
    // node 1 cannot hear of it yet.
    let cat = connect(&nodes[1], "outage", "cat", Publish::NONE).await;
    assert!(
        cat.others.iter().any(|p| p.id == ann.id),
        "node 2 knew ann already"
    );

    // Redis comes back (empty): the fact that waited is written, node 1 reads it.
    let _redis = Redis::start_on(port);
    wait_server(&mut ann, "cat joins, once Redis is back", |m| match m {
        ServerMessage::ParticipantJoined { participant } if participant.id == cat.id => Some(()),
        _ => None,
    })
    .await;
    cat.leave().await;
    ann.leave().await;
    ben.leave().await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_leaves_and_comes_back_with_its_media() {
    init_tracing();
    let redis = Redis::start();
    let nodes = start_cascade(&redis, &["p1", "p2"]).await;
    let mut ann = connect(&nodes[0], "split", "ann", Publish::AUDIO_VIDEO).await;
    let mut ben = connect(&nodes[1], "split", "ben", Publish::AUDIO_VIDEO).await;
    learn(&mut ann, &HashSet::from([ben.id.clone()])).await;
    let _pa = ann.start_media(MediaPlan::default());
    let _pb = ben.start_media(MediaPlan::default());
    wait_tracks(&mut ann, 2).await;
    wait_tracks(&mut ben, 2).await;

    // The link between the nodes breaks: each side sees the other's participant leave.
    let link = cluster_of(&nodes[1]).cascade().expect("cascade mode");
    link.set_partitioned(true);
    let (ann_id, ben_id) = (ann.id.clone(), ben.id.clone());
    for (c, other) in [(&mut ann, ben_id.clone()), (&mut ben, ann_id.clone())] {
        wait_server(c, "the other side leaves", |m| match m {
            ServerMessage::ParticipantLeft { participant_id } if *participant_id == other => {
                Some(())
            }
            _ => None,
        })
        .await;
    }
    assert_eq!(
        metric(&nodes[0], "confab_cascade_nodes_lost_total").await,
        1
    );

    // It heals: both sides say hello again and each sees the other join again. The
    // relays come back: a participant joining node 1 now receives ben's audio and video
    // from node 2 (a down-track's video starts on a keyframe). (Ann's and ben's subscriber
    // connections get the other's tracks again too, with the same track ids on reused
    // transceivers, which the webrtc-rs client does not report as new tracks: a browser
    // does.)
    link.set_partitioned(false);
    for (c, other) in [(&mut ann, ben_id.clone()), (&mut ben, ann_id)] {
        wait_server(c, "the other side is back", |m| match m {
            ServerMessage::ParticipantJoined { participant } if participant.id == other => Some(()),
            _ => None,
        })
        .await;
    }
    let mut dan = connect(&nodes[0], "split", "dan", Publish::NONE).await;
    let tracks = wait_tracks(&mut dan, 4).await;
    let from: HashSet<ParticipantId> = tracks.iter().map(|(_, p, _)| p.clone()).collect();
    assert!(from.contains(&ben_id), "{tracks:?}");
    sample_rtp(&mut dan, 100).await;
    dan.leave().await;
    ann.leave().await;
    ben.leave().await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_switch_across_nodes_keeps_the_stream_continuous() {
    // Alice publishes three simulcast layers on node 1; bob watches on node 2 and asks
    // for each layer in turn. Only the wanted layer crosses the relay link; each switch
    // needs a keyframe asked of alice across it (her encoder sends none on its own here).
    let redis = Redis::start();
    let nodes = start_cascade(&redis, &["s1", "s2"]).await;
    let alice = connect(&nodes[0], "layers", "alice", Publish::SIMULCAST).await;
    let _pump = alice.start_media(MediaPlan {
        keyframe_every: Duration::from_secs(3600),
        ..MediaPlan::default()
    });
    let mut bob = connect(&nodes[1], "layers", "bob", Publish::NONE).await;
    let (track, from) = video_track(&mut bob).await;
    assert_eq!(from, alice.id);
    wait_layer(&mut bob, &track, 2).await;
    let seen = record_layer_switches(&mut bob, &track).await;
    assert_continuous(&seen);
    bob.leave().await;
    alice.leave().await;
    for n in nodes {
        n.stop().await;
    }
}
