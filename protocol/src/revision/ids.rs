//! The names of revisions: [`RevisionId`] (`C@ID`) and [`RevisionRef`] (`C@ID` or `C:branch`), as
//! users type them on the command line and as the JSON API prints them.
//!
//! The channel's characters (`[A-Za-z0-9_.+-]`) exclude `@` and `:`, so the first `@` or `:`
//! separates the channel from the rest unambiguously.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::RevisionId;
use super::header::{validate_branch, validate_channel, validate_commit};

/// Why a revision name does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RevisionNameError {
    /// Neither `@` nor `:` separates a channel from a commit or branch.
    #[error("revision {input:?} is not of the form CHANNEL@COMMIT or CHANNEL:BRANCH")]
    NoSeparator {
        /// The text given.
        input: String,
    },
    /// A `C@ID` was expected, but the text has no `@`.
    #[error("revision {input:?} is not of the form CHANNEL@COMMIT")]
    NotAnId {
        /// The text given.
        input: String,
    },
    /// The channel part breaks its rule.
    #[error("revision {input:?}: {reason}")]
    Channel {
        /// The text given.
        input: String,
        /// The rule broken.
        reason: String,
    },
    /// The commit part breaks its rule.
    #[error("revision {input:?}: {reason}")]
    Commit {
        /// The text given.
        input: String,
        /// The rule broken.
        reason: String,
    },
    /// The branch part breaks its rule.
    #[error("revision {input:?}: {reason}")]
    Branch {
        /// The text given.
        input: String,
        /// The rule broken.
        reason: String,
    },
}

impl RevisionId {
    /// A revision id from its parts, checking the channel and commit rules.
    pub fn new(channel: &str, commit: &str) -> Result<RevisionId, RevisionNameError> {
        let input = || format!("{channel}@{commit}");
        validate_channel(channel).map_err(|reason| RevisionNameError::Channel { input: input(), reason })?;
        validate_commit(commit).map_err(|reason| RevisionNameError::Commit { input: input(), reason })?;
        Ok(RevisionId { channel: channel.to_string(), commit: commit.to_string() })
    }
}

/// `channel@commit`.
impl fmt::Display for RevisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.channel, self.commit)
    }
}

/// Parses `channel@commit`, checking both parts' rules.
impl FromStr for RevisionId {
    type Err = RevisionNameError;

    fn from_str(s: &str) -> Result<RevisionId, RevisionNameError> {
        match RevisionRef::from_str(s) {
            Ok(RevisionRef::Id(id)) => Ok(id),
            Ok(RevisionRef::Branch { .. }) => Err(RevisionNameError::NotAnId { input: s.to_string() }),
            Err(RevisionNameError::NoSeparator { input }) => Err(RevisionNameError::NotAnId { input }),
            Err(e) => Err(e),
        }
    }
}

impl serde::Serialize for RevisionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RevisionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RevisionId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a user names when asking about a revision: one revision (`C@ID`), or the latest revision
/// of a branch (`C:branch`; which one is the latest is the node's rule, see the node's `qa`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RevisionRef {
    /// `channel@commit`.
    Id(RevisionId),
    /// `channel:branch`.
    Branch {
        /// The channel.
        channel: String,
        /// The branch.
        branch: String,
    },
}

impl RevisionRef {
    /// The channel named.
    pub fn channel(&self) -> &str {
        match self {
            RevisionRef::Id(id) => &id.channel,
            RevisionRef::Branch { channel, .. } => channel,
        }
    }
}

/// `channel@commit` or `channel:branch`.
impl fmt::Display for RevisionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevisionRef::Id(id) => id.fmt(f),
            RevisionRef::Branch { channel, branch } => write!(f, "{channel}:{branch}"),
        }
    }
}

/// Parses `channel@commit` or `channel:branch`: the first `@` or `:` ends the channel.
impl FromStr for RevisionRef {
    type Err = RevisionNameError;

