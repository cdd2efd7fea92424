//! The embedded TURN server (`turn.port`): for clients whose network lets them reach
//! neither of this node's media candidates (UDP or ICE-TCP) but does reach a TURN server,
//! over UDP, TCP or TLS. The protocol is webrtc-rs's `turn` crate; what is ours is around
//! it:
//!
//! - credentials: the TURN REST API scheme the signaling layer mints for each participant
//!   (`<expiry>:<participant>`, `base64(HMAC-SHA1(secret, username))`); an expired or
//!   malformed username is refused and counted;
//! - relays: one UDP socket per allocation, at most `turn.max_allocations`, that only
//!   sends to (and hears from) this node's media addresses and `turn.allowed_peers`
//!   (a TURN server that relays anywhere is an open proxy);
//! - TCP and TLS: the crate serves datagram connections, so each TCP (or TLS) connection is
//!   a connection of its own, framed as RFC 8656 says (a STUN message is its own length,
//!   ChannelData is padded to four bytes), with a TURN server of its own whose allocations
//!   end with the connection. Garbage framing and connections silent for 5 s are closed
//!   and counted.

use async_trait::async_trait;
use confab_signal::turn::{TurnConfig, TurnStats};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use turn::auth::{AuthHandler, generate_auth_key};
use turn::relay::RelayAddressGenerator;
use turn::server::Server as TurnServer;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;

/// The realm of the embedded server's long-term credentials.
const REALM: &str = "confab";
/// A TURN TCP/TLS connection must say something within this time.
const FIRST_MESSAGE: Duration = Duration::from_secs(5);
/// Open TURN TCP/TLS connections at most.
const MAX_STREAMS: usize = 4_096;

/// The running embedded server: its listeners' tasks end when it is dropped.
pub struct EmbeddedTurn {
    udp: TurnServer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
}

impl Drop for EmbeddedTurn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl EmbeddedTurn {
    pub async fn close(self) {
        let _ = self.udp.close().await;
    }
}

/// Everything the listeners share.
#[derive(Clone)]
struct Shared {
    secret: Arc<String>,
    relay: Arc<RelayGenerator>,
    stats: Arc<TurnStats>,
}

/// Starts the embedded server on `bind_ip` (`config.port`, UDP and TCP; TLS on
/// `config.tls_port` with `tls`). `media` are this node's media addresses: what may be
/// relayed to.
pub async fn start(
    config: &TurnConfig,
    secret: String,
    bind_ip: IpAddr,
    relay_ip: IpAddr,
    media: Vec<SocketAddr>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stats: Arc<TurnStats>,
) -> anyhow::Result<EmbeddedTurn> {
    let allowed: HashSet<SocketAddr> = media
        .into_iter()
        .chain(config.allowed_peers.iter().copied())
        .collect();
    let shared = Shared {
        secret: Arc::new(secret),
        relay: Arc::new(RelayGenerator {
            bind_ip,
            relay_ip,
            allowed: Arc::new(allowed),
            max: config.max_allocations,
            stats: stats.clone(),
            logged: Arc::new(AtomicBool::new(false)),
        }),
        stats,
    };
    let udp = tokio::net::UdpSocket::bind((bind_ip, config.port)).await?;
    let udp_addr = udp.local_addr()?;
    let udp_server = new_server(&shared, Arc::new(udp)).await?;
    // TCP on the same port number as UDP (another one when that is taken, as with port 0).
    let tcp = match tokio::net::TcpListener::bind((bind_ip, udp_addr.port())).await {
        Ok(l) => l,
        Err(_) if config.port == 0 => tokio::net::TcpListener::bind((bind_ip, 0)).await?,
        Err(e) => return Err(e.into()),
    };
    let tcp_addr = tcp.local_addr()?;
    let mut tasks = vec![tokio::spawn(accept_loop(tcp, None, shared.clone()))];
    let mut tls_addr = None;
    if config.tls_port != 0 {
        let Some(acceptor) = tls else {
            anyhow::bail!("turn.tls_port needs http.tls_cert and http.tls_key");
        };
        let l = tokio::net::TcpListener::bind((bind_ip, config.tls_port)).await?;
        tls_addr = Some(l.local_addr()?);
        tasks.push(tokio::spawn(accept_loop(l, Some(acceptor), shared.clone())));
    }
    tracing::info!(udp = %udp_addr, tcp = %tcp_addr, tls = ?tls_addr, relay = %relay_ip, "embedded TURN server listening");
    Ok(EmbeddedTurn {
        udp: udp_server,
        tasks,
        udp_addr,
        tcp_addr,
        tls_addr,
    })
}

