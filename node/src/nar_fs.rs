//! NAR dump from and restore to the filesystem: the I/O side of [`buildmesh_protocol::nar`].
//!
//! - [`dump_path`] writes the NAR of a path (what `nix-store --dump` writes) into any `Write`.
//! - [`hash_path`] computes NarHash, NarSize and the blake3 content id of a path without writing the
//!   NAR anywhere, reading files on one thread and hashing on another; [`nar_hash_path`] computes
//!   only NarHash and NarSize (faster), on one or two threads ([`Threads`]).
//! - [`restore`] unpacks a NAR from any `BufRead` into a new directory, as `nix-store --restore`.
//!
//! Nix's rules: a regular file is executable when its owner-execute bit is set; directory entries
//! are sorted by the bytes of their names; sockets, FIFOs and device files cannot be archived.
//! Files are streamed in bounded chunks: memory use does not grow with file or tree size.

use std::ffi::{CStr, OsStr};
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::nar::{
    NarDigest, NarEvent, NarHasher, NarLimits, NarReadError, NarReader, NarWriteError, NarWriter,
};
use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use sha2::Digest as _;
use thiserror::Error;

/// Read buffer for file contents.
const READ_BUF: usize = 256 * 1024;
/// Read buffer of the single-threaded hash: small enough that what was just read is still in the
/// core's L2 cache when it is hashed.
const HASH_BUF: usize = 128 * 1024;
/// Size of the chunks handed from the reading thread to the hashing thread.
const CHUNK: usize = 1024 * 1024;
/// Chunks in flight between the two threads.
const QUEUE: usize = 4;

/// Mode of restored regular files and directories: what `nix-store --restore` produces (it sets
/// umask 022 and creates files 0666, executables and directories 0777).
const MODE_FILE: u32 = 0o644;
const MODE_EXEC: u32 = 0o755;
const MODE_DIR: u32 = 0o755;

