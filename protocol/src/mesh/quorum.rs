//! Whether an output may be served: a pure function over attestations and the trust policy.
//!
//! The gateway asks [`crate::mesh::Mesh::assess_output`], which runs [`assess_output`] over what the
//! node knows; a node that keeps attestations elsewhere (its store) calls [`assess_attestations`]
//! directly. Both count *distinct* builders and use [`crate::verdict::assess`].

use std::collections::BTreeSet;

use super::config::TrustConfig;
use crate::hash::NixHash;
use crate::id::NodeId;
use crate::store_path::StorePath;
use crate::verdict::{Assessment, Observation, TrustPolicy, assess};
use crate::wire::Attestation;

/// One builder's result for one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputClaim<'a> {
    /// The builder.
    pub builder: &'a NodeId,
    /// The NarHash it got (sha256 digest).
    pub nar_hash: &'a [u8; 32],
    /// The NarSize it got.
    pub nar_size: u64,
    /// Whether it built under emulation ([`crate::wire::BuildMode::Emulated`]).
    pub emulated: bool,
    /// The `system` of the derivation it built, when known (for `trust.no_emulation_for`).
    pub system: Option<&'a str>,
}

/// The verdict on one output from the builders' results, under `trust`. `accepted` is set when
/// exactly one NarHash has at least `trust.quorum` distinct trusted builders (and, with
/// `trust.needs_native`, at least one of them built it natively). A builder with an emulated
/// result that `trust.no_emulation_for` does not count ([`TrustConfig::counts`]) is treated as
/// untrusted for this output: its result stays in `groups` (a mismatch is still reported).
pub fn assess_output<'a>(
    results: impl IntoIterator<Item = OutputClaim<'a>>,
    trust: &TrustConfig,
) -> Assessment<NodeId> {
    let mut native: BTreeSet<(NodeId, String, u64)> = BTreeSet::new();
    let mut uncounted: BTreeSet<NodeId> = BTreeSet::new();
    let observations: Vec<Observation<NodeId>> = results
        .into_iter()
        .map(|r| {
            let nar_hash = NixHash::sha256(*r.nar_hash).to_string();
            if !r.emulated {
                native.insert((*r.builder, nar_hash.clone(), r.nar_size));
            }
            if !trust.counts(r.emulated, r.system) {
                uncounted.insert(*r.builder);
            }
            Observation { builder: *r.builder, nar_hash, nar_size: r.nar_size }
        })
        .collect();
    // Only the builders seen matter: the trusted ones among them.
    let trusted: BTreeSet<NodeId> =
        observations.iter().map(|o| o.builder).filter(|b| trust.is_trusted(b) && !uncounted.contains(b)).collect();
    let mut assessment = assess(observations.iter(), &TrustPolicy { trusted, quorum: trust.quorum });
    if trust.needs_native
        && let Some((hash, size)) = &assessment.accepted
        && !native.iter().any(|(b, h, s)| h == hash && s == size && trust.is_trusted(b))
    {
        assessment.accepted = None;
    }
    assessment
}

