//! Build results: [`Attestation`] (success) and [`BuildFailure`].

use std::collections::{BTreeMap, BTreeSet};

use super::codec::{Decode, DecodeError, Encode, Reader, Sink, put_i32, put_len, put_option, put_set, put_str};
use super::codec::{put_bytes, put_u8, put_u32, put_u64};
use super::read_store_dir;
use super::{BuildMode, Kind, MAX_OUTPUTS, MAX_REFERENCES, MAX_TEXT_LEN, Payload, read_drv, read_output_name};
use crate::hash::NixHash;
use crate::id::{ArtifactHash, NodeId};
use crate::identity::NodeKey;
use crate::intoto::{MAX_STATEMENT_LEN, Provenance};
use crate::narinfo::{self, FingerprintError, NarInfo};
use crate::nixkey::NixSignature;
use crate::store_path::{StoreDir, StorePath};

/// The digest of a build log as the builder stored it: what a node that fetches the log from the
/// builder checks it against, so a peer relaying it cannot swap it (issue 14).
///
/// The log is the builder's stored log (capped at its `max_log_bytes`, keeping the tail), so its
/// digest is computed over exactly the bytes the builder serves.
///
/// Encoding (as an extension, see [`Attestation`]): `sha256` 32 bytes ‖ `size` u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogDigest {
    /// sha256 of the log bytes.
    pub sha256: [u8; 32],
    /// Length of the log in bytes.
    pub size: u64,
}

impl LogDigest {
    /// The extension tag of a log digest.
    pub const TAG: u8 = 1;

    /// The digest of `log`.
    pub fn of(log: &[u8]) -> LogDigest {
        use sha2::Digest as _;
        LogDigest { sha256: sha2::Sha256::digest(log).into(), size: log.len() as u64 }
    }

    /// Whether `log` is the log this digest names.
    pub fn matches(&self, log: &[u8]) -> bool {
        *self == LogDigest::of(log)
    }
}

/// Encode the optional extensions of a build result: nothing for none (the encoding of a message
/// without them is unchanged), else each present one as `tag` u8 ‖ fields, tags increasing.
fn put_extensions<S: Sink + ?Sized>(out: &mut S, log: Option<&LogDigest>) {
    if let Some(l) = log {
        put_u8(out, LogDigest::TAG);
        out.put(&l.sha256);
        put_u64(out, l.size);
    }
}

/// Decode the extensions after the mandatory fields (whatever is left of `r`): a message from
/// before they existed has none. Tags must increase; an unknown tag is an error (a later version
/// that adds one also teaches its decoders).
fn read_extensions(r: &mut Reader<'_>, field: &'static str) -> Result<Option<LogDigest>, DecodeError> {
    let mut log = None;
    r.extensions(field, |r, tag, _| {
        if tag != LogDigest::TAG {
            return Ok(false);
        }
        let sha256 = r.array::<32>(field)?;
        let size = r.u64(field)?;
        log = Some(LogDigest { sha256, size });
        Ok(true)
    })?;
    Ok(log)
}

/// One output of an attested build.
///
/// Encoding: `path` ‖ `nar_hash` 32 bytes ‖ `nar_size` u64 (> 0) ‖ `references` (set of store paths)
/// ‖ `content_id` 32 bytes ‖ `deriver` (option of store path) ‖ `nix_signature`. The optional Guix
/// signature is not part of this record's encoding: it follows the attestation's outputs (see
/// [`Attestation`]), so attestations made before it existed decode unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputAttestation {
    /// The output's store path.
    pub path: StorePath,
    /// NarHash: sha256 of the NAR (see [`OutputAttestation::nar_hash`] for the [`NixHash`] form).
    pub nar_hash: [u8; 32],
    /// NarSize (> 0).
    pub nar_size: u64,
    /// References (store paths, in the attestation's store dir; may include the path itself).
    pub references: BTreeSet<StorePath>,
    /// blake3 of the NAR: the content id peers fetch it by.
    pub content_id: ArtifactHash,
    /// The narinfo `Deriver` (normally the attestation's drv); `None` = unknown.
    pub deriver: Option<StorePath>,
    /// The builder's Nix signature over the Nix fingerprint of this output
    /// (`1;<path>;<narHash>;<narSize>;<refs>`), so the gateway can serve it as a narinfo `Sig:`.
    pub nix_signature: NixSignature,
    /// The builder's Guix signature of this output (store dir `/gnu/store` only): the value of a
    /// narinfo `Signature:` line, `1;<host>;<base64 s-expression>`, over the signed part
    /// [`crate::narinfo::guix_layout::signed_part`] renders from this record's facts (the same
    /// bytes on every node), so any gateway can serve the builder's own Guix signature.
    pub guix_signature: Option<String>,
}

