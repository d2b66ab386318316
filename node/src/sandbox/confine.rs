//! Taking the builder's privileges away: the `/proc` it sees, its uid, its capabilities.
//!
//! - [`mask_proc`]: the sandbox's fresh `/proc` with the host-wide knobs made read-only
//!   (`/proc/sys`, `/proc/sysrq-trigger`, `/proc/irq`, `/proc/bus`, `/proc/fs`) and the files that
//!   leak kernel memory or other users' secrets masked (`/proc/kcore`, `/proc/keys`,
//!   `/proc/kallsyms`, `/proc/timer_list`, ...), as container runtimes do. These mounts belong to
//!   the host's user namespace, so the builder (in a child user namespace) can neither unmount
//!   nor remount them.
//! - [`map_user_namespace`] (stage 1, still root in the host) writes the user namespace maps of
//!   stage 2: the builder's in-sandbox uid/gid (1000/100) onto the unprivileged host ids of its
//!   [`super::build_users::BuildUser`]. A process cannot map a host uid other than its own once it
//!   has unshared `CLONE_NEWUSER`, which is why the parent does it.
//! - [`become_builder`] (stage 2, after the maps are written) switches to those ids with
//!   `setresgid`/`setresuid`, so the builder's host uid is the build user's and never 0.
//! - [`drop_capabilities`] empties every capability set (bounding, ambient, inheritable,
//!   permitted, effective) and checks `/proc/self/status` that they are empty: the builder holds
//!   no capability, not even in its own user namespace.

use std::path::Path;

use nix::mount::{MsFlags, mount};

use super::exec::{Ctx as _, SetupError};

/// `/proc` entries made read-only: host-wide settings.
const READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// `/proc` files hidden behind `/dev/null`.
const MASKED_FILES: [&str; 8] =
    ["kcore", "keys", "kallsyms", "timer_list", "sched_debug", "latency_stats", "timer_stats", "kmsg"];
/// `/proc` directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: [&str; 3] = ["acpi", "scsi", "asound"];

/// Make the host-wide parts of the sandbox's `proc` mount at `proc_dir` read-only or hidden.
/// Entries the kernel does not have are skipped.
pub(crate) fn mask_proc(proc_dir: &Path) -> Result<(), SetupError> {
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for name in READ_ONLY {
        let p = proc_dir.join(name);
        if std::fs::symlink_metadata(&p).is_err() {
            continue;
        }
        mount(Some(&p), &p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .ctx(|| format!("bind mounting {}", p.display()))?;
        mount(
            None::<&str>,
            &p,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | ro,
            None::<&str>,
        )
        .ctx(|| format!("remounting {} read-only", p.display()))?;
    }
    for name in MASKED_FILES {
        let p = proc_dir.join(name);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            mount(Some("/dev/null"), &p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .ctx(|| format!("masking {}", p.display()))?;
        }
    }
    for name in MASKED_DIRS {
        let p = proc_dir.join(name);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            mount(Some("tmpfs"), &p, Some("tmpfs"), MsFlags::MS_RDONLY | ro, Some("size=0,mode=0555"))
                .ctx(|| format!("masking {}", p.display()))?;
        }
    }
    Ok(())
}

/// Map `inner_uid`/`inner_gid` of the user namespace of process `pid` onto `host_uid`/`host_gid`
/// (nothing else is mapped) and forbid `setgroups` in it. Run by the parent, root in the host.
pub(crate) fn map_user_namespace(
    pid: u32,
    (inner_uid, inner_gid): (u32, u32),
    (host_uid, host_gid): (u32, u32),
) -> Result<(), SetupError> {
    let proc = Path::new("/proc").join(pid.to_string());
    for (file, text) in [
        ("setgroups", "deny".to_string()),
        ("gid_map", format!("{inner_gid} {host_gid} 1\n")),
        ("uid_map", format!("{inner_uid} {host_uid} 1\n")),
    ] {
        let p = proc.join(file);
        std::fs::write(&p, text).ctx(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Switch to the builder's ids inside the (already mapped) user namespace.
pub(crate) fn become_builder(uid: u32, gid: u32) -> Result<(), SetupError> {
    use nix::unistd::{Gid, Uid, setresgid, setresuid};
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setresgid(gid, gid, gid).ctx(|| format!("setresgid({gid})"))?;
    setresuid(uid, uid, uid).ctx(|| format!("setresuid({uid})"))?;
    Ok(())
}

/// Empty every capability set of this process and check that the kernel agrees.
pub(crate) fn drop_capabilities() -> Result<(), SetupError> {
    use caps::CapSet;
    let fail = |what: &str, e: caps::errors::CapsError| SetupError::Io {
        what: format!("dropping the {what} capabilities"),
        source: std::io::Error::other(e.to_string()),
    };
    // Bounding first: it needs CAP_SETPCAP, which clearing the permitted set takes away.
    caps::clear(None, CapSet::Bounding).map_err(|e| fail("bounding", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("ambient", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| fail("inheritable", e))?;
    caps::clear(None, CapSet::Effective).map_err(|e| fail("effective", e))?;
    caps::clear(None, CapSet::Permitted).map_err(|e| fail("permitted", e))?;
    let status = std::fs::read_to_string("/proc/self/status").ctx(|| "reading /proc/self/status".into())?;
    let left = capability_sets_left(&status);
    if !left.is_empty() {
        return Err(SetupError::Io {
            what: "dropping capabilities".into(),
            source: std::io::Error::other(format!("still held: {}", left.join(", "))),
        });
    }
    Ok(())
}

/// The `Cap*` lines of a `/proc/<pid>/status` text that are not all zero.
pub fn capability_sets_left(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .filter(|l| l.split_once(':').is_some_and(|(_, v)| !v.trim().trim_start_matches('0').is_empty()))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_lines() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
                 CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        assert_eq!(capability_sets_left(s), ["CapBnd: 000001ffffffffff"]);
        assert!(capability_sets_left(&s.replace("000001ffffffffff", "0000000000000000")).is_empty());
    }
}
