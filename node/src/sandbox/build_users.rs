//! Unprivileged host uids for builders: one per running build, exclusive on the whole host.
//!
//! A builder never runs as the node's own uid (root). [`BuildUsers`] hands out uids from a range
//! (`base .. base + count`, default `30000..30256`, like Nix's build users or its
//! `auto-allocate-uids`); the gid is the same number. Each uid is taken by an exclusive `flock` on
//! `LOCK_DIR/<uid>` (default `/run/buildmesh/build-users`), held by the returned [`BuildUser`] for
//! the run, so concurrent builds of one node (its slots) and of other nodes on the same machine
//! never share a uid, and a crashed node frees its uids with its file descriptors.
//!
//! Inside the sandbox the builder still sees Nix's `nixbld` ids (1000/100): the helper maps them
//! onto the host ids in a user namespace (see [`super::exec`]).
//!
//! [`chown_tree`] gives the runner what the builder must write (its build dir, the store dir its
//! outputs go to) and takes it back after the run, so nothing owned by a released uid stays.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// First host uid (and gid) of the default range.
pub const DEFAULT_BUILD_UID_BASE: u32 = 30000;
/// Size of the default range.
pub const DEFAULT_BUILD_UID_COUNT: u32 = 256;
/// Where the per-uid lock files live by default.
pub const DEFAULT_BUILD_USERS_LOCK_DIR: &str = "/run/buildmesh/build-users";
/// Uids below this are system or login accounts on common distributions.
const MIN_BUILD_UID: u32 = 1000;

/// Why no build user could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildUserError {
    /// The configured range cannot be used.
    #[error("build uid range {base}..{end}: {reason}", end = u64::from(*base) + u64::from(*count))]
    BadRange {
        /// First uid.
        base: u32,
        /// How many.
        count: u32,
        /// What is wrong.
        reason: String,
    },
    /// Every uid of the range is taken by a running build (on this node or another).
    #[error(
        "all {count} build uids {base}..{end} are in use by running builds; raise `sandbox.build_uid_count`",
        end = u64::from(*base) + u64::from(*count)
    )]
    Exhausted {
        /// First uid.
        base: u32,
        /// How many.
        count: u32,
    },
    /// A lock file could not be created or locked.
    #[error("build user lock {}: {source}", path.display())]
    Lock {
        /// The lock file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A range of host uids for builders (see the module docs). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildUsers {
    base: u32,
    count: u32,
    lock_dir: PathBuf,
}

impl Default for BuildUsers {
    fn default() -> Self {
        BuildUsers {
            base: DEFAULT_BUILD_UID_BASE,
            count: DEFAULT_BUILD_UID_COUNT,
            lock_dir: PathBuf::from(DEFAULT_BUILD_USERS_LOCK_DIR),
        }
    }
}

/// One uid/gid taken for one build; released (the lock dropped) when this is dropped.
#[derive(Debug)]
pub struct BuildUser {
    uid: u32,
    gid: u32,
    _lock: Flock<File>,
}

impl BuildUser {
    /// The host uid the builder runs as.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The host gid the builder runs as.
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

impl BuildUsers {
    /// The range `base .. base + count`, locked through files in `lock_dir`. The range must lie
    /// in `1000 .. 2^32 - 1` and not hold the node's own uid or gid.
    pub fn new(base: u32, count: u32, lock_dir: impl Into<PathBuf>) -> Result<BuildUsers, BuildUserError> {
        let bad = |reason: &str| BuildUserError::BadRange { base, count, reason: reason.to_string() };
        if count == 0 {
            return Err(bad("is empty"));
        }
        if base < MIN_BUILD_UID {
            return Err(bad("starts below 1000 (system accounts)"));
        }
        let end = u64::from(base) + u64::from(count);
        // u32::MAX is (uid_t)-1 and 65534 is `nobody`.
        if end > u64::from(u32::MAX) {
            return Err(bad("goes past 4294967294"));
        }
        if (u64::from(base)..end).contains(&65534) {
            return Err(bad("holds 65534 (nobody)"));
        }
        let own = [nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()];
        if own.iter().any(|id| (u64::from(base)..end).contains(&u64::from(*id))) {
            return Err(bad("holds the node's own uid or gid"));
        }
        Ok(BuildUsers { base, count, lock_dir: lock_dir.into() })
    }

    /// First uid of the range.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// Size of the range.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Accounts of the host's `/etc/passwd` and `/etc/group` whose id is in the range: a host
    /// account sharing a builder's uid could read or signal what the builder owns.
    pub fn host_accounts_in_range(&self) -> Vec<String> {
        let mut found = Vec::new();
        for file in ["/etc/passwd", "/etc/group"] {
            let Ok(text) = std::fs::read_to_string(file) else { continue };
            for line in text.lines() {
                let mut fields = line.split(':');
                let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else { continue };
                if id.parse::<u32>().is_ok_and(|id| id >= self.base && id - self.base < self.count) {
                    found.push(format!("{name} ({id}, {file})"));
                }
            }
        }
        found
    }

    /// Take the lowest uid of the range no running build holds.
    pub fn acquire(&self) -> Result<BuildUser, BuildUserError> {
        let lock_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BuildUserError::Lock { path, source }
        };
        std::fs::create_dir_all(&self.lock_dir).map_err(lock_err(&self.lock_dir))?;
        for uid in self.base..=self.base + (self.count - 1) {
            let path = self.lock_dir.join(uid.to_string());
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
                .map_err(lock_err(&path))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(BuildUser { uid, gid: uid, _lock: lock }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
                Err((_, e)) => return Err(lock_err(&path)(io::Error::from(e))),
            }
        }
        Err(BuildUserError::Exhausted { base: self.base, count: self.count })
    }
}

/// Give `path` and, when `recursive`, everything below it to `uid:gid`. Symlinks are changed
/// themselves and never followed; entries that already have these owners are left alone.
pub fn chown_tree(path: &Path, uid: u32, gid: u32, recursive: bool) -> io::Result<()> {
    let md = std::fs::symlink_metadata(path)?;
    if md.uid() != uid || md.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if recursive && md.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid, true)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert!(BuildUsers::new(30000, 0, "/x").is_err());
        assert!(BuildUsers::new(999, 10, "/x").is_err());
        assert!(BuildUsers::new(65530, 10, "/x").is_err());
        assert!(BuildUsers::new(u32::MAX - 5, 10, "/x").is_err());
        let e = BuildUsers::new(100, 1, "/x").unwrap_err().to_string();
        assert!(e.contains("100..101") && e.contains("below 1000"), "{e}");
        assert_eq!(BuildUsers::new(30000, 256, "/x").unwrap().count(), 256);
    }

    #[test]
    fn each_acquire_gets_its_own_uid_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let users = BuildUsers::new(40000, 2, dir.path().join("locks")).unwrap();
        let a = users.acquire().unwrap();
        let b = users.acquire().unwrap();
        assert_eq!((a.uid(), b.uid()), (40000, 40001));
        assert_eq!(a.gid(), a.uid());
        assert!(matches!(users.acquire(), Err(BuildUserError::Exhausted { .. })));
        drop(a);
        assert_eq!(users.acquire().unwrap().uid(), 40000);
    }

    #[test]
    fn chown_tree_skips_symlink_targets() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        chown_tree(&tree, 40010, 40010, true).unwrap();
        for p in ["", "sub", "sub/f", "link"] {
            let md = std::fs::symlink_metadata(tree.join(p)).unwrap();
            assert_eq!((md.uid(), md.gid()), (40010, 40010), "{p}");
        }
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0);
    }
}
