//! The trust rule: what this node believes a store path contains, and so what it serves, signs
//! and builds upon (DESIGN invariants 5, 9 and 10).
//!
//! A path is **accepted** with a NarHash in exactly two ways:
//!
//! 1. **Attested output**: the stored, re-verified attestations that name the path reach the
//!    node's trust policy ([`TrustConfig`]: `quorum` distinct trusted builders with one NarHash and
//!    no trusted builder with another). On a mesh node the policy is the configured one (own key
//!    plus `trusted_keys`, `quorum`); on a standalone node it is [`standalone`]: its own key, one
//!    build. The narinfo of such a path carries the agreeing builders' own Nix signatures (made
//!    when they built it): the node signs nothing at serving time, so it never signs bytes it did
//!    not build.
//! 2. **Content-addressed path** (when no NarHash is accepted by attestations): the path is
//!    registered here, its `CA` is a `text:sha256:` or
//!    `fixed:r:sha256:` address, and its bytes hash to the path itself
//!    ([`crate::content_address::of_nar`]). Such a path certifies itself: it is served unsigned
//!    with its `CA:` field (Nix checks the content against the path).
//!
//! Anything else — an upload at an output path, a path no attestation names, an output whose
//! builders disagree or that has not reached the quorum yet — is refused ([`Refusal`]). A local
//! registration is only a copy: when it disagrees with the accepted NarHash it is never served or
//! used; [`inputs`] replaces it with the accepted bytes and quarantines it.

pub mod inputs;
pub mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::mesh::{OutputClaim, TrustConfig, assess_output};
use buildmesh_protocol::nixkey::NixSignature;
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Attestation, BuildMode, OutputAttestation};

use crate::store::{PathInfo, Store, StoreError};

/// Why the trust rule could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading a stored NAR back (to check its content address) failed.
    #[error("reading the stored NAR of {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The trust policy of a node without a mesh: only its own builds count, one is enough.
pub fn standalone(me: NodeId) -> TrustConfig {
    TrustConfig {
        trusted: Some(BTreeSet::from([me])),
        quorum: 1,
        needs_native: false,
        no_emulation_for: Default::default(),
    }
}

/// What the trust policy accepts for one output.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The output.
    pub path: StorePath,
    /// The accepted NarHash (sha256 digest).
    pub nar_hash: [u8; 32],
    /// The accepted NarSize.
    pub nar_size: u64,
    /// The agreeing attestations' output records, one per builder.
    pub agreeing: BTreeMap<NodeId, OutputAttestation>,
}

impl Accepted {
    /// The accepted NarHash as a [`NixHash`].
    pub fn nix_hash(&self) -> NixHash {
        NixHash::sha256(self.nar_hash)
    }

    /// The references the agreeing builders signed (they sign the fingerprint, which includes
    /// them, so agreeing records name the same set).
    pub fn references(&self) -> BTreeSet<StorePath> {
        self.agreeing.values().next().map(|o| o.references.clone()).unwrap_or_default()
    }

    /// The deriver the first agreeing builder named.
    pub fn deriver(&self) -> Option<StorePath> {
        self.agreeing.values().next().and_then(|o| o.deriver.clone())
    }

    /// The agreeing builders' Nix signatures, sorted, without duplicates.
    pub fn signatures(&self) -> Vec<NixSignature> {
        let mut sigs: Vec<NixSignature> = self.agreeing.values().map(|o| o.nix_signature.clone()).collect();
        sigs.sort_by_key(|s| s.to_string());
        sigs.dedup();
        sigs
    }
}

/// The `system` of the derivation of each emulated attestation, where the node holds its
/// `.drv`, keyed by the `.drv` path: what `no_emulation_for` needs (attestations do not carry
/// the system). Empty when the trust policy excludes no system (nothing is read then).
pub type DrvSystems = BTreeMap<StorePath, String>;

