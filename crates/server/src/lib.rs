//! The `confab` server: configuration, wiring and graceful shutdown. The binary
//! (`main.rs`) adds the command line and logging; tests start a [`Server`] in-process.

pub mod config;
pub mod http;
pub mod memory;
pub mod turn;

pub use config::Config;

use anyhow::Context;
use confab_sfu::Sfu;
use confab_signal::{AppState, router};
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the server forgets what it no longer needs (per-address limiter entries) and
/// gives free heap memory back to the system.
const HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(10);

/// A running server.
pub struct Server {
    pub http_addr: SocketAddr,
    pub sfu: Sfu,
    /// `http` or `https`.
    scheme: &'static str,
    sessions: std::sync::Arc<std::sync::atomic::AtomicI64>,
    resumes: confab_signal::resume::Resumes,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cluster: Option<confab_cluster::Cluster>,
    /// Budgets and deadlines of the signaling edge (what they refused).
    pub guards: std::sync::Arc<confab_signal::guard::Guards>,
    /// The limits the listener applies (the connection cap as computed at start).
    pub http_limits: http::Limits,
    /// The embedded TURN server, when `turn.port` is set.
    pub turn: Option<turn::EmbeddedTurn>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
}

impl Server {
    /// Binds the HTTP listener and the media sockets and starts serving.
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        config.validate()?;
        let node_id = config.cluster.enabled().then(|| {
            config
                .cluster
                .node_id
                .clone()
                .unwrap_or_else(confab_cluster::random_node_id)
        });
        let mut webhooks = config.webhooks.clone();
        if let Some(id) = &node_id
            && webhooks.node_id.is_empty()
        {
            webhooks.node_id = id.clone();
        }
        let webhook_stats = std::sync::Arc::new(confab_signal::webhooks::WebhookStats::default());
        let events = (!webhooks.urls.is_empty())
            .then(|| confab_signal::webhooks::start(webhooks, webhook_stats.clone()));
        // Cascade: what the rooms' copies tell copies on other nodes goes to the transport
        // (started once the cluster is).
        let cascading =
            node_id.is_some() && config.cluster.mode == confab_cluster::ClusterMode::Cascade;
        let (remote_tx, remote_rx) = if cascading {
            let (tx, rx) = tokio::sync::mpsc::channel(confab_sfu::worker::relay::LINK_CAPACITY);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let sfu = Sfu::start_cascaded(config.sfu(), events, remote_tx)
            .context("starting the media plane")?;
        let fd_limit = http::raise_fd_limit();
        let max_connections = match config.http.max_connections {
            0 => (fd_limit.saturating_sub(config.http.fd_reserve) as usize).max(64),
            n => n,
        };
        let http_limits = http::Limits {
            max_connections,
            ops_reserve: config.http.ops_reserve.min(max_connections / 2),
            header_read_timeout: std::time::Duration::from_millis(
                config.http.header_read_timeout_ms,
            ),
        };
        tracing::info!(
            fd_limit,
            max_connections,
            ops_reserve = http_limits.ops_reserve,
            "HTTP connection cap"
        );
        let listener = tokio::net::TcpListener::bind(config.http.bind)
            .await
            .with_context(|| format!("binding HTTP on {}", config.http.bind))?;
        let http_addr = listener.local_addr()?;
        let verifier = confab_signal::auth::Verifier::new(&config.auth)
            .context("access tokens (the [auth] section)")?;
        if verifier.is_open() {
            tracing::warn!(
                "OPEN DEV MODE: anyone may join any room without an access token. \
                 Set auth.required = true and auth.secret (see config/production.toml) before \
                 exposing this server"
            );
        }
        let cluster = match node_id {
            Some(id) => Some(start_cluster(&config, id, http_addr, &sfu).await?),
            None => None,
        };
        if let (Some(cl), Some(rx)) = (&cluster, remote_rx) {
            let c = &config.cluster;
            let cascade = confab_cluster::cascade::start(
                confab_cluster::cascade::CascadeConfig {
                    node: cl.node_id().to_string(),
                    secret: c.secret.clone().unwrap_or_default(),
                    redis_url: c.redis_url.clone().unwrap_or_default(),
                    bind: SocketAddr::new(config.media.bind_ip, c.relay_port),
                    announce_ip: config.media.announce_ip.unwrap_or(config.media.bind_ip),
                    heartbeat: std::time::Duration::from_millis(c.heartbeat_ms),
                    ttl: std::time::Duration::from_millis(c.ttl_ms),
                    encrypt: c.relay_encrypt,
                },
                sfu.clone(),
                rx,
            )
            .await
            .context("starting the relay link between nodes (the [cluster] section)")?;
            cl.set_cascade(cascade);
        }
        let tls = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key).with_context(|| {
                format!("TLS certificate {} / key {}", cert.display(), key.display())
            })?),
            (None, None) => None,
            _ => anyhow::bail!("http.tls_cert and http.tls_key go together"),
        };
        let turn_stats = std::sync::Arc::new(confab_signal::turn::TurnStats::default());
        let embedded_turn = if config.turn.port != 0 {
            Some(start_turn(&mut config, &sfu, tls.clone(), turn_stats.clone()).await?)
        } else {
            None
        };
        let mut state = AppState::new(sfu.clone(), config.signal(), verifier);
        state.turn = turn_stats;
        state.webhooks = webhook_stats;
        state.cluster = cluster.clone();
        let sessions = state.sessions.clone();
        let resumes = state.resumes.clone();
        let ready = state.ready.clone();
        let guards = state.guards.clone();
        let housekeeping = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(HOUSEKEEPING);
                loop {
                    every.tick().await;
                    state.prune();
                    memory::release_free();
                }
            })
        };
        let app = router(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(http::serve(
            listener,
            app,
            tls,
            http_limits,
            guards.clone(),
            async {
                let _ = stopped.await;
            },
            std::time::Duration::from_secs(1),
        ));
        tracing::info!(http = %http_addr, media = ?sfu.media_addrs(), "confab listening");
        if config.admin.api_key.is_empty() {
            tracing::info!("admin API disabled (no admin.api_key)");
        }
        Ok(Server {
            http_addr,
            sfu,
            scheme,
            sessions,
            resumes,
            ready,
            cluster,
            guards,
            http_limits,
            turn: embedded_turn,
            stop,
            task,
            housekeeping,
        })
    }

    /// With several nodes: this node's handle on the cluster (its id, Redis health).
    pub fn cluster(&self) -> Option<&confab_cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// Participants whose connection dropped, waiting for their client to resume.
    pub fn resumes_parked(&self) -> usize {
        self.resumes.len()
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.http_addr)
    }

    pub fn ws_url(&self) -> String {
        let ws = if self.scheme == "https" { "wss" } else { "ws" };
        format!("{ws}://{}/ws", self.http_addr)
    }

    /// Drains, then stops: `/readyz` fails and joins are refused at once, every participant
    /// is told (a non-fatal `server_shutting_down`), and the meetings in progress go on
    /// until the last participant leaves or `deadline` passes, or `force` resolves (a
    /// second signal). Then [`Server::stop`].
    pub async fn drain(
        self,
        deadline: std::time::Duration,
        force: impl std::future::Future<Output = ()>,
    ) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = &self.cluster {
            c.set_draining();
        }
        let secs = deadline.as_secs();
        self.sfu
            .drain(format!(
                "the server is restarting: no one new can join, and this meeting ends within {secs} s"
            ))
            .await;
        tracing::info!(
            deadline_s = secs,
            "draining: waiting for the meetings to end"
        );
        let sfu = self.sfu.clone();
        let emptied = async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            while sfu.stats().participants > 0 {
                tick.tick().await;
            }
        };
        tokio::select! {
            _ = emptied => tracing::info!("drained: every meeting ended"),
            _ = tokio::time::sleep(deadline) => tracing::info!("drain deadline reached"),
            _ = force => tracing::info!("stopping now"),
        }
        self.stop().await;
    }

    /// Stops as a crash would, as far as the other nodes can tell: the relay link and the
    /// heartbeats stop first, without a word, then the node stops (tests of node
    /// failure).
    pub async fn crash(self) {
        if let Some(c) = &self.cluster {
            if let Some(cc) = c.cascade() {
                cc.stop();
            }
            c.stop().await;
        }
        self.stop().await;
    }

    /// Tells every participant the server is shutting down, stops the media workers,
    /// lets the sessions deliver that notice and close (for up to `drain`), then stops
    /// the HTTP listener.
    ///
    /// With several nodes, heartbeats stop first: the node's record and its rooms' claims
    /// expire after `cluster.ttl_ms`, as after a crash, and its clients rejoin elsewhere.
    pub async fn stop(self) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = &self.cluster {
            c.stop().await;
        }
        self.sfu.shutdown().await;
        // The other nodes were told who left here; nothing more to relay.
        if let Some(c) = self.cluster.as_ref().and_then(|c| c.cascade()) {
            c.stop();
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.sessions.load(std::sync::atomic::Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.housekeeping.abort();
        if let Some(t) = self.turn {
            t.close().await;
        }
        // The listener gives in-flight requests a second, then drops every connection
        // left, whatever its peer is doing: a stop is never held up by a client.
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Registers this node in the cluster's Redis and starts its heartbeat. The load it
/// publishes comes from the media plane's own counters.
async fn start_cluster(
    config: &Config,
    id: String,
    http_addr: SocketAddr,
    sfu: &Sfu,
) -> anyhow::Result<confab_cluster::Cluster> {
    let ws = if config.http.tls_cert.is_some() {
        "wss"
    } else {
        "ws"
    };
    let url = config
        .cluster
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{ws}://{http_addr}/ws"));
    let me = confab_cluster::Identity {
        id,
        url,
        media: sfu.media_addrs().iter().map(|a| a.to_string()).collect(),
    };
    let s = sfu.clone();
    let mode = config.cluster.mode;
    let local: confab_cluster::LocalView = std::sync::Arc::new(move || {
        let stats = s.stats();
        confab_cluster::LocalState {
            // Cascade: rooms are not claimed (every node serves them).
            rooms: match mode {
                confab_cluster::ClusterMode::Cascade => Vec::new(),
                confab_cluster::ClusterMode::Redirect => {
                    s.hosted_rooms().into_iter().map(|(r, _)| r).collect()
                }
            },
            participants: stats.participants.max(0) as usize,
            datagrams_out: stats.datagrams_out.max(0) as u64,
        }
    });
    confab_cluster::Cluster::start(&config.cluster, me, local)
        .await
        .context("joining the cluster (the [cluster] section)")
}

/// Starts the embedded TURN server and points the ICE servers given to clients at it
/// (unless `turn.urls` names others), with `turn.secret` or one drawn now.
async fn start_turn(
    config: &mut Config,
    sfu: &Sfu,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stats: std::sync::Arc<confab_signal::turn::TurnStats>,
) -> anyhow::Result<turn::EmbeddedTurn> {
    let secret = config
        .turn
        .secret
        .get_or_insert_with(|| format!("{:032x}", rand::random::<u128>()))
        .clone();
    let announce = config.media.announce_ip.unwrap_or(config.media.bind_ip);
    let relay_ip = config.turn.relay_ip.unwrap_or(announce);
    let media = sfu
        .media_addrs()
        .into_iter()
        .map(|a| std::net::SocketAddr::new(announce, a.port()))
        .collect();
    let t = turn::start(
        &config.turn,
        secret,
        config.media.bind_ip,
        relay_ip,
        media,
        tls,
        stats,
    )
    .await
    .context("starting the embedded TURN server (the [turn] section)")?;
    if config.turn.urls.is_empty() {
        let host = config.turn.host.clone().unwrap_or_else(|| match announce {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        config.turn.urls = vec![
            format!("turn:{host}:{}?transport=udp", t.udp_addr.port()),
            format!("turn:{host}:{}?transport=tcp", t.tcp_addr.port()),
        ];
        if let Some(a) = t.tls_addr {
            config
                .turn
                .urls
                .push(format!("turns:{host}:{}?transport=tcp", a.port()));
        }
    }
    Ok(t)
}
