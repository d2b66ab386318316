//! The child side of the sandbox: `buildmesh __sandbox-exec`, run as root by [`super::SandboxRunner`].
//!
//! Two stages, both single-threaded processes of this binary, so every namespace call is a safe
//! wrapper (`nix` and `caps` crates) and no `fork` is needed in Rust code:
//!
//! 1. **stage 1** (in the host PID namespace, root) unshares a PID namespace and spawns stage 2
//!    with `std::process::Command`, its stdin a socket pair to talk over. When stage 2 reports
//!    that it has unshared its user namespace, stage 1 writes that namespace's maps (the
//!    builder's uid/gid onto the unprivileged host ids of the build user the runner took, see
//!    [`super::build_users`]; a process cannot map a host uid other than its own, so its parent
//!    must), attaches `slirp4netns` to its network namespace for a fixed-output build when the
//!    runner asks for it ([`super::slirp`]), and then tells stage 2 to go on. It waits for stage
//!    2 and exits with its status (re-raising its signal).
//! 2. **stage 2** is PID 1 of the new PID namespace. It unshares mount, UTS, IPC and network
//!    namespaces (always: a fixed-output build gets its network through slirp4netns, never the
//!    host's), brings `lo` up, builds a fresh root on a tmpfs (see [`super`] docs) with a `/proc`
//!    whose host-wide knobs are read-only or masked ([`super::confine::mask_proc`]),
//!    `pivot_root`s into it, unshares a user namespace, waits for stage 1 to map it, switches to
//!    the builder's uid/gid (1000/100 inside, as in Nix; the build user's on the host), empties
//!    every capability set, sets `no_new_privs` and `exec`s the builder in `/build` with exactly
//!    the spec's environment. All mounts are made before the user namespace exists, so they
//!    belong to the host's user namespace and the builder can neither undo nor add any. Before
//!    `exec` it sets `PR_SET_PDEATHSIG=SIGKILL`: when stage 1 dies (killed by the runner) the
//!    builder, PID 1, dies and the kernel kills every process of the namespace.
//!
//! Why a user namespace and not a plain `setuid` to the build user: the builder sees Nix's
//! constant ids (1000/100) whatever build user it got, so outputs that record ids stay
//! reproducible across slots and nodes, and the mounts made by host root stay locked for it.
//!
//! Errors before `exec` are printed on stderr and the process exits with [`SETUP_FAILED_EXIT`];
//! the runner tells them apart from the builder's output by [`READY_MARKER`], which stage 2 writes
//! right before `exec`.

use std::ffi::OsString;
use std::io::{Read as _, Write};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;

use super::confine;
use super::slirp::{SLIRP_DNS, Slirp};
use super::spec::{SANDBOX_BUILD_DIR, SandboxSpec};

/// Stage 2 to stage 1: the user namespace exists, map it.
const SYNC_UNSHARED: u8 = b'U';
/// Stage 1 to stage 2: mapped (and networked), go on.
const SYNC_GO: u8 = b'G';

/// Written by stage 2 on stderr right before `exec`: everything after it is the builder's log.
pub const READY_MARKER: &[u8] = b"\x02buildmesh-sandbox: exec\n";
/// Exit status of a helper stage whose setup failed.
pub const SETUP_FAILED_EXIT: u8 = 125;
/// Largest spec file the helper reads.
const MAX_SPEC_BYTES: u64 = 256 * 1024 * 1024;

/// Arguments of the hidden `buildmesh __sandbox-exec` subcommand (internal: only the runner calls it).
#[derive(Debug, clap::Args)]
pub struct SandboxExecArgs {
    /// The JSON spec file written by the runner.
    #[arg(long)]
    pub spec: PathBuf,
    /// An empty host directory where the sandbox's root tmpfs is mounted.
    #[arg(long)]
    pub root: PathBuf,
    /// Stage 2: already PID 1 of the new PID namespace.
    #[arg(long)]
    pub init: bool,
    /// Host uid the builder runs as (an unprivileged build user; required by stage 1).
    #[arg(long)]
    pub host_uid: Option<u32>,
    /// Host gid the builder runs as (required by stage 1).
    #[arg(long)]
    pub host_gid: Option<u32>,
    /// Give the build outbound network through this `slirp4netns` (fixed-output builds).
    #[arg(long)]
    pub slirp4netns: Option<PathBuf>,
    /// Join this cgroup first (repeatable: one per v1 hierarchy), while the helper is still the
    /// build's only process ([`super::cgroup`]).
    #[arg(long = "cgroup")]
    pub cgroups: Vec<PathBuf>,
}