/// The [`DrvSystems`] of `attestations` under `trust`: the stored `.drv` of every emulated
/// attestation, parsed (a `.drv` not stored here, or that does not parse, is left out: its
/// system is unknown, and an unknown system's emulated results do not count).
pub fn drv_systems(
    store: &Store,
    sd: &StoreDir,
    attestations: &[Attestation],
    trust: &TrustConfig,
) -> Result<DrvSystems, StoreError> {
    let mut systems = DrvSystems::new();
    if trust.no_emulation_for.is_empty() {
        return Ok(systems);
    }
    for a in attestations.iter().filter(|a| a.mode == BuildMode::Emulated) {
        if systems.contains_key(&a.drv) {
            continue;
        }
        let Some(bytes) = store.get_drv(&a.drv)? else { continue };
        match Derivation::parse(&bytes, sd) {
            Ok(d) => {
                systems.insert(a.drv.clone(), String::from_utf8_lossy(&d.system).into_owned());
            }
            Err(e) => {
                tracing::warn!(drv = %a.drv, cause = %e, "stored derivation does not parse; its system is unknown")
            }
        }
    }
    Ok(systems)
}

/// The accepted NarHash of `path` from the verified `attestations`, with the agreeing builders
/// (`systems`: the [`drv_systems`] of the attestations).
pub fn accepted_of(
    path: &StorePath,
    attestations: &[Attestation],
    systems: &DrvSystems,
    trust: &TrustConfig,
) -> Option<Accepted> {
    let outputs = outputs_of(path, attestations, systems);
    let assessment = assess_output(outputs.iter().map(|(claim, _)| *claim), trust);
    let (hash, size) = assessment.accepted?;
    let mut agreeing = BTreeMap::new();
    let mut digest = None;
    for (c, o) in outputs {
        if o.nar_size == size && NixHash::sha256(o.nar_hash).to_string() == hash {
            digest = Some(o.nar_hash);
            agreeing.entry(*c.builder).or_insert_with(|| o.clone());
        }
    }
    Some(Accepted { path: path.clone(), nar_hash: digest?, nar_size: size, agreeing })
}

/// The records of `path` in `attestations`, each as the claim the quorum counts (builder,
/// result, mode, the derivation's system when known) with the output record.
fn outputs_of<'a>(
    path: &StorePath,
    attestations: &'a [Attestation],
    systems: &'a DrvSystems,
) -> Vec<(OutputClaim<'a>, &'a OutputAttestation)> {
    attestations
        .iter()
        .flat_map(|a| {
            let emulated = a.mode == BuildMode::Emulated;
            let system = systems.get(&a.drv).map(String::as_str);
            a.outputs.values().filter(|o| o.path == *path).map(move |o| {
                let claim =
                    OutputClaim { builder: &a.builder, nar_hash: &o.nar_hash, nar_size: o.nar_size, emulated, system };
                (claim, o)
            })
        })
        .collect()
}

/// Why nothing is accepted for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No attestation names the path, and it is not a content-addressed path whose bytes are
    /// here and match it.
    Unattested,
    /// Builders attested different NarHashes and none is accepted.
    Disputed {
        /// The NarHashes attested (`sha256:<nix32>`).
        hashes: Vec<String>,
    },
    /// Enough trusted builders agree, but all of them built under emulation and the policy
    /// needs a native one (`quorum_needs_native`).
    NoNative {
        /// The distinct trusted (emulated) builders that agree.
        trusted: usize,
    },
    /// Too few trusted builders count, because some built under emulation for a system this
    /// node's `no_emulation_for` excludes (or whose `.drv` it does not hold).
    EmulationExcluded {
        /// The trusted builders whose emulated results do not count.
        excluded: usize,
        /// The derivation's system (`None`: its `.drv` is not stored here).
        system: Option<String>,
        /// The trusted builders that count and agree.
        trusted: usize,
        /// The quorum.
        quorum: usize,
    },
    /// Attested, but not (yet) by enough distinct trusted builders.
    NoQuorum {
        /// The distinct trusted builders that attested the best NarHash.
        trusted: usize,
        /// The quorum.
        quorum: usize,
    },
}

