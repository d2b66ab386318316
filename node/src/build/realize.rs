//! The node's on-disk store of realised paths, `DATA/store/<basename>`, and what both executors
//! share about inputs and outputs.
//!
//! ## Realised paths ([`StoreFs`])
//! The [`Store`] keeps every valid path as a NAR blob plus a [`PathInfo`]. The `local` executor
//! needs inputs as real files to bind-mount into its sandbox, so [`StoreFs::ensure`] unpacks a
//! registered path from its blob on first use:
//!
//! 1. restore the NAR into `DATA/store/.tmp-<pid>-<n>-<hash part>` (the blob reader checks the
//!    blob's blake3 and length at the end, so a damaged blob never becomes a path);
//! 2. canonicalise it as Nix does (mtime 1 s after the epoch, files `0444`/`0555`, directories
//!    `0555`);
//! 3. `renameat2(RENAME_NOREPLACE)` it to `DATA/store/<basename>`.
//!
//! So a name without the `.tmp-` prefix only ever appears for a complete tree: a `kill -9` at any
//! point leaves at most a `.tmp-*` entry, which [`StoreFs::open`] removes (the node opens its data
//! dir exclusively: the redb database is locked). Two concurrent `ensure`s of one path both
//! restore, one rename wins, the other copy is dropped. The store never fsyncs restored trees
//! (neither does Nix): after a power loss a realised path may be damaged; delete `DATA/store`,
//! which is only a cache of the blobs.
//!
//! Invariant: a path appears in `DATA/store` only after its [`PathInfo`] is committed (built
//! outputs are registered first and installed with [`StoreFs::install`] after), so what is on disk
//! is always the registered content.
//!
//! ## Shared by the executors
//! - [`input_paths`] and [`closure`]: what a build reads (input sources, the selected outputs of
//!   input derivations, and everything they reference).
//! - [`register_outputs`]: one store transaction for all outputs of a build, tolerant of outputs
//!   that are already registered (possibly with other contents: a reproducibility finding, not an
//!   error).
//! - [`content_address`]: the `CA` string Nix records for a fixed output.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{self, BufReader, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use buildmesh_protocol::derivation::{CaMethod, Derivation, DrvError};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::nar::NarLimits;
use buildmesh_protocol::narinfo::{self, ContentAddress, ContentAddressError};
use buildmesh_protocol::store_path::{StoreDir, StorePath};

use crate::nar_fs::{self, NarFsError};
use crate::store::{PathInfo, Store, StoreError};

/// Prefix of entries of `DATA/store` that are being written (removed by [`StoreFs::open`]).
pub const TMP_PREFIX: &str = ".tmp-";

/// The mtime Nix gives every store file (1 second after the epoch).
const CANONICAL_MTIME_SECS: i64 = 1;

/// Why a path could not be realised, or a closure computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RealizeError {
    /// The path (or derivation) is not in the node's store.
    #[error("{} is not in the node's store", path)]
    NotRegistered {
        /// The missing path (basename).
        path: StorePath,
    },
    /// An input derivation does not parse.
    #[error("input derivation {drv}: {source}")]
    BadDerivation {
        /// The `.drv`.
        drv: StorePath,
        /// The parser's error.
        source: Box<DrvError>,
    },
    /// An input derivation has no output of that name.
    #[error("input derivation {drv} has no output `{output}`")]
    NoSuchOutput {
        /// The `.drv`.
        drv: StorePath,
        /// The output asked for.
        output: String,
    },
    /// An input derivation's output path is not known before building (floating
    /// content-addressed or impure derivations, which buildmesh does not build).
    #[error(
        "output `{output}` of input derivation {drv} has no fixed path (content-addressed derivations are not supported)"
    )]
    DeferredOutput {
        /// The `.drv`.
        drv: StorePath,
        /// The output.
        output: String,
    },
    /// The node's store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Unpacking a NAR blob failed (or the blob is damaged).
    #[error("restoring {path} from its NAR blob: {source}")]
    Restore {
        /// The path being restored.
        path: StorePath,
        /// What failed.
        source: Box<NarFsError>,
    },
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", file.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which file.
        file: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, file: &'a Path) -> impl FnOnce(io::Error) -> RealizeError + 'a {
    move |source| RealizeError::Io { op, file: file.to_path_buf(), source }
}

