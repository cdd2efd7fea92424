//! Join → first offer: how long after `joined` the server's first subscriber offer
//! arrives on a fresh WebSocket. The two are queued together; a server socket without
//! `TCP_NODELAY` holds the offer back until the client's delayed ACK of `joined` (~40 ms).
//!
//!     confab-join-offer --url ws://127.0.0.1:8080/ws --joins 30

use clap::Parser;
use confab_proto::ServerMessage;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    #[arg(long, default_value_t = 30)]
    joins: usize,
}

async fn once(url: &str, i: usize) -> anyhow::Result<(Duration, Duration)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let sent = Instant::now();
    let join = format!(r#"{{"type":"join","protocol":1,"room":"offer-{i}","name":"probe"}}"#);
    ws.send(Message::text(join)).await?;
    let mut joined = None;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            frame = ws.next() => {
                let t = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    other => anyhow::bail!("connection ended before an offer: {other:?}"),
                };
                match serde_json::from_str::<ServerMessage>(&t)? {
                    ServerMessage::Joined { .. } => joined = Some(Instant::now()),
                    ServerMessage::Offer { .. } => {
                        let now = Instant::now();
                        let _ = ws.send(Message::text(r#"{"type":"leave"}"#)).await;
                        let j = joined.ok_or_else(|| anyhow::anyhow!("offer before joined"))?;
                        return Ok((now - j, now - sent));
                    }
                    _ => {}
                }
            }
            _ = &mut deadline => anyhow::bail!("no offer within 10 s"),
        }
    }
}

fn q(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut after_joined, mut after_join) = (Vec::new(), Vec::new());
    for i in 0..args.joins {
        let (a, b) = once(&args.url, i).await?;
        after_joined.push(a);
        after_join.push(b);
    }
    println!(
        "{} joins: offer after joined p50 {:.2} ms p90 {:.2} ms; join sent -> offer p50 {:.2} ms p90 {:.2} ms",
        args.joins,
        q(&mut after_joined, 0.5),
        q(&mut after_joined, 0.9),
        q(&mut after_join, 0.5),
        q(&mut after_join, 0.9),
    );
    Ok(())
}
