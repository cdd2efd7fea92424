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
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Events taken off the channel by `wait_for` but not matched, kept in order.
    backlog: VecDeque<Event>,
    publisher: Option<Pc>,
    subscriber: Pc,
    audio: Option<Arc<TrackLocalStaticRTP>>,
    video: Option<Arc<TrackLocalStaticRTP>>,
    audio_mid: Option<String>,
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

const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

fn media_engine() -> anyhow::Result<MediaEngine> {
    let mut m = MediaEngine::default();
    use rtc::sdp::extmap;
    for (uri, kind) in [
        (extmap::SDES_MID_URI, RtpCodecKind::Video),
        (extmap::SDES_RTP_STREAM_ID_URI, RtpCodecKind::Video),
        (extmap::SDES_MID_URI, RtpCodecKind::Audio),
        (extmap::AUDIO_LEVEL_URI, RtpCodecKind::Audio),
    ] {
        m.register_header_extension(
            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            kind,
            None,
        )?;
    }
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "audio/opus".into(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8_codec(),
            payload_type: VP8_PT,
        },
        RtpCodecKind::Video,
    )?;
    Ok(m)
}

fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".into(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: "pli".into(),
            },
        ],
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

async fn build_pc(
    handler: Arc<dyn PeerConnectionEventHandler>,
    tap: bool,
    bind_ip: std::net::IpAddr,
) -> anyhow::Result<Pc> {
    let mut media = media_engine()?;
    let mut registry = Registry::new();
    registry = configure_nack(registry, &mut media);
    registry = configure_rtcp_reports(registry);
    if tap {
        registry = registry.with(rtc::interceptor::Slot::from(14_000), KeyframeTap::default());
    }
    // Behave like a browser: answer as the DTLS client (setup:active) and send the first
    // ICE checks at once rather than after the default 200 ms interval.
    let settings = webrtc::peer_connection::SettingEngineBuilder::new()
        .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Client)
        .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(50))
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![format!("{bind_ip}:0")])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

