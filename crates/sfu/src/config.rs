//! Media-plane settings. The server fills this from its configuration file; the defaults
//! run a working server on loopback.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuConfig {
    /// Address the media sockets bind. Explicit: a wildcard bind never yields a loopback
    /// candidate.
    pub bind_ip: IpAddr,
    /// UDP port of the first worker; worker `i` uses `port + i`. 0 picks free ports.
    pub port: u16,
    /// Address announced to clients in ICE candidates (a public or NAT 1:1 address).
    /// Defaults to `bind_ip`.
    pub announce_ip: Option<IpAddr>,
    /// Media worker threads (one socket each). 0 means one per CPU core.
    pub workers: usize,
    pub max_participants_per_room: usize,
    /// Rooms open at once on this server (0 = no limit).
    pub max_rooms: usize,
    /// Tracks one participant may send at once (camera, microphone, screen, ...).
    pub max_tracks_per_participant: usize,
    /// Chat messages one participant may send per second (twice as many in a burst).
    pub chat_per_second: u32,
    /// Chat messages kept per room and replayed to late joiners.
    pub chat_history: usize,
    pub chat_max_bytes: usize,
    /// Largest signaling message accepted, echoed to clients in `joined`.
    pub max_message_bytes: usize,
    /// Minimum interval between keyframe requests to one publisher track.
    pub keyframe_interval_ms: u64,
    /// Signaling messages queued toward one client before it is dropped as too slow.
    pub event_queue: usize,
    pub ice_disconnected_timeout_ms: u64,
    pub ice_failed_timeout_ms: u64,
    /// How often one lost packet is re-requested from a publisher.
    pub max_nacks_per_packet: u16,
    /// Kernel buffer of each media socket, each way (0 keeps the system default).
    pub socket_buffer_bytes: usize,
    /// UDP segmentation offload (`UDP_SEGMENT`) for media sends: each run of equal-size
    /// datagrams to one destination goes to the kernel as one buffer. Used only where the
    /// socket accepts it, and turned off at the first send the kernel refuses. Off by
    /// default: on loopback it overflowed a busy receiver's socket buffer (docs/benchmarks.md).
    pub gso: bool,
    /// ICE-TCP: each worker also listens on TCP, on its UDP port's number, and offers a
    /// passive TCP host candidate next to the UDP one (UDP preferred), for clients whose
    /// network blocks UDP (RFC 6544, RFC 4571 framing).
    pub tcp: bool,
    /// Last-N: each subscriber gets video from at most this many participants, chosen by
    /// pins, screen sharing and speaking recency (0 = everyone).
    pub last_n: usize,
    /// A room whose copies all have this many participants gets a copy on another worker
    /// for its next ones (its tracks are relayed between copies); 0 keeps every room on
    /// one worker. Default 200.
    pub participants_per_worker: usize,
    /// Each subscriber gets audio from only the K loudest participants (0 = everyone).
    pub audio_top_k: usize,
    /// A joined participant must answer its first subscriber offer within this time
    /// (complete its first negotiation), or it is removed (`timeout`).
    pub negotiation_timeout_ms: u64,
    /// Media-thread time one participant's offers may take, per second (their parsing and
    /// answering is measured), up to `signaling_budget_burst_ms` at once. A publish over
    /// budget is refused (`rate_limited`); after `signaling_budget_strikes` refusals the
    /// participant is removed.
    pub signaling_budget_ms_per_s: u64,
    pub signaling_budget_burst_ms: u64,
    pub signaling_budget_strikes: u32,
    /// A newcomer whose name a visible participant of the room already has (compared
    /// without case, after cleaning) is named "Ada (2)", "Ada (3)", ...
    pub unique_names: bool,
    /// How long an identity (its access token's `sub`) removed by the admin API may not
    /// join that room again (0 = no ban: removing only removes).
    pub kick_ban_ms: u64,
    pub recording: RecordingConfig,
}

/// Server-side recording and media hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Where recordings go: `<dir>/<room>/<UTC time>/`.
    pub dir: std::path::PathBuf,
    /// Rooms recorded as soon as they start: `*` for all, `prefix*`, or an exact name.
    /// Empty: only on request (admin API).
    pub auto: String,
    /// Also send every recorded track as plain RTP to this `host:port` (ports port,
    /// port + 2, ... per track), with an SDP file per track in the recording directory.
    pub rtp_forward: Option<std::net::SocketAddr>,
    /// Also run this command (through `sh -c`) per track, fed by RTP; see docs/operations.md.
    pub command: Option<String>,
    /// Packets queued toward a recording before it drops (never slowing media).
    pub queue: usize,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            dir: "recordings".into(),
            auto: String::new(),
            rtp_forward: None,
            command: None,
            queue: 8192,
        }
    }
}

impl RecordingConfig {
    /// Whether `room` is recorded automatically.
    pub fn auto_records(&self, room: &str) -> bool {
        let p = self.auto.trim();
        if p.is_empty() {
            false
        } else if let Some(prefix) = p.strip_suffix('*') {
            room.starts_with(prefix)
        } else {
            room == p
        }
    }
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            port: 50000,
            announce_ip: None,
            workers: 0,
            max_participants_per_room: 100,
            max_rooms: 0,
            max_tracks_per_participant: 4,
            chat_per_second: 5,
            chat_history: 100,
            chat_max_bytes: 4096,
            max_message_bytes: 64 * 1024,
            keyframe_interval_ms: 200,
            event_queue: 256,
            ice_disconnected_timeout_ms: 4_000,
            ice_failed_timeout_ms: 5_000,
            max_nacks_per_packet: 3,
            socket_buffer_bytes: 4 * 1024 * 1024,
            gso: false,
            tcp: true,
            last_n: 0,
            participants_per_worker: 200,
            audio_top_k: 0,
            negotiation_timeout_ms: 20_000,
            signaling_budget_ms_per_s: 25,
            signaling_budget_burst_ms: 250,
            signaling_budget_strikes: 20,
            unique_names: true,
            kick_ban_ms: 600_000,
            recording: RecordingConfig::default(),
        }
    }
}

impl SfuConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.bind_ip.is_unspecified() {
            return Err(format!(
                "media.bind_ip {} is a wildcard: bind an explicit address (see docs/operations.md)",
                self.bind_ip
            ));
        }
        if let Some(ip) = self.announce_ip
            && ip.is_unspecified()
        {
            return Err("media.announce_ip must be a reachable address".into());
        }
        if self.max_participants_per_room == 0 {
            return Err("room.max_participants must be at least 1".into());
        }
        if self.max_tracks_per_participant == 0 {
            return Err("room.max_tracks_per_participant must be at least 1".into());
        }
        if self.chat_per_second == 0 {
            return Err("room.chat_per_second must be at least 1".into());
        }
        if self.event_queue < 16 {
            return Err("event_queue must be at least 16".into());
        }
        Ok(())
    }

    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