/// The longest Guix signature value (`1;<host>;<base64>`) an attestation may carry, in bytes
/// (Guix's own are about 480).
pub const MAX_GUIX_SIGNATURE_LEN: usize = 2048;

impl OutputAttestation {
    /// An output attestation signed (for Nix) with `key`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_signed(
        key: &NodeKey,
        store_dir: &StoreDir,
        path: StorePath,
        nar_hash: [u8; 32],
        nar_size: u64,
        references: BTreeSet<StorePath>,
        content_id: ArtifactHash,
        deriver: Option<StorePath>,
    ) -> Result<OutputAttestation, FingerprintError> {
        let fp = narinfo::fingerprint(store_dir, &path, &nar_hash, nar_size, &references)?;
        let nix_signature = key.sign_nix(fp.as_bytes());
        let mut o = OutputAttestation {
            path,
            nar_hash,
            nar_size,
            references,
            content_id,
            deriver,
            nix_signature,
            guix_signature: None,
        };
        if crate::narinfo::guix_layout::is_guix_store(store_dir) {
            o.guix_signature = crate::narinfo::guix_layout::sign_output(key, store_dir, &o);
        }
        Ok(o)
    }

    /// The signed part of this output's Guix narinfo (what [`OutputAttestation::guix_signature`]
    /// signs and what every gateway serves before the `Signature:` line).
    pub fn guix_signed_part(&self, store_dir: &StoreDir) -> String {
        crate::narinfo::guix_layout::signed_part(
            store_dir,
            &self.path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
            self.deriver.as_ref(),
        )
    }

    /// NarHash as a [`NixHash`] (`sha256:<nix32>`).
    pub fn nar_hash(&self) -> NixHash {
        NixHash::sha256(self.nar_hash)
    }

    /// The Nix fingerprint this output's `nix_signature` signs.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> Result<String, FingerprintError> {
        narinfo::fingerprint(store_dir, &self.path, &self.nar_hash, self.nar_size, &self.references)
    }

    /// A narinfo for this output (`Compression: none`, URL `nar/<nix32 NarHash>.nar`), with the
    /// deriver and the builder's `Sig`.
    pub fn to_narinfo(&self, store_dir: &StoreDir) -> NarInfo {
        let mut n = NarInfo::new(
            store_dir.clone(),
            self.path.clone(),
            self.nar_hash,
            self.nar_size,
            self.references.iter().cloned().collect(),
        );
        n.deriver = self.deriver.clone().map(narinfo::Deriver::Path);
        n.sigs.push(self.nix_signature.clone());
        n
    }
}

impl Encode for OutputAttestation {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.path.encode(out);
        out.put(&self.nar_hash);
        put_u64(out, self.nar_size);
        put_set(out, self.references.iter(), |o, p: &StorePath| p.encode(o));
        self.content_id.encode(out);
        put_option(out, self.deriver.as_ref(), |o, p| p.encode(o));
        self.nix_signature.encode(out);
    }
}

impl OutputAttestation {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let path = StorePath::decode(r, "attestation.outputs.path")?;
        let nar_hash = r.array::<32>("attestation.outputs.nar_hash")?;
        let offset = r.offset();
        let nar_size = r.u64("attestation.outputs.nar_size")?;
        if nar_size == 0 {
            return Err(Reader::invalid("attestation.outputs.nar_size", offset, "NarSize must be > 0"));
        }
        let references = r.set("attestation.outputs.references", MAX_REFERENCES, 25, |r| {
            StorePath::decode(r, "attestation.outputs.references")
        })?;
        let content_id = ArtifactHash::decode(r, "attestation.outputs.content_id")?;
        let deriver = r.option("attestation.outputs.deriver", |r| read_drv(r, "attestation.outputs.deriver"))?;
        let nix_signature = NixSignature::decode(r, "attestation.outputs.nix_signature")?;
        Ok(OutputAttestation {
            path,
            nar_hash,
            nar_size,
            references,
            content_id,
            deriver,
            nix_signature,
            guix_signature: None,
        })
    }
}

