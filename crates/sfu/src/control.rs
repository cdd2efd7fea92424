//! Operations on the media plane from outside a room: recordings (the [`crate::sink`]
//! hook with the built-in sinks) and administration (list, remove, mute, close).

use crate::Sfu;
use crate::events::RoomEvent;
use crate::record::file::FileRecorder;
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
}

/// A recording in progress.
pub(crate) struct Recording {
    tap: u64,
    pub dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

static NEXT_TAP: AtomicU64 = AtomicU64::new(1);

impl Sfu {
    fn worker_of(&self, room: &RoomId) -> Option<usize> {
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .map(|p| p.worker)
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
        }
        let cfg = &self.inner.config.recording;
        let stamp = time_stamp();
        let dir = cfg.dir.join(room.as_str()).join(&stamp);
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
        let id = NEXT_TAP.fetch_add(1, Ordering::Relaxed);
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
                                .map(|p| dir2.join(p).display().to_string())
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
        self.inner
            .recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                room.clone(),
                Recording {
                    tap: id,
                    dir: dir.clone(),
                    thread: Some(thread),
                },
            );
        Ok(dir)
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

    /// Whether `room` is being recorded.
    pub fn is_recording(&self, room: &RoomId) -> bool {
        self.inner
            .recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .is_some_and(|r| r.thread.as_ref().is_some_and(|t| !t.is_finished()))
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

    /// Removes a participant (it is told why).
    pub async fn kick(
        &self,
        room: &RoomId,
        participant: &ParticipantId,
    ) -> Result<(), ControlError> {
        let w = self
            .worker_of(room)
            .ok_or_else(|| ControlError::NoSuchRoom(room.to_string()))?;
        let found = self
            .ask(w, |reply| Command::Kick {
                room: room.clone(),
                participant: participant.clone(),
                reply,
            })
            .await
            .unwrap_or(false);
        found.then_some(()).ok_or(ControlError::NotFound)
    }

    /// Mutes (or unmutes) a track for everyone, whatever its publisher does.
    pub async fn mute_track(
        &self,
        room: &RoomId,
        track: &TrackId,
        muted: bool,
    ) -> Result<(), ControlError> {
        let w = self
            .worker_of(room)
            .ok_or_else(|| ControlError::NoSuchRoom(room.to_string()))?;
        let found = self
            .ask(w, |reply| Command::MuteTrack {
                room: room.clone(),
                track: track.clone(),
                muted,
                reply,
            })
            .await
            .unwrap_or(false);
        found.then_some(()).ok_or(ControlError::NotFound)
    }

    /// Removes everyone from a room (they are told why); the room closes.
    pub async fn close_room(&self, room: &RoomId) -> Result<(), ControlError> {
        let w = self
            .worker_of(room)
            .ok_or_else(|| ControlError::NoSuchRoom(room.to_string()))?;
        let found = self
            .ask(w, |reply| Command::CloseRoom {
                room: room.clone(),
                reply,
            })
            .await
            .unwrap_or(false);
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