/// The verdict on the output `path` from a set of attestations (of any derivations; those without
/// the path are skipped). Attestations carry no `system`, so with `trust.no_emulation_for` set
/// their emulated results do not count (use [`assess_output`] with the systems when known).
pub fn assess_attestations<'a>(
    attestations: impl IntoIterator<Item = &'a Attestation>,
    path: &StorePath,
    trust: &TrustConfig,
) -> Assessment<NodeId> {
    let results = attestations.into_iter().flat_map(|a| {
        a.outputs.values().filter(|o| o.path == *path).map(move |o| OutputClaim {
            builder: &a.builder,
            nar_hash: &o.nar_hash,
            nar_size: o.nar_size,
            emulated: a.mode == crate::wire::BuildMode::Emulated,
            system: None,
        })
    });
    assess_output(results, trust)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use crate::verdict::Verdict;

    fn node(i: u8) -> NodeId {
        NodeKey::from_seed("q", [i; 32]).unwrap().node_id()
    }

    #[test]
    fn quorum_needs_distinct_trusted_builders() {
        let (a, b, c) = (node(1), node(2), node(3));
        let h1 = [1u8; 32];
        let h2 = [2u8; 32];
        let all = TrustConfig { trusted: None, quorum: 2, needs_native: false, no_emulation_for: Default::default() };
        let r = |b: &'static NodeId, h: &'static [u8; 32]| OutputClaim {
            builder: b,
            nar_hash: h,
            nar_size: 9,
            emulated: false,
            system: None,
        };
        let leak = |n: NodeId| -> &'static NodeId { Box::leak(Box::new(n)) };
        let (a, b, c) = (leak(a), leak(b), leak(c));
        let h1: &'static [u8; 32] = Box::leak(Box::new(h1));
        let h2: &'static [u8; 32] = Box::leak(Box::new(h2));
        assert_eq!(assess_output([r(a, h1), r(a, h1)], &all).accepted, None, "one builder twice is one");
        let got = assess_output([r(a, h1), r(b, h1)], &all);
        assert_eq!(got.verdict, Verdict::Match);
        assert_eq!(got.accepted, Some((NixHash::sha256(*h1).to_string(), 9)));
        let only_a = TrustConfig {
            trusted: Some([*a].into_iter().collect()),
            quorum: 2,
            needs_native: false,
            no_emulation_for: Default::default(),
        };
        assert_eq!(assess_output([r(a, h1), r(b, h1)], &only_a).accepted, None);
        let got = assess_output([r(a, h1), r(b, h1), r(c, h2)], &all);
        assert_eq!(got.verdict, Verdict::Mismatch);
        assert!(got.accepted.is_some(), "one quorate hash is served, the mismatch is reported");
    }

    #[test]
    fn quorum_needs_native_refuses_emulated_agreement_alone() {
        let (a, b, c) = (node(1), node(2), node(3));
        let h = [1u8; 32];
        fn claim<'a>(b: &'a NodeId, h: &'a [u8; 32], emulated: bool) -> OutputClaim<'a> {
            OutputClaim { builder: b, nar_hash: h, nar_size: 9, emulated, system: Some("aarch64-linux") }
        }
        let plain = TrustConfig { trusted: None, quorum: 2, needs_native: false, no_emulation_for: Default::default() };
        let strict = TrustConfig { needs_native: true, ..plain.clone() };
        let emulated_only = [claim(&a, &h, true), claim(&b, &h, true)];
        assert!(assess_output(emulated_only, &plain).accepted.is_some(), "the default counts emulated builds");
        assert_eq!(assess_output(emulated_only, &strict).accepted, None, "two emulated builds are not enough");
        assert!(
            assess_output([claim(&a, &h, true), claim(&c, &h, false)], &strict).accepted.is_some(),
            "one native agrees"
        );
        // An untrusted native builder does not lift the rule.
        let strict_ab = TrustConfig { trusted: Some([a, b].into_iter().collect()), ..strict.clone() };
        assert_eq!(
            assess_output([claim(&a, &h, true), claim(&b, &h, true), claim(&c, &h, false)], &strict_ab).accepted,
            None
        );
        // A native builder that got another NarHash does not either.
        let other = [2u8; 32];
        let native_other = OutputClaim { builder: &c, nar_hash: &other, nar_size: 9, emulated: false, system: None };
        assert_eq!(assess_output([claim(&a, &h, true), claim(&b, &h, true), native_other], &strict).accepted, None);
    }

    #[test]
    fn no_emulation_for_discounts_emulated_builders_of_those_systems_only() {
        let (a, b, c) = (node(1), node(2), node(3));
        let (h, other) = ([1u8; 32], [2u8; 32]);
        fn claim<'a>(b: &'a NodeId, h: &'a [u8; 32], emulated: bool, system: Option<&'a str>) -> OutputClaim<'a> {
            OutputClaim { builder: b, nar_hash: h, nar_size: 9, emulated, system }
        }
        let trust = TrustConfig {
            no_emulation_for: BTreeSet::from(["aarch64-linux".to_string()]),
            ..TrustConfig { trusted: None, quorum: 2, needs_native: false, no_emulation_for: BTreeSet::new() }
        };
        let arm = Some("aarch64-linux");
        let emulated_arm = [claim(&a, &h, true, arm), claim(&b, &h, true, arm)];
        assert_eq!(assess_output(emulated_arm, &trust).accepted, None, "emulated aarch64 builds do not count");
        let armv7 = Some("armv7l-linux");
        assert!(
            assess_output([claim(&a, &h, true, armv7), claim(&b, &h, true, armv7)], &trust).accepted.is_some(),
            "another system's emulated builds still count"
        );
        assert_eq!(
            assess_output([claim(&a, &h, true, None), claim(&b, &h, true, None)], &trust).accepted,
            None,
            "an unknown system is not trusted to be another one"
        );
        // Native builders of the system count; an excluded emulated builder that disagrees is
        // reported but does not block them.
        let got =
            assess_output([claim(&a, &h, false, arm), claim(&b, &h, false, arm), claim(&c, &other, true, arm)], &trust);
        assert!(got.accepted.is_some());
        assert_eq!(got.verdict, crate::verdict::Verdict::Mismatch);
        assert_eq!(
            assess_output([claim(&a, &h, false, arm), claim(&b, &h, true, arm)], &trust).accepted,
            None,
            "one native and one excluded emulated builder are one"
        );
    }
}
