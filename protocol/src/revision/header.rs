//! [`RevisionHeader`]: its field rules and its canonical encoding as a signed mesh message of kind
//! [`Kind::Revision`].
//!
//! Encoding: `submitter` ‖ `created_at_ms` u64 ‖ `store_dir` ‖ `channel` ‖ `branch` ‖ `commit` ‖
//! `manifest_hash` 32 bytes ‖ `manifest_size` u64 ‖ `drv_count` u32 ‖ `jobs_per_system` (u32 count
//! ≤ [`MAX_REVISION_SYSTEMS`], then per system, in strictly increasing order: the system name ‖ its
//! job count u32 ≥ 1) ‖ `replicas` u8 (1..=16).

use std::collections::BTreeMap;

use thiserror::Error;

use super::manifest_codec::manifest_hash;
use super::{
    MAX_MANIFEST_DRVS, MAX_MANIFEST_JOBS, MAX_MANIFEST_SIZE, MIN_MANIFEST_SIZE, Manifest, RevisionHeader, RevisionId,
};
use crate::id::NodeId;
use crate::wire::codec::{Decode, DecodeError, Encode, Reader, Sink, put_len, put_str, put_u8, put_u32, put_u64};
use crate::wire::{Kind, MAX_REPLICAS, MAX_SYSTEM_LEN, Payload, validate_system};

/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 64;
/// Longest branch name.
pub const MAX_BRANCH_LEN: usize = 128;
/// Longest commit id.
pub const MAX_COMMIT_LEN: usize = 64;
/// Most systems in a revision header's `jobs_per_system`.
pub const MAX_REVISION_SYSTEMS: usize = 64;

fn check_chars(s: &str, max: usize, extra: &[u8], what: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} {s:?} must be 1-{max} bytes"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || (c.is_ascii() && extra.contains(&(*c as u8))))) {
        let allowed = String::from_utf8_lossy(extra);
        return Err(format!("{what} {s:?} contains {c:?}; allowed are letters, digits and {allowed:?}"));
    }
    Ok(())
}

/// A channel name (`guix`, `nixpkgs`): 1–64 bytes of `[A-Za-z0-9_.+-]`.
pub fn validate_channel(s: &str) -> Result<(), String> {
    check_chars(s, MAX_CHANNEL_LEN, b"_.+-", "channel")
}

/// A branch name (`master`, `release-24.05`, `wip/foo`): 1–128 bytes of `[A-Za-z0-9_.+/-]`, not
/// starting with `/`, without `..`.
pub fn validate_branch(s: &str) -> Result<(), String> {
    check_chars(s, MAX_BRANCH_LEN, b"_.+/-", "branch")?;
    if s.starts_with('/') {
        return Err(format!("branch {s:?} must not start with '/'"));
    }
    if s.contains("..") {
        return Err(format!("branch {s:?} must not contain \"..\""));
    }
    Ok(())
}

/// A commit id (`4d1b2c…`, a tag such as `v1.2`): 1–64 bytes of `[A-Za-z0-9_.-]`.
pub fn validate_commit(s: &str) -> Result<(), String> {
    check_chars(s, MAX_COMMIT_LEN, b"_.-", "commit")
}

impl RevisionHeader {
    /// The revision's name `C@ID`.
    pub fn id(&self) -> RevisionId {
        RevisionId { channel: self.channel.clone(), commit: self.commit.clone() }
    }

    /// The number of jobs (the sum of [`RevisionHeader::jobs_per_system`]).
    pub fn job_count(&self) -> u64 {
        self.jobs_per_system.values().map(|n| u64::from(*n)).sum()
    }

