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

/// Size of the chunks a NAR is streamed into the store in.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the dumping thread and the store.
const CHUNKS_IN_FLIGHT: usize = 4;

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
            .with_kill_grace(config.kill_grace);
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

/// The parsed `__json` of a derivation with structured attrs.
fn structured_json(drv: &Derivation) -> Option<serde_json::Map<String, serde_json::Value>> {
    let raw = drv.env.get(b"__json".as_slice())?;
    match serde_json::from_slice(raw) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A list-of-strings attribute as Nix's `ParsedDerivation::getStringsAttr` reads it: from
/// `__json` with structured attrs (a JSON list of strings), else the env var split on whitespace.
pub(crate) fn string_list_attr(drv: &Derivation, name: &str) -> Option<Vec<String>> {
    if drv.has_structured_attrs() {
        let json = structured_json(drv)?;
        let list = json.get(name)?.as_array()?;
        return Some(list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
    }
    let v = drv.env.get(name.as_bytes())?;
    Some(String::from_utf8_lossy(v).split_whitespace().map(str::to_string).collect())
}

/// `exportReferencesGraph` without structured attrs: for each `name path` pair, write
/// `build/name` with the closure of `path` in `nix-store --register-validity` format (no
/// derivers, no hashes), as Nix 2.8 does.
fn write_reference_graphs(
    drv: &Derivation,
    store_dir: &StoreDir,
    direct: &BTreeSet<StorePath>,
    inputs: &BTreeMap<StorePath, PathInfo>,
    build_host: &Path,
) -> Result<(), BuildError> {
    let Some(raw) = drv.env.get(b"exportReferencesGraph".as_slice()) else { return Ok(()) };
    let raw = String::from_utf8_lossy(raw);
    let tokens: Vec<&str> = raw.split_whitespace().collect();
    let fail = |m: String| BuildError::OutputRejected { output: String::new(), reason: m, log: Vec::new() };
    if !tokens.len().is_multiple_of(2) {
        return Err(fail(format!("odd number of tokens in 'exportReferencesGraph': '{raw}'")));
    }
    for pair in tokens.chunks(2) {
        let (file, path) = (pair[0], pair[1]);
        let ok_name = file.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && file.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok_name {
            return Err(fail(format!("invalid file name '{file}' in 'exportReferencesGraph'")));
        }
        let (sp, _) = store_dir
            .parse_path_prefix(path)
            .map_err(|_| fail(format!("'exportReferencesGraph' contains a non-store path '{path}'")))?;
        if !inputs.contains_key(&sp) && !direct.contains(&sp) {
            return Err(fail(format!(
                "cannot export references of path '{path}' because it is not in the input closure of the derivation"
            )));
        }
        let closure = closure_within(&sp, |p| inputs.get(p).map(|i| &i.references));
        let text = validity_registration(store_dir, &closure, |p| inputs.get(p).map(|i| &i.references));
        std::fs::write(build_host.join(file), text)
            .map_err(|e| executor_error(format!("writing exportReferencesGraph file {file}: {e}"), Vec::new()))?;
    }
    Ok(())
}

/// Nix's `makeValidityRegistration(paths, false, false)`: per path its absolute path, an empty
/// deriver line, the number of references and the references.
pub(crate) fn validity_registration<'a>(
    store_dir: &StoreDir,
    paths: &BTreeSet<StorePath>,
    refs_of: impl Fn(&StorePath) -> Option<&'a BTreeSet<StorePath>>,
) -> String {
    let mut s = String::new();
    for p in paths {
        s.push_str(&store_dir.display(p));
        s.push_str("\n\n");
        let refs = refs_of(p);
        s.push_str(&format!("{}\n", refs.map_or(0, |r| r.len())));
        for r in refs.into_iter().flatten() {
            s.push_str(&store_dir.display(r));
            s.push('\n');
        }
    }
    s
}

/// `start` and everything reachable from it through `refs_of` (paths without an entry end the walk).
fn closure_within<'a>(
    start: &StorePath,
    refs_of: impl Fn(&StorePath) -> Option<&'a BTreeSet<StorePath>>,
) -> BTreeSet<StorePath> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.clone()];
    while let Some(p) = todo.pop() {
        if let Some(refs) = refs_of(&p) {
            todo.extend(refs.iter().filter(|r| !seen.contains(*r)).cloned());
        }
        seen.insert(p);
    }
    seen
}

