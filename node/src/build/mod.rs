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
//! - [`local`]: the `local` executor (the namespace sandbox of [`crate::sandbox`]).
//! - [`nix`]: the `nix` executor (imports the closure into the host's Nix store and runs
//!   `nix-store --realise`).
//! - [`refscan`]: which store paths an output references (Nix's reference scanning).
//! - [`attest`]: turns a [`BuildReport`] into a signed attestation committed to redb, and a
//!   [`BuildError`] into a signed failure.

pub mod attest;
pub mod local;
pub mod nix;
mod nix_failure;
mod nix_host;
mod nix_policy;
pub mod realize;
pub mod refscan;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::FailureReason;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::systems::Systems;

/// Which executor runs builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// buildmesh's own sandbox (mount + network namespaces, the node's store at the store dir).
    Local,
    /// The host's Nix: import the closure, `nix-store --realise`, read the outputs back.
    Nix,
}

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
    /// The builder produced an output that a rule rejects: a fixed output that is not what its
    /// hash mode allows (flat: a non-executable regular file) or that refers to store paths, or an
    /// output that breaks `allowedReferences`, `disallowedReferences`, `allowedRequisites` or
    /// `disallowedRequisites`. Nothing is registered.
    #[error("output `{output}` rejected: {reason}")]
    OutputRejected {
        /// The output name.
        output: String,
        /// Which rule and why (the offending paths).
        reason: String,
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
    /// An input is not accepted by the trust rule ([`crate::trust::inputs`]): a local copy
    /// disagrees with the accepted NarHash and the accepted bytes are not here, or no NarHash is
    /// accepted for it at all. The build did not start.
    #[error("{reason}")]
    InputRejected {
        /// The input (full store path).
        path: String,
        /// What is wrong (names the path, the local and the accepted NarHash).
        reason: String,
        /// Whether waiting may help (more attestations may arrive).
        transient: bool,
    },
    /// The build ran into a resource limit of its cgroup (memory or process count).
    #[error("{hit}")]
    ResourceLimit {
        /// Which limit.
        hit: crate::sandbox::LimitHit,
        /// The (capped) log.
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
        matches!(
            self,
            BuildError::Timeout { .. }
                | BuildError::MissingInput { .. }
                | BuildError::Executor { .. }
                | BuildError::InputRejected { transient: true, .. }
        )
    }

    /// The log kept for this failure (empty when there is none).
    pub fn log(&self) -> &[u8] {
        match self {
            BuildError::BuilderExit { log, .. }
            | BuildError::BuilderSignal { log, .. }
            | BuildError::Timeout { log, .. }
            | BuildError::HashMismatch { log, .. }
            | BuildError::OutputMissing { log, .. }
            | BuildError::OutputRejected { log, .. }
            | BuildError::ResourceLimit { log, .. }
            | BuildError::Executor { log, .. } => log,
            BuildError::MissingInput { .. } | BuildError::InputRejected { .. } | BuildError::Cancelled => &[],
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
            BuildError::HashMismatch { output, expected, actual, .. } => FailureReason::HashMismatch {
                output: output.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            },
            BuildError::MissingInput { path } => FailureReason::MissingInput { path: path.clone() },
            BuildError::OutputMissing { .. }
            | BuildError::OutputRejected { .. }
            | BuildError::ResourceLimit { .. }
            | BuildError::Cancelled => FailureReason::Other { message: cut(self.to_string()) },
            BuildError::Executor { message, .. } => FailureReason::Executor { message: cut(message.clone()) },
            BuildError::InputRejected { reason, .. } => FailureReason::Other { message: cut(reason.clone()) },
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

/// Name of the realised-path directory inside the data dir (`DATA/store`).
pub const STORE_FS_DIR: &str = "store";
/// Name of the per-build work directory inside the data dir (`DATA/builds`).
pub const BUILDS_DIR: &str = "builds";

/// What an executor needs, as plain data. [`ExecutorConfig::new`] fills in the defaults for a data
/// dir; change the public fields as needed, then hand it to [`local::LocalExecutor::new`],
/// [`nix::NixExecutor::new`] or [`make_executor`].
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The node's store (derivations, path registrations, NAR blobs).
    pub store: Store,
    /// Realised paths (`DATA/store`), which the `local` sandbox mounts as inputs.
    pub store_fs: realize::StoreFs,
    /// The logical store dir (`/nix/store`, `/gnu/store`); the `nix` executor needs `/nix/store`.
    pub store_dir: StoreDir,
    /// Per-build work dirs (`DATA/builds`); emptied when an executor is created, so create one
    /// executor per data dir.
    pub builds_dir: PathBuf,
    /// `NIX_BUILD_CORES` (the `local` executor) or `--cores` (the `nix` executor).
    pub cores: u32,
    /// This machine's systems: a build for a system in `systems.emulated` is reported as emulated;
    /// a system in neither set is refused.
    pub systems: Systems,
    /// Host paths visible read-only inside the `local` sandbox.
    pub sandbox_paths: Vec<PathBuf>,
    /// The `buildmesh` binary that runs the sandbox helper (`__sandbox-exec`); `None` = the
    /// running executable.
    pub sandbox_helper: Option<PathBuf>,
    /// Delay between SIGTERM and SIGKILL on timeout or cancellation.
    pub kill_grace: Duration,
    /// Directory of the host's Nix commands (`nix-store`, `nix`) for the `nix` executor; `None` =
    /// found through `PATH`.
    pub nix_bin_dir: Option<PathBuf>,
    /// Build isolation: build users, fixed-output network, impure env allow-list, and whether
    /// the `nix` executor may run at all ([`crate::sandbox::SandboxSettings`]).
    pub sandbox: crate::sandbox::SandboxSettings,
    /// Per-build cgroup limits of the `local` executor (`None`: none).
    pub cgroups: Option<crate::sandbox::Cgroups>,
    /// Most bytes a build's directory and outputs may take (`local` executor; 0: no limit).
    pub build_dir_max: u64,
}

impl ExecutorConfig {
    /// Defaults for the data dir `data_dir`: realised paths in `DATA/store` (opened, leftovers
    /// removed), work dirs in `DATA/builds`, all CPUs, detected systems, the default sandbox paths,
    /// the running executable as sandbox helper, a 2 s kill grace, Nix from `PATH`.
    pub fn new(store: Store, data_dir: &Path, store_dir: StoreDir) -> Result<ExecutorConfig, realize::RealizeError> {
        let store_fs = realize::StoreFs::open(data_dir.join(STORE_FS_DIR))?;
        Ok(ExecutorConfig {
            store,
            store_fs,
            store_dir,
            builds_dir: data_dir.join(BUILDS_DIR),
            cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            systems: crate::systems::detect(),
            sandbox_paths: crate::sandbox::DEFAULT_SANDBOX_PATHS.iter().map(PathBuf::from).collect(),
            sandbox_helper: None,
            kill_grace: crate::sandbox::DEFAULT_KILL_GRACE,
            nix_bin_dir: None,
            sandbox: crate::sandbox::SandboxSettings::default(),
            cgroups: None,
            build_dir_max: 0,
        })
    }
}

/// Why an executor could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorSetupError {
    /// The configuration cannot work (wrong store dir for `nix`, no `nix-store`, ...).
    #[error("{0}")]
    Unusable(String),
    /// Preparing a directory failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Cleaning a leftover work dir failed.
    #[error(transparent)]
    Realize(#[from] realize::RealizeError),
}

/// The executor of `kind` for `config`.
pub fn make_executor(kind: ExecutorKind, config: ExecutorConfig) -> Result<Arc<dyn Executor>, ExecutorSetupError> {
    Ok(match kind {
        ExecutorKind::Local => Arc::new(local::LocalExecutor::new(config)?),
        ExecutorKind::Nix => Arc::new(nix::NixExecutor::new(config)?),
    })
}

/// Create `dir` and remove everything in it (work dirs of builds a crash interrupted).
pub(crate) fn reset_builds_dir(dir: &Path) -> Result<(), ExecutorSetupError> {
    std::fs::create_dir_all(dir).map_err(|source| ExecutorSetupError::Io { op: "create", path: dir.into(), source })?;
    let entries =
        std::fs::read_dir(dir).map_err(|source| ExecutorSetupError::Io { op: "list", path: dir.into(), source })?;
    let mut removed = 0usize;
    for entry in entries {
        let entry = entry.map_err(|source| ExecutorSetupError::Io { op: "list", path: dir.into(), source })?;
        realize::remove_tree(&entry.path())?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed build dirs left by an earlier run");
    }
    Ok(())
}

/// The current time in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    crate::store::unix_ms()
}

/// Keep the first and last `max / 2` bytes of a log stream (for the `nix` executor; the sandbox
/// runner caps its own).
#[derive(Debug)]
pub(crate) struct CappedLog {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl CappedLog {
    pub(crate) fn new(max: u64) -> CappedLog {
        let max = usize::try_from(max).unwrap_or(usize::MAX / 4);
        let head_cap = max / 2;
        CappedLog {
            head: Vec::new(),
            tail: std::collections::VecDeque::new(),
            head_cap,
            tail_cap: max - head_cap,
            total: 0,
        }
    }

    pub(crate) fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let take = self.head_cap.saturating_sub(self.head.len()).min(data.len());
        self.head.extend_from_slice(&data[..take]);
        data = &data[take..];
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
            return;
        }
        let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(data);
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let mut out = self.head;
        if self.total > kept {
            out.extend_from_slice(
                format!("\n[buildmesh: log truncated: {} bytes omitted]\n", self.total - kept).as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_log_keeps_head_and_tail() {
        let mut l = CappedLog::new(10);
        l.push(b"0123");
        l.push(b"4567");
        assert_eq!(l.finish(), b"01234567");
        let mut l = CappedLog::new(10);
        for chunk in b"abcdefghijklmnopqrstuvwxyz".chunks(3) {
            l.push(chunk);
        }
        assert_eq!(l.finish(), b"abcde\n[buildmesh: log truncated: 16 bytes omitted]\nvwxyz");
        let mut l = CappedLog::new(4);
        l.push(b"abcdefgh");
        assert_eq!(l.finish(), b"ab\n[buildmesh: log truncated: 4 bytes omitted]\ngh");
    }

    #[test]
    fn failure_reasons() {
        let h = NixHash::sha256([1; 32]);
        let e = BuildError::HashMismatch { output: "out".into(), expected: h.clone(), actual: h.clone(), log: vec![1] };
        assert!(!e.is_transient());
        assert_eq!(e.log(), &[1]);
        assert!(matches!(e.to_reason(), FailureReason::HashMismatch { .. }));
        let e = BuildError::OutputRejected { output: "out".into(), reason: "x".repeat(5000), log: vec![] };
        match e.to_reason() {
            FailureReason::Other { message } => assert!(message.len() <= 1000 && message.contains("`out`")),
            other => panic!("{other:?}"),
        }
        assert!(BuildError::Timeout { limit: Duration::from_secs(1), log: vec![] }.is_transient());
        assert_eq!(
            BuildError::Timeout { limit: Duration::from_secs(3), log: vec![] }.to_reason(),
            FailureReason::Timeout { limit_ms: 3000 }
        );
        assert_eq!(
            BuildError::BuilderExit { code: 3, log: vec![] }.to_reason(),
            FailureReason::BuilderExit { code: 3 }
        );
    }
}
