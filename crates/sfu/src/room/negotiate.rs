//! Negotiation: the publisher's offers (checked, budgeted, answered by the IO), the
//! subscriber connection's offers (one in flight at a time, from a dirty list) and their
//! answers.

use super::member::SubState;
use super::{OfferResult, Output, Removal, Room};
use crate::keys::{ParticipantKey, PeerKey, TrackKey};
use crate::stats::SfuStats;
use confab_proto::{ErrorCode, RequestId, ServerMessage, SubscribedTrack};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the subscriber connection made of an answer.
#[derive(Debug, Clone)]
pub struct Applied {
    pub result: Result<(), String>,
    /// Media-thread time it took.
    pub cost: Duration,
    /// Which down-track slots now have a negotiated payload type.
    pub negotiated: Vec<bool>,
    /// Whether the connection is up.
    pub connected: bool,
}

impl Room {
    pub(super) fn mark_dirty(&mut self, key: ParticipantKey) {
        if let Some(m) = self.members.get_mut(&key)
            && !m.needs_offer
        {
            m.needs_offer = true;
            self.dirty.push(key);
        }
    }

    /// The next subscriber due an offer: changed, with no offer in flight.
    pub(super) fn next_offer(&mut self) -> Option<Output> {
        let i = self.dirty.iter().position(|k| {
            self.members
                .get(k)
                .is_some_and(|m| m.sub_state == SubState::Stable)
                && !self.held.iter().any(|(h, _)| h == k)
        })?;
        let key = self.dirty.swap_remove(i);
        let m = self.members.get_mut(&key)?;
        m.needs_offer = false;
        // In flight from now: no second offer until this one is answered.
        m.sub_state = SubState::Creating;
        Some(Output::CreateOffer {
            subscriber: key,
            sub_peer: m.sub_peer,
            restart_ice: std::mem::take(&mut m.restart_ice),
        })
    }

    /// The participant asked to restart ICE on its subscriber connection: its next offer
    /// (at once, or after the answer to the one in flight) has new credentials. Charged to
    /// its signaling budget like any offer.
    pub(super) fn restart_ice(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        request: Option<RequestId>,
    ) {
        if !self.admit_signaling(
            now,
            key,
            &request,
            "your ICE restarts are using more of the server's time than allowed",
        ) {
            return;
        }
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if !m.negotiated {
            // Its first offer is not answered yet: nothing to restart.
            return;
        }
        m.restart_ice = true;
        self.mark_dirty(key);
    }

    /// The subscriber connection's offer: `mids` maps each down-track slot to its
    /// transceiver.
    pub fn offer_created(
        &mut self,
        key: ParticipantKey,
        result: Result<(String, Vec<(usize, String)>), String>,
    ) {
        match result {
            Ok((sdp, mids)) => {
                let tracks = self.describe_slots(key, &mids);
                let offer = ServerMessage::Offer { sdp, tracks };
                let Some(m) = self.members.get_mut(&key) else {
                    return;
                };
                m.sub_state = SubState::AwaitingAnswer;
                m.pending_offer = Some((offer.clone(), m.attached));
                self.signal(key, offer);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create subscriber offer");
                if let Some(m) = self.members.get_mut(&key) {
                    m.sub_state = SubState::Stable;
                }
                self.signal(key, ServerMessage::error(ErrorCode::Internal, e));
            }
        }
    }

    fn describe_slots(
        &self,
        key: ParticipantKey,
        mids: &[(usize, String)],
    ) -> Vec<SubscribedTrack> {
        let by_slot: FxHashMap<usize, TrackKey> = self
            .tracks
            .iter()
            .filter_map(|(k, t)| Some((t.down_of(key)?.slot, TrackKey(k))))
            .collect();
        mids.iter()
            .filter_map(|(slot, mid)| {
                let t = self.tracks.get(by_slot.get(slot)?.0)?;
                Some(SubscribedTrack {
                    mid: mid.clone(),
                    track_id: t.id.clone(),
                    participant_id: self.id_of(t.owner)?,
                    kind: t.kind,
                    source: t.source,
                })
            })
            .collect()
    }

    /// Whether the participant's signaling budget admits more media-thread work now;
    /// refuses (naming `request`) or removes it when not.
    pub(super) fn admit_signaling(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        request: &Option<RequestId>,
        refusal: &str,
    ) -> bool {
        let Some(m) = self.members.get_mut(&key) else {
            return false;
        };
        match m.budget.admit(now) {
            crate::budget::Admit::Yes => true,
            crate::budget::Admit::Refuse { strikes } => {
                SfuStats::inc(&self.stats.signaling_over_budget);
                if strikes == 1 {
                    tracing::info!(participant = %m.id, "refused: signaling budget spent");
                }
                self.refuse(key, request.clone(), ErrorCode::RateLimited, refusal);
                false
            }
            crate::budget::Admit::Remove => {
                SfuStats::inc(&self.stats.signaling_over_budget);
                tracing::info!(participant = %m.id, "removed: signaling budget exceeded too often");
                self.leave(key, Removal::OverBudget);
                false
            }
        }
    }

