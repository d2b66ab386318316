//! Submitting derivation closures to a node: `buildmesh submit` (client) and
//! `POST /api/v1/submit` (server).
//!
//! - [`wire`]: the body format (size-prefixed JSON header, `.drv` files, source NARs).
//! - [`closure`]: the client side: collect a derivation's closure from the local Nix store or a
//!   directory of `.drv` files and NARs.
//! - [`crate::cli::submit_client`]: upload a closure over HTTP and wait for the builds.
//! - [`accept`]: the server side: check an upload completely, then store it in one transaction.
//! - [`server`]: the axum router that the node's HTTP gateway mounts.
//! - [`spool`]: the one temp file per upload where NARs wait until the upload is checked.
//!
//! Nothing of a rejected upload is stored: every `.drv` is parsed and its store path and output
//! paths recomputed, the closure is checked for completeness and every NAR against its declared
//! NarHash (spooled, not yet in the store) before the first blob is written; then the `.drv`
//! files, the sources and the builds are committed in one store transaction.

pub mod accept;
pub mod closure;
pub mod server;
pub mod spool;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;

use buildmesh_protocol::derivation::DrvError;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::store::StoreError;

pub use accept::accept;
pub use server::{SubmitContext, router};

/// Limits a node applies to uploads. Every size is checked before the bytes it covers are read.
///
/// What an upload can cost the node, with the defaults: memory, the JSON header and the `.drv`
/// files of at most [`max_concurrent`](Self::max_concurrent) uploads (16 MiB + 64 MiB each, plus
/// their parsed form), never the NARs, which are parsed, hashed and spooled to disk in 64 KiB
/// steps; temp disk, the NARs of the running uploads in [`spool_dir`](Self::spool_dir) (at most
/// `max_concurrent` x `max_total_bytes` = 8 GiB), and an upload is refused unless the disk keeps
/// [`min_free_disk`](Self::min_free_disk) free after its spool and its blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitLimits {
    /// Largest JSON header (default 16 MiB).
    pub max_header_bytes: u64,
    /// Most `.drv` files in one upload (default 100 000).
    pub max_drvs: usize,
    /// Largest sum of `.drv` sizes, held in memory while checking (default 64 MiB).
    pub max_drv_bytes: u64,
    /// Most source NARs in one upload (default 100 000).
    pub max_sources: usize,
    /// Largest single source NAR (default 4 GiB).
    pub max_nar_size: u64,
    /// Largest whole body (default 4 GiB).
    pub max_total_bytes: u64,
    /// Where NARs wait until the whole upload is checked (default: the system temp dir; a node
    /// uses `DATA/spool`, on the data dir's filesystem).
    pub spool_dir: Option<PathBuf>,
    /// Disk space left free on the spool filesystem: an upload whose NARs (twice: spool, then
    /// blobs) would leave less is refused with 507 (default 1 GiB).
    pub min_free_disk: u64,
    /// Uploads processed at once; more wait (default 2).
    pub max_concurrent: usize,
    /// Deepest directory nesting in a source NAR (default 256).
    pub max_nar_depth: u32,
    /// Most directory entries in one source NAR (default 1 000 000).
    pub max_nar_entries: u64,
    /// Most outstanding jobs of one submitter, the holder of the API token the upload comes with
    /// ([`crate::scheduler::submitters`]), before its next upload is refused with 429 naming this
    /// limit (default 100 000): on a standalone node the queued or running builds of its
    /// unfinished uploads; on a mesh node, whose jobs are all signed by the node's key, the node's
    /// unfinished mesh submissions.
    pub max_outstanding_jobs: usize,
    /// Most outstanding jobs of all submitters together (queued or running builds on a
    /// standalone node, unfinished mesh submissions on a mesh node) before any upload is refused
    /// with 429 (default 1 000 000).
    pub max_outstanding_jobs_total: usize,
    /// Most bytes (the upload bodies: `.drv` files and source NARs) of one submitter's
    /// unfinished uploads, this one included, on a standalone node; over it an upload is refused
    /// with 429 naming the limit, the submitter and the numbers (default 64 GiB).
    pub max_closure_bytes_per_submitter: u64,
}

impl Default for SubmitLimits {
    fn default() -> Self {
        SubmitLimits {
            max_header_bytes: 16 << 20,
            max_drvs: 100_000,
            max_drv_bytes: 64 << 20,
            max_sources: 100_000,
            max_nar_size: 4 << 30,
            max_total_bytes: 4 << 30,
            spool_dir: None,
            min_free_disk: 1 << 30,
            max_concurrent: 2,
            max_nar_depth: 256,
            max_nar_entries: 1_000_000,
            max_outstanding_jobs: 100_000,
            max_outstanding_jobs_total: 1_000_000,
            max_closure_bytes_per_submitter: 64 << 30,
        }
    }
}