    fn from_str(s: &str) -> Result<RevisionRef, RevisionNameError> {
        let input = || s.to_string();
        let Some(at) = s.find(['@', ':']) else {
            return Err(RevisionNameError::NoSeparator { input: input() });
        };
        let (channel, rest) = (&s[..at], &s[at + 1..]);
        validate_channel(channel).map_err(|reason| RevisionNameError::Channel { input: input(), reason })?;
        if s.as_bytes()[at] == b'@' {
            validate_commit(rest).map_err(|reason| RevisionNameError::Commit { input: input(), reason })?;
            Ok(RevisionRef::Id(RevisionId { channel: channel.to_string(), commit: rest.to_string() }))
        } else {
            validate_branch(rest).map_err(|reason| RevisionNameError::Branch { input: input(), reason })?;
            Ok(RevisionRef::Branch { channel: channel.to_string(), branch: rest.to_string() })
        }
    }
}

impl serde::Serialize for RevisionRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RevisionRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RevisionRef, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_id_round_trips() {
        let id: RevisionId = "nixpkgs@4d1b2c3e".parse().unwrap();
        assert_eq!(id, RevisionId { channel: "nixpkgs".into(), commit: "4d1b2c3e".into() });
        assert_eq!(id.to_string(), "nixpkgs@4d1b2c3e");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"nixpkgs@4d1b2c3e\"");
        assert_eq!(serde_json::from_str::<RevisionId>("\"guix@v1.4.0\"").unwrap().commit, "v1.4.0");
        assert_eq!(RevisionId::new("guix", "abc").unwrap().to_string(), "guix@abc");
    }

    #[test]
    fn revision_ref_parses_both_forms() {
        assert_eq!(
            "guix:wip/core-updates".parse::<RevisionRef>().unwrap(),
            RevisionRef::Branch { channel: "guix".into(), branch: "wip/core-updates".into() }
        );
        let r: RevisionRef = "guix@abc".parse().unwrap();
        assert_eq!(r, RevisionRef::Id(RevisionId { channel: "guix".into(), commit: "abc".into() }));
        assert_eq!(r.channel(), "guix");
        for s in ["guix@abc", "guix:master", "nixpkgs:release-24.05"] {
            assert_eq!(s.parse::<RevisionRef>().unwrap().to_string(), s);
            let json = serde_json::to_string(&s.parse::<RevisionRef>().unwrap()).unwrap();
            assert_eq!(json, format!("{s:?}"));
        }
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        let err = |s: &str| s.parse::<RevisionRef>().unwrap_err().to_string();
        assert_eq!(err("guix"), "revision \"guix\" is not of the form CHANNEL@COMMIT or CHANNEL:BRANCH");
        assert!(err("@abc").contains("channel \"\" must be 1-64 bytes"), "{}", err("@abc"));
        assert!(err("gu ix@abc").contains("channel \"gu ix\" contains ' '"), "{}", err("gu ix@abc"));
        assert!(err("guix@").contains("commit \"\""), "{}", err("guix@"));
        assert!(err("guix@a@b").contains("commit \"a@b\" contains '@'"), "{}", err("guix@a@b"));
        assert!(err("guix@a:b").contains("commit \"a:b\" contains ':'"), "{}", err("guix@a:b"));
        assert!(err("guix:/x").contains("must not start with '/'"), "{}", err("guix:/x"));
        assert!(err("guix:a/../b").contains("must not contain"), "{}", err("guix:a/../b"));
        // A branch is no id.
        let e = "guix:master".parse::<RevisionId>().unwrap_err();
        assert_eq!(e, RevisionNameError::NotAnId { input: "guix:master".into() });
        assert_eq!(e.to_string(), "revision \"guix:master\" is not of the form CHANNEL@COMMIT");
        assert!(matches!("guix".parse::<RevisionId>(), Err(RevisionNameError::NotAnId { .. })));
        assert!(serde_json::from_str::<RevisionId>("\"guix\"").is_err());
    }
}
