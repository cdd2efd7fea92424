//! A Confab client on webrtc-rs: the signaling protocol over a real WebSocket, a
//! publisher peer connection (we offer) and a subscriber peer connection (the server
//! offers), as the browser client does.
//!
//! Everything the client observes arrives as an [`Event`] on one channel; tests wait on
//! events with deadlines ([`Client::wait_for`]), never on sleeps.

use crate::media::{self, SynthCodec};
use crate::stats::RecvStats;
use anyhow::{Context, anyhow, bail};
use confab_proto::signal::PublishTrack;
use confab_proto::{
    ChatIn, ChatOut, ClientMessage, IceCandidate, MediaKind, PROTOCOL_VERSION, ParticipantId,
    ParticipantInfo, PcTarget, ServerMessage, SubscribedTrack, TrackId, TrackSource,
};
use futures_util::{SinkExt, StreamExt};
use rtc::interceptor::{
    Attribute, Interceptor, Packet as InterceptorPacket, StreamInfo, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, configure_nack,
    configure_rtcp_reports,
};

mod pc;
mod pump;
mod wire;

use pc::*;
pub use pump::*;
pub(crate) use wire::KeyframeTap;
use wire::*;

/// What a client publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Publish {
    pub audio: bool,
    pub video: bool,
    /// Video as three simulcast layers (rids q, h, f).
    pub simulcast: bool,
}

impl Publish {
    pub const NONE: Publish = Publish {
        audio: false,
        video: false,
        simulcast: false,
    };
    pub const AUDIO_VIDEO: Publish = Publish {
        audio: true,
        video: true,
        simulcast: false,
    };
    pub const SIMULCAST: Publish = Publish {
        audio: true,
        video: true,
        simulcast: true,
    };
}

/// Simulcast rids, lowest first, and each layer's share of the top layer's frame size and
/// its frame height.
pub const SIMULCAST_LAYERS: [(&str, usize, u16); 3] = [("q", 8, 180), ("h", 3, 360), ("f", 1, 720)];

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://host:port/ws`
    pub url: String,
    pub room: String,
    pub name: String,
    pub publish: Publish,
    /// Where received RTP goes: events (tests) or measurements (load runs).
    pub sink: RtpSink,
    /// Local address of the peer connections' sockets (tests put clients on other
    /// loopback addresses to tell them apart in a relay).
    pub bind_ip: std::net::IpAddr,
    /// Access token presented in `join`.
    pub token: Option<String>,
    /// A connection check (`join.check`): a hidden, receive-only room of its own.
    pub check: bool,
    /// Media over TCP only (ICE-TCP to the server's passive candidate), as a client on a
    /// network that blocks UDP.
    pub tcp: bool,
    /// Negotiate transport-wide congestion control on the subscriber connection and send
    /// its feedback every 100 ms, as browsers do (the server then estimates this client's
    /// downlink from delay, not only from loss).
    pub twcc: bool,
    /// Redundant audio (`audio/red`, RFC 2198) on both connections, as browsers offer it:
    /// audio then arrives as RED ([`Event::Rtp`] carries it as received; a load run
    /// counts its primary block), and is published as RED, two previous frames in each
    /// packet (what the server's answer asks of a browser).
    pub red: bool,
}

/// The server refused the join with this error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("join refused: {code:?}: {message}")]
pub struct JoinRefused {
    pub code: confab_proto::ErrorCode,
    pub message: String,
}

/// Where a client's received RTP goes.
#[derive(Clone)]
pub enum RtpSink {
    /// Every packet as an [`Event::Rtp`].
    Events,
    /// Measured into shared statistics, as subscriber number `subscriber`.
    Stats {
        stats: Arc<RecvStats>,
        subscriber: usize,
    },
}