fn errno_err<'a>(op: &'static str, file: &'a Path) -> impl FnOnce(nix::errno::Errno) -> RealizeError + 'a {
    move |e| RealizeError::Io { op, file: file.to_path_buf(), source: io::Error::from(e) }
}

/// The directory of realised store paths (`DATA/store`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreFs {
    root: PathBuf,
}

/// Distinguishes temp names of one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl StoreFs {
    /// Open (creating when missing) the realised-path directory `root` and remove the `.tmp-*`
    /// leftovers of an interrupted restore or install. Call once per data dir, at startup, while
    /// holding the [`Store`] (which locks the data dir against other processes).
    pub fn open(root: impl Into<PathBuf>) -> Result<StoreFs, RealizeError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        let entries = std::fs::read_dir(&root).map_err(io_err("list", &root))?;
        let mut removed = 0usize;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &root))?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                remove_tree(&entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, root = %root.display(), "removed unfinished realised paths left by a crash");
        }
        Ok(StoreFs { root })
    }

    /// The directory (`DATA/store`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `path` is (or would be) realised: `root/<basename>`.
    pub fn path_of(&self, path: &StorePath) -> PathBuf {
        self.root.join(path.to_string())
    }

    /// Whether `path` is realised on disk.
    pub fn is_realised(&self, path: &StorePath) -> bool {
        std::fs::symlink_metadata(self.path_of(path)).is_ok()
    }

    /// Delete the realised copy of `path` (the blob and registration stay): renamed to a `.tmp-`
    /// name first, so a crash in the middle leaves only an entry [`StoreFs::open`] removes (never
    /// a half-deleted tree under the path's name). A path that is not realised is fine.
    pub fn remove(&self, path: &StorePath) -> Result<(), RealizeError> {
        let host = self.path_of(path);
        let temp = self.temp_path(path);
        match std::fs::rename(&host, &temp) {
            Ok(()) => remove_tree(&temp),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("rename for removal", &host)(e)),
        }
    }

    fn temp_path(&self, path: &StorePath) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root.join(format!("{TMP_PREFIX}{}-{n}-{}", std::process::id(), path.hash_part()))
    }

    /// Make sure the registered `path` exists on disk, restoring it from its NAR blob when it does
    /// not (atomically; see the module docs). Returns its host path.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %path))]
    pub fn ensure(&self, store: &Store, path: &StorePath) -> Result<PathBuf, RealizeError> {
        let target = self.path_of(path);
        if std::fs::symlink_metadata(&target).is_ok() {
            return Ok(target);
        }
        let info = store.path_info(path)?.ok_or_else(|| RealizeError::NotRegistered { path: path.clone() })?;
        let tmp = self.temp_path(path);
        let restore_err = |source| RealizeError::Restore { path: path.clone(), source: Box::new(source) };
        let mut reader = BufReader::with_capacity(256 * 1024, store.open_nar(&info.blob)?);
        let limits = NarLimits { max_total_size: info.nar_size, ..NarLimits::default() };
        let result = nar_fs::restore(&mut reader, &tmp, limits).map_err(restore_err).and_then(|_| {
            // Read to the end so the blob reader checks blake3 and length.
            let mut rest = [0u8; 1];
            match reader.read(&mut rest) {
                Ok(0) => Ok(()),
                Ok(_) => Err(restore_err(NarFsError::Io {
                    op: "read",
                    path: tmp.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "bytes after the end of the NAR"),
                })),
                Err(source) => Err(restore_err(NarFsError::Io { op: "read", path: tmp.clone(), source })),
            }
        });
        let result = result.and_then(|()| canonicalise(&tmp)).and_then(|()| self.rename_into_place(&tmp, &target));
        if result.is_err() && std::fs::symlink_metadata(&tmp).is_ok() {
            let _ = remove_tree(&tmp);
        }
        result?;
        tracing::debug!(nar_size = info.nar_size, "restored");
        Ok(target)
    }

    /// Rename `tmp` to `target` unless `target` exists (then `tmp` is removed: the other copy has
    /// the same registered content).
    fn rename_into_place(&self, tmp: &Path, target: &Path) -> Result<(), RealizeError> {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, tmp, AT_FDCWD, target, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EEXIST) => remove_tree(tmp),
            Err(e) => Err(errno_err("rename into place", target)(e)),
        }
    }

    /// Realise every path of `paths` (see [`StoreFs::ensure`]).
    pub fn ensure_all<'a>(
        &self,
        store: &Store,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), RealizeError> {
        for p in paths {
            self.ensure(store, p)?;
        }
        Ok(())
    }

    /// Realise `roots` and everything they reference (per the registered [`PathInfo`]s); returns
    /// the closure in store-path order.
    pub fn ensure_closure<'a>(
        &self,
        store: &Store,
        roots: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<Vec<StorePath>, RealizeError> {
        let infos = closure(store, roots)?;
        self.ensure_all(store, infos.keys())?;
        Ok(infos.into_keys().collect())
    }

    /// Move a freshly built output at `src` (on the same filesystem, e.g. under `DATA/builds`)
    /// into place as `path`, canonicalising it first. When `path` is already realised the new copy
    /// is deleted and the existing one kept. Register the path before installing it (module docs).
    /// Across filesystems the tree is copied (NAR dump into restore) to a temp name first.
    pub fn install(&self, src: &Path, path: &StorePath) -> Result<PathBuf, RealizeError> {
        let target = self.path_of(path);
        if std::fs::symlink_metadata(&target).is_ok() {
            remove_tree(src)?;
            return Ok(target);
        }
        canonicalise(src)?;
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, src, AT_FDCWD, &target, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => Ok(target),
            Err(nix::errno::Errno::EEXIST) => {
                remove_tree(src)?;
                Ok(target)
            }
            Err(nix::errno::Errno::EXDEV) => {
                let tmp = self.temp_path(path);
                let result = copy_tree(src, &tmp, path)
                    .and_then(|()| canonicalise(&tmp))
                    .and_then(|()| self.rename_into_place(&tmp, &target));
                if result.is_err() && std::fs::symlink_metadata(&tmp).is_ok() {
                    let _ = remove_tree(&tmp);
                }
                result?;
                remove_tree(src)?;
                Ok(target)
            }
            Err(e) => Err(errno_err("rename into place", &target)(e)),
        }
    }
}

