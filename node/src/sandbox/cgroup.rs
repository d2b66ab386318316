//! Per-build resource limits through control groups: memory, process count and CPU.
//!
//! Each sandboxed build gets its own cgroup, made by the runner before the helper starts; the
//! helper joins it as its first step (`__sandbox-exec --cgroup DIR`, writing `0` to
//! `DIR/cgroup.procs` while it is still the only process of the build), so the builder and every
//! process it forks are in it and cannot leave (they have no capabilities and do not own it).
//! After the run, the runner reads the cgroup's event counters to tell a limit from an ordinary
//! failure, kills what is left and removes it.
//!
//! ## cgroup v2 (the unified hierarchy), preferred
//! The node's own cgroup (`0::/PATH` in `/proc/self/cgroup`) must offer `memory` and `pids` in
//! its `cgroup.controllers` (systemd: `Delegate=yes`). Because of v2's "no internal processes"
//! rule, the node first moves the processes of its cgroup into a leaf `PATH/buildmesh-node`,
//! then enables the controllers in `PATH/cgroup.subtree_control` and in
//! `PATH/buildmesh-builds/cgroup.subtree_control`; builds are `PATH/buildmesh-builds/<build>`
//! with `memory.max` (and `memory.swap.max = 0`), `pids.max`, `cpu.max`. A limit hit is
//! `oom_kill` in `memory.events` or `max` in `pids.events`.
//!
//! ## cgroup v1 (hybrid hosts)
//! Where `memory` and `pids` are bound to v1 hierarchies (so v2 cannot have them), the same is
//! done with one directory per controller, under the node's own cgroup of that controller:
//! `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`), `pids.max`,
//! `cpu.cfs_quota_us`; hits are `oom_kill` in `memory.oom_control` and `max` in `pids.events`.
//!
//! These files are the kernel's interface; nothing here re-implements a controller.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The limits of one build (`build_memory_max`, `build_pids_max`, `build_cpu_max` in the node
/// config). `0` means no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BuildLimits {
    /// Most bytes of memory (RAM, and no swap) the build's processes may use together.
    pub memory_max: u64,
    /// Most processes (and threads) the build may have at once.
    pub pids_max: u64,
    /// Most CPU the build may use, in cores (`1.5`: one and a half cores).
    pub cpu_max: f64,
    /// Most bytes the build's directory and outputs may take on disk together (checked every
    /// [`DIR_POLL`] by the runner, not by a cgroup).
    pub dir_max: u64,
}

/// How often the runner measures a build's directory when `dir_max` is set.
pub const DIR_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes of the regular files under `root` (hard links counted once per link; symlinks not
/// followed). Errors (a file removed meanwhile) count as nothing.
pub fn tree_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(md) = e.path().symlink_metadata() else { continue };
            if md.is_dir() {
                todo.push(e.path());
            } else {
                total += std::os::unix::fs::MetadataExt::blocks(&md) * 512;
            }
        }
    }
    total
}

impl BuildLimits {
    /// Whether any cgroup limit (memory, processes, CPU) is set.
    pub fn any(&self) -> bool {
        self.memory_max > 0 || self.pids_max > 0 || self.cpu_max > 0.0
    }
}

/// A limit a build ran into (the reason of its signed failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// The kernel killed a process of the build for memory.
    Memory {
        /// The limit, in bytes.
        limit: u64,
    },
    /// A fork failed at the process limit.
    Pids {
        /// The limit.
        limit: u64,
    },
    /// The build's directory and outputs grew past the limit.
    Disk {
        /// The limit, in bytes.
        limit: u64,
    },
}

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitHit::Memory { limit } => write!(f, "out of memory (limit {limit} bytes)"),
            LimitHit::Pids { limit } => write!(f, "too many processes (limit {limit})"),
            LimitHit::Disk { limit } => write!(f, "build directory too large (limit {limit} bytes)"),
        }
    }
}

/// Why the node's build cgroups could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {}: {what}: {source}", path.display())]
pub struct CgroupError {
    /// What was being done.
    pub what: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError { what, path: path.to_path_buf(), source }
}

/// Which interface the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// The unified hierarchy: the directory the per-build cgroups are made in.
    V2 { builds: PathBuf, cpu: bool },
    /// v1: the directory per controller the per-build cgroups are made in.
    V1 { memory: Option<PathBuf>, pids: Option<PathBuf>, cpu: Option<PathBuf> },
}

/// The node's build cgroups: where per-build cgroups are made, with which limits.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    limits: BuildLimits,
}

