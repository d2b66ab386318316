//! Builder-signed provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate about
//! one [`Attestation`], signed by the builder as a DSSE envelope (issue 14, item 6).
//!
//! **Why the builder signs at build time.** A DSSE signature by a builder's key can only be made
//! by that builder, so for any node to export every builder's provenance, each builder makes its
//! envelope when it attests: it renders the statement of its attestation (it holds the `.drv`),
//! signs DSSE's [`pae`] of it with its node key, and the statement bytes and that signature
//! ([`Provenance`]) travel **inside the attestation**, as its extension `3` (see
//! [`Attestation`]'s encoding). So the envelope is covered by the attestation's own mesh
//! signature too (nobody can strip, swap or replay it onto another attestation), it is stored,
//! synced (anti-entropy pages carry the signed bytes) and restored with the attestation, with no
//! new message kind, table or request.
//!
//! **Checked on receipt.** [`Provenance::verify`] runs in the attestation's checks
//! ([`crate::wire::Payload::check`]), so every verification of an attestation (gossip,
//! anti-entropy, restore, an offline `verify`) also checks: the statement is at most
//! [`MAX_STATEMENT_LEN`] bytes (enforced by the decoder before anything is parsed), the ed25519
//! signature is the builder's over `PAE(`[`PAYLOAD_TYPE`]`, statement)`, the statement parses as
//! an in-toto Statement v1 of [`PREDICATE_TYPE`] and [`BUILD_TYPE`] whose subjects are exactly the
//! attestation's outputs with their NarHashes, whose `builder.id` is the builder's Nix public key,
//! whose `externalParameters.derivation` is the attestation's `.drv`, whose `emulated` flag and
//! times are the attestation's. An attestation failing any of these is invalid as a whole.
//!
//! **The statement** (deterministic: fields in a fixed order, outputs by name, dependencies
//! sorted): one subject per output, `name` = its store path, `digest.sha256` = its NarHash in hex;
//! `predicate.buildDefinition`: `buildType` [`BUILD_TYPE`], `externalParameters.derivation` = the
//! `.drv` path, `internalParameters` = `emulated` and, when the builder has the `.drv`, `system`;
//! `resolvedDependencies` = the derivation's input derivations and input sources (`uri`, `name`);
//! `predicate.runDetails.builder.id` = the builder's Nix public key (`<name>:<base64>`),
//! `metadata` = `startedOn` / `finishedOn` (RFC 3339). It carries no `invocationId`: the
//! attestation's message id hashes the statement, so the statement cannot name it (an export made
//! at export time of an own attestation from before this change still names it).
//!
//! **Bounded.** A statement longer than [`MAX_STATEMENT_LEN`] is made again without
//! `resolvedDependencies` (and `internalParameters.resolvedDependenciesOmitted` = how many there
//! were); if even that is too long, or the attestation with it would exceed the message size, the
//! attestation carries no provenance (and is not exported by other nodes).
//!
//! The signature never collides with the node key's other uses: PAE starts with `DSSEv1 `, a mesh
//! signature's input with `buildmesh/v1/`, a Nix fingerprint with `1;`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::derivation::Derivation;
use crate::identity::NodeKey;
use crate::wire::{Attestation, BuildMode};

#[cfg(test)]
mod tests;

/// DSSE `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// SLSA provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The build type: a Nix-style derivation built by a buildmesh node.
pub const BUILD_TYPE: &str = "https://buildmesh.invalid/buildtypes/derivation/v1";
/// The longest statement an attestation carries, in bytes (a mesh message is at most 63 KiB,
/// and the attestation's own fields need room beside it).
pub const MAX_STATEMENT_LEN: usize = 32 * 1024;

/// DSSE's pre-authentication encoding: `DSSEv1 SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Unix milliseconds as RFC 3339 UTC (`2026-12-06T19:20:00.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An in-toto Statement v1 with a SLSA provenance v1 predicate, as buildmesh writes and reads it
/// (unknown fields are ignored when reading).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// One per output.
    pub subject: Vec<Subject>,
    /// [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The SLSA provenance.
    pub predicate: Predicate,
}

/// A subject: an output and its NarHash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The output's store path.
    pub name: String,
    /// Its digests: exactly the NarHash.
    pub digest: Digest,
}

/// A subject's digest set: the NarHash only (another algorithm is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    /// sha256 of the NAR, hex.
    pub sha256: String,
}

/// SLSA provenance v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Predicate {
    /// What was built.
    pub build_definition: BuildDefinition,
    /// Who built it, when.
    pub run_details: RunDetails,
}