/// Why a dump, hash or restore failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NarFsError {
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted (`read directory`, `open`, `create`, ...).
        op: &'static str,
        /// The path it was attempted on.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The path is a socket, FIFO or device, which a NAR cannot hold.
    #[error("cannot archive {}: it is a {kind} (only regular files, symlinks and directories can be archived)", path.display())]
    UnsupportedFileType {
        /// The path.
        path: PathBuf,
        /// `socket`, `FIFO`, `block device`, `character device` or `unknown file type`.
        kind: &'static str,
    },
    /// A file changed while it was archived.
    #[error("file {} changed while it was archived: {what}", path.display())]
    Changed {
        /// The path.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// The NAR writer rejected the tree (for example a name that cannot appear in a NAR), or
    /// writing to the output failed.
    #[error("cannot write the NAR of {}: {source}", path.display())]
    Write {
        /// The filesystem path being archived.
        path: PathBuf,
        /// The error.
        #[source]
        source: NarWriteError,
    },
    /// The NAR being restored is malformed or hostile.
    #[error(transparent)]
    Read(#[from] NarReadError),
    /// The restore target already exists.
    #[error("restore target {} already exists", .0.display())]
    TargetExists(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NarFsError + 'a {
    move |source| NarFsError::Io { op, path: path.to_path_buf(), source }
}

/// Write the NAR of `path` (a regular file, symlink or directory; symlinks are not followed) into
/// `w`, byte-identical to `nix-store --dump`, and return `w` (flushed).
pub fn dump_path<W: Write>(path: &Path, w: W) -> Result<W, NarFsError> {
    let wr = |source| NarFsError::Write { path: path.to_path_buf(), source };
    let mut nw = NarWriter::new(w).map_err(wr)?;
    dump_node(path, &mut nw)?;
    nw.finish().map_err(wr)
}

/// Write `path` as the node at the writer's current position (the root, or after
/// [`NarWriter::entry`]); for embedding a filesystem tree in a larger archive.
pub fn dump_node<W: Write>(path: &Path, nw: &mut NarWriter<W>) -> Result<(), NarFsError> {
    Dumper::new(BufCopier(vec![0u8; READ_BUF]), path).root(nw)
}

/// The NAR digest of `path`: NarHash (`sha256:<nix32>`), NarSize and blake3, without writing the
/// archive anywhere.
///
/// Two threads share the work: this one walks the tree and reads files straight into a stream of
/// 1 MiB chunks (the kernel work of opening and reading ~50k files is about as long as hashing
/// them); a second one computes SHA-256 and blake3 over the chunks. At most `QUEUE + 3` chunks
/// exist at a time, so memory stays bounded.
pub fn hash_path(path: &Path) -> Result<NarDigest, NarFsError> {
    hash_chunks(path, NarHasher::new(), |h, chunk| h.update(chunk)).map(|((h, _), _)| h.finish())
}

/// How many threads [`nar_hash_path_with`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One thread reads and hashes (a file piece is hashed right after it is read, while it is
    /// still in the CPU cache), as Nix does.
    One,
    /// One thread reads, another hashes: reading (the kernel's work of opening and copying ~50k
    /// files is about half as long as hashing them) overlaps hashing. Measured faster than
    /// [`Threads::One`] on an idle machine and also with a busy-looping thread on every core (the
    /// scheduler then gives two threads a larger share than one): `buildmesh nar bench`.
    Two,
    /// [`Threads::Two`] when the process may run on more than one core, else [`Threads::One`].
    Auto,
}

impl Threads {
    /// Resolve [`Threads::Auto`] for this process.
    pub fn resolve(self) -> Threads {
        match self {
            Threads::Auto if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 => Threads::One,
            Threads::Auto => Threads::Two,
            t => t,
        }
    }
}

/// NarHash and NarSize of `path` only (what `nix hash path` computes), like [`hash_path`] without
/// blake3: the SHA-256 thread has less to do, so this is faster. Chooses the threads with
/// [`Threads::Auto`].
pub fn nar_hash_path(path: &Path) -> Result<(NixHash, u64), NarFsError> {
    nar_hash_path_with(path, Threads::Auto)
}

/// [`nar_hash_path`] on the given number of threads (both give the same result).
pub fn nar_hash_path_with(path: &Path, threads: Threads) -> Result<(NixHash, u64), NarFsError> {
    nar_hash_path_cpu(path, threads).map(|(h, _)| h)
}

/// CPU time the threads of [`nar_hash_path_cpu`] used, in seconds (for benchmarks: with two
/// threads, the larger of the two is the wall time on two free cores).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HashCpu {
    /// The thread that walks the tree and reads the files (with [`Threads::One`] it also hashes).
    pub reading: f64,
    /// The hashing thread ([`Threads::Two`]; 0 with [`Threads::One`]).
    pub hashing: f64,
}

/// [`nar_hash_path_with`], also returning the CPU time of each thread.
pub fn nar_hash_path_cpu(path: &Path, threads: Threads) -> Result<((NixHash, u64), HashCpu), NarFsError> {
    let start = thread_cpu();
    match threads.resolve() {
        Threads::One => {
            let mut nw = NarWriter::new(Sha256Sink::default())
                .map_err(|source| NarFsError::Write { path: path.to_path_buf(), source })?;
            Dumper::new(BufCopier(vec![0u8; HASH_BUF]), path).root(&mut nw)?;
            let sink = nw.finish().map_err(|source| NarFsError::Write { path: path.to_path_buf(), source })?;
            let cpu = HashCpu { reading: thread_cpu() - start, hashing: 0.0 };
            Ok(((NixHash::sha256(sink.0.finalize().into()), sink.1), cpu))
        }
        _ => {
            let ((h, size), hashing) = hash_chunks(path, sha2::Sha256::new(), |h, chunk| h.update(chunk))?;
            let cpu = HashCpu { reading: thread_cpu() - start, hashing };
            Ok(((NixHash::sha256(h.finalize().into()), size), cpu))
        }
    }
}

/// CPU time (user + system) of the calling thread, in seconds.
pub fn thread_cpu() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).map_or(0.0, |u| {
        let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        tv(u.user_time()) + tv(u.system_time())
    })
}

/// A `Write` that hashes what it is given with SHA-256 and counts it.
#[derive(Default)]
struct Sha256Sink(sha2::Sha256, u64);

impl Write for Sha256Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.update(data);
        self.1 += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Dump `path` into chunks that `update` folds into `state` on a second thread; returns the final
