//! One signaling connection.
//!
//! [`classify`] is the pure state machine: given whether the client has joined and one
//! text frame, it says what to do. [`run`] is the IO around it, generic over the
//! WebSocket's sink and stream (axum's in production, channels in tests).
//!
//! A failing connection ends only itself: every error goes back to that client as an
//! `error` message and, unless fatal, the connection stays open.

use crate::auth::Verifier;
use axum::extract::ws::{CloseFrame, Message};
use confab_proto::{ClientMessage, DisplayName, ErrorCode, RequestId, RoomId, ServerMessage};
use confab_sfu::{JoinError, JoinOptions, Participant, Sfu};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

mod classify;
pub use classify::{Step, classify};

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    /// Messages a client may send per second (twice as many in a burst); the excess is
    /// refused with `rate_limited`.
    pub messages_per_second: u32,
    /// How long a participant whose connection dropped is kept for its client to resume
    /// (`join.resume`); zero: it leaves at once.
    pub resume_window: Duration,
    /// A connection must `join` within this time.
    pub join_timeout: Duration,
    /// Media sections a `publish` offer may have (any direction, stopped ones included).
    pub max_offer_sections: usize,
    /// `publish` messages one participant may send per second (five times as many in a
    /// burst): each costs its media thread an SDP parse.
    pub publishes_per_second: u32,
}

/// What a session needs besides its socket.
#[derive(Debug, Clone)]
pub struct SessionEnv {
    pub sfu: Sfu,
    pub limits: SessionLimits,
    pub verifier: Arc<Verifier>,
    pub resumes: crate::resume::Resumes,
    /// Several nodes: where rooms live. `None`: a single node, every room is here.
    pub cluster: Option<confab_cluster::Cluster>,
    /// Budgets and deadlines that bite, counted.
    pub guards: Arc<crate::guard::Guards>,
    /// ICE servers for `joined`, with credentials minted per participant.
    pub turn: Arc<crate::turn::TurnConfig>,
}

/// A `joined` gets the ICE servers, with credentials for its participant (fresh on every
/// `joined`, a resumed session's included).
fn with_ice_servers(env: &SessionEnv, mut msg: ServerMessage) -> ServerMessage {
    if let ServerMessage::Joined {
        participant,
        ice_servers,
        ..
    } = &mut msg
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        *ice_servers = env.turn.ice_servers(participant.id.as_str(), now);
    }
    msg
}

/// A joined session: the participant, its events, and the token that resumes it.
type Joined = (Participant, mpsc::Receiver<ServerMessage>, String);

/// Messages refused for their rate before the connection is closed as abusive.
const MAX_RATE_REFUSALS: u32 = 500;
/// How long a connection closed for an oversized frame is held open for its peer to read
/// the close frame.
const LINGER: Duration = Duration::from_secs(1);
/// `publish` messages refused (rate or offer checks) before the connection is closed as
/// abusive.
const MAX_PUBLISH_REFUSALS: u32 = 20;

/// The per-connection state `on_text` needs besides the socket.
struct Conn {
    joined: Option<Joined>,
    /// Held until the connection joins: its place under the not-yet-joined caps.
    pending: Option<crate::guard::PendingSlot>,
    publishes: governor::DefaultDirectRateLimiter,
    publish_refusals: u32,
    /// A connection check: when it must end (set on joining).
    check_until: Option<tokio::time::Instant>,
}

/// Whether a WebSocket receive error is a frame or message over the hard limit (the
/// socket then closes with 1009). The error type is the transport's: tungstenite says
/// "Space limit exceeded: Message too long: N > M" or "Frame too long".
fn is_too_large(e: &dyn std::fmt::Display) -> bool {
    let s = e.to_string();
    s.contains("too long") || s.contains("Space limit exceeded")
}

enum Flow {
    Continue,
    /// The end: the client left, or was told a fatal error.
    Close,
    /// The connection broke without a goodbye: the session may be resumed.
    Lost,
}

