//! Configuration: built-in defaults, then a TOML file (unknown keys are errors), then
//! `CONFAB_`-prefixed environment variables (`CONFAB_HTTP__BIND=...`), then command-line
//! flags; then validation. The built-in defaults equal `config/default.toml`, so the
//! server runs from anywhere without it.

use confab_cluster::ClusterConfig;
use confab_sfu::{RecordingConfig, SfuConfig};
use confab_signal::SignalConfig;
use confab_signal::auth::AuthConfig;
use confab_signal::webhooks::WebhookConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub room: RoomConfig,
    pub signal: SignalConfig,
    pub recording: RecordingConfig,
    pub webhooks: WebhookConfig,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    /// TURN servers given to clients, and the secret that mints their credentials.
    pub turn: confab_signal::turn::TurnConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Key for the admin API (`Authorization: Bearer <key>`); empty disables it.
    pub api_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// HTTP and WebSocket listener.
    pub bind: SocketAddr,
    /// On SIGTERM (or Ctrl-C): no new joins, the meetings in progress are told and go on
    /// for at most this long, then everyone left is disconnected. A second signal ends
    /// at once.
    pub drain_timeout_ms: u64,
    /// Serve HTTPS and WSS with this certificate chain (PEM) and private key (PEM);
    /// both or neither. Unset: plain HTTP (put a TLS proxy in front).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// A request's headers must arrive within this time (a keep-alive connection may be
    /// idle this long); otherwise the connection is closed.
    pub header_read_timeout_ms: u64,
    /// TCP connections open at once (WebSockets included); more are closed at accept.
    /// 0: the file-descriptor limit (raised to its hard limit at start) less
    /// `fd_reserve`.
    pub max_connections: usize,
    /// Descriptors kept for everything but HTTP connections (media sockets, recordings).
    pub fd_reserve: u64,
    /// The last connections under `max_connections` serve only `/healthz`, `/readyz`,
    /// `/metrics` and the admin API, so that the server answers its health checks and
    /// its operator when every other connection is taken.
    pub ops_reserve: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Address the media UDP sockets bind; must be explicit (not 0.0.0.0).
    pub bind_ip: IpAddr,
    /// First media UDP port; worker i uses port + i. 0 picks free ports.
    pub port: u16,
    /// Address announced to clients (public / NAT 1:1 address). Defaults to bind_ip.
    pub announce_ip: Option<IpAddr>,
    /// Media worker threads; 0 = one per CPU core.
    pub workers: usize,
    pub ice_disconnected_timeout_ms: u64,
    pub ice_failed_timeout_ms: u64,
    pub max_nacks_per_packet: u16,
    /// Kernel buffer of each media socket, each way (0 keeps the system default).
    pub socket_buffer_bytes: usize,
    /// UDP segmentation offload for media sends, where the kernel has it.
    pub gso: bool,
    /// ICE-TCP: a TCP listener on each worker's port number, offered as a passive TCP
    /// candidate next to UDP, for networks that block UDP.
    pub tcp: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomConfig {
    pub max_participants: usize,
    /// Rooms open at once on this server (0 = no limit).
    pub max_rooms: usize,
    /// Tracks one participant may send at once.
    pub max_tracks_per_participant: usize,
    /// Chat messages one participant may send per second (twice as many in a burst).
    pub chat_per_second: u32,
    /// Video from at most this many participants per subscriber (0 = all).
    pub last_n: usize,
    /// Participants per worker before a room gets a copy on another worker (0 = a room
    /// stays on one worker).
    pub participants_per_worker: usize,
    /// Audio from only the K loudest participants (0 = all).
    pub audio_top_k: usize,
    pub chat_history: usize,
    pub chat_max_bytes: usize,
    pub keyframe_interval_ms: u64,
    pub event_queue: usize,
    /// A participant must answer its first subscriber offer within this time.
    pub negotiation_timeout_ms: u64,
    /// Media-thread time one participant's offers may take per second, at most
    /// `signaling_budget_burst_ms` at once; removed after `signaling_budget_strikes`
    /// refusals.
    pub signaling_budget_ms_per_s: u64,
    pub signaling_budget_burst_ms: u64,
    pub signaling_budget_strikes: u32,
    /// A newcomer named like a visible participant (without case) becomes "Ada (2)".
    pub unique_names: bool,
    /// An identity removed by the admin API may not rejoin the room for this long
    /// (`?ban=false` on the call, or 0 here: removing only removes).
    pub kick_ban_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        let sfu = SfuConfig::default();
        Self {
            http: HttpConfig::default(),
            media: MediaConfig {
                bind_ip: sfu.bind_ip,
                port: sfu.port,
                announce_ip: sfu.announce_ip,
                workers: sfu.workers,
                ice_disconnected_timeout_ms: sfu.ice_disconnected_timeout_ms,
                ice_failed_timeout_ms: sfu.ice_failed_timeout_ms,
                max_nacks_per_packet: sfu.max_nacks_per_packet,
                socket_buffer_bytes: sfu.socket_buffer_bytes,
                gso: sfu.gso,
                tcp: sfu.tcp,
            },
            room: RoomConfig {
                max_participants: sfu.max_participants_per_room,
                max_rooms: sfu.max_rooms,
                max_tracks_per_participant: sfu.max_tracks_per_participant,
                chat_per_second: sfu.chat_per_second,
                last_n: sfu.last_n,
                participants_per_worker: sfu.participants_per_worker,
                audio_top_k: sfu.audio_top_k,
                chat_history: sfu.chat_history,
                chat_max_bytes: sfu.chat_max_bytes,
                keyframe_interval_ms: sfu.keyframe_interval_ms,
                event_queue: sfu.event_queue,
                negotiation_timeout_ms: sfu.negotiation_timeout_ms,
                signaling_budget_ms_per_s: sfu.signaling_budget_ms_per_s,
                signaling_budget_burst_ms: sfu.signaling_budget_burst_ms,
                signaling_budget_strikes: sfu.signaling_budget_strikes,
                unique_names: sfu.unique_names,
                kick_ban_ms: sfu.kick_ban_ms,
            },
            signal: SignalConfig::default(),
            recording: RecordingConfig::default(),
            webhooks: WebhookConfig::default(),
            admin: AdminConfig::default(),
            auth: AuthConfig::default(),
            cluster: ClusterConfig::default(),
            turn: Default::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain_timeout_ms: 30_000,
            tls_cert: None,
            tls_key: None,
            header_read_timeout_ms: 10_000,
            max_connections: 0,
            fd_reserve: 256,
            ops_reserve: 32,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Config::default().media
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        Config::default().room
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "confab=info,webrtc=warn".into(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (when given), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            f = f.merge(Toml::file(path));
        }
        // Only CONFAB_<SECTION>__<KEY> is configuration; other CONFAB_* variables (the
        // config file path, tools' own settings) are not.
        f = f.merge(
            Env::prefixed("CONFAB_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let config: Config = f
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.sfu()
            .validate()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        anyhow::ensure!(
            self.signal.max_message_bytes <= self.signal.hard_max_message_bytes,
            "configuration: signal.max_message_bytes exceeds signal.hard_max_message_bytes"
        );
        anyhow::ensure!(
            self.room.chat_max_bytes < self.signal.max_message_bytes,
            "configuration: room.chat_max_bytes must be below signal.max_message_bytes"
        );
        anyhow::ensure!(
            self.signal.messages_per_second > 0,
            "configuration: signal.messages_per_second must be at least 1"
        );
        confab_signal::auth::Verifier::new(&self.auth)
            .map_err(|e| anyhow::anyhow!("configuration: auth: {e}"))?;
        self.cluster
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.turn
            .validate()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        anyhow::ensure!(
            !self.cluster.enabled()
                || self.cluster.mode != confab_cluster::ClusterMode::Redirect
                || self.cluster.public_url.is_some()
                || !self.http.bind.ip().is_unspecified(),
            "configuration: cluster.public_url is needed when http.bind is a wildcard address \
             (other nodes send clients to this URL)"
        );
        Ok(())
    }

    /// The signaling layer's view of this configuration.
    pub fn signal(&self) -> SignalConfig {
        let mut s = self.signal.clone();
        s.admin_api_key = Some(self.admin.api_key.clone()).filter(|k| !k.is_empty());
        s.turn = self.turn.clone();
        s
    }

    /// The media plane's view of this configuration.
    pub fn sfu(&self) -> SfuConfig {
        SfuConfig {
            bind_ip: self.media.bind_ip,
            port: self.media.port,
            announce_ip: self.media.announce_ip,
            workers: self.media.workers,
            max_participants_per_room: self.room.max_participants,
            max_rooms: self.room.max_rooms,
            max_tracks_per_participant: self.room.max_tracks_per_participant,
            chat_per_second: self.room.chat_per_second,
            chat_history: self.room.chat_history,
            chat_max_bytes: self.room.chat_max_bytes,
            max_message_bytes: self.signal.max_message_bytes,
            keyframe_interval_ms: self.room.keyframe_interval_ms,
            event_queue: self.room.event_queue,
            ice_disconnected_timeout_ms: self.media.ice_disconnected_timeout_ms,
            ice_failed_timeout_ms: self.media.ice_failed_timeout_ms,
            max_nacks_per_packet: self.media.max_nacks_per_packet,
            socket_buffer_bytes: self.media.socket_buffer_bytes,
            gso: self.media.gso,
            tcp: self.media.tcp,
            last_n: self.room.last_n,
            participants_per_worker: self.room.participants_per_worker,
            audio_top_k: self.room.audio_top_k,
            negotiation_timeout_ms: self.room.negotiation_timeout_ms,
            signaling_budget_ms_per_s: self.room.signaling_budget_ms_per_s,
            signaling_budget_burst_ms: self.room.signaling_budget_burst_ms,
            signaling_budget_strikes: self.room.signaling_budget_strikes,
            unique_names: self.room.unique_names,
            kick_ban_ms: self.room.kick_ban_ms,
            recording: self.recording.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    #[test]
    fn default_toml_equals_built_in_defaults() {
        let text = std::fs::read_to_string(repo_file("config/default.toml")).unwrap();
        let from_file: Config = Figment::new().merge(Toml::string(&text)).extract().unwrap();
        assert_eq!(from_file, Config::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let r: Result<Config, _> = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[http]\nbnd = \"127.0.0.1:1\"\n"))
            .extract();
        assert!(r.unwrap_err().to_string().contains("bnd"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns figment::Error
    fn environment_overrides_and_foreign_variables_are_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CONFAB_ROOM__MAX_PARTICIPANTS", "7");
            jail.set_env("CONFAB_BIN", "/some/path");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.room.max_participants, 7);
            Ok(())
        });
    }

    #[test]
    fn cluster_needs_a_reachable_public_url() {
        let mut c = Config::default();
        c.cluster.redis_url = Some("redis://127.0.0.1:6379".into());
        c.cluster.mode = confab_cluster::ClusterMode::Redirect;
        assert!(c.validate().is_ok());
        c.http.bind = "0.0.0.0:8080".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("public_url"));
        c.cluster.public_url = Some("ws://10.0.0.1:8080/ws".into());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn cascade_needs_the_cluster_secret() {
        let mut c = Config::default();
        c.cluster.redis_url = Some("redis://127.0.0.1:6379".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("cluster.secret")
        );
        c.cluster.secret = Some("short".into());
        assert!(c.validate().is_err(), "at least 16 characters");
        c.cluster.secret = Some("sixteen chars ok".into());
        c.http.bind = "0.0.0.0:8080".parse().unwrap();
        assert!(c.validate().is_ok(), "no public_url: nobody is redirected");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns figment::Error
    fn cluster_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CONFAB_CLUSTER__REDIS_URL", "redis://10.0.0.9:6379");
            jail.set_env("CONFAB_CLUSTER__PLACEMENT", "two_random_least");
            jail.set_env("CONFAB_CLUSTER__SECRET", "from-the-environment");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.cluster.mode, confab_cluster::ClusterMode::Cascade);
            assert_eq!(
                c.cluster.redis_url.as_deref(),
                Some("redis://10.0.0.9:6379")
            );
            assert_eq!(
                c.cluster.placement,
                confab_cluster::PlacementStrategy::TwoRandomLeast
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns figment::Error
    fn turn_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "CONFAB_TURN__URLS",
                r#"["turn:10.0.0.3:3478?transport=udp", "turns:turn.example.com:5349"]"#,
            );
            jail.set_env("CONFAB_TURN__SECRET", "coturn-secret");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.turn.urls.len(), 2);
            assert_eq!(c.signal().turn.secret.as_deref(), Some("coturn-secret"));
            jail.set_env("CONFAB_TURN__URLS", r#"["http://nope"]"#);
            let err = Config::load(None).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("turn.urls"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn wildcard_media_bind_is_refused() {
        let mut c = Config::default();
        c.media.bind_ip = "0.0.0.0".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("wildcard"));
    }
}