impl std::fmt::Debug for RtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RtpSink::Events => f.write_str("Events"),
            RtpSink::Stats { subscriber, .. } => write!(f, "Stats({subscriber})"),
        }
    }
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, room: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            room: room.into(),
            name: name.into(),
            publish: Publish::AUDIO_VIDEO,
            sink: RtpSink::Events,
            bind_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            token: None,
            check: false,
            tcp: false,
            twcc: false,
            red: false,
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn bind_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.bind_ip = ip;
        self
    }

    pub fn sink(mut self, sink: RtpSink) -> Self {
        self.sink = sink;
        self
    }

    pub fn publish(mut self, p: Publish) -> Self {
        self.publish = p;
        self
    }

    /// Sends and receives media over TCP only (see [`ClientOptions::tcp`]).
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Sends transport-wide congestion control feedback (see [`ClientOptions::twcc`]).
    pub fn twcc(mut self) -> Self {
        self.twcc = true;
        self
    }

    /// Receives and publishes audio as RED (see [`ClientOptions::red`]).
    pub fn red(mut self) -> Self {
        self.red = true;
        self
    }

    /// Joins as a connection check (see [`ClientOptions::check`]); publishes nothing.
    pub fn check(mut self) -> Self {
        self.check = true;
        self.publish = Publish::NONE;
        self
    }
}

/// Something the client observed.
#[derive(Debug, Clone)]
pub enum Event {
    /// A server message the client did not consume itself (room events, errors).
    Server(ServerMessage),
    /// A remote track started on the subscriber connection.
    TrackStarted {
        track: TrackId,
        participant: ParticipantId,
        kind: MediaKind,
    },
    Rtp {
        track: TrackId,
        participant: ParticipantId,
        kind: MediaKind,
        packet: rtc::rtp::Packet,
    },
    ChatOpen,
    Chat(ChatOut),
    PublisherState(RTCPeerConnectionState),
    SubscriberState(RTCPeerConnectionState),
    /// The server asked for a keyframe of our video.
    KeyframeRequested,
    /// The signaling connection closed.
    Closed,
}

/// Counters for load runs (when RTP is not delivered as events).
#[derive(Debug, Default)]
pub struct Received {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

type Pc = Arc<dyn PeerConnection>;

struct Shared {
    /// The current signaling connection's writer (replaced when the session resumes).
    ws: std::sync::Mutex<mpsc::UnboundedSender<WsMessage>>,
    events: mpsc::UnboundedSender<Event>,
    /// mid -> remote track, from the server's offers.
    sub_tracks: Mutex<HashMap<String, SubscribedTrack>>,
    chat: Mutex<Option<Arc<dyn DataChannel>>>,
    /// Remote tracks of the subscriber connection, to send them feedback.
    remote: Mutex<HashMap<TrackId, Arc<dyn TrackRemote>>>,
    /// The reader task of each remote track. webrtc-rs does not end a remote track whose
    /// transceiver went inactive, so readers of tracks the server's offer no longer lists
    /// are stopped here.
    readers: std::sync::Mutex<HashMap<TrackId, tokio::task::JoinHandle<()>>>,
    sink: RtpSink,
    started: Instant,
    first_video: std::sync::atomic::AtomicBool,
    received: Arc<Received>,
    keyframe_requested: Arc<std::sync::atomic::AtomicBool>,
    /// The candidates each connection gathered (and trickled), in order.
    local_candidates: std::sync::Mutex<Vec<(PcTarget, String)>>,
    /// Media over TCP only: the server's passive TCP candidates are connected to.
    tcp: bool,
}

impl Shared {
    fn send(&self, m: &ClientMessage) {
        if let Ok(t) = serde_json::to_string(m) {
            self.send_ws(WsMessage::Text(t.into()));
        }
    }