/// Serves one connection until the client leaves, disconnects or goes silent. `pending`
/// is its place under the not-yet-joined caps, given back once it joins.
pub async fn run<S, R, E>(
    mut sink: S,
    mut stream: R,
    env: SessionEnv,
    pending: Option<crate::guard::PendingSlot>,
) where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let limits = env.limits;
    let rate = std::num::NonZeroU32::new(limits.messages_per_second.max(1)).expect("at least 1");
    let limiter = governor::RateLimiter::direct(
        governor::Quota::per_second(rate)
            .allow_burst(rate.saturating_mul(2.try_into().expect("2"))),
    );
    let publish_rate =
        std::num::NonZeroU32::new(limits.publishes_per_second.max(1)).expect("at least 1");
    let mut conn = Conn {
        joined: None,
        pending,
        publishes: governor::RateLimiter::direct(
            governor::Quota::per_second(publish_rate)
                .allow_burst(publish_rate.saturating_mul(5.try_into().expect("5"))),
        ),
        publish_refusals: 0,
        check_until: None,
    };
    let mut refused = 0u32;
    let mut last_refusal_notice: Option<Instant> = None;
    let join_deadline = tokio::time::sleep(limits.join_timeout);
    tokio::pin!(join_deadline);
    let check_deadline = tokio::time::sleep(confab_proto::CHECK_LIFETIME);
    tokio::pin!(check_deadline);
    let mut check_armed = false;
    let mut close_code = 1000;
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let silence_limit = limits.ping_interval * 3;
    loop {
        if !check_armed && let Some(t) = conn.check_until {
            check_deadline.as_mut().reset(t);
            check_armed = true;
        }
        let joined = &mut conn.joined;
        let waiting_for_join = joined.is_none();
        let event = async {
            match joined.as_mut() {
                Some((_, rx, _)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let flow = tokio::select! {
            frame = stream.next() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Message::Close(_))) => Flow::Close,
                    None => Flow::Lost,
                    Some(Err(e)) if is_too_large(&e) => {
                        env.guards.oversized_frames.bit(
                            "websocket closed: a frame over signal.hard_max_message_bytes (1009)",
                        );
                        close_code = 1009;
                        Flow::Close
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket receive failed");
                        Flow::Lost
                    }
                    Some(Ok(Message::Text(text))) if limiter.check().is_err() => {
                        refused += 1;
                        if refused > MAX_RATE_REFUSALS {
                            env.guards.abusive_closed.bit("connection closed: it kept exceeding the message rate");
                            send(&mut sink, &ServerMessage::fatal(
                                ErrorCode::RateLimited,
                                "too many messages: the connection is closed",
                            )).await;
                            Flow::Close
                        } else if last_refusal_notice.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            // One notice a second: refusing must not cost more than the flood.
                            last_refusal_notice = Some(Instant::now());
                            drop(text);
                            send(&mut sink, &ServerMessage::error(
                                ErrorCode::RateLimited,
                                format!(
                                    "more than {} messages per second: messages are being dropped",
                                    limits.messages_per_second
                                ),
                            )).await
                        } else {
                            Flow::Continue
                        }
                    }
                    Some(Ok(Message::Text(text))) => {
                        on_text(&mut sink, &mut conn, &env, text.as_str()).await
                    }
                    Some(Ok(Message::Binary(_))) => {
                        send(&mut sink, &ServerMessage::error(
                            ErrorCode::InvalidMessage,
                            "binary frames are not part of the protocol; send JSON text",
                        )).await
                    }
                    Some(Ok(_)) => Flow::Continue,
                }
            }
            ev = event => match ev {
                Some(msg) => {
                    let msg = with_ice_servers(&env, msg);
                    let fatal = matches!(msg, ServerMessage::Error { fatal: true, .. });
                    match send(&mut sink, &msg).await {
                        Flow::Continue if fatal => Flow::Close,
                        flow => flow,
                    }
                }
                // The media plane removed this participant (its last message, if any,
                // was delivered above).
                None => Flow::Close,
            },
            _ = &mut join_deadline, if waiting_for_join => {
                env.guards.join_timeouts.bit(
                    "connection closed: no join within signal.join_timeout_ms",
                );
                send(&mut sink, &ServerMessage::fatal(
                    ErrorCode::Timeout,
                    format!(
                        "no join within {} s: the connection is closed",
                        limits.join_timeout.as_secs_f32()
                    ),
                )).await;
                Flow::Close
            }
            _ = &mut check_deadline, if check_armed => {
                send(&mut sink, &ServerMessage::fatal(
                    ErrorCode::Timeout,
                    format!(
                        "a connection check lasts {} s at most: it is over",
                        confab_proto::CHECK_LIFETIME.as_secs()
                    ),
                )).await;
                Flow::Close
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > silence_limit {
                    tracing::info!("client silent, closing");
                    Flow::Lost
                } else if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    Flow::Lost
                } else {
                    Flow::Continue
                }
            }
        };
        match flow {
            Flow::Continue => {}
            Flow::Close => {
                if let Some((participant, _, _)) = conn.joined.take() {
                    participant.leave().await;
                }
                break;
            }
            Flow::Lost => {
                if let Some((participant, events, token)) = conn.joined.take() {
                    let check = conn.check_until.is_some();
                    if check || limits.resume_window.is_zero() || env.sfu.is_draining() {
                        participant.leave().await;
                    } else {
                        env.resumes
                            .park(token, participant, events, limits.resume_window);
                    }
                }
                break;
            }
        }
    }
    let reason = if close_code == 1009 {
        "message too big"
    } else {
        "bye"
    };
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close_code,
            reason: reason.into(),
        })))
        .await;
    let _ = sink.close().await;
    if close_code == 1009 {
        // Lingering close: the rest of the refused frame may still be arriving, and a
        // socket closed with unread data resets the connection, which can destroy the
        // close frame before the peer reads it. Hold the socket until the peer closes
        // (or the stream fails), for at most LINGER.
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                match stream.next().await {
                    None => break,
                    Some(Ok(_)) => {}
                    // A failed stream cannot say when the peer closes: hold it.
                    Some(Err(_)) => std::future::pending::<()>().await,
                }
            }
        })
        .await;
    }
}