/// SLSA `buildDefinition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`].
    pub build_type: String,
    /// The derivation.
    pub external_parameters: ExternalParameters,
    /// Emulation, system.
    pub internal_parameters: InternalParameters,
    /// The derivation's inputs (when the builder had the `.drv`).
    #[serde(default)]
    pub resolved_dependencies: Vec<Dependency>,
}

/// `externalParameters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    /// The `.drv` store path.
    pub derivation: String,
}

/// `internalParameters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalParameters {
    /// Built under emulation (binfmt_misc).
    pub emulated: bool,
    /// The derivation's `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// How many dependencies were left out to keep the statement within [`MAX_STATEMENT_LEN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_dependencies_omitted: Option<u64>,
}

/// A resolved dependency (an input derivation or source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// Its store path.
    pub uri: String,
    /// Its base name.
    pub name: String,
}

/// SLSA `runDetails`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    /// The builder.
    pub builder: BuilderId,
    /// Times (and, at export time only, the attestation id).
    pub metadata: Metadata,
}

/// `runDetails.builder`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuilderId {
    /// The builder's Nix public key, `<name>:<base64>`.
    pub id: String,
}

/// `runDetails.metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The attestation's message id (only in statements signed at export time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    /// Build start, RFC 3339.
    pub started_on: String,
    /// Build end, RFC 3339.
    pub finished_on: String,
}

impl Statement {
    /// The statement of `att` by the builder whose Nix public key is `builder_id`, with the
    /// dependencies of `drv` when given, and `invocation_id` in the metadata when given.
    pub fn of(att: &Attestation, drv: Option<&Derivation>, builder_id: &str, invocation_id: Option<String>) -> Self {
        let sd = &att.store_dir;
        let subject = att
            .outputs
            .values()
            .map(|o| Subject { name: sd.display(&o.path), digest: Digest { sha256: hex::encode(o.nar_hash) } })
            .collect();
        let mut deps = Vec::new();
        let mut system = None;
        if let Some(d) = drv {
            let paths = d.input_drvs.keys().chain(d.input_srcs.iter());
            deps = paths.map(|p| Dependency { uri: sd.display(p), name: p.to_string() }).collect();
            system = Some(String::from_utf8_lossy(&d.system).into_owned());
        }
        Statement {
            type_: STATEMENT_TYPE.to_string(),
            subject,
            predicate_type: PREDICATE_TYPE.to_string(),
            predicate: Predicate {
                build_definition: BuildDefinition {
                    build_type: BUILD_TYPE.to_string(),
                    external_parameters: ExternalParameters { derivation: sd.display(&att.drv) },
                    internal_parameters: InternalParameters {
                        emulated: att.mode == BuildMode::Emulated,
                        system,
                        resolved_dependencies_omitted: None,
                    },
                    resolved_dependencies: deps,
                },
                run_details: RunDetails {
                    builder: BuilderId { id: builder_id.to_string() },
                    metadata: Metadata {
                        invocation_id,
                        started_on: rfc3339_ms(att.started_at_ms),
                        finished_on: rfc3339_ms(att.finished_at_ms),
                    },
                },
            },
        }
    }

    /// The JSON bytes (compact, fields in declaration order: one encoding per statement).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing these plain structs into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse statement bytes (at most [`MAX_STATEMENT_LEN`], checked before parsing).
    pub fn parse(bytes: &[u8]) -> Result<Statement, ProvenanceError> {
        if bytes.len() > MAX_STATEMENT_LEN {
            return Err(ProvenanceError::TooLarge { len: bytes.len(), max: MAX_STATEMENT_LEN });
        }
        serde_json::from_slice(bytes).map_err(|e| ProvenanceError::NotAStatement(e.to_string()))
    }
}

/// Why an attestation's provenance was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProvenanceError {
    /// The statement is longer than [`MAX_STATEMENT_LEN`].
    #[error("the provenance statement is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The DSSE signature is not the builder's over the PAE of the statement.
    #[error("the DSSE signature is not the builder's signature of the statement")]
    BadSignature,
    /// The bytes are not an in-toto statement as buildmesh writes them.
    #[error("the provenance is not an in-toto statement: {0}")]
    NotAStatement(String),
    /// A field names something other than the attestation does.
    #[error("the provenance's {field} is {found:?}, but the attestation's is {expected:?}")]
    Field {
        /// The statement's field.
        field: &'static str,
        /// What the statement says.
        found: String,
        /// What it must say.
        expected: String,
    },
    /// The subjects are not exactly the attestation's outputs and NarHashes.
    #[error("the provenance's subjects are not the attestation's outputs and NarHashes: {0}")]
    Subjects(String),
}

