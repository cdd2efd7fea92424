//! Plain-RTP forwarding of a room's tracks, for tools that record or transcode RTP
//! (ffmpeg, GStreamer), and the external-command hook built on it.

use crate::rtp::Codec;
use crate::sink::{TrackMeta, TrackSink};
use confab_proto::TrackId;
use rtc::shared::marshal::Marshal;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

/// The SDP a receiver needs to read one forwarded track.
pub fn sdp_for(meta: &TrackMeta, to: SocketAddr) -> String {
    let (media, encoding) = match meta.codec {
        Codec::Opus => ("audio", format!("opus/48000/{}", meta.channels.max(2))),
        Codec::Vp8 => ("video", "VP8/90000".to_string()),
        Codec::Vp9 => ("video", "VP9/90000".to_string()),
        Codec::H264 => ("video", "H264/90000".to_string()),
        Codec::Other => (
            "video",
            format!(
                "{}/{}",
                meta.mime.rsplit('/').next().unwrap_or("x"),
                meta.clock_rate
            ),
        ),
    };
    let family = if to.is_ipv6() { "IP6" } else { "IP4" };
    let mut sdp = format!(
        "v=0\r\no=- 0 0 IN {family} {ip}\r\ns=confab {room} {track}\r\nc=IN {family} {ip}\r\nt=0 0\r\nm={media} {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {encoding}\r\n",
        ip = to.ip(),
        room = meta.room,
        track = meta.track,
        port = to.port(),
        pt = meta.payload_type,
    );
    if meta.codec == Codec::H264 {
        sdp.push_str(&format!(
            "a=fmtp:{} packetization-mode=1\r\n",
            meta.payload_type
        ));
    }
    sdp
}

struct Forwarded {
    to: SocketAddr,
    /// The one layer forwarded (a receiver cannot follow an SSRC change).
    layer: Option<u8>,
    video: bool,
    packets: u64,
    /// The SSRC of the forwarded layer, for the closing RTCP BYE.
    ssrc: Option<u32>,
}

/// A compound RTCP packet, an empty receiver report then a BYE for `ssrc` (RFC 3550
/// 6.1, 6.6): tells a receiver the stream has ended, which ffmpeg's SDP/RTP demuxer takes
/// as end of input (it then finishes its file; it ignores RTCP shorter than 12 bytes).
fn rtcp_bye(ssrc: u32) -> [u8; 16] {
    let s = ssrc.to_be_bytes();
    [
        0x80, 201, 0, 1, s[0], s[1], s[2], s[3], // RR, no report blocks
        0x81, 203, 0, 1, s[0], s[1], s[2], s[3], // BYE, one source
    ]
}

/// Sends each track as plain RTP to `host`, on ports `base_port`, `base_port + 2`, ...
/// (RTCP is on the odd ports: an RTCP BYE is sent there, and on the RTP port for
/// receivers that mux, when a track ends). Writes `<participant>-<track>.sdp` into
/// `dir` for each.
pub struct RtpForwarder {
    socket: UdpSocket,
    host: IpAddr,
    next_port: u16,
    dir: PathBuf,
    tracks: HashMap<TrackId, Forwarded>,
    /// Explicit destinations, set by [`CommandHook`].
    fixed: HashMap<TrackId, SocketAddr>,
}

impl RtpForwarder {
    pub fn new(host: IpAddr, base_port: u16, dir: &Path) -> std::io::Result<RtpForwarder> {
        std::fs::create_dir_all(dir)?;
        let bind: SocketAddr = if host.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        Ok(RtpForwarder {
            socket: UdpSocket::bind(bind)?,
            host,
            next_port: base_port,
            dir: dir.to_path_buf(),
            tracks: HashMap::new(),
            fixed: HashMap::new(),
        })
    }

    /// The SDP file written for a track (an error for ids that are no file name).
    pub fn sdp_path(&self, meta: &TrackMeta) -> std::io::Result<PathBuf> {
        super::path::join(
            &self.dir,
            &format!("{}-{}.sdp", meta.participant, meta.track),
        )
    }

