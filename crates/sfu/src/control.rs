//! Operations on the media plane from outside a room: recordings (the [`crate::sink`]
//! hook with the built-in sinks) and administration (list, remove, mute, close).

use crate::Sfu;
use crate::events::RoomEvent;
use crate::record::file::FileRecorder;
use crate::record::path;
use crate::record::rtp::{CommandHook, RtpForwarder};
use crate::sink::{Tap, TrackSink};
use crate::worker::{Command, RoomSummary};
use confab_proto::{ParticipantId, RoomId, TrackId};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// Why a control operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no room {0}")]
    NoSuchRoom(String),
    #[error("room {0} is already being recorded")]
    AlreadyRecording(String),
    #[error("room {0} is not being recorded")]
    NotRecording(String),
    #[error("not found")]
    NotFound,
    #[error("recording: {0}")]
    Io(String),
    #[error("the media server is shutting down")]
    ShuttingDown,
    /// A bounded table (bans) is full of live entries.
    #[error("too many {0} held at once; try again when some have expired")]
    Full(&'static str),
}

/// A recording in progress, or starting (no thread yet): the entry is made before the
/// first await of a start, so that a second start of the same room (two joins into an
/// auto-recorded room) finds it and stops there.
pub(crate) struct Recording {
    tap: u64,
    pub dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

static NEXT_TAP: AtomicU64 = AtomicU64::new(1);

/// Bans held at once (each is a room and an identity, ~100 bytes): a bound, far above
/// what operators kick by hand.
pub const MAX_BANS: usize = 100_000;

impl Sfu {
    fn worker_of(&self, room: &RoomId) -> Option<usize> {
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .map(super::Placement::home)
    }

    /// Every worker with a copy of `room` (its home first).
    fn workers_of(&self, room: &RoomId) -> Vec<usize> {
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .map(|p| p.copies.iter().map(|(w, _)| *w).collect())
            .unwrap_or_default()
    }