/// A builder's signed statement: "I built `drv` and got these outputs".
///
/// A verified attestation also guarantees that every output's `nix_signature` is valid under the
/// builder's key (checked in [`Payload::check`]).
///
/// Idempotence and replays: receivers store attestations by message id (union merge); one builder
/// attesting the same drv again counts once in verdicts.
///
/// Encoding: `builder` ‖ `store_dir` ‖ `drv` ‖ `mode` u8 (0 native, 1 emulated) ‖ `started_at_ms` u64
/// ‖ `finished_at_ms` u64 (≥ start) ‖ outputs: count (1..=64) then, strictly increasing by name,
/// name ‖ [`OutputAttestation`] ‖ extensions, each a tag u8 then its value, tags increasing, each
/// optional (a message without them encodes and decodes as before they existed):
/// `1` ‖ [`LogDigest`] (issue 14); `2` ‖ the Guix signatures, per output in the same order an
/// option of the signature text (at most [`MAX_GUIX_SIGNATURE_LEN`] bytes; at least one present,
/// or the tag and list are absent; issue 17); `3` ‖ the builder's [`Provenance`]: the in-toto
/// statement's bytes (length-prefixed, at most [`crate::intoto::MAX_STATEMENT_LEN`], checked
/// before they are read) ‖ the DSSE signature, 64 bytes (issue 14; checked with the attestation,
/// see [`crate::intoto`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The builder (must be the signer; its key also made the Nix signatures).
    pub builder: NodeId,
    /// The store directory of every path.
    pub store_dir: StoreDir,
    /// The derivation built.
    pub drv: StorePath,
    /// Native or emulated.
    pub mode: BuildMode,
    /// Build start (unix millis).
    pub started_at_ms: u64,
    /// Build end (unix millis).
    pub finished_at_ms: u64,
    /// Outputs by name (`out`, `dev`, …); at least one.
    pub outputs: BTreeMap<String, OutputAttestation>,
    /// The digest of the build log the builder stored (`None`: an older builder, or no log).
    pub log: Option<LogDigest>,
    /// The builder's DSSE-signed in-toto statement of this attestation (`None`: an older builder,
    /// or a statement too large to carry).
    pub provenance: Option<Provenance>,
}

impl Encode for Attestation {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.builder.encode(out);
        self.store_dir.encode(out);
        self.drv.encode(out);
        put_u8(out, self.mode.tag());
        put_u64(out, self.started_at_ms);
        put_u64(out, self.finished_at_ms);
        put_len(out, self.outputs.len());
        for (name, o) in &self.outputs {
            put_str(out, name);
            o.encode(out);
        }
        put_extensions(out, self.log.as_ref());
        if self.outputs.values().any(|o| o.guix_signature.is_some()) {
            put_u8(out, GUIX_SIGNATURES_TAG);
            for o in self.outputs.values() {
                put_option(out, o.guix_signature.as_ref(), |out, s| put_str(out, s));
            }
        }
        if let Some(p) = &self.provenance {
            put_u8(out, PROVENANCE_TAG);
            put_bytes(out, &p.payload);
            out.put(&p.signature);
        }
    }
}

/// The tag of the Guix signatures that may follow an attestation's outputs.
const GUIX_SIGNATURES_TAG: u8 = 2;
/// The tag of the builder's provenance (after the Guix signatures).
const PROVENANCE_TAG: u8 = 3;

