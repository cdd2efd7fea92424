//! `confab`: the Confab server.

use clap::{Parser, Subcommand};
use confab::Config;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "confab", version, about = "Confab: a video-conferencing SFU")]
struct Cli {
    /// Configuration file (TOML). Without it the built-in defaults apply
    /// (the same as config/default.toml).
    #[arg(short, long, env = "CONFAB_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP/WebSocket listen address.
    #[arg(long)]
    http_bind: Option<SocketAddr>,
    /// Media UDP bind address (explicit, not 0.0.0.0).
    #[arg(long)]
    media_ip: Option<IpAddr>,
    /// First media UDP port (0 = any).
    #[arg(long)]
    media_port: Option<u16>,
    /// Address announced to clients for media (public / NAT 1:1 address).
    #[arg(long)]
    announce_ip: Option<IpAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Mux one participant's recorded camera and microphone into one file, in sync
    /// (runs ffmpeg; streams are copied, not re-encoded).
    Mux {
        /// A recording directory (the one holding manifest.json).
        dir: PathBuf,
        /// Participant id, as in the manifest; needed when the recording has several.
        #[arg(long)]
        participant: Option<String>,
        /// Output file (default <dir>/<participant>.webm, .mkv for H.264).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Mint an access token (JWT) with the configured key (auth.secret, or
    /// auth.private_key_pem for ES256). Prints it.
    Token {
        /// The room it admits to (`*`: any room).
        #[arg(long)]
        room: String,
        /// Who the bearer is (the token's subject).
        #[arg(long)]
        identity: String,
        /// Display name (default: what the client types).
        #[arg(long)]
        name: Option<String>,
        /// Grants, comma-separated or repeated: publish, subscribe, chat, admin, hidden.
        /// Default: publish,subscribe,chat.
        #[arg(long = "grant", value_delimiter = ',')]
        grants: Vec<Grant>,
        /// How long it is valid (`90s`, `30m`, `6h`, `7d`).
        #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Grant {
    Publish,
    Subscribe,
    Chat,
    Admin,
    Hidden,
}

fn token(
    config: &Config,
    room: &str,
    identity: &str,
    name: Option<&str>,
    grants: &[Grant],
    ttl: std::time::Duration,
) -> anyhow::Result<String> {
    use confab_signal::auth::{Claims, mint, now_secs};
    let grants = if grants.is_empty() {
        &[Grant::Publish, Grant::Subscribe, Grant::Chat][..]
    } else {
        grants
    };
    let has = |g| grants.contains(&g);
    let now = now_secs();
    let claims = Claims {
        sub: identity.to_string(),
        name: name.map(str::to_string),
        room: room.to_string(),
        grants: confab_proto::signal::Grants {
            can_publish: has(Grant::Publish),
            can_subscribe: has(Grant::Subscribe),
            can_chat: has(Grant::Chat),
            room_admin: has(Grant::Admin),
            hidden: has(Grant::Hidden),
        },
        exp: now + ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        // Its id, for `POST /api/tokens/revoked` (said on stderr: stdout is the token).
        jti: Some(confab_signal::auth::new_token_id()),
    };
    if let Some(jti) = &claims.jti {
        eprintln!("jti {jti} (expires {})", claims.exp);
    }
    Ok(mint(&config.auth, &claims)?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token {
        room,
        identity,
        name,
        grants,
        ttl,
    }) = &cli.command
    {
        let config = Config::load(cli.config.as_deref())?;
        println!(
            "{}",
            token(&config, room, identity, name.as_deref(), grants, *ttl)?
        );
        return Ok(());
    }
    if let Some(Command::Mux {
        dir,
        participant,
        output,
    }) = &cli.command
    {
        let out = confab_sfu::record::mux::run(dir, participant.as_deref(), output.as_deref())?;
        println!("{}", out.display());
        return Ok(());
    }
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(b) = cli.http_bind {
        config.http.bind = b;
    }
    if let Some(ip) = cli.media_ip {
        config.media.bind_ip = ip;
    }
    if let Some(p) = cli.media_port {
        config.media.port = p;
    }
    if let Some(ip) = cli.announce_ip {
        config.media.announce_ip = Some(ip);
    }
    config.validate()?;
    init_tracing(&config.log.filter);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

fn init_tracing(default_filter: &str) {
    // webrtc-rs logs through the `log` crate; the subscriber's default `tracing-log`
    // bridge routes it through the same filter.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}

async fn run(config: Config) -> anyhow::Result<()> {
    let drain = std::time::Duration::from_millis(config.http.drain_timeout_ms);
    let server = confab::Server::start(config).await?;
    println!("Confab is running: open {} in a browser", server.url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.drain(drain, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