    pub(super) fn publish(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        request: Option<RequestId>,
        sdp: String,
        tracks: Vec<confab_proto::signal::PublishTrack>,
    ) {
        let allowed = self
            .members
            .get(&key)
            .is_some_and(|m| m.grants.can_publish && !m.grants.hidden);
        if !allowed {
            self.refuse(
                key,
                request,
                ErrorCode::Forbidden,
                "your access token does not allow publishing",
            );
            return;
        }
        let sending = crate::sdp::sending_media_sections(&sdp);
        let max = self.config.max_tracks_per_participant;
        if sending > max {
            self.refuse(
                key,
                request,
                ErrorCode::LimitReached,
                format!("this offer sends {sending} tracks; at most {max} are allowed"),
            );
            return;
        }
        if !self.admit_signaling(
            now,
            key,
            &request,
            "your offers are using more of the server's time than allowed: \
             publish refused, try again in a moment",
        ) {
            return;
        }
        if let Some(m) = self.members.get_mut(&key) {
            m.offered_sources = tracks;
        }
        self.out(Output::AnswerOffer {
            participant: key,
            request,
            sdp,
        });
    }

    /// The publisher connection answered (or refused) the participant's offer, on
    /// `pub_peer`, costing `cost` of the media thread.
    pub fn offer_answered(
        &mut self,
        key: ParticipantKey,
        request: Option<RequestId>,
        pub_peer: Option<PeerKey>,
        result: OfferResult,
        cost: Duration,
    ) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        m.budget.charge(cost);
        let offered = std::mem::take(&mut m.offered_sources);
        match result {
            OfferResult::Answered { sdp, mids } => {
                m.pub_peer = pub_peer;
                // Only now, with the offer accepted, is anything of the message kept: the
                // sources of the mids the connection has (those of others, and of
                // sections the offer no longer has, dropped).
                let mut unknown = Vec::new();
                let mut sources = HashMap::with_capacity(offered.len());
                for t in offered {
                    if mids.contains(&t.mid) {
                        sources.insert(t.mid, t.source);
                    } else {
                        unknown.push(t.mid);
                    }
                }
                for (mid, source) in std::mem::take(&mut m.sources) {
                    if mids.contains(&mid) {
                        sources.entry(mid).or_insert(source);
                    }
                }
                m.sources = sources;
                self.signal(
                    key,
                    ServerMessage::Answer {
                        sdp,
                        request_id: request,
                    },
                );
                if !unknown.is_empty() {
                    self.signal(
                        key,
                        ServerMessage::error(
                            ErrorCode::UnknownTrack,
                            format!(
                                "publish names mids {unknown:?} that the offer does not contain"
                            ),
                        ),
                    );
                }
            }
            OfferResult::Refused { code, message } => {
                tracing::debug!(error = %message, "publish offer refused");
                self.refuse(key, request, code, message);
            }
        }
    }

    pub(super) fn answer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        request: Option<RequestId>,
        sdp: String,
    ) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        if m.sub_state != SubState::AwaitingAnswer {
            self.refuse(
                key,
                request,
                ErrorCode::OutOfOrder,
                "an answer arrived but no offer is pending",
            );
            return;
        }
        // An answer has exactly the sections of the offer it answers: anything else is
        // refused before it is parsed (an invalid answer leaves the offer pending, so a
        // client could otherwise make the media thread parse junk at its message rate).
        let offered = match &m.pending_offer {
            Some((ServerMessage::Offer { sdp, .. }, _)) => Some(crate::sdp::section_count(sdp)),
            _ => None,
        };
        let answered = crate::sdp::section_count(&sdp);
        if let Some(n) = offered
            && n != answered
        {
            self.refuse(
                key,
                request,
                ErrorCode::InvalidSdp,
                format!("the answer has {answered} media sections; the offer has {n}"),
            );
            return;
        }
        // Answers are charged to the participant's budget; only one that already sent an
        // invalid answer can be refused for it (an honest client never is).
        if m.answer_failed
            && !self.admit_signaling(
                now,
                key,
                &request,
                "your invalid answers are using more of the server's time than allowed",
            )
        {
            return;
        }
        let Some(m) = self.members.get(&key) else {
            return;
        };
        self.out(Output::ApplyAnswer {
            participant: key,
            sub_peer: m.sub_peer,
            request,
            sdp,
        });
    }

    /// The subscriber connection applied (or refused) the participant's answer.
    /// `negotiated`: which down-track slots now have a payload type; `connected`: whether
    /// the connection is up.
    pub fn answer_applied(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        request: Option<RequestId>,
        applied: Applied,
    ) {
        let Applied {
            result,
            cost,
            negotiated,
            connected,
        } = applied;
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        m.budget.charge(cost);
        m.answer_failed = result.is_err();
        match result {
            Ok(()) => {
                m.sub_state = SubState::Stable;
                m.negotiated = true;
                m.pending_offer = None;
                if connected {
                    self.activate_down_tracks(key, &negotiated, now);
                }
            }
            // The offer stays pending: the client may send a corrected answer.
            Err(e) => self.refuse(key, request, ErrorCode::InvalidSdp, e),
        }
    }

    /// The subscriber connection is up: its negotiated down-tracks may carry media.
    pub fn subscriber_connected(&mut self, now: Instant, key: ParticipantKey, negotiated: &[bool]) {
        self.activate_down_tracks(key, negotiated, now);
    }

    /// Marks the negotiated down-tracks of a connected subscriber ready and allocates:
    /// video starts at once (a keyframe is requested for it).
    pub(super) fn activate_down_tracks(
        &mut self,
        key: ParticipantKey,
        negotiated: &[bool],
        now: Instant,
    ) {
        for (_, t) in self.tracks.iter_mut() {
            if let Some(d) = t.down_of_mut(key) {
                d.ready = negotiated.get(d.slot).copied().unwrap_or(false);
            }
        }
        self.allocate(key, now);
    }
}
