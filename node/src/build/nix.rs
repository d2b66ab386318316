//! The `nix` executor: builds with the host's Nix (tested with Nix 2.8, single-user, run as root)
//! in the host store, which must be `/nix/store`.
//!
//! It isolates builders only as much as the host's Nix does (Debian's: not at all), so it starts
//! only when the operator opts in with `sandbox.allow_unsafe_nix_executor = true`, and then
//! logs a warning naming what builders may do (see `nix_policy`).
//!
//! One build:
//! 1. **Closure**: the `.drv` and every input derivation's `.drv` (transitively), every input
//!    source they name, and the selected outputs of the derivation's input derivations, with
//!    everything those reference. A path the node's store lacks is [`BuildError::MissingInput`].
//! 2. **Import** what the host store lacks (`nix-store --check-validity --print-invalid`): it is
//!    written as a temporary `file://` binary cache in the build's work dir (`nix-cache-info`,
//!    `<hash>.narinfo`, `nar/<NarHash>.nar`; a `.drv` as the NAR of its ATerm with
//!    `CA: text:sha256:…` and its inputs as references) and copied with
//!    `nix copy --from file://… --no-check-sigs --no-recursive --derivation`.
//! 3. **Build**: `nix-store --realise DRV --max-jobs 1 --cores N --timeout S --option substitute
//!    false --add-root WORK/result`, stderr kept as the (capped) log. When every output is already
//!    valid in the host store (built or imported earlier), `--check` rebuilds and compares, so
//!    the attestation always describes a build made here.
//! 4. **Read back** each output: `nix-store --query --hash`, `--query --references`, and
//!    `nix-store --dump` streamed into the node's store as a blob (the NarHash is checked against
//!    Nix's); register all outputs in one transaction as the `local` executor does.
//!
//! Failures are mapped from Nix's exit status (100 build failure, 101 timeout, 102 hash mismatch,
//! 104 not deterministic) and messages (`builder for '…' failed with exit code N`, `hash mismatch
//! in fixed-output derivation`, …) by [`map_nix_failure`] (in `nix_failure.rs`). Cancellation
//! sends SIGTERM to `nix-store` (which kills its builder), then SIGKILL after the grace period.
//!
//! The host store keeps what was imported and built (Nix's garbage collector can remove it; the
//! `--add-root` link disappears with the work dir).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::derivation::{Derivation, OutputHash};
use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::nar::tree::Node;
use buildmesh_protocol::narinfo::{ContentAddress, Deriver, NarInfo};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::local::{build_mode, executor_error, join_error, output_paths, realize_error};
pub use super::nix_failure::map_nix_failure;
use super::realize::{self, Registration};
use super::{
    BuildError, BuildFuture, BuildReport, BuildRequest, BuiltOutput, CappedLog, Executor, ExecutorConfig,
    ExecutorSetupError, now_ms, reset_builds_dir,
};
use crate::store::{PathInfo, Store};
use crate::systems::Systems;

/// The only store dir the host's Nix uses here.
pub const NIX_STORE_DIR: &str = "/nix/store";
/// How many paths one `nix-store` command line names at most.
const ARGS_PER_CALL: usize = 500;
/// Extra time past the requested timeout before buildmesh kills `nix-store` itself.
const TIMEOUT_SLACK: Duration = Duration::from_secs(30);

/// The `nix` executor (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct NixExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    store_dir: StoreDir,
    builds_dir: PathBuf,
    cores: u32,
    systems: Systems,
    kill_grace: Duration,
    nix_store: PathBuf,
    nix: PathBuf,
}