/// A setup step that failed in the helper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The errno.
        source: nix::errno::Errno,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spec file is unusable.
    #[error("spec {path}: {reason}")]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, SetupError>;
}

impl<T> Ctx<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|source| SetupError::Sys { what: what(), source })
    }
}

impl<T> Ctx<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|source| SetupError::Io { what: what(), source })
    }
}

/// Entry point of `buildmesh __sandbox-exec`. Stage 2 does not return when the builder starts.
pub fn sandbox_exec_main(args: SandboxExecArgs) -> ExitCode {
    let result = if args.init { stage2(&args) } else { stage1(&args) };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "buildmesh-sandbox: error: {e}");
            ExitCode::from(SETUP_FAILED_EXIT)
        }
    }
}

fn stage1(args: &SandboxExecArgs) -> Result<ExitCode, SetupError> {
    for dir in &args.cgroups {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, "0").ctx(|| format!("joining the build cgroup {}", dir.display()))?;
    }
    let spec = read_spec(&args.spec)?;
    let missing = |what: &str| SetupError::Spec {
        path: args.spec.clone(),
        reason: format!("no --{what}: the builder must run as an unprivileged build user"),
    };
    let host_uid = args.host_uid.ok_or_else(|| missing("host-uid"))?;
    let host_gid = args.host_gid.ok_or_else(|| missing("host-gid"))?;
    if host_uid == 0 || host_gid == 0 {
        return Err(SetupError::Spec { path: args.spec.clone(), reason: "the build user must not be root".into() });
    }
    let host_pid_ns = std::fs::File::open("/proc/self/ns/pid").ctx(|| "opening /proc/self/ns/pid".into())?;
    unshare(CloneFlags::CLONE_NEWPID).ctx(|| "unshare(CLONE_NEWPID)".into())?;
    let (mut sync, child_end) = UnixStream::pair().ctx(|| "creating the sync socket".into())?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("__sandbox-exec")
        .arg("--spec")
        .arg(&args.spec)
        .arg("--root")
        .arg(&args.root)
        .arg("--init")
        .env_clear()
        .stdin(Stdio::from(OwnedFd::from(child_end)));
    let mut child = cmd.spawn().ctx(|| "starting the sandbox init process".into())?;
    drop(cmd); // our copy of the child's end: EOF when stage 2 dies
    // Only stage 2 goes in the new PID namespace: slirp4netns (and any thread) stays in the host's.
    nix::sched::setns(&host_pid_ns, CloneFlags::CLONE_NEWPID).ctx(|| "returning to the host PID namespace".into())?;
    let mut slirp = None;
    let mut byte = [0u8; 1];
    // EOF: stage 2 failed before it unshared its user namespace (it printed why); its status says so.
    if sync.read(&mut byte).ctx(|| "waiting for the sandbox init process".into())? == 1 && byte[0] == SYNC_UNSHARED {
        let setup =
            confine::map_user_namespace(child.id(), (spec.uid, spec.gid), (host_uid, host_gid)).and_then(|()| {
                match &args.slirp4netns {
                    Some(program) => Slirp::start(program, child.id()).map(|s| slirp = Some(s)),
                    None => Ok(()),
                }
            });
        if let Err(e) = setup {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        sync.write_all(&[SYNC_GO]).ctx(|| "releasing the sandbox init process".into())?;
    }
    let status = child.wait().ctx(|| "waiting for the sandbox init process".into())?;
    drop(slirp);
    if let Some(code) = status.code() {
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(SETUP_FAILED_EXIT)));
    }
    if let Some(sig) = status.signal() {
        // Die of the same signal so the runner sees how the builder ended. No core dumps.
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        if let Ok(s) = Signal::try_from(sig) {
            let _ = nix::sys::signal::raise(s);
        }
        return Ok(ExitCode::from(128u8.wrapping_add(sig as u8)));
    }
    Ok(ExitCode::from(SETUP_FAILED_EXIT))
}