struct PcHandler {
    target: PcTarget,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PcHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            self.shared.send(&ClientMessage::Candidate {
                target: self.target,
                candidate: IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                    username_fragment: init.username_fragment,
                },
            });
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let ev = match self.target {
            PcTarget::Publisher => Event::PublisherState(state),
            PcTarget::Subscriber => Event::SubscriberState(state),
        };
        let _ = self.shared.events.send(ev);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        let track_id = TrackId::from_wire(track.track_id().await.to_string());
        let key = track_id.clone();
        let reader = tokio::spawn(async move {
            let kind = match track.kind().await {
                RtpCodecKind::Audio => MediaKind::Audio,
                _ => MediaKind::Video,
            };
            let participant = {
                let map = shared.sub_tracks.lock().await;
                map.values()
                    .find(|t| t.track_id == track_id)
                    .map(|t| t.participant_id.clone())
            }
            .unwrap_or_else(|| ParticipantId::from_wire(String::new()));
            shared
                .remote
                .lock()
                .await
                .insert(track_id.clone(), track.clone());
            let _ = shared.events.send(Event::TrackStarted {
                track: track_id.clone(),
                participant: participant.clone(),
                kind,
            });
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = ev {
                    shared.received.packets.fetch_add(1, Ordering::Relaxed);
                    shared
                        .received
                        .bytes
                        .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
                    match &shared.sink {
                        RtpSink::Events => {
                            let _ = shared.events.send(Event::Rtp {
                                track: track_id.clone(),
                                participant: participant.clone(),
                                kind,
                                packet,
                            });
                        }
                        RtpSink::Stats { stats, subscriber } => {
                            let codec = match kind {
                                MediaKind::Audio => SynthCodec::Opus,
                                MediaKind::Video => SynthCodec::Vp8,
                            };
                            if kind == MediaKind::Video
                                && !shared.first_video.swap(true, Ordering::Relaxed)
                            {
                                stats.first_frame(shared.started.elapsed());
                            }
                            stats.packet(
                                *subscriber,
                                &track_id,
                                codec,
                                &packet.payload,
                                media::now_micros(),
                            );
                        }
                    }
                }
            }
        });
        let mut readers = self
            .shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(old) = readers.insert(key, reader) {
            old.abort();
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        *self.shared.chat.lock().await = Some(dc.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if matches!(
                dc.ready_state().await,
                Ok(webrtc::data_channel::RTCDataChannelState::Open)
            ) {
                let _ = shared.events.send(Event::ChatOpen);
            }
            while let Some(ev) = dc.poll().await {
                match ev {
                    DataChannelEvent::OnOpen => {
                        let _ = shared.events.send(Event::ChatOpen);
                    }
                    DataChannelEvent::OnMessage(m) => {
                        if let Ok(c) = serde_json::from_slice::<ChatOut>(&m.data) {
                            let _ = shared.events.send(Event::Chat(c));
                        }
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        });
    }
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
        })?;
        let mut url = opts.url.clone();
        let mut redirected_from = None;
        let (ws_tx, ws_rx, (id, others, resume_token)) = loop {
            let (ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let (mut ws_tx, mut ws_rx) = ws.split();
            ws_tx.send(WsMessage::Text(join.clone().into())).await?;
            match wait_answer(&mut ws_rx).await? {
                Answer::Joined(id, others, token) => break (ws_tx, ws_rx, (id, others, token)),
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
            shared,
            events: ev_rx,
            backlog: VecDeque::new(),
            publisher,
            subscriber,
            audio: None,
            video: None,
            audio_mid: None,
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
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(|u| u.trim().to_string())
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

/// A new offer on `pc`, set as its local description: its SDP.
async fn local_offer(pc: &Pc) -> anyhow::Result<String> {
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    Ok(pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?
        .sdp)
}

type WsStream = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;
type WsSink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    WsMessage,
>;

fn spawn_writer(
    mut ws_tx: WsSink,
    mut out_rx: mpsc::UnboundedReceiver<WsMessage>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if ws_tx.send(m).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    })
}

/// The server's answer to a join.
enum Answer {
    /// (participant id, the others, the resume token).
    Joined(ParticipantId, Vec<ParticipantInfo>, String),
    /// The room is on another node: join there.
    Redirect(String),
}

/// Waits for `joined` (or a fatal error) before the stream goes to the reader:
/// (participant id, the others, the resume token).
async fn wait_joined(
    ws_rx: &mut WsStream,
) -> anyhow::Result<(ParticipantId, Vec<ParticipantInfo>, String)> {
    match wait_answer(ws_rx).await? {
        Answer::Joined(id, others, token) => Ok((id, others, token)),
        Answer::Redirect(url) => bail!("redirected to {url} while resuming: join afresh"),
    }
}

/// Waits for `joined`, a `redirect` or a fatal error.
async fn wait_answer(ws_rx: &mut WsStream) -> anyhow::Result<Answer> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws_rx.next())
            .await
            .context("no answer to join")?;
        let Some(Ok(WsMessage::Text(t))) = frame else {
            match frame {
                Some(Ok(WsMessage::Close(_))) | None => {
                    bail!("connection closed before joined")
                }
                Some(Err(e)) => bail!("websocket: {e}"),
                _ => continue,
            }
        };
        match serde_json::from_str::<ServerMessage>(&t)? {
            ServerMessage::Joined {
                participant,
                participants,
                resume_token,
                ..
            } => return Ok(Answer::Joined(participant.id, participants, resume_token)),
            ServerMessage::Redirect { url, .. } => return Ok(Answer::Redirect(url)),
            ServerMessage::Error { code, message, .. } => {
                return Err(JoinRefused { code, message }.into());
            }
            other => bail!("unexpected message before joined: {other:?}"),
        }
    }
}

/// The reader applies offers, answers and candidates; everything else is an event.
fn spawn_reader(
    shared: Arc<Shared>,
    subscriber: Pc,
    publisher: Option<Pc>,
    mut ws_rx: WsStream,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(frame) = ws_rx.next().await {
            let text = match frame {
                Ok(WsMessage::Text(t)) => t,
                Ok(WsMessage::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else {
                continue;
            };
            if let Err(e) = handle_server(&shared, &subscriber, publisher.as_ref(), msg).await {
                tracing::warn!(error = %e, "client failed to apply a server message");
            }
        }
        let _ = shared.events.send(Event::Closed);
    })
}

/// Largest synthetic video payload per packet (a frame larger than this spans packets).
pub const MAX_VIDEO_PAYLOAD: usize = 1100;

/// What a [`Pump`] sends.
#[derive(Debug, Clone, Copy)]
pub struct MediaPlan {
    pub audio: bool,
    pub video: bool,
    /// Video frames per second.
    pub fps: u32,
    /// Bytes per video frame, split into packets of at most [`MAX_VIDEO_PAYLOAD`].
    pub video_bytes: usize,
    /// Audio packets are 20 ms of Opus.
    pub audio_bytes: usize,
    pub keyframe_every: Duration,
    /// RFC 6464 level put in every audio packet: 0 loudest, 127 silence.
    pub audio_level: u8,
}

impl Default for MediaPlan {
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            fps: 30,
            video_bytes: 1000,
            audio_bytes: 100,
            keyframe_every: Duration::from_secs(2),
            audio_level: 127,
        }
    }
}

/// Sends synthetic media until dropped. A keyframe goes out on the plan's interval and
/// whenever the server asks for one.
pub struct Pump {
    task: tokio::task::JoinHandle<()>,
    pub sent: Arc<AtomicU64>,
    mid_rid: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::atomic::AtomicU8>,
}