/// Sends `msg` (a fatal error) on a connection that is not served, and closes it.
pub async fn refuse<S: Sink<Message> + Unpin>(mut sink: S, msg: ServerMessage) {
    send(&mut sink, &msg).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: "refused".into(),
        })))
        .await;
    let _ = sink.close().await;
}

async fn send<S: Sink<Message> + Unpin>(sink: &mut S, msg: &ServerMessage) -> Flow {
    let text = match serde_json::to_string(msg) {
        Ok(t) => t,
        Err(_) => return Flow::Continue,
    };
    match sink.send(Message::Text(text.into())).await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Lost,
    }
}

/// Takes back a parked session on this connection: a fresh `joined`, then what the
/// client missed, in order. `None` (after telling the client): nothing to resume.
async fn resume<S: Sink<Message> + Unpin>(
    sink: &mut S,
    env: &SessionEnv,
    room: &RoomId,
    token: String,
    request_id: Option<RequestId>,
) -> Option<Joined> {
    let Some(resumed) = env.resumes.claim(&token, room).await else {
        tracing::info!(room = %room, "resume refused: no such session");
        send(
            sink,
            &ServerMessage::fatal(
                ErrorCode::ResumeFailed,
                "that session is gone: join again without `resume`",
            )
            .reply_to(request_id),
        )
        .await;
        return None;
    };
    let crate::resume::Resumed {
        participant,
        mut events,
        mut missed,
    } = resumed;
    participant.resync().await;
    // The fresh `joined` comes after whatever was already queued: hold those back.
    let joined = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(m @ ServerMessage::Joined { .. })) => break Some(m),
            Ok(Some(ServerMessage::Error { fatal: true, .. })) | Ok(None) | Err(_) => break None,
            Ok(Some(m)) => missed.push(m),
        }
    };
    let Some(joined) = joined else {
        send(
            sink,
            &ServerMessage::fatal(
                ErrorCode::ResumeFailed,
                "the session ended while resuming: join again without `resume`",
            )
            .reply_to(request_id),
        )
        .await;
        participant.leave().await;
        return None;
    };
    tracing::info!(participant = %participant.id(), missed = missed.len(), "session resumed");
    send(sink, &with_ice_servers(env, joined).reply_to(request_id)).await;
    for m in &missed {
        send(sink, m).await;
    }
    Some((participant, events, token))
}