fn read_spec(path: &Path) -> Result<SandboxSpec, SetupError> {
    use std::io::Read;
    let f = std::fs::File::open(path).ctx(|| format!("opening spec {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_SPEC_BYTES + 1).read_to_end(&mut buf).ctx(|| format!("reading spec {}", path.display()))?;
    if buf.len() as u64 > MAX_SPEC_BYTES {
        return Err(SetupError::Spec { path: path.into(), reason: format!("larger than {MAX_SPEC_BYTES} bytes") });
    }
    let spec: SandboxSpec =
        serde_json::from_slice(&buf).map_err(|e| SetupError::Spec { path: path.into(), reason: e.to_string() })?;
    spec.validate().map_err(|e| SetupError::Spec { path: path.into(), reason: e.to_string() })?;
    Ok(spec)
}

fn stage2(args: &SandboxExecArgs) -> Result<ExitCode, SetupError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    // Our stdin is the socket to stage 1 (close-on-exec copy; the builder gets /dev/null).
    let mut sync =
        UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned().ctx(|| "taking the sync socket".into())?);
    let spec = read_spec(&args.spec)?;

    let flags =
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET;
    unshare(flags).ctx(|| "unshare(mount, uts, ipc, net namespaces)".into())?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .ctx(|| "making / private".into())?;
    nix::unistd::sethostname("localhost").ctx(|| "sethostname".into())?;
    // The kernel default; only written when the host has another one (the UTS namespace copied it).
    if std::fs::read("/proc/sys/kernel/domainname").map(|d| d != b"(none)\n").unwrap_or(true) {
        std::fs::write("/proc/sys/kernel/domainname", "(none)").ctx(|| "setting the domain name".into())?;
    }
    loopback_up()?;

    let root = args.root.as_path();
    let ro_targets = build_root(&spec, root)?;
    remount_read_only(root, &ro_targets)?;

    // Enter the new root; the old one is stacked on top of it and detached.
    nix::unistd::chdir(root).ctx(|| format!("chdir {}", root.display()))?;
    nix::unistd::pivot_root(".", ".").ctx(|| "pivot_root".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detaching the old root".into())?;
    nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
    remount_ro("/", MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;

    // The user namespace, mapped by stage 1 onto the build user; then become the builder.
    nix::unistd::setgroups(&[]).ctx(|| "dropping supplementary groups".into())?;
    unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "unshare(CLONE_NEWUSER)".into())?;
    sync.write_all(&[SYNC_UNSHARED]).ctx(|| "asking stage 1 for the user namespace maps".into())?;
    let mut byte = [0u8; 1];
    if sync.read(&mut byte).ctx(|| "waiting for the user namespace maps".into())? != 1 || byte[0] != SYNC_GO {
        return Err(SetupError::Spec {
            path: args.spec.clone(),
            reason: "stage 1 did not map the user namespace".into(),
        });
    }
    drop(sync);
    confine::become_builder(spec.uid, spec.gid)?;

    nix::unistd::chdir(SANDBOX_BUILD_DIR).ctx(|| format!("chdir {SANDBOX_BUILD_DIR}"))?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, nix::sys::resource::RLIM_INFINITY)
        .or_else(|_| {
            let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE)?;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, hard)
        })
        .ctx(|| "setrlimit(RLIMIT_CORE)".into())?;
    confine::drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    let meta = std::fs::metadata(&spec.builder).ctx(|| format!("builder {} in the sandbox", spec.builder.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(SetupError::Spec {
            path: args.spec.clone(),
            reason: format!("builder {} is not an executable file in the sandbox", spec.builder.display()),
        });
    }

    let arg0 = spec.builder.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| spec.builder.clone().into());
    let mut cmd = std::process::Command::new(&spec.builder);
    cmd.arg0(arg0)
        .args(spec.args.iter().map(|a| OsString::from_vec(a.clone())))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (OsString::from_vec(k.clone()), OsString::from_vec(v.clone()))))
        .stdin(Stdio::null());
    let mut err = std::io::stderr();
    err.write_all(READY_MARKER).ctx(|| "writing the ready marker".into())?;
    let e = cmd.exec();
    let _ = writeln!(err, "buildmesh-sandbox: executing builder '{}': {e}", spec.builder.display());
    Ok(ExitCode::from(127))
}