impl NixExecutor {
    /// An executor for `config`: the store dir must be `/nix/store` and `nix-store` must run.
    /// Empties `config.builds_dir`.
    pub fn new(config: ExecutorConfig) -> Result<NixExecutor, ExecutorSetupError> {
        if config.store_dir.as_str() != NIX_STORE_DIR {
            return Err(ExecutorSetupError::Unusable(format!(
                "the nix executor builds in the host's Nix store, {NIX_STORE_DIR}; this node's store dir is {} \
                 (use executor = \"local\")",
                config.store_dir.as_str()
            )));
        }
        let bin = |name: &str| match &config.nix_bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        };
        let nix_store = bin("nix-store");
        let version =
            std::process::Command::new(&nix_store).arg("--version").stdin(Stdio::null()).output().map_err(|e| {
                ExecutorSetupError::Unusable(format!("cannot run {}: {e} (is Nix installed?)", nix_store.display()))
            })?;
        if !version.status.success() {
            return Err(ExecutorSetupError::Unusable(format!(
                "{} --version failed: {}",
                nix_store.display(),
                String::from_utf8_lossy(&version.stderr).trim()
            )));
        }
        tracing::info!(version = %String::from_utf8_lossy(&version.stdout).trim(), "using the host's Nix");
        super::nix_policy::check(&bin("nix"), config.sandbox.allow_unsafe_nix_executor)
            .map_err(ExecutorSetupError::Unusable)?;
        reset_builds_dir(&config.builds_dir)?;
        Ok(NixExecutor {
            inner: Arc::new(Inner {
                store: config.store,
                store_dir: config.store_dir,
                builds_dir: config.builds_dir,
                cores: config.cores.max(1),
                systems: config.systems,
                kill_grace: config.kill_grace,
                nix_store,
                nix: bin("nix"),
            }),
        })
    }
}

impl Executor for NixExecutor {
    fn name(&self) -> &'static str {
        "nix"
    }

    fn build(&self, req: BuildRequest, cancel: CancellationToken) -> BuildFuture<'_> {
        let inner = self.inner.clone();
        let span = tracing::info_span!("build", executor = "nix", drv = %req.drv_path, attempt = req.attempt);
        Box::pin(inner.run(req, cancel).instrument(span))
    }
}

/// A work dir under `DATA/builds`, removed on drop.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = realize::remove_tree(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove a build dir");
        }
    }
}

/// One path to import into the host store.
#[derive(Debug)]
enum Import {
    /// A `.drv`: its ATerm and references.
    Drv { aterm: Vec<u8>, references: BTreeSet<StorePath> },
    /// A registered path (its blob).
    Path(PathInfo),
}

#[derive(Debug)]
struct Prepared {
    work: WorkDir,
    outputs: BTreeMap<String, StorePath>,
    check: bool,
}

/// How a command run ended.
#[derive(Debug)]
enum Ended {
    Exited(Option<i32>),
    TimedOut,
    Cancelled,
}

impl Inner {
    fn cmd_error(&self, what: &str, e: impl std::fmt::Display) -> BuildError {
        executor_error(format!("{what}: {e}"), Vec::new())
    }