/// With several nodes, whether this node serves `room`: `None` if it does (the room is
/// open here, or was just placed here); otherwise the client was told where to go, or
/// why it cannot join now, and the connection ends.
async fn route<S: Sink<Message> + Unpin>(
    sink: &mut S,
    env: &SessionEnv,
    room: &RoomId,
    request_id: &Option<RequestId>,
) -> Option<Flow> {
    use confab_cluster::{ClusterError, Placement};
    let cluster = env.cluster.as_ref()?;
    // Cascade: every node serves every room (the copies on the nodes are one meeting).
    if cluster.mode() == confab_cluster::ClusterMode::Cascade {
        return None;
    }
    // A room open here is served without Redis, so an outage never stops a meeting.
    if env.sfu.hosts(room) {
        return None;
    }
    let message = match cluster.place(room).await {
        Ok(Placement::Here) => return None,
        Ok(Placement::There(node)) => {
            tracing::debug!(room = %room, node = %node.id, "join redirected");
            send(
                sink,
                &ServerMessage::Redirect {
                    url: node.url,
                    room: room.clone(),
                    node: node.id,
                },
            )
            .await;
            return Some(Flow::Close);
        }
        Err(ClusterError::NoNode) => {
            "no node takes new rooms now (every node is draining): try again in a moment"
                .to_string()
        }
        Err(e) => format!("this room cannot be placed now ({e}): try again in a moment"),
    };
    tracing::debug!(room = %room, "join refused: no placement");
    send(
        sink,
        &ServerMessage::fatal(ErrorCode::ClusterUnavailable, message).reply_to(request_id.clone()),
    )
    .await;
    Some(Flow::Close)
}

