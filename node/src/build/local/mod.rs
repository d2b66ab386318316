//! The `local` executor: builds a derivation in buildmesh's own sandbox
//! ([`crate::sandbox::SandboxRunner`]) with the node's store mapped at the store dir.
//!
//! One build, step by step (what Nix 2.8's `LocalDerivationGoal` does, minus the daemon):
//! 1. **System**: the derivation's `system` must be native or emulated here
//!    ([`crate::systems`]); emulated builds are reported as such.
//! 2. **Inputs**: input sources plus the selected outputs of input derivations, and everything
//!    they reference ([`realize::input_paths`], [`realize::closure`]); a path that is not in the
//!    store is [`BuildError::MissingInput`]. The closure is realised in `DATA/store`
//!    ([`StoreFs::ensure`]).
//! 3. **Work dir** `DATA/builds/<drv hash>-<random>/{store,build}`: `store` appears read-write at
//!    the store dir (each input bind-mounted read-only in it), `build` at `/build`.
//! 4. **Environment** as Nix gives it: [`nix_builder_env`] (or [`nix_fixed_output_builder_env`]
//!    with the host's values of the `impureEnvVars` the operator allows,
//!    [`SandboxSettings::impure_env`]), `passAsFile`, `__structuredAttrs`
//!    (`.attrs.json`/`.attrs.sh`), `exportReferencesGraph` (closure files in `/build`). Network
//!    only for fixed-output derivations, through slirp4netns (never the host's loopback).
//! 5. **Run** with the request's timeout and log cap; cancellation kills the whole sandbox.
//! 6. **Outputs**, each of which must exist: a fixed output is checked first (flat: a
//!    non-executable regular file, hash of its contents; recursive: hash of its NAR; md5, sha1,
//!    sha256 or sha512 as declared) and must not refer to store paths. Then one streaming pass
//!    per output writes its NAR into the store as a blob while scanning it for references (the
//!    input closure and the derivation's own outputs are the candidates, as in Nix). Then
//!    `allowedReferences`, `allowedRequisites`, `disallowedReferences`, `disallowedRequisites`
//!    (or `outputChecks` with structured attrs, including `maxSize`/`maxClosureSize`).
//! 7. **Register** every output in one store transaction ([`realize::register_outputs`]:
//!    NarHash, NarSize, references, deriver, `CA` for fixed outputs), then move it into
//!    `DATA/store` ([`StoreFs::install`]).
//!
//! The work dir is deleted in every case (also when the build future is dropped). Not supported:
//! `builtin:` builders, content-addressed (floating) and impure derivations,
//! `exportReferencesGraph` with structured attrs, `__noChroot` (builds are always sandboxed).
//!
//! This file runs the steps; `env` holds the builder environment beyond Nix's variables (step 4:
//! structured attrs, `exportReferencesGraph`) and `outputs` the output checks and the streaming
//! store pass (step 6).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use buildmesh_protocol::derivation::{CaMethod, Derivation, OutputHash};
use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

mod env;
mod outputs;

use env::{closure_within, string_list_attr, structured_json, write_reference_graphs};
use outputs::{check_fixed_output, check_output_rules, store_nar};

use super::realize::{self, RealizeError, Registration, StoreFs};
use super::refscan::RefScanner;
use super::{
    BuildError, BuildFuture, BuildReport, BuildRequest, BuiltOutput, Executor, ExecutorConfig, ExecutorSetupError,
    now_ms, reset_builds_dir,
};
use crate::nar_fs;
use crate::sandbox::{
    ExecutorError, FixedOutputNetwork, InputPath, SANDBOX_BUILD_DIR, SandboxRunner, SandboxSettings, SandboxSpec,
    Termination, nix_builder_env, nix_fixed_output_builder_env, pass_as_file, structured_attrs,
};
use crate::store::{PathInfo, Store};
use crate::systems::Systems;

/// The `local` executor (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    store_fs: StoreFs,
    store_dir: StoreDir,
    builds_dir: PathBuf,
    cores: u32,
    systems: Systems,
    sandbox_paths: Vec<PathBuf>,
    sandbox: SandboxSettings,
    runner: SandboxRunner,
}

