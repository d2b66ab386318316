//! Signing and committing build results: what happens between a finished build and gossip.
//!
//! [`commit_attestation`] turns a [`BuildReport`] into a signed [`Attestation`] (each output also
//! signed for Nix: the narinfo `Sig` over the Nix fingerprint, by the node key), verifies it as a
//! receiver would, and inserts it into the store together with the build log, in one durable
//! transaction: committed before anything reports or gossips it (DESIGN invariant 7).
//! [`commit_failure`] does the same for a [`BuildError`] (a signed [`BuildFailure`]).
//!
//! **Logs**: both functions store the build log with [`crate::store::StoreWriter::put_log`] in
//! the same transaction (a failure without a log gets a one-line note), so callers need not
//! save it themselves.
//!
//! The returned [`CommittedAttestation`]/[`CommittedFailure`] hold the store entry, whose
//! `envelope` field is the signed wire bytes to gossip, and the verified message.
//!
//! **Provenance**: the attestation carries the builder's DSSE-signed in-toto/SLSA statement of
//! itself ([`buildmesh_protocol::intoto::Provenance`], made from the `.drv` this node holds), so
//! that every node can export this builder's provenance signed by this builder. When the
//! statement would make the message too large, the attestation goes without it (logged).

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::intoto::Provenance;
use buildmesh_protocol::narinfo::FingerprintError;
use buildmesh_protocol::signed::{SignError, Signed, SignedError, Verified};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Attestation, BuildFailure, BuildMode, Encode as _, LogDigest, OutputAttestation};

use super::{BuildError, BuildReport};
use crate::store::{AttestationEntry, FailureEntry, Inserted, Store, StoreError, unix_ms};