    async fn run(self: Arc<Self>, req: BuildRequest, cancel: CancellationToken) -> Result<BuildReport, BuildError> {
        let emulated = if req.drv.builder.starts_with(b"builtin:") && req.drv.system == b"builtin" {
            false
        } else {
            build_mode(&self.systems, &req.drv)?
        };
        let this = self.clone();
        let req2 = req.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&req2)).await.map_err(join_error)??;
        if cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let started_at_ms = now_ms();
        let drv_shown = self.store_dir.display(&req.drv_path);
        let mut cmd = tokio::process::Command::new(&self.nix_store);
        cmd.arg("--realise")
            .arg(&drv_shown)
            .args(["--max-jobs", "1", "--cores"])
            .arg(self.cores.to_string())
            .args(["--option", "substitute", "false", "--option", "fallback", "false"])
            .arg("--add-root")
            .arg(prepared.work.0.join("result"));
        if let Some(t) = req.timeout {
            cmd.arg("--timeout").arg(t.as_secs().max(1).to_string());
        }
        if prepared.check {
            cmd.arg("--check");
        }
        tracing::info!(check = prepared.check, emulated, "nix-store --realise starting");
        let deadline = req.timeout.map(|t| t + TIMEOUT_SLACK);
        let (ended, log) = self.run_logged(cmd, req.max_log_bytes, deadline, &cancel).await?;
        tracing::info!(?ended, log_bytes = log.len(), "nix-store --realise finished");
        match ended {
            Ended::Exited(Some(0)) => {}
            Ended::Exited(code) => return Err(map_nix_failure(code, log, &req.drv, &prepared.outputs, req.timeout)),
            Ended::TimedOut => return Err(BuildError::Timeout { limit: req.timeout.unwrap_or_default(), log }),
            Ended::Cancelled => return Err(BuildError::Cancelled),
        }
        if cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_back(&req, prepared, log, started_at_ms, emulated))
            .await
            .map_err(join_error)?
    }

    /// Run `cmd` (stdout discarded) collecting a capped stderr, with a deadline and cancellation.
    async fn run_logged(
        &self,
        mut cmd: tokio::process::Command,
        max_log: u64,
        deadline: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<(Ended, Vec<u8>), BuildError> {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
        let mut child =
            cmd.spawn().map_err(|e| self.cmd_error(&format!("starting {}", self.nix_store.display()), e))?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        let signal = |sig: Signal| {
            if let Some(pg) = pgid {
                let _ = killpg(pg, sig);
            }
        };
        let mut stderr = child.stderr.take().ok_or_else(|| self.cmd_error("nix-store", "no stderr pipe"))?;
        let mut log = CappedLog::new(max_log);
        let mut buf = vec![0u8; 64 * 1024];
        let start = tokio::time::Instant::now();
        let deadline = deadline.map(|d| start + d);
        let sleep_until = |t: Option<tokio::time::Instant>| async move {
            match t {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let mut eof = false;
        let mut status = None;
        let mut ended: Option<Ended> = None;
        let mut kill_at: Option<tokio::time::Instant> = None;
        while !(eof && status.is_some()) {
            tokio::select! {
                biased;
                r = stderr.read(&mut buf), if !eof => match r {
                    Ok(0) => eof = true,
                    Ok(n) => log.push(&buf[..n]),
                    Err(e) => return Err(self.cmd_error("reading nix-store's output", e)),
                },
                s = child.wait(), if status.is_none() => {
                    status = Some(s.map_err(|e| self.cmd_error("waiting for nix-store", e))?);
                }
                _ = sleep_until(kill_at), if kill_at.is_some() => {
                    signal(Signal::SIGKILL);
                    kill_at = None;
                }
                _ = sleep_until(deadline), if ended.is_none() && status.is_none() && deadline.is_some() => {
                    tracing::info!("nix-store ran past its timeout: stopping it");
                    ended = Some(Ended::TimedOut);
                    signal(Signal::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + self.kill_grace);
                }
                _ = cancel.cancelled(), if ended.is_none() && status.is_none() => {
                    tracing::info!("build cancelled: stopping nix-store");
                    ended = Some(Ended::Cancelled);
                    signal(Signal::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + self.kill_grace);
                }
            }
        }
        let code = status.and_then(|s| s.code());
        Ok((ended.unwrap_or(Ended::Exited(code)), log.finish()))
    }

    /// Collect the closure, import what the host store lacks (steps 1–2).
    fn prepare(&self, req: &BuildRequest) -> Result<Prepared, BuildError> {
        let outputs = output_paths(&req.drv)?;
        let mut imports: BTreeMap<StorePath, Import> = BTreeMap::new();
        // Every .drv, transitively, and the input sources they name.
        let top_aterm = match self.store.get_drv(&req.drv_path).map_err(|e| self.cmd_error("reading the store", e))? {
            Some(bytes) => bytes,
            None => req.drv.to_aterm(&self.store_dir),
        };
        let mut todo: Vec<(StorePath, Vec<u8>, Derivation)> = vec![(req.drv_path.clone(), top_aterm, req.drv.clone())];
        let mut sources: BTreeSet<StorePath> = BTreeSet::new();
        while let Some((path, aterm, drv)) = todo.pop() {
            if imports.contains_key(&path) {
                continue;
            }
            sources.extend(drv.input_srcs.iter().cloned());
            for input in drv.input_drvs.keys() {
                if !imports.contains_key(input) {
                    let bytes = self
                        .store
                        .get_drv(input)
                        .map_err(|e| self.cmd_error("reading the store", e))?
                        .ok_or_else(|| BuildError::MissingInput { path: input.clone() })?;
                    let parsed = Derivation::parse(&bytes, &self.store_dir)
                        .map_err(|e| self.cmd_error(&format!("input derivation {input}"), e))?;
                    todo.push((input.clone(), bytes, parsed));
                }
            }
            let references = drv.references().cloned().collect();
            imports.insert(path, Import::Drv { aterm, references });
        }
        sources.extend(realize::input_paths(&self.store, &self.store_dir, &req.drv).map_err(realize_error)?);
        for (path, info) in realize::closure(&self.store, &sources).map_err(realize_error)? {
            imports.insert(path, Import::Path(info));
        }

        let invalid = self.invalid_paths(imports.keys())?;
        self.check_host_copies(&imports, &invalid)?;
        let work = WorkDir(
            tempfile::Builder::new()
                .prefix(&format!("{}-", req.drv_path.hash_part()))
                .tempdir_in(&self.builds_dir)
                .map_err(|e| self.cmd_error(&format!("creating a build dir in {}", self.builds_dir.display()), e))?
                .keep(),
        );
        if !invalid.is_empty() {
            let cache = work.0.join("cache");
            self.write_cache(&cache, &invalid, &imports)?;
            self.nix_copy(&cache, &topological(&invalid, &imports))?;
        }
        let invalid_outputs = self.invalid_paths(outputs.values())?;
        let check = invalid_outputs.is_empty();
        tracing::debug!(closure = imports.len(), imported = invalid.len(), check, "closure in the host store");
        Ok(Prepared { work, outputs, check })
    }

    fn nix_store_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.nix_store);
        c.stdin(Stdio::null());
        c
    }

    /// The paths of `paths` that are not valid in the host store.
    fn invalid_paths<'a>(&self, paths: impl Iterator<Item = &'a StorePath>) -> Result<BTreeSet<StorePath>, BuildError> {
        let all: Vec<&StorePath> = paths.collect();
        let mut invalid = BTreeSet::new();
        for chunk in all.chunks(ARGS_PER_CALL) {
            let out = self
                .nix_store_cmd()
                .args(["--check-validity", "--print-invalid"])
                .args(chunk.iter().map(|p| self.store_dir.display(p)))
                .output()
                .map_err(|e| self.cmd_error("running nix-store --check-validity", e))?;
            if !out.status.success() {
                return Err(self
                    .cmd_error("nix-store --check-validity", String::from_utf8_lossy(&out.stderr).trim().to_string()));
            }
            for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
                invalid.insert(
                    self.store_dir
                        .parse_path(line)
                        .map_err(|e| self.cmd_error("nix-store --check-validity output", e))?,
                );
            }
        }
        Ok(invalid)
    }

    /// Refuse host copies of inputs with other bytes than registered ([`super::nix_host`]).
    fn check_host_copies(
        &self,
        imports: &BTreeMap<StorePath, Import>,
        invalid: &BTreeSet<StorePath>,
    ) -> Result<(), BuildError> {
        let valid: Vec<(&StorePath, &PathInfo)> = imports
            .iter()
            .filter(|(p, _)| !invalid.contains(*p))
            .filter_map(|(p, i)| match i {
                Import::Path(info) => Some((p, info)),
                Import::Drv { .. } => None,
            })
            .collect();
        super::nix_host::check_host_copies(&self.nix_store, &self.store_dir, &valid, ARGS_PER_CALL)
    }

    /// Write `paths` as a `file://` binary cache at `dir`.
    fn write_cache(
        &self,
        dir: &Path,
        paths: &BTreeSet<StorePath>,
        imports: &BTreeMap<StorePath, Import>,
    ) -> Result<(), BuildError> {
        let io = |what: &Path, e: io::Error| self.cmd_error(&format!("writing {}", what.display()), e);
        std::fs::create_dir_all(dir.join("nar")).map_err(|e| io(dir, e))?;
        let info_file = dir.join("nix-cache-info");
        std::fs::write(&info_file, format!("StoreDir: {}\n", self.store_dir.as_str()))
            .map_err(|e| io(&info_file, e))?;
        for path in paths {
            let Some(import) = imports.get(path) else { continue };
            let (nar_hash, nar_size, references, deriver, ca) = match import {
                Import::Drv { aterm, references } => {
                    let nar = Node::Regular { executable: false, contents: aterm.clone() }
                        .to_nar()
                        .map_err(|e| self.cmd_error("encoding a .drv as a NAR", e))?;
                    let hash = NixHash::sha256_of(&nar);
                    let nar_file = dir.join(format!("nar/{}.nar", hash.to_nix32()));
                    std::fs::write(&nar_file, &nar).map_err(|e| io(&nar_file, e))?;
                    let ca =
                        ContentAddress::new(buildmesh_protocol::narinfo::CaMethod::Text, NixHash::sha256_of(aterm))
                            .map_err(|e| self.cmd_error("content address", e))?;
                    (hash, nar.len() as u64, references.clone(), None, Some(ca))
                }
                Import::Path(info) => {
                    let nar_file = dir.join(format!("nar/{}.nar", info.nar_hash.to_nix32()));
                    if !nar_file.exists() {
                        let mut reader =
                            self.store.open_nar(&info.blob).map_err(|e| self.cmd_error("reading a NAR blob", e))?;
                        let mut f = std::fs::File::create(&nar_file).map_err(|e| io(&nar_file, e))?;
                        io::copy(&mut reader, &mut f).map_err(|e| io(&nar_file, e))?;
                        f.flush().map_err(|e| io(&nar_file, e))?;
                    }
                    let ca = match &info.ca {
                        Some(s) => Some(ContentAddress::parse(s).map_err(|e| self.cmd_error("stored CA", e))?),
                        None => None,
                    };
                    (info.nar_hash.clone(), info.nar_size, info.references.clone(), info.deriver.clone(), ca)
                }
            };
            let digest: [u8; 32] = (nar_hash.algo() == HashAlgo::Sha256)
                .then(|| nar_hash.digest().try_into().ok())
                .flatten()
                .ok_or_else(|| self.cmd_error(&format!("path {path}"), "NarHash is not SHA-256"))?;
            let mut ni =
                NarInfo::new(self.store_dir.clone(), path.clone(), digest, nar_size, references.into_iter().collect());
            ni.deriver = deriver.map(Deriver::Path);
            ni.ca = ca;
            let file = dir.join(format!("{}.narinfo", path.hash_part()));
            std::fs::write(&file, ni.to_string()).map_err(|e| io(&file, e))?;
        }
        Ok(())
    }

    /// `nix copy` the given paths from the cache at `dir` into the host store: other paths first,
    /// then the `.drv` files (which refer to them). `--derivation` makes a `.drv` argument mean
    /// the file itself, not its outputs; on other paths it would look up their deriver, so they
    /// are copied without it. Each call copies its paths in reference order.
    fn nix_copy(&self, dir: &Path, paths: &[StorePath]) -> Result<(), BuildError> {
        let (drvs, others): (Vec<&StorePath>, Vec<&StorePath>) = paths.iter().partition(|p| p.is_derivation());
        let batches =
            others.chunks(ARGS_PER_CALL).map(|c| (c, false)).chain(drvs.chunks(ARGS_PER_CALL).map(|c| (c, true)));
        for (chunk, derivations) in batches {
            let mut cmd = std::process::Command::new(&self.nix);
            cmd.args(["--extra-experimental-features", "nix-command", "copy", "--from"])
                .arg(format!("file://{}", dir.display()))
                .args(["--no-check-sigs", "--no-recursive"]);
            if derivations {
                cmd.arg("--derivation");
            }
            let out = cmd
                .args(chunk.iter().map(|p| self.store_dir.display(p)))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| self.cmd_error(&format!("running {} copy", self.nix.display()), e))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(executor_error(format!("importing the closure into the host store: {err}"), out.stderr));
            }
        }
        Ok(())
    }

    /// Read the outputs back from the host store into the node's store (step 4).
    fn read_back(
        &self,
        req: &BuildRequest,
        prepared: Prepared,
        log: Vec<u8>,
        started_at_ms: u64,
        emulated: bool,
    ) -> Result<BuildReport, BuildError> {
        let now = now_ms();
        let mut infos = Vec::new();
        for (name, path) in &prepared.outputs {
            let shown = self.store_dir.display(path);
            let fail = |what: &str, e: String| {
                executor_error(format!("reading output `{name}` ({shown}): {what}: {e}"), log.clone())
            };
            let query = |flag: &str| -> Result<String, BuildError> {
                let out = self
                    .nix_store_cmd()
                    .args(["--query", flag, &shown])
                    .output()
                    .map_err(|e| fail("nix-store --query", e.to_string()))?;
                if !out.status.success() {
                    return Err(fail("nix-store --query", String::from_utf8_lossy(&out.stderr).trim().to_string()));
                }
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            };
            let nix_hash = NixHash::parse(query("--hash")?.trim(), None).map_err(|e| fail("NarHash", e.to_string()))?;
            let mut references = BTreeSet::new();
            for line in query("--references")?.lines().filter(|l| !l.is_empty()) {
                references.insert(self.store_dir.parse_path(line).map_err(|e| fail("references", e.to_string()))?);
            }
            let mut child = self
                .nix_store_cmd()
                .args(["--dump", &shown])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| fail("nix-store --dump", e.to_string()))?;
            let mut stdout = child.stdout.take().ok_or_else(|| fail("nix-store --dump", "no stdout".into()))?;
            let stored = self.store.put_nar(&mut stdout);
            drop(stdout);
            let dumped = child.wait_with_output().map_err(|e| fail("nix-store --dump", e.to_string()))?;
            if !dumped.status.success() {
                return Err(fail("nix-store --dump", String::from_utf8_lossy(&dumped.stderr).trim().to_string()));
            }
            let blob = stored.map_err(|e| fail("storing the NAR", e.to_string()))?;
            if blob.nar_hash != nix_hash {
                return Err(fail("NarHash", format!("Nix records {nix_hash}, the dump hashes to {}", blob.nar_hash)));
            }
            let ca = match req.drv.outputs.get(name).map(|o| &o.hash) {
                Some(OutputHash::Fixed { method, hash }) => {
                    Some(realize::content_address(*method, hash).map_err(|e| fail("CA", e.to_string()))?)
                }
                _ => None,
            };
            tracing::debug!(output = %name, nar_hash = %blob.nar_hash, nar_size = blob.nar_size, "output read back");
            infos.push((
                name.clone(),
                PathInfo {
                    path: path.clone(),
                    nar_hash: blob.nar_hash,
                    nar_size: blob.nar_size,
                    references,
                    deriver: Some(req.drv_path.clone()),
                    ca,
                    blob: blob.blake3,
                    registered_at: now,
                },
            ));
        }
        let plain: Vec<PathInfo> = infos.iter().map(|(_, i)| i.clone()).collect();
        let regs = realize::register_outputs(&self.store, &plain)
            .map_err(|e| executor_error(format!("registering the outputs: {e}"), log.clone()))?;
        let mut outputs = BTreeMap::new();
        for ((name, info), reg) in infos.into_iter().zip(regs) {
            if let Registration::Conflict { existing } = &reg {
                tracing::warn!(output = %name, path = %info.path, built = %info.nar_hash, registered = %existing,
                    "output differs from the copy already registered (not reproducible); keeping the registered one");
            }
            outputs.insert(
                name,
                BuiltOutput {
                    path: info.path,
                    nar_hash: info.nar_hash,
                    nar_size: info.nar_size,
                    references: info.references,
                    content_id: info.blob,
                },
            );
        }
        drop(prepared);
        Ok(BuildReport { outputs, log, emulated, started_at_ms, finished_at_ms: now_ms() })
    }
}