/// Bring the loopback interface of the new network namespace up (netlink RTM_NEWLINK).
fn loopback_up() -> Result<(), SetupError> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 1;

    let index = nix::net::if_::if_nametoindex("lo").ctx(|| "finding the loopback interface".into())?;
    let fd = nix::sys::socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .ctx(|| "opening a netlink socket".into())?;
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(&[0, 0]); // ifi_family = AF_UNSPEC, pad
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&(index as i32).to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    nix::sys::socket::sendto(fd.as_raw_fd(), &msg, &NetlinkAddr::new(0, 0), MsgFlags::empty())
        .ctx(|| "sending RTM_NEWLINK".into())?;
    let mut buf = [0u8; 1024];
    let n = nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ctx(|| "reading the ack".into())?;
    let kind = buf.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let code = buf.get(16..20).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (n >= 20, kind, code) {
        (true, Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (true, Some(NLMSG_ERROR), Some(c)) => {
            Err(SetupError::Sys { what: "bringing lo up".into(), source: nix::errno::Errno::from_raw(-c) })
        }
        _ => Err(SetupError::Io {
            what: "bringing lo up".into(),
            source: std::io::Error::other(format!("unexpected netlink reply of {n} bytes")),
        }),
    }
}

/// `root` joined with an absolute in-sandbox path.
fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn mkdirs(p: &Path) -> Result<(), SetupError> {
    std::fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))
}

fn write_file(p: &Path, contents: &str) -> Result<(), SetupError> {
    std::fs::write(p, contents).ctx(|| format!("writing {}", p.display()))
}

/// Bind `source` onto `target`, creating a directory or an empty file as the mount point.
fn bind(source: &Path, target: &Path, recursive: bool) -> Result<(), SetupError> {
    let meta = std::fs::metadata(source).ctx(|| format!("stat {}", source.display()))?;
    if meta.is_dir() {
        mkdirs(target)?;
    } else if std::fs::symlink_metadata(target).is_err() {
        if let Some(parent) = target.parent() {
            mkdirs(parent)?;
        }
        std::fs::File::create(target).ctx(|| format!("creating mount point {}", target.display()))?;
    }
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .ctx(|| format!("bind mounting {} on {}", source.display(), target.display()))
}

fn remount_ro(target: impl AsRef<Path>, extra: MsFlags) -> Result<(), SetupError> {
    let target = target.as_ref();
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | extra,
        None::<&str>,
    )
    .ctx(|| format!("remounting {} read-only", target.display()))
}

fn remount_flags(target: &Path, flags: MsFlags) -> Result<(), SetupError> {
    mount(None::<&str>, target, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags, None::<&str>)
        .ctx(|| format!("remounting {}", target.display()))
}

