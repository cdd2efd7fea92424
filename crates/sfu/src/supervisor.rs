//! A media worker's thread: the supervisor that runs its worker and restarts it when a
//! panic escapes every room's isolation.

use crate::stats::{self, SfuStats};
use crate::worker::{self, Command};
use crate::{SfuConfig, events, peer};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// A worker thread's life: runs the worker and, when a panic escapes every room's
/// isolation, starts a fresh one on the same socket (its participants were told by the
/// failed worker's drop). Commands queued meanwhile wait in the channel.
pub(crate) struct Supervisor {
    pub(crate) index: usize,
    pub(crate) socket: UdpSocket,
    pub(crate) announce: SocketAddr,
    pub(crate) factory: peer::PeerFactory,
    pub(crate) config: Arc<SfuConfig>,
    pub(crate) stats: Arc<SfuStats>,
    pub(crate) timing: Arc<stats::LoopStats>,
    pub(crate) events: Option<mpsc::Sender<events::RoomEvent>>,
    pub(crate) alive: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) links_out: worker::relay::Links,
    pub(crate) tcp: Option<std::net::TcpListener>,
}

/// Marks a worker gone when its thread ends other than by a shutdown (whatever ended it).
struct Gone(Arc<std::sync::atomic::AtomicBool>, bool);

impl Drop for Gone {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(false, Ordering::Relaxed);
        }
    }
}

impl Supervisor {
    pub(crate) fn run(
        self,
        commands: mpsc::Receiver<Command>,
        links: mpsc::Receiver<worker::relay::Link>,
    ) {
        let mut gone = Gone(self.alive.clone(), false);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(commands, links)));
        match outcome {
            Ok(true) => gone.1 = true,
            Ok(false) => {}
            Err(_) => tracing::error!("media worker supervisor failed; the worker is gone"),
        }
    }

    /// Runs workers until a shutdown (`true`) or until one cannot be started (`false`).
    fn serve(
        &self,
        mut commands: mpsc::Receiver<Command>,
        mut links: mpsc::Receiver<worker::relay::Link>,
    ) -> bool {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot build worker runtime");
                return false;
            }
        };
        // The worker registers its socket with this runtime's reactor.
        let _rt = rt.enter();
        loop {
            let worker = self.socket.try_clone().and_then(|socket| {
                worker::Worker::new(
                    self.index,
                    socket,
                    self.announce,
                    self.factory.clone(),
                    self.config.clone(),
                    self.stats.clone(),
                    self.timing.clone(),
                    self.events.clone(),
                    self.links_out.clone(),
                    self.tcp.as_ref().and_then(|l| l.try_clone().ok()),
                )
            });
            let worker = match worker {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(worker = self.index, error = %e, "cannot start worker");
                    return false;
                }
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(worker.run(&mut commands, &mut links))
            }));
            match run {
                Ok(()) => return true,
                Err(_) => {
                    SfuStats::inc(&self.stats.workers_restarted);
                    tracing::error!(worker = self.index, "media worker failed; restarting it");
                }
            }
        }
    }
}