impl SubmitLimits {
    /// The NAR parser's limits for a source of `nar_size` bytes.
    pub fn nar_limits(&self, nar_size: u64) -> buildmesh_protocol::nar::NarLimits {
        buildmesh_protocol::nar::NarLimits {
            max_total_size: nar_size,
            max_file_size: nar_size,
            max_depth: self.max_nar_depth,
            max_entries: self.max_nar_entries,
        }
    }
}

/// The upload limits an operator sets: the `[submit]` table of the config file. Every field is
/// optional; see [`SubmitLimits`] for the defaults and what they bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmitSettings {
    /// Largest upload body in bytes (default 4 GiB); also the largest single source NAR.
    pub max_body_bytes: u64,
    /// Uploads processed at once (default 2); more wait their turn.
    pub max_concurrent: usize,
    /// Disk space in bytes an upload must leave free on the data dir's filesystem (default 1 GiB).
    pub min_free_disk_bytes: u64,
    /// Largest sum of the `.drv` files of one upload in bytes (default 64 MiB, held in memory).
    pub max_drv_bytes: u64,
    /// Most outstanding jobs of one submitter before its upload is refused with 429 (default
    /// 100 000; see [`SubmitLimits::max_outstanding_jobs`]).
    pub max_outstanding_jobs: usize,
    /// Most outstanding jobs of all submitters together (default 1 000 000; see
    /// [`SubmitLimits::max_outstanding_jobs_total`]).
    pub max_outstanding_jobs_total: usize,
    /// Most bytes of one submitter's unfinished uploads (default 64 GiB; see
    /// [`SubmitLimits::max_closure_bytes_per_submitter`]).
    pub max_closure_bytes_per_submitter: u64,
}

impl Default for SubmitSettings {
    fn default() -> Self {
        let l = SubmitLimits::default();
        SubmitSettings {
            max_body_bytes: l.max_total_bytes,
            max_concurrent: l.max_concurrent,
            min_free_disk_bytes: l.min_free_disk,
            max_drv_bytes: l.max_drv_bytes,
            max_outstanding_jobs: l.max_outstanding_jobs,
            max_outstanding_jobs_total: l.max_outstanding_jobs_total,
            max_closure_bytes_per_submitter: l.max_closure_bytes_per_submitter,
        }
    }
}

impl SubmitSettings {
    /// Check the values (the message names the field).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == 0 {
            return Err("max_concurrent must be at least 1".to_string());
        }
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes must be at least 1024".to_string());
        }
        if self.max_closure_bytes_per_submitter < 1024 {
            return Err("max_closure_bytes_per_submitter must be at least 1024".to_string());
        }
        if self.max_outstanding_jobs_total == 0 {
            return Err("max_outstanding_jobs_total must be at least 1".to_string());
        }
        if self.max_drv_bytes < buildmesh_protocol::derivation::MAX_DRV_SIZE as u64 {
            return Err(format!(
                "max_drv_bytes must be at least {} (one derivation)",
                buildmesh_protocol::derivation::MAX_DRV_SIZE
            ));
        }
        Ok(())
    }

    /// Apply these settings to `limits`.
    pub fn apply(&self, limits: &mut SubmitLimits) {
        limits.max_total_bytes = self.max_body_bytes;
        limits.max_nar_size = self.max_body_bytes;
        limits.max_concurrent = self.max_concurrent;
        limits.min_free_disk = self.min_free_disk_bytes;
        limits.max_drv_bytes = self.max_drv_bytes;
        limits.max_outstanding_jobs = self.max_outstanding_jobs;
        limits.max_outstanding_jobs_total = self.max_outstanding_jobs_total;
        limits.max_closure_bytes_per_submitter = self.max_closure_bytes_per_submitter;
    }
}

/// One registered output, as the JSON API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// The output's store path (absolute).
    pub path: String,
    /// NarHash, `sha256:<nix32>`.
    pub nar_hash: String,
    /// NarSize.
    pub nar_size: u64,
}

/// The answer to an accepted upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The requested `.drv` paths (absolute), in request order.
    pub accepted: Vec<String>,
    /// Builds this closure needs (queued now or already queued/running).
    pub queued: u64,
    /// Requested derivations whose outputs are all registered already (nothing to build).
    pub already_built: Vec<String>,
    /// The registered outputs of the `already_built` derivations: drv -> output name -> output.
    #[serde(default)]
    pub outputs: BTreeMap<String, BTreeMap<String, OutputInfo>>,
    /// `.drv` files stored for the first time.
    #[serde(default)]
    pub drvs_stored: u64,
    /// Source paths registered for the first time.
    #[serde(default)]
    pub sources_registered: u64,
}