/// Populate the sandbox root; returns the mount points (host view) to make read-only.
fn build_root(spec: &SandboxSpec, root: &Path) -> Result<Vec<PathBuf>, SetupError> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), root, Some("tmpfs"), nosuid_nodev, Some("mode=0755"))
        .ctx(|| format!("mounting the root tmpfs on {}", root.display()))?;
    let mut ro = Vec::new();

    // /etc: the same files Nix writes.
    let etc = root.join("etc");
    mkdirs(&etc)?;
    write_file(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:Nix build user:{b}:/noshell\nnixbld:x:{u}:{g}:Nix build user:{b}:/noshell\n\
             nobody:x:65534:65534:Nobody:/:/noshell\n",
            b = SANDBOX_BUILD_DIR,
            u = spec.uid,
            g = spec.gid
        ),
    )?;
    write_file(&etc.join("group"), &format!("root:x:0:\nnixbld:!:{}:\nnogroup:x:65534:\n", spec.gid))?;
    write_file(&etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
    if spec.network {
        // DNS through slirp4netns's forwarder (the host's own resolver may be on its loopback).
        write_file(&etc.join("nsswitch.conf"), "hosts: files dns\nservices: files\n")?;
        write_file(&etc.join("resolv.conf"), &format!("nameserver {SLIRP_DNS}\n"))?;
        let services = Path::new("/etc/services");
        if services.exists() {
            bind(services, &inside(root, services), false)?;
            ro.push(inside(root, services));
        }
    }

    // /tmp: a private tmpfs.
    let tmp = root.join("tmp");
    mkdirs(&tmp)?;
    mount(Some("tmpfs"), &tmp, Some("tmpfs"), nosuid_nodev, Some("mode=1777")).ctx(|| "mounting /tmp".into())?;

    // /build and the store, read-write.
    let build = inside(root, Path::new(SANDBOX_BUILD_DIR));
    bind(&spec.build_dir_host, &build, false)?;
    remount_flags(&build, nosuid_nodev)?;
    let store = inside(root, &spec.store_dir);
    bind(&spec.store_host, &store, false)?;
    remount_flags(&store, nosuid_nodev)?;

    // Inputs, read-only at their logical paths (symlinks were copied in by the runner).
    for input in &spec.inputs {
        let meta = std::fs::symlink_metadata(&input.host).ctx(|| format!("input {}", input.host.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let target = inside(root, &input.path);
        bind(&input.host, &target, true)?;
        ro.push(target);
    }

    // Host paths from sandbox_paths, read-only; missing ones are skipped.
    for p in &spec.sandbox_paths {
        if !p.exists() {
            continue;
        }
        let target = inside(root, p);
        bind(p, &target, true)?;
        ro.push(target);
    }

    // A minimal /dev.
    let dev = root.join("dev");
    mkdirs(&dev.join("shm"))?;
    mkdirs(&dev.join("pts"))?;
    for d in ["full", "null", "random", "tty", "urandom", "zero"] {
        let host = Path::new("/dev").join(d);
        if host.exists() {
            bind(&host, &dev.join(d), false)?;
        }
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(name)).ctx(|| format!("creating /dev/{name}"))?;
    }
    mount(Some("none"), &dev.join("shm"), Some("tmpfs"), nosuid_nodev, Some("mode=1777"))
        .ctx(|| "mounting /dev/shm".into())?;
    if Path::new("/dev/pts/ptmx").exists() {
        mount(
            Some("none"),
            &dev.join("pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,mode=0620,ptmxmode=0666"),
        )
        .ctx(|| "mounting /dev/pts".into())?;
        symlink("/dev/pts/ptmx", dev.join("ptmx")).ctx(|| "creating /dev/ptmx".into())?;
    }

    // A fresh /proc for the new PID namespace.
    let proc_dir = root.join("proc");
    mkdirs(&proc_dir)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .ctx(|| "mounting /proc".into())?;
    confine::mask_proc(&proc_dir)?;
    Ok(ro)
}

/// Make every listed mount point, and every mount below it (recursive binds), read-only.
fn remount_read_only(root: &Path, targets: &[PathBuf]) -> Result<(), SetupError> {
    let mountinfo = std::fs::read("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo".into())?;
    let mut points: Vec<PathBuf> = Vec::new();
    for line in mountinfo.split(|&b| b == b'\n') {
        if let Some(field) = line.split(|&b| b == b' ').nth(4) {
            let p = PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_mountinfo(field)));
            if p.starts_with(root) && targets.iter().any(|t| p.starts_with(t)) {
                points.push(p);
            }
        }
    }
    for t in targets {
        if !points.contains(t) {
            points.push(t.clone());
        }
    }
    for p in points {
        remount_ro(&p, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 4 <= s.len() && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_mountinfo(br"/x\04"), br"/x\04");
        assert_eq!(unescape_mountinfo(b"/plain"), b"/plain");
    }

    #[test]
    fn inside_joins_absolute() {
        assert_eq!(inside(Path::new("/r"), Path::new("/nix/store")), PathBuf::from("/r/nix/store"));
    }
}
