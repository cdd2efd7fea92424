//! Ids are newtypes so a participant id can never be passed where a track id is expected.
//! Room ids and display names come from clients, so they are validated on construction.
//!
//! A room id becomes a directory name (recordings), so it is a safe path component by
//! construction: ASCII letters, digits, `-`, `_` and `.`, never starting with a dot (no
//! `.`, `..` or hidden names). A display name is only ever shown, so it is cleaned rather
//! than refused where it can be: see [`DisplayName::parse`].

use serde::{Deserialize, Serialize};
use std::fmt;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::UnicodeGeneralCategory;

/// Why a name supplied by a client was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "room name must be 1 to {max} characters of letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    InvalidRoom { max: usize },
    #[error("display name must be 1 to {max} visible characters, without control characters")]
    InvalidName { max: usize },
}

/// A room's name, as typed by users and as it appears in `/room/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(String);

impl RoomId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        // A leading dot would make `.`, `..` or a hidden directory of the recordings.
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && !s.starts_with('.')
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

/// A participant's display name: cleaned, bounded, visible.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    /// Characters, after cleaning.
    pub const MAX_CHARS: usize = 64;
    /// Bytes of input looked at: a bound on the work before cleaning (a base character
    /// with 63 marks is 127 bytes; 64 four-byte emoji are 256).
    pub const MAX_INPUT_BYTES: usize = 1024;
    /// Combining marks kept after one base character; more are dropped (a stack of
    /// hundreds draws over the names around it).
    pub const MAX_MARKS: usize = 2;

    /// Cleans `s` into a name that shows as what it is:
    /// 1. control characters (`\n`, `\t`, ...) and line/paragraph separators: refused;
    /// 2. format characters (general category Cf: bidi overrides and isolates such as
    ///    U+202E, the marks U+200E/U+200F/U+061C, zero-width U+200B–U+200D, U+2060,
    ///    U+FEFF) and Hangul fillers: removed, so that no name reorders the text around
    ///    it or hides in an invisible twin of another;
    /// 3. at most [`Self::MAX_MARKS`] combining marks per base character, counted in
    ///    the decomposed form (NFD), the rest dropped, and none before the first base
    ///    character;
    /// 4. NFC normalisation (one spelling of "é");
    /// 5. trimmed; then 1 to [`Self::MAX_CHARS`] characters of which at least one is
    ///    visible (not whitespace, not a mark), else [`IdError::InvalidName`].
    ///
    /// Emoji joined by U+200D (ZWJ) come apart into their parts: ZWJ is a format
    /// character, and keeping it would let "Ada" and "A\u{200D}da" pass as two names.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let invalid = IdError::InvalidName {
            max: Self::MAX_CHARS,
        };
        if s.len() > Self::MAX_INPUT_BYTES {
            return Err(invalid);
        }
        let t = s.trim();
        if t.chars().any(|c| c.is_control() || is_line_break(c)) {
            return Err(invalid);
        }
        // Marks are counted decomposed (NFD), so that "á" + 2 marks counts 3.
        let mut capped = String::with_capacity(t.len());
        let mut marks: Option<usize> = None; // None: no base character yet
        for c in t.chars().filter(|&c| !is_invisible(c)).nfd() {
            if is_mark(c) {
                match &mut marks {
                    Some(n) if *n < Self::MAX_MARKS => *n += 1,
                    _ => continue,
                }
            } else {
                marks = Some(0);
            }
            capped.push(c);
        }
        let name: String = capped.trim().nfc().collect();
        let n = name.chars().count();
        let visible = name.chars().any(|c| !c.is_whitespace() && !is_mark(c));
        if n == 0 || n > Self::MAX_CHARS || !visible {
            return Err(invalid);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form two names are compared in, to tell whether they read the same: names
    /// are already NFC; case is folded.
    pub fn comparable(&self) -> String {
        self.0.to_lowercase()
    }
}

fn is_mark(c: char) -> bool {
    matches!(
        c.general_category_group(),
        unicode_properties::GeneralCategoryGroup::Mark
    )
}

/// Format characters (Cf) and the Hangul fillers, letters that draw nothing.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
        || c.general_category() == unicode_properties::GeneralCategory::Format
}