/// One build's cgroup (one directory per hierarchy).
#[derive(Debug)]
pub struct BuildCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
    limits: BuildLimits,
}

/// The cgroup mounts of this process: (mount point, fstype, super options).
fn mounts() -> Vec<(PathBuf, String, String)> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let options = r.next().unwrap_or("");
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| (PathBuf::from(mount_point.replace("\\040", " ")), fstype.to_string(), options.to_string()))
        })
        .collect()
}

/// This process's cgroup path in the hierarchy whose controller list is `controllers` (`""`:
/// the unified one).
fn own_path(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() { list.is_empty() } else { list.split(',').any(|c| c == controller) };
        hit.then(|| path.to_string())
    })
}

fn join(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(err("writing", path))
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(err("creating", path)(e)),
        _ => Ok(()),
    }
}

/// The value of `key` in a flat keyed file (`memory.events`, `pids.events`, `memory.oom_control`).
fn keyed(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

impl Cgroups {
    /// Set up the node's build cgroups for `limits` (`node`: a name unique to this node on the
    /// machine, e.g. `buildmesh-<pid>`). `Ok(None)` when no limit is set. An error says why
    /// neither v2 nor v1 can be used (the node then refuses to start with limits set).
    pub fn setup(limits: BuildLimits, node: &str) -> Result<Option<Cgroups>, CgroupError> {
        if !limits.any() {
            return Ok(None);
        }
        let mounts = mounts();
        if let Some(layout) = v2_layout(&mounts, node)? {
            return Ok(Some(Cgroups { layout, limits }));
        }
        let v1 = |controller: &str| -> Result<Option<PathBuf>, CgroupError> {
            let Some((mount, _, _)) =
                mounts.iter().find(|(_, fstype, opts)| fstype == "cgroup" && opts.split(',').any(|o| o == controller))
            else {
                return Ok(None);
            };
            let Some(own) = own_path(controller) else { return Ok(None) };
            let parent = join(mount, &own);
            sweep_stale(&parent);
            let dir = parent.join(node);
            mkdir(&dir)?;
            Ok(Some(dir))
        };
        let memory = if limits.memory_max > 0 { v1("memory")? } else { None };
        let pids = if limits.pids_max > 0 { v1("pids")? } else { None };
        let cpu = if limits.cpu_max > 0.0 { v1("cpu")? } else { None };
        let missing = (limits.memory_max > 0 && memory.is_none()) || (limits.pids_max > 0 && pids.is_none());
        if missing {
            return Err(CgroupError {
                what: "no cgroup v2 with memory and pids controllers delegated to the node, and no v1 memory/pids hierarchy",
                path: PathBuf::from("/sys/fs/cgroup"),
                source: io::Error::from(io::ErrorKind::Unsupported),
            });
        }
        Ok(Some(Cgroups { layout: Layout::V1 { memory, pids, cpu }, limits }))
    }

    /// `v2` or `v1`.
    pub fn version(&self) -> &'static str {
        match self.layout {
            Layout::V2 { .. } => "v2",
            Layout::V1 { .. } => "v1",
        }
    }

    /// The limits.
    pub fn limits(&self) -> BuildLimits {
        self.limits
    }

    /// Make the cgroup of one build (`name`: unique among running builds) with the limits.
    pub fn create(&self, name: &str) -> Result<BuildCgroup, CgroupError> {
        let l = &self.limits;
        match &self.layout {
            Layout::V2 { builds, cpu } => {
                let dir = builds.join(name);
                let cg = BuildCgroup { dirs: vec![dir.clone()], v2: true, limits: *l };
                mkdir(&dir)?;
                if l.memory_max > 0 {
                    write(&dir.join("memory.max"), &l.memory_max.to_string())?;
                    if dir.join("memory.swap.max").exists() {
                        write(&dir.join("memory.swap.max"), "0")?;
                    }
                }
                if l.pids_max > 0 {
                    write(&dir.join("pids.max"), &l.pids_max.to_string())?;
                }
                if l.cpu_max > 0.0 && *cpu {
                    let period = 100_000u64;
                    let quota = ((l.cpu_max * period as f64) as u64).max(1000);
                    write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                }
                Ok(cg)
            }
            Layout::V1 { memory, pids, cpu } => {
                let mut cg = BuildCgroup { dirs: Vec::new(), v2: false, limits: *l };
                if let Some(m) = memory {
                    let dir = m.join(name);
                    mkdir(&dir)?;
                    cg.dirs.push(dir.clone());
                    write(&dir.join("memory.limit_in_bytes"), &l.memory_max.to_string())?;
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        // Best effort: fails when swap accounting is off.
                        let _ = fs::write(&memsw, l.memory_max.to_string());
                    }
                }
                if let Some(p) = pids {
                    let dir = p.join(name);
                    mkdir(&dir)?;
                    cg.dirs.push(dir.clone());
                    write(&dir.join("pids.max"), &l.pids_max.to_string())?;
                }
                if let Some(c) = cpu {
                    let dir = c.join(name);
                    mkdir(&dir)?;
                    cg.dirs.push(dir.clone());
                    let period = 100_000u64;
                    let quota = ((l.cpu_max * period as f64) as u64).max(1000);
                    write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                Ok(cg)
            }
        }
    }
}