    fn bye(&self, f: &Forwarded) {
        let Some(ssrc) = f.ssrc else { return };
        let bye = rtcp_bye(ssrc);
        let rtcp = SocketAddr::new(f.to.ip(), f.to.port().wrapping_add(1));
        let _ = self.socket.send_to(&bye, rtcp);
        let _ = self.socket.send_to(&bye, f.to);
    }

    fn start(&mut self, meta: &TrackMeta, to: SocketAddr) {
        match self.sdp_path(meta) {
            Ok(path) => {
                if let Err(e) = std::fs::write(&path, sdp_for(meta, to)) {
                    tracing::warn!(error = %e, path = %path.display(), "rtp forwarder: cannot write the SDP");
                }
            }
            Err(e) => tracing::warn!(error = %e, "rtp forwarder: no SDP file for this track"),
        }
        tracing::info!(track = %meta.track, %to, "forwarding track as RTP");
        self.tracks.insert(
            meta.track.clone(),
            Forwarded {
                to,
                layer: None,
                video: meta.codec.is_video(),
                packets: 0,
                ssrc: None,
            },
        );
    }
}

impl TrackSink for RtpForwarder {
    fn track_started(&mut self, meta: &TrackMeta) {
        let to = match self.fixed.get(&meta.track) {
            Some(a) => *a,
            None => {
                let to = SocketAddr::new(self.host, self.next_port);
                self.next_port = self.next_port.wrapping_add(2);
                to
            }
        };
        self.start(meta, to);
    }

    fn rtp(
        &mut self,
        track: &TrackId,
        layer: u8,
        keyframe: bool,
        packet: &rtc::rtp::Packet,
        _at: SystemTime,
    ) {
        let Some(f) = self.tracks.get_mut(track) else {
            return;
        };
        match f.layer {
            Some(l) if l != layer => return,
            Some(_) => {}
            None => {
                if f.video && !keyframe {
                    return;
                }
                f.layer = Some(layer);
            }
        }
        if let Ok(bytes) = packet.marshal() {
            let _ = self.socket.send_to(&bytes, f.to);
            f.packets += 1;
            f.ssrc = Some(packet.header.ssrc);
        }
    }

    fn track_ended(&mut self, track: &TrackId) {
        if let Some(f) = self.tracks.remove(track) {
            self.bye(&f);
        }
    }

    fn finish(&mut self, _dropped: u64) {
        for (_, f) in std::mem::take(&mut self.tracks) {
            self.bye(&f);
        }
    }
}

/// Runs `command` (through `sh -c`) for each track, fed by an RTP forwarder on a free
/// local port, with the track described in environment variables:
/// `CONFAB_ROOM`, `CONFAB_PARTICIPANT`, `CONFAB_PARTICIPANT_NAME`, `CONFAB_TRACK`,
/// `CONFAB_KIND`, `CONFAB_SOURCE`, `CONFAB_CODEC`, `CONFAB_RTP_PORT`, `CONFAB_SDP` (the
/// SDP file to read) and `CONFAB_DIR`. When the track ends the process gets an RTCP BYE
/// (ffmpeg ends its input on it), a SIGINT 1 s later if still running, and SIGKILL 4 s
/// after that.
///
/// Those seconds are waited on the hook's reaper thread, never on the recording's: the
/// other tracks go on being recorded and forwarded while a command winds down. The
/// session's end ([`TrackSink::finish`]) waits for every command to be gone, all at once.
pub struct CommandHook {
    command: String,
    dir: PathBuf,
    forwarder: RtpForwarder,
    children: HashMap<TrackId, (Child, Instant)>,
    grace: Grace,
    /// Commands being stopped go here; the thread starts with the first one.
    reaper: Option<Reaper>,
}

/// The reaper thread's queue, and the thread.
type Reaper = (
    std::sync::mpsc::Sender<(TrackId, Child)>,
    std::thread::JoinHandle<()>,
);

/// How long a stopping command has: SIGINT after `interrupt`, SIGKILL `kill` later.
#[derive(Debug, Clone, Copy)]
struct Grace {
    interrupt: Duration,
    kill: Duration,
}

