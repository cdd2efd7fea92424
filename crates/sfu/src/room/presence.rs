//! Presence beside the media: raised hands and reactions (issue 18).
//!
//! A raised hand is part of the participant as the room shows it
//! (`ParticipantInfo.hand_raised`), so a late joiner sees it in `joined`; raising or
//! lowering announces the participant again. A reaction is not kept: it is relayed once to
//! everyone, the sender included. Both cross room copies as [`Fact`]s.

use super::Room;
use super::copy::Fact;
use crate::keys::ParticipantKey;
use confab_proto::{Emoji, ErrorCode, ParticipantId, RequestId, ServerMessage};
use std::time::Instant;

impl Room {
    /// `key` raises or lowers its own hand.
    pub(super) fn raise_hand(
        &mut self,
        key: ParticipantKey,
        request: Option<RequestId>,
        raised: bool,
    ) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if m.grants.hidden {
            let msg = "a hidden participant cannot raise a hand";
            self.refuse(key, request, ErrorCode::Forbidden, msg);
            return;
        }
        if m.hand_raised == raised {
            return;
        }
        m.hand_raised = raised;
        let participant = m.id.clone();
        self.tell(Fact::Hand {
            participant,
            raised,
        });
        self.announce_update(key);
    }

    /// A room admin (`key`) lowers `participant`'s hand, here or on another copy.
    pub(super) fn lower_hand(
        &mut self,
        key: ParticipantKey,
        request: Option<RequestId>,
        participant: ParticipantId,
    ) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        if !m.grants.room_admin {
            let msg = "only a room admin can lower another participant's hand";
            self.refuse(key, request, ErrorCode::Forbidden, msg);
            return;
        }
        let known = self
            .members
            .values()
            .any(|m| m.id == participant && !m.grants.hidden)
            || self.remote_ids.contains_key(&participant);
        if !known {
            let msg = format!("no participant {participant} in this room");
            self.refuse(key, request, ErrorCode::InvalidMessage, msg);
            return;
        }
        if self.set_hand(&participant, false) {
            self.tell(Fact::Hand {
                participant,
                raised: false,
            });
        }
    }

    /// Sets `participant`'s hand (a member here or a remote one) and announces it when it
    /// changed; `true` if it did.
    pub(super) fn set_hand(&mut self, participant: &ParticipantId, raised: bool) -> bool {
        if let Some((&key, m)) = self.members.iter_mut().find(|(_, m)| &m.id == participant) {
            if m.hand_raised == raised {
                return false;
            }
            m.hand_raised = raised;
            self.announce_update(key);
            return true;
        }
        let Some(&key) = self.remote_ids.get(participant) else {
            return false;
        };
        let Some(r) = self.remotes.get_mut(&key) else {
            return false;
        };
        if r.info.hand_raised == raised {
            return false;
        }
        r.info.hand_raised = raised;
        self.announce_remote(key);
        true
    }

    /// `key` reacts: everyone here and on the other copies is told.
    pub(super) fn react(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        request: Option<RequestId>,
        emoji: Emoji,
    ) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if m.grants.hidden {
            let msg = "a hidden participant cannot react";
            self.refuse(key, request, ErrorCode::Forbidden, msg);
            return;
        }
        if !m.take_reaction(now) {
            let msg = format!(
                "at most {} reactions in {} s; this one was not sent",
                super::member::REACTIONS_PER_WINDOW,
                super::member::REACTION_WINDOW.as_secs()
            );
            self.refuse(key, request, ErrorCode::RateLimited, msg);
            return;
        }
        let from = m.id.clone();
        self.tell(Fact::Reaction {
            from: from.clone(),
            emoji,
        });
        self.reaction(from, emoji);
    }

    /// Tells everyone here that `from` reacted.
    pub(super) fn reaction(&mut self, from: ParticipantId, emoji: Emoji) {
        self.broadcast(
            None,
            ServerMessage::Reaction {
                participant_id: from,
                emoji,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::Harness;
    use super::super::relay::RelayKey;
    use crate::SfuConfig;
    use crate::keys::ParticipantKey;
    use confab_proto::signal::Grants;
    use confab_proto::{ClientMessage, Emoji, ErrorCode, ParticipantId, ServerMessage};
    use std::time::Duration;

    /// The hand `who` is shown with in the last message about it that `to` was told:
    /// `joined`, `participant_joined` or `participant_updated`.
    fn hand_seen(h: &Harness, to: ParticipantKey, who: &ParticipantId) -> Option<bool> {
        h.clients[&to].inbox.iter().rev().find_map(|m| match m {
            ServerMessage::ParticipantUpdated { participant }
            | ServerMessage::ParticipantJoined { participant }
                if participant.id == *who =>
            {
                Some(participant.hand_raised)
            }
            ServerMessage::Joined {
                participant,
                participants,
                ..
            } => std::iter::once(participant)
                .chain(participants)
                .find(|p| p.id == *who)
                .map(|p| p.hand_raised),
            _ => None,
        })
    }

    fn errors(h: &Harness, k: ParticipantKey) -> Vec<ErrorCode> {
        h.clients[&k]
            .inbox
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    fn reactions(h: &Harness, k: ParticipantKey) -> Vec<(ParticipantId, Emoji)> {
        h.clients[&k]
            .inbox
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Reaction {
                    participant_id,
                    emoji,
                } => Some((participant_id.clone(), *emoji)),
                _ => None,
            })
            .collect()
    }

    fn admin() -> Grants {
        Grants {
            room_admin: true,
            ..Grants::default()
        }
    }

    #[test]
    fn a_raised_hand_is_seen_by_everyone_and_lowered_by_its_owner_or_an_admin() {
        let mut h = Harness::new(SfuConfig::default());
        let (ada, bob, boss) = (h.join(1), h.join(2), h.join_with(3, admin()));
        let ada_id = h.id(ada);
        h.send(ada, ClientMessage::RaiseHand { raised: true });
        for k in [ada, bob, boss] {
            assert_eq!(hand_seen(&h, k, &ada_id), Some(true), "{k:?}");
        }
        // Raising it again changes nothing and tells nobody.
        let told = h.clients[&bob].inbox.len();
        h.send(ada, ClientMessage::RaiseHand { raised: true });
        assert_eq!(h.clients[&bob].inbox.len(), told);
        // A late joiner sees it in `joined`.
        let late = h.join(4);
        assert_eq!(hand_seen(&h, late, &ada_id), Some(true));
        // Bob may not lower it; the admin may, and may name nobody unknown.
        let lower = ClientMessage::LowerHand {
            participant_id: ada_id.clone(),
        };
        h.send(bob, lower.clone());
        assert_eq!(errors(&h, bob), [ErrorCode::Forbidden]);
        assert_eq!(hand_seen(&h, late, &ada_id), Some(true));
        h.send(boss, lower);
        for k in [ada, bob, boss, late] {
            assert_eq!(hand_seen(&h, k, &ada_id), Some(false), "{k:?}");
        }
        let nobody = ClientMessage::LowerHand {
            participant_id: ParticipantId::from_wire("PA_nobody"),
        };
        h.send(boss, nobody);
        assert_eq!(errors(&h, boss), [ErrorCode::InvalidMessage]);
        // Its owner raises and lowers it.
        h.send(ada, ClientMessage::RaiseHand { raised: true });
        h.send(ada, ClientMessage::RaiseHand { raised: false });
        assert_eq!(hand_seen(&h, bob, &ada_id), Some(false));
        h.check();
    }

    #[test]
    fn reactions_reach_everyone_within_an_allowance() {
        let mut h = Harness::new(SfuConfig::default());
        let (ada, bob) = (h.join(1), h.join(2));
        let hidden = h.join_with(
            3,
            Grants {
                hidden: true,
                ..Grants::default()
            },
        );
        let ada_id = h.id(ada);
        for _ in 0..5 {
            h.send(ada, ClientMessage::Reaction { emoji: Emoji::Clap });
            h.advance(Duration::from_millis(100));
        }
        assert_eq!(reactions(&h, bob), vec![(ada_id.clone(), Emoji::Clap); 5]);
        assert_eq!(reactions(&h, ada).len(), 5, "the sender sees its own");
        // The sixth within 5 s is refused, to the sender only.
        h.send(
            ada,
            ClientMessage::Reaction {
                emoji: Emoji::Heart,
            },
        );
        assert_eq!(errors(&h, ada), [ErrorCode::RateLimited]);
        assert_eq!(reactions(&h, bob).len(), 5);
        // 5 s after the first, one more is allowed.
        h.advance(Duration::from_millis(4_600));
        h.send(
            ada,
            ClientMessage::Reaction {
                emoji: Emoji::Heart,
            },
        );
        assert_eq!(reactions(&h, bob).last(), Some(&(ada_id, Emoji::Heart)));
        // A hidden participant neither reacts nor raises a hand.
        h.send(
            hidden,
            ClientMessage::Reaction {
                emoji: Emoji::Party,
            },
        );
        h.send(hidden, ClientMessage::RaiseHand { raised: true });
        assert_eq!(
            errors(&h, hidden),
            [ErrorCode::Forbidden, ErrorCode::Forbidden]
        );
        assert_eq!(reactions(&h, bob).len(), 6);
    }

    #[test]
    fn hands_and_reactions_cross_room_copies() {
        // Ada on copy A, the admin on copy B.
        let (to_a, to_b) = (RelayKey(0), RelayKey(1));
        let (mut a, mut b) = (
            Harness::new(SfuConfig::default()),
            Harness::new(SfuConfig::default()),
        );
        let ada = a.join(1);
        let boss = b.join_with(2, admin());
        super::super::harness::exchange_hellos(&mut a, &mut b);
        let ada_id = a.id(ada);
        let cross = |from: &mut Harness, to: &mut Harness, key: RelayKey| {
            for f in std::mem::take(&mut from.facts) {
                to.room.fact(to.now, key, f);
            }
            to.run();
        };
        a.send(ada, ClientMessage::RaiseHand { raised: true });
        cross(&mut a, &mut b, to_a);
        assert_eq!(hand_seen(&b, boss, &ada_id), Some(true));
        // The admin lowers it from the other copy: Ada's own copy applies it.
        b.send(
            boss,
            ClientMessage::LowerHand {
                participant_id: ada_id.clone(),
            },
        );
        assert_eq!(hand_seen(&b, boss, &ada_id), Some(false));
        cross(&mut b, &mut a, to_b);
        assert_eq!(hand_seen(&a, ada, &ada_id), Some(false));
        // A reaction crosses once.
        b.send(
            boss,
            ClientMessage::Reaction {
                emoji: Emoji::Party,
            },
        );
        cross(&mut b, &mut a, to_b);
        assert_eq!(reactions(&a, ada), [(b.id(boss), Emoji::Party)]);
    }
}