async fn on_text<S: Sink<Message> + Unpin>(
    sink: &mut S,
    conn: &mut Conn,
    env: &SessionEnv,
    text: &str,
) -> Flow {
    let joined = &mut conn.joined;
    let (request_id, step) = classify(joined.is_some(), text, env.limits.max_message_bytes);
    let participant = joined.as_ref().map(|(p, _, _)| p);
    match (step, participant) {
        (Step::Refuse(msg), _) => send(sink, &msg).await,
        (Step::Fatal(msg), _) => {
            send(sink, &msg).await;
            Flow::Close
        }
        (
            Step::Join {
                room,
                resume: Some(token),
                ..
            },
            _,
        ) => {
            if let Some(flow) = route(sink, env, &room, &request_id).await {
                return flow;
            }
            match resume(sink, env, &room, token, request_id).await {
                Some(j) => {
                    *joined = Some(j);
                    conn.pending = None;
                    Flow::Continue
                }
                None => Flow::Close,
            }
        }
        (
            Step::Join {
                room,
                name,
                token,
                resume: None,
                check,
            },
            _,
        ) => {
            let claims = match env.verifier.admit(token.as_deref(), room.as_str()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(room = %room, error = %e, "join refused");
                    send(
                        sink,
                        &ServerMessage::fatal(ErrorCode::Unauthorized, e.to_string())
                            .reply_to(request_id),
                    )
                    .await;
                    return Flow::Close;
                }
            };
            let (name, opts) = match claims {
                Some(c) => {
                    let name = c
                        .name
                        .as_deref()
                        .and_then(|n| DisplayName::parse(n).ok())
                        .unwrap_or(name);
                    let opts = JoinOptions {
                        grants: c.grants,
                        identity: Some(c.sub),
                        token_id: c.jti,
                        ..JoinOptions::default()
                    };
                    (name, opts)
                }
                None => (name, JoinOptions::default()),
            };
            // A connection check: the token was checked for `room`; the check gets a room
            // of its own on this node (it tests the paths to this node), where it is
            // hidden and may only receive, for CHECK_LIFETIME.
            let (room, name, opts) = if check {
                let Some(check) = check_join() else {
                    return Flow::Close;
                };
                conn.check_until = Some(tokio::time::Instant::now() + confab_proto::CHECK_LIFETIME);
                check
            } else {
                if let Some(flow) = route(sink, env, &room, &request_id).await {
                    return flow;
                }
                (room, name, opts)
            };
            let resume_token = crate::resume::Resumes::new_token();
            let opts = JoinOptions {
                resume_token: resume_token.clone(),
                request_id: request_id.clone(),
                ..opts
            };
            match env.sfu.join(room, name, opts).await {
                Ok((p, rx)) => {
                    tracing::debug!(participant = %p.id(), room = %p.room(), "session joined");
                    *joined = Some((p, rx, resume_token));
                    conn.pending = None;
                    Flow::Continue
                }
                Err(e) => {
                    let code = match e {
                        JoinError::RoomFull { .. } => ErrorCode::RoomFull,
                        JoinError::ShuttingDown => ErrorCode::ServerShuttingDown,
                        JoinError::TooManyRooms { .. } => ErrorCode::LimitReached,
                        JoinError::Banned { .. } => ErrorCode::Banned,
                    };
                    send(
                        sink,
                        &ServerMessage::fatal(code, e.to_string()).reply_to(request_id),
                    )
                    .await;
                    Flow::Close
                }
            }
        }
        (Step::Forward(msg), Some(p)) => {
            // A publish is checked here, on the signaling side, so that what reaches the
            // media thread is bounded: a rate, and the offer's shape (one pass over its lines).
            let refusal = match &msg {
                ClientMessage::Publish { sdp, tracks } => {
                    publish_refusal(&conn.publishes, env, sdp, tracks)
                }
                _ => None,
            };
            match refusal {
                None => {
                    p.send(request_id, msg).await;
                    Flow::Continue
                }
                Some(msg) => {
                    conn.publish_refusals += 1;
                    if conn.publish_refusals > MAX_PUBLISH_REFUSALS {
                        env.guards.abusive_closed.bit(
                            "connection closed: its publish offers were refused again and again",
                        );
                        send(
                            sink,
                            &ServerMessage::fatal(
                                ErrorCode::RateLimited,
                                "too many refused publish offers: the connection is closed",
                            )
                            .reply_to(request_id),
                        )
                        .await;
                        Flow::Close
                    } else {
                        send(sink, &msg.reply_to(request_id)).await
                    }
                }
            }
        }
        (Step::Leave, _) => Flow::Close,
        // classify() only yields these once joined.
        (_, None) => Flow::Continue,
    }
}

/// Why a `publish` is refused before it reaches the media thread, if it is.
fn publish_refusal(
    publishes: &governor::DefaultDirectRateLimiter,
    env: &SessionEnv,
    sdp: &str,
    tracks: &[confab_proto::signal::PublishTrack],
) -> Option<ServerMessage> {
    if publishes.check().is_err() {
        env.guards
            .publish_rate
            .bit("publish refused: over signal.publishes_per_second");
        return Some(ServerMessage::error(
            ErrorCode::RateLimited,
            format!(
                "more than {} publish offers per second: this one is refused",
                env.limits.publishes_per_second
            ),
        ));
    }
    let e = confab_sfu::sdp::check_offer(
        sdp,
        tracks.iter().map(|t| t.mid.as_str()),
        env.limits.max_offer_sections,
    )
    .err()?;
    env.guards
        .offers_refused
        .bit("publish refused before the media thread: offer over its limits");
    let code = match e {
        confab_sfu::sdp::OfferRefusal::TooManySections { .. } => ErrorCode::LimitReached,
        confab_sfu::sdp::OfferRefusal::UnknownMids(_) => ErrorCode::UnknownTrack,
    };
    Some(ServerMessage::error(code, e.to_string()))
}