/// Copy a tree across filesystems: NAR dump on one thread into restore on this one.
fn copy_tree(src: &Path, dst: &Path, path: &StorePath) -> Result<(), RealizeError> {
    let (reader, writer) = io::pipe().map_err(io_err("create a pipe for", src))?;
    std::thread::scope(|s| {
        let dumper = s.spawn(move || nar_fs::dump_path(src, writer).map(drop));
        let restored = nar_fs::restore(BufReader::new(reader), dst, NarLimits::default());
        let dumped = dumper.join().unwrap_or_else(|_| {
            Err(NarFsError::Io { op: "dump", path: src.to_path_buf(), source: io::Error::other("thread panicked") })
        });
        dumped
            .and(restored.map(drop))
            .map_err(|source| RealizeError::Restore { path: path.clone(), source: Box::new(source) })
    })
}

/// Set what Nix's `canonicalisePathMetaData` sets: mtime (and atime) 1 s after the epoch on
/// everything including symlinks, mode `0555` on directories and on files whose owner-execute
/// bit is set, `0444` on other files (so no setuid, setgid, sticky or writable bit survives), and
/// the node's own uid/gid as owner (a build user's files are taken back). Symlinks are never
/// followed.
pub fn canonicalise(path: &Path) -> Result<(), RealizeError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    let ft = md.file_type();
    let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    if md.uid() != uid || md.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err("change the owner of", path))?;
    }
    if ft.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io_err("list", path))? {
            let entry = entry.map_err(io_err("list", path))?;
            canonicalise(&entry.path())?;
        }
    }
    if !ft.is_symlink() {
        let mode = if ft.is_dir() || md.permissions().mode() & 0o100 != 0 { 0o555 } else { 0o444 };
        if md.permissions().mode() & 0o7777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io_err("set permissions of", path))?;
        }
    }
    let t = TimeSpec::new(CANONICAL_MTIME_SECS, 0);
    utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(errno_err("set the mtime of", path))
}

/// Remove a file, symlink or directory tree, making read-only directories writable first (store
/// trees are `0555`). A missing path is not an error.
pub fn remove_tree(path: &Path) -> Result<(), RealizeError> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if !md.is_dir() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
            _ => Ok(()),
        };
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_dirs_writable(path)?;
            std::fs::remove_dir_all(path).map_err(io_err("remove", path))
        }
    }
}

