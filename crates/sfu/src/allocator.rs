//! Which layer of each video track a subscriber gets.
//!
//! Three inputs, in this order: what the subscriber wants (its subscription: quality and
//! rendered size; last-N and pins decide whether it gets the track at all), what the
//! publisher sends (the layers received recently and their bitrates), and the bandwidth
//! toward the subscriber. Tracks are served in priority order (screen share, then the
//! active speaker, then the others): everyone's lowest layer first, then upgrades one track
//! at a time while the budget lasts. An upgrade needs 20 % headroom over its cost, a
//! downgrade happens as soon as the budget is exceeded: layers do not flap around the
//! budget line. The result is a target per track; the forwarder switches at the target
//! layer's next keyframe.
//!
//! A track the publisher sends in one layer only (no simulcast) has nothing to fall back
//! to: pausing it for bandwidth blacks it out, and with a loss-based estimate nothing sent
//! means nothing learnt, so it stayed black (issue 17: a 3.2 Mbit/s stream reached no one
//! against the 3 Mbit/s initial guess). It is forwarded whenever wanted, after the budgeted
//! tracks took their share; what it sends is what lets the estimate grow (or shrink, and
//! the simulcast tracks step down).

use confab_proto::Quality;

/// Simulcast layers, lowest first.
pub const MAX_LAYERS: usize = 3;

/// What one video down-track asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Higher is served first.
    pub priority: u8,
    /// The highest layer wanted; `None` when the subscriber does not get this track.
    pub max_layer: Option<u8>,
    /// Recent bitrate of each layer of the publisher; 0 = not being received.
    pub layers_bps: [u64; MAX_LAYERS],
    /// The layer currently targeted, for hysteresis.
    pub current: Option<u8>,
    /// The publisher sends this track in one layer: it is never paused for bandwidth.
    pub single_layer: bool,
}

/// Priorities.
pub const PRIORITY_SCREEN: u8 = 3;
pub const PRIORITY_SPEAKER: u8 = 2;
pub const PRIORITY_NORMAL: u8 = 1;

/// Headroom an upgrade needs over its cost.
const UPGRADE_HEADROOM: f64 = 1.2;

/// Targets, in the order of `demands`; `None` = paused.
pub fn allocate(budget_bps: u64, demands: &[Demand]) -> Vec<Option<u8>> {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(demands[*i].priority));
    let mut out: Vec<Option<u8>> = vec![None; demands.len()];
    let mut left = budget_bps as f64;
    // Everyone's lowest available layer, in priority order.
    for &i in &order {
        let d = &demands[i];
        let Some(max) = d.max_layer else { continue };
        let Some(low) = (0..=max).find(|l| d.layers_bps[*l as usize] > 0) else {
            continue;
        };
        let cost = d.layers_bps[low as usize] as f64;
        if cost <= left {
            out[i] = Some(low);
            left -= cost;
        }
    }
    // Then upgrades, one track at a time, highest priority first.
    for &i in &order {
        let d = &demands[i];
        let (Some(mut at), Some(max)) = (out[i], d.max_layer) else {
            continue;
        };
        for next in (at + 1)..=max {
            let bps = d.layers_bps[next as usize];
            if bps == 0 {
                continue;
            }
            let delta = bps as f64 - d.layers_bps[at as usize] as f64;
            let needed = if d.current.is_some_and(|c| next <= c) {
                delta
            } else {
                delta * UPGRADE_HEADROOM
            };
            if needed <= left {
                left -= delta.max(0.0);
                at = next;
            } else {
                break;
            }
        }
        out[i] = Some(at);
    }
    // Single-layer tracks that did not fit: forwarded all the same, outside the budget.
    for (i, d) in demands.iter().enumerate() {
        if out[i].is_some() || !d.single_layer {
            continue;
        }
        let Some(max) = d.max_layer else { continue };
        out[i] = (0..=max).find(|l| d.layers_bps[*l as usize] > 0);
    }
    out
}

