//! Room chat: validation of what a client sends and the bounded history a late joiner gets.

use confab_proto::{ChatOut, DisplayName, ParticipantId};
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("chat message is {len} bytes; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("chat message is empty")]
    Empty,
    #[error("chat message is not valid: {0}")]
    Invalid(String),
}

/// Validates one chat frame from a client and returns the text to relay, with the
/// frame's request id (also when the frame is refused, when it could be read).
pub fn parse_chat(
    data: &[u8],
    max_bytes: usize,
) -> (Option<confab_proto::RequestId>, Result<String, ChatError>) {
    let mut id = None;
    let r = parse_chat_text(data, max_bytes, &mut id);
    (id, r)
}

fn parse_chat_text(
    data: &[u8],
    max_bytes: usize,
    id: &mut Option<confab_proto::RequestId>,
) -> Result<String, ChatError> {
    // The JSON envelope adds a few bytes; bound the frame before parsing it.
    if data.len() > max_bytes + 256 {
        return Err(ChatError::TooLong {
            len: data.len(),
            max: max_bytes,
        });
    }
    let confab_proto::ChatIn::Chat { text, request_id } =
        serde_json::from_slice(data).map_err(|e| ChatError::Invalid(e.to_string()))?;
    *id = request_id;
    if text.len() > max_bytes {
        return Err(ChatError::TooLong {
            len: text.len(),
            max: max_bytes,
        });
    }
    if text.trim().is_empty() {
        return Err(ChatError::Empty);
    }
    Ok(text)
}

/// The last `capacity` messages of a room, numbered in order.
#[derive(Debug, Clone)]
pub struct ChatLog {
    next_id: u64,
    capacity: usize,
    history: VecDeque<ChatOut>,
}

impl ChatLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            next_id: 1,
            capacity,
            history: VecDeque::new(),
        }
    }

    /// Stamps a message with the server's id and time and keeps it.
    pub fn push(
        &mut self,
        from: ParticipantId,
        name: DisplayName,
        text: String,
        ts_ms: u64,
    ) -> ChatOut {
        let msg = ChatOut::Chat {
            id: self.next_id,
            from,
            name,
            text,
            ts: ts_ms,
            history: false,
        };
        self.next_id += 1;
        if self.capacity > 0 {
            if self.history.len() == self.capacity {
                self.history.pop_front();
            }
            self.history.push_back(msg.clone());
        }
        msg
    }

    /// Takes another copy's history into this one (a new copy of the room, before anyone
    /// saw its own): the union by sender, time and text, oldest first, numbered afresh.
    pub fn merge(&mut self, other: Vec<ChatOut>) {
        let key = |m: &ChatOut| match m {
            ChatOut::Chat { from, ts, text, .. } => (*ts, from.clone(), text.clone()),
        };
        let mut all: Vec<ChatOut> = self.history.drain(..).chain(other).collect();
        all.sort_by_key(key);
        all.dedup_by_key(|m| key(m));
        let skip = all.len().saturating_sub(self.capacity);
        self.next_id = 1;
        for m in all.into_iter().skip(skip) {
            let ChatOut::Chat {
                from,
                name,
                text,
                ts,
                ..
            } = m;
            self.push(from, name, text, ts);
        }
    }

    /// The history, oldest first, marked as replayed.
    pub fn replay(&self) -> impl Iterator<Item = ChatOut> + '_ {
        self.history.iter().cloned().map(|m| match m {
            ChatOut::Chat {
                id,
                from,
                name,
                text,
                ts,
                ..
            } => ChatOut::Chat {
                id,
                from,
                name,
                text,
                ts,
                history: true,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histories_are_one_history() {
        let id = |s: &str| ParticipantId::from_wire(s);
        let name = |s: &str| DisplayName::parse(s).unwrap();
        let mut a = ChatLog::new(3);
        a.push(id("p1"), name("A"), "one".into(), 10);
        a.push(id("p2"), name("B"), "three".into(), 30);
        let mut b = ChatLog::new(3);
        b.push(id("p1"), name("A"), "one".into(), 10);
        b.push(id("p3"), name("C"), "two".into(), 20);
        b.push(id("p4"), name("D"), "zero".into(), 5);
        let mut c = ChatLog::new(3);
        c.merge(a.replay().collect());
        c.merge(b.replay().collect());
        let got: Vec<(u64, String)> = c
            .replay()
            .map(|m| match m {
                ChatOut::Chat { id, text, .. } => (id, text),
            })
            .collect();
        assert_eq!(
            got,
            vec![(1, "one".into()), (2, "two".into()), (3, "three".into())],
            "deduplicated, in time order, the oldest beyond capacity dropped, renumbered"
        );
        let next = c.push(id("p1"), name("A"), "four".into(), 40);
        assert!(matches!(next, ChatOut::Chat { id: 4, .. }));
    }

    #[test]
    fn validation() {
        let cases: &[(&str, Result<&str, ChatError>)] = &[
            (r#"{"type":"chat","text":"hello"}"#, Ok("hello")),
            (r#"{"type":"chat","text":"   "}"#, Err(ChatError::Empty)),
            (
                r#"{"type":"chat","text":"12345678901"}"#,
                Err(ChatError::TooLong { len: 11, max: 10 }),
            ),
        ];
        for (input, want) in cases {
            let (_, got) = parse_chat(input.as_bytes(), 10);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{input}"
            );
        }
        assert!(matches!(
            parse_chat(b"not json", 10).1,
            Err(ChatError::Invalid(_))
        ));
        assert!(matches!(
            parse_chat(br#"{"type":"chat","text":"x","from":"PA_1"}"#, 10).1,
            Err(ChatError::Invalid(_))
        ));
        let huge = format!(r#"{{"type":"chat","text":"{}"}}"#, "x".repeat(5000));
        assert!(matches!(
            parse_chat(huge.as_bytes(), 10).1,
            Err(ChatError::TooLong { .. })
        ));
        // The request id comes back with the refusal.
        let (id, r) = parse_chat(br#"{"type":"chat","text":" ","request_id":"c1"}"#, 10);
        assert_eq!(id, Some(confab_proto::RequestId::Text("c1".into())));
        assert_eq!(r, Err(ChatError::Empty));
    }

    #[test]
    fn history_is_bounded_and_ordered() {
        let mut log = ChatLog::new(3);
        let pid = ParticipantId::from_suffix("a");
        let name = DisplayName::parse("A").unwrap();
        for i in 0..5 {
            log.push(pid.clone(), name.clone(), format!("m{i}"), i);
        }
        let texts: Vec<(u64, String, bool)> = log
            .replay()
            .map(
                |ChatOut::Chat {
                     id, text, history, ..
                 }| (id, text, history),
            )
            .collect();
        assert_eq!(
            texts,
            vec![
                (3, "m2".to_string(), true),
                (4, "m3".to_string(), true),
                (5, "m4".to_string(), true)
            ]
        );
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut log = ChatLog::new(0);
        log.push(
            ParticipantId::from_suffix("a"),
            DisplayName::parse("A").unwrap(),
            "x".into(),
            0,
        );
        assert_eq!(log.replay().count(), 0);
    }
}
