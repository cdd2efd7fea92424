//! One signaling connection.
//!
//! [`classify`] is the pure state machine: given whether the client has joined and one
//! text frame, it says what to do. [`run`] is the IO around it, generic over the
//! WebSocket's sink and stream (axum's in production, channels in tests).
//!
//! A failing connection ends only itself: every error goes back to that client as an
//! `error` message and, unless fatal, the connection stays open.

use axum::extract::ws::{CloseFrame, Message};
use confab_proto::signal::PublishTrack;
use confab_proto::{
    ClientMessage, DisplayName, ErrorCode, IceCandidate, PROTOCOL_VERSION, PcTarget, RoomId,
    ServerMessage, TrackSource,
};
use confab_sfu::{JoinError, Participant, Sfu};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
}

/// What to do with one text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Tell the client it sent something wrong; keep the connection.
    Refuse(ServerMessage),
    /// Tell the client and close the connection.
    Fatal(ServerMessage),
    Join {
        room: RoomId,
        name: DisplayName,
    },
    Publish {
        sdp: String,
        tracks: Vec<PublishTrack>,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        target: PcTarget,
        candidate: IceCandidate,
    },
    Mute {
        source: TrackSource,
        muted: bool,
    },
    Subscription {
        track_id: confab_proto::TrackId,
        subscribed: bool,
        quality: confab_proto::Quality,
        height: Option<u32>,
    },
    Pin {
        participant_ids: Vec<confab_proto::ParticipantId>,
    },
    Leave,
}

/// The session state machine: not joined -> joined -> closed.
pub fn classify(joined: bool, text: &str, max_message_bytes: usize) -> Step {
    if text.len() > max_message_bytes {
        return Step::Refuse(ServerMessage::error(
            ErrorCode::MessageTooLarge,
            format!(
                "message of {} bytes exceeds the limit of {max_message_bytes} bytes",
                text.len()
            ),
        ));
    }
    let msg = match ClientMessage::decode(text) {
        Ok(m) => m,
        Err(e) => return Step::Refuse(ServerMessage::error(e.code(), e.to_string())),
    };
    match (joined, msg) {
        (
            false,
            ClientMessage::Join {
                protocol,
                room,
                name,
            },
        ) => {
            if protocol != PROTOCOL_VERSION {
                Step::Fatal(ServerMessage::fatal(
                    ErrorCode::UnsupportedProtocol,
                    format!(
                        "protocol version {protocol} is not supported; this server speaks {PROTOCOL_VERSION}"
                    ),
                ))
            } else {
                Step::Join { room, name }
            }
        }
        (true, ClientMessage::Join { .. }) => Step::Refuse(ServerMessage::error(
            ErrorCode::AlreadyJoined,
            "this connection has already joined a room",
        )),
        (false, m) => Step::Refuse(ServerMessage::error(
            ErrorCode::NotJoined,
            format!("{} before join: send join first", m.type_name()),
        )),
        (true, ClientMessage::Publish { sdp, tracks }) => Step::Publish { sdp, tracks },
        (true, ClientMessage::Answer { sdp }) => Step::Answer { sdp },
        (true, ClientMessage::Candidate { target, candidate }) => {
            Step::Candidate { target, candidate }
        }
        (true, ClientMessage::Mute { source, muted }) => Step::Mute { source, muted },
        (
            true,
            ClientMessage::Subscription {
                track_id,
                subscribed,
                quality,
                height,
                ..
            },
        ) => Step::Subscription {
            track_id,
            subscribed,
            quality,
            height,
        },
        (true, ClientMessage::Pin { participant_ids }) => Step::Pin { participant_ids },
        (true, ClientMessage::Leave) => Step::Leave,
    }
}

enum Flow {
    Continue,
    Close,
}