/// What `demands` would take with no limit: each wanted track's highest layer that is
/// received, up to the one it wants.
pub fn wanted_bps(demands: &[Demand]) -> u64 {
    demands
        .iter()
        .filter_map(|d| {
            let max = d.max_layer?;
            (0..=max as usize)
                .rev()
                .map(|l| d.layers_bps[l])
                .find(|&bps| bps > 0)
        })
        .sum()
}

/// What an allocation's `targets` (for `demands`) send.
pub fn given_bps(demands: &[Demand], targets: &[Option<u8>]) -> u64 {
    demands
        .iter()
        .zip(targets)
        .filter_map(|(d, t)| Some(d.layers_bps[usize::from((*t)?)]))
        .sum()
}

/// The highest layer a subscription wants, from its quality and rendered height.
/// `layer_heights` are the heights of the publisher's layers when known (from keyframes).
pub fn max_layer(
    quality: Quality,
    rendered_height: Option<u32>,
    layer_heights: &[Option<u32>; MAX_LAYERS],
    layers: usize,
) -> Option<u8> {
    let top = layers.clamp(1, MAX_LAYERS) as u8 - 1;
    let by_quality = match quality {
        Quality::Off => return None,
        Quality::Low => 0,
        Quality::Medium => 1.min(top),
        Quality::High => top,
    };
    let Some(h) = rendered_height else {
        return Some(by_quality);
    };
    // The smallest layer at least as tall as the tile (no upscaling), when heights are
    // known; otherwise the usual q/h/f ladder of 180p/360p/720p.
    let by_size = (0..=top)
        .find(|l| {
            let height = layer_heights[*l as usize].unwrap_or(180 << *l);
            height >= h
        })
        .unwrap_or(top);
    Some(by_quality.min(by_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIM: [u64; 3] = [150_000, 500_000, 1_500_000];

    fn d(priority: u8, max: Option<u8>, current: Option<u8>) -> Demand {
        Demand {
            priority,
            max_layer: max,
            layers_bps: SIM,
            current,
            single_layer: false,
        }
    }

    #[test]
    fn table() {
        let cases: Vec<(u64, Vec<Demand>, Vec<Option<u8>>)> = vec![
            // plenty: everyone gets what they want
            (
                10_000_000,
                vec![d(1, Some(2), None), d(1, Some(1), None)],
                vec![Some(2), Some(1)],
            ),
            // unsubscribed stays off
            (10_000_000, vec![d(1, None, None)], vec![None]),
            // tight: lows for all, then the high-priority track upgrades first
            (
                1_000_000,
                vec![d(1, Some(2), None), d(3, Some(2), None)],
                vec![Some(0), Some(1)],
            ),
            // not even the lowest layers fit: the lower priority is paused
            (
                200_000,
                vec![d(1, Some(2), None), d(2, Some(2), None)],
                vec![None, Some(0)],
            ),
            // a layer not received is skipped
            (
                10_000_000,
                vec![Demand {
                    layers_bps: [150_000, 0, 1_500_000],
                    ..d(1, Some(2), None)
                }],
                vec![Some(2)],
            ),
            // single-layer (non-simulcast) track
            (
                10_000_000,
                vec![Demand {
                    layers_bps: [800_000, 0, 0],
                    ..d(1, Some(2), None)
                }],
                vec![Some(0)],
            ),
            // nothing received at all
            (
                10_000_000,
                vec![Demand {
                    layers_bps: [0; 3],
                    ..d(1, Some(2), None)
                }],
                vec![None],
            ),
        ];
        for (i, (budget, demands, want)) in cases.iter().enumerate() {
            assert_eq!(allocate(*budget, demands), *want, "case {i}");
        }
    }

    #[test]
    fn a_single_layer_track_is_never_paused_for_bandwidth() {
        let single = |bps: u64, priority: u8| Demand {
            layers_bps: [bps, 0, 0],
            single_layer: true,
            ..d(priority, Some(0), None)
        };
        // 6 Mbit/s against a 3 Mbit/s budget: forwarded (the measured blackout was 3.2).
        assert_eq!(allocate(3_000_000, &[single(6_000_000, 1)]), vec![Some(0)]);
        assert_eq!(allocate(0, &[single(3_200_000, 3)]), vec![Some(0)]);
        // It does not take the budget from simulcast tracks: they get their share first.
        assert_eq!(
            allocate(2_000_000, &[single(6_000_000, 3), d(1, Some(2), None)]),
            vec![Some(0), Some(2)]
        );
        // Unwanted (off, last-N) or not received: nothing to forward.
        let off = Demand {
            max_layer: None,
            ..single(6_000_000, 1)
        };
        assert_eq!(allocate(10_000_000, &[off]), vec![None]);
        assert_eq!(allocate(10_000_000, &[single(0, 1)]), vec![None]);
        // A simulcast track's lowest layer is still paused when even it does not fit.
        assert_eq!(allocate(100_000, &[d(1, Some(2), None)]), vec![None]);
    }

    #[test]
    fn hysteresis_keeps_the_current_layer_at_the_line() {
        // Upgrading 0 -> 1 costs 350 kbps more; with 1.2x headroom it needs 420 kbps.
        let budget = 150_000 + 400_000;
        assert_eq!(allocate(budget, &[d(1, Some(2), None)]), vec![Some(0)]);
        // Already on layer 1, the same budget keeps it (no flapping back and forth).
        assert_eq!(allocate(budget, &[d(1, Some(2), Some(1))]), vec![Some(1)]);
        // Below the layer's actual cost it goes down.
        assert_eq!(allocate(400_000, &[d(1, Some(2), Some(1))]), vec![Some(0)]);
    }

    /// What is wanted with no limit: the top layer wanted and received, per track.
    #[test]
    fn wanted_is_each_tracks_best_layer_within_what_it_wants() {
        let mut gap = d(1, Some(2), None);
        gap.layers_bps = [150_000, 500_000, 0];
        let demands = [
            d(1, Some(2), None),
            d(1, Some(1), None),
            d(1, None, None),
            gap,
        ];
        assert_eq!(wanted_bps(&demands), 1_500_000 + 500_000 + 500_000);
        assert_eq!(wanted_bps(&[]), 0);
        let targets = allocate(1_000_000, &demands);
        assert_eq!(targets, [Some(1), Some(0), None, Some(0)]);
        assert_eq!(given_bps(&demands, &targets), 500_000 + 150_000 + 150_000);
    }

    #[test]
    fn layer_for_quality_and_size() {
        let unknown = [None; 3];
        let known = [Some(180), Some(360), Some(720)];
        let cases = [
            (Quality::High, None, unknown, 3, Some(2)),
            (Quality::Medium, None, unknown, 3, Some(1)),
            (Quality::Low, None, unknown, 3, Some(0)),
            (Quality::Off, Some(1000), unknown, 3, None),
            (Quality::High, Some(120), known, 3, Some(0)),
            (Quality::High, Some(200), known, 3, Some(1)),
            (Quality::High, Some(360), known, 3, Some(1)),
            (Quality::High, Some(1080), known, 3, Some(2)),
            (Quality::Low, Some(1080), known, 3, Some(0)),
            // heights unknown: the 180/360/720 ladder
            (Quality::High, Some(300), unknown, 3, Some(1)),
            // a single-layer track
            (Quality::High, Some(100), unknown, 1, Some(0)),
            (Quality::Medium, None, unknown, 1, Some(0)),
        ];
        for (i, (q, h, heights, n, want)) in cases.iter().enumerate() {
            assert_eq!(max_layer(*q, *h, heights, *n), *want, "case {i}");
        }
    }
}
