//! Uncompressed copies of large blobs this process verified ("plain copies", issue 11 item 3).
//!
//! Serving `.nar` from a blob decompresses it on every download: on four connections on two
//! cores that CPU (zstd, plus copying the stored bytes out of the decoder's buffer) kept the node
//! below harmonia, which sends files from the page cache. So the first download of a large blob
//! in a process ([`PLAIN_MIN`] bytes or more) also writes what it decompresses to
//! `blobs/.plain/<blake3>.nar`; when that read ends with its checks passed (the blake3 id, or the
//! blob is in the verified set, and the length), the copy is put in place, and later downloads
//! read the copy as a plain file (one copy from the page cache, as harmonia does).
//!
//! **Integrity: the same trade as verify-once** ([`super::verified`]). A copy is made only from a
//! read that passed its checks, so it holds exactly the verified NAR; one whose read failed is
//! deleted, never used. A copy is used only while its file has the identity (device, inode,
//! length, mtime) it had when this process wrote it; a copy damaged in place after that is served
//! whole and the client's `NarHash` check catches it, not the node. The copies live for one
//! process: [`PlainCopies::open`] deletes what an earlier process left, since nothing vouches for
//! it.
//!
//! Bounded: at most [`super::StoreOptions::plain_copy_bytes`] bytes of copies (least recently
//! used deleted first; a copy being sent stays readable until its reader closes it); `0` turns
//! them off.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use buildmesh_protocol::id::ArtifactHash;

use super::StoreError;
use super::verified::FileStamp;

/// NARs smaller than this are not copied: they cost little to decompress, and a copy costs a file.
pub const PLAIN_MIN: u64 = 4 << 20;

/// The plain copies of one store (see the module docs). Shared by every clone of a store.
#[derive(Debug)]
pub(crate) struct PlainCopies {
    dir: PathBuf,
    budget: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The copies in place.
    copies: HashMap<ArtifactHash, PlacedCopy>,
    /// The copies being written (one writer per blob).
    making: HashSet<ArtifactHash>,
    /// Bytes of the copies in place.
    bytes: u64,
    /// Use counter (for least-recently-used eviction).
    tick: u64,
}

/// A copy in place: its file's identity when written, its length, its last use.
#[derive(Debug, Clone, Copy)]
struct PlacedCopy {
    stamp: FileStamp,
    len: u64,
    used: u64,
}

impl PlainCopies {
    /// The copies under `dir` (created by the first copy), at most `budget` bytes; what an
    /// earlier process left there is deleted.
    pub(crate) fn open(dir: PathBuf, budget: u64) -> Result<PlainCopies, StoreError> {
        match fs::remove_dir_all(&dir) {
            Err(source) if source.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::Io { op: "delete old plain copies", path: dir, source });
            }
            _ => {}
        }
        // Created by the first copy (`start`).
        Ok(PlainCopies { dir, budget, state: Mutex::default() })
    }

    fn path_of(&self, id: &ArtifactHash) -> PathBuf {
        self.dir.join(format!("{id}.nar"))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The plain copy of blob `id` (a NAR of `nar_size` bytes), when this process made one and
    /// its file is unchanged; a reader that fails if the file ends before `nar_size` bytes.
    pub(crate) fn open_copy(&self, id: &ArtifactHash, nar_size: u64) -> Option<PlainReader> {
        let stamp = {
            let mut st = self.state();
            st.tick += 1;
            let tick = st.tick;
            let copy = st.copies.get_mut(id)?;
            copy.used = tick;
            copy.stamp
        };
        let file = File::open(self.path_of(id)).ok();
        let same = file.as_ref().and_then(|f| f.metadata().ok()).is_some_and(|m| FileStamp::of(&m) == stamp);
        match file {
            Some(file) if same && stamp.file_len() == nar_size => Some(PlainReader { file, pos: 0, left: nar_size }),
            _ => {
                self.forget(id);
                None
            }
        }
    }

    /// Start the plain copy of blob `id` (`nar_size` bytes), unless it is too small or too big,
    /// exists, or is being made.
    pub(crate) fn start(self: &Arc<Self>, id: &ArtifactHash, nar_size: u64) -> Option<PlainWriter> {
        if nar_size < PLAIN_MIN || nar_size > self.budget {
            return None;
        }
        {
            let mut st = self.state();
            if st.copies.contains_key(id) || !st.making.insert(*id) {
                return None;
            }
        }
        let mut writer =
            PlainWriter { copies: Arc::clone(self), id: *id, nar_size, temp: None, written: 0, placed: false };
        let temp = fs::create_dir_all(&self.dir)
            .and_then(|()| tempfile::Builder::new().prefix(".tmp-").tempfile_in(&self.dir));
        match temp {
            Ok(t) => {
                writer.temp = Some(t);
                Some(writer)
            }
            Err(e) => {
                tracing::debug!(cause = %e, "cannot start a plain copy");
                None // `writer` is dropped: no longer being made
            }
        }
    }

    /// Forget (and delete) the copy of `id`: its blob failed a check, or its file changed.
    pub(crate) fn forget(&self, id: &ArtifactHash) {
        let mut st = self.state();
        if let Some(c) = st.copies.remove(id) {
            st.bytes -= c.len;
            let _ = fs::remove_file(self.path_of(id));
        }
    }

    /// Put a finished copy in place and delete the least recently used ones over the budget.
    fn put(&self, id: ArtifactHash, temp: tempfile::NamedTempFile, len: u64) {
        let path = self.path_of(&id);
        let placed = temp.persist(&path).map_err(|e| e.error).and_then(|f| f.metadata());
        let mut st = self.state();
        st.making.remove(&id);
        let meta = match placed {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(cause = %e, "cannot put a plain copy in place");
                let _ = fs::remove_file(&path);
                return;
            }
        };
        st.tick += 1;
        let used = st.tick;
        if let Some(old) = st.copies.insert(id, PlacedCopy { stamp: FileStamp::of(&meta), len, used }) {
            st.bytes -= old.len;
        }
        st.bytes += len;
        while st.bytes > self.budget {
            let Some((old, c)) = st.copies.iter().min_by_key(|(_, c)| c.used).map(|(k, c)| (*k, *c)) else { break };
            st.copies.remove(&old);
            st.bytes -= c.len;
            let _ = fs::remove_file(self.path_of(&old));
        }
    }

    /// Bytes of the copies in place (tests).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.state().bytes
    }
}