/// Serves one connection until the client leaves, disconnects or goes silent.
pub async fn run<S, R, E>(mut sink: S, mut stream: R, sfu: Sfu, limits: SessionLimits)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut joined: Option<(Participant, mpsc::Receiver<ServerMessage>)> = None;
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let silence_limit = limits.ping_interval * 3;
    loop {
        let event = async {
            match joined.as_mut() {
                Some((_, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let flow = tokio::select! {
            frame = stream.next() => {
                last_heard = Instant::now();
                match frame {
                    None | Some(Ok(Message::Close(_))) => Flow::Close,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket receive failed");
                        Flow::Close
                    }
                    Some(Ok(Message::Text(text))) => {
                        on_text(&mut sink, &mut joined, &sfu, text.as_str(), limits).await
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
                    let fatal = matches!(msg, ServerMessage::Error { fatal: true, .. });
                    match send(&mut sink, &msg).await {
                        Flow::Continue if !fatal => Flow::Continue,
                        _ => Flow::Close,
                    }
                }
                // The media plane removed this participant (its last message, if any,
                // was delivered above).
                None => Flow::Close,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > silence_limit {
                    tracing::info!("client silent, closing");
                    Flow::Close
                } else if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
        };
        if let Flow::Close = flow {
            break;
        }
    }
    if let Some((participant, _)) = joined {
        participant.leave().await;
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "bye".into(),
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
        Err(_) => Flow::Close,
    }
}

async fn on_text<S: Sink<Message> + Unpin>(
    sink: &mut S,
    joined: &mut Option<(Participant, mpsc::Receiver<ServerMessage>)>,
    sfu: &Sfu,
    text: &str,
    limits: SessionLimits,
) -> Flow {
    let step = classify(joined.is_some(), text, limits.max_message_bytes);
    let participant = joined.as_ref().map(|(p, _)| p);
    match (step, participant) {
        (Step::Refuse(msg), _) => send(sink, &msg).await,
        (Step::Fatal(msg), _) => {
            send(sink, &msg).await;
            Flow::Close
        }
        (Step::Join { room, name }, _) => match sfu.join(room, name).await {
            Ok((p, rx)) => {
                tracing::debug!(participant = %p.id(), room = %p.room(), "session joined");
                *joined = Some((p, rx));
                Flow::Continue
            }
            Err(e) => {
                let code = match e {
                    JoinError::RoomFull { .. } => ErrorCode::RoomFull,
                    JoinError::ShuttingDown => ErrorCode::ServerShuttingDown,
                };
                send(sink, &ServerMessage::fatal(code, e.to_string())).await;
                Flow::Close
            }
        },
        (Step::Publish { sdp, tracks }, Some(p)) => {
            p.publish(sdp, tracks).await;
            Flow::Continue
        }
        (Step::Answer { sdp }, Some(p)) => {
            p.answer(sdp).await;
            Flow::Continue
        }
        (Step::Candidate { target, candidate }, Some(p)) => {
            p.candidate(target, candidate).await;
            Flow::Continue
        }
        (Step::Mute { source, muted }, Some(p)) => {
            p.mute(source, muted).await;
            Flow::Continue
        }
        (
            Step::Subscription {
                track_id,
                subscribed,
                quality,
                height,
            },
            Some(p),
        ) => {
            p.subscription(track_id, subscribed, quality, height).await;
            Flow::Continue
        }
        (Step::Pin { participant_ids }, Some(p)) => {
            p.pin(participant_ids).await;
            Flow::Continue
        }
        (Step::Leave, _) => Flow::Close,
        // classify() only yields these once joined.
        (_, None) => Flow::Continue,
    }
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
            let step = classify(*joined, text, 1024);
            assert_eq!(code(&step), *want, "joined={joined} {text}");
        }
        assert!(matches!(classify(false, join, 1024), Step::Join { .. }));
        assert_eq!(classify(true, r#"{"type":"leave"}"#, 1024), Step::Leave);
        assert!(matches!(
            classify(
                false,
                r#"{"type":"join","protocol":2,"room":"r","name":"Ada"}"#,
                1024
            ),
            Step::Fatal(_)
        ));
    }

    #[test]
    fn oversized_is_refused_before_parsing() {
        let big = format!(r#"{{"type":"answer","sdp":"{}"}}"#, "x".repeat(2000));
        assert_eq!(
            code(&classify(true, &big, 1024)),
            Some(ErrorCode::MessageTooLarge)
        );
    }
}
