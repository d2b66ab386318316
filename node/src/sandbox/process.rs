//! The parent side of the sandbox: start the helper, collect a capped log, enforce the timeout and
//! cancellation, report how the builder ended.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::build_users::{BuildUser, BuildUserError, BuildUsers, chown_tree};
use super::cgroup::{BuildCgroup, Cgroups, LimitHit};
use super::exec::READY_MARKER;
use super::slirp::find_program;
use super::spec::{SandboxSpec, SpecError};

/// How long after SIGTERM the whole sandbox gets SIGKILL.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// How often a running build's cgroup is checked for a process-limit hit.
const LIMIT_POLL: Duration = Duration::from_millis(250);
/// How long the log pipe may stay open after the helper exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Kept output of the helper before the builder starts (setup error messages).
const SETUP_LOG_CAP: usize = 64 * 1024;

/// Why a sandboxed run could not produce a [`BuildOutcome`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The spec is invalid (nothing was started).
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// A host directory the spec names is missing or not a directory.
    #[error("{what} {}: not an existing directory", path.display())]
    NotADirectory {
        /// Which spec field.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// An input path does not exist on the host.
    #[error("input {}: {source}", path.display())]
    MissingInput {
        /// The host path of the input.
        path: PathBuf,
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// A host file operation of the runner failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The helper binary could not be started.
    #[error("starting sandbox helper {}: {source}", helper.display())]
    Spawn {
        /// The helper binary.
        helper: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No unprivileged build user is free (or its lock failed); the builder never ran.
    #[error(transparent)]
    BuildUser(#[from] BuildUserError),
    /// A fixed-output build needs network and the runner has no `slirp4netns` to give it.
    #[error(
        "this fixed-output build needs network, but slirp4netns is not available (install the slirp4netns \
         package, or set `sandbox.fixed_output_network = \"none\"` to build fixed-output derivations offline)"
    )]
    NoNetwork,
    /// The sandbox could not be set up; the builder never ran.
    #[error("sandbox setup failed ({status}): {message}")]
    SetupFailed {
        /// How the helper ended.
        status: String,
        /// What the helper printed.
        message: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExecutorError {
    let what = what.into();
    move |source| ExecutorError::Io { what, source }
}

/// How the builder run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Termination {
    /// The builder exited with this status (0 = success).
    Exited(i32),
    /// The builder was killed by this signal (not by the runner).
    Signaled(i32),
    /// The spec's timeout passed and the sandbox was killed.
    TimedOut,
    /// The cancellation future completed and the sandbox was killed.
    Cancelled,
    /// The build ran into a resource limit of its cgroup ([`super::cgroup`]): the kernel killed
    /// a process for memory, or a fork failed at the process limit (then the runner killed the
    /// build, which would otherwise keep retrying until its timeout).
    Limit(LimitHit),
}

/// The result of one sandboxed builder run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildOutcome {
    /// How it ended.
    pub termination: Termination,
    /// Wall-clock time from start to the end of the log.
    pub duration: Duration,
    /// stdout and stderr, interleaved as written, capped (see [`BuildOutcome::log_truncated`]).
    pub log: Vec<u8>,
    /// Bytes the builder wrote in total.
    pub log_bytes: u64,
    /// Whether the middle of the log was dropped (a marker line says how much).
    pub log_truncated: bool,
}

impl BuildOutcome {
    /// Whether the builder exited with status 0.
    pub fn success(&self) -> bool {
        self.termination == Termination::Exited(0)
    }
}

/// Runs [`SandboxSpec`]s through the `buildmesh __sandbox-exec` helper (needs root on Linux).
///
/// Every run takes its own unprivileged host uid from [`BuildUsers`] (the default range unless
/// [`SandboxRunner::with_build_users`] says otherwise); a spec with `network` gets outbound
/// network through `slirp4netns` (found in the usual binary directories unless
/// [`SandboxRunner::with_slirp4netns`] says otherwise), never the host's network namespace.
#[derive(Debug, Clone)]
pub struct SandboxRunner {
    helper: PathBuf,
    kill_grace: Duration,
    users: BuildUsers,
    slirp4netns: Option<PathBuf>,
    cgroups: Option<Cgroups>,
    /// Most bytes a build's directory and outputs may take (0: no limit).
    dir_max: u64,
}

impl SandboxRunner {
    /// A runner that starts `helper` (a `buildmesh` binary) as the sandbox helper.
    pub fn new(helper: impl Into<PathBuf>) -> SandboxRunner {
        SandboxRunner {
            helper: helper.into(),
            kill_grace: DEFAULT_KILL_GRACE,
            users: BuildUsers::default(),
            slirp4netns: find_program(std::path::Path::new("slirp4netns")),
            cgroups: None,
            dir_max: 0,
        }
    }

    /// Kill a build whose directory and outputs take more than `bytes` on disk (0: no limit).
    pub fn with_dir_limit(mut self, bytes: u64) -> SandboxRunner {
        self.dir_max = bytes;
        self
    }

    /// Run every build in its own cgroup of `cgroups` (memory, process and CPU limits).
    pub fn with_cgroups(mut self, cgroups: Option<Cgroups>) -> SandboxRunner {
        self.cgroups = cgroups;
        self
    }

    /// Take build users from `users` instead of the default range.
    pub fn with_build_users(mut self, users: BuildUsers) -> SandboxRunner {
        self.users = users;
        self
    }

    /// Use this `slirp4netns` binary for specs with `network` (`None`: such specs fail with
    /// [`ExecutorError::NoNetwork`]).
    pub fn with_slirp4netns(mut self, program: Option<PathBuf>) -> SandboxRunner {
        self.slirp4netns = program;
        self
    }

    /// The build users this runner takes uids from.
    pub fn build_users(&self) -> &BuildUsers {
        &self.users
    }

    /// A runner using the running executable, which must be the `buildmesh` binary.
    pub fn current_exe() -> Result<SandboxRunner, ExecutorError> {
        let exe = std::env::current_exe().map_err(io_err("finding the current executable"))?;
        Ok(SandboxRunner::new(exe))
    }

    /// Set the delay between SIGTERM and SIGKILL on timeout or cancellation.
    pub fn with_kill_grace(mut self, grace: Duration) -> SandboxRunner {
        self.kill_grace = grace;
        self
    }

    /// Run the builder of `spec` in a fresh sandbox until it exits, the timeout passes or
    /// `cancel` completes. Input mount points the runner creates in `spec.store_host` are removed
    /// afterwards; outputs the builder wrote there stay.
    #[tracing::instrument(name = "sandbox", skip_all, fields(builder = %spec.builder.display()))]
    pub async fn run(
        &self,
        spec: &SandboxSpec,
        cancel: impl Future<Output = ()>,
    ) -> Result<BuildOutcome, ExecutorError> {
        spec.validate()?;
        for (what, p) in [("store_host", &spec.store_host), ("build_dir_host", &spec.build_dir_host)] {
            if !p.is_dir() {
                return Err(ExecutorError::NotADirectory { what, path: p.clone() });
            }
        }
        if spec.network && self.slirp4netns.is_none() {
            return Err(ExecutorError::NoNetwork);
        }
        let _stubs = InputStubs::create(spec)?;
        let mut lease = Lease::take(&self.users, spec)?;
        let work = tempfile::Builder::new()
            .prefix("buildmesh-sandbox-")
            .tempdir()
            .map_err(io_err("creating the sandbox work dir"))?;
        let spec_path = work.path().join("spec.json");
        let json = serde_json::to_vec(spec)
            .map_err(|e| ExecutorError::Io { what: "encoding the spec".into(), source: std::io::Error::other(e) })?;
        std::fs::write(&spec_path, json).map_err(io_err(format!("writing {}", spec_path.display())))?;
        let root = work.path().join("root");
        std::fs::create_dir(&root).map_err(io_err(format!("creating {}", root.display())))?;

        let (reader, writer) = std::io::pipe().map_err(io_err("creating the log pipe"))?;
        let writer2 = writer.try_clone().map_err(io_err("duplicating the log pipe"))?;
        let mut cmd = tokio::process::Command::new(&self.helper);
        cmd.arg("__sandbox-exec")
            .arg("--spec")
            .arg(&spec_path)
            .arg("--root")
            .arg(&root)
            .arg("--host-uid")
            .arg(lease.user.uid().to_string())
            .arg("--host-gid")
            .arg(lease.user.gid().to_string());
        if spec.network
            && let Some(slirp) = &self.slirp4netns
        {
            cmd.arg("--slirp4netns").arg(slirp);
        }
        let cgroup: Option<BuildCgroup> = match &self.cgroups {
            Some(c) => Some(
                c.create(&format!("build-{}", lease.user.uid()))
                    .map_err(|e| ExecutorError::Io { what: e.to_string(), source: std::io::Error::other("cgroup") })?,
            ),
            None => None,
        };
        for dir in cgroup.iter().flat_map(|c| c.dirs()) {
            cmd.arg("--cgroup").arg(dir);
        }
        cmd.env_clear().stdin(Stdio::null()).stdout(writer).stderr(writer2).process_group(0).kill_on_drop(true);
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|source| ExecutorError::Spawn { helper: self.helper.clone(), source })?;
        drop(cmd); // closes our copies of the pipe's write end
        let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        tracing::debug!(pid = ?pgid, "sandbox helper started");
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
            .map_err(io_err("registering the log pipe"))?;

        let signal_group = |sig: Signal| {
            if let Some(pg) = pgid {
                // ESRCH: everything is gone already.
                let _ = killpg(pg, sig);
            }
        };
        let mut log = LogCollector::new(spec.max_log_bytes);
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = spec.timeout.map(|t| start + t);
        let mut cancel = std::pin::pin!(cancel);
        let mut killed: Option<Termination> = None;
        let mut status: Option<ExitStatus> = None;
        let mut eof = false;
        let mut kill_at: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;
        let mut limit_tick = tokio::time::interval(LIMIT_POLL);
        let mut dir_tick = tokio::time::interval(super::cgroup::DIR_POLL);
        let dir_max = self.dir_max;
        while !(eof && status.is_some()) {
            tokio::select! {
                biased;
                r = rx.read(&mut buf), if !eof => match r {
                    Ok(0) => eof = true,
                    Ok(n) => log.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ExecutorError::Io { what: "reading the build log".into(), source: e }),
                },
                s = child.wait(), if status.is_none() => {
                    status = Some(s.map_err(io_err("waiting for the sandbox helper"))?);
                    drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
                }
                _ = sleep_until(kill_at), if kill_at.is_some() => {
                    tracing::debug!("grace period over: SIGKILL");
                    signal_group(Signal::SIGKILL);
                    kill_at = None;
                }
                _ = sleep_until(deadline), if killed.is_none() && status.is_none() && deadline.is_some() => {
                    tracing::info!(timeout = ?spec.timeout, "build timed out");
                    killed = Some(Termination::TimedOut);
                    signal_group(Signal::SIGTERM);
                    kill_at = Some(Instant::now() + self.kill_grace);
                }
                _ = &mut cancel, if killed.is_none() && status.is_none() => {
                    tracing::info!("build cancelled");
                    killed = Some(Termination::Cancelled);
                    signal_group(Signal::SIGTERM);
                    kill_at = Some(Instant::now() + self.kill_grace);
                }
                _ = limit_tick.tick(), if cgroup.is_some() && killed.is_none() && status.is_none() => {
                    if let Some(hit @ LimitHit::Pids { .. }) = cgroup.as_ref().and_then(BuildCgroup::hit) {
                        tracing::info!(%hit, "build hit its process limit: killing it");
                        killed = Some(Termination::Limit(hit));
                        signal_group(Signal::SIGKILL);
                    }
                }
                _ = dir_tick.tick(), if dir_max > 0 && killed.is_none() && status.is_none() => {
                    let dirs = [spec.build_dir_host.clone(), spec.store_host.clone()];
                    let used = tokio::task::spawn_blocking(move || dirs.iter().map(|d| super::cgroup::tree_bytes(d)).sum::<u64>())
                        .await
                        .unwrap_or(0);
                    if used > dir_max {
                        let hit = LimitHit::Disk { limit: dir_max };
                        tracing::info!(%hit, used, "build directory over its limit: killing the build");
                        killed = Some(Termination::Limit(hit));
                        signal_group(Signal::SIGKILL);
                    }
                }
                _ = sleep_until(drain_until), if drain_until.is_some() => {
                    tracing::warn!("log pipe still open after the helper exited; giving up on it");
                    signal_group(Signal::SIGKILL);
                    break;
                }
            }
        }
        let duration = start.elapsed();
        let hit = match cgroup {
            Some(cg) => tokio::task::spawn_blocking(move || {
                let hit = cg.hit();
                cg.remove();
                hit
            })
            .await
            .unwrap_or(None),
            None => None,
        };
        lease.give_back().await?;
        let status = status.unwrap_or_else(|| ExitStatus::from_raw(0));
        let ready = log.ready;
        let (log_bytes_total, truncated, log_bytes, setup) = log.finish();
        if !ready {
            if let Some(t) = killed {
                return Ok(BuildOutcome {
                    termination: t,
                    duration,
                    log: Vec::new(),
                    log_bytes: 0,
                    log_truncated: false,
                });
            }
            return Err(ExecutorError::SetupFailed {
                status: describe(status),
                message: String::from_utf8_lossy(&setup).trim().to_string(),
            });
        }
        let termination = killed.unwrap_or_else(|| match (status.code(), status.signal()) {
            (Some(c), _) => Termination::Exited(c),
            (None, Some(s)) => Termination::Signaled(s),
            (None, None) => Termination::Exited(-1),
        });
        // A build that failed after running into a limit failed because of it.
        let termination = match (termination, hit) {
            (Termination::Exited(c), Some(hit)) if c != 0 => Termination::Limit(hit),
            (Termination::Signaled(_), Some(hit)) => Termination::Limit(hit),
            (t, _) => t,
        };
        tracing::debug!(?termination, ?duration, log_bytes = log_bytes_total, "sandbox finished");
        Ok(BuildOutcome { termination, duration, log: log_bytes, log_bytes: log_bytes_total, log_truncated: truncated })
    }
}

