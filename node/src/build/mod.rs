//! Building one derivation on this node: the executor interface and its implementations.
//!
//! The scheduler ([`crate::runtime`]) hands an [`Executor`] one [`BuildRequest`] at a time; the
//! executor makes sure the inputs are present, runs the builder, checks fixed-output hashes, scans
//! references, stores every output as a NAR blob, registers it in the [`crate::store::Store`] and
//! returns a [`BuildReport`]. Signing and committing the attestation is [`attest`]'s job, so that
//! both executors share it and nothing is reported before it is committed.
//!
//! - [`realize`]: the node's on-disk store of realised paths (`DATA_DIR/store/<basename>`),
//!   restored from NAR blobs on demand.
//! - [`local`]: the `local` executor (the namespace sandbox of [`crate::executor`]).
//! - [`nix`]: the `nix` executor (imports the closure into the host's Nix store and runs
//!   `nix-store --realise`).
//! - [`attest`]: turns a [`BuildReport`] into a signed attestation committed to redb, and a
//!   [`BuildError`] into a signed failure.

pub mod attest;
pub mod local;
pub mod nix;
pub mod realize;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::FailureReason;
use tokio_util::sync::CancellationToken;

/// One build to run: a derivation whose `.drv` (and whole closure) is in the store.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The `.drv` store path.
    pub drv_path: StorePath,
    /// The parsed derivation (its output paths filled in).
    pub drv: Derivation,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Wall-clock limit for the builder.
    pub timeout: Option<Duration>,
    /// Cap on the kept log.
    pub max_log_bytes: u64,
}

/// One output as built and registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltOutput {
    /// The output's store path.
    pub path: StorePath,
    /// `sha256` of its NAR.
    pub nar_hash: NixHash,
    /// Length of its NAR.
    pub nar_size: u64,
    /// Store paths it refers to (a self-reference included).
    pub references: BTreeSet<StorePath>,
    /// blake3 of its NAR (the blob id in the store).
    pub content_id: ArtifactHash,
}

/// A finished, successful build: every output registered in the store.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// Output name -> what was built.
    pub outputs: BTreeMap<String, BuiltOutput>,
    /// The (capped) build log.
    pub log: Vec<u8>,
    /// Built under binfmt_misc emulation rather than natively.
    pub emulated: bool,
    /// Unix ms when the builder started.
    pub started_at_ms: u64,
    /// Unix ms when the outputs were registered.
    pub finished_at_ms: u64,
}

/// Why a build did not produce its outputs. Carries the log when there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The builder exited with a non-zero status.
    #[error("builder failed with exit status {code}")]
    BuilderExit {
        /// Its exit status.
        code: i32,
        /// The (capped) log.
        log: Vec<u8>,
    },
    /// The builder was killed by a signal.
    #[error("builder was killed by signal {signal}")]
    BuilderSignal {
        /// The signal number.
        signal: u8,
        /// The (capped) log.
        log: Vec<u8>,
    },
    /// The build ran longer than its timeout.
    #[error("build timed out after {limit:?}")]
    Timeout {
        /// The limit.
        limit: Duration,
        /// The (capped) log.
        log: Vec<u8>,
    },
    /// A fixed-output derivation's output did not have the declared hash.
    #[error("fixed-output hash mismatch in output `{output}`: wanted {expected}, got {actual}")]
    HashMismatch {
        /// The output name.
        output: String,
        /// The declared hash.
        expected: NixHash,
        /// The hash of what was built.
        actual: NixHash,
        /// The (capped) log.
        log: Vec<u8>,
    },
    /// An input path (or input derivation output) is not in the store.
    #[error("missing input {path}")]
    MissingInput {
        /// The missing store path.
        path: StorePath,
    },
    /// The builder succeeded but did not produce an output it declares.
    #[error("builder did not produce output `{output}` ({path})")]
    OutputMissing {
        /// The output name.
        output: String,
        /// Its store path.
        path: StorePath,
        /// The (capped) log.
        log: Vec<u8>,
    },
    /// The executor itself failed (sandbox setup, I/O, a `nix` command).
    #[error("executor error: {message}")]
    Executor {
        /// What happened.
        message: String,
        /// Whatever log there is.
        log: Vec<u8>,
    },
    /// The build was cancelled.
    #[error("build cancelled")]
    Cancelled,
}

impl BuildError {
    /// Whether another attempt (after a backoff) may succeed: timeouts, missing inputs and
    /// executor errors. Builder failures and hash mismatches are properties of the derivation.
    pub fn is_transient(&self) -> bool {
        matches!(self, BuildError::Timeout { .. } | BuildError::MissingInput { .. } | BuildError::Executor { .. })
    }

    /// The log kept for this failure (empty when there is none).
    pub fn log(&self) -> &[u8] {
        match self {
            BuildError::BuilderExit { log, .. }
            | BuildError::BuilderSignal { log, .. }
            | BuildError::Timeout { log, .. }
            | BuildError::HashMismatch { log, .. }
            | BuildError::OutputMissing { log, .. }
            | BuildError::Executor { log, .. } => log,
            BuildError::MissingInput { .. } | BuildError::Cancelled => &[],
        }
    }

    /// The reason as the mesh's signed failure message carries it (texts cut to fit).
    pub fn to_reason(&self) -> FailureReason {
        fn cut(s: String) -> String {
            let mut s = s;
            if s.len() > 1000 {
                let mut end = 1000;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
            s
        }
        match self {
            BuildError::BuilderExit { code, .. } => FailureReason::BuilderExit { code: *code },
            BuildError::BuilderSignal { signal, .. } => FailureReason::BuilderSignal { signal: *signal },
            BuildError::Timeout { limit, .. } => {
                FailureReason::Timeout { limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX) }
            }
            BuildError::HashMismatch { output, expected, actual, .. } => {
                FailureReason::HashMismatch { output: output.clone(), expected: expected.clone(), actual: actual.clone() }
            }
            BuildError::MissingInput { path } => FailureReason::MissingInput { path: path.clone() },
            BuildError::OutputMissing { .. } | BuildError::Cancelled => FailureReason::Other { message: cut(self.to_string()) },
            BuildError::Executor { message, .. } => FailureReason::Executor { message: cut(message.clone()) },
        }
    }
}

/// A boxed, sendable build future.
pub type BuildFuture<'a> = Pin<Box<dyn Future<Output = Result<BuildReport, BuildError>> + Send + 'a>>;

/// Something that builds derivations: the `local` sandbox or the host's `nix`.
///
/// `build` must leave the store consistent whatever happens: on success every output is a
/// registered path with its NAR blob; on failure or cancellation nothing half-built is registered.
pub trait Executor: Send + Sync + 'static {
    /// `local` or `nix`.
    fn name(&self) -> &'static str;
    /// Build `req`; stop early (returning [`BuildError::Cancelled`]) when `cancel` fires.
    fn build(&self, req: BuildRequest, cancel: CancellationToken) -> BuildFuture<'_>;
}