/// state, the NarSize and the second thread's CPU time.
fn hash_chunks<H: Send>(path: &Path, state: H, update: fn(&mut H, &[u8])) -> Result<((H, u64), f64), NarFsError> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(QUEUE);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE + 2);
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let start = thread_cpu();
            let mut state = state;
            for (chunk, len) in full_rx {
                update(&mut state, &chunk[..len]);
                let _ = empty_tx.try_send(chunk);
            }
            (state, thread_cpu() - start)
        });
        let sink = ChunkSink { buf: vec![0u8; CHUNK], filled: 0, full: full_tx, empty: empty_rx };
        // The sink, with the sender, is dropped before the join (on success and on error), which
        // ends the hashing thread's loop.
        let result = (|| {
            let wr = |source| NarFsError::Write { path: path.to_path_buf(), source };
            let mut nw = NarWriter::new(sink).map_err(wr)?;
            Dumper::new(DirectCopier, path).root(&mut nw)?;
            let size = nw.offset();
            nw.finish().map_err(wr).map(|_| size)
        })();
        let (state, cpu) = hasher.join().map_err(|_| NarFsError::Io {
            op: "hash",
            path: path.to_path_buf(),
            source: io::Error::other("the hashing thread panicked"),
        })?;
        result.map(|size| ((state, size), cpu))
    })
}

/// A `Write` that cuts the stream into chunks and sends them to the hashing thread, reusing the
/// chunks that thread sends back. File contents are read straight into its chunks
/// ([`ChunkSink::fill_from`]).
struct ChunkSink {
    /// Always `CHUNK` bytes long; `filled` of them are data.
    buf: Vec<u8>,
    filled: usize,
    full: mpsc::SyncSender<(Vec<u8>, usize)>,
    empty: mpsc::Receiver<Vec<u8>>,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        let next = self.empty.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
        let chunk = std::mem::replace(&mut self.buf, next);
        let len = std::mem::take(&mut self.filled);
        self.full.send((chunk, len)).map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    /// Read up to `max` bytes from `r` into the current chunk; `Ok(0)` at the end of `r`. A read
    /// error is stored in `read_err` (and gives `Ok(0)`); `Err` means the hashing thread is gone.
    fn fill_from(&mut self, r: &mut impl Read, max: u64, read_err: &mut Option<io::Error>) -> io::Result<usize> {
        if self.filled == CHUNK {
            self.send()?;
        }
        let room = usize::try_from(max).unwrap_or(usize::MAX).min(CHUNK - self.filled);
        let n = loop {
            match r.read(&mut self.buf[self.filled..self.filled + room]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    *read_err = Some(e);
                    return Ok(0);
                }
            }
        };
        self.filled += n;
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.filled > 0 { self.send() } else { Ok(()) }
    }
}

/// How a regular file's contents get from the file into the writer's sink.
trait Copier<W> {
    /// Supply the next piece of the file's contents (at most what is still due) to `nw`; `Ok(0)`
    /// at the end of the file.
    fn copy_some(&mut self, f: &mut File, nw: &mut NarWriter<W>) -> Result<usize, CopyError>;
}

enum CopyError {
    Read(io::Error),
    Write(NarWriteError),
}

/// Read into an own buffer, then write to any sink.
struct BufCopier(Vec<u8>);

impl<W: Write> Copier<W> for BufCopier {
    fn copy_some(&mut self, f: &mut File, nw: &mut NarWriter<W>) -> Result<usize, CopyError> {
        // `write_contents_with` tells how much is due; read at most that much.
        let buf = &mut self.0;
        let mut result = Ok(0);
        nw.write_contents_with(|w, due| {
            let want = usize::try_from(due).unwrap_or(usize::MAX).min(buf.len());
            let n = loop {
                match f.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        result = Err(CopyError::Read(e));
                        return Ok(0);
                    }
                }
            };
            w.write_all(&buf[..n])?;
            result = Ok(n);
            Ok(n)
        })
        .map_err(CopyError::Write)?;
        result
    }
}

/// Read straight into the chunks of a [`ChunkSink`].
struct DirectCopier;

impl Copier<ChunkSink> for DirectCopier {
    fn copy_some(&mut self, f: &mut File, nw: &mut NarWriter<ChunkSink>) -> Result<usize, CopyError> {
        let mut read_err = None;
        let n = nw.write_contents_with(|sink, due| sink.fill_from(f, due, &mut read_err)).map_err(CopyError::Write)?;
        match read_err {
            Some(e) => Err(CopyError::Read(e)),
            None => Ok(n),
        }
    }
}

