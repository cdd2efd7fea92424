//! Ids are newtypes so a participant id can never be passed where a track id is expected.
//! Room ids and display names come from clients, so they are validated on construction.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a name supplied by a client was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("room name must be 1 to {max} characters of letters, digits, '-', '_' or '.'")]
    InvalidRoom { max: usize },
    #[error("display name must be 1 to {max} characters, without control characters")]
    InvalidName { max: usize },
}

/// A room's name, as typed by users and as it appears in `/room/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(String);

impl RoomId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::InvalidRoom { max: Self::MAX_LEN })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RoomId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A participant's display name: trimmed, bounded, printable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        let n = t.chars().count();
        if n == 0 || n > Self::MAX_CHARS || t.chars().any(char::is_control) {
            return Err(IdError::InvalidName {
                max: Self::MAX_CHARS,
            });
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DisplayName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DisplayName::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! server_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Builds the id from a server-chosen unique suffix.
            pub fn from_suffix(suffix: impl fmt::Display) -> Self {
                Self(format!("{}{}", $prefix, suffix))
            }

            /// Wraps an id received on the wire. It is only looked up, never trusted.
            pub fn from_wire(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

server_id!(
    /// A participant's id, chosen by the server at join, unique for the server's lifetime.
    ParticipantId,
    "PA_"
);
server_id!(
    /// A published track's id, chosen by the server, unique for the server's lifetime.
    TrackId,
    "TR_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        for ok in ["a", "team-standup", "Room_1.2", &"x".repeat(64)] {
            assert!(RoomId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "with space",
            "slash/x",
            "ümlaut",
            &"x".repeat(65),
            "../etc",
        ] {
            // "../etc" is letters, dots and a slash: the slash makes it invalid.
            assert!(RoomId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_names() {
        assert_eq!(DisplayName::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert!(DisplayName::parse("Zoë 🎉").is_ok());
        assert!(DisplayName::parse(&"é".repeat(64)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(65)).is_err());
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse("a\nb").is_err());
    }

    #[test]
    fn room_id_deserialize_validates() {
        assert!(serde_json::from_str::<RoomId>("\"ok-room\"").is_ok());
        assert!(serde_json::from_str::<RoomId>("\"not ok\"").is_err());
    }
}
