//! The signaling socket: reader and writer tasks, waiting for replies, handling server messages; and the keyframe-request tap.

#[allow(unused_imports)]
use super::*;

/// A new offer on `pc`, set as its local description: its SDP.
pub(super) async fn local_offer(pc: &Pc) -> anyhow::Result<String> {
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    Ok(pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?
        .sdp)
}

pub(super) type WsStream = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;
pub(super) type WsSink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    WsMessage,
>;

pub(super) fn spawn_writer(
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
pub(super) enum Answer {
    /// (participant id, the others, the resume token, the ICE servers).
    Joined(
        ParticipantId,
        Vec<ParticipantInfo>,
        String,
        Vec<confab_proto::signal::IceServer>,
    ),
    /// The room is on another node: join there.
    Redirect(String),
}

/// Waits for `joined` (or a fatal error) before the stream goes to the reader:
/// (participant id, the others, the resume token).
pub(super) async fn wait_joined(
    ws_rx: &mut WsStream,
) -> anyhow::Result<(ParticipantId, Vec<ParticipantInfo>, String)> {
    match wait_answer(ws_rx).await? {
        Answer::Joined(id, others, token, _) => Ok((id, others, token)),
        Answer::Redirect(url) => bail!("redirected to {url} while resuming: join afresh"),
    }
}

/// Waits for `joined`, a `redirect` or a fatal error.
pub(super) async fn wait_answer(ws_rx: &mut WsStream) -> anyhow::Result<Answer> {
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
                ice_servers,
                ..
            } => {
                return Ok(Answer::Joined(
                    participant.id,
                    participants,
                    resume_token,
                    ice_servers,
                ));
            }
            ServerMessage::Redirect { url, .. } => return Ok(Answer::Redirect(url)),
            ServerMessage::Error { code, message, .. } => {
                return Err(JoinRefused { code, message }.into());
            }
            other => bail!("unexpected message before joined: {other:?}"),
        }
    }
}

/// The reader applies offers, answers and candidates; everything else is an event.
pub(super) fn spawn_reader(
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

pub(super) async fn handle_server(
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
            let first = subscriber.remote_description().await.is_none();
            let passive = (shared.tcp && first).then(|| passive_tcp_candidates(&sdp));
            subscriber
                .set_remote_description(RTCSessionDescription::offer(sdp)?)
                .await?;
            connect_tcp(subscriber, passive).await?;
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
                let first = p.remote_description().await.is_none();
                let passive = (shared.tcp && first).then(|| passive_tcp_candidates(&sdp));
                p.set_remote_description(RTCSessionDescription::answer(sdp)?)
                    .await?;
                connect_tcp(p, passive).await?;
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

/// The passive TCP candidates of a server description (`a=candidate:` lines of component
/// 1: RTP and RTCP share the connection).
fn passive_tcp_candidates(sdp: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|c| {
            c.starts_with("candidate:")
                && c.split(' ')
                    .nth(2)
                    .is_some_and(|t| t.eq_ignore_ascii_case("tcp"))
                && c.contains("tcptype passive")
        })
        .filter(|c| c.split(' ').nth(1) == Some("1") && seen.insert(c.to_string()))
        .map(str::to_owned)
        .collect()
}

/// webrtc-rs connects to a remote passive TCP candidate when it is added as a candidate
/// (not when it comes in the description): hand it the server's.
async fn connect_tcp(pc: &Pc, passive: Option<Vec<String>>) -> anyhow::Result<()> {
    for candidate in passive.into_iter().flatten() {
        pc.add_ice_candidate(RTCIceCandidateInit {
            candidate,
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}