impl Refusal {
    /// Whether the path may become accepted later without anyone changing their mind (more
    /// attestations may arrive): callers wait instead of failing for good.
    pub fn may_resolve(&self) -> bool {
        !matches!(self, Refusal::Disputed { .. })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unattested => f.write_str(
                "no attestation accepted by this node's trust policy names it, and it is not a \
                 content-addressed path whose bytes match it",
            ),
            Refusal::Disputed { hashes } => {
                write!(f, "builders disagree on its NarHash ({}); none is accepted", hashes.join(", "))
            }
            Refusal::NoNative { trusted } => write!(
                f,
                "{trusted} trusted builder(s) agree, all under emulation; the trust policy (quorum_needs_native) \
                 needs a native builder among them"
            ),
            Refusal::EmulationExcluded { excluded, system, trusted, quorum } => write!(
                f,
                "{excluded} trusted builder(s) built it under emulation for {}, which this node does not count \
                 (no_emulation_for); {trusted} other trusted builder(s) agree, the trust policy needs {quorum}",
                system.as_deref().unwrap_or("a system it cannot tell (the .drv is not stored here)")
            ),
            Refusal::NoQuorum { trusted, quorum } => write!(
                f,
                "attested by {trusted} distinct trusted builder(s), the trust policy needs {quorum} with one NarHash"
            ),
        }
    }
}

/// The trust rule's answer for one path.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Judgement {
    /// An output the trust policy accepts.
    Attested(Accepted),
    /// A registered content-addressed path whose bytes match it; the `CA` string.
    ContentAddressed(PathInfo, String),
    /// Nothing is accepted.
    Refused(Refusal),
}

impl Judgement {
    /// The accepted NarHash, if any.
    pub fn nar_hash(&self) -> Option<NixHash> {
        match self {
            Judgement::Attested(a) => Some(a.nix_hash()),
            Judgement::ContentAddressed(info, _) => Some(info.nar_hash.clone()),
            Judgement::Refused(_) => None,
        }
    }

    /// The accepted references, if any.
    pub fn references(&self) -> Option<BTreeSet<StorePath>> {
        match self {
            Judgement::Attested(a) => Some(a.references()),
            Judgement::ContentAddressed(info, _) => Some(info.references.clone()),
            Judgement::Refused(_) => None,
        }
    }
}

/// Every stored attestation naming `path` whose signature verifies again (others are logged
/// and ignored).
pub fn verified_attestations(store: &Store, path: &StorePath) -> Result<Vec<Attestation>, StoreError> {
    let mut atts = Vec::new();
    for stored in store.attestations_for_output(path)? {
        let Ok(signed) = Signed::<Attestation>::decode(&stored.entry.envelope) else {
            tracing::warn!(path = %path, "stored attestation does not decode; ignored");
            continue;
        };
        match signed.verify() {
            Ok(v) => atts.push(v.into_value()),
            Err(e) => tracing::warn!(path = %path, cause = %e, "stored attestation does not verify; ignored"),
        }
    }
    Ok(atts)
}