/// One of md5, sha1, sha256, sha512.
pub(crate) enum AnyHasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl AnyHasher {
    pub(crate) fn new(algo: HashAlgo) -> AnyHasher {
        use sha2::Digest as _;
        match algo {
            HashAlgo::Md5 => AnyHasher::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => AnyHasher::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => AnyHasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => AnyHasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            AnyHasher::Md5(h) => h.update(data),
            AnyHasher::Sha1(h) => h.update(data),
            AnyHasher::Sha256(h) => h.update(data),
            AnyHasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Option<NixHash> {
        use sha2::Digest as _;
        let (algo, digest) = match self {
            AnyHasher::Md5(h) => (HashAlgo::Md5, h.finalize().to_vec()),
            AnyHasher::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            AnyHasher::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            AnyHasher::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        NixHash::new(algo, digest)
    }
}

impl Write for AnyHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes into a hasher and a reference scanner at once.
struct HashScan {
    hasher: Option<AnyHasher>,
    scanner: RefScanner,
}

impl Write for HashScan {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(h) = &mut self.hasher {
            h.update(buf);
        }
        self.scanner.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn scanner(candidates: &BTreeMap<String, StorePath>) -> Result<RefScanner, BuildError> {
    RefScanner::new(candidates.keys()).map_err(|e| executor_error(e.to_string(), Vec::new()))
}

fn found(candidates: &BTreeMap<String, StorePath>, names: BTreeSet<String>) -> BTreeSet<StorePath> {
    names.into_iter().filter_map(|n| candidates.get(&n).cloned()).collect()
}

/// The hash of a fixed output as its method defines it (flat: the file's bytes; recursive: its
/// NAR), and the candidates its NAR refers to. A flat output must be a non-executable regular
/// file.
pub(crate) fn fixed_output_hash(
    output: &str,
    host: &Path,
    method: CaMethod,
    algo: HashAlgo,
    candidates: &BTreeMap<String, StorePath>,
) -> Result<(NixHash, BTreeSet<StorePath>), BuildError> {
    let io = |e: io::Error| executor_error(format!("hashing output `{output}` ({}): {e}", host.display()), Vec::new());
    let nar_err = |e: nar_fs::NarFsError| executor_error(format!("hashing output `{output}`: {e}"), Vec::new());
    let none = || executor_error("hash length mismatch", Vec::new());
    match method {
        CaMethod::Flat => {
            let md = std::fs::symlink_metadata(host).map_err(io)?;
            if !md.is_file() || md.permissions().mode() & 0o100 != 0 {
                return Err(BuildError::OutputRejected {
                    output: output.to_string(),
                    reason: format!(
                        "output path '{}' should be a non-executable regular file since recursive hashing is not \
                         enabled (outputHashMode=flat)",
                        host.display()
                    ),
                    log: Vec::new(),
                });
            }
            let mut hasher = AnyHasher::new(algo);
            io::copy(&mut std::fs::File::open(host).map_err(io)?, &mut hasher).map_err(io)?;
            let hash = hasher.finish().ok_or_else(none)?;
            let scan = nar_fs::dump_path(host, scanner(candidates)?).map_err(nar_err)?;
            Ok((hash, found(candidates, scan.finish())))
        }
        CaMethod::Nar => {
            let w = HashScan { hasher: Some(AnyHasher::new(algo)), scanner: scanner(candidates)? };
            let w = nar_fs::dump_path(host, w).map_err(nar_err)?;
            let hash = w.hasher.and_then(AnyHasher::finish).ok_or_else(none)?;
            Ok((hash, found(candidates, w.scanner.finish())))
        }
        CaMethod::Text | CaMethod::Git => Err(executor_error(
            format!("output `{output}`: fixed outputs hashed with `{}` are not supported", method.prefix()),
            Vec::new(),
        )),
    }
}

/// Check a fixed output against its declared hash; it must not refer to any store path.
fn check_fixed_output(
    output: &str,
    host: &Path,
    method: CaMethod,
    expected: &NixHash,
    candidates: &BTreeMap<String, StorePath>,
) -> Result<(), BuildError> {
    let (actual, refs) = fixed_output_hash(output, host, method, expected.algo(), candidates)?;
    if &actual != expected {
        return Err(BuildError::HashMismatch {
            output: output.to_string(),
            expected: expected.clone(),
            actual,
            log: Vec::new(),
        });
    }
    if !refs.is_empty() {
        return Err(BuildError::OutputRejected {
            output: output.to_string(),
            reason: format!(
                "illegal path references in fixed-output derivation: {}",
                refs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            log: Vec::new(),
        });
    }
    Ok(())
}

/// A `Write` that cuts a stream into chunks for a [`ChunkReader`] on another thread.
struct ChunkWriter {
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store stopped reading"))
    }
}

/// Reads what a [`ChunkWriter`] sends; an `Err` sent by the writer's thread fails the read, so a
/// NAR whose dump failed is never stored as complete.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Tees the NAR into the store and a reference scanner.
struct StoreScan {
    out: ChunkWriter,
    scanner: RefScanner,
}

impl Write for StoreScan {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.scanner.feed(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Why [`store_nar`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreNarError {
    #[error(transparent)]
    Dump(#[from] nar_fs::NarFsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// Write the NAR of `host` into the store as a blob, streaming (a dumping thread feeds the store
/// in bounded chunks: the NAR is never held in memory), and scan it for `candidates`.
pub(crate) fn store_nar(
    store: &Store,
    host: &Path,
    candidates: &BTreeMap<String, StorePath>,
) -> Result<(crate::store::BlobInfo, BTreeSet<StorePath>), StoreNarError> {
    let scanner = RefScanner::new(candidates.keys()).map_err(|e| StoreNarError::Other(e.to_string()))?;
    let (tx, rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (stored, dumped) = std::thread::scope(|s| {
        let err_tx = tx.clone();
        let dumper = s.spawn(move || {
            let w = StoreScan { out: ChunkWriter { tx, buf: Vec::with_capacity(CHUNK) }, scanner };
            match nar_fs::dump_path(host, w) {
                Ok(w) => Ok(w.scanner.finish()),
                Err(e) => {
                    let _ = err_tx.send(Err(io::Error::other(e.to_string())));
                    Err(e)
                }
            }
        });
        let mut reader = ChunkReader { rx, cur: Vec::new(), pos: 0 };
        let stored = store.put_nar(&mut reader);
        drop(reader);
        let dumped = dumper.join().map_err(|_| StoreNarError::Other("the NAR dumping thread panicked".into()));
        (stored, dumped)
    });
    let names = dumped??;
    let blob = stored?;
    Ok((blob, found(candidates, names)))
}

/// Output rules of one output, from the legacy attributes (`allowedReferences`, ... in the env)
/// or the structured attrs' `outputChecks.<output>`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OutputChecks {
    pub(crate) ignore_self_refs: bool,
    pub(crate) max_size: Option<u64>,
    pub(crate) max_closure_size: Option<u64>,
    pub(crate) allowed_references: Option<Vec<String>>,
    pub(crate) allowed_requisites: Option<Vec<String>>,
    pub(crate) disallowed_references: Option<Vec<String>>,
    pub(crate) disallowed_requisites: Option<Vec<String>>,
}

impl OutputChecks {
    /// The checks Nix 2.8 applies to output `output` of `drv`.
    pub(crate) fn of(drv: &Derivation, output: &str) -> Result<OutputChecks, String> {
        if !drv.has_structured_attrs() {
            return Ok(OutputChecks {
                ignore_self_refs: true,
                allowed_references: string_list_attr(drv, "allowedReferences"),
                allowed_requisites: string_list_attr(drv, "allowedRequisites"),
                disallowed_references: string_list_attr(drv, "disallowedReferences"),
                disallowed_requisites: string_list_attr(drv, "disallowedRequisites"),
                ..OutputChecks::default()
            });
        }
        let Some(json) = structured_json(drv) else { return Ok(OutputChecks::default()) };
        let Some(o) = json.get("outputChecks").and_then(|c| c.get(output)) else {
            return Ok(OutputChecks::default());
        };
        let list = |name: &str| -> Result<Option<Vec<String>>, String> {
            match o.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                    .map(Some)
                    .ok_or_else(|| format!("attribute '{name}' of outputChecks.{output} must be a list of strings")),
            }
        };
        let num = |name: &str| -> Result<Option<u64>, String> {
            match o.get(name) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| format!("outputChecks.{output}.{name} must be a number")),
            }
        };
        Ok(OutputChecks {
            ignore_self_refs: o.get("ignoreSelfRefs").and_then(|v| v.as_bool()).unwrap_or(false),
            max_size: num("maxSize")?,
            max_closure_size: num("maxClosureSize")?,
            allowed_references: list("allowedReferences")?,
            allowed_requisites: list("allowedRequisites")?,
            disallowed_references: list("disallowedReferences")?,
            disallowed_requisites: list("disallowedRequisites")?,
        })
    }
}

/// Apply every output's [`OutputChecks`] (Nix `checkOutputs`).
fn check_output_rules(
    drv: &Derivation,
    store_dir: &StoreDir,
    outputs: &BTreeMap<String, StorePath>,
    built: &BTreeMap<String, (PathInfo, BTreeSet<StorePath>)>,
    inputs: &BTreeMap<StorePath, PathInfo>,
) -> Result<(), BuildError> {
    let by_path: BTreeMap<&StorePath, &PathInfo> = built.values().map(|(i, _)| (&i.path, i)).collect();
    let refs_of = |p: &StorePath| -> Option<&BTreeSet<StorePath>> {
        by_path.get(p).map(|i| &i.references).or_else(|| inputs.get(p).map(|i| &i.references))
    };
    let size_of = |p: &StorePath| by_path.get(p).map(|i| i.nar_size).or_else(|| inputs.get(p).map(|i| i.nar_size));
    for (name, (info, _)) in built {
        let checks = OutputChecks::of(drv, name).map_err(|reason| BuildError::OutputRejected {
            output: name.clone(),
            reason,
            log: Vec::new(),
        })?;
        apply_checks(&checks, store_dir, outputs, info, &refs_of, &size_of)
            .map_err(|reason| BuildError::OutputRejected { output: name.clone(), reason, log: Vec::new() })?;
    }
    Ok(())
}

/// One output's checks; the error is Nix's message.
pub(crate) fn apply_checks<'a>(
    checks: &OutputChecks,
    store_dir: &StoreDir,
    outputs: &BTreeMap<String, StorePath>,
    info: &PathInfo,
    refs_of: &dyn Fn(&StorePath) -> Option<&'a BTreeSet<StorePath>>,
    size_of: &dyn Fn(&StorePath) -> Option<u64>,
) -> Result<(), String> {
    let shown = store_dir.display(&info.path);
    if let Some(max) = checks.max_size
        && info.nar_size > max
    {
        return Err(format!("path '{shown}' is too large at {} bytes; limit is {max} bytes", info.nar_size));
    }
    let closure = closure_within(&info.path, refs_of);
    if let Some(max) = checks.max_closure_size {
        let total: u64 = closure.iter().filter_map(size_of).sum();
        if total > max {
            return Err(format!("closure of path '{shown}' is too large at {total} bytes; limit is {max} bytes"));
        }
    }
    let check = |spec: &Option<Vec<String>>, allowed: bool, recursive: bool| -> Result<(), String> {
        let Some(spec) = spec else { return Ok(()) };
        let mut set = BTreeSet::new();
        for s in spec {
            if let Ok(p) = store_dir.parse_path(s) {
                set.insert(p);
            } else if let Some(p) = outputs.get(s) {
                set.insert(p.clone());
            } else {
                return Err(format!("derivation contains an illegal reference specifier '{s}'"));
            }
        }
        let mut used: BTreeSet<StorePath> = if recursive { closure.clone() } else { info.references.clone() };
        if recursive && checks.ignore_self_refs {
            used.remove(&info.path);
        }
        let bad: Vec<String> = used
            .iter()
            .filter(|p| set.contains(*p) != allowed)
            .map(|p| format!("\n  {}", store_dir.display(p)))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("output '{shown}' is not allowed to refer to the following paths:{}", bad.concat()))
        }
    };
    check(&checks.allowed_references, true, false)?;
    check(&checks.allowed_requisites, true, true)?;
    check(&checks.disallowed_references, false, false)?;
    check(&checks.disallowed_requisites, false, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use buildmesh_protocol::id::ArtifactHash;

    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s).unwrap()
    }

    fn drv_with_env(env: &[(&str, &str)]) -> Derivation {
        Derivation {
            env: env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            ..Derivation::default()
        }
    }

    #[test]
    fn hashes_flat_and_recursive_with_every_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "hello\n").unwrap();
        let none = BTreeMap::new();
        let (h, refs) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Md5, &none).unwrap();
        assert_eq!(h.to_hex(), "b1946ac92492d2347c6235b4d2611184");
        assert!(refs.is_empty());
        let (h, _) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha1, &none).unwrap();
        assert_eq!(h.to_hex(), "f572d396fae9206628714fb2ce00f72e94f2258f");
        let (h, _) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha256, &none).unwrap();
        assert_eq!(h.to_hex(), "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
        let (h, _) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha512, &none).unwrap();
        assert!(h.to_hex().starts_with("e7c22b994c59d9cf2b48e549b1e24666"));
        // Recursive sha256 is the NarHash.
        let (h, _) = fixed_output_hash("out", &f, CaMethod::Nar, HashAlgo::Sha256, &none).unwrap();
        assert_eq!(h, nar_fs::nar_hash_path(&f).unwrap().0);
        // Flat requires a non-executable regular file.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha256, &none),
            Err(BuildError::OutputRejected { .. })
        ));
        assert!(matches!(
            fixed_output_hash("out", dir.path(), CaMethod::Flat, HashAlgo::Sha256, &none),
            Err(BuildError::OutputRejected { .. })
        ));
        // A fixed output that mentions a candidate is rejected, a wrong hash is a mismatch.
        let dep = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-dep");
        std::fs::write(&f, format!("/nix/store/{dep}")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cands = BTreeMap::from([(dep.to_string(), dep.clone())]);
        let (h, refs) = fixed_output_hash("out", &f, CaMethod::Flat, HashAlgo::Sha256, &cands).unwrap();
        assert_eq!(refs, [dep.clone()].into());
        assert!(matches!(
            check_fixed_output("out", &f, CaMethod::Flat, &h, &cands),
            Err(BuildError::OutputRejected { .. })
        ));
        let wrong = NixHash::sha256([0; 32]);
        match check_fixed_output("out", &f, CaMethod::Flat, &wrong, &BTreeMap::new()) {
            Err(BuildError::HashMismatch { expected, actual, .. }) => assert_eq!((expected, actual), (wrong, h)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn store_nar_streams_and_scans() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path().join("d")).unwrap();
        let out = data.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let dep = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-dep");
        let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(out.join("big"), &big).unwrap();
        std::fs::write(out.join("ref"), format!("x/nix/store/{dep}/bin")).unwrap();
        let cands = BTreeMap::from([(dep.to_string(), dep.clone())]);
        let (blob, refs) = store_nar(&store, &out, &cands).unwrap();
        assert_eq!(refs, [dep].into());
        let digest = nar_fs::hash_path(&out).unwrap();
        assert_eq!(
            (blob.nar_hash, blob.nar_size, blob.blake3.as_bytes()),
            (digest.nar_hash, digest.nar_size, &digest.blake3)
        );
        // A dump that fails (a FIFO cannot be archived) stores nothing.
        nix::unistd::mkfifo(&out.join("zz-fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let before = store.list_blobs(None, 0).unwrap().len();
        assert!(store_nar(&store, &out, &cands).is_err());
        assert_eq!(store.list_blobs(None, 0).unwrap().len(), before);
    }

    #[test]
    fn string_list_attrs_legacy_and_structured() {
        let d = drv_with_env(&[("impureEnvVars", " http_proxy  ftp_proxy\n")]);
        assert_eq!(string_list_attr(&d, "impureEnvVars").unwrap(), ["http_proxy", "ftp_proxy"]);
        assert_eq!(string_list_attr(&d, "missing"), None);
        let d = drv_with_env(&[("__json", r#"{"impureEnvVars":["A","B"],"name":"x"}"#)]);
        assert_eq!(string_list_attr(&d, "impureEnvVars").unwrap(), ["A", "B"]);
    }

    #[test]
    fn output_checks_follow_nix() {
        let sd = StoreDir::nix();
        let out = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-out");
        let dev = sp("bnr93czmznql3rh3ijb3s0wvk9x6wyay-out-dev");
        let a = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-a");
        let b = sp("4gmpz06140ywpvqhdwlcb7p2lc5r0ny4-b");
        let outputs = BTreeMap::from([("out".to_string(), out.clone()), ("dev".to_string(), dev.clone())]);
        let info = PathInfo {
            path: out.clone(),
            nar_hash: NixHash::sha256([0; 32]),
            nar_size: 100,
            references: [out.clone(), a.clone()].into(),
            deriver: None,
            ca: None,
            blob: ArtifactHash::from_bytes([0; 32]),
            registered_at: 0,
        };
        let a_refs: BTreeSet<StorePath> = [b.clone()].into();
        let empty = BTreeSet::new();
        let refs_of = |p: &StorePath| -> Option<&BTreeSet<StorePath>> {
            if *p == out {
                Some(&info.references)
            } else if *p == a {
                Some(&a_refs)
            } else if *p == b {
                Some(&empty)
            } else {
                None
            }
        };
        let size_of = |_: &StorePath| Some(100u64);
        let run = |env: &[(&str, &str)]| {
            let d = drv_with_env(env);
            apply_checks(&OutputChecks::of(&d, "out").unwrap(), &sd, &outputs, &info, &refs_of, &size_of)
        };
        let a_s = sd.display(&a);
        let b_s = sd.display(&b);
        assert_eq!(run(&[]), Ok(()));
        assert_eq!(run(&[("allowedReferences", &format!("out {a_s}"))]), Ok(()));
        let e = run(&[("allowedReferences", &a_s)]).unwrap_err();
        assert!(e.contains("is not allowed to refer to the following paths:\n  /nix/store/an8vyn8v"), "{e}");
        // Requisites ignore the self-reference in legacy mode, and include b through a.
        let e = run(&[("allowedRequisites", &a_s)]).unwrap_err();
        assert!(e.contains(&b_s) && !e.contains("-out\n"), "{e}");
        assert_eq!(run(&[("allowedRequisites", &format!("{a_s} {b_s}"))]), Ok(()));
        assert!(run(&[("disallowedReferences", &b_s)]).is_ok());
        assert!(run(&[("disallowedRequisites", &b_s)]).is_err());
        assert!(run(&[("disallowedReferences", "nonsense")]).unwrap_err().contains("illegal reference specifier"));
        // Structured attrs: outputChecks per output, with sizes.
        let json = r#"{"outputChecks":{"out":{"maxSize":99}},"name":"x"}"#;
        assert!(run(&[("__json", json)]).unwrap_err().contains("too large at 100 bytes; limit is 99"));
        let json = r#"{"outputChecks":{"out":{"maxClosureSize":299}},"name":"x"}"#;
        assert!(run(&[("__json", json)]).unwrap_err().contains("closure of path"));
        let json = r#"{"outputChecks":{"dev":{"allowedReferences":[]}},"name":"x"}"#;
        assert_eq!(run(&[("__json", json)]), Ok(()));
    }

    #[test]
    fn validity_registration_format() {
        let sd = StoreDir::nix();
        let a = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-a");
        let b = sp("4gmpz06140ywpvqhdwlcb7p2lc5r0ny4-b");
        let refs: BTreeMap<StorePath, BTreeSet<StorePath>> =
            [(a.clone(), [b.clone(), a.clone()].into()), (b.clone(), BTreeSet::new())].into();
        let closure = closure_within(&a, |p| refs.get(p));
        assert_eq!(closure, [a.clone(), b.clone()].into());
        let text = validity_registration(&sd, &closure, |p| refs.get(p));
        assert_eq!(
            text,
            format!("/nix/store/{b}\n\n0\n/nix/store/{a}\n\n2\n/nix/store/{b}\n/nix/store/{a}\n", a = a, b = b)
        );
    }

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
