//! Sessions waiting to be resumed.
//!
//! When a joined client's WebSocket drops without a close frame (a network change, a proxy
//! timing out, a laptop lid), its participant is not removed at once: the session parks it
//! here under its resume token for `resume_window`. Its media connections go on meanwhile
//! (they do not depend on the WebSocket), so the others see nothing. A new WebSocket that
//! joins with `resume: <token>` takes the participant back, with everything it missed.
//! Unclaimed, it leaves when the window ends; removed by the media plane (its ICE consent
//! expired too: the client really is gone), it is dropped at once.

use confab_proto::{RoomId, ServerMessage};
use confab_sfu::Participant;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Messages kept for a parked participant; a client further behind than this joins afresh.
const MAX_MISSED: usize = 1024;

/// A participant taken back: its handle, its event channel, and the events it missed
/// while nobody was connected (in order, before anything still in the channel).
pub struct Resumed {
    pub participant: Participant,
    pub events: mpsc::Receiver<ServerMessage>,
    pub missed: Vec<ServerMessage>,
}

type Claim = oneshot::Sender<Resumed>;

/// The parked sessions, by resume token. Cheap to clone.
#[derive(Clone, Default)]
pub struct Resumes {
    parked: Arc<Mutex<HashMap<String, oneshot::Sender<Claim>>>>,
}

impl std::fmt::Debug for Resumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumes")
            .field("parked", &self.len())
            .finish()
    }
}

impl Resumes {
    /// A new resume token: 128 random bits, hex.
    pub fn new_token() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    /// Sessions parked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Claim>>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `participant` for `window` under `token`, collecting its events.
    pub fn park(
        &self,
        token: String,
        participant: Participant,
        mut events: mpsc::Receiver<ServerMessage>,
        window: Duration,
    ) {
        let (claim_tx, mut claim_rx) = oneshot::channel::<Claim>();
        self.lock().insert(token.clone(), claim_tx);
        let parked = self.parked.clone();
        tracing::info!(participant = %participant.id(), "connection lost; session kept for resumption");
        tokio::spawn(async move {
            participant.detach().await;
            let deadline = tokio::time::sleep(window);
            tokio::pin!(deadline);
            let mut missed = Vec::new();
            let gone = loop {
                tokio::select! {
                    claim = &mut claim_rx => {
                        if let Ok(reply) = claim {
                            let resumed = Resumed { participant, events, missed };
                            if let Err(back) = reply.send(resumed) {
                                // The resuming connection went away in between.
                                back.participant.leave().await;
                            }
                        }
                        return;
                    }
                    ev = events.recv() => match ev {
                        // Removed by the media plane (consent expired, kicked, shutdown).
                        None => break "removed",
                        Some(ServerMessage::Error { fatal: true, .. }) => break "removed",
                        Some(m) if missed.len() < MAX_MISSED => missed.push(m),
                        Some(_) => break "too far behind",
                    },
                    _ = &mut deadline => break "not resumed in time",
                }
            };
            parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&token);
            tracing::info!(participant = %participant.id(), reason = gone, "parked session ends");
            participant.leave().await;
        });
    }

    /// Takes back the session parked under `token`, if it is in `room` and still waiting.
    pub async fn claim(&self, token: &str, room: &RoomId) -> Option<Resumed> {
        let claim = self.lock().remove(token)?;
        let (tx, rx) = oneshot::channel();
        claim.send(tx).ok()?;
        let resumed = rx.await.ok()?;
        if resumed.participant.room() != room {
            // A token is good for its own room only; the session is over for the thief
            // and for the owner alike (a token that leaked is not to be trusted again).
            resumed.participant.leave().await;
            return None;
        }
        Some(resumed)
    }
}