/// The room, name and options of a connection check: a fresh room, hidden and receive-only.
fn check_join() -> Option<(RoomId, DisplayName, JoinOptions)> {
    let room = RoomId::parse(&format!("check.{:016x}", rand::random::<u64>())).ok()?;
    let name = DisplayName::parse("Connection check").ok()?;
    let opts = JoinOptions {
        grants: confab_proto::signal::Grants {
            can_publish: false,
            can_subscribe: true,
            can_chat: false,
            room_admin: false,
            hidden: true,
        },
        ..JoinOptions::default()
    };
    Some((room, name, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(step: &Step) -> Option<ErrorCode> {
        match step {
            Step::Refuse(ServerMessage::Error {
                code, fatal: false, ..
            }) => Some(*code),
            Step::Fatal(ServerMessage::Error {
                code, fatal: true, ..
            }) => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn state_machine() {
        let join = r#"{"type":"join","protocol":1,"room":"r","name":"Ada"}"#;
        let answer = r#"{"type":"answer","sdp":"v=0"}"#;
        let cases: &[(bool, &str, Option<ErrorCode>)] = &[
            (false, join, None),
            (true, join, Some(ErrorCode::AlreadyJoined)),
            (false, answer, Some(ErrorCode::NotJoined)),
            (true, answer, None),
            (
                false,
                r#"{"type":"join","protocol":2,"room":"r","name":"Ada"}"#,
                Some(ErrorCode::UnsupportedProtocol),
            ),
            (false, "{oops", Some(ErrorCode::MalformedMessage)),
            (true, r#"{"type":"explode"}"#, Some(ErrorCode::UnknownType)),
            (
                true,
                r#"{"type":"mute","source":"camera"}"#,
                Some(ErrorCode::InvalidMessage),
            ),
            (true, r#"{"type":"leave"}"#, None),
        ];
        for (joined, text, want) in cases {
            let (_, step) = classify(*joined, text, 1024);
            assert_eq!(code(&step), *want, "joined={joined} {text}");
        }
        assert!(matches!(
            classify(false, join, 1024).1,
            Step::Join { check: false, .. }
        ));
        // A connection check joins; a check that resumes is refused.
        let check = r#"{"type":"join","protocol":1,"room":"r","name":"x","check":true}"#;
        assert!(matches!(
            classify(false, check, 1024).1,
            Step::Join { check: true, .. }
        ));
        let both =
            r#"{"type":"join","protocol":1,"room":"r","name":"x","check":true,"resume":"t"}"#;
        assert_eq!(
            code(&classify(false, both, 1024).1),
            Some(ErrorCode::InvalidMessage)
        );
        assert_eq!(classify(true, r#"{"type":"leave"}"#, 1024).1, Step::Leave);
        assert!(matches!(
            classify(
                false,
                r#"{"type":"join","protocol":2,"room":"r","name":"Ada"}"#,
                1024
            )
            .1,
            Step::Fatal(_)
        ));
        // Refusals name the request.
        let (id, step) = classify(
            false,
            r#"{"type":"pin","participant_ids":[],"request_id":4}"#,
            1024,
        );
        assert_eq!(id, Some(RequestId::Number(4)));
        let Step::Refuse(m) = step else {
            panic!("{step:?}")
        };
        assert_eq!(m.request_id(), Some(&RequestId::Number(4)));
    }

    #[test]
    fn oversized_is_refused_before_parsing() {
        let big = format!(r#"{{"type":"answer","sdp":"{}"}}"#, "x".repeat(2000));
        assert_eq!(
            code(&classify(true, &big, 1024).1),
            Some(ErrorCode::MessageTooLarge)
        );
    }
}
