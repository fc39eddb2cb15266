//! Newtypes for identifiers and times, so a story id can never be passed
//! where a node id is expected and milliseconds never mix with counts.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::IdError;

/// Longest node or story id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Checks the id grammar `[a-z0-9][a-z0-9-_]{0,63}` shared by nodes and
/// stories. Ids appear in branch names, paths and document keys, so the
/// grammar is deliberately narrow.
fn validate_id(kind: &'static str, s: &str) -> Result<(), IdError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(IdError::Empty { kind });
    };
    if bytes.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind, len: bytes.len(), max: MAX_ID_LEN });
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(IdError::BadStart { kind, id: s.to_owned() });
    }
    if let Some(bad) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')) {
        return Err(IdError::BadChar { kind, id: s.to_owned(), bad });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` against the id grammar.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_id($kind, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

string_id!(
    /// A cluster member. Stable across restarts of the same node.
    NodeId,
    "node"
);
string_id!(
    /// A story (work item). Also names its git branch `huskies/<id>`.
    StoryId,
    "story"
);

/// A point on the caller's local monotonic clock, in milliseconds. Never
/// compared across machines.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    pub fn saturating_add_ms(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    pub fn saturating_sub(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A wall-clock time, in ms since the Unix epoch, by some node's clock: when
/// a story was added. Only an order among stories; never compared with a
/// local [`Millis`], and never trusted as this node's time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
pub struct UnixMs(pub u64);

/// Fencing token of a story: grows with every claim and every user move, so
/// a result carrying an older token is recognisably stale.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
pub struct Token(pub u64);

impl Token {
    pub fn next(self) -> Token {
        // Tokens read from peers are bounded by schema::MAX_TOKEN, far
        // below: reaching the end is a bug of ours, never a peer's doing.
        Token(self.0.checked_add(1).expect("a token below schema::MAX_TOKEN"))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// A connection to a peer. Outbound ids (from [`crate::Output::Dial`]) are
/// allocated by the engine and have the top bit set; inbound ids are
/// allocated by the driver and must not.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnId(pub u64);

impl ConnId {
    const OUTBOUND_BIT: u64 = 1 << 63;

    pub(crate) fn outbound(n: u64) -> ConnId {
        ConnId(n | Self::OUTBOUND_BIT)
    }

    pub fn is_outbound(self) -> bool {
        self.0 & Self::OUTBOUND_BIT != 0
    }
}

/// Correlates a [`crate::Command`] with its [`crate::Output::Reply`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct CommandId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_grammar() {
        for ok in ["a", "0", "story-1", "a_b", &"x".repeat(64)] {
            assert!(StoryId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "a/b", "é", &"x".repeat(65), "a.b"] {
            assert!(StoryId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_errors_say_what_is_wrong() {
        let e = NodeId::new("Bad").unwrap_err().to_string();
        assert!(e.contains("node") && e.contains("Bad"), "{e}");
        let e = StoryId::new("a/b").unwrap_err().to_string();
        assert!(e.contains('/'), "{e}");
    }

    #[test]
    fn conn_id_direction() {
        assert!(ConnId::outbound(5).is_outbound());
        assert!(!ConnId(5).is_outbound());
    }
}
