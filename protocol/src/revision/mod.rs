//! Revisions (evaluations) as mesh objects, and their content-addressed manifests.
//!
//! A **revision** is what an evaluation of a channel at a commit produced: the jobs (package,
//! version, system, derivation) of, e.g., `guix` at commit `abc123`. It travels in two parts:
//! - the signed [`RevisionHeader`] (a small mesh message, gossiped and synced like attestations):
//!   channel, branch, commit, timestamp, submitter, and the blake3 hash, size and counts of the
//!   manifest;
//! - the [`Manifest`] itself (up to a few tens of MiB for 200,000 jobs): content-addressed by the
//!   header's `manifest_hash`, fetched from peers on demand, size-checked before it is decoded and
//!   verified against the hash before it is used.
//!
//! The manifest carries the derivation **graph** of the jobs' closure (every `.drv` with its system,
//! outputs and input derivations), so that a node that holds no `.drv` file can still say which job
//! is blocked by which failed input and rank the root causes of missing outputs.
//!
//! A revision is named `C@ID` ([`RevisionId`]: channel and commit). Several submitters may publish
//! a header for the same `C@ID`; which one a node shows is a node policy (trusted submitters first),
//! see the node's `qa` module.
//!
//! Nothing here does I/O; the QA answers computed from revisions (status, compare, weather, history, ready) are in the
//! `qa` module.

mod builder;
mod drv_name;
mod header;
mod ids;
mod manifest_codec;

use std::collections::BTreeMap;

pub use builder::{ManifestBuildError, ManifestBuilder};
pub use drv_name::parse_drv_name;
pub use header::ManifestCheckError;
pub use header::{
    MAX_BRANCH_LEN, MAX_CHANNEL_LEN, MAX_COMMIT_LEN, MAX_REVISION_SYSTEMS, validate_branch, validate_channel,
    validate_commit,
};
pub use ids::{RevisionNameError, RevisionRef};
pub use manifest_codec::{
    MAX_MANIFEST_SYSTEMS, MAX_PACKAGE_LEN, MAX_VERSION_LEN, ManifestInvalid, manifest_hash, validate_package,
    validate_version,
};

use crate::id::NodeId;
use crate::store_path::{StoreDir, StorePath};

/// The largest manifest encoding accepted (128 MiB), checked before anything is decoded. A
/// revision of 200,000 jobs with a closure of 300,000 derivations takes about 60 MiB.
pub const MAX_MANIFEST_SIZE: usize = 128 * 1024 * 1024;
/// Most derivations in a manifest's graph.
pub const MAX_MANIFEST_DRVS: usize = 2_000_000;
/// Most jobs in a manifest.
pub const MAX_MANIFEST_JOBS: usize = 1_000_000;
/// The first bytes of every manifest encoding.
pub const MANIFEST_MAGIC: &[u8] = b"buildmesh-manifest\0";
/// The manifest encoding's version (the byte after [`MANIFEST_MAGIC`]).
pub const MANIFEST_VERSION: u8 = 1;
/// The shortest manifest encoding (magic, version, a two-byte store directory such as `/s`, three empty
/// sequences): a smaller `manifest_size` in a header is refused.
pub const MIN_MANIFEST_SIZE: usize = MANIFEST_MAGIC.len() + 1 + 4 + 2 + 3 * 4;

/// The name of a revision: `<channel>@<commit>`, e.g. `guix@4d1b2c…` or `nixpkgs@deadbeef`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevisionId {
    /// The channel (`guix`, `nixpkgs`).
    pub channel: String,
    /// The commit id.
    pub commit: String,
}

/// The signed header of a revision (mesh message kind `revision`).
///
/// Idempotence and replays: keyed by (`channel`, `commit`, `submitter`); of two headers with that
/// key the one with the later `created_at_ms` (then the larger message id) wins, so replays change
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionHeader {
    /// Who evaluated and published it (must be the signer).
    pub submitter: NodeId,
    /// When (unix millis, the submitter's clock).
    pub created_at_ms: u64,
    /// The store directory of every path of the manifest.
    pub store_dir: StoreDir,
    /// The channel (`guix`, `nixpkgs`).
    pub channel: String,
    /// The branch (`master`, `staging`, `nixos-unstable`).
    pub branch: String,
    /// The commit id.
    pub commit: String,
    /// blake3 of the manifest's canonical encoding.
    pub manifest_hash: [u8; 32],
    /// Length of the manifest's canonical encoding, in bytes.
    pub manifest_size: u64,
    /// Number of derivations in the manifest's graph.
    pub drv_count: u32,
    /// Number of jobs per system (sums to the number of jobs).
    pub jobs_per_system: BTreeMap<String, u32>,
    /// The replication factor the jobs were submitted with.
    pub replicas: u8,
}

/// The content of a revision: its jobs and the derivation graph of their closure.
///
/// Canonical form (checked by the decoder): `systems` sorted and unique; `drvs` sorted by store
/// path and unique; each drv's `inputs` strictly increasing indices into `drvs`, never itself;
/// `outputs` sorted by name and unique; `jobs` sorted by (`package`, `drv`) and unique.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// The store directory of every path.
    pub store_dir: StoreDir,
    /// The systems of the derivations, sorted (indexed by [`ManifestDrv::system`]).
    pub systems: Vec<String>,
    /// Every derivation of the jobs' closure, sorted by path.
    pub drvs: Vec<ManifestDrv>,
    /// The jobs.
    pub jobs: Vec<ManifestJob>,
}

/// One derivation of a manifest's graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDrv {
    /// The `.drv` store path.
    pub drv: StorePath,
    /// Index into [`Manifest::systems`].
    pub system: u16,
    /// Its input derivations, as indices into [`Manifest::drvs`], strictly increasing.
    pub inputs: Vec<u32>,
    /// Its outputs, sorted by name.
    pub outputs: Vec<ManifestOutput>,
}

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestOutput {
    /// The output name (`out`, `dev`).
    pub name: String,
    /// The output path (input-addressed derivations; fixed-output ones too).
    pub path: StorePath,
}

/// One job: a package at a version, built by one derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestJob {
    /// Index into [`Manifest::drvs`].
    pub drv: u32,
    /// The package name (`hello`, from `pname` or the name as Nix's `parseDrvName` splits it).
    pub package: String,
    /// Its version (`2.12.1`; may be empty when the name has none).
    pub version: String,
}

#[cfg(test)]
mod tests;