impl LocalExecutor {
    /// An executor for `config`. Empties `config.builds_dir` (work dirs of interrupted builds).
    pub fn new(config: ExecutorConfig) -> Result<LocalExecutor, ExecutorSetupError> {
        reset_builds_dir(&config.builds_dir)?;
        let runner = config
            .sandbox
            .runner(config.sandbox_helper)
            .map_err(ExecutorSetupError::Unusable)?
            .with_kill_grace(config.kill_grace)
            .with_cgroups(config.cgroups.clone())
            .with_dir_limit(config.build_dir_max);
        Ok(LocalExecutor {
            inner: Arc::new(Inner {
                store: config.store,
                store_fs: config.store_fs,
                store_dir: config.store_dir,
                builds_dir: config.builds_dir,
                cores: config.cores.max(1),
                systems: config.systems,
                sandbox_paths: config.sandbox_paths,
                sandbox: config.sandbox,
                runner,
            }),
        })
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn build(&self, req: BuildRequest, cancel: CancellationToken) -> BuildFuture<'_> {
        let inner = self.inner.clone();
        let span = tracing::info_span!("build", executor = "local", drv = %req.drv_path, attempt = req.attempt);
        Box::pin(inner.run(req, cancel).instrument(span))
    }
}

/// Whether a build of `drv` here is emulated; an error when this node cannot build its system.
pub(crate) fn build_mode(systems: &Systems, drv: &Derivation) -> Result<bool, BuildError> {
    let system = String::from_utf8_lossy(&drv.system);
    if systems.native.contains(system.as_ref()) {
        return Ok(false);
    }
    if systems.emulated.contains(system.as_ref()) {
        return Ok(true);
    }
    Err(executor_error(
        format!(
            "a '{system}' system is required to build this derivation, but this node builds {} natively and {} \
             through emulation",
            list(&systems.native),
            list(&systems.emulated)
        ),
        Vec::new(),
    ))
}

fn list(s: &BTreeSet<String>) -> String {
    if s.is_empty() { "nothing".to_string() } else { s.iter().cloned().collect::<Vec<_>>().join(", ") }
}

pub(crate) fn executor_error(message: impl Into<String>, log: Vec<u8>) -> BuildError {
    BuildError::Executor { message: message.into(), log }
}

/// Map a realisation error: a path that is not in the store is a missing input.
pub(crate) fn realize_error(e: RealizeError) -> BuildError {
    match e {
        RealizeError::NotRegistered { path } => BuildError::MissingInput { path },
        e => executor_error(e.to_string(), Vec::new()),
    }
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> BuildError {
    executor_error(format!("build task failed: {e}"), Vec::new())
}

/// The output paths of `drv` (all must be known before building).
pub(crate) fn output_paths(drv: &Derivation) -> Result<BTreeMap<String, StorePath>, BuildError> {
    drv.outputs
        .iter()
        .map(|(name, o)| {
            o.path.clone().map(|p| (name.clone(), p)).ok_or_else(|| {
                executor_error(
                    format!("output `{name}` has no path: content-addressed and impure derivations are not supported"),
                    Vec::new(),
                )
            })
        })
        .collect()
}

/// A per-build work dir, removed on drop.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(builds_dir: &Path, drv_path: &StorePath) -> Result<WorkDir, BuildError> {
        std::fs::create_dir_all(builds_dir)
            .map_err(|e| executor_error(format!("creating {}: {e}", builds_dir.display()), Vec::new()))?;
        let dir =
            tempfile::Builder::new().prefix(&format!("{}-", drv_path.hash_part())).tempdir_in(builds_dir).map_err(
                |e| executor_error(format!("creating a build dir in {}: {e}", builds_dir.display()), Vec::new()),
            )?;
        let work = WorkDir { path: dir.keep() };
        for sub in ["store", "build"] {
            let p = work.path.join(sub);
            std::fs::create_dir(&p)
                .map_err(|e| executor_error(format!("creating {}: {e}", p.display()), Vec::new()))?;
        }
        Ok(work)
    }

    fn store(&self) -> PathBuf {
        self.path.join("store")
    }

    fn build(&self) -> PathBuf {
        self.path.join("build")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = realize::remove_tree(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove a build dir");
        }
    }
}

/// Everything set up before the builder runs.
#[derive(Debug)]
struct Prepared {
    work: WorkDir,
    spec: SandboxSpec,
    outputs: BTreeMap<String, StorePath>,
    /// The input closure with its registrations.
    inputs: BTreeMap<StorePath, PathInfo>,
}

