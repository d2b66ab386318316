//! Content-addressed NAR blob files: `blobs/<2 hex>/<64 hex blake3>.nar.zst`.
//!
//! A blob is the zstd-compressed NAR, named after the blake3 of the *uncompressed* NAR. It is
//! written to `blobs/.tmp-*` (same filesystem), fsynced, renamed into its shard directory and the
//! directory fsynced, so a blob file under its final name is always complete. The database row in
//! `blobs` is committed only after that, so a crash leaves at most an unreferenced temp file, which
//! [`BlobDir::remove_temp_files`] deletes on the next open.
//!
//! Reading a blob back ([`NarBlobReader`]) checks its blake3 id and length at the end of the
//! stream, unless this process already verified the same file ([`super::verified`]: verify once
//! per process; the module docs there say what that trades). A large blob read for serving
//! ([`BlobDir::reader_for_serving`]) is also written out uncompressed as it is read, and served
//! from that copy afterwards ([`super::plain`]).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::nar::{NarDigest, NarHasher};

use super::StoreError;
use super::plain::{PlainCopies, PlainReader, PlainWriter};
use super::verified::{FileStamp, VerifiedBlobs};

/// Prefix of temporary blob files.
const TEMP_PREFIX: &str = ".tmp-";
/// Directory (under the blob directory) of the plain copies.
const PLAIN_DIR: &str = ".plain";
/// Suffix of blob files.
const BLOB_SUFFIX: &str = ".nar.zst";
/// Read chunk size when streaming a NAR in.
const CHUNK: usize = 256 * 1024;
/// Buffer of compressed bytes when reading a blob back (zstd decompresses straight into the
/// caller's buffer).
const READ_BUFFER: usize = 256 * 1024;

/// The blob directory.
#[derive(Debug, Clone)]
pub(crate) struct BlobDir {
    root: PathBuf,
    level: i32,
    /// Blobs whose full check passed in this process (shared by clones).
    verified: Arc<VerifiedBlobs>,
    /// Uncompressed copies of large verified blobs, for serving (shared by clones).
    plain: Arc<PlainCopies>,
}

/// A stored NAR opened for serving ([`BlobDir::reader_for_serving`]).
#[derive(Debug)]
pub enum ServedNar {
    /// The blob's plain copy made by this process (read as a file; see [`super::plain`]).
    Plain(PlainReader),
    /// The blob itself, decompressed and checked as it is read (a large one also writes its
    /// plain copy).
    Blob(Box<NarBlobReader>),
}

impl Read for ServedNar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServedNar::Plain(r) => r.read(buf),
            ServedNar::Blob(r) => r.read(buf),
        }
    }
}

/// What a size/hash check of an incoming NAR expects.
#[derive(Debug, Clone)]
pub(crate) struct Expected<'a> {
    pub(crate) nar_hash: &'a NixHash,
    pub(crate) nar_size: u64,
}

/// A blob written to its final name (not yet recorded in the database).
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) digest: NarDigest,
    pub(crate) compressed_size: u64,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

