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

    /// The SDP file written for a track.
    pub fn sdp_path(&self, meta: &TrackMeta) -> PathBuf {
        self.dir
            .join(format!("{}-{}.sdp", meta.participant, meta.track))
    }

    fn bye(&self, f: &Forwarded) {
        let Some(ssrc) = f.ssrc else { return };
        let bye = rtcp_bye(ssrc);
        let rtcp = SocketAddr::new(f.to.ip(), f.to.port().wrapping_add(1));
        let _ = self.socket.send_to(&bye, rtcp);
        let _ = self.socket.send_to(&bye, f.to);
    }

    fn start(&mut self, meta: &TrackMeta, to: SocketAddr) {
        let path = self.sdp_path(meta);
        if let Err(e) = std::fs::write(&path, sdp_for(meta, to)) {
            tracing::warn!(error = %e, path = %path.display(), "rtp forwarder: cannot write the SDP");
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
pub struct CommandHook {
    command: String,
    dir: PathBuf,
    forwarder: RtpForwarder,
    children: HashMap<TrackId, (Child, Instant)>,
}

impl CommandHook {
    pub fn new(command: &str, dir: &Path) -> std::io::Result<CommandHook> {
        Ok(CommandHook {
            command: command.to_string(),
            dir: dir.to_path_buf(),
            forwarder: RtpForwarder::new(IpAddr::from([127, 0, 0, 1]), 0, dir)?,
            children: HashMap::new(),
        })
    }

    fn stop(&mut self, track: &TrackId) {
        let Some((mut child, _)) = self.children.remove(track) else {
            return;
        };
        // The forwarder has sent an RTCP BYE, on which ffmpeg finishes by itself; other
        // tools get one SIGINT (a second would make ffmpeg abandon its file).
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let interrupt_at = Instant::now() + Duration::from_secs(1);
        let kill_at = interrupt_at + Duration::from_secs(4);
        let mut interrupted = false;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(track = %track, %status, "hook command finished");
                    return;
                }
                Ok(None) if Instant::now() < kill_at => {
                    if !interrupted && Instant::now() >= interrupt_at {
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                        interrupted = true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(track = %track, "hook command killed");
                    return;
                }
            }
        }
    }
}

impl TrackSink for CommandHook {
    fn track_started(&mut self, meta: &TrackMeta) {
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
        let sdp = self.forwarder.sdp_path(meta);
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
