//! One participant's state in its room: who it is and may be, what it publishes and
//! asked for, its negotiation state, its downlink estimate and its allowances.

use crate::config::SfuConfig;
use crate::keys::{ParticipantKey, PeerKey, TrackKey};
use confab_proto::signal::{Grants, PublishTrack};
use confab_proto::{
    DisplayName, ParticipantId, Quality, RequestId, ServerMessage, TrackId, TrackSource,
};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Who joins, with what its token grants.
#[derive(Debug, Clone)]
pub struct JoinInfo {
    pub id: ParticipantId,
    pub name: DisplayName,
    pub grants: Grants,
    pub identity: Option<String>,
    pub token_id: Option<String>,
    pub resume_token: String,
    /// The `join`'s request id, echoed on `joined`.
    pub request_id: Option<RequestId>,
    /// Its subscriber connection (opaque to the room: where its down-tracks write).
    pub sub_peer: PeerKey,
    /// Milliseconds since the Unix epoch.
    pub joined_at: u64,
}

/// A subscriber's wishes for one remote track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pref {
    pub subscribed: bool,
    pub quality: Quality,
    pub height: Option<u32>,
}

impl Default for Pref {
    fn default() -> Self {
        Self {
            subscribed: true,
            quality: Quality::High,
            height: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    Stable,
    /// Asked the IO for an offer ([`super::Output::CreateOffer`]).
    Creating,
    AwaitingAnswer,
}

pub struct Member {
    pub id: ParticipantId,
    pub name: DisplayName,
    pub grants: Grants,
    pub identity: Option<String>,
    /// Its token's `jti`, for revocation.
    pub token_id: Option<String>,
    pub chat_limit: governor::DefaultDirectRateLimiter,
    /// Given back in every `joined`, to resume the session on a new connection.
    pub resume_token: String,
    /// Whether its signaling connection is up.
    pub attached: bool,
    /// The subscriber offer awaiting an answer, and whether it was sent while attached
    /// (then it may have been lost with the connection; one sent while detached is in the
    /// missed messages the session replays).
    pub pending_offer: Option<(ServerMessage, bool)>,
    pub joined_at: u64,
    pub sub_peer: PeerKey,
    pub pub_peer: Option<PeerKey>,
    /// mid -> source, from its accepted `publish` offers.
    pub sources: HashMap<String, TrackSource>,
    /// The sources of the offer being answered.
    pub offered_sources: Vec<PublishTrack>,
    /// The simulcast rids each section (mid) of its last accepted offer sends.
    pub offered_rids: HashMap<String, Vec<String>>,
    /// Published tracks, in publication order.
    pub tracks: Vec<TrackKey>,
    pub sub_state: SubState,
    /// In the room's dirty list: its down-tracks changed since its last offer.
    pub needs_offer: bool,
    /// It asked for an ICE restart (`restart_ice`): its next offer carries new credentials.
    pub restart_ice: bool,
    /// Whether it ever answered a subscriber offer; until then it must do so by
    /// `negotiate_by`.
    pub negotiated: bool,
    pub negotiate_by: Instant,
    /// Its last answer was invalid (the offer is still pending).
    pub answer_failed: bool,
    /// Media-thread time its offers may still take.
    pub budget: crate::budget::WorkBudget,
    /// What it asked of each remote track.
    pub prefs: HashMap<TrackId, Pref>,
    /// Whose video it always wants.
    pub pins: Vec<ParticipantKey>,
    /// Its downlink bandwidth estimate, when its layers were last allocated, and what that
    /// allocation sends it (audio and video, bits per second).
    pub bwe: crate::bwe::Bwe,
    pub allocated_at: Option<Instant>,
    pub given_bps: u64,
    /// The last `downlink` report it was sent: the estimate and the tracks' layers.
    pub downlink_sent: Option<(u64, Vec<confab_proto::signal::DownlinkTrack>)>,
    /// Down-track slots of its subscriber connection: `true` when taken.
    slots: Vec<bool>,
    /// Its hand is raised.
    pub hand_raised: bool,
    /// When it sent its last reactions, oldest first (at most [`REACTIONS_PER_WINDOW`]).
    pub reactions: VecDeque<Instant>,
}

/// A participant's reactions: at most this many in [`REACTION_WINDOW`].
pub const REACTIONS_PER_WINDOW: usize = 5;
pub const REACTION_WINDOW: Duration = Duration::from_secs(5);

impl Member {
    pub fn new(now: Instant, config: &SfuConfig, info: JoinInfo) -> Self {
        Self {
            id: info.id,
            name: info.name,
            grants: info.grants,
            identity: info.identity,
            token_id: info.token_id,
            chat_limit: chat_limiter(config.chat_per_second),
            resume_token: info.resume_token,
            attached: true,
            pending_offer: None,
            joined_at: info.joined_at,
            sub_peer: info.sub_peer,
            pub_peer: None,
            sources: HashMap::new(),
            offered_sources: Vec::new(),
            offered_rids: HashMap::new(),
            tracks: Vec::new(),
            sub_state: SubState::Stable,
            needs_offer: false,
            restart_ice: false,
            negotiated: false,
            negotiate_by: now + Duration::from_millis(config.negotiation_timeout_ms),
            answer_failed: false,
            budget: crate::budget::WorkBudget::new(
                now,
                Duration::from_millis(config.signaling_budget_ms_per_s),
                Duration::from_millis(config.signaling_budget_burst_ms),
                config.signaling_budget_strikes,
            ),
            prefs: HashMap::new(),
            pins: Vec::new(),
            bwe: crate::bwe::Bwe::new(crate::bwe::BweConfig::default()),
            allocated_at: None,
            given_bps: 0,
            downlink_sent: None,
            slots: Vec::new(),
            hand_raised: false,
            reactions: VecDeque::new(),
        }
    }

    /// Takes one reaction from its allowance at `now`; `false` when none is left.
    pub fn take_reaction(&mut self, now: Instant) -> bool {
        while self
            .reactions
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= REACTION_WINDOW)
        {
            self.reactions.pop_front();
        }
        if self.reactions.len() >= REACTIONS_PER_WINDOW {
            return false;
        }
        self.reactions.push_back(now);
        true
    }

    /// A free down-track slot (the lowest: the connection reuses freed transceivers).
    pub fn take_slot(&mut self) -> usize {
        match self.slots.iter().position(|taken| !taken) {
            Some(i) => {
                self.slots[i] = true;
                i
            }
            None => {
                self.slots.push(true);
                self.slots.len() - 1
            }
        }
    }

    pub fn free_slot(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = false;
        }
    }
}

/// A participant's chat allowance: `per_second`, with bursts of twice as many.
fn chat_limiter(per_second: u32) -> governor::DefaultDirectRateLimiter {
    let rate = std::num::NonZeroU32::new(per_second.max(1)).expect("at least 1");
    let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).expect("2 is not 0"));
    governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
}