/// The v2 layout, when the node's cgroup offers `memory` and `pids` (delegating as the module
/// docs say); `None` when v2 cannot be used.
fn v2_layout(mounts: &[(PathBuf, String, String)], node: &str) -> Result<Option<Layout>, CgroupError> {
    let Some((mount, _, _)) = mounts.iter().find(|(_, fstype, _)| fstype == "cgroup2") else { return Ok(None) };
    let Some(own) = own_path("") else { return Ok(None) };
    let own_dir = join(mount, &own);
    let controllers = fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !(has("memory") && has("pids")) {
        return Ok(None);
    }
    let cpu = has("cpu");
    let enable = if cpu { "+memory +pids +cpu" } else { "+memory +pids" };
    let is_root = own == "/";
    if !is_root {
        // No internal processes: the node moves to a leaf. Only the node: when other processes
        // share its cgroup (no `Delegate=yes` unit of its own), enabling the controllers fails
        // with EBUSY and the node says so rather than moving processes it does not own.
        let leaf = own_dir.join(format!("{node}-node"));
        mkdir(&leaf)?;
        write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        write(&own_dir.join("cgroup.subtree_control"), enable)?;
    }
    sweep_stale(&own_dir);
    let builds = own_dir.join(format!("{node}-builds"));
    mkdir(&builds)?;
    write(&builds.join("cgroup.subtree_control"), enable)?;
    Ok(Some(Layout::V2 { builds, cpu }))
}

/// Remove the cgroups of nodes that are gone: `buildmesh-<pid>[-node|-builds]` directories under
/// `parent` whose process does not exist, with their (empty) build cgroups.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("buildmesh-")) else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || Path::new("/proc").join(pid).exists() {
            continue;
        }
        if let Ok(children) = fs::read_dir(e.path()) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = fs::remove_dir(c.path());
            }
        }
        let _ = fs::remove_dir(e.path());
    }
}

impl BuildCgroup {
    /// The directories the sandbox helper joins (`__sandbox-exec --cgroup DIR`).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The limit the build ran into, if it did.
    pub fn hit(&self) -> Option<LimitHit> {
        for dir in &self.dirs {
            if self.v2 {
                if self.limits.memory_max > 0 && keyed(&dir.join("memory.events"), "oom_kill") > 0 {
                    return Some(LimitHit::Memory { limit: self.limits.memory_max });
                }
            } else if dir.join("memory.oom_control").exists() && keyed(&dir.join("memory.oom_control"), "oom_kill") > 0
            {
                return Some(LimitHit::Memory { limit: self.limits.memory_max });
            }
        }
        for dir in &self.dirs {
            if self.limits.pids_max > 0 && keyed(&dir.join("pids.events"), "max") > 0 {
                return Some(LimitHit::Pids { limit: self.limits.pids_max });
            }
        }
        None
    }

    /// Kill whatever is left in the cgroup and remove it (retrying while processes die).
    pub fn remove(self) {
        for dir in &self.dirs {
            if self.v2 && dir.join("cgroup.kill").exists() {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
            }
            for _ in 0..100 {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if dir.exists() {
                tracing::warn!(cgroup = %dir.display(), "build cgroup not removed (processes left?)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_hits_read_as_the_signed_reasons_say() {
        assert_eq!(LimitHit::Memory { limit: 64 << 20 }.to_string(), "out of memory (limit 67108864 bytes)");
        assert_eq!(LimitHit::Pids { limit: 32 }.to_string(), "too many processes (limit 32)");
    }

    #[test]
    fn keyed_files_parse() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(keyed(&f, "oom_kill"), 1);
        assert_eq!(keyed(&f, "max"), 3);
        assert_eq!(keyed(&f, "absent"), 0);
    }
}