/// Directories nested deeper than this are read by full path instead of relative to an open
/// parent directory, so a deep tree cannot exhaust the process's file descriptors (each level of
/// the relative walk keeps its directory open).
const FD_DEPTH: usize = 64;

/// Where the node being dumped is: at `Dumper::path` (the root, or below [`FD_DEPTH`]), or
/// named `name` in the open directory `dir`, for `openat` (no path walk from `/` per file).
#[derive(Clone, Copy)]
enum At<'a> {
    Path,
    In(BorrowedFd<'a>, &'a CStr),
}

/// The kind of a filesystem node, from `lstat` or a directory entry's `d_type`.
#[derive(Clone, Copy)]
enum Kind {
    Regular,
    Directory,
    Symlink,
    /// Cannot be archived: `socket`, `FIFO`, ...
    Other(&'static str),
}

impl Kind {
    fn of_file_type(ft: fs::FileType) -> Kind {
        if ft.is_file() {
            Kind::Regular
        } else if ft.is_dir() {
            Kind::Directory
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_socket() {
            Kind::Other("socket")
        } else if ft.is_fifo() {
            Kind::Other("FIFO")
        } else if ft.is_block_device() {
            Kind::Other("block device")
        } else if ft.is_char_device() {
            Kind::Other("character device")
        } else {
            Kind::Other("unknown file type")
        }
    }

    fn of_mode(mode: u32) -> Kind {
        match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFREG => Kind::Regular,
            SFlag::S_IFDIR => Kind::Directory,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFSOCK => Kind::Other("socket"),
            SFlag::S_IFIFO => Kind::Other("FIFO"),
            SFlag::S_IFBLK => Kind::Other("block device"),
            SFlag::S_IFCHR => Kind::Other("character device"),
            _ => Kind::Other("unknown file type"),
        }
    }

    fn of_entry(t: Type) -> Kind {
        match t {
            Type::File => Kind::Regular,
            Type::Directory => Kind::Directory,
            Type::Symlink => Kind::Symlink,
            Type::Socket => Kind::Other("socket"),
            Type::Fifo => Kind::Other("FIFO"),
            Type::BlockDevice => Kind::Other("block device"),
            Type::CharacterDevice => Kind::Other("character device"),
        }
    }
}

/// Walks a tree in NAR order. Below the root, nodes are opened relative to their parent
/// directory's descriptor (`openat`, `readlinkat`, `fstatat`), which spares the kernel a full
/// path lookup per file; a directory's names are gathered in one buffer (no allocation per
/// entry). Per regular file: `openat`, `fstat`, the reads, `close`.
struct Dumper<C> {
    copier: C,
    /// The path of the node being dumped (entries are pushed and popped): for `At::Path` and
    /// error messages.
    path: PathBuf,
    /// Directory nesting below the root.
    depth: usize,
}

impl<C> Dumper<C> {
    fn new(copier: C, path: &Path) -> Self {
        Dumper { copier, path: path.to_path_buf(), depth: 0 }
    }

    fn wr(&self, source: NarWriteError) -> NarFsError {
        NarFsError::Write { path: self.path.clone(), source }
    }

    /// Dump the root, `self.path`.
    fn root<W: Write>(&mut self, nw: &mut NarWriter<W>) -> Result<(), NarFsError>
    where
        C: Copier<W>,
    {
        let md = fs::symlink_metadata(&self.path).map_err(io_err("stat", &self.path))?;
        self.node(At::Path, Kind::of_file_type(md.file_type()), nw)
    }

    fn open(&self, at: At<'_>, flags: OFlag) -> Result<OwnedFd, NarFsError> {
        let flags = flags | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let fd = match at {
            At::Path => nix::fcntl::openat(nix::fcntl::AT_FDCWD, self.path.as_path(), flags, Mode::empty()),
            At::In(dir, name) => nix::fcntl::openat(dir, name, flags, Mode::empty()),
        };
        fd.map_err(|e| io_err("open", &self.path)(e.into()))
    }