/// Why an upload was rejected. Every variant that is about one store path names it
/// ([`SubmitError::path`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The body does not start with [`wire::MAGIC`].
    #[error("not a buildmesh submit body (starts with {found:?})")]
    NotASubmission {
        /// The first bytes (lossy UTF-8).
        found: String,
    },
    /// The header is longer than the limit.
    #[error("submit header is {len} bytes, more than the limit of {max}")]
    HeaderTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The header is not valid JSON of the expected shape.
    #[error("bad submit header: {reason}")]
    BadHeader {
        /// What is wrong.
        reason: String,
    },
    /// Header version not understood.
    #[error("submit header version {version} is not supported (this node speaks {supported})")]
    UnsupportedVersion {
        /// The version sent.
        version: u32,
        /// The version understood.
        supported: u32,
    },
    /// The upload is for another store directory.
    #[error("the upload is for store directory {theirs}, this node's is {ours}")]
    StoreDirMismatch {
        /// The node's.
        ours: String,
        /// The upload's.
        theirs: String,
    },
    /// The submitter (or all of them) has as many outstanding jobs as `submit.{limit}` allows.
    #[error("{who} has {outstanding} outstanding job(s); the limit `submit.{limit}` is {max}: wait for some to finish")]
    Outstanding {
        /// Whose jobs: "submitter `NAME`", or "all submitters together".
        who: String,
        /// The limit's field (`max_outstanding_jobs`, `max_outstanding_jobs_total`).
        limit: &'static str,
        /// The outstanding jobs.
        outstanding: usize,
        /// The limit.
        max: usize,
    },
    /// The submitter's unfinished uploads and this one pass `submit.max_closure_bytes_per_submitter`.
    #[error(
        "submitter `{submitter}` has {used} bytes in unfinished uploads; this upload of {upload} bytes would take \
         it past the limit `submit.max_closure_bytes_per_submitter` of {max} bytes: wait for its builds to finish"
    )]
    ClosureQuota {
        /// The submitter's name.
        submitter: String,
        /// Bytes of its unfinished uploads (and of its other uploads under way).
        used: u64,
        /// This upload's bytes (so far, for one sent without `Content-Length`).
        upload: u64,
        /// The limit.
        max: u64,
    },
    /// Too many entries of one kind.
    #[error("too many {what}: {count}, the limit is {max}")]
    TooMany {
        /// What (`derivations`, `sources`).
        what: &'static str,
        /// How many were sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// One item, or the sum of a kind, is larger than allowed.
    #[error("{what} {path} is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// What (`derivation`, `source NAR`, `all derivations`, `body`).
        what: &'static str,
        /// The path (or a description for sums).
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Declared sizes overflow.
    #[error("declared sizes add up to more than 2^64 bytes")]
    SizeOverflow,
    /// `Content-Length` disagrees with the sizes in the header.
    #[error("Content-Length is {content_length}, but the header declares a body of {declared} bytes")]
    LengthMismatch {
        /// The HTTP `Content-Length`.
        content_length: u64,
        /// What the header adds up to.
        declared: u64,
    },
    /// A path in the header is not a valid store path (or not of the right kind).
    #[error("{path}: {reason}")]
    BadPath {
        /// The path as sent.
        path: String,
        /// Why.
        reason: String,
    },
    /// A path appears twice.
    #[error("{path} appears twice in the upload")]
    Duplicate {
        /// The path.
        path: String,
    },
    /// The body ended early.
    #[error("the body ends inside {what}: expected {expected} bytes, got {got}")]
    Truncated {
        /// What was being read (names the path for `.drv` files and NARs).
        what: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// Bytes after the last declared NAR.
    #[error("unexpected bytes after the last NAR (at offset {after})")]
    TrailingBytes {
        /// Offset of the first extra byte.
        after: u64,
    },
    /// Reading the HTTP body failed (client went away, ...).
    #[error("reading the request body failed: {source}")]
    Body {
        /// The I/O error.
        source: std::io::Error,
    },
    /// Spooling a NAR failed (server-side disk problem).
    #[error("spooling a NAR failed: {source}")]
    Spool {
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes sent for a source are not one NAR of its declared NarSize.
    #[error("the bytes of source {path} are not a valid NAR: {error}")]
    BadNar {
        /// The source path.
        path: String,
        /// What the NAR parser found (offset, path inside the archive, what is wrong).
        error: String,
    },
    /// The node's disk has no room for the upload's NARs.
    #[error(
        "no room for this upload: its NARs need {need} bytes on the node's disk (spooled, then stored), \
         {available} are free, {others} are reserved by other uploads and {keep_free} must stay free; try later"
    )]
    NoSpace {
        /// Bytes this upload needs.
        need: u64,
        /// Bytes free on the spool filesystem.
        available: u64,
        /// Bytes other running uploads reserved.
        others: u64,
        /// Bytes the node keeps free ([`SubmitLimits::min_free_disk`]).
        keep_free: u64,
    },
    /// A `.drv` is not a valid derivation.
    #[error("derivation {path} is malformed: {error}")]
    MalformedDrv {
        /// The declared path.
        path: String,
        /// The parser's error.
        error: DrvError,
    },
    /// A `.drv`'s contents hash to another store path than declared.
    #[error("derivation uploaded as {declared} has store path {computed}")]
    DrvPathMismatch {
        /// The path in the header.
        declared: String,
        /// The path computed from its bytes.
        computed: String,
    },
    /// A derivation's recorded output paths are wrong (the error names the output and both paths).
    #[error("derivation {drv}: {error}")]
    OutputPaths {
        /// The derivation.
        drv: String,
        /// What is wrong.
        error: DrvError,
    },
    /// An input derivation is neither uploaded nor stored on the node.
    #[error("derivation {drv} needs input derivation {input}, which is neither in the upload nor on this node")]
    MissingInputDrv {
        /// The derivation that needs it.
        drv: String,
        /// The missing input.
        input: String,
    },
    /// An input source (or a reference of one) is neither uploaded nor registered on the node.
    #[error("{needed_by} needs source {path}, which is neither in the upload nor registered on this node")]
    MissingSource {
        /// The derivation or source that needs it.
        needed_by: String,
        /// The missing path.
        path: String,
    },
    /// A requested derivation is neither uploaded nor stored on the node.
    #[error("requested derivation {path} is neither in the upload nor on this node")]
    UnknownRequested {
        /// The path.
        path: String,
    },
    /// A NAR does not match its declared NarHash.
    #[error("NAR of {path} has NarHash {actual}, the upload declares {expected}")]
    NarHashMismatch {
        /// The source path.
        path: String,
        /// Declared.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// A source is registered here with another NarHash.
    #[error("source {path} is registered on this node with NarHash {registered}, the upload declares {offered}")]
    SourceConflict {
        /// The path.
        path: String,
        /// The registered NarHash.
        registered: String,
        /// The uploaded NarHash.
        offered: String,
    },
    /// A new source is not a content-addressed path of its bytes (neither a `text` path, as
    /// `builtins.toFile` makes, nor a `source` path, as `nix-store --add` makes): only a path its
    /// bytes certify may be uploaded.
    #[error(
        "source {path} is not a content-addressed path of its bytes (neither a text nor a source path): \
         only input sources whose contents hash to their store path can be uploaded"
    )]
    NotContentAddressed {
        /// The path.
        path: String,
    },
    /// An uploaded source sits at an output path of a derivation of the upload: outputs come only
    /// from builds.
    #[error("{path} is output `{output}` of {drv}: outputs come from builds, never from an upload")]
    SourceIsOutput {
        /// The path.
        path: String,
        /// The derivation.
        drv: String,
        /// The output name.
        output: String,
    },
    /// The node's store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// A derivation stored earlier on this node cannot be used.
    #[error("stored derivation {path} is unusable: {reason}")]
    CorruptStoredDrv {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Something that should not happen (a task panicked).
    #[error("internal error: {0}")]
    Internal(String),
}