/// Counts bytes written through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobDir {
    /// Open (creating) the blob directory, with at most `plain_budget` bytes of plain copies
    /// (in `.plain/`; those of an earlier process are deleted).
    pub(crate) fn open(root: PathBuf, level: i32, plain_budget: u64) -> Result<BlobDir, StoreError> {
        fs::create_dir_all(&root).map_err(io_err(&root, "create blob directory"))?;
        let plain = Arc::new(PlainCopies::open(root.join(PLAIN_DIR), plain_budget)?);
        Ok(BlobDir { root, level, verified: Arc::default(), plain })
    }

    /// The final file name of a blob.
    pub(crate) fn path_of(&self, id: &ArtifactHash) -> PathBuf {
        let hex = id.to_string();
        self.root.join(&hex[..2]).join(format!("{hex}{BLOB_SUFFIX}"))
    }

    /// The directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Unlink a blob's file (and its plain copy); a missing file is fine.
    pub(crate) fn remove_blob_file(&self, id: &ArtifactHash) -> Result<(), StoreError> {
        self.plain.forget(id);
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, "remove blob")(e)),
        }
    }

    /// Every blob file under its final name, with its length.
    pub(crate) fn list_blob_files(&self) -> Result<Vec<(ArtifactHash, u64)>, StoreError> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.root).map_err(io_err(&self.root, "list blob directory"))? {
            let shard = shard.map_err(io_err(&self.root, "list blob directory"))?;
            let name = shard.file_name();
            let name = name.to_string_lossy();
            if name.len() != 2 || !shard.path().is_dir() {
                continue;
            }
            let dir = shard.path();
            for entry in fs::read_dir(&dir).map_err(io_err(&dir, "list blob shard"))? {
                let entry = entry.map_err(io_err(&dir, "list blob shard"))?;
                let file = entry.file_name();
                let Some(hex) = file.to_str().and_then(|f| f.strip_suffix(BLOB_SUFFIX)) else { continue };
                let Ok(id) = hex.parse::<ArtifactHash>() else { continue };
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((id, len));
            }
        }
        Ok(out)
    }

    /// Delete temp files left by a crash. Call only while holding the database (exclusive).
    pub(crate) fn remove_temp_files(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root, "list blob directory"))? {
            let entry = entry.map_err(io_err(&self.root, "list blob directory"))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err(&path, "remove temp blob"))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.root)?;
        }
        Ok(removed)
    }

    /// Stream `reader` into a new blob, hashing it on the way. With `expected`, stop as soon as the
    /// NAR is longer than expected and check the NarHash at the end; on any error the temp file is
    /// deleted and nothing becomes visible.
    pub(crate) fn write(&self, reader: &mut dyn Read, expected: Option<Expected<'_>>) -> Result<Written, StoreError> {
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.root)
            .map_err(io_err(&self.root, "create temp blob"))?;
        let temp_path = temp.path().to_path_buf();
        let file = temp.as_file().try_clone().map_err(io_err(&temp_path, "open temp blob"))?;
        let counting = Counting { inner: BufWriter::with_capacity(CHUNK, file), count: 0 };
        let mut encoder =
            zstd::stream::Encoder::new(counting, self.level).map_err(io_err(&temp_path, "start zstd encoder"))?;
        let mut hasher = NarHasher::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(StoreError::Input { source }),
            };
            hasher.update(&buf[..n]);
            if let Some(exp) = &expected
                && hasher.len() > exp.nar_size
            {
                return Err(StoreError::NarSizeMismatch { expected: exp.nar_size, actual_at_least: hasher.len() });
            }
            encoder.write_all(&buf[..n]).map_err(io_err(&temp_path, "write temp blob"))?;
        }
        let counting = encoder.finish().map_err(io_err(&temp_path, "finish zstd stream"))?;
        let compressed_size = counting.count;
        let file = counting.inner.into_inner().map_err(|e| StoreError::Io {
            op: "flush temp blob",
            path: temp_path.clone(),
            source: e.into_error(),
        })?;
        let digest = hasher.finish();
        if let Some(exp) = &expected {
            if digest.nar_size != exp.nar_size {
                return Err(StoreError::NarSizeMismatch { expected: exp.nar_size, actual_at_least: digest.nar_size });
            }
            if &digest.nar_hash != exp.nar_hash {
                return Err(StoreError::NarHashMismatch {
                    expected: exp.nar_hash.clone(),
                    actual: digest.nar_hash.clone(),
                });
            }
        }
        file.sync_all().map_err(io_err(&temp_path, "fsync temp blob"))?;
        drop(file);

        let id = ArtifactHash::from_bytes(digest.blake3);
        let final_path = self.path_of(&id);
        let shard = final_path.parent().unwrap_or(&self.root).to_path_buf();
        if !shard.is_dir() {
            fs::create_dir_all(&shard).map_err(io_err(&shard, "create blob shard"))?;
            sync_dir(&self.root)?;
        }
        // Replacing an existing file of the same name is harmless (same content) and repairs a
        // damaged copy.
        temp.persist(&final_path).map_err(|e| StoreError::Io {
            op: "rename temp blob into place",
            path: final_path.clone(),
            source: e.error,
        })?;
        sync_dir(&shard)?;
        // What was just written hashed to its id on the way in.
        if let Ok(meta) = fs::metadata(&final_path) {
            self.verified.insert(id, FileStamp::of(&meta));
        }
        Ok(Written { digest, compressed_size })
    }

    /// Open the compressed file of a blob.
    pub(crate) fn open_compressed(&self, id: &ArtifactHash) -> Result<File, StoreError> {
        let path = self.path_of(id);
        File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StoreError::BlobMissing { blob: *id, path }
            } else {
                StoreError::Io { op: "open blob", path, source }
            }
        })
    }

    /// A decompressing reader that checks the length at the end of the stream, and blake3 too
    /// unless this process verified the same file already (see [`super::verified`]).
    pub(crate) fn reader(&self, id: &ArtifactHash, nar_size: u64) -> Result<NarBlobReader, StoreError> {
        let path = self.path_of(id);
        let file = self.open_compressed(id)?;
        let stamp = FileStamp::of(&file.metadata().map_err(io_err(&path, "stat blob"))?);
        let verified = self.verified.contains(id, &stamp);
        let decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(READ_BUFFER, file))
            .map_err(io_err(&path, "start zstd decoder"))?;
        Ok(NarBlobReader {
            decoder,
            id: *id,
            nar_size,
            hasher: (!verified).then(blake3::Hasher::new),
            verified: Arc::clone(&self.verified),
            stamp,
            read: 0,
            checked: false,
            copy: None,
        })
    }

    /// A NAR to serve: the blob's plain copy when this process made one (see [`super::plain`]),
    /// else [`BlobDir::reader`], which for a large blob also writes its plain copy as it is read.
    pub(crate) fn reader_for_serving(&self, id: &ArtifactHash, nar_size: u64) -> Result<ServedNar, StoreError> {
        if let Some(copy) = self.plain.open_copy(id, nar_size) {
            return Ok(ServedNar::Plain(copy));
        }
        let mut reader = self.reader(id, nar_size)?;
        reader.copy = self.plain.start(id, nar_size);
        Ok(ServedNar::Blob(Box::new(reader)))
    }

    /// Re-read a blob completely and return its digest and the stamp of the file read (for
    /// [`super::Store::verify_nar`], which calls [`BlobDir::mark_verified`] when it matches).
    pub(crate) fn digest(&self, id: &ArtifactHash) -> Result<(NarDigest, FileStamp), StoreError> {
        let path = self.path_of(id);
        let file = self.open_compressed(id)?;
        let stamp = FileStamp::of(&file.metadata().map_err(io_err(&path, "stat blob"))?);
        let mut decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(READ_BUFFER, file))
            .map_err(io_err(&path, "start zstd decoder"))?;
        let mut hasher = NarHasher::new();
        io::copy(&mut decoder, &mut hasher)
            .map_err(|e| StoreError::BlobCorrupt { blob: *id, reason: format!("cannot decompress: {e}") })?;
        Ok((hasher.finish(), stamp))
    }

    /// Remember that the blob `id` (its file with `stamp`) passed a full check, or forget it
    /// (`ok == false`).
    pub(crate) fn mark_verified(&self, id: &ArtifactHash, stamp: FileStamp, ok: bool) {
        if ok {
            self.verified.insert(*id, stamp);
        } else {
            self.verified.remove(id);
            self.plain.forget(id);
        }
    }

    /// Bytes of plain copies in place (tests).
    #[cfg(test)]
    pub(crate) fn plain_bytes(&self) -> u64 {
        self.plain.bytes()
    }

    /// Whether the blob `id` is in this process's verified set with its current file (tests).
    #[cfg(test)]
    pub(crate) fn is_verified(&self, id: &ArtifactHash) -> bool {
        fs::metadata(self.path_of(id)).is_ok_and(|m| self.verified.contains(id, &FileStamp::of(&m)))
    }
}