/// Why a result could not be signed or committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// An output's NarHash is not SHA-256 (attestations carry SHA-256 NarHashes only).
    #[error("output `{output}` has NarHash {hash}, which is not SHA-256")]
    NotSha256 {
        /// The output name.
        output: String,
        /// The hash.
        hash: String,
    },
    /// An output cannot be fingerprinted for Nix (e.g. NarSize 0, a reference in another store).
    #[error("output `{output}`: {source}")]
    Fingerprint {
        /// The output name.
        output: String,
        /// Why.
        source: FingerprintError,
    },
    /// The message cannot be signed (too large, too many outputs, a field a receiver rejects).
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The signed message does not verify (a bug: it was just signed).
    #[error(transparent)]
    Verify(#[from] SignedError),
    /// The store failed; nothing was committed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A committed attestation.
#[derive(Debug, Clone)]
pub struct CommittedAttestation {
    /// The entry as stored (`entry.envelope` = the signed wire bytes to gossip).
    pub entry: AttestationEntry,
    /// The verified message.
    pub message: Verified<Attestation>,
    /// Whether it was new (false: an identical attestation was already stored) and its sequence
    /// number.
    pub inserted: Inserted,
}

/// A committed build failure.
#[derive(Debug, Clone)]
pub struct CommittedFailure {
    /// The entry as stored (`entry.envelope` = the signed wire bytes to gossip).
    pub entry: FailureEntry,
    /// The verified message.
    pub message: Verified<BuildFailure>,
    /// Whether it was new, and its sequence number.
    pub inserted: Inserted,
}

fn mode(emulated: bool) -> BuildMode {
    if emulated { BuildMode::Emulated } else { BuildMode::Native }
}

/// The signed attestation of `report` (not committed), carrying `log`, the digest of the build log
/// as stored ([`crate::store::capped_log`]), and the builder's provenance (with the inputs of
/// `drv` when given); see [`commit_attestation`].
pub fn sign_attestation(
    key: &NodeKey,
    store_dir: &StoreDir,
    drv_path: &StorePath,
    drv: Option<&Derivation>,
    report: &BuildReport,
    log: Option<LogDigest>,
) -> Result<Verified<Attestation>, AttestError> {
    let mut outputs = std::collections::BTreeMap::new();
    for (name, o) in &report.outputs {
        let nar_hash: [u8; 32] = (o.nar_hash.algo() == buildmesh_protocol::hash::HashAlgo::Sha256)
            .then(|| o.nar_hash.digest().try_into().ok())
            .flatten()
            .ok_or_else(|| AttestError::NotSha256 { output: name.clone(), hash: o.nar_hash.to_string() })?;
        let signed = OutputAttestation::new_signed(
            key,
            store_dir,
            o.path.clone(),
            nar_hash,
            o.nar_size,
            o.references.clone(),
            o.content_id,
            Some(drv_path.clone()),
        )
        .map_err(|source| AttestError::Fingerprint { output: name.clone(), source })?;
        outputs.insert(name.clone(), signed);
    }
    let mut attestation = Attestation {
        builder: key.node_id(),
        store_dir: store_dir.clone(),
        drv: drv_path.clone(),
        mode: mode(report.emulated),
        started_at_ms: report.started_at_ms,
        finished_at_ms: report.finished_at_ms.max(report.started_at_ms),
        outputs,
        log,
        provenance: None,
    };
    attestation.provenance = Provenance::sign(key, &attestation, drv);
    if attestation.provenance.is_none() {
        tracing::warn!(drv = %drv_path, "the provenance statement is too large; the attestation goes without it");
    }
    let signed = match Signed::sign(key, &attestation) {
        Err(SignError::TooLarge { len, .. }) if attestation.provenance.is_some() => {
            tracing::warn!(drv = %drv_path, len, "with its provenance the attestation is too large; it goes without");
            attestation.provenance = None;
            Signed::sign(key, &attestation)?
        }
        r => r?,
    };
    Ok(signed.verify()?)
}

/// Sign `report` as `key`'s attestation of `drv_path` and commit it, with the build log, in one
/// store transaction. Returns what to gossip.
#[tracing::instrument(level = "debug", skip_all, fields(drv = %drv_path))]
pub fn commit_attestation(
    store: &Store,
    key: &NodeKey,
    store_dir: &StoreDir,
    drv_path: &StorePath,
    report: &BuildReport,
) -> Result<CommittedAttestation, AttestError> {
    let log = crate::store::capped_log(&report.log, store.options().max_log_bytes);
    // The .drv names the inputs in the provenance; without it (not stored here) the statement
    // has no dependencies.
    let drv = store.get_drv(drv_path)?.and_then(|b| Derivation::parse(&b, store_dir).ok());
    let message = sign_attestation(key, store_dir, drv_path, drv.as_ref(), report, Some(LogDigest::of(&log)))?;
    let entry = AttestationEntry::of(message.id(), &message, message.envelope().to_bytes(), unix_ms());
    let inserted = store.write(|w| {
        let inserted = w.insert_attestation(&entry)?;
        w.put_log(drv_path, &log)?;
        Ok(inserted)
    })?;
    if inserted.new {
        crate::metrics::observe_build_ms(report.finished_at_ms.saturating_sub(report.started_at_ms));
    }
    tracing::info!(id = %entry.id.fmt_short(), new = inserted.new, outputs = entry.outputs.len(), "attestation committed");
    Ok(CommittedAttestation { entry, message, inserted })
}

/// The signed failure (not committed), carrying `log`, the digest of the stored build log; see
/// [`commit_failure`].
#[allow(clippy::too_many_arguments)]
pub fn sign_failure(
    key: &NodeKey,
    store_dir: &StoreDir,
    drv_path: &StorePath,
    attempt: u32,
    error: &BuildError,
    emulated: bool,
    now_ms: u64,
    log: Option<LogDigest>,
) -> Result<Verified<BuildFailure>, AttestError> {
    let failure = BuildFailure {
        builder: key.node_id(),
        store_dir: store_dir.clone(),
        drv: drv_path.clone(),
        attempt: attempt.max(1),
        mode: mode(emulated),
        at_ms: now_ms,
        reason: error.to_reason(),
        log,
    };
    Ok(Signed::sign(key, &failure)?.verify()?)
}

/// Sign `error` as `key`'s failure of attempt `attempt` (≥ 1) to build `drv_path` at `now_ms`,
/// and commit it with the log in one store transaction. The failure is marked native; see
/// [`commit_failure_in_mode`] for emulated builds.
pub fn commit_failure(
    store: &Store,
    key: &NodeKey,
    store_dir: &StoreDir,
    drv_path: &StorePath,
    attempt: u32,
    error: &BuildError,
    now_ms: u64,
) -> Result<CommittedFailure, AttestError> {
    commit_failure_in_mode(store, key, store_dir, drv_path, attempt, error, false, now_ms)
}

/// [`commit_failure`] with the build mode (`emulated`) given.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(level = "debug", skip_all, fields(drv = %drv_path, attempt))]
pub fn commit_failure_in_mode(
    store: &Store,
    key: &NodeKey,
    store_dir: &StoreDir,
    drv_path: &StorePath,
    attempt: u32,
    error: &BuildError,
    emulated: bool,
    now_ms: u64,
) -> Result<CommittedFailure, AttestError> {
    let log = match error.log() {
        [] => format!("[buildmesh: build failed: {error}]\n").into_bytes(),
        log => crate::store::capped_log(log, store.options().max_log_bytes).into_owned(),
    };
    let message = sign_failure(key, store_dir, drv_path, attempt, error, emulated, now_ms, Some(LogDigest::of(&log)))?;
    let entry = FailureEntry {
        id: message.id(),
        drv: drv_path.clone(),
        builder: *message.signer(),
        attempt: message.attempt,
        received_at: now_ms,
        envelope: message.envelope().to_bytes(),
    };
    let inserted = store.write(|w| {
        let inserted = w.insert_failure(&entry)?;
        w.put_log(drv_path, &log)?;
        Ok(inserted)
    })?;
    tracing::info!(id = %entry.id.fmt_short(), new = inserted.new, reason = %error, "failure committed");
    Ok(CommittedFailure { entry, message, inserted })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use buildmesh_protocol::hash::NixHash;
    use buildmesh_protocol::id::ArtifactHash;
    use buildmesh_protocol::signed::Envelope;
    use buildmesh_protocol::wire::FailureReason;

    use super::super::BuiltOutput;
    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s).unwrap()
    }

    fn report() -> BuildReport {
        let out = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-hello");
        let dep = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-dep");
        BuildReport {
            outputs: BTreeMap::from([(
                "out".to_string(),
                BuiltOutput {
                    path: out.clone(),
                    nar_hash: NixHash::sha256([7; 32]),
                    nar_size: 136,
                    references: BTreeSet::from([out, dep]),
                    content_id: ArtifactHash::from_bytes([9; 32]),
                },
            )]),
            log: b"building\n".to_vec(),
            emulated: true,
            started_at_ms: 1000,
            finished_at_ms: 2000,
        }
    }

    #[test]
    fn attestation_is_signed_committed_and_reverifiable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = NodeKey::from_seed("node-a-1", [3; 32]).unwrap();
        let drv = sp("mh08qwc103ql42f2zc4ka9nhz976z7m8-hello.drv");
        let c = commit_attestation(&store, &key, &StoreDir::nix(), &drv, &report()).unwrap();
        assert!(c.inserted.new);
        assert_eq!(c.message.mode, BuildMode::Emulated);
        let stored = store.attestations_for_drv(&drv).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].entry, c.entry);
        assert_eq!(store.get_log(&drv).unwrap().unwrap(), b"building\n");
        // The stored envelope verifies offline, and its narinfo signature is Nix's.
        let env = Envelope::decode(&stored[0].entry.envelope).unwrap();
        let v = env.verify_as::<Attestation>().unwrap();
        let o = &v.outputs["out"];
        let fp = o.fingerprint(&StoreDir::nix()).unwrap();
        assert!(fp.starts_with("1;/nix/store/an8vyn8v0lxs937kjy709ghv3zp4wms6-hello;sha256:"), "{fp}");
        assert!(key.nix_public_key().verify(fp.as_bytes(), &o.nix_signature));
        assert_eq!(o.deriver.as_ref(), Some(&drv));
        // It carries the builder's provenance, which names the output and its NarHash.
        let st = v.provenance.as_ref().expect("the builder's provenance").verify(&v).unwrap();
        assert_eq!(st.subject[0].digest.sha256, hex::encode([7; 32]));
        assert_eq!(st.predicate.run_details.builder.id, key.nix_public_key().to_string());
        // Committing the same report again is idempotent.
        let again = commit_attestation(&store, &key, &StoreDir::nix(), &drv, &report()).unwrap();
        assert!(!again.inserted.new);
        // A non-SHA-256 NarHash is refused before anything is stored.
        let mut bad = report();
        bad.outputs.get_mut("out").unwrap().nar_hash =
            NixHash::new(buildmesh_protocol::hash::HashAlgo::Sha1, vec![0; 20]).unwrap();
        assert!(matches!(
            commit_attestation(&store, &key, &StoreDir::nix(), &drv, &bad),
            Err(AttestError::NotSha256 { .. })
        ));
    }

    #[test]
    fn failure_is_signed_and_committed_with_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = NodeKey::from_seed("node-a-1", [4; 32]).unwrap();
        let drv = sp("mh08qwc103ql42f2zc4ka9nhz976z7m8-hello.drv");
        let err = BuildError::Timeout { limit: Duration::from_secs(5), log: b"slow\n".to_vec() };
        let c = commit_failure(&store, &key, &StoreDir::nix(), &drv, 2, &err, 1234).unwrap();
        assert_eq!(c.message.reason, FailureReason::Timeout { limit_ms: 5000 });
        assert_eq!((c.message.attempt, c.message.at_ms, c.message.mode), (2, 1234, BuildMode::Native));
        assert_eq!(store.failures_for_drv(&drv).unwrap()[0].entry, c.entry);
        assert_eq!(store.get_log(&drv).unwrap().unwrap(), b"slow\n");
        let missing = BuildError::MissingInput { path: sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-dep") };
        let c = commit_failure_in_mode(&store, &key, &StoreDir::nix(), &drv, 3, &missing, true, 1300).unwrap();
        assert_eq!(c.message.mode, BuildMode::Emulated);
        let log = String::from_utf8(store.get_log(&drv).unwrap().unwrap()).unwrap();
        assert!(log.contains("missing input wm32icn8hzjm0kah51xh8nv14dn4crdz-dep"), "{log}");
        Envelope::decode(&c.entry.envelope).unwrap().verify_as::<BuildFailure>().unwrap();
    }
}
