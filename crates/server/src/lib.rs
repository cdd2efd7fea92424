//! The `confab` server: configuration, wiring and graceful shutdown. The binary
//! (`main.rs`) adds the command line and logging; tests start a [`Server`] in-process.

pub mod config;

pub use config::Config;

use anyhow::Context;
use confab_sfu::Sfu;
use confab_signal::{AppState, router};
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server.
pub struct Server {
    pub http_addr: SocketAddr,
    pub sfu: Sfu,
    sessions: std::sync::Arc<std::sync::atomic::AtomicI64>,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds the HTTP listener and the media sockets and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        config.validate()?;
        let webhook_stats = std::sync::Arc::new(confab_signal::webhooks::WebhookStats::default());
        let events = (!config.webhooks.urls.is_empty()).then(|| {
            confab_signal::webhooks::start(config.webhooks.clone(), webhook_stats.clone())
        });
        let sfu =
            Sfu::start_with_events(config.sfu(), events).context("starting the media plane")?;
        let listener = tokio::net::TcpListener::bind(config.http.bind)
            .await
            .with_context(|| format!("binding HTTP on {}", config.http.bind))?;
        let http_addr = listener.local_addr()?;
        let mut state = AppState::new(sfu.clone(), config.signal());
        state.webhooks = webhook_stats;
        let sessions = state.sessions.clone();
        let ready = state.ready.clone();
        let app = router(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(http = %http_addr, media = ?sfu.media_addrs(), "confab listening");
        if config.admin.api_key.is_empty() {
            tracing::info!("admin API disabled (no admin.api_key)");
        }
        Ok(Server {
            http_addr,
            sfu,
            sessions,
            ready,
            stop,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http_addr)
    }

    /// Tells every participant the server is shutting down, stops the media workers,
    /// lets the sessions deliver that notice and close (for up to `drain`), then stops
    /// the HTTP listener.
    pub async fn stop(self) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.sfu.shutdown().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.sessions.load(std::sync::atomic::Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