    fn node<W: Write>(&mut self, at: At<'_>, kind: Kind, nw: &mut NarWriter<W>) -> Result<(), NarFsError>
    where
        C: Copier<W>,
    {
        match kind {
            Kind::Regular => self.regular(at, nw),
            Kind::Directory => self.directory(at, nw),
            Kind::Symlink => {
                let target = match at {
                    At::Path => fs::read_link(&self.path).map(PathBuf::into_os_string),
                    At::In(dir, name) => nix::fcntl::readlinkat(dir, name).map_err(io::Error::from),
                }
                .map_err(io_err("read symlink", &self.path))?;
                nw.symlink(target.as_bytes()).map_err(|e| self.wr(e))
            }
            Kind::Other(kind) => Err(NarFsError::UnsupportedFileType { path: self.path.clone(), kind }),
        }
    }

    fn regular<W: Write>(&mut self, at: At<'_>, nw: &mut NarWriter<W>) -> Result<(), NarFsError>
    where
        C: Copier<W>,
    {
        // O_NONBLOCK: if the file was replaced by a FIFO since the directory was read, opening it
        // must not hang (the type check below then fails). O_NOFOLLOW: nor follow a new symlink.
        let mut f = File::from(self.open(at, OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW)?);
        let md = f.metadata().map_err(io_err("stat", &self.path))?;
        if !md.is_file() {
            let what = "it is no longer a regular file".to_string();
            return Err(NarFsError::Changed { path: self.path.clone(), what });
        }
        let len = md.len();
        let executable = md.permissions().mode() & 0o100 != 0;
        nw.begin_regular(executable, len).map_err(|e| self.wr(e))?;
        let mut left = len;
        while left > 0 {
            match self.copier.copy_some(&mut f, nw) {
                Ok(0) => {
                    let what = format!("it shrank from {len} to {} bytes", len - left);
                    return Err(NarFsError::Changed { path: self.path.clone(), what });
                }
                Ok(n) => left -= n as u64,
                Err(CopyError::Read(e)) => return Err(io_err("read", &self.path)(e)),
                Err(CopyError::Write(e)) => return Err(self.wr(e)),
            }
        }
        nw.end_regular().map_err(|e| self.wr(e))
    }

    fn directory<W: Write>(&mut self, at: At<'_>, nw: &mut NarWriter<W>) -> Result<(), NarFsError>
    where
        C: Copier<W>,
    {
        // O_NOFOLLOW: a directory replaced by a symlink since it was listed is not followed.
        let fd = self.open(at, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW)?;
        let read_err = |e: nix::Error| io_err("read directory", &self.path)(e.into());
        let mut dir = Dir::from_fd(fd).map_err(read_err)?;
        // Names with their NUL, back to back; entries index into them.
        let mut names: Vec<u8> = Vec::new();
        let mut entries: Vec<(usize, usize, Option<Type>)> = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(read_err)?;
            let name = e.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            entries.push((names.len(), name.len(), e.file_type()));
            names.extend_from_slice(name);
        }
        // Nix sorts entries by the bytes of their names (a std::map<std::string, ...>).
        let name_of = |&(start, len, _): &(usize, usize, Option<Type>)| &names[start..start + len - 1];
        entries.sort_unstable_by(|a, b| name_of(a).cmp(name_of(b)));
        // Deep below the root, close this directory before descending and open by path.
        let dir = if self.depth < FD_DEPTH { Some(dir) } else { None };
        nw.directory().map_err(|e| self.wr(e))?;
        self.depth += 1;
        let mut result = Ok(());
        for entry in &entries {
            let name = name_of(entry);
            self.path.push(OsStr::from_bytes(name));
            result = self.entry(dir.as_ref(), &names[entry.0..entry.0 + entry.1], entry.2, nw);
            self.path.pop();
            if result.is_err() {
                break;
            }
        }
        self.depth -= 1;
        result?;
        nw.end_directory().map_err(|e| self.wr(e))
    }

    /// The entry whose name (with its NUL) is `name_nul` of the directory `dir` (`None`: open
    /// it by path), its `d_type` being `t`.
    fn entry<W: Write>(
        &mut self,
        dir: Option<&Dir>,
        name_nul: &[u8],
        t: Option<Type>,
        nw: &mut NarWriter<W>,
    ) -> Result<(), NarFsError>
    where
        C: Copier<W>,
    {
        nw.entry(&name_nul[..name_nul.len() - 1]).map_err(|e| self.wr(e))?;
        let name = CStr::from_bytes_with_nul(name_nul)
            .map_err(|e| io_err("read directory", &self.path)(io::Error::other(e)))?;
        let at = match dir {
            Some(dir) => At::In(dir.as_fd(), name),
            None => At::Path,
        };
        let kind = match t {
            Some(t) => Kind::of_entry(t),
            // No d_type from this filesystem: ask.
            None => {
                let st = match at {
                    At::In(dir, name) => nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW),
                    At::Path => nix::sys::stat::lstat(self.path.as_path()),
                };
                Kind::of_mode(st.map_err(|e| io_err("stat", &self.path)(e.into()))?.st_mode)
            }
        };
        self.node(at, kind, nw)
    }
}

/// What [`restore`] unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreStats {
    /// Bytes of NAR read (NarSize).
    pub nar_size: u64,
    /// Regular files created.
    pub files: u64,
    /// Directories created.
    pub directories: u64,
    /// Symlinks created.
    pub symlinks: u64,
}

/// Unpack the NAR read from `r` at `target`, which must not exist (its parent must). Regular files
/// get mode 0644 (0755 when executable) and directories 0755, whatever the umask, as with
/// `nix-store --restore`. Nothing is written outside `target`: names are validated by the reader,
/// and every file, directory and symlink is created exclusively (an existing path, for example from
/// a name collision on a case-insensitive filesystem, is an error, never followed). On error the
/// partly restored `target` is removed.
pub fn restore<R: BufRead>(r: R, target: &Path, limits: NarLimits) -> Result<RestoreStats, NarFsError> {
    match fs::symlink_metadata(target) {
        Ok(_) => return Err(NarFsError::TargetExists(target.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", target)(e)),
    }
    let mut created = false;
    let result = restore_inner(NarReader::new(r).with_limits(limits), target, &mut created);
    if result.is_err() && created {
        let _ = remove_tree(target);
    }
    result
}

fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            // Entries of restored directories are removable: directories are 0755.
            fs::remove_dir_all(p)
        }
        Ok(_) => fs::remove_file(p),
        Err(e) => Err(e),
    }
}