impl Inner {
    async fn run(self: Arc<Self>, req: BuildRequest, cancel: CancellationToken) -> Result<BuildReport, BuildError> {
        if req.drv.builder.starts_with(b"builtin:") {
            return Err(executor_error(
                format!(
                    "builtin builder `{}` is not supported by the local executor",
                    String::from_utf8_lossy(&req.drv.builder)
                ),
                Vec::new(),
            ));
        }
        let emulated = build_mode(&self.systems, &req.drv)?;
        let this = self.clone();
        let req2 = req.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&req2)).await.map_err(join_error)??;
        if cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let started_at_ms = now_ms();
        tracing::info!(inputs = prepared.inputs.len(), emulated, "builder starting");
        let outcome = self.runner.run(&prepared.spec, cancel.cancelled()).await.map_err(|e| match e {
            ExecutorError::SetupFailed { status, message } => {
                let log = message.clone().into_bytes();
                executor_error(format!("sandbox setup failed ({status}): {message}"), log)
            }
            e => executor_error(format!("sandbox: {e}"), Vec::new()),
        })?;
        tracing::info!(termination = ?outcome.termination, duration = ?outcome.duration, log_bytes = outcome.log_bytes, "builder finished");
        let log = outcome.log;
        match outcome.termination {
            Termination::Exited(0) => {}
            Termination::Exited(code) => return Err(BuildError::BuilderExit { code, log }),
            Termination::Signaled(signal) => {
                return Err(BuildError::BuilderSignal { signal: u8::try_from(signal).unwrap_or(u8::MAX), log });
            }
            Termination::TimedOut => return Err(BuildError::Timeout { limit: req.timeout.unwrap_or_default(), log }),
            Termination::Cancelled => return Err(BuildError::Cancelled),
            Termination::Limit(hit) => return Err(BuildError::ResourceLimit { hit, log }),
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.finish(&req, prepared, log, started_at_ms, emulated, &cancel))
            .await
            .map_err(join_error)?
    }

    /// Steps 2–4 of the module docs.
    fn prepare(&self, req: &BuildRequest) -> Result<Prepared, BuildError> {
        let drv = &req.drv;
        let outputs = output_paths(drv)?;
        let direct = realize::input_paths(&self.store, &self.store_dir, drv).map_err(realize_error)?;
        let inputs = realize::closure(&self.store, &direct).map_err(realize_error)?;
        self.store_fs.ensure_all(&self.store, inputs.keys()).map_err(realize_error)?;
        let work = WorkDir::create(&self.builds_dir, &req.drv_path)?;
        let build_host = work.build();
        let io = |what: &str, e: io::Error| executor_error(format!("{what}: {e}"), Vec::new());

        let shown: BTreeMap<String, String> =
            outputs.iter().map(|(name, p)| (name.clone(), self.store_dir.display(p))).collect();
        let attrs = structured_attrs(&drv.env, &shown, &build_host, SANDBOX_BUILD_DIR)
            .map_err(|e| io("writing the structured attributes", e))?;
        let drv_env = match attrs {
            Some(env) => {
                if structured_json(drv).is_some_and(|j| j.get("exportReferencesGraph").is_some()) {
                    return Err(executor_error(
                        "exportReferencesGraph with __structuredAttrs is not supported by the local executor",
                        Vec::new(),
                    ));
                }
                env
            }
            None => {
                write_reference_graphs(drv, &self.store_dir, &direct, &inputs, &build_host)?;
                pass_as_file(&drv.env, &build_host, SANDBOX_BUILD_DIR).map_err(|e| io("writing passAsFile files", e))?
            }
        };
        let fixed = drv.is_fixed_output();
        let env = if fixed {
            let impure = self.sandbox.impure_env(&string_list_attr(drv, "impureEnvVars").unwrap_or_default());
            nix_fixed_output_builder_env(&drv_env, self.store_dir.as_str(), SANDBOX_BUILD_DIR, self.cores, &impure)
        } else {
            nix_builder_env(&drv_env, self.store_dir.as_str(), SANDBOX_BUILD_DIR, self.cores)
        };
        let builder = PathBuf::from(OsString::from_vec(drv.builder.clone()));
        let mut spec = SandboxSpec::new(builder, self.store_dir.as_str(), work.store(), &build_host);
        spec.args = drv.args.clone();
        spec.env = env;
        spec.inputs = inputs
            .keys()
            .map(|p| InputPath { host: self.store_fs.path_of(p), path: PathBuf::from(self.store_dir.display(p)) })
            .collect();
        spec.sandbox_paths = self.sandbox_paths.clone();
        spec.network = fixed && self.sandbox.fixed_output_network == FixedOutputNetwork::Slirp4netns;
        spec.timeout = req.timeout;
        spec.max_log_bytes = req.max_log_bytes;
        spec.validate().map_err(|e| executor_error(format!("cannot build this derivation: {e}"), Vec::new()))?;
        Ok(Prepared { work, spec, outputs, inputs })
    }

    /// Steps 6–7 of the module docs.
    fn finish(
        &self,
        req: &BuildRequest,
        prepared: Prepared,
        log: Vec<u8>,
        started_at_ms: u64,
        emulated: bool,
        cancel: &CancellationToken,
    ) -> Result<BuildReport, BuildError> {
        let Prepared { work, outputs, inputs, .. } = prepared;
        let store_host = work.store();
        let host_of = |p: &StorePath| store_host.join(p.to_string());
        for (name, path) in &outputs {
            if std::fs::symlink_metadata(host_of(path)).is_err() {
                return Err(BuildError::OutputMissing { output: name.clone(), path: path.clone(), log });
            }
        }
        // Reference candidates: the input closure and this derivation's outputs (Nix's
        // `inputPaths` plus the scratch output paths).
        let candidates: BTreeMap<String, StorePath> =
            inputs.keys().chain(outputs.values()).map(|p| (p.to_string(), p.clone())).collect();

        let mut built: BTreeMap<String, (PathInfo, BTreeSet<StorePath>)> = BTreeMap::new();
        for (name, path) in &outputs {
            let host = host_of(path);
            let fixed = match &req.drv.outputs.get(name).map(|o| &o.hash) {
                Some(OutputHash::Fixed { method, hash }) => Some((*method, hash.clone())),
                _ => None,
            };
            let ca = match &fixed {
                Some((method, expected)) => {
                    check_fixed_output(name, &host, *method, expected, &candidates).map_err(|e| e.with_log(&log))?;
                    Some(
                        realize::content_address(*method, expected)
                            .map_err(|e| executor_error(e.to_string(), log.clone()))?,
                    )
                }
                None => None,
            };
            let (blob, refs) = store_nar(&self.store, &host, &candidates)
                .map_err(|e| executor_error(format!("storing output `{name}`: {e}"), log.clone()))?;
            let info = PathInfo {
                path: path.clone(),
                nar_hash: blob.nar_hash,
                nar_size: blob.nar_size,
                references: refs.clone(),
                deriver: Some(req.drv_path.clone()),
                ca,
                blob: blob.blake3,
                registered_at: 0,
            };
            tracing::debug!(output = %name, nar_hash = %info.nar_hash, nar_size = info.nar_size, references = refs.len(), "output stored");
            built.insert(name.clone(), (info, refs));
        }
        check_output_rules(&req.drv, &self.store_dir, &outputs, &built, &inputs).map_err(|e| e.with_log(&log))?;
        if cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }

        let now = now_ms();
        let infos: Vec<PathInfo> =
            built.values().map(|(info, _)| PathInfo { registered_at: now, ..info.clone() }).collect();
        let registrations = realize::register_outputs(&self.store, &infos)
            .map_err(|e| executor_error(format!("registering the outputs: {e}"), log.clone()))?;
        let mut report_outputs = BTreeMap::new();
        for ((name, (info, _)), reg) in built.into_iter().zip(registrations) {
            match &reg {
                Registration::Conflict { existing } => tracing::warn!(
                    output = %name, path = %info.path, built = %info.nar_hash, registered = %existing,
                    "output differs from the copy already registered (not reproducible); keeping the registered one"
                ),
                _ => {
                    self.store_fs
                        .install(&host_of(&info.path), &info.path)
                        .map_err(|e| executor_error(format!("installing output `{name}`: {e}"), log.clone()))?;
                }
            }
            report_outputs.insert(
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
        drop(work);
        Ok(BuildReport { outputs: report_outputs, log, emulated, started_at_ms, finished_at_ms: now_ms() })
    }
}

impl BuildError {
    /// Attach the build log to an error made without one.
    fn with_log(self, log: &[u8]) -> BuildError {
        match self {
            BuildError::OutputRejected { output, reason, .. } => {
                BuildError::OutputRejected { output, reason, log: log.to_vec() }
            }
            BuildError::HashMismatch { output, expected, actual, .. } => {
                BuildError::HashMismatch { output, expected, actual, log: log.to_vec() }
            }
            BuildError::Executor { message, .. } => BuildError::Executor { message, log: log.to_vec() },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_modes() {
        let systems =
            Systems { native: ["x86_64-linux".to_string()].into(), emulated: ["aarch64-linux".to_string()].into() };
        let mut d = Derivation { system: b"x86_64-linux".to_vec(), ..Derivation::default() };
        assert!(!build_mode(&systems, &d).unwrap());
        d.system = b"aarch64-linux".to_vec();
        assert!(build_mode(&systems, &d).unwrap());
        d.system = b"riscv64-linux".to_vec();
        match build_mode(&systems, &d) {
            Err(BuildError::Executor { message, .. }) => {
                assert!(message.contains("'riscv64-linux'") && message.contains("aarch64-linux"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