    fn send_ws(&self, m: WsMessage) {
        let _ = self.ws.lock().unwrap_or_else(|e| e.into_inner()).send(m);
    }
}

pub struct Client {
    pub id: ParticipantId,
    /// Everyone else in the room at join.
    pub others: Vec<ParticipantInfo>,
    /// The ICE servers `joined` gave (TURN with credentials for this participant).
    pub ice_servers: Vec<confab_proto::signal::IceServer>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Events taken off the channel by `wait_for` but not matched, kept in order.
    backlog: VecDeque<Event>,
    publisher: Option<Pc>,
    subscriber: Pc,
    audio: Option<Arc<TrackLocalStaticRTP>>,
    video: Option<Arc<TrackLocalStaticRTP>>,
    audio_mid: Option<String>,
    /// Audio is published as RED.
    red: bool,
    video_mid: Option<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The signaling connection's writer and reader.
    ws_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The signaling URL of the node the client joined (after a redirect: that node's).
    url: String,
    /// The URL first connected to, when the join was redirected.
    redirected_from: Option<String>,
    room: String,
    /// From `joined`: presented to resume this session on a new connection.
    resume_token: String,
}

impl Client {
    /// Connects, joins and (if asked) publishes. Returns once `joined` arrived. A
    /// `redirect` (the room lives on another node) is followed once.
    pub async fn connect(opts: ClientOptions) -> anyhow::Result<Client> {
        let join = serde_json::to_string(&ClientMessage::Join {
            protocol: PROTOCOL_VERSION,
            room: confab_proto::RoomId::parse(&opts.room)?,
            name: confab_proto::DisplayName::parse(&opts.name)?,
            token: opts.token.clone(),
            resume: None,
            check: opts.check,
        })?;
        let mut url = opts.url.clone();
        let mut redirected_from = None;
        let (ws_tx, ws_rx, (id, others, resume_token, ice_servers)) = loop {
            let (ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let (mut ws_tx, mut ws_rx) = ws.split();
            ws_tx.send(WsMessage::Text(join.clone().into())).await?;
            match wait_answer(&mut ws_rx).await? {
                Answer::Joined(id, others, token, ice) => {
                    break (ws_tx, ws_rx, (id, others, token, ice));
                }
                Answer::Redirect(to) if redirected_from.is_none() => {
                    redirected_from = Some(std::mem::replace(&mut url, to));
                }
                Answer::Redirect(to) => {
                    bail!("redirected again (to {to}): a client follows one redirect per join")
                }
            }
        };
        let (out_tx, out_rx) = mpsc::unbounded_channel::<WsMessage>();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            ws: std::sync::Mutex::new(out_tx),
            events: ev_tx,
            sub_tracks: Mutex::new(HashMap::new()),
            chat: Mutex::new(None),
            remote: Mutex::new(HashMap::new()),
            readers: std::sync::Mutex::new(HashMap::new()),
            sink: opts.sink.clone(),
            started: Instant::now(),
            first_video: Default::default(),
            received: Arc::new(Received::default()),
            keyframe_requested: Arc::new(Default::default()),
            local_candidates: Default::default(),
            tcp: opts.tcp,
        });
        let tasks = Vec::new();
        let mut ws_tasks = vec![spawn_writer(ws_tx, out_rx)];

        let subscriber = build_pc(
            Arc::new(PcHandler {
                target: PcTarget::Subscriber,
                shared: shared.clone(),
            }),
            false,
            opts.bind_ip,
            opts.tcp,
            opts.twcc,
            opts.red,
        )
        .await?;

        let publisher = if opts.publish.audio || opts.publish.video {
            Some(
                build_pc(
                    Arc::new(PcHandler {
                        target: PcTarget::Publisher,
                        shared: shared.clone(),
                    }),
                    true,
                    opts.bind_ip,
                    opts.tcp,
                    false,
                    opts.red,
                )
                .await?,
            )
        } else {
            None
        };

        ws_tasks.push(spawn_reader(
            shared.clone(),
            subscriber.clone(),
            publisher.clone(),
            ws_rx,
        ));

        let mut client = Client {
            id,
            others,
            ice_servers,
            shared,
            events: ev_rx,
            backlog: VecDeque::new(),
            publisher,
            subscriber,
            audio: None,
            video: None,
            audio_mid: None,
            red: opts.red,
            video_mid: None,
            tasks,
            ws_tasks,
            url,
            redirected_from,
            room: opts.room.clone(),
            resume_token,
        };
        if client.publisher.is_some() {
            client.start_publishing(opts.publish).await?;
        }
        Ok(client)
    }

