//! Prometheus metrics at `/metrics`: the media plane's counters and gauges, loop timing,
//! signaling sessions and webhook delivery, read at scrape time (nothing on the media
//! path but the atomics the workers already keep).

use crate::router::AppState;
use crate::webhooks::WebhookStats;
use confab_sfu::Sfu;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug)]
struct ConfabCollector {
    sfu: Sfu,
    sessions: Arc<AtomicI64>,
    webhooks: Arc<WebhookStats>,
    cluster: Option<confab_cluster::Cluster>,
    guards: Arc<crate::guard::Guards>,
    turn: Arc<crate::turn::TurnStats>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for ConfabCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.sfu.stats();
        let l = self.sfu.loop_stats();
        let c = |v: i64| v.max(0) as u64;
        gauge(&mut e, "confab_rooms", "Rooms open", s.rooms)?;
        gauge(
            &mut e,
            "confab_participants",
            "Participants joined",
            s.participants,
        )?;
        gauge(
            &mut e,
            "confab_peer_connections",
            "WebRTC peer connections",
            s.peer_connections,
        )?;
        gauge(
            &mut e,
            "confab_tracks",
            "Published tracks",
            s.published_tracks,
        )?;
        gauge(
            &mut e,
            "confab_down_tracks",
            "Subscribed copies of tracks",
            s.down_tracks,
        )?;
        gauge(
            &mut e,
            "confab_sessions",
            "Signaling WebSocket sessions",
            self.sessions.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "confab_recordings",
            "Recordings in progress",
            s.recordings,
        )?;
        counter(
            &mut e,
            "confab_datagrams_in",
            "UDP datagrams received",
            c(s.datagrams_in),
        )?;
        counter(
            &mut e,
            "confab_datagrams_out",
            "UDP datagrams sent",
            c(s.datagrams_out),
        )?;
        counter(
            &mut e,
            "confab_bytes_in",
            "UDP bytes received",
            c(s.bytes_in),
        )?;
        counter(&mut e, "confab_bytes_out", "UDP bytes sent", c(s.bytes_out))?;
        counter(
            &mut e,
            "confab_datagrams_unroutable",
            "Datagrams from unknown addresses, dropped",
            c(s.datagrams_unroutable),
        )?;
        gauge(
            &mut e,
            "confab_tcp_connections",
            "ICE-TCP connections open",
            s.tcp_connections,
        )?;
        counter(
            &mut e,
            "confab_tcp_refused",
            "ICE-TCP connections refused or closed early (over the cap, or no frame within 5 s)",
            c(s.tcp_refused),
        )?;
        counter(
            &mut e,
            "confab_ice_restarts",
            "ICE restarts (a connection given new ICE credentials: the client's network changed)",
            c(s.ice_restarts),
        )?;
        counter(
            &mut e,
            "confab_send_drops",
            "Datagrams the kernel refused (socket buffer full)",
            c(s.send_drops),
        )?;
        counter(
            &mut e,
            "confab_rtp_packets_in",
            "RTP packets received from publishers",
            c(s.rtp_in),
        )?;
        counter(
            &mut e,
            "confab_rtp_packets_out",
            "RTP packets forwarded to subscribers",
            c(s.rtp_out),
        )?;
        counter(
            &mut e,
            "confab_rtp_duplicates",
            "Duplicate RTP packets dropped",
            c(s.rtp_duplicates),
        )?;
        counter(
            &mut e,
            "confab_red_restored",
            "Audio packets a publisher's uplink lost, restored from its RED",
            c(s.red_restored),
        )?;
        counter(
            &mut e,
            "confab_red_malformed",
            "RED packets from publishers dropped as malformed",
            c(s.red_malformed),
        )?;
        counter(
            &mut e,
            "confab_relayed_packets",
            "RTP packets relayed to another worker's copy of a room",
            c(s.relayed_packets),
        )?;
        counter(
            &mut e,
            "confab_relay_dropped",
            "Relay messages dropped (the other worker's link was full)",
            c(s.relay_dropped),
        )?;
        counter(
            &mut e,
            "confab_rtp_dropped",
            "RTP packets a down-track did not forward",
            c(s.rtp_dropped),
        )?;
        counter(
            &mut e,
            "confab_keyframe_requests_in",
            "Keyframe requests (PLI/FIR) from subscribers",
            c(s.keyframe_requests_in),
        )?;
        counter(
            &mut e,
            "confab_keyframe_requests_out",
            "Keyframe requests sent to publishers",
            c(s.keyframe_requests_out),
        )?;
        counter(
            &mut e,
            "confab_nacks_in",
            "NACKs from subscribers (answered from the retransmission buffer)",
            c(s.nacks_in),
        )?;
        counter(
            &mut e,
            "confab_twcc_feedback_in",
            "Transport-wide congestion control feedback packets from subscribers",
            c(s.twcc_feedback_in),
        )?;
        counter(
            &mut e,
            "confab_bwe_overuse",
            "Back-offs of a subscriber's estimate because the queue toward it grew (delay signal)",
            c(s.bwe_overuse),
        )?;
        counter(
            &mut e,
            "confab_bwe_probes",
            "Probe clusters sent toward subscribers before a layer upgrade (RTX copies of packets already sent)",
            c(s.bwe_probes),
        )?;
        counter(
            &mut e,
            "confab_bwe_probes_measured",
            "Probe clusters whose feedback measured what the path to the subscriber carried of them",
            c(s.bwe_probes_measured),
        )?;
        counter(
            &mut e,
            "confab_segmented_sends",
            "UDP GSO sends (several datagrams to one destination in one buffer)",
            c(s.segmented_sends),
        )?;
        counter(
            &mut e,
            "confab_retransmissions",
            "Packets sent again to subscribers for their NACKs",
            c(s.retransmissions),
        )?;
        counter(
            &mut e,
            "confab_chat_messages",
            "Chat messages relayed",
            c(s.chat_messages),
        )?;
        counter(
            &mut e,
            "confab_chat_dropped",
            "Chat messages dropped toward slow receivers",
            c(s.chat_dropped),
        )?;
        counter(
            &mut e,
            "confab_signal_events_dropped",
            "Signaling messages dropped (slow clients)",
            c(s.events_dropped),
        )?;
        counter(
            &mut e,
            "confab_room_events_dropped",
            "Room events dropped (webhook queue full)",
            c(s.room_events_dropped),
        )?;
        counter(
            &mut e,
            "confab_recording_dropped",
            "Packets a recording never got (queue full)",
            c(s.recording_dropped),
        )?;
        let t = &self.turn;
        gauge(
            &mut e,
            "confab_turn_allocations",
            "Allocations open on the embedded TURN server",
            t.allocations.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_turn_auth_refused",
            "Embedded TURN requests refused for an expired or malformed username",
            t.auth_refused.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_turn_allocations_refused",
            "Embedded TURN allocations refused over turn.max_allocations",
            t.allocations_refused.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_turn_forbidden_peers",
            "Datagrams the embedded TURN server would not relay (a peer that is not this node's media)",
            t.forbidden_peers.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_turn_tcp_refused",
            "Embedded TURN TCP/TLS connections closed for bad framing, a failed handshake or silence",
            t.tcp_refused.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_webhooks_delivered",
            "Webhook deliveries",
            self.webhooks.delivered.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_webhooks_retries",
            "Webhook delivery retries",
            self.webhooks.retries.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_webhooks_failed",
            "Webhook deliveries given up",
            self.webhooks.failed.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_webhooks_dropped",
            "Webhook deliveries dropped (that URL's queue full: its endpoint slow or down)",
            self.webhooks.dropped.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "confab_recording_bytes",
            "RTP payload bytes handed to recordings and hooks",
            c(s.recording_bytes),
        )?;
        gauge(
            &mut e,
            "confab_rtt_p50_microseconds",
            "Round-trip time to subscribers (RTCP receiver reports), median since start",
            l.rtt.p50_us as i64,
        )?;
        gauge(
            &mut e,
            "confab_rtt_p99_microseconds",
            "Round-trip time to subscribers (RTCP receiver reports), p99 since start",
            l.rtt.p99_us as i64,
        )?;
        gauge(
            &mut e,
            "confab_relay_hop_p99_microseconds",
            "A relayed packet's arrival at its home worker to its handling by the room's copy on another worker, p99 since start",
            l.relay_hop.p99_us as i64,
        )?;
        gauge(
            &mut e,
            "confab_forward_latency_p99_microseconds",
            "Server-added latency p99 since start",
            l.forward_latency.p99_us as i64,
        )?;
        gauge(
            &mut e,
            "confab_loop_pass_p99_microseconds",
            "Media loop pass duration p99 since start",
            l.pass_time.p99_us as i64,
        )?;
        gauge(
            &mut e,
            "confab_timer_lag_p99_microseconds",
            "Media loop timer lag p99 since start",
            l.timer_lag.p99_us as i64,
        )?;
        gauge(
            &mut e,
            "confab_connections",
            "TCP connections open (WebSockets included)",
            self.guards.connections() as i64,
        )?;
        gauge(
            &mut e,
            "confab_pending_connections",
            "WebSockets that have not joined yet",
            self.guards.pending() as i64,
        )?;
        for (name, help, v) in self.guards.counters() {
            counter(&mut e, name, help, v)?;
        }
        counter(
            &mut e,
            "confab_signaling_over_budget",
            "Offers refused (or participants removed) for exceeding their media-thread signaling budget",
            c(s.signaling_over_budget),
        )?;
        counter(
            &mut e,
            "confab_negotiation_timeouts",
            "Participants removed for not completing their first negotiation in time",
            c(s.negotiation_timeouts),
        )?;
        if let Some(cl) = &self.cluster {
            gauge(
                &mut e,
                "confab_cluster_redis_up",
                "Whether the cluster's Redis answered the last call (1) or not (0)",
                i64::from(cl.is_up()),
            )?;
            gauge(
                &mut e,
                "confab_cluster_nodes",
                "Live nodes in the registry at the last heartbeat",
                cl.nodes_seen() as i64,
            )?;
            counter(
                &mut e,
                "confab_cluster_redirects",
                "Joins sent to the node that hosts their room",
                cl.redirects(),
            )?;
            counter(
                &mut e,
                "confab_cluster_refusals",
                "Joins refused because no placement could be made (cluster_unavailable)",
                cl.refusals(),
            )?;
            if let Some(cc) = cl.cascade() {
                let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let k = cc.counters();
                counter(
                    &mut e,
                    "confab_cascade_facts_written",
                    "Room facts written to the rooms' Redis streams",
                    n(&k.facts_written),
                )?;
                counter(
                    &mut e,
                    "confab_cascade_facts_read",
                    "Room facts read from other nodes",
                    n(&k.facts_read),
                )?;
                counter(
                    &mut e,
                    "confab_cascade_facts_dropped",
                    "Room facts dropped: the queue for an unreachable Redis was full",
                    n(&k.facts_dropped),
                )?;
                counter(
                    &mut e,
                    "confab_cascade_refused",
                    "Relay datagrams refused (not authentic, malformed)",
                    n(&k.refused),
                )?;
                counter(
                    &mut e,
                    "confab_cascade_nodes_lost",
                    "Nodes declared gone because their relay link fell silent",
                    n(&k.nodes_lost),
                )?;
                let links = cc.links();
                let sum = |f: fn(&confab_cluster::cascade::LinkStats) -> u64| {
                    links.iter().map(f).sum::<u64>()
                };
                counter(
                    &mut e,
                    "confab_cascade_relay_packets_sent",
                    "Media datagrams sent to other nodes",
                    sum(|l| l.packets_sent),
                )?;
                counter(
                    &mut e,
                    "confab_cascade_relay_missing",
                    "Media datagrams from other nodes found missing (then asked again)",
                    sum(|l| l.missing),
                )?;
                counter(
                    &mut e,
                    "confab_cascade_relay_retransmitted",
                    "Media datagrams sent again to other nodes on their NACKs",
                    sum(|l| l.retransmitted),
                )?;
                gauge(
                    &mut e,
                    "confab_cascade_links_alive",
                    "Relay links to other nodes that answer",
                    links.iter().filter(|l| l.alive && l.rooms > 0).count() as i64,
                )?;
            }
        }
        Ok(())
    }
}

/// The text exposition of every metric.
pub fn render(state: &AppState) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ConfabCollector {
        sfu: state.sfu.clone(),
        sessions: state.sessions.clone(),
        webhooks: state.webhooks.clone(),
        cluster: state.cluster.clone(),
        guards: state.guards.clone(),
        turn: state.turn.clone(),
    }));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
