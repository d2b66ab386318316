//! Submitting derivation closures to a node: `buildmesh submit` (client) and
//! `POST /api/v1/submit` (server).
//!
//! - [`wire`]: the body format (size-prefixed JSON header, `.drv` files, source NARs).
//! - [`closure`]: the client side: collect a derivation's closure from the local Nix store or a
//!   directory of `.drv` files and NARs.
//! - [`client`]: upload a closure over HTTP and wait for the builds.
//! - [`accept`]: the server side: check an upload completely, then store it in one transaction.
//! - [`server`]: the axum router that the node's HTTP gateway mounts.
//!
//! Nothing of a rejected upload is stored: every `.drv` is parsed and its store path and output
//! paths recomputed, the closure is checked for completeness and every NAR against its declared
//! NarHash (spooled, not yet in the store) before the first blob is written; then the `.drv`
//! files, the sources and the builds are committed in one store transaction.

pub mod accept;
pub mod client;
pub mod closure;
pub mod server;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;

use buildmesh_protocol::derivation::DrvError;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::store::StoreError;

pub use accept::accept;
pub use server::{SubmitContext, router};

/// Limits a node applies to one upload. Every size is checked before the bytes it covers are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitLimits {
    /// Largest JSON header (default 16 MiB).
    pub max_header_bytes: u64,
    /// Most `.drv` files in one upload (default 100 000).
    pub max_drvs: usize,
    /// Largest sum of `.drv` sizes, held in memory while checking (default 256 MiB).
    pub max_drv_bytes: u64,
    /// Most source NARs in one upload (default 100 000).
    pub max_sources: usize,
    /// Largest single source NAR (default 8 GiB).
    pub max_nar_size: u64,
    /// Largest whole body (default 32 GiB).
    pub max_total_bytes: u64,
    /// Where NARs wait until the whole upload is checked (default: the system temp dir). Put it
    /// on the data dir's filesystem for big uploads.
    pub spool_dir: Option<PathBuf>,
    /// NARs up to this size wait in memory instead of a spool file (default 1 MiB).
    pub spool_in_memory: usize,
    /// Uploads processed at once; more wait (default 2).
    pub max_concurrent: usize,
}

impl Default for SubmitLimits {
    fn default() -> Self {
        SubmitLimits {
            max_header_bytes: 16 << 20,
            max_drvs: 100_000,
            max_drv_bytes: 256 << 20,
            max_sources: 100_000,
            max_nar_size: 8 << 30,
            max_total_bytes: 32 << 30,
            spool_dir: None,
            spool_in_memory: 1 << 20,
            max_concurrent: 2,
        }
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

    /// The HTTP status this error is answered with: 413 for size limits, 500 for the node's own
    /// failures, 400 for everything wrong with the upload.
    pub fn status(&self) -> u16 {
        match self {
            SubmitError::HeaderTooLarge { .. } | SubmitError::TooMany { .. } | SubmitError::TooLarge { .. } => 413,
            SubmitError::Spool { .. }
            | SubmitError::Store(_)
            | SubmitError::CorruptStoredDrv { .. }
            | SubmitError::Internal(_) => 500,
            _ => 400,
        }
    }
}
