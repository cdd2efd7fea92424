//! Chat, recording taps and administration (kicks, revocations, mutes, summaries).

use super::{Output, Removal, Room};
use crate::keys::{ParticipantKey, TrackKey};
use crate::stats::SfuStats;
use confab_proto::{ChatOut, ErrorCode, ParticipantId, ParticipantInfo, ServerMessage, TrackId};
use std::sync::Arc;
use std::time::Instant;

impl Room {
    /// A chat frame from a participant's data channel: checked (grants, rate, shape),
    /// stamped, kept in the history and relayed to everyone else.
    pub fn chat(&mut self, from: ParticipantKey, data: &[u8], unix_ms: u64) {
        let Some(m) = self.members.get(&from) else {
            return;
        };
        let (request, text) = crate::chat::parse_chat(data, self.config.chat_max_bytes);
        if !m.grants.can_chat || m.grants.hidden {
            self.refuse(
                from,
                request,
                ErrorCode::Forbidden,
                "your access token does not allow chatting",
            );
            return;
        }
        if m.chat_limit.check().is_err() {
            SfuStats::inc(&self.stats.chat_dropped);
            let max = self.config.chat_per_second;
            self.refuse(
                from,
                request,
                ErrorCode::RateLimited,
                format!("at most {max} chat messages per second; this one was not sent"),
            );
            return;
        }
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let code = match e {
                    crate::chat::ChatError::TooLong { .. } => ErrorCode::ChatTooLong,
                    _ => ErrorCode::ChatInvalid,
                };
                self.refuse(from, request, code, e.to_string());
                return;
            }
        };
        let fact = self.copied.then(|| super::copy::Fact::Chat {
            from: m.id.clone(),
            name: m.name.clone(),
            text: text.clone(),
            unix_ms,
        });
        let msg = self.chat.push(m.id.clone(), m.name.clone(), text, unix_ms);
        if let Some(fact) = fact {
            self.out(Output::Fact(fact));
        }
        SfuStats::inc(&self.stats.chat_messages);
        let Ok(json) = serde_json::to_string(&msg) else {
            return;
        };
        let json: Arc<str> = json.into();
        for i in 0..self.order.len() {
            let to = self.order[i];
            if to != from {
                self.out(Output::Chat {
                    to,
                    json: json.clone(),
                });
            }
        }
    }

    /// A participant's chat channel opened: it gets the history.
    pub fn chat_opened(&mut self, key: ParticipantKey) {
        let history: Vec<Arc<str>> = self
            .chat
            .replay()
            .filter_map(|m: ChatOut| serde_json::to_string(&m).ok())
            .map(Into::into)
            .collect();
        for json in history {
            self.out(Output::Chat { to: key, json });
        }
    }

    /// Starts delivering the room's media to a recording or hook session: the tracks
    /// already published start now, video on a keyframe.
    pub fn add_tap(&mut self, tap: crate::sink::Tap, now: Instant) {
        for (_, t) in self.tracks.iter() {
            if let Some((id, name)) = self.who(t.owner) {
                tap.send(crate::sink::TapEvent::TrackStarted(
                    t.meta(&self.id, &id, &name),
                ));
            }
        }
        self.taps.push(tap);
        SfuStats::gauge(&self.stats.recordings, 1);
        let keys: Vec<TrackKey> = self.tracks.iter().map(|(k, _)| TrackKey(k)).collect();
        for t in keys {
            self.request_keyframe(t, 2, now);
        }
    }

    pub fn remove_tap(&mut self, tap: u64) {
        let before = self.taps.len();
        self.taps.retain(|t| t.id != tap);
        if self.taps.len() < before {
            SfuStats::gauge(&self.stats.recordings, -1);
        }
    }

    /// Drops every tap (the room closes): their sessions finish.
    pub fn drop_taps(&mut self) {
        SfuStats::gauge(&self.stats.recordings, -(self.taps.len() as i64));
        self.taps.clear();
    }

    pub fn recording(&self) -> bool {
        !self.taps.is_empty()
    }

    /// A recording has a gap in `track`: ask its publisher for a keyframe.
    pub fn tap_keyframe(&mut self, track: &TrackId, now: Instant) {
        if let Some(k) = self.track_key(track) {
            self.request_keyframe(k, 2, now);
        }
    }

    /// Removes a participant by id; `None` when there is no such one, else its identity
    /// (what a ban keeps out).
    pub fn kick(&mut self, participant: &ParticipantId) -> Option<Option<String>> {
        let (key, identity) = self
            .members
            .iter()
            .find(|(_, m)| &m.id == participant)
            .map(|(k, m)| (*k, m.identity.clone()))?;
        self.leave(key, Removal::Kicked);
        Some(identity)
    }

    /// Removes every participant that joined with the token `jti`; returns how many.
    pub fn revoke(&mut self, jti: &str) -> usize {
        let keys: Vec<ParticipantKey> = self
            .members
            .iter()
            .filter(|(_, m)| m.token_id.as_deref() == Some(jti))
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.leave(*k, Removal::Revoked);
        }
        keys.len()
    }

    /// An administrator mutes a track: it is marked muted and nobody receives it until it
    /// is unmuted (the publisher cannot undo this by itself).
    pub fn admin_mute(&mut self, track: &TrackId, muted: bool, now: Instant) -> bool {
        let Some(t) = self.track_key(track).and_then(|k| self.tracks.get_mut(k.0)) else {
            return false;
        };
        t.muted = muted;
        t.admin_muted = muted;
        let owner = t.owner;
        if muted {
            for d in t.down.iter_mut() {
                d.forwarder.set_active(false);
            }
        }
        self.allocate_all(now);
        self.announce_update(owner);
        true
    }

    /// Tells everyone `message`.
    pub fn notice(&mut self, message: &ServerMessage) {
        self.broadcast(None, message.clone());
    }

    /// The participants as the admin API shows them.
    pub fn summary(&self) -> Vec<ParticipantInfo> {
        self.order
            .iter()
            .filter_map(|k| self.participant_info(*k))
            .collect()
    }
}
