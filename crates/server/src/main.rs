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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
    let server = confab::Server::start(config).await?;
    println!("Confab is running: open {} in a browser", server.url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
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
