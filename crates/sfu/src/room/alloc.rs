//! The room's periodic decisions on top of the pure modules: which layer of each track a
//! subscriber gets (`allocator`, `bwe`), last-N, top-K audio, active speakers
//! (`speaker`), keyframe re-requests and dynacast.
//!
//! Cost: the room's ranking of who is seen and heard is computed once per pass
//! ([`Ranking`]); each subscriber's allocation is then O(participants + tracks), so a
//! speaker change re-allocating everyone is O(participants × tracks).

use super::{Output, Room};
use crate::allocator::{self, Demand, PRIORITY_NORMAL, PRIORITY_SCREEN, PRIORITY_SPEAKER};
use crate::keys::{ParticipantKey, TrackKey};
use confab_proto::{MediaKind, ServerMessage, TrackSource};
use rustc_hash::{FxHashMap, FxHashSet};
use std::time::{Duration, Instant};

/// How often allocation runs for every subscriber (it also runs on every change).
pub const ALLOCATE_EVERY: Duration = Duration::from_millis(500);
/// A simulcast layer nobody wants is paused at the publisher after this long.
const DYNACAST_GRACE: Duration = Duration::from_secs(2);
/// Members hear how the server sees their downlink (`downlink`) at most this often.
pub const DOWNLINK_EVERY: Duration = Duration::from_secs(2);

/// A pacer whose base is capped at what the allocation sends ([`Room::pacing_bps`]) is
/// based on at least this much (2.5 Mbit/s of pacing: a 30 kB keyframe leaves in 100 ms).
pub const PACED_AT_LEAST: u64 = 1_000_000;

/// What allocation reads of a track, the same for every subscriber: computed once per
/// pass rather than once per subscriber.
#[derive(Clone, Copy)]
struct TrackView {
    rates: [u64; crate::allocator::MAX_LAYERS],
    heights: [Option<u32>; crate::allocator::MAX_LAYERS],
    layers: usize,
}

/// Who is seen and heard first, the same for every subscriber (pins aside), and what
/// each track offers.
struct Ranking {
    /// By track key.
    tracks: Vec<Option<TrackView>>,
    /// Screen sharers, then by speaking recency, then join order.
    video: Vec<ParticipantKey>,
    /// Loudest first.
    audio: Vec<ParticipantKey>,
    dominant: Option<ParticipantKey>,
}

impl Room {
    /// What a member's pacer follows ([`crate::pacer`]): its estimate, but no more than
    /// half again what its allocation sends. A subscriber given everything it wants is
    /// never probed, so its estimate can stay the initial guess (3 Mbit/s) on a narrower
    /// path, and a keyframe paced at 2.5 times that left at several times what the path
    /// carries (`benches/network.sh keyframes`, 50 subscribers on 2.5 Mbit/s links with
    /// 40 ms of buffer: about 2,000 drops in 40 s, 386 to 501 since). Before the first
    /// allocation, the estimate alone; and never below [`PACED_AT_LEAST`]: a track that
    /// has just started is not in the allocation's rate yet (nothing measured it), and its
    /// first keyframe toward someone who was sent only audio would wait for the pacer's
    /// deadline.
    pub fn pacing_bps(&self, member: ParticipantKey) -> Option<u64> {
        let m = self.members.get(&member)?;
        let estimate = m.bwe.estimate_bps();
        Some(match m.given_bps {
            0 => estimate,
            given => estimate.min((given.saturating_mul(3) / 2).max(PACED_AT_LEAST)),
        })
    }

    /// A probe cluster to send toward a member now, at this rate, when its estimate asked
    /// for one ([`crate::probe`]); once.
    pub fn take_probe(&mut self, member: ParticipantKey) -> Option<u64> {
        self.members.get_mut(&member)?.bwe.take_probe()
    }