    async fn ask<T>(
        &self,
        worker: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.inner.workers[worker]
            .commands
            .send(make(tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Starts recording `room` into `<recording.dir>/<room>/<time>/` (and into the RTP
    /// forwarder and command hook, when configured). Returns the directory.
    pub async fn start_recording(&self, room: &RoomId) -> Result<PathBuf, ControlError> {
        self.start_recording_with(room, Vec::new()).await
    }

    /// [`Sfu::start_recording`], with `extra` sinks (your own [`TrackSink`]s) fed the
    /// room's tracks alongside the built-in ones, on the recording's thread, from the
    /// same bounded queue: a slow sink loses packets (counted), never slows media.
    pub async fn start_recording_with(
        &self,
        room: &RoomId,
        extra: Vec<Box<dyn TrackSink>>,
    ) -> Result<PathBuf, ControlError> {
        let worker = self
            .worker_of(room)
            .ok_or_else(|| ControlError::NoSuchRoom(room.to_string()))?;
        let io = |e: std::io::Error| ControlError::Io(e.to_string());
        let cfg = &self.inner.config.recording;
        let dir = path::join(
            &path::join(&cfg.dir, room.as_str()).map_err(io)?,
            &time_stamp(),
        )
        .map_err(io)?;
        let id = NEXT_TAP.fetch_add(1, Ordering::Relaxed);
        {
            let mut recs = self
                .inner
                .recordings
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // A recording whose room closed has finished by itself.
            if let Some(r) = recs.get(room)
                && r.thread.as_ref().is_some_and(|t| t.is_finished())
            {
                recs.remove(room);
            }
            if recs.contains_key(room) {
                return Err(ControlError::AlreadyRecording(room.to_string()));
            }
            recs.insert(
                room.clone(),
                Recording {
                    tap: id,
                    dir: dir.clone(),
                    thread: None,
                },
            );
        }
        let started = self.begin_recording(worker, room, id, &dir, extra).await;
        let stopped_meanwhile = {
            let mut recs = self
                .inner
                .recordings
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let ours = recs.get_mut(room).filter(|r| r.tap == id);
            match (started, ours) {
                (Ok(thread), Some(r)) => {
                    r.thread = Some(thread);
                    false
                }
                (Ok(_), None) => true,
                (Err(e), ours) => {
                    if ours.is_some() {
                        recs.remove(room);
                    }
                    return Err(e);
                }
            }
        };
        if stopped_meanwhile {
            // Stopped while starting: end the tap; its session finishes by itself.
            let _ = self.inner.workers[worker]
                .commands
                .send(Command::RemoveTap {
                    room: room.clone(),
                    tap: id,
                })
                .await;
        }
        Ok(dir)
    }

    /// The part of a start after the room's entry is made: the sinks, the tap, the thread.
    async fn begin_recording(
        &self,
        worker: usize,
        room: &RoomId,
        id: u64,
        dir: &std::path::Path,
        extra: Vec<Box<dyn TrackSink>>,
    ) -> Result<std::thread::JoinHandle<()>, ControlError> {
        let cfg = &self.inner.config.recording;
        let dir = dir.to_path_buf();
        let mut sinks: Vec<Box<dyn TrackSink>> = vec![Box::new(
            FileRecorder::new(&dir, room.as_str()).map_err(|e| ControlError::Io(e.to_string()))?,
        )];
        if let Some(to) = cfg.rtp_forward {
            sinks.push(Box::new(
                RtpForwarder::new(to.ip(), to.port(), &dir)
                    .map_err(|e| ControlError::Io(e.to_string()))?,
            ));
        }
        if let Some(cmd) = cfg.command.as_deref().filter(|c| !c.trim().is_empty()) {
            sinks.push(Box::new(
                CommandHook::new(cmd, &dir).map_err(|e| ControlError::Io(e.to_string()))?,
            ));
        }
        sinks.extend(extra);
        let (tap, rx) = Tap::new(id, cfg.queue.max(64));
        let dropped = tap.dropped.clone();
        let added = self
            .ask(worker, |reply| Command::AddTap {
                room: room.clone(),
                tap,
                reply,
            })
            .await
            .ok_or(ControlError::ShuttingDown)?;
        if !added {
            return Err(ControlError::NoSuchRoom(room.to_string()));
        }
        let commands = self.inner.workers[worker].commands.clone();
        let events = self.inner.events.clone();
        let (room2, dir2) = (room.clone(), dir.clone());
        let thread = std::thread::Builder::new()
            .name(format!("confab-rec-{id}"))
            .spawn(move || {
                let r = room2.clone();
                crate::record::run_session(
                    room2.clone(),
                    rx,
                    sinks,
                    dropped.clone(),
                    move |track: &TrackId| {
                        let _ = commands.try_send(Command::TapKeyframe {
                            room: r.clone(),
                            track: track.clone(),
                        });
                    },
                );
                let manifest = dir2.join("manifest.json");
                let files = std::fs::read(&manifest)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|m| {
                        m["files"].as_array().map(|fs| {
                            fs.iter()
                                .filter_map(|f| f["path"].as_str())
                                .filter_map(|p| path::join(&dir2, p).ok())
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                        })
                    })
                    .unwrap_or_default();
                if let Some(tx) = events {
                    let _ = tx.try_send(RoomEvent::RecordingFinished {
                        room: room2,
                        dir: dir2.display().to_string(),
                        manifest: manifest.exists().then(|| manifest.display().to_string()),
                        files,
                        dropped_packets: dropped.load(Ordering::Relaxed),
                    });
                }
            })
            .map_err(|e| ControlError::Io(e.to_string()))?;
        if let Some(tx) = &self.inner.events {
            let _ = tx.try_send(RoomEvent::RecordingStarted {
                room: room.clone(),
                dir: dir.display().to_string(),
            });
        }
        Ok(thread)
    }

    /// Stops recording `room`; returns the directory once its files and manifest are
    /// written.
    pub async fn stop_recording(&self, room: &RoomId) -> Result<PathBuf, ControlError> {
        let rec = self
            .inner
            .recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room)
            .ok_or_else(|| ControlError::NotRecording(room.to_string()))?;
        if let Some(worker) = self.worker_of(room) {
            let _ = self.inner.workers[worker]
                .commands
                .send(Command::RemoveTap {
                    room: room.clone(),
                    tap: rec.tap,
                })
                .await;
        }
        if let Some(t) = rec.thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(rec.dir)
    }

    /// Whether `room` is being recorded (or a recording of it is starting).
    pub fn is_recording(&self, room: &RoomId) -> bool {
        self.inner
            .recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .is_some_and(|r| r.thread.as_ref().is_none_or(|t| !t.is_finished()))
    }

    /// Every room on every worker, with its participants and tracks.
    pub async fn rooms(&self) -> Vec<RoomSummary> {
        let mut all = Vec::new();
        for w in 0..self.inner.workers.len() {
            if let Some(mut rooms) = self.ask(w, |reply| Command::Inspect { reply }).await {
                all.append(&mut rooms);
            }
        }
        all.sort_by(|a, b| a.room.cmp(&b.room));
        all
    }

    /// Removes a participant (it is told why). With `ban`, its identity (its token's
    /// `sub`) may not join this room again for `room.kick_ban_ms`; returns the identity
    /// banned, `None` when there was nothing to ban (no ban asked or configured, or a
    /// participant that joined without a token: it has no identity to keep out).
    pub async fn kick(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
        ban: bool,
    ) -> Result<Option<String>, ControlError> {
        let workers = self.workers_of(room);
        if workers.is_empty() {
            return Err(ControlError::NoSuchRoom(room.to_string()));
        }
        // The participant is on one of the room's copies.
        let mut identity = None;
        for w in workers {
            identity = self
                .ask(w, |reply| Command::Kick {
                    room: room.clone(),
                    participant: participant.clone(),
                    reply,
                })
                .await
                .flatten();
            if identity.is_some() {
                break;
            }
        }
        let identity = identity.ok_or(ControlError::NotFound)?;
        let ban_for = std::time::Duration::from_millis(self.inner.config.kick_ban_ms);
        match identity {
            Some(who) if ban && !ban_for.is_zero() => {
                let now = std::time::Instant::now();
                let held = self
                    .inner
                    .bans
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((room.clone(), who.clone()), now + ban_for, now);
                if !held {
                    return Err(ControlError::Full("bans"));
                }
                tracing::info!(room = %room, identity = %who, ban_ms = ban_for.as_millis() as u64, "identity banned from the room");
                Ok(Some(who))
            }
            _ => Ok(None),
        }
    }

    /// Seconds (rounded up) before `identity` may join `room` again, while a kick's ban
    /// holds.
    pub fn banned_for(&self, room: &RoomId, identity: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        let until = self
            .inner
            .bans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .until(&(room.clone(), identity.to_string()), now)?;
        let left = until - now;
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    /// Removes every participant that joined with the access token `jti` (it was
    /// revoked); returns how many.
    pub async fn remove_token(&self, jti: &str) -> usize {
        let mut removed = 0;
        for w in 0..self.inner.workers.len() {
            removed += self
                .ask(w, |reply| Command::RevokeToken {
                    jti: jti.to_string(),
                    reply,
                })
                .await
                .unwrap_or(0);
        }
        removed
    }

    /// Mutes (or unmutes) a track for everyone, whatever its publisher does.
    pub async fn mute_track(
        &self,
        room: &RoomId,
        track: &TrackId,
        muted: bool,
    ) -> Result<(), ControlError> {
        // Every copy holds the track (its home, or a relayed copy): each stops it for its
        // own subscribers.
        self.ask_every_copy(room, |reply| Command::MuteTrack {
            room: room.clone(),
            track: track.clone(),
            muted,
            reply,
        })
        .await
    }

    /// Removes everyone from a room (they are told why); the room closes.
    pub async fn close_room(&self, room: &RoomId) -> Result<(), ControlError> {
        self.ask_every_copy(room, |reply| Command::CloseRoom {
            room: room.clone(),
            reply,
        })
        .await
    }

    /// Asks every copy of `room` (see [`Sfu::workers_of`]); `NotFound` unless one of them
    /// says it did something.
    async fn ask_every_copy(
        &self,
        room: &RoomId,
        make: impl Fn(oneshot::Sender<bool>) -> Command,
    ) -> Result<(), ControlError> {
        let workers = self.workers_of(room);
        if workers.is_empty() {
            return Err(ControlError::NoSuchRoom(room.to_string()));
        }
        let mut found = false;
        for w in workers {
            found |= self.ask(w, &make).await.unwrap_or(false);
        }
        found.then_some(()).ok_or(ControlError::NotFound)
    }
}

/// `2026-11-25T203015.123Z`: sortable, and safe in a path.
fn time_stamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_stamp_shape() {
        let s = super::time_stamp();
        assert_eq!(s.len(), 22, "{s}");
        assert!(s.starts_with("20"), "{s}");
        assert!(s.ends_with('Z'));
    }
}