/// Why `path`, attested by `attestations`, is not accepted.
fn refusal_of(path: &StorePath, attestations: &[Attestation], systems: &DrvSystems, trust: &TrustConfig) -> Refusal {
    let outputs = outputs_of(path, attestations, systems);
    if outputs.is_empty() {
        return Refusal::Unattested;
    }
    // Trusted builders whose (emulated) results `no_emulation_for` does not count.
    let uncounted: BTreeMap<NodeId, Option<&str>> = outputs
        .iter()
        .filter(|(c, _)| trust.is_trusted(c.builder) && !trust.counts(c.emulated, c.system))
        .map(|(c, _)| (*c.builder, c.system))
        .collect();
    let assessment = assess_output(outputs.iter().map(|(claim, _)| *claim), trust);
    let trusted_groups: Vec<usize> = assessment
        .groups
        .values()
        .map(|builders| builders.iter().filter(|b| trust.is_trusted(b) && !uncounted.contains_key(b)).count())
        .filter(|n| *n > 0)
        .collect();
    if trusted_groups.len() > 1 {
        return Refusal::Disputed { hashes: assessment.groups.keys().map(|(h, _)| h.clone()).collect() };
    }
    let trusted = trusted_groups.first().copied().unwrap_or(0);
    if trust.needs_native && trusted >= trust.quorum {
        return Refusal::NoNative { trusted };
    }
    if let Some(system) = uncounted.values().next() {
        return Refusal::EmulationExcluded {
            excluded: uncounted.len(),
            system: system.map(str::to_string),
            trusted,
            quorum: trust.quorum,
        };
    }
    Refusal::NoQuorum { trusted, quorum: trust.quorum }
}

/// The content address of the registered `info` when it is a `text` or `source` path whose
/// stored bytes hash to its path (`None` otherwise: not such a path, or other bytes).
pub fn content_address(store: &Store, sd: &StoreDir, info: &PathInfo) -> Result<Option<String>, TrustError> {
    let Some(ca) = &info.ca else { return Ok(None) };
    if !(ca.starts_with("text:sha256:") || ca.starts_with("fixed:r:sha256:")) {
        return Ok(None);
    }
    let Some(sha) =
        (info.nar_hash.algo() == HashAlgo::Sha256).then(|| info.nar_hash.digest().try_into().ok()).flatten()
    else {
        return Ok(None);
    };
    let mut nar = LazyNar { store, info, reader: None, failed: None };
    let computed =
        crate::content_address::of_nar(sd, &info.path, info.references.iter().cloned(), &sha, info.nar_size, &mut nar);
    if let Some(e) = nar.failed.take() {
        return Err(e.into());
    }
    let computed = computed.map_err(|source| TrustError::Read { path: sd.display(&info.path), source })?;
    Ok(computed.filter(|c| c == ca))
}

/// The stored NAR of a path, opened on its first read: a `source` path's address is checked
/// from its NarHash alone, and opening a blob (its file and a zstd decoder) was most of the
/// cost of a trust lookup on the NAR route (every `/nar/` request of a real client).
struct LazyNar<'a> {
    store: &'a Store,
    info: &'a PathInfo,
    reader: Option<crate::store::NarBlobReader>,
    /// Why opening failed (returned as a store error, not as a read error).
    failed: Option<StoreError>,
}

impl std::io::Read for LazyNar<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.reader.is_none() {
            match self.store.open_nar(&self.info.blob) {
                Ok(r) => self.reader = Some(r),
                Err(e) => {
                    let err = std::io::Error::other(e.to_string());
                    self.failed = Some(e);
                    return Err(err);
                }
            }
        }
        match &mut self.reader {
            Some(r) => r.read(buf),
            None => Ok(0),
        }
    }
}

/// The trust rule for `path` (blocking): what the verified attestations of `path` accept under
/// `trust`, else a registered content-addressed path whose bytes match it, else refused.
pub fn judge(store: &Store, sd: &StoreDir, trust: &TrustConfig, path: &StorePath) -> Result<Judgement, TrustError> {
    let atts = verified_attestations(store, path)?;
    let systems = drv_systems(store, sd, &atts, trust)?;
    if let Some(acc) = accepted_of(path, &atts, &systems, trust) {
        return Ok(Judgement::Attested(acc));
    }
    // Not accepted by attestations (none, or disputed: a stranger attesting other bytes for a
    // content-addressed path cannot make it unusable, since its bytes certify themselves).
    if let Some(info) = store.path_info(path)?
        && let Some(ca) = content_address(store, sd, &info)?
    {
        return Ok(Judgement::ContentAddressed(info, ca));
    }
    Ok(Judgement::Refused(refusal_of(path, &atts, &systems, trust)))
}

#[cfg(test)]
mod tests;