    fn ranking(&self, now: Instant) -> Ranking {
        let mut tracks = vec![None; self.tracks.capacity()];
        for (k, t) in self.tracks.iter() {
            if let Some(slot) = tracks.get_mut(k) {
                *slot = Some(TrackView {
                    rates: t.layer_rates(now),
                    heights: t.layer_heights(),
                    layers: t.layer_count(),
                });
            }
        }
        let sharing: FxHashSet<ParticipantKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.source == TrackSource::Screen)
            .map(|(_, t)| t.owner)
            .collect();
        let mut video: Vec<(usize, ParticipantKey)> = self
            .order
            .iter()
            .chain(&self.remote_order)
            .copied()
            .enumerate()
            .collect();
        video.sort_by_key(|(i, m)| {
            (
                !sharing.contains(m),
                std::cmp::Reverse(self.speakers.last_active(m)),
                *i,
            )
        });
        let video: Vec<ParticipantKey> = video.into_iter().map(|(_, m)| m).collect();
        // Ties in loudness (silence) keep the video order.
        let mut audio = video.clone();
        audio.sort_by(|a, b| {
            self.speakers
                .loudness(b)
                .total_cmp(&self.speakers.loudness(a))
        });
        Ranking {
            tracks,
            video,
            audio,
            dominant: self.speakers.speakers().first().copied(),
        }
    }

    /// Allocates one subscriber's layers now.
    pub(super) fn allocate(&mut self, subscriber: ParticipantKey, now: Instant) {
        let ranking = self.ranking(now);
        self.allocate_ranked(subscriber, &ranking, now);
    }

    /// Allocates every member's layers (speaking order or a track's state changed).
    pub(super) fn allocate_all(&mut self, now: Instant) {
        let ranking = self.ranking(now);
        for i in 0..self.order.len() {
            let k = self.order[i];
            self.allocate_ranked(k, &ranking, now);
        }
    }

    /// Decides which layer of each video track `subscriber` gets (and which tracks it gets
    /// at all: subscriptions, last-N, top-K audio), within its bandwidth.
    fn allocate_ranked(&mut self, subscriber: ParticipantKey, ranking: &Ranking, now: Instant) {
        let Some(m) = self.members.get_mut(&subscriber) else {
            return;
        };
        m.allocated_at = Some(now);
        let m = &self.members[&subscriber];
        let budget = m.bwe.estimate_bps();
        let last_n = self.config.last_n;
        let top_k = self.config.audio_top_k;
        // Who gets video: pinned, then the room's ranking; at most `last_n` (0 = all).
        let pinned = ranking
            .video
            .iter()
            .filter(|k| **k != subscriber && m.pins.contains(k));
        let rest = ranking
            .video
            .iter()
            .filter(|k| **k != subscriber && !m.pins.contains(k));
        let limit = if last_n == 0 { usize::MAX } else { last_n };
        let video_from: FxHashSet<ParticipantKey> =
            pinned.chain(rest).take(limit).copied().collect();
        let limit = if top_k == 0 { usize::MAX } else { top_k };
        let audio_from: FxHashSet<ParticipantKey> = ranking
            .audio
            .iter()
            .filter(|k| **k != subscriber)
            .take(limit)
            .copied()
            .collect();

        // Demands for video; audio is on or off.
        let mut video: Vec<(TrackKey, Demand)> = Vec::new();
        let mut audio: Vec<(TrackKey, bool)> = Vec::new();
        let mut audio_bps = 0u64;
        for (k, t) in self.tracks.iter() {
            let Some(d) = t.down_of(subscriber) else {
                continue;
            };
            if !d.ready {
                continue;
            }
            let Some(view) = ranking.tracks.get(k).copied().flatten() else {
                continue;
            };
            let pref = if m.prefs.is_empty() {
                Default::default()
            } else {
                m.prefs.get(&t.id).copied().unwrap_or_default()
            };
            match t.kind {
                MediaKind::Audio => {
                    let on = pref.subscribed && !t.admin_muted && audio_from.contains(&t.owner);
                    if on {
                        audio_bps += view.rates[0];
                    }
                    audio.push((TrackKey(k), on));
                }
                MediaKind::Video => {
                    let wanted = pref.subscribed
                        && !t.admin_muted
                        && (t.source == TrackSource::Screen || video_from.contains(&t.owner));
                    let max_layer = if wanted {
                        allocator::max_layer(pref.quality, pref.height, &view.heights, view.layers)
                    } else {
                        None
                    };
                    let priority = if t.source == TrackSource::Screen {
                        PRIORITY_SCREEN
                    } else if ranking.dominant == Some(t.owner) {
                        PRIORITY_SPEAKER
                    } else {
                        PRIORITY_NORMAL
                    };
                    video.push((
                        TrackKey(k),
                        Demand {
                            priority,
                            max_layer,
                            layers_bps: view.rates,
                            current: d.forwarder.is_active().then(|| d.forwarder.target_layer()),
                            single_layer: view.layers == 1,
                        },
                    ));
                }
            }
        }
        let demands: Vec<Demand> = video.iter().map(|(_, d)| *d).collect();
        let targets = allocator::allocate(budget.saturating_sub(audio_bps), &demands);
        // What it would get with no limit, if that is more than it gets: its estimate is
        // probed for it.
        let wanted = allocator::wanted_bps(&demands);
        let given = allocator::given_bps(&demands, &targets);
        let short = (given < wanted).then_some(audio_bps + wanted);
        if let Some(m) = self.members.get_mut(&subscriber) {
            m.bwe.set_wanted(short.unwrap_or(0));
            m.given_bps = audio_bps + given;
        }

        let mut keyframes = Vec::new();
        for ((track, demand), target) in video.iter().zip(targets) {
            let Some(t) = self.tracks.get_mut(track.0) else {
                continue;
            };
            if let Some(m) = demand.max_layer {
                for w in t.wanted_at.iter_mut().take(m as usize + 1) {
                    *w = Some(now);
                }
            }
            let Some(d) = t.down_of_mut(subscriber) else {
                continue;
            };
            match target {
                None => d.forwarder.set_active(false),
                Some(layer) => {
                    // A layer that is not received yet: start on the lowest one that is.
                    let layer = if demand.layers_bps[layer as usize] == 0 {
                        (0..=layer)
                            .find(|l| demand.layers_bps[*l as usize] > 0)
                            .unwrap_or(0)
                    } else {
                        layer
                    };
                    d.forwarder.set_active(true);
                    d.forwarder.set_target_layer(layer);
                    if let Some(l) = d.forwarder.needs_keyframe() {
                        keyframes.push((*track, l));
                    }
                }
            }
        }
        for (track, on) in audio {
            if let Some(d) = self
                .tracks
                .get_mut(track.0)
                .and_then(|t| t.down_of_mut(subscriber))
            {
                d.forwarder.set_active(on);
            }
        }
        for (track, layer) in keyframes {
            self.request_keyframe(track, layer, now);
        }
    }

    /// Periodic work: deadlines, keyframe re-requests until every waiting down-track has
    /// one, re-allocation, active speakers, and which layers publishers should send.
    pub fn tick(&mut self, now: Instant) {
        self.sync_deadline(now);
        self.enforce_deadlines(now);
        let waiting: Vec<(TrackKey, u8)> = self
            .tracks
            .iter()
            .flat_map(|(k, t)| {
                let mut layers: Vec<u8> = t.wanted_keyframes().collect();
                layers.sort_unstable();
                layers.dedup();
                layers.into_iter().map(move |l| (TrackKey(k), l))
            })
            .collect();
        for (t, l) in waiting {
            self.request_keyframe(t, l, now);
        }
        if let Some(speakers) = self.speakers.poll(now) {
            let ids = speakers.iter().filter_map(|k| self.id_of(*k)).collect();
            self.broadcast(None, ServerMessage::ActiveSpeakers { speakers: ids });
            // Speaking recency drives last-N and priorities: re-allocate the room.
            self.allocate_all(now);
        } else {
            let due: Vec<ParticipantKey> = self
                .order
                .iter()
                .copied()
                .filter(|k| {
                    self.members[k]
                        .allocated_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= ALLOCATE_EVERY)
                })
                .collect();
            if !due.is_empty() {
                let ranking = self.ranking(now);
                for k in due {
                    self.allocate_ranked(k, &ranking, now);
                }
            }
        }
        self.dynacast(now);
        self.relay_upstream(now, DYNACAST_GRACE);
        if self
            .downlink_at
            .is_none_or(|t| now.saturating_duration_since(t) >= DOWNLINK_EVERY)
        {
            self.downlink_at = Some(now);
            self.report_downlinks();
        }
    }

    /// Tells each member whose downlink changed how the server sees it (`downlink`): the
    /// estimate (when it moved by a tenth or more) and each video track's layer. Members
    /// that have not answered an offer yet hear nothing.
    fn report_downlinks(&mut self) {
        use confab_proto::signal::{DownlinkSignal, DownlinkTrack};
        let mut layers: FxHashMap<ParticipantKey, Vec<DownlinkTrack>> = FxHashMap::default();
        for (_, t) in self.tracks.iter() {
            if t.kind != MediaKind::Video {
                continue;
            }
            let count = t.layer_count().max(1) as u8;
            for d in &t.down {
                layers.entry(d.subscriber).or_default().push(DownlinkTrack {
                    track_id: t.id.clone(),
                    layer: d
                        .forwarder
                        .is_active()
                        .then(|| d.forwarder.current_layer())
                        .flatten(),
                    layers: count,
                });
            }
        }
        let mut notices = Vec::new();
        for k in &self.order {
            let Some(m) = self.members.get_mut(k) else {
                continue;
            };
            // Only once it answered an offer (so was told `joined`: a new copy of a
            // cascaded room holds that back) and while its session is there.
            if !m.negotiated || !m.attached {
                continue;
            }
            let mut tracks = layers.remove(k).unwrap_or_default();
            tracks.sort_by(|a, b| a.track_id.as_str().cmp(b.track_id.as_str()));
            let estimate = m.bwe.estimate_bps();
            let same = m
                .downlink_sent
                .as_ref()
                .is_some_and(|(e, t)| *t == tracks && estimate.abs_diff(*e) * 10 < (*e).max(1));
            if same {
                continue;
            }
            m.downlink_sent = Some((estimate, tracks.clone()));
            let signal = match m.bwe.signal() {
                crate::bwe::Signal::Initial => DownlinkSignal::Initial,
                crate::bwe::Signal::Loss => DownlinkSignal::Loss,
                crate::bwe::Signal::Delay => DownlinkSignal::Delay,
            };
            notices.push(Output::Signal {
                to: *k,
                msg: ServerMessage::Downlink {
                    estimate_bps: estimate,
                    signal,
                    tracks,
                },
            });
        }
        self.outputs.extend(notices);
    }

    /// Dynacast: tells each publisher of a simulcast track which of the layers it
    /// negotiated someone wants, so that it stops encoding the others.
    fn dynacast(&mut self, now: Instant) {
        // A recording takes the best layer: it stays on while the room is recorded.
        let recorded = !self.taps.is_empty();
        let mut notices = Vec::new();
        for (_, t) in self.tracks.iter_mut() {
            if t.kind != MediaKind::Video || !t.simulcast() {
                continue;
            }
            let Some(mid) = t.mid.clone() else { continue };
            if t.rids.iter().all(Option::is_none) {
                continue;
            }
            let active = t.dynacast_rids(now, DYNACAST_GRACE, recorded);
            if t.announced_rids.as_ref() != Some(&active) {
                t.announced_rids = Some(active.clone());
                notices.push(Output::Signal {
                    to: t.owner,
                    msg: ServerMessage::PublisherLayers {
                        mid,
                        active_rids: active,
                    },
                });
            }
        }
        self.outputs.extend(notices);
    }
}