/// `paths` ordered so that every path comes after the paths of `paths` it refers to (so that
/// batches of `nix copy --no-recursive` never name a missing reference).
fn topological(paths: &BTreeSet<StorePath>, imports: &BTreeMap<StorePath, Import>) -> Vec<StorePath> {
    let refs_of = |p: &StorePath| match imports.get(p) {
        Some(Import::Drv { references, .. }) => Some(references),
        Some(Import::Path(info)) => Some(&info.references),
        None => None,
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(paths.len());
    for root in paths {
        // Iterative post-order walk: (path, its references are already pushed).
        let mut stack = vec![(root, false)];
        while let Some((p, expanded)) = stack.pop() {
            if expanded {
                out.push(p.clone());
                continue;
            }
            if !seen.insert(p) {
                continue;
            }
            stack.push((p, true));
            for r in refs_of(p).into_iter().flatten() {
                if r != p && paths.contains(r) && !seen.contains(r) {
                    stack.push((r, false));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s).unwrap()
    }

    #[test]
    fn topological_order_puts_references_first() {
        let a = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-a");
        let b = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-b");
        let c = sp("bnr93czmznql3rh3ijb3s0wvk9x6wyay-c.drv");
        let info = |p: &StorePath, refs: &[&StorePath]| PathInfo {
            path: p.clone(),
            nar_hash: NixHash::sha256([0; 32]),
            nar_size: 1,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            ca: None,
            blob: buildmesh_protocol::id::ArtifactHash::from_bytes([0; 32]),
            registered_at: 0,
        };
        let imports = BTreeMap::from([
            (a.clone(), Import::Path(info(&a, &[&a, &b]))),
            (b.clone(), Import::Path(info(&b, &[]))),
            (c.clone(), Import::Drv { aterm: vec![], references: [a.clone()].into() }),
        ]);
        let all: BTreeSet<StorePath> = [a.clone(), b.clone(), c.clone()].into();
        assert_eq!(topological(&all, &imports), vec![b.clone(), a.clone(), c.clone()]);
        let some: BTreeSet<StorePath> = [a.clone(), c.clone()].into();
        assert_eq!(topological(&some, &imports), vec![a, c]);
    }
}