fn is_line_break(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
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
            "back\\slash",
            "ümlaut",
            &"x".repeat(65),
            "../etc",
            // Path components of their own: the recordings of such a room would go to
            // the recordings directory itself, or the one above it, or be hidden.
            ".",
            "..",
            "...",
            ".hidden",
            "nul\0",
        ] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?}");
        }
        // Dots inside or at the end are ordinary characters of a file name.
        for ok in ["a.", "a..b", "v1.2."] {
            assert!(RoomId::parse(ok).is_ok(), "{ok}");
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
    fn display_names_are_cleaned() {
        let a = "a";
        let marks63 = format!("a{}", "\u{0301}".repeat(63));
        let marks_nfd = "Zoe\u{0308}"; // e + combining diaeresis
        // (input, Some(cleaned) | None for refused)
        let cases: &[(&str, Option<&str>)] = &[
            ("Ada", Some("Ada")),
            ("  Ada  ", Some("Ada")),
            // Invisible only: nothing is left to show.
            ("\u{200B}", None),
            ("\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}", None),
            (" \u{200B} ", None),
            ("\u{3164}", None),
            // Bidi overrides, isolates and marks are removed, the rest kept in order.
            ("\u{202E}exe.live", Some("exe.live")),
            (
                "Ada\u{2066}\u{202B}x\u{2069}\u{200E}\u{200F}\u{061C}",
                Some("Adax"),
            ),
            ("A\u{200D}da", Some("Ada")),
            ("\u{FEFF}Bob", Some("Bob")),
            // Canonical composition: NFD becomes NFC.
            (marks_nfd, Some("Zoë")),
            ("e\u{200B}\u{0301}", Some("é")),
            // Combining marks: two per base character, none before the first.
            (&marks63, Some("\u{00E1}\u{0301}")),
            ("\u{00E1}\u{0301}\u{0301}", Some("\u{00E1}\u{0301}")),
            ("Vi\u{1EC7}t", Some("Vi\u{1EC7}t")), // e + dot below + circumflex
            ("\u{0301}\u{0301}a", Some("a")),
            ("\u{0301}", None),
            (
                "x\u{0301}\u{0302}\u{0303}y\u{0304}",
                Some("x\u{0301}\u{0302}\u{0233}"),
            ),
            // Controls and line separators are refused, not silently joined.
            ("a\nb", None),
            ("a\u{2028}b", None),
            ("a\u{0007}", None),
            // Whitespace around format characters is trimmed too.
            ("\u{200B} Ada \u{200B}", Some("Ada")),
            // Scripts that need their marks keep them.
            ("क्षिति", Some("क्षिति")),
            ("Zoë 🎉", Some("Zoë 🎉")),
            (a, Some("a")),
        ];
        for (input, want) in cases {
            let got = DisplayName::parse(input).ok();
            assert_eq!(got.as_ref().map(|n| n.as_str()), *want, "{input:?}");
        }
        // Length is counted after cleaning, within a bound on the input.
        let padded = format!("{}{}", "\u{200B}".repeat(100), "x".repeat(64));
        assert_eq!(
            DisplayName::parse(&padded).unwrap().as_str(),
            "x".repeat(64)
        );
        assert!(DisplayName::parse(&"\u{200B}".repeat(400)).is_err());
        assert!(DisplayName::parse(&format!("a{}", "\u{0301}".repeat(600))).is_err());
    }

    #[test]
    fn names_compare_without_case() {
        let a = DisplayName::parse("ADA").unwrap();
        let b = DisplayName::parse("ada\u{200B}").unwrap();
        assert_eq!(a.comparable(), b.comparable());
        let nfd = DisplayName::parse("Zoe\u{0308}").unwrap();
        let nfc = DisplayName::parse("zoë").unwrap();
        assert_eq!(nfd.comparable(), nfc.comparable());
    }

    #[test]
    fn room_id_deserialize_validates() {
        assert!(serde_json::from_str::<RoomId>("\"ok-room\"").is_ok());
        assert!(serde_json::from_str::<RoomId>("\"not ok\"").is_err());
    }
}

/// A client's name for one of its requests, echoed on the reply the request causes
/// (`joined`, `answer`, `error`): a string of 1 to 64 characters or a non-negative integer
/// up to 2^53 (what a JavaScript number holds exactly).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(u64),
    Text(String),
}

impl RequestId {
    pub const MAX_LEN: usize = 64;
    pub const MAX_NUMBER: u64 = 1 << 53;

    /// Reads a request id from a JSON value, or says why it is not one.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, &'static str> {
        match v {
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(n) if n <= Self::MAX_NUMBER => Ok(RequestId::Number(n)),
                _ => Err(
                    "request_id must be a string of 1 to 64 characters or an integer from 0 to 2^53",
                ),
            },
            serde_json::Value::String(s) if !s.is_empty() && s.chars().count() <= Self::MAX_LEN => {
                Ok(RequestId::Text(s.clone()))
            }
            _ => Err(
                "request_id must be a string of 1 to 64 characters or an integer from 0 to 2^53",
            ),
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        RequestId::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Number(n) => write!(f, "{n}"),
            RequestId::Text(s) => f.write_str(s),
        }
    }
}