fn make_dirs_writable(path: &Path) -> Result<(), RealizeError> {
    let md = std::fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if md.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("set permissions of", path))?;
        for entry in std::fs::read_dir(path).map_err(io_err("list", path))? {
            make_dirs_writable(&entry.map_err(io_err("list", path))?.path())?;
        }
    }
    Ok(())
}

/// The paths a build of `drv` reads directly: its input sources and the selected outputs of its
/// input derivations (whose `.drv` files must be in the store).
pub fn input_paths(store: &Store, store_dir: &StoreDir, drv: &Derivation) -> Result<BTreeSet<StorePath>, RealizeError> {
    let mut out: BTreeSet<StorePath> = drv.input_srcs.iter().cloned().collect();
    for (drv_path, outputs) in &drv.input_drvs {
        let input = load_drv(store, store_dir, drv_path)?;
        for o in outputs {
            let output = input
                .outputs
                .get(o)
                .ok_or_else(|| RealizeError::NoSuchOutput { drv: drv_path.clone(), output: o.clone() })?;
            let path = output
                .path
                .clone()
                .ok_or_else(|| RealizeError::DeferredOutput { drv: drv_path.clone(), output: o.clone() })?;
            out.insert(path);
        }
    }
    Ok(out)
}

/// Read and parse a stored derivation.
pub fn load_drv(store: &Store, store_dir: &StoreDir, drv_path: &StorePath) -> Result<Derivation, RealizeError> {
    let bytes = store.get_drv(drv_path)?.ok_or_else(|| RealizeError::NotRegistered { path: drv_path.clone() })?;
    Derivation::parse(&bytes, store_dir)
        .map_err(|source| RealizeError::BadDerivation { drv: drv_path.clone(), source: Box::new(source) })
}

/// `roots` and everything they reference, transitively, with their registered [`PathInfo`]s. A
/// path that is not registered is [`RealizeError::NotRegistered`].
pub fn closure<'a>(
    store: &Store,
    roots: impl IntoIterator<Item = &'a StorePath>,
) -> Result<BTreeMap<StorePath, PathInfo>, RealizeError> {
    let mut done: BTreeMap<StorePath, PathInfo> = BTreeMap::new();
    let mut todo: Vec<StorePath> = roots.into_iter().cloned().collect();
    while let Some(p) = todo.pop() {
        if done.contains_key(&p) {
            continue;
        }
        let info = store.path_info(&p)?.ok_or_else(|| RealizeError::NotRegistered { path: p.clone() })?;
        todo.extend(info.references.iter().filter(|r| !done.contains_key(*r)).cloned());
        done.insert(p, info);
    }
    Ok(done)
}

/// The `CA` field Nix records for an output of a fixed-output derivation:
/// `fixed:<algo>:<nix32>` (flat), `fixed:r:<algo>:<nix32>` (recursive), `text:sha256:<nix32>`,
/// `fixed:git:<algo>:<nix32>`.
pub fn content_address(method: CaMethod, hash: &NixHash) -> Result<String, ContentAddressError> {
    let m = match method {
        CaMethod::Flat => narinfo::CaMethod::Flat,
        CaMethod::Nar => narinfo::CaMethod::Recursive,
        CaMethod::Text => narinfo::CaMethod::Text,
        CaMethod::Git => narinfo::CaMethod::Git,
    };
    Ok(ContentAddress::new(m, hash.clone())?.as_str().to_string())
}

/// What [`register_outputs`] did with one path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Registration {
    /// Newly registered.
    New,
    /// Already registered with the same NarHash (nothing changed).
    Existing,
    /// Already registered with another NarHash: the existing registration is kept; the new NAR is
    /// still stored as a blob, and the build's attestation names it (a reproducibility finding).
    Conflict {
        /// The NarHash that stays registered.
        existing: NixHash,
    },
}

