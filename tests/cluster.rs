//! Several nodes sharing one Redis (issue 8): a real `redis-server` on a free loopback
//! port, two or three in-process servers pointed at it, and webrtc-rs clients. A join
//! through any node ends on the room's owner; simultaneous first joins end in one room; a
//! stopped node's rooms are placed again after the TTL; a Redis outage keeps the rooms that
//! exist and refuses new placements until Redis is back.
//!
//! `redis-server` must be installed (scripts/test.sh does it); without it these tests fail.

mod common;

use common::*;
use confab::{Config, Server};
use confab_load::client::{Client, ClientOptions, Event, JoinRefused, MediaPlan, Publish};
use confab_proto::chat::ChatOut;
use confab_proto::{ErrorCode, RoomId};
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