/// fsync a directory so a rename or create in it is durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir, "fsync directory"))
}

/// A stored NAR, decompressed as it is read. At the end of the stream it checks the length and,
/// unless this process verified the same blob file before, the blake3 id, and fails with
/// [`io::ErrorKind::InvalidData`] on a mismatch, so a damaged blob never reads as a complete,
/// valid NAR the first time it is read in a process ([`super::verified`] says what a later
/// read trades). A read whose check passed adds the blob to the verified set.
pub struct NarBlobReader {
    decoder: zstd::stream::read::Decoder<'static, BufReader<File>>,
    id: ArtifactHash,
    nar_size: u64,
    /// `None` when the blob was verified in this process already.
    hasher: Option<blake3::Hasher>,
    verified: Arc<VerifiedBlobs>,
    stamp: FileStamp,
    read: u64,
    checked: bool,
    /// The plain copy this read writes (put in place when the read's checks pass).
    copy: Option<PlainWriter>,
}

impl std::fmt::Debug for NarBlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarBlobReader")
            .field("id", &self.id)
            .field("nar_size", &self.nar_size)
            .field("read", &self.read)
            .field("hashing", &self.hasher.is_some())
            .finish()
    }
}

impl NarBlobReader {
    /// The NAR's length (uncompressed).
    pub fn nar_size(&self) -> u64 {
        self.nar_size
    }

    fn corrupt(&self, reason: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("NAR blob {} is corrupt: {reason}", self.id))
    }
}

impl Read for NarBlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.decoder.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.verified.remove(&self.id);
                self.copy = None;
                return Err(self.corrupt(format!("cannot decompress: {e}")));
            }
        };
        if n > 0 {
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..n]);
            }
            self.read += n as u64;
            if self.read > self.nar_size {
                self.copy = None;
                return Err(self.corrupt(format!("longer than its NarSize {}", self.nar_size)));
            }
            if let Some(c) = &mut self.copy {
                c.write(&buf[..n]);
            }
            return Ok(n);
        }
        if !self.checked {
            if self.read != self.nar_size {
                self.verified.remove(&self.id);
                self.copy = None;
                return Err(self.corrupt(format!("{} bytes, NarSize says {}", self.read, self.nar_size)));
            }
            if let Some(h) = &self.hasher {
                if h.finalize().as_bytes() != self.id.as_bytes() {
                    self.verified.remove(&self.id);
                    self.copy = None;
                    return Err(self.corrupt("content does not hash to its id".to_string()));
                }
                self.verified.insert(self.id, self.stamp);
            }
            self.checked = true;
            // Only now, with every check passed, does the plain copy go in place.
            if let Some(c) = self.copy.take() {
                c.finish();
            }
        }
        Ok(0)
    }
}