impl SubmitError {
    /// The store path this error is about, when there is one.
    pub fn path(&self) -> Option<&str> {
        match self {
            SubmitError::TooLarge { path, .. }
            | SubmitError::BadPath { path, .. }
            | SubmitError::Duplicate { path }
            | SubmitError::MalformedDrv { path, .. }
            | SubmitError::MissingSource { path, .. }
            | SubmitError::UnknownRequested { path }
            | SubmitError::NarHashMismatch { path, .. }
            | SubmitError::BadNar { path, .. }
            | SubmitError::SourceConflict { path, .. }
            | SubmitError::NotContentAddressed { path }
            | SubmitError::SourceIsOutput { path, .. }
            | SubmitError::CorruptStoredDrv { path, .. } => Some(path),
            SubmitError::DrvPathMismatch { declared, .. } => Some(declared),
            SubmitError::OutputPaths { drv, .. } => Some(drv),
            SubmitError::MissingInputDrv { input, .. } => Some(input),
            _ => None,
        }
    }

    /// The HTTP status this error is answered with: 413 for size limits, 507 when the node's disk
    /// is too full, 500 for the node's own failures, 400 for everything wrong with the upload.
    pub fn status(&self) -> u16 {
        match self {
            SubmitError::NoSpace { .. } => 507,
            SubmitError::Outstanding { .. } | SubmitError::ClosureQuota { .. } => 429,
            SubmitError::HeaderTooLarge { .. } | SubmitError::TooMany { .. } | SubmitError::TooLarge { .. } => 413,
            SubmitError::Spool { .. }
            | SubmitError::Store(_)
            | SubmitError::CorruptStoredDrv { .. }
            | SubmitError::Internal(_) => 500,
            _ => 400,
        }
    }
}
