//! The HTTP listener: accepts TCP (and TLS) connections and serves the axum router on
//! them with hyper, under limits that `axum::serve` does not offer:
//!
//! - **a connection cap** (`http.max_connections`, by default the file-descriptor limit
//!   less `http.fd_reserve`): a connection over it is closed at once, so accepting never
//!   runs out of descriptors that the media plane and recordings need;
//! - **an operations reserve**: the last `http.ops_reserve` connections under the cap only
//!   serve `/healthz`, `/readyz`, `/metrics` and `/api/...`, so that a server whose
//!   connections are all taken still answers its health checks and its operator;
//! - **a header read timeout** (`http.header_read_timeout_ms`): a request whose headers do
//!   not arrive in time, or a keep-alive connection idle that long, is closed (slowloris);
//! - **a bounded shutdown**: in-flight requests get `grace` to finish, then every
//!   connection still open is dropped, whatever its peer is doing.
//!
//! A connection counts until its socket closes: the count travels with the IO object,
//! into a WebSocket upgrade too.

use axum::Router;
use axum::extract::ConnectInfo;
use confab_signal::guard::Guards;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How the listener bounds its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub ops_reserve: usize,
    pub header_read_timeout: Duration,
}

/// Paths served on a connection of the operations reserve.
fn is_ops_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/api/")
}

/// Serves `app` on `listener` until `shutdown` resolves; then gives in-flight requests
/// `grace` and drops every connection left.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    guards: Arc<Guards>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connection tasks as we go: the set holds only live ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before
                    // accept: back off briefly instead of spinning on the error.
                    guards.connections_refused.bit(&format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let n = guards.connections_open.fetch_add(1, Relaxed) + 1;
        let counted = Counted {
            io: tcp,
            guards: guards.clone(),
        };
        if n > limits.max_connections {
            guards
                .connections_refused
                .bit("connection closed at accept: http.max_connections reached");
            drop(counted);
            continue;
        }
        let reserve = n > limits.max_connections.saturating_sub(limits.ops_reserve);
        let _ = counted.io.set_nodelay(true);
        let svc_app = app.clone();
        let guards_conn = guards.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let app = svc_app.clone();
            let guards = guards_conn.clone();
            async move {
                if reserve && !is_ops_path(req.uri().path()) {
                    guards.reserve_refusals.bit(
                        "request refused: connections are at http.max_connections (only health, \
                         metrics and the admin API are served)",
                    );
                    let busy = axum::response::IntoResponse::into_response((
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [(axum::http::header::RETRY_AFTER, "5")],
                        "the server has too many connections: try again in a moment",
                    ));
                    return Ok::<_, std::convert::Infallible>(busy);
                }
                req.extensions_mut().insert(ConnectInfo(remote));
                app.oneshot(req.map(axum::body::Body::new)).await
            }
        });
        let builder = builder.clone();
        let guards = guards.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let header_timeout = limits.header_read_timeout;
        conns.spawn(async move {
            let result =
                match tls {
                    None => {
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(counted), service)
                            .into_owned();
                        watcher.watch(conn).await
                    }
                    Some(acceptor) => {
                        // The handshake is bounded like the headers that follow it.
                        let stream =
                            match tokio::time::timeout(header_timeout, acceptor.accept(counted))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    guards.header_timeouts.bit(
                                        "connection closed: TLS handshake not completed in time",
                                    );
                                    return;
                                }
                            };
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        watcher.watch(conn).await
                    }
                };
            if let Err(e) = result {
                let timed_out = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout);
                if timed_out {
                    guards.header_timeouts.bit(
                        "connection closed: request headers not received within \
                         http.header_read_timeout_ms",
                    );
                } else {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            connections = conns.len(),
            "HTTP connections still open after the grace period: closing them"
        );
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// An IO object counted in `Guards::connections_open` until it is dropped (its socket
/// closed).
struct Counted<T> {
    io: T,
    guards: Arc<Guards>,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.guards.connections_open.fetch_sub(1, Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A TLS acceptor from a PEM certificate chain and private key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // One process-wide crypto provider (ring, already used by the media plane's DTLS);
    // installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Raises this process's file-descriptor soft limit to its hard limit (a systemd service
/// gets 1,024 by default: about a thousand idle sockets would lock everyone out).
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the file-descriptor limit");
                hard
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the file-descriptor limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file-descriptor limit");
            1024
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_ops_path;

    #[test]
    fn the_reserve_serves_operations_only() {
        for p in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/rooms",
            "/api/stats",
        ] {
            assert!(is_ops_path(p), "{p}");
        }
        for p in ["/", "/ws", "/room/x", "/app.js", "/apiary", "/healthz/x"] {
            assert!(!is_ops_path(p), "{p}");
        }
    }
}