impl Pump {
    /// Holds back the video layers whose bit is set in `mask` (bit 0: the lowest): they
    /// send nothing until released, as a browser's late-starting or paused encodings.
    pub fn hold_layers(&self, mask: u8) {
        self.held.store(mask, Ordering::Relaxed);
    }

    /// Whether packets carry the mid and rid header extensions (on at first). Chromium
    /// stops sending them once the receiver's reports show it knows the SSRCs; turning
    /// them off reproduces that.
    pub fn send_mid_rid(&self, on: bool) {
        self.mid_rid.store(on, Ordering::Relaxed);
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    pub fn start_media(&self, plan: MediaPlan) -> Pump {
        self.start_media_holding(plan, 0)
    }

    /// [`Client::start_media`] with the video layers of `held` (a [`Pump::hold_layers`]
    /// mask) held back from the first frame.
    pub fn start_media_holding(&self, plan: MediaPlan, held: u8) -> Pump {
        let audio = if plan.audio { self.audio.clone() } else { None };
        let video = if plan.video { self.video.clone() } else { None };
        let (audio_mid, video_mid) = (self.audio_mid.clone(), self.video_mid.clone());
        let keyframe = self.shared.keyframe_requested.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let mid_rid = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let with_mid_rid = mid_rid.clone();
        let held = Arc::new(std::sync::atomic::AtomicU8::new(held));
        let holding = held.clone();
        let task = tokio::spawn(async move {
            let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
            let mut video_tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / plan.fps.max(1) as u64));
            let a_ssrc = match &audio {
                Some(t) => t.ssrcs().await.first().copied().unwrap_or(0),
                None => 0,
            };
            // One stream per encoding (three with simulcast), each with its own sequence
            // numbers and picture ids, as a browser's encoder does.
            let mut layers: Vec<LayerState> = Vec::new();
            if let Some(t) = &video {
                let ssrcs = t.ssrcs().await;
                let simulcast = ssrcs.len() > 1;
                for (i, ssrc) in ssrcs.into_iter().enumerate() {
                    let (rid, share, height) = if simulcast {
                        let (r, s, h) = SIMULCAST_LAYERS[i.min(2)];
                        (Some(r), s, h)
                    } else {
                        (None, 1, 720)
                    };
                    layers.push(LayerState {
                        ssrc,
                        rid,
                        layer: i as u64,
                        bytes: (plan.video_bytes / share).max(60),
                        height,
                        seq: rand::random(),
                        picture_id: rand::random::<u16>() & 0x7fff,
                        tl0: rand::random(),
                        index: 0,
                    });
                }
            }
            let (mut a_idx, mut frame) = (0u64, 0u64);
            let mut a_seq = rand::random::<u16>();
            let mut last_key: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = audio_tick.tick(), if audio.is_some() => {
                        let Some(t) = &audio else { continue };
                        let pkt = rtp_packet(OPUS_PT, a_ssrc, a_seq, a_idx as u32 * 960, true,
                            media::payload(None, a_idx, plan.audio_bytes, media::now_micros()));
                        let mut exts = vec![rtc::rtp::extension::HeaderExtension::AudioLevel(
                            rtc::rtp::extension::audio_level_extension::AudioLevelExtension {
                                level: plan.audio_level.min(127),
                                voice: plan.audio_level < 127,
                            },
                        )];
                        if let Some(mid) = &audio_mid
                            && with_mid_rid.load(Ordering::Relaxed)
                        {
                            exts.push(text_extension(rtc::sdp::extmap::SDES_MID_URI, mid));
                        }
                        if t.write_rtp_with_extensions(pkt, &exts).await.is_ok() {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        a_idx += 1;
                        a_seq = a_seq.wrapping_add(1);
                    }
                    _ = video_tick.tick(), if video.is_some() => {
                        let Some(t) = &video else { continue };
                        let now = Instant::now();
                        let key = keyframe.swap(false, Ordering::Relaxed)
                            || last_key.is_none_or(|k| now - k >= plan.keyframe_every);
                        if key {
                            last_key = Some(now);
                        }
                        let ts = (frame * 90_000 / plan.fps.max(1) as u64) as u32;
                        let held = holding.load(Ordering::Relaxed);
                        for l in layers.iter_mut() {
                            if held & (1 << l.layer.min(7)) != 0 {
                                continue;
                            }
                            let parts = l.bytes.div_ceil(MAX_VIDEO_PAYLOAD).max(1);
                            let size = l.bytes.div_ceil(parts);
                            if key {
                                l.tl0 = l.tl0.wrapping_add(1);
                            }
                            for part in 0..parts {
                                let meta = media::Vp8Meta {
                                    start: part == 0,
                                    keyframe: key,
                                    picture_id: l.picture_id,
                                    tl0picidx: l.tl0,
                                    width: l.height * 16 / 9,
                                    height: l.height,
                                };
                                // The layer is in the index's top byte, so that a receiver can
                                // tell which layer it got.
                                let index = (l.layer << 56) | l.index;
                                let pkt = rtp_packet(VP8_PT, l.ssrc, l.seq, ts, part + 1 == parts,
                                    media::payload(Some(meta), index, size, media::now_micros()));
                                let mut exts = Vec::new();
                                let mid_rid = with_mid_rid.load(Ordering::Relaxed);
                                if let Some(mid) = video_mid.as_ref().filter(|_| mid_rid) {
                                    exts.push(text_extension(rtc::sdp::extmap::SDES_MID_URI, mid));
                                }
                                if let Some(rid) = l.rid.filter(|_| mid_rid) {
                                    exts.push(text_extension(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI, rid));
                                }
                                if t.write_rtp_with_extensions(pkt, &exts).await.is_ok() {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                }
                                l.index += 1;
                                l.seq = l.seq.wrapping_add(1);
                            }
                            l.picture_id = (l.picture_id + 1) & 0x7fff;
                        }
                        frame += 1;
                    }
                }
            }
        });
        Pump {
            task,
            sent,
            mid_rid,
            held,
        }
    }
}