/// Register `infos` (whose blobs are stored) in one store transaction. Paths already registered
/// with another NarHash are left alone and reported as [`Registration::Conflict`].
pub fn register_outputs(store: &Store, infos: &[PathInfo]) -> Result<Vec<Registration>, StoreError> {
    let mut conflicts: BTreeMap<StorePath, NixHash> = BTreeMap::new();
    for info in infos {
        if let Some(existing) = store.path_info(&info.path)?
            && existing.nar_hash != info.nar_hash
        {
            conflicts.insert(info.path.clone(), existing.nar_hash);
        }
    }
    // A concurrent writer may register one of the paths between the check and the transaction:
    // then the transaction fails with PathConflict, and is retried without that path.
    for _ in 0..=infos.len() {
        let result = store.write(|w| {
            let mut out = Vec::with_capacity(infos.len());
            for info in infos {
                if let Some(existing) = conflicts.get(&info.path) {
                    out.push(Registration::Conflict { existing: existing.clone() });
                } else if w.register_path(info)? {
                    out.push(Registration::New);
                } else {
                    out.push(Registration::Existing);
                }
            }
            Ok(out)
        });
        match result {
            Err(StoreError::PathConflict { path, existing, .. }) if !conflicts.contains_key(&path) => {
                conflicts.insert(path, existing);
            }
            other => return other,
        }
    }
    Err(StoreError::Corrupt { table: "paths", key: String::new(), reason: "registration kept conflicting".to_string() })
}