    async fn start_publishing(&mut self, p: Publish) -> anyhow::Result<()> {
        let pc = self
            .publisher
            .clone()
            .ok_or_else(|| anyhow!("no publisher"))?;
        if p.audio {
            let t = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("{}-stream", self.id),
                format!("{}-audio", self.id),
                "audio".into(),
                RtpCodecKind::Audio,
                vec![encoding(opus_codec())],
            )));
            pc.add_track(t.clone() as Arc<dyn TrackLocal>).await?;
            self.audio = Some(t);
        }
        if p.video {
            let encodings = if p.simulcast {
                SIMULCAST_LAYERS
                    .iter()
                    .map(|(rid, _, _)| {
                        let mut e = encoding(vp8_codec());
                        e.rtp_coding_parameters.rid = (*rid).to_string();
                        e
                    })
                    .collect()
            } else {
                vec![encoding(vp8_codec())]
            };
            let t = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("{}-stream", self.id),
                format!("{}-video", self.id),
                "video".into(),
                RtpCodecKind::Video,
                encodings,
            )));
            pc.add_track(t.clone() as Arc<dyn TrackLocal>).await?;
            // Keyframe requests reach the track through the tap interceptor.
            let flag = self.shared.keyframe_requested.clone();
            let events = self.shared.events.clone();
            let track = t.clone();
            self.tasks.push(tokio::spawn(async move {
                while let Some(ev) = track.poll().await {
                    let TrackLocalEvent::OnRtcpPacket(pkts) = ev else {
                        continue;
                    };
                    if pkts.iter().any(|p| {
                        p.as_any().is::<PictureLossIndication>()
                            || p.as_any().is::<FullIntraRequest>()
                    }) {
                        flag.store(true, Ordering::Relaxed);
                        let _ = events.send(Event::KeyframeRequested);
                    }
                }
            }));
            self.video = Some(t);
        }
        let sdp = local_offer(&pc).await?;
        let mut publish = Vec::new();
        for t in pc.get_transceivers().await {
            if let Ok(Some(mid)) = t.mid().await
                && let Ok(Some(sender)) = t.sender().await
            {
                let kind = sender.track().kind().await;
                if kind == RtpCodecKind::Audio {
                    self.audio_mid = Some(mid.clone());
                } else {
                    self.video_mid = Some(mid.clone());
                }
                publish.push(PublishTrack {
                    mid,
                    source: if kind == RtpCodecKind::Audio {
                        TrackSource::Microphone
                    } else {
                        TrackSource::Camera
                    },
                });
            }
        }
        self.shared.send(&ClientMessage::Publish {
            sdp,
            tracks: publish,
        });
        Ok(())
    }

    /// Offers the publisher connection again, unchanged (as a browser does when it adds or
    /// removes a track elsewhere), and returns once the server's answer is applied.
    pub async fn renegotiate(&self) -> anyhow::Result<()> {
        let pc = self
            .publisher
            .clone()
            .ok_or_else(|| anyhow!("no publisher"))?;
        let sdp = local_offer(&pc).await?;
        let mut tracks = Vec::new();
        if let Some(mid) = &self.audio_mid {
            tracks.push(PublishTrack {
                mid: mid.clone(),
                source: TrackSource::Microphone,
            });
        }
        if let Some(mid) = &self.video_mid {
            tracks.push(PublishTrack {
                mid: mid.clone(),
                source: TrackSource::Camera,
            });
        }
        self.shared.send(&ClientMessage::Publish { sdp, tracks });
        // The answer is applied by the reader task: wait for it (a condition, polled).
        let deadline = Instant::now() + Duration::from_secs(10);
        while pc.pending_local_description().await.is_some() {
            if Instant::now() > deadline {
                bail!("no answer to the publisher's new offer");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Restarts ICE on both connections, as a client does when its network changes or a
    /// connection goes `disconnected`/`failed`: the publisher connection offers with new
    /// credentials (`publish`), the subscriber connection asks the server for such an offer
    /// (`restart_ice`). Both rebind their sockets (new local ports). Returns once both have
    /// new credentials on both sides; media resumes when the new checks pass.
    pub async fn restart_ice(&self) -> anyhow::Result<()> {
        let before = self.server_ufrag().await;
        self.shared.send(&ClientMessage::RestartIce);
        if let Some(pc) = &self.publisher {
            pc.restart_ice().await?;
            self.renegotiate().await?;
        }
        // The server's offer with new credentials is answered by the reader task.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.server_ufrag().await;
            if now.is_some()
                && now != before
                && self.subscriber.pending_remote_description().await.is_none()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server sent no offer with new ICE credentials");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The candidates our connections gathered so far (what we trickled), oldest first.
    pub fn local_candidates(&self) -> Vec<(PcTarget, String)> {
        self.shared
            .local_candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server's ICE username fragment on our publisher connection.
    pub async fn publisher_server_ufrag(&self) -> Option<String> {
        let sdp = self.publisher.as_ref()?.remote_description().await?.sdp;
        crate::client::ufrag_of(&sdp)
    }

    /// Sends a raw text frame (for protocol tests).
    /// Loses the signaling connection without a close frame (a network change, a proxy
    /// timeout); the peer connections go on. [`Client::resume`] comes back.
    pub fn drop_signaling(&mut self) {
        for t in self.ws_tasks.drain(..) {
            t.abort();
        }
    }

    /// Resumes the session on a new signaling connection (`join.resume`): same
    /// participant, tracks and subscriptions. The fresh `joined` updates `others`.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.drop_signaling();
        let (ws, _) = tokio_tungstenite::connect_async(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
        let (ws_tx, mut ws_rx) = ws.split();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<WsMessage>();
        *self.shared.ws.lock().unwrap_or_else(|e| e.into_inner()) = out_tx;
        self.ws_tasks.push(spawn_writer(ws_tx, out_rx));
        self.shared.send(&ClientMessage::Join {
            protocol: PROTOCOL_VERSION,
            room: confab_proto::RoomId::parse(&self.room)?,
            // Ignored on resume: the session keeps its name.
            name: confab_proto::DisplayName::parse("resume")?,
            token: None,
            resume: Some(self.resume_token.clone()),
            check: false,
        });
        let (id, others, token) = wait_joined(&mut ws_rx).await?;
        if id != self.id {
            bail!("resumed as {id}, not {}", self.id);
        }
        self.others = others;
        self.resume_token = token;
        self.ws_tasks.push(spawn_reader(
            self.shared.clone(),
            self.subscriber.clone(),
            self.publisher.clone(),
            ws_rx,
        ));
        Ok(())
    }

    /// The signaling URL of the node this client is on.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL the client first connected to, if that node redirected it.
    pub fn redirected_from(&self) -> Option<&str> {
        self.redirected_from.as_deref()
    }

    pub fn send_raw(&self, text: impl Into<String>) {
        self.shared.send_ws(WsMessage::Text(text.into().into()));
    }

    pub fn send(&self, m: &ClientMessage) {
        self.shared.send(m);
    }

    /// Sends a chat message over the data channel.
    pub async fn chat(&self, text: &str) -> anyhow::Result<()> {
        let raw = serde_json::to_string(&ChatIn::Chat {
            text: text.into(),
            request_id: None,
        })?;
        self.chat_raw(&raw).await
    }

    pub async fn chat_raw(&self, raw: &str) -> anyhow::Result<()> {
        let dc = self
            .shared
            .chat
            .lock()
            .await
            .clone()
            .ok_or_else(|| anyhow!("chat channel not open"))?;
        dc.send_text(raw).await?;
        Ok(())
    }

    /// Sends a keyframe request (PLI) for a remote track, as a decoder would after loss.
    pub async fn request_keyframe(&self, track: &TrackId) -> anyhow::Result<()> {
        let t = self
            .shared
            .remote
            .lock()
            .await
            .get(track)
            .cloned()
            .ok_or_else(|| anyhow!("no remote track {track}"))?;
        let media_ssrc = t.ssrcs().await.first().copied().unwrap_or(0);
        t.write_rtcp(vec![Box::new(PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        })])
        .await?;
        Ok(())
    }

    /// The server's ICE username fragment on our subscriber connection.
    pub async fn server_ufrag(&self) -> Option<String> {
        let sdp = self.subscriber.remote_description().await?.sdp;
        ufrag_of(&sdp)
    }

    /// Whether a keyframe was asked for since the last call.
    pub fn take_keyframe_request(&self) -> bool {
        self.shared
            .keyframe_requested
            .swap(false, Ordering::Relaxed)
    }

    pub fn received(&self) -> Arc<Received> {
        self.shared.received.clone()
    }

    pub fn video_track(&self) -> Option<Arc<TrackLocalStaticRTP>> {
        self.video.clone()
    }

    pub fn audio_track(&self) -> Option<Arc<TrackLocalStaticRTP>> {
        self.audio.clone()
    }

    /// The next event, waiting at most `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<Event> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(e);
        }
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .map_err(|_| anyhow!("no event within {timeout:?}"))?
            .ok_or_else(|| anyhow!("client closed"))
    }

    /// Waits until `f` accepts an event, keeping the others for later calls.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        // Look at the backlog first, then at new events.
        let mut kept = VecDeque::new();
        while let Some(e) = self.backlog.pop_front() {
            if let Some(t) = f(&e) {
                kept.extend(self.backlog.drain(..));
                self.backlog = kept;
                return Ok(t);
            }
            kept.push_back(e);
        }
        self.backlog = kept;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = tokio::time::timeout(left, self.events.recv())
                .await
                .map_err(|_| anyhow!("timed out after {timeout:?} waiting for {what}"))?
                .ok_or_else(|| anyhow!("client closed while waiting for {what}"))?;
            if let Some(t) = f(&e) {
                return Ok(t);
            }
            self.backlog.push_back(e);
            if self.backlog.len() > 100_000 {
                self.backlog.pop_front();
            }
        }
    }

    /// Drops events seen so far (RTP floods the backlog in long tests).
    pub fn clear_backlog(&mut self) {
        self.backlog.clear();
        while self.events.try_recv().is_ok() {}
    }

    /// Leaves the room and closes both peer connections.
    pub async fn leave(mut self) {
        self.shared.send(&ClientMessage::Leave);
        // The server answers `leave` by closing the socket: wait (briefly) for that, so
        // that the leave is on the wire before the tasks stop. Otherwise the server sees a
        // lost socket and removes the participant only when ICE gives up (~9 s).
        if let Some(reader) = self.ws_tasks.get_mut(1) {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
        self.close().await;
    }

    /// Disappears without a word: the signaling socket is dropped without a close frame
    /// and the peer connections stop answering (a crashed tab, a pulled cable).
    pub async fn vanish(self) {
        for t in self.tasks.iter().chain(&self.ws_tasks) {
            t.abort();
        }
        self.stop_readers();
        if let Some(p) = &self.publisher {
            let _ = p.close().await;
        }
        let _ = self.subscriber.close().await;
    }

    fn stop_readers(&self) {
        let mut readers = self
            .shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, t) in readers.drain() {
            t.abort();
        }
    }

    /// Closes without saying goodbye (as a crashed tab would, minus the TCP reset).
    pub async fn close(self) {
        if let Some(p) = &self.publisher {
            let _ = p.close().await;
        }
        let _ = self.subscriber.close().await;
        self.shared.send_ws(WsMessage::Close(None));
        for t in self.tasks.iter().chain(&self.ws_tasks) {
            t.abort();
        }
        self.stop_readers();
    }
}

fn ufrag_of(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_string())
}