fn restore_inner<R: BufRead>(
    mut reader: NarReader<R>,
    target: &Path,
    created: &mut bool,
) -> Result<RestoreStats, NarFsError> {
    enum Ev {
        Regular(bool, u64),
        Symlink(Vec<u8>),
        Dir,
        Skip,
    }
    let mut stats = RestoreStats::default();
    let mut buf = vec![0u8; READ_BUF];
    let mut path = PathBuf::new();
    loop {
        let ev = match reader.next()? {
            None => break,
            Some(NarEvent::Regular { executable, len }) => Ev::Regular(executable, len),
            Some(NarEvent::Symlink { target }) => Ev::Symlink(target.to_vec()),
            Some(NarEvent::DirectoryStart) => Ev::Dir,
            Some(NarEvent::Entry { .. } | NarEvent::DirectoryEnd) => Ev::Skip,
        };
        if matches!(ev, Ev::Skip) {
            continue;
        }
        // The reader validated every name: the node's path is target + "/a/b".
        path.clear();
        path.push(target);
        if let Some(rel) = reader.path().strip_prefix(b"/") {
            path.push(OsStr::from_bytes(rel));
        }
        match ev {
            Ev::Dir => {
                fs::create_dir(&path).map_err(io_err("create directory", &path))?;
                *created = true;
                fs::set_permissions(&path, fs::Permissions::from_mode(MODE_DIR))
                    .map_err(io_err("set permissions of", &path))?;
                stats.directories += 1;
            }
            Ev::Symlink(t) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&t), &path).map_err(io_err("create symlink", &path))?;
                *created = true;
                stats.symlinks += 1;
            }
            Ev::Regular(executable, len) => {
                let mode = if executable { MODE_EXEC } else { MODE_FILE };
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(io_err("create file", &path))?;
                *created = true;
                f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err("set permissions of", &path))?;
                let mut left = len;
                while left > 0 {
                    let n = reader.read_contents(&mut buf)?;
                    f.write_all(&buf[..n]).map_err(io_err("write", &path))?;
                    left -= n as u64;
                }
                stats.files += 1;
            }
            Ev::Skip => {}
        }
    }
    stats.nar_size = reader.offset();
    Ok(stats)
}

#[cfg(test)]
#[path = "nar_fs_tests.rs"]
mod tests;