    /// Check every field rule (the same rules the decoder enforces), naming the first broken one.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let bytes = self.to_bytes();
        let mut r = Reader::new(&bytes);
        RevisionHeader::decode_payload(&mut r).and_then(|_| r.finish())
    }

    /// The header of a revision whose manifest is `manifest`, encoded as `encoded`
    /// (`manifest.encode_to_vec()`, passed in so that a large manifest is encoded once): hash, size
    /// and counts from the manifest, the rest from the arguments. Fails if a field breaks its rule.
    #[allow(clippy::too_many_arguments)]
    pub fn for_manifest(
        submitter: NodeId,
        created_at_ms: u64,
        channel: &str,
        branch: &str,
        commit: &str,
        replicas: u8,
        manifest: &Manifest,
        encoded: &[u8],
    ) -> Result<RevisionHeader, DecodeError> {
        debug_assert_eq!(encoded.len(), manifest.encoded_len(), "`encoded` is not the manifest's encoding");
        let header = RevisionHeader {
            submitter,
            created_at_ms,
            store_dir: manifest.store_dir.clone(),
            channel: channel.to_string(),
            branch: branch.to_string(),
            commit: commit.to_string(),
            manifest_hash: manifest_hash(encoded),
            manifest_size: encoded.len() as u64,
            drv_count: u32::try_from(manifest.drvs.len()).unwrap_or(u32::MAX),
            jobs_per_system: manifest.jobs_per_system(),
            replicas,
        };
        header.validate()?;
        Ok(header)
    }

    /// Check manifest bytes received from a peer against this (verified) header and decode them:
    /// the size first (nothing is read when it differs), then the blake3 hash, then the strict
    /// decode, then that the store directory and the counts agree with the header.
    pub fn check_manifest(&self, bytes: &[u8]) -> Result<Manifest, ManifestCheckError> {
        if bytes.len() as u64 != self.manifest_size {
            return Err(ManifestCheckError::Size { expected: self.manifest_size, found: bytes.len() as u64 });
        }
        let found = manifest_hash(bytes);
        if found != self.manifest_hash {
            return Err(ManifestCheckError::Hash {
                expected: hex::encode(self.manifest_hash),
                found: hex::encode(found),
            });
        }
        let manifest = Manifest::decode(bytes)?;
        let mismatch =
            |field, header: String, manifest: String| ManifestCheckError::Mismatch { field, header, manifest };
        if manifest.store_dir != self.store_dir {
            return Err(mismatch("store_dir", self.store_dir.to_string(), manifest.store_dir.to_string()));
        }
        if manifest.drvs.len() as u64 != u64::from(self.drv_count) {
            return Err(mismatch("drv_count", self.drv_count.to_string(), manifest.drvs.len().to_string()));
        }
        let jobs = manifest.jobs_per_system();
        if jobs != self.jobs_per_system {
            return Err(mismatch("jobs_per_system", format!("{:?}", self.jobs_per_system), format!("{jobs:?}")));
        }
        Ok(manifest)
    }
}

/// Why manifest bytes do not belong to a revision header ([`RevisionHeader::check_manifest`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ManifestCheckError {
    /// The length differs from the header's `manifest_size`.
    #[error("manifest has {found} bytes, the revision header says {expected}")]
    Size {
        /// The header's size.
        expected: u64,
        /// The length received.
        found: u64,
    },
    /// The blake3 hash differs from the header's `manifest_hash`.
    #[error("manifest hash mismatch: the revision header says blake3 {expected}, the bytes hash to {found}")]
    Hash {
        /// The header's hash (hex).
        expected: String,
        /// The bytes' hash (hex).
        found: String,
    },
    /// The bytes hash right but do not decode (a submitter published a bad manifest).
    #[error("manifest does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The manifest decodes but disagrees with a header field.
    #[error("manifest disagrees with its revision header on {field}: header {header}, manifest {manifest}")]
    Mismatch {
        /// The header field.
        field: &'static str,
        /// The header's value.
        header: String,
        /// The manifest's value.
        manifest: String,
    },
}

impl Encode for RevisionHeader {
    fn encode<S: Sink + ?Sized>(&self, out: &mut S) {
        self.submitter.encode(out);
        put_u64(out, self.created_at_ms);
        self.store_dir.encode(out);
        put_str(out, &self.channel);
        put_str(out, &self.branch);
        put_str(out, &self.commit);
        out.put(&self.manifest_hash);
        put_u64(out, self.manifest_size);
        put_u32(out, self.drv_count);
        put_len(out, self.jobs_per_system.len());
        for (system, n) in &self.jobs_per_system {
            put_str(out, system);
            put_u32(out, *n);
        }
        put_u8(out, self.replicas);
    }
}