/// Run `spec` with [`SandboxRunner::current_exe`] (the running `buildmesh` binary as the helper).
pub async fn run_sandboxed(
    spec: &SandboxSpec,
    cancel: impl Future<Output = ()>,
) -> Result<BuildOutcome, ExecutorError> {
    SandboxRunner::current_exe()?.run(spec, cancel).await
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// The build user of one run and the host dirs it was given: they go back to the node's own
/// uid/gid (recursively, symlinks not followed) before the uid is released, so nothing the
/// builder made stays owned by a uid the next build may get. [`Lease::give_back`] does it off the
/// async runtime; dropping an unreturned lease (an error or a dropped future) does it inline.
struct Lease {
    user: BuildUser,
    dirs: Vec<PathBuf>,
    returned: bool,
}

impl Lease {
    fn take(users: &BuildUsers, spec: &SandboxSpec) -> Result<Lease, ExecutorError> {
        let user = users.acquire()?;
        let mut lease = Lease { user, dirs: Vec::new(), returned: false };
        // The build dir with what the caller wrote in it (attrs files) and the store dir itself
        // (the builder creates its outputs there; the input mount points stay the node's).
        for (dir, recursive) in [(&spec.build_dir_host, true), (&spec.store_host, false)] {
            lease.dirs.push(dir.clone());
            chown_tree(dir, lease.user.uid(), lease.user.gid(), recursive).map_err(io_err(format!(
                "giving {} to build user {}",
                dir.display(),
                lease.user.uid()
            )))?;
        }
        Ok(lease)
    }

    fn restore(dirs: &[PathBuf]) -> Result<(), ExecutorError> {
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        for dir in dirs {
            match chown_tree(dir, uid, gid, true) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ExecutorError::Io {
                        what: format!("taking {} back from the build user", dir.display()),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn give_back(&mut self) -> Result<(), ExecutorError> {
        let dirs = self.dirs.clone();
        self.returned = true;
        tokio::task::spawn_blocking(move || Lease::restore(&dirs)).await.map_err(|e| ExecutorError::Io {
            what: "taking the build dirs back".into(),
            source: std::io::Error::other(e),
        })?
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.returned
            && let Err(e) = Lease::restore(&self.dirs)
        {
            tracing::warn!(error = %e, uid = self.user.uid(), "could not take the build dirs back");
        }
    }
}

/// Mount points the runner created in the per-build store for inputs; removed on drop.
struct InputStubs {
    created: Vec<PathBuf>,
}

impl InputStubs {
    fn create(spec: &SandboxSpec) -> Result<InputStubs, ExecutorError> {
        let mut stubs = InputStubs { created: Vec::new() };
        for input in &spec.inputs {
            let meta = std::fs::symlink_metadata(&input.host)
                .map_err(|source| ExecutorError::MissingInput { path: input.host.clone(), source })?;
            let Some(name) = input.path.file_name() else { continue };
            let stub = spec.store_host.join(name);
            if std::fs::symlink_metadata(&stub).is_ok() {
                continue; // the caller put something there: use it as it is, and leave it
            }
            let what = || format!("creating input mount point {}", stub.display());
            if meta.file_type().is_symlink() {
                let to =
                    std::fs::read_link(&input.host).map_err(io_err(format!("reading {}", input.host.display())))?;
                std::os::unix::fs::symlink(to, &stub).map_err(io_err(what()))?;
            } else if meta.is_dir() {
                std::fs::create_dir(&stub).map_err(io_err(what()))?;
            } else {
                std::fs::File::create(&stub).map_err(io_err(what()))?;
            }
            stubs.created.push(stub);
        }
        Ok(stubs)
    }
}

impl Drop for InputStubs {
    fn drop(&mut self) {
        for p in self.created.iter().rev() {
            let Ok(meta) = std::fs::symlink_metadata(p) else { continue };
            let r = if meta.is_dir() {
                std::fs::remove_dir(p)
            } else if meta.file_type().is_symlink() || meta.len() == 0 {
                std::fs::remove_file(p)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                tracing::warn!(path = %p.display(), error = %e, "could not remove an input mount point");
            }
        }
    }
}

/// Collects the helper's output: setup messages until [`READY_MARKER`], then the builder's log,
/// keeping its first and last `max / 2` bytes.
#[derive(Debug)]
struct LogCollector {
    ready: bool,
    setup: Vec<u8>,
    head: Vec<u8>,
    head_cap: usize,
    tail: Vec<u8>,
    tail_cap: usize,
    total: u64,
}

impl LogCollector {
    fn new(max: u64) -> LogCollector {
        let max = usize::try_from(max).unwrap_or(usize::MAX / 4);
        let head_cap = max / 2;
        LogCollector {
            ready: false,
            setup: Vec::new(),
            head: Vec::new(),
            head_cap,
            tail: Vec::new(),
            tail_cap: max - head_cap,
            total: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.ready {
            return self.push_log(data);
        }
        let from = self.setup.len().saturating_sub(READY_MARKER.len() - 1);
        self.setup.extend_from_slice(data);
        if let Some(i) = find(&self.setup[from..], READY_MARKER) {
            let at = from + i;
            let rest = self.setup.split_off(at + READY_MARKER.len());
            self.setup.truncate(at);
            self.ready = true;
            self.push_log(&rest);
        } else if self.setup.len() > SETUP_LOG_CAP {
            let cut = self.setup.len() - SETUP_LOG_CAP;
            self.setup.drain(..cut);
        }
    }

    fn push_log(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let take = self.head_cap.saturating_sub(self.head.len()).min(data.len());
        self.head.extend_from_slice(&data[..take]);
        data = &data[take..];
        if data.is_empty() || self.tail_cap == 0 {
            return;
        }
        self.tail.extend_from_slice(data);
        if self.tail.len() > self.tail_cap.saturating_mul(2).max(self.tail_cap + 64 * 1024) {
            let cut = self.tail.len() - self.tail_cap;
            self.tail.drain(..cut);
        }
    }

    /// (total bytes, truncated, kept log, setup output)
    fn finish(mut self) -> (u64, bool, Vec<u8>, Vec<u8>) {
        let kept_max = (self.head_cap + self.tail_cap) as u64;
        if self.total <= kept_max {
            self.head.extend_from_slice(&self.tail);
            return (self.total, false, self.head, self.setup);
        }
        let tail = &self.tail[self.tail.len().saturating_sub(self.tail_cap)..];
        let dropped = self.total - (self.head.len() + tail.len()) as u64;
        let mut log = self.head;
        log.extend_from_slice(format!("\n[buildmesh: log truncated: {dropped} bytes omitted]\n").as_bytes());
        log.extend_from_slice(tail);
        (self.total, true, log, self.setup)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(max: u64, chunks: &[&[u8]]) -> LogCollector {
        let mut c = LogCollector::new(max);
        for ch in chunks {
            c.push(ch);
        }
        c
    }

    #[test]
    fn marker_split_across_chunks() {
        let m = READY_MARKER;
        let c = collect(100, &[b"setup msg\n", &m[..3], &m[3..], b"hello ", b"world"]);
        assert!(c.ready);
        let (total, trunc, log, setup) = c.finish();
        assert_eq!((total, trunc), (11, false));
        assert_eq!(log, b"hello world");
        assert_eq!(setup, b"setup msg\n");
    }

    #[test]
    fn no_marker_is_setup_output() {
        let c = collect(100, &[b"buildmesh-sandbox: error: x\n"]);
        assert!(!c.ready);
        let (total, _, log, setup) = c.finish();
        assert_eq!(total, 0);
        assert!(log.is_empty());
        assert_eq!(setup, b"buildmesh-sandbox: error: x\n");
    }

    #[test]
    fn truncation_keeps_head_and_tail() {
        let mut data = Vec::new();
        for i in 0..100_000u32 {
            data.extend_from_slice(format!("{i}\n").as_bytes());
        }
        let mut c = LogCollector::new(1000);
        c.push(READY_MARKER);
        for ch in data.chunks(777) {
            c.push(ch);
        }
        let (total, trunc, log, _) = c.finish();
        assert!(trunc);
        assert_eq!(total, data.len() as u64);
        assert_eq!(&log[..500], &data[..500]);
        assert_eq!(&log[log.len() - 500..], &data[data.len() - 500..]);
        let marker = format!("\n[buildmesh: log truncated: {} bytes omitted]\n", data.len() - 1000);
        assert_eq!(&log[500..log.len() - 500], marker.as_bytes());
    }

    #[test]
    fn exact_cap_is_not_truncated() {
        let mut c = LogCollector::new(10);
        c.push(READY_MARKER);
        c.push(b"0123456789");
        let (_, trunc, log, _) = c.finish();
        assert!(!trunc);
        assert_eq!(log, b"0123456789");
        let mut c = LogCollector::new(0);
        c.push(READY_MARKER);
        c.push(b"x");
        let (total, trunc, log, _) = c.finish();
        assert_eq!(total, 1);
        assert!(trunc);
        assert_eq!(log, b"\n[buildmesh: log truncated: 1 bytes omitted]\n");
    }
}