impl Payload for Attestation {
    const KIND: Kind = Kind::Attestation;

    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let builder = NodeId::decode(r, "attestation.builder")?;
        let store_dir = read_store_dir(r)?;
        let drv = read_drv(r, "attestation.drv")?;
        let mode = BuildMode::decode(r, "attestation.mode")?;
        let started_at_ms = r.u64("attestation.started_at_ms")?;
        let offset = r.offset();
        let finished_at_ms = r.u64("attestation.finished_at_ms")?;
        if finished_at_ms < started_at_ms {
            return Err(Reader::invalid("attestation.finished_at_ms", offset, "build ends before it starts"));
        }
        let offset = r.offset();
        let n = r.len("attestation.outputs", MAX_OUTPUTS, 5 + 20 + 4 + 32 + 8 + 4 + 32 + 1 + 4 + 64)?;
        if n == 0 {
            return Err(Reader::invalid("attestation.outputs", offset, "an attestation needs at least one output"));
        }
        let mut outputs = BTreeMap::new();
        for _ in 0..n {
            let offset = r.offset();
            let name = read_output_name(r, "attestation.outputs.name")?;
            if outputs.last_key_value().is_some_and(|(last, _)| *last >= name) {
                return Err(DecodeError::NotCanonical { field: "attestation.outputs.name", offset });
            }
            let o = OutputAttestation::decode(r)?;
            outputs.insert(name, o);
        }
        let mut log = None;
        let mut provenance = None;
        r.extensions("attestation.extensions", |r, tag, offset| {
            match tag {
                LogDigest::TAG => {
                    const F: &str = "attestation.extensions";
                    let sha256 = r.array::<32>(F)?;
                    let size = r.u64(F)?;
                    log = Some(LogDigest { sha256, size });
                }
                GUIX_SIGNATURES_TAG => {
                    const G: &str = "attestation.guix_signatures";
                    let mut any = false;
                    for o in outputs.values_mut() {
                        o.guix_signature = r.option(G, |r| r.str(G, MAX_GUIX_SIGNATURE_LEN).map(str::to_string))?;
                        any |= o.guix_signature.is_some();
                    }
                    if !any {
                        return Err(DecodeError::NotCanonical { field: G, offset });
                    }
                }
                PROVENANCE_TAG => {
                    const P: &str = "attestation.provenance";
                    let payload = r.bytes(P, MAX_STATEMENT_LEN)?.to_vec();
                    let signature = r.array::<64>(P)?;
                    provenance = Some(Provenance { payload, signature });
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Attestation { builder, store_dir, drv, mode, started_at_ms, finished_at_ms, outputs, log, provenance })
    }

    fn author(&self) -> &NodeId {
        &self.builder
    }

    fn check(&self) -> Result<(), String> {
        for (name, o) in &self.outputs {
            let key =
                self.builder.nix_public_key(o.nix_signature.key_name()).map_err(|e| format!("output {name}: {e}"))?;
            let fp = o.fingerprint(&self.store_dir).map_err(|e| format!("output {name}: {e}"))?;
            if !key.verify(fp.as_bytes(), &o.nix_signature) {
                return Err(format!(
                    "output {name}: the Nix signature is not the builder's signature of the fingerprint {fp}"
                ));
            }
            if let Some(sig) = &o.guix_signature {
                crate::narinfo::guix_layout::check_output_signature(&self.builder, &self.store_dir, o, sig)
                    .map_err(|e| format!("output {name}: {e}"))?;
            }
        }
        if let Some(p) = &self.provenance {
            p.verify(self).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Why a build failed.
///
/// Encoding: tag u8 then fields: `0` builder exit (`code` i32), `1` builder signal (`signal` u8),
/// `2` timeout (`limit_ms` u64), `3` hash mismatch (`output` name, `expected`, `actual` as
/// [`NixHash`] of the same algorithm), `4` missing input (store path), `5` executor error (text),
/// `6` other (text). Texts are at most 1024 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// The builder exited with a non-zero status.
    BuilderExit {
        /// Exit code.
        code: i32,
    },
    /// The builder was killed by a signal.
    BuilderSignal {
        /// Signal number.
        signal: u8,
    },
    /// The build ran out of time.
    Timeout {
        /// The limit that was hit.
        limit_ms: u64,
    },
    /// A fixed-output derivation produced the wrong hash.
    HashMismatch {
        /// The output.
        output: String,
        /// The hash the derivation declares.
        expected: NixHash,
        /// The hash of what was built.
        actual: NixHash,
    },
    /// An input could not be obtained.
    MissingInput {
        /// The input's store path.
        path: StorePath,
    },
    /// The executor itself failed (sandbox setup, I/O).
    Executor {
        /// What happened.
        message: String,
    },
    /// Anything else.
    Other {
        /// What happened.
        message: String,
    },
}

impl FailureReason {
    /// Whether the failure is a property of the derivation (the same build elsewhere would fail the
    /// same way): builder exit, signal, hash mismatch. Timeouts, missing inputs and executor errors
    /// are worth retrying on another node. A hint for the scheduler, not a verdict.
    pub fn is_deterministic(&self) -> bool {
        matches!(self, FailureReason::BuilderExit { .. } | FailureReason::HashMismatch { .. })
    }

    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        match self {
            FailureReason::BuilderExit { code } => {
                put_u8(out, 0);
                put_i32(out, *code);
            }
            FailureReason::BuilderSignal { signal } => {
                put_u8(out, 1);
                put_u8(out, *signal);
            }
            FailureReason::Timeout { limit_ms } => {
                put_u8(out, 2);
                put_u64(out, *limit_ms);
            }
            FailureReason::HashMismatch { output, expected, actual } => {
                put_u8(out, 3);
                put_str(out, output);
                expected.encode(out);
                actual.encode(out);
            }
            FailureReason::MissingInput { path } => {
                put_u8(out, 4);
                path.encode(out);
            }
            FailureReason::Executor { message } => {
                put_u8(out, 5);
                put_str(out, message);
            }
            FailureReason::Other { message } => {
                put_u8(out, 6);
                put_str(out, message);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        const F: &str = "build_failure.reason";
        let offset = r.offset();
        Ok(match r.u8(F)? {
            0 => FailureReason::BuilderExit { code: r.i32(F)? },
            1 => FailureReason::BuilderSignal { signal: r.u8(F)? },
            2 => FailureReason::Timeout { limit_ms: r.u64(F)? },
            3 => {
                let output = read_output_name(r, "build_failure.reason.output")?;
                let expected = NixHash::decode(r, "build_failure.reason.expected")?;
                let at = r.offset();
                let actual = NixHash::decode(r, "build_failure.reason.actual")?;
                if actual.algo() != expected.algo() {
                    return Err(Reader::invalid(
                        "build_failure.reason.actual",
                        at,
                        "the actual hash must use the expected hash's algorithm",
                    ));
                }
                FailureReason::HashMismatch { output, expected, actual }
            }
            4 => FailureReason::MissingInput { path: StorePath::decode(r, "build_failure.reason.path")? },
            5 => FailureReason::Executor { message: r.str("build_failure.reason.message", MAX_TEXT_LEN)?.to_string() },
            6 => FailureReason::Other { message: r.str("build_failure.reason.message", MAX_TEXT_LEN)?.to_string() },
            tag => return Err(DecodeError::InvalidTag { field: F, offset, tag }),
        })
    }
}

/// A builder's signed statement that building `drv` failed.
///
/// Idempotence and replays: keyed by (`drv`, `builder`, `attempt`); duplicates are dropped.
///
/// Encoding: `builder` ‖ `store_dir` ‖ `drv` ‖ `attempt` u32 (≥ 1) ‖ `mode` u8 ‖ `at_ms` u64 ‖ `reason`
/// ‖ extensions as in [`Attestation`] (the [`LogDigest`] of the failed build's log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    /// The builder (must be the signer).
    pub builder: NodeId,
    /// The store directory of the paths.
    pub store_dir: StoreDir,
    /// The derivation.
    pub drv: StorePath,
    /// The attempt that failed (the claim's attempt).
    pub attempt: u32,
    /// Native or emulated.
    pub mode: BuildMode,
    /// When it failed (unix millis).
    pub at_ms: u64,
    /// Why.
    pub reason: FailureReason,
    /// The digest of the build log the builder stored (`None`: an older builder).
    pub log: Option<LogDigest>,
}

impl Encode for BuildFailure {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.builder.encode(out);
        self.store_dir.encode(out);
        self.drv.encode(out);
        put_u32(out, self.attempt);
        put_u8(out, self.mode.tag());
        put_u64(out, self.at_ms);
        self.reason.encode(out);
        put_extensions(out, self.log.as_ref());
    }
}

impl Payload for BuildFailure {
    const KIND: Kind = Kind::BuildFailure;

    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let builder = NodeId::decode(r, "build_failure.builder")?;
        let store_dir = read_store_dir(r)?;
        let drv = read_drv(r, "build_failure.drv")?;
        let offset = r.offset();
        let attempt = r.u32("build_failure.attempt")?;
        if attempt == 0 {
            return Err(Reader::invalid("build_failure.attempt", offset, "attempts count from 1"));
        }
        let mode = BuildMode::decode(r, "build_failure.mode")?;
        let at_ms = r.u64("build_failure.at_ms")?;
        let reason = FailureReason::decode(r)?;
        let log = read_extensions(r, "build_failure.extensions")?;
        Ok(BuildFailure { builder, store_dir, drv, attempt, mode, at_ms, reason, log })
    }

    fn author(&self) -> &NodeId {
        &self.builder
    }
}
