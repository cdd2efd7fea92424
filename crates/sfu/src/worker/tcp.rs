//! ICE-TCP (RFC 6544, passive): each worker listens on TCP on its UDP port's number. A
//! connection is two tasks on the worker's runtime: one reads RFC 4571 frames (a 2-byte
//! length, then a STUN, DTLS, SRTP or SRTCP packet) and hands them to the worker as if they
//! were datagrams from the connection's address; one writes the frames the worker sends to
//! that address. The ICE agent is told the packets came over TCP (its passive candidate);
//! everything else (routing by ufrag, paths, egress) is the UDP code, keyed by address.
//!
//! Bad input: a connection that sends no frame within [`FIRST_FRAME`], or more than
//! [`MAX_CONNECTIONS`] at once, is closed and counted; a frame that routes nowhere is
//! counted as an unroutable datagram, as on UDP.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// A connection must send its first frame (a STUN binding request) within this.
pub const FIRST_FRAME: Duration = Duration::from_secs(5);
/// TCP connections one worker holds at most.
pub const MAX_CONNECTIONS: usize = 4_096;
/// Frames queued toward one connection; beyond, frames are dropped (as a full socket
/// buffer drops datagrams).
const OUT_QUEUE: usize = 2_048;
/// Bytes of queued frames written at once, at most.
const WRITE_BATCH: usize = 64 * 1024;

/// Appends `packet` as an RFC 4571 frame (its length, then itself).
fn frame_into(out: &mut Vec<u8>, packet: &[u8]) {
    out.extend_from_slice(&(packet.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(packet);
}

/// What a connection tells the worker.
#[derive(Debug)]
pub struct TcpIn {
    pub from: SocketAddr,
    /// A frame; `None`: the connection closed.
    pub frame: Option<Bytes>,
}

/// Logs the first refusal of each kind (the counter has the rest).
pub fn log_refusal(why: Refused) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SILENT: AtomicBool = AtomicBool::new(false);
    static FULL: AtomicBool = AtomicBool::new(false);
    let (flag, what) = match why {
        Refused::Silent => (
            &SILENT,
            "an ICE-TCP connection sent nothing within 5 s: closed",
        ),
        Refused::Full => (
            &FULL,
            "ICE-TCP connections at the worker's cap: a new one was refused",
        ),
    };
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!("{what} (logged once; counted in confab_tcp_refused)");
    }
}

/// Why a connection was closed early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Nothing within [`FIRST_FRAME`] (half-open, or not ICE).
    Silent,
    /// The worker holds [`MAX_CONNECTIONS`] already.
    Full,
}

/// Starts the two tasks of an accepted connection; returns where its outgoing frames go.
pub fn spawn(
    stream: tokio::net::TcpStream,
    from: SocketAddr,
    to_worker: mpsc::Sender<TcpIn>,
    refused: impl FnOnce(Refused) + Send + 'static,
) -> mpsc::Sender<Bytes> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUT_QUEUE);
    tokio::spawn(async move {
        // The frames queued when the task wakes go out in one write (a video frame's
        // packets are queued together): a write per packet cost a syscall each.
        let mut framed = Vec::with_capacity(WRITE_BATCH + 2 + 1500);
        while let Some(packet) = out_rx.recv().await {
            framed.clear();
            frame_into(&mut framed, &packet);
            while framed.len() < WRITE_BATCH {
                match out_rx.try_recv() {
                    Ok(p) => frame_into(&mut framed, &p),
                    Err(_) => break,
                }
            }
            if wr.write_all(&framed).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut decoder = rtc::shared::tcp_framing::TcpFrameDecoder::new();
        let mut buf = vec![0u8; 8_192];
        let mut first = true;
        loop {
            let read = if first {
                match tokio::time::timeout(FIRST_FRAME, rd.read(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => {
                        refused(Refused::Silent);
                        break;
                    }
                }
            } else {
                rd.read(&mut buf).await
            };
            let n = match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            decoder.extend_from_slice(&buf[..n]);
            while let Some(packet) = decoder.next_packet() {
                first = false;
                let frame = TcpIn {
                    from,
                    frame: Some(Bytes::from(packet)),
                };
                if to_worker.send(frame).await.is_err() {
                    return;
                }
            }
        }
        let _ = to_worker.send(TcpIn { from, frame: None }).await;
    });
    out_tx
}