/// Whether `name` is a temp entry of [`StoreFs`].
pub fn is_temp_name(name: &OsStr) -> bool {
    name.to_string_lossy().starts_with(TMP_PREFIX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::fs::MetadataExt as _;

    use buildmesh_protocol::hash::HashAlgo;
    use buildmesh_protocol::nar::tree::Node;

    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s).unwrap()
    }

    fn register(store: &Store, path: &StorePath, node: &Node, refs: &[&StorePath]) -> PathInfo {
        let nar = node.to_nar().unwrap();
        let blob = store.put_nar(&mut &nar[..]).unwrap();
        let info = PathInfo {
            path: path.clone(),
            nar_hash: blob.nar_hash.clone(),
            nar_size: blob.nar_size,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            ca: None,
            blob: blob.blake3,
            registered_at: 1,
        };
        store.register_path(&info).unwrap();
        info
    }

    fn tree() -> Node {
        Node::Directory(
            [
                (
                    b"bin".to_vec(),
                    Node::Directory(
                        [(b"x".to_vec(), Node::Regular { executable: true, contents: b"#!".to_vec() })].into(),
                    ),
                ),
                (b"f".to_vec(), Node::Regular { executable: false, contents: b"data".to_vec() }),
                (b"l".to_vec(), Node::Symlink { target: b"f".to_vec() }),
            ]
            .into(),
        )
    }

    #[test]
    fn ensure_restores_canonicalises_and_cleans_leftovers() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let a = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-a");
        let b = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-b");
        let c = sp("bnr93czmznql3rh3ijb3s0wvk9x6wyay-c");
        register(&store, &a, &tree(), &[&b]);
        register(&store, &b, &Node::Regular { executable: false, contents: b"b".to_vec() }, &[&b]);
        std::fs::create_dir_all(data.path().join("store/.tmp-1-2-x/sub")).unwrap();
        std::fs::write(data.path().join("store/.tmp-9-9-y"), "partial").unwrap();
        let fs = StoreFs::open(data.path().join("store")).unwrap();
        assert_eq!(std::fs::read_dir(fs.root()).unwrap().count(), 0, "leftovers removed");

        let closure = fs.ensure_closure(&store, [&a]).unwrap();
        assert_eq!(closure.into_iter().collect::<BTreeSet<_>>(), [a.clone(), b.clone()].into());
        let host = fs.path_of(&a);
        assert_eq!(std::fs::read(host.join("f")).unwrap(), b"data");
        assert_eq!(std::fs::read_link(host.join("l")).unwrap(), Path::new("f"));
        let md = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        assert_eq!(md(&host).mode() & 0o7777, 0o555);
        assert_eq!(md(&host.join("bin/x")).mode() & 0o7777, 0o555);
        assert_eq!(md(&host.join("f")).mode() & 0o7777, 0o444);
        assert_eq!(md(&host.join("f")).mtime(), 1);
        assert_eq!(md(&host.join("l")).mtime(), 1);
        // Restored tree has the registered NAR.
        let (hash, _) = nar_fs::nar_hash_path(&host).unwrap();
        assert_eq!(hash, store.path_info(&a).unwrap().unwrap().nar_hash);
        // Idempotent; no temp entries stay.
        fs.ensure(&store, &a).unwrap();
        let names: Vec<_> = std::fs::read_dir(fs.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !is_temp_name(n)), "{names:?}");
        assert_eq!(names.len(), 2);

        match fs.ensure_closure(&store, [&c]) {
            Err(RealizeError::NotRegistered { path }) => assert_eq!(path, c),
            other => panic!("{other:?}"),
        }
        fs.remove(&a).unwrap();
        assert!(!fs.is_realised(&a));
        fs.remove(&a).unwrap();
    }

    #[test]
    fn install_moves_and_keeps_the_first_copy() {
        let data = tempfile::tempdir().unwrap();
        let fs = StoreFs::open(data.path().join("store")).unwrap();
        let p = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-out");
        let build = data.path().join("build");
        std::fs::create_dir_all(build.join("o/d")).unwrap();
        std::fs::write(build.join("o/d/f"), "one").unwrap();
        let host = fs.install(&build.join("o"), &p).unwrap();
        assert_eq!(std::fs::read(host.join("d/f")).unwrap(), b"one");
        assert!(!build.join("o").exists());
        std::fs::create_dir_all(build.join("o2")).unwrap();
        std::fs::write(build.join("o2/f"), "two").unwrap();
        fs.install(&build.join("o2"), &p).unwrap();
        assert_eq!(std::fs::read(host.join("d/f")).unwrap(), b"one");
        assert!(!build.join("o2").exists());
        // Across filesystems (/dev/shm is a tmpfs on Linux) the tree is copied.
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            let q = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-q");
            std::fs::write(shm.path().join("f"), "x").unwrap();
            let host = fs.install(&shm.path().join("f"), &q).unwrap();
            assert_eq!(std::fs::read(host).unwrap(), b"x");
            assert!(!shm.path().join("f").exists());
        }
    }

    #[test]
    fn register_outputs_reports_conflicts_without_failing() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let a = sp("an8vyn8v0lxs937kjy709ghv3zp4wms6-a");
        let b = sp("wm32icn8hzjm0kah51xh8nv14dn4crdz-b");
        let old = register(&store, &a, &Node::Regular { executable: false, contents: b"old".to_vec() }, &[]);
        let mk = |path: &StorePath, contents: &[u8]| {
            let nar = Node::Regular { executable: false, contents: contents.to_vec() }.to_nar().unwrap();
            let blob = store.put_nar(&mut &nar[..]).unwrap();
            PathInfo {
                path: path.clone(),
                nar_hash: blob.nar_hash,
                nar_size: blob.nar_size,
                references: BTreeSet::new(),
                deriver: None,
                ca: None,
                blob: blob.blake3,
                registered_at: 2,
            }
        };
        let new_a = mk(&a, b"new");
        let new_b = mk(&b, b"b");
        let r = register_outputs(&store, &[new_a, new_b.clone()]).unwrap();
        assert_eq!(r, vec![Registration::Conflict { existing: old.nar_hash.clone() }, Registration::New]);
        assert_eq!(store.path_info(&a).unwrap().unwrap(), old);
        assert_eq!(register_outputs(&store, &[new_b]).unwrap(), vec![Registration::Existing]);
    }

    #[test]
    fn content_address_strings_are_nix_s() {
        let h = NixHash::parse("sha256:1h0mi12drsckivxnzbn37c0r5aq2nq0z9kv5y13nzcyvlq2ic12c", None).unwrap();
        assert_eq!(
            content_address(CaMethod::Nar, &h).unwrap(),
            "fixed:r:sha256:1h0mi12drsckivxnzbn37c0r5aq2nq0z9kv5y13nzcyvlq2ic12c"
        );
        assert_eq!(
            content_address(CaMethod::Flat, &h).unwrap(),
            "fixed:sha256:1h0mi12drsckivxnzbn37c0r5aq2nq0z9kv5y13nzcyvlq2ic12c"
        );
        assert_eq!(
            content_address(CaMethod::Text, &h).unwrap(),
            "text:sha256:1h0mi12drsckivxnzbn37c0r5aq2nq0z9kv5y13nzcyvlq2ic12c"
        );
        let md5 = NixHash::new(HashAlgo::Md5, vec![0u8; 16]).unwrap();
        assert_eq!(content_address(CaMethod::Flat, &md5).unwrap(), format!("fixed:md5:{}", md5.to_nix32()));
        assert!(content_address(CaMethod::Text, &md5).is_err());
    }
}