impl Default for Grace {
    fn default() -> Self {
        Grace {
            interrupt: Duration::from_secs(1),
            kill: Duration::from_secs(4),
        }
    }
}

/// A command being stopped.
struct Stopping {
    track: TrackId,
    child: Child,
    interrupt_at: Instant,
    kill_at: Instant,
    interrupted: bool,
}

impl Stopping {
    /// One look at the command; true once it is gone (reaped).
    fn step(&mut self, now: Instant) -> bool {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(track = %self.track, %status, "hook command finished");
                true
            }
            Ok(None) if now < self.kill_at => {
                // The forwarder has sent an RTCP BYE, on which ffmpeg finishes by itself;
                // other tools get one SIGINT (a second would make ffmpeg abandon its file).
                if !self.interrupted && now >= self.interrupt_at {
                    let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                    self.interrupted = true;
                }
                false
            }
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                tracing::warn!(track = %self.track, "hook command killed");
                true
            }
        }
    }
}

/// The reaper: takes commands to stop from `rx` and watches all of them at once until
/// each is gone; ends when `rx` is closed and nothing is left.
fn reap(rx: std::sync::mpsc::Receiver<(TrackId, Child)>, grace: Grace) {
    use std::sync::mpsc::RecvTimeoutError;
    const POLL: Duration = Duration::from_millis(20);
    let mut live: Vec<Stopping> = Vec::new();
    let mut open = true;
    while open || !live.is_empty() {
        let next = if !open {
            std::thread::sleep(POLL);
            Err(RecvTimeoutError::Timeout)
        } else if live.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(POLL)
        };
        match next {
            Ok((track, child)) => {
                let now = Instant::now();
                live.push(Stopping {
                    track,
                    child,
                    interrupt_at: now + grace.interrupt,
                    kill_at: now + grace.interrupt + grace.kill,
                    interrupted: false,
                });
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        let now = Instant::now();
        live.retain_mut(|s| !s.step(now));
    }
}

impl CommandHook {
    pub fn new(command: &str, dir: &Path) -> std::io::Result<CommandHook> {
        Ok(CommandHook {
            command: command.to_string(),
            dir: dir.to_path_buf(),
            forwarder: RtpForwarder::new(IpAddr::from([127, 0, 0, 1]), 0, dir)?,
            children: HashMap::new(),
            grace: Grace::default(),
            reaper: None,
        })
    }

    /// Hands the track's command to the reaper thread; returns at once.
    fn stop(&mut self, track: &TrackId) {
        let Some((child, _)) = self.children.remove(track) else {
            return;
        };
        if self.reaper.is_none() {
            let (tx, rx) = std::sync::mpsc::channel();
            let grace = self.grace;
            match std::thread::Builder::new()
                .name("confab-hook-reaper".into())
                .spawn(move || reap(rx, grace))
            {
                Ok(thread) => self.reaper = Some((tx, thread)),
                Err(e) => tracing::warn!(error = %e, "hook: cannot start the reaper thread"),
            }
        }
        let sent = match &self.reaper {
            Some((tx, _)) => tx.send((track.clone(), child)).map_err(|e| e.0),
            None => Err((track.clone(), child)),
        };
        // No reaper: stop it here, the old way, rather than leave it running.
        if let Err((track, child)) = sent {
            let now = Instant::now();
            let mut s = Stopping {
                track,
                child,
                interrupt_at: now,
                kill_at: now + self.grace.kill,
                interrupted: false,
            };
            while !s.step(Instant::now()) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl TrackSink for CommandHook {
    fn track_started(&mut self, meta: &TrackMeta) {
        // A track whose ids make no file name has no SDP for the command to read.
        let sdp = match self.forwarder.sdp_path(meta) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "hook: not started for this track");
                return;
            }
        };
        // A free port: bind, read it, release it for the command to take.
        let port = match UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()) {
            Ok(a) => a.port(),
            Err(e) => {
                tracing::warn!(error = %e, "hook: no free port");
                return;
            }
        };
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        self.forwarder.fixed.insert(meta.track.clone(), to);
        self.forwarder.track_started(meta);
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("CONFAB_ROOM", meta.room.as_str())
            .env("CONFAB_PARTICIPANT", meta.participant.as_str())
            .env("CONFAB_PARTICIPANT_NAME", meta.participant_name.as_str())
            .env("CONFAB_TRACK", meta.track.as_str())
            .env("CONFAB_KIND", format!("{:?}", meta.kind).to_lowercase())
            .env("CONFAB_SOURCE", format!("{:?}", meta.source).to_lowercase())
            .env("CONFAB_CODEC", &meta.mime)
            .env("CONFAB_RTP_PORT", port.to_string())
            .env("CONFAB_SDP", &sdp)
            .env("CONFAB_DIR", &self.dir)
            .stdin(std::process::Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => {
                tracing::info!(track = %meta.track, pid = child.id(), "hook command started");
                self.children
                    .insert(meta.track.clone(), (child, Instant::now()));
            }
            Err(e) => tracing::warn!(error = %e, "hook command failed to start"),
        }
    }

    fn rtp(
        &mut self,
        track: &TrackId,
        layer: u8,
        keyframe: bool,
        packet: &rtc::rtp::Packet,
        at: SystemTime,
    ) {
        self.forwarder.rtp(track, layer, keyframe, packet, at);
    }

    fn track_ended(&mut self, track: &TrackId) {
        self.forwarder.track_ended(track);
        self.stop(track);
    }

    fn finish(&mut self, dropped: u64) {
        self.forwarder.finish(dropped);
        let tracks: Vec<TrackId> = self.children.keys().cloned().collect();
        for t in tracks {
            self.stop(&t);
        }
        // The recording is finished when its commands are: they may still be writing.
        if let Some((tx, thread)) = self.reaper.take() {
            drop(tx);
            let _ = thread.join();
        }
    }

    /// A command just started reads from the next keyframe: ask again for its first
    /// seconds (the media plane throttles the requests).
    fn keyframes_wanted(&mut self) -> Vec<TrackId> {
        self.children
            .iter()
            .filter(|(_, (_, started))| started.elapsed() < Duration::from_secs(3))
            .map(|(t, _)| t.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_proto::{DisplayName, MediaKind, ParticipantId, RoomId, TrackSource};

    fn meta(track: &str) -> TrackMeta {
        TrackMeta {
            room: RoomId::parse("r").unwrap(),
            participant: ParticipantId::from_wire("PA_1"),
            participant_name: DisplayName::parse("Ada").unwrap(),
            track: TrackId::from_wire(track),
            kind: MediaKind::Audio,
            source: TrackSource::Microphone,
            codec: Codec::Opus,
            mime: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            payload_type: 111,
        }
    }

    /// Whether process `pid` still runs (exists and is not a zombie waiting to be reaped).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next())
            })
            .is_some_and(|state| state != 'Z' && state != 'X')
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_stopping_command_never_holds_up_the_recording() {
        let dir = std::env::temp_dir().join(format!(
            "confab-hook-test-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // A command that ignores both the BYE and SIGINT: only SIGKILL ends it.
        let mut hook = CommandHook::new("trap '' INT; exec sleep 60", &dir).unwrap();
        hook.grace = Grace {
            interrupt: Duration::from_millis(300),
            kill: Duration::from_millis(300),
        };
        let (a, b) = (meta("TR_a"), meta("TR_b"));
        hook.track_started(&a);
        hook.track_started(&b);
        let pid = |t: &TrackMeta| hook.children[&t.track].0.id();
        let (pa, pb) = (pid(&a), pid(&b));
        assert!(running(pa) && running(pb));
        // Track a ends: the call returns while its command is still being stopped (it
        // used to block here until the SIGKILL, and every other track with it).
        hook.track_ended(&a.track);
        assert!(running(pa), "track_ended waited for the command");
        assert!(!hook.children.contains_key(&a.track));
        // The session ends: it returns once every command is gone.
        hook.finish(0);
        assert!(!running(pa) && !running(pb));
        assert!(
            !std::path::Path::new(&format!("/proc/{pa}")).exists(),
            "reaped"
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{pb}")).exists(),
            "reaped"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
