//! Agreement of attestations under a trust policy.
//!
//! For one output path, every builder that built it says which NarHash it got. The verdict an
//! auditor sees counts *distinct builders* (one builder attesting twice counts once):
//! - `none`: nobody attested it;
//! - `single`: exactly one builder did (inconclusive, as `guix challenge` calls it);
//! - `match`: two or more builders did, and all got the same NarHash;
//! - `mismatch`: two or more builders got different NarHashes (an audit finding, never hidden).
//!
//! Separately, the gateway asks whether an output is *servable*: some NarHash must be attested by
//! at least `quorum` distinct **trusted** builders, and no other NarHash may also reach the quorum
//! (two quorate answers mean the policy cannot choose, so nothing is served).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What an auditor is told about one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No attestation.
    None,
    /// One builder only.
    Single,
    /// At least two builders, all agreeing.
    Match,
    /// At least two builders, disagreeing.
    Mismatch,
}

impl Verdict {
    /// `none`, `single`, `match` or `mismatch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::None => "none",
            Verdict::Single => "single",
            Verdict::Match => "match",
            Verdict::Mismatch => "mismatch",
        }
    }

    /// The `guix challenge` class: `match`, `mismatch` or `inconclusive`.
    pub fn challenge_class(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Mismatch => "mismatch",
            Verdict::None | Verdict::Single => "inconclusive",
        }
    }
}

/// One builder's claim about one output: who (`builder`, e.g. its public key in Nix form) and
/// what (`nar_hash`, e.g. `sha256:<nix32>`, and `nar_size`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Observation<K> {
    /// The builder's identity.
    pub builder: K,
    /// The NarHash it got.
    pub nar_hash: String,
    /// The NarSize it got.
    pub nar_size: u64,
}

/// Which builders count and how many must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy<K: Ord> {
    /// Builders whose attestations count towards the quorum.
    pub trusted: BTreeSet<K>,
    /// Distinct trusted builders needed for one NarHash.
    pub quorum: usize,
}

/// The verdict for one output, with the groups that led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment<K: Ord> {
    /// The auditor's verdict over all builders, trusted or not.
    pub verdict: Verdict,
    /// For each (NarHash, NarSize) seen, the distinct builders that attested it.
    pub groups: BTreeMap<(String, u64), BTreeSet<K>>,
    /// The NarHash and NarSize the trust policy accepts, if exactly one reaches the quorum.
    pub accepted: Option<(String, u64)>,
}

/// Assess the observations of one output under a policy.
pub fn assess<'a, K: Ord + Clone + 'a>(
    observations: impl IntoIterator<Item = &'a Observation<K>>,
    policy: &TrustPolicy<K>,
) -> Assessment<K> {
    let mut groups: BTreeMap<(String, u64), BTreeSet<K>> = BTreeMap::new();
    for o in observations {
        groups.entry((o.nar_hash.clone(), o.nar_size)).or_default().insert(o.builder.clone());
    }
    let builders: BTreeSet<&K> = groups.values().flatten().collect();
    let verdict = match (builders.len(), groups.len()) {
        (0, _) => Verdict::None,
        (1, _) => Verdict::Single,
        (_, 1) => Verdict::Match,
        _ => Verdict::Mismatch,
    };
    let quorate: Vec<&(String, u64)> = groups
        .iter()
        .filter(|(_, who)| who.iter().filter(|k| policy.trusted.contains(k)).count() >= policy.quorum.max(1))
        .map(|(key, _)| key)
        .collect();
    let accepted = match quorate.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    };
    Assessment { verdict, groups, accepted }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(b: &str, h: &str) -> Observation<String> {
        Observation { builder: b.to_string(), nar_hash: h.to_string(), nar_size: 8 }
    }

    fn policy(keys: &[&str], quorum: usize) -> TrustPolicy<String> {
        TrustPolicy { trusted: keys.iter().map(|k| k.to_string()).collect(), quorum }
    }

    #[test]
    fn verdicts() {
        let p = policy(&["a", "b", "c"], 2);
        assert_eq!(assess([].iter(), &p).verdict, Verdict::None);
        let one = [obs("a", "h1"), obs("a", "h1")];
        let a = assess(one.iter(), &p);
        assert_eq!((a.verdict, a.accepted), (Verdict::Single, None));
        let two = [obs("a", "h1"), obs("b", "h1")];
        let a = assess(two.iter(), &p);
        assert_eq!(a.verdict, Verdict::Match);
        assert_eq!(a.accepted, Some(("h1".to_string(), 8)));
        let split = [obs("a", "h1"), obs("b", "h2")];
        let a = assess(split.iter(), &p);
        assert_eq!((a.verdict, a.accepted), (Verdict::Mismatch, None));
        assert_eq!(Verdict::Mismatch.challenge_class(), "mismatch");
        assert_eq!(Verdict::Single.challenge_class(), "inconclusive");
    }

    #[test]
    fn only_trusted_builders_count_towards_quorum() {
        let p = policy(&["a"], 2);
        let two = [obs("a", "h1"), obs("x", "h1")];
        let a = assess(two.iter(), &p);
        assert_eq!((a.verdict, a.accepted), (Verdict::Match, None));
        let p1 = policy(&["a"], 1);
        assert_eq!(assess(two.iter(), &p1).accepted, Some(("h1".to_string(), 8)));
    }

    #[test]
    fn mismatch_with_one_quorate_hash_serves_it_but_reports_mismatch() {
        let p = policy(&["a", "b", "c"], 2);
        let three = [obs("a", "h1"), obs("b", "h1"), obs("c", "h2")];
        let a = assess(three.iter(), &p);
        assert_eq!(a.verdict, Verdict::Mismatch);
        assert_eq!(a.accepted, Some(("h1".to_string(), 8)));
        let p1 = policy(&["a", "b", "c"], 1);
        assert_eq!(assess(three.iter(), &p1).accepted, None, "two quorate hashes: ambiguous");
    }
}
