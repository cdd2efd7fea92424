//! The impairment relay ([`confab_load::netem`]) on its own, for tests that drive real
//! browsers: it listens on the address the server announces and forwards to the server's
//! media port, shaping what clients on `--client-ip` send (their uplink) and receive.
//! Once listening it prints `relay listening on <addr>`, then once a second what it
//! dropped (`uplink_dropped=N dropped=N`), until it is killed.
//!
//! ```text
//! CONFAB_MEDIA__ANNOUNCE_IP=127.0.0.2 confab --media-port 50000 &
//! confab-relay --listen 127.0.0.2:50000 --server 127.0.0.1:50000 --uplink-kbps 400 --queue-ms 1000
//! ```

use clap::Parser;
use confab_load::netem::{Relay, Rule};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "A UDP relay that shapes clients' uplink and downlink")]
struct Args {
    /// Where to listen: the address the server announces, on its media port.
    #[arg(long)]
    listen: SocketAddr,
    /// The server's media socket.
    #[arg(long)]
    server: SocketAddr,
    /// The clients the rule applies to (the default: every client).
    #[arg(long, default_value = "0.0.0.0")]
    client_ip: IpAddr,
    /// Client -> server rate limit, kbit/s.
    #[arg(long)]
    uplink_kbps: Option<u64>,
    /// Client -> server RTP packets lost at random, percent.
    #[arg(long, default_value_t = 0.0)]
    uplink_loss: f64,
    /// Server -> client rate limit, kbit/s.
    #[arg(long)]
    downlink_kbps: Option<u64>,
    /// The limited links' buffer, in milliseconds of their rate.
    #[arg(long, default_value_t = 200)]
    queue_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rule = Rule {
        uplink_bps: args.uplink_kbps.map(|k| k * 1000),
        uplink_loss: args.uplink_loss / 100.0,
        rate_bps: args.downlink_kbps.map(|k| k * 1000),
        queue: Some(Duration::from_millis(args.queue_ms)),
        ..Rule::new(args.client_ip)
    };
    let relay = Relay::start(args.listen, args.server, vec![rule]).await?;
    println!("relay listening on {}", relay.addr);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "uplink_dropped={} uplink_bytes={} dropped={} rtp_to_clients={}",
            relay.stats.uplink_dropped.load(Ordering::Relaxed),
            relay.stats.uplink_bytes.load(Ordering::Relaxed),
            relay.stats.dropped.load(Ordering::Relaxed),
            relay.stats.rtp_to_clients.load(Ordering::Relaxed),
        );
    }
}