async fn new_server(
    shared: &Shared,
    conn: Arc<dyn Conn + Send + Sync>,
) -> anyhow::Result<TurnServer> {
    Ok(TurnServer::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn,
            relay_addr_generator: Box::new(SharedGenerator(shared.relay.clone())),
        }],
        realm: REALM.into(),
        auth_handler: Arc::new(RestAuth {
            secret: shared.secret.clone(),
            stats: shared.stats.clone(),
        }),
        channel_bind_timeout: Duration::ZERO,
        alloc_close_notify: None,
    })
    .await?)
}

/// The TURN REST API scheme: `<expiry unix seconds>:<anything>`, password
/// `base64(HMAC-SHA1(secret, username))`.
struct RestAuth {
    secret: Arc<String>,
    stats: Arc<TurnStats>,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let expiry = username
            .split(':')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match expiry {
            Some(t) if t >= now => {
                let password = confab_signal::turn::credential(self.secret.as_bytes(), username);
                Ok(generate_auth_key(username, realm, &password))
            }
            _ => {
                self.stats.auth_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%src_addr, "TURN credential refused: expired or malformed");
                Err(turn::Error::Other("expired or malformed username".into()))
            }
        }
    }
}

/// Hands out relay sockets: on `bind_ip`, announced as `relay_ip`, at most `max` at once,
/// restricted to `allowed` peers.
struct RelayGenerator {
    bind_ip: IpAddr,
    relay_ip: IpAddr,
    allowed: Arc<HashSet<SocketAddr>>,
    max: usize,
    stats: Arc<TurnStats>,
    /// One log line for forbidden peers, at the first.
    logged: Arc<AtomicBool>,
}

/// The generator is shared by every server (UDP, and one per TCP/TLS connection).
struct SharedGenerator(Arc<RelayGenerator>);

#[async_trait]
impl RelayAddressGenerator for SharedGenerator {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        let g = &self.0;
        let open = g.stats.allocations.load(Ordering::Relaxed);
        if open >= g.max as i64 {
            g.stats.allocations_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                max = g.max,
                "TURN allocation refused: turn.max_allocations reached"
            );
            return Err(turn::Error::Other("too many allocations".into()));
        }
        if use_ipv4 != g.bind_ip.is_ipv4() {
            return Err(turn::Error::Other("address family not served".into()));
        }
        let socket = tokio::net::UdpSocket::bind((g.bind_ip, requested_port))
            .await
            .map_err(|e| turn::Error::Other(e.to_string()))?;
        let mut addr = socket
            .local_addr()
            .map_err(|e| turn::Error::Other(e.to_string()))?;
        addr.set_ip(g.relay_ip);
        g.stats.allocations.fetch_add(1, Ordering::Relaxed);
        Ok((
            Arc::new(RelayConn {
                socket,
                allowed: g.allowed.clone(),
                stats: g.stats.clone(),
                logged: g.logged.clone(),
            }),
            addr,
        ))
    }
}

/// An allocation's relay socket, which only talks to allowed peers.
struct RelayConn {
    socket: tokio::net::UdpSocket,
    allowed: Arc<HashSet<SocketAddr>>,
    stats: Arc<TurnStats>,
    logged: Arc<AtomicBool>,
}