/// A plain copy being written, fed by [`super::NarBlobReader`] as it is read; put in place by
/// [`PlainWriter::finish`] once that read passed its checks, deleted when dropped otherwise.
/// Failing to write it never fails the read: the copy is just abandoned.
#[derive(Debug)]
pub(crate) struct PlainWriter {
    copies: Arc<PlainCopies>,
    id: ArtifactHash,
    nar_size: u64,
    temp: Option<tempfile::NamedTempFile>,
    written: u64,
    /// Handed to [`PlainCopies::put`].
    placed: bool,
}

impl PlainWriter {
    /// Append what the read gave.
    pub(crate) fn write(&mut self, data: &[u8]) {
        if let Some(t) = &mut self.temp {
            if let Err(e) = t.write_all(data) {
                tracing::debug!(cause = %e, "plain copy abandoned");
                self.temp = None;
            } else {
                self.written += data.len() as u64;
            }
        }
    }

    /// The read ended with its checks passed: put the copy in place.
    pub(crate) fn finish(mut self) {
        if let Some(t) = self.temp.take()
            && self.written == self.nar_size
        {
            self.placed = true;
            self.copies.put(self.id, t, self.written);
        }
    }
}

impl Drop for PlainWriter {
    fn drop(&mut self) {
        // A copy put in place left `making` in `put`; an abandoned one (its temp file is deleted
        // with it) leaves it here.
        if !self.placed {
            self.copies.state().making.remove(&self.id);
        }
    }
}

/// A plain copy as it is read: fails with [`io::ErrorKind::UnexpectedEof`] if the file ends
/// before the NAR's length (a copy truncated while it is sent never reads as complete).
///
/// Reads are positioned (`pread`), so [`PlainReader::read_at_hand`] can try a read that only
/// copies from the page cache and never waits for the disk (issue 11 item 3).
#[derive(Debug)]
pub struct PlainReader {
    file: File,
    /// Offset of the next read in the file.
    pos: u64,
    /// Bytes still to read.
    left: u64,
}

impl PlainReader {
    /// Skip the first `offset` bytes (a range).
    pub fn skip(&mut self, offset: u64) -> io::Result<()> {
        self.pos = offset;
        self.left = self.left.saturating_sub(offset);
        Ok(())
    }

    /// Read at most `len` more bytes (the end of a range).
    pub fn limit(&mut self, len: u64) {
        self.left = self.left.min(len);
    }

    /// A read that does not wait for the disk: bytes already in the page cache (`preadv2` with
    /// `RWF_NOWAIT`), `Some(Ok(0))` at the end, `None` when the next bytes are not cached (or the
    /// file system cannot say), in which case [`Read::read`] is the way, in a blocking task.
    ///
    /// Why: a large NAR served from its plain copy is read from the page cache; a blocking task
    /// per chunk cost the node two futex wake-ups and a thread hop per 512 KiB (strace: 71,676
    /// futex calls in 5 s against harmonia's 132, which reads in its worker threads), about a
    /// tenth of its CPU per byte on four connections.
    pub fn read_at_hand(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        if self.left == 0 || buf.is_empty() {
            return Some(Ok(0));
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        match pread_at_hand(&self.file, &mut buf[..want], self.pos)? {
            Ok(0) => Some(Err(truncated())),
            Ok(n) => {
                self.advance(n);
                Some(Ok(n))
            }
            Err(e) => Some(Err(e)),
        }
    }

    fn advance(&mut self, n: usize) {
        self.pos += n as u64;
        self.left -= n as u64;
    }
}

/// Read `buf.len()` bytes at `pos` of `file` if they are in the page cache (`preadv2` with
/// `RWF_NOWAIT`; a short read when only some are): `None` when not even the first is, or when the
/// file system cannot tell (then read it in a blocking task). `Some(Ok(0))` is the end of the file.
pub fn pread_at_hand(file: &File, buf: &mut [u8], pos: u64) -> Option<io::Result<usize>> {
    let mut slices = [io::IoSliceMut::new(buf)];
    match rustix::io::preadv2(file, &mut slices, pos, rustix::io::ReadWriteFlags::NOWAIT) {
        Ok(n) => Some(Ok(n)),
        Err(rustix::io::Errno::INTR) => Some(Err(io::ErrorKind::Interrupted.into())),
        // EAGAIN: not in the page cache; EOPNOTSUPP and others: the blocking read will tell.
        Err(_) => None,
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "plain NAR copy is shorter than its NarSize")
}

impl Read for PlainReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(truncated());
        }
        self.advance(n);
        Ok(n)
    }
}