/// A builder's DSSE-signed statement about its attestation, as it travels in the attestation:
/// the statement bytes (the DSSE payload, at most [`MAX_STATEMENT_LEN`]) and the ed25519
/// signature over `PAE(`[`PAYLOAD_TYPE`]`, payload)`. The DSSE `keyid` is the builder's Nix
/// public key ([`builder_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The statement's JSON bytes.
    pub payload: Vec<u8>,
    /// ed25519 by the builder over [`pae`] of the payload.
    pub signature: [u8; 64],
}

/// The builder id of `att`: the builder's Nix public key under the key name of its outputs'
/// Nix signatures (what `buildmesh key show` prints).
pub fn builder_id(att: &Attestation) -> Option<String> {
    let name = att.outputs.values().next()?.nix_signature.key_name();
    att.builder.nix_public_key(name).ok().map(|k| k.to_string())
}

impl Provenance {
    /// The builder `key` signs the statement of `att` (with `drv`'s dependencies when given).
    /// `None` when the statement does not fit [`MAX_STATEMENT_LEN`] even without dependencies.
    pub fn sign(key: &NodeKey, att: &Attestation, drv: Option<&Derivation>) -> Option<Provenance> {
        let id = key.nix_public_key().to_string();
        let mut st = Statement::of(att, drv, &id, None);
        let mut payload = st.to_bytes();
        if payload.len() > MAX_STATEMENT_LEN {
            let bd = &mut st.predicate.build_definition;
            bd.internal_parameters.resolved_dependencies_omitted = Some(bd.resolved_dependencies.len() as u64);
            bd.resolved_dependencies.clear();
            payload = st.to_bytes();
        }
        if payload.len() > MAX_STATEMENT_LEN {
            return None;
        }
        let signature = *key.sign_nix(&pae(PAYLOAD_TYPE, &payload)).bytes();
        Some(Provenance { payload, signature })
    }

    /// Check that this is the builder's signed statement of exactly `att` (see the module docs).
    pub fn verify(&self, att: &Attestation) -> Result<Statement, ProvenanceError> {
        if self.payload.len() > MAX_STATEMENT_LEN {
            return Err(ProvenanceError::TooLarge { len: self.payload.len(), max: MAX_STATEMENT_LEN });
        }
        if !att.builder.verify_strict(&pae(PAYLOAD_TYPE, &self.payload), &self.signature) {
            return Err(ProvenanceError::BadSignature);
        }
        let st = Statement::parse(&self.payload)?;
        let field = |field: &'static str, found: &str, expected: &str| {
            if found == expected {
                Ok(())
            } else {
                Err(ProvenanceError::Field { field, found: found.to_string(), expected: expected.to_string() })
            }
        };
        field("_type", &st.type_, STATEMENT_TYPE)?;
        field("predicateType", &st.predicate_type, PREDICATE_TYPE)?;
        let bd = &st.predicate.build_definition;
        field("buildType", &bd.build_type, BUILD_TYPE)?;
        let sd = &att.store_dir;
        field("externalParameters.derivation", &bd.external_parameters.derivation, &sd.display(&att.drv))?;
        let emulated = (att.mode == BuildMode::Emulated).to_string();
        field("internalParameters.emulated", &bd.internal_parameters.emulated.to_string(), &emulated)?;
        let rd = &st.predicate.run_details;
        let id = builder_id(att).ok_or_else(|| ProvenanceError::Field {
            field: "runDetails.builder.id",
            found: rd.builder.id.clone(),
            expected: "a Nix public key of the builder".into(),
        })?;
        field("runDetails.builder.id", &rd.builder.id, &id)?;
        field("runDetails.metadata.startedOn", &rd.metadata.started_on, &rfc3339_ms(att.started_at_ms))?;
        field("runDetails.metadata.finishedOn", &rd.metadata.finished_on, &rfc3339_ms(att.finished_at_ms))?;
        let expected: BTreeSet<(String, String)> =
            att.outputs.values().map(|o| (sd.display(&o.path), hex::encode(o.nar_hash))).collect();
        let found: BTreeSet<(String, String)> =
            st.subject.iter().map(|s| (s.name.clone(), s.digest.sha256.clone())).collect();
        if found.len() != st.subject.len() {
            return Err(ProvenanceError::Subjects("a subject is listed twice".into()));
        }
        if let Some((name, hash)) = found.difference(&expected).next() {
            return Err(ProvenanceError::Subjects(format!("{name} with sha256 {hash} is not an attested output")));
        }
        if let Some((name, hash)) = expected.difference(&found).next() {
            return Err(ProvenanceError::Subjects(format!("output {name} with sha256 {hash} is missing")));
        }
        Ok(st)
    }
}