/// One outgoing video encoding of a pump.
struct LayerState {
    ssrc: u32,
    rid: Option<&'static str>,
    layer: u64,
    bytes: usize,
    height: u16,
    seq: u16,
    picture_id: u16,
    tl0: u8,
    index: u64,
}

/// The layer a synthetic video packet came from (see [`Client::start_media`]).
pub fn layer_of_index(index: u64) -> u8 {
    (index >> 56) as u8
}

fn rtp_packet(
    pt: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: bytes::Bytes,
) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload,
    }
}

/// A header extension whose value is a short string (mid, rid).
fn text_extension(uri: &'static str, value: &str) -> rtc::rtp::extension::HeaderExtension {
    rtc::rtp::extension::HeaderExtension::Custom {
        uri: uri.into(),
        extension: Box::new(TextExt(bytes::Bytes::copy_from_slice(value.as_bytes()))),
    }
}

#[derive(Debug, Clone)]
struct TextExt(bytes::Bytes);

impl rtc::shared::marshal::MarshalSize for TextExt {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl rtc::shared::marshal::Marshal for TextExt {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let n = self.0.len().min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        Ok(n)
    }
}

fn encoding(codec: RTCRtpCodec) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(rand::random::<u32>()),
            ..Default::default()
        },
        codec,
        ..Default::default()
    }
}

async fn handle_server(
    shared: &Arc<Shared>,
    subscriber: &Pc,
    publisher: Option<&Pc>,
    msg: ServerMessage,
) -> anyhow::Result<()> {
    match msg {
        ServerMessage::Offer { sdp, tracks } => {
            tracing::debug!(sdp = %sdp.replace("\r\n", " | "), "subscriber offer");
            {
                let live: std::collections::HashSet<TrackId> =
                    tracks.iter().map(|t| t.track_id.clone()).collect();
                let mut map = shared.sub_tracks.lock().await;
                *map = tracks.into_iter().map(|t| (t.mid.clone(), t)).collect();
                shared.remote.lock().await.retain(|id, _| live.contains(id));
                let mut readers = shared.readers.lock().unwrap_or_else(|e| e.into_inner());
                readers.retain(|id, task| {
                    let keep = live.contains(id);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
            }
            subscriber
                .set_remote_description(RTCSessionDescription::offer(sdp)?)
                .await?;
            let answer = subscriber.create_answer(None).await?;
            subscriber.set_local_description(answer).await?;
            let sdp = subscriber
                .local_description()
                .await
                .ok_or_else(|| anyhow!("no local description"))?
                .sdp;
            shared.send(&ClientMessage::Answer { sdp });
        }
        ServerMessage::Answer { sdp, .. } => {
            if let Some(p) = publisher {
                p.set_remote_description(RTCSessionDescription::answer(sdp)?)
                    .await?;
            }
        }
        ServerMessage::Candidate { target, candidate } => {
            let pc = match target {
                PcTarget::Subscriber => Some(subscriber),
                PcTarget::Publisher => publisher,
            };
            if let Some(pc) = pc {
                pc.add_ice_candidate(RTCIceCandidateInit {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid,
                    sdp_mline_index: candidate.sdp_mline_index,
                    username_fragment: candidate.username_fragment,
                    ..Default::default()
                })
                .await?;
            }
        }
        other => {
            let _ = shared.events.send(Event::Server(other));
        }
    }
    Ok(())
}

/// Marks keyframe requests for delivery to the application (a publishing client must see
/// them to send a keyframe).
#[derive(Default)]
pub(crate) struct KeyframeTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| {
                p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
            })
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for KeyframeTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