fn read_checked(
    r: &mut Reader<'_>,
    field: &'static str,
    max: usize,
    rule: fn(&str) -> Result<(), String>,
) -> Result<String, DecodeError> {
    let offset = r.offset();
    let s = r.str(field, max)?;
    rule(s).map_err(|e| Reader::invalid(field, offset, e))?;
    Ok(s.to_string())
}

fn read_jobs_per_system(r: &mut Reader<'_>) -> Result<BTreeMap<String, u32>, DecodeError> {
    const FIELD: &str = "revision.jobs_per_system";
    // Each entry takes at least 4 + 1 (a system name) + 4 (its count) bytes.
    let n = r.len(FIELD, MAX_REVISION_SYSTEMS, 9)?;
    let mut out = BTreeMap::new();
    let mut total = 0u64;
    for _ in 0..n {
        let offset = r.offset();
        let system = read_checked(r, FIELD, MAX_SYSTEM_LEN, validate_system)?;
        if out.last_key_value().is_some_and(|(last, _)| *last >= system) {
            return Err(DecodeError::NotCanonical { field: FIELD, offset });
        }
        let count_offset = r.offset();
        let count = r.u32(FIELD)?;
        if count == 0 {
            return Err(Reader::invalid(FIELD, count_offset, format!("system {system} has 0 jobs (omit it instead)")));
        }
        total += u64::from(count);
        if total > MAX_MANIFEST_JOBS as u64 {
            return Err(Reader::invalid(
                FIELD,
                count_offset,
                format!("more than {MAX_MANIFEST_JOBS} jobs in all (the manifest limit)"),
            ));
        }
        out.insert(system, count);
    }
    Ok(out)
}

impl Payload for RevisionHeader {
    const KIND: Kind = Kind::Revision;

    fn decode_payload(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let submitter = NodeId::decode(r, "revision.submitter")?;
        let created_at_ms = r.u64("revision.created_at_ms")?;
        let store_dir = crate::wire::read_store_dir(r)?;
        let channel = read_checked(r, "revision.channel", MAX_CHANNEL_LEN, validate_channel)?;
        let branch = read_checked(r, "revision.branch", MAX_BRANCH_LEN, validate_branch)?;
        let commit = read_checked(r, "revision.commit", MAX_COMMIT_LEN, validate_commit)?;
        let manifest_hash = r.array::<32>("revision.manifest_hash")?;
        let offset = r.offset();
        let manifest_size = r.u64("revision.manifest_size")?;
        if !(MIN_MANIFEST_SIZE as u64..=MAX_MANIFEST_SIZE as u64).contains(&manifest_size) {
            return Err(Reader::invalid(
                "revision.manifest_size",
                offset,
                format!("{manifest_size} bytes is outside {MIN_MANIFEST_SIZE}..={MAX_MANIFEST_SIZE}"),
            ));
        }
        let offset = r.offset();
        let drv_count = r.u32("revision.drv_count")?;
        if drv_count as usize > MAX_MANIFEST_DRVS {
            return Err(DecodeError::LimitExceeded {
                field: "revision.drv_count",
                offset,
                len: u64::from(drv_count),
                max: MAX_MANIFEST_DRVS as u64,
            });
        }
        let jobs_offset = r.offset();
        let jobs_per_system = read_jobs_per_system(r)?;
        if drv_count == 0 && !jobs_per_system.is_empty() {
            return Err(Reader::invalid(
                "revision.jobs_per_system",
                jobs_offset,
                "jobs without derivations (drv_count is 0)",
            ));
        }
        let offset = r.offset();
        let replicas = r.u8("revision.replicas")?;
        if replicas == 0 || replicas > MAX_REPLICAS {
            return Err(Reader::invalid(
                "revision.replicas",
                offset,
                format!("{replicas} is outside 1..={MAX_REPLICAS}"),
            ));
        }
        Ok(RevisionHeader {
            submitter,
            created_at_ms,
            store_dir,
            channel,
            branch,
            commit,
            manifest_hash,
            manifest_size,
            drv_count,
            jobs_per_system,
            replicas,
        })
    }

    fn author(&self) -> &NodeId {
        &self.submitter
    }
}