impl Drop for RelayConn {
    fn drop(&mut self) {
        self.stats.allocations.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RelayConn {
    fn forbidden(&self, peer: SocketAddr) -> bool {
        if self.allowed.contains(&peer) {
            return false;
        }
        self.stats.forbidden_peers.fetch_add(1, Ordering::Relaxed);
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(%peer, "TURN relay to an address that is not this node's media refused (turn.allowed_peers; logged once)");
        }
        true
    }
}

fn io(e: std::io::Error) -> webrtc_util::Error {
    webrtc_util::Error::Io(e.into())
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.socket.connect(addr).await.map_err(io)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.socket.recv(buf).await.map_err(io)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await.map_err(io)?;
            if !self.forbidden(from) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.socket.send(buf).await.map_err(io)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.forbidden(target) {
            // Dropped, as a network would: the client learns nothing it could probe with.
            return Ok(buf.len());
        }
        self.socket.send_to(buf, target).await.map_err(io)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.socket.local_addr().map_err(io)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Shared,
) {
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if open.load(Ordering::Relaxed) >= MAX_STREAMS {
            shared.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        let (shared, tls, open) = (shared.clone(), tls.clone(), open.clone());
        tokio::spawn(async move {
            let local = stream.local_addr().unwrap_or(peer);
            match tls {
                None => serve_stream(stream, local, peer, &shared).await,
                Some(acceptor) => {
                    match tokio::time::timeout(FIRST_MESSAGE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_stream(s, local, peer, &shared).await,
                        _ => {
                            shared.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Serves one TURN TCP/TLS connection with a TURN server of its own, until it closes.
async fn serve_stream<S>(stream: S, local: SocketAddr, peer: SocketAddr, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let conn = Arc::new(StreamConn {
        reader: Mutex::new(Reader {
            r: Box::new(r),
            first: true,
            done: Some(done_tx),
        }),
        writer: Mutex::new(Box::new(w)),
        local,
        peer,
        stats: shared.stats.clone(),
    });
    let Ok(server) = new_server(shared, conn).await else {
        return;
    };
    // The crate's read loop ends when the stream does (its allocations with it).
    let _ = done_rx.await;
    let _ = server.close().await;
}

struct Reader {
    r: Box<dyn AsyncRead + Send + Unpin>,
    first: bool,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One TURN TCP/TLS connection as the crate's datagram connection: each `recv_from` is
/// one framed message from the client, each `send_to` one message to it.
struct StreamConn {
    reader: Mutex<Reader>,
    writer: Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    local: SocketAddr,
    peer: SocketAddr,
    stats: Arc<TurnStats>,
}

/// The length of a framed message from its first four bytes: a STUN message (20-byte
/// header + its length) or ChannelData (4-byte header + its length, padded to four bytes
/// over TCP). `None`: neither.
fn frame_len(head: [u8; 4]) -> Option<(usize, usize)> {
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    match head[0] >> 6 {
        0 => Some((20 + len, 20 + len)),
        1 => Some((4 + len, 4 + len.div_ceil(4) * 4)),
        _ => None,
    }
}

impl StreamConn {
    /// Reads one message into `buf`: its length, or an error that ends the connection.
    async fn read_message(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut reader = self.reader.lock().await;
        let r = &mut *reader;
        let result = async {
            let mut head = [0u8; 4];
            if r.first {
                tokio::time::timeout(FIRST_MESSAGE, r.r.read_exact(&mut head))
                    .await
                    .map_err(|_| std::io::Error::other("silent"))??;
                r.first = false;
            } else {
                r.r.read_exact(&mut head).await?;
            }
            let (len, framed) =
                frame_len(head).ok_or_else(|| std::io::Error::other("not TURN framing"))?;
            if framed > buf.len() {
                return Err(std::io::Error::other("message too large"));
            }
            buf[..4].copy_from_slice(&head);
            r.r.read_exact(&mut buf[4..framed]).await?;
            Ok(len)
        }
        .await;
        if let Err(e) = &result {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                self.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %self.peer, error = %e, "TURN TCP connection closed");
            }
            if let Some(done) = r.done.take() {
                let _ = done.send(());
            }
        }
        result
    }
}

#[async_trait]
impl Conn for StreamConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.read_message(buf).await.map_err(io)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.read_message(buf).await.map_err(io)?;
        Ok((n, self.peer))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.peer).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut w = self.writer.lock().await;
        w.write_all(buf).await.map_err(io)?;
        // ChannelData over TCP is padded to a multiple of four bytes.
        let pad = if buf.first().is_some_and(|b| b >> 6 == 1) {
            (4 - buf.len() % 4) % 4
        } else {
            0
        };
        if pad > 0 {
            w.write_all(&[0u8; 3][..pad]).await.map_err(io)?;
        }
        w.flush().await.map_err(io)?;
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.writer.lock().await.shutdown().await;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_framing_reads_stun_and_padded_channel_data() {
        // A STUN binding request: 20-byte header, 8 bytes of attributes.
        assert_eq!(frame_len([0x00, 0x01, 0x00, 0x08]), Some((28, 28)));
        // ChannelData 0x4000 with 5 bytes: 9 on the wire plus 3 of padding.
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x05]), Some((9, 12)));
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x08]), Some((12, 12)));
        // RTP or DTLS are not TURN; an HTTP request reads as ChannelData far over the
        // 1,500-byte buffer, and is refused for its size.
        assert_eq!(frame_len([0x80, 0x60, 0x00, 0x01]), None);
        assert_eq!(
            frame_len([0x16, 0xfe, 0xfd, 0x00]).map(|f| f.0),
            Some(20 + 0xfd00)
        );
        assert!(frame_len(*b"GET ").is_some_and(|(_, framed)| framed > 1500));
    }
}
