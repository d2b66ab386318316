//! The blobs whose full blake3 check passed in this process ("verify once per process", issue 11
//! item 3).
//!
//! Serving `.nar` decompresses the blob and, the first time, hashes it with blake3 against its
//! id ([`super::NarBlobReader`]). A blob whose check passed (a complete streamed read, a
//! [`super::Store::verify_nar`], or its own write) is remembered here with the identity of its
//! file (device, inode, length, modification time); later reads of the same file skip the blake3
//! hashing (they still decompress and check the length), which is most of the CPU a `.nar`
//! download costs next to decompression.
//!
//! **What this trades**: a blob damaged on disk *after* its first verified read in this process,
//! in place (same inode, length and mtime: a bit flip under the filesystem), is served whole; the
//! client's own check catches it (Nix compares the narinfo's `NarHash` with what it received and
//! refuses the path), not the node. A blob whose file was replaced or rewritten (another inode,
//! length or mtime) is checked again, and so is every blob after a restart: the set lives in
//! memory only. A blob not in the set is checked while it streams, and its last chunk is held
//! back until the check passed, so a damaged blob never yields a complete body on its first serve
//! in a process.
//!
//! Bounded: two generations of at most [`VERIFIED_ENTRIES`] ids each (about 100 bytes an entry);
//! a forgotten blob is simply checked again.

use std::fs::Metadata;

use buildmesh_protocol::id::ArtifactHash;

use crate::bounded_cache::BoundedCache;

/// Blob ids kept per generation (at most twice this many).
pub const VERIFIED_ENTRIES: usize = 16384;

/// The identity of a blob file: another file under the same name (a repair, a swap, a rewrite)
/// has another one, and is checked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of an open file's metadata.
    pub fn of(meta: &Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt as _;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// The file's length.
    pub fn file_len(&self) -> u64 {
        self.len
    }
}

/// The set of verified blobs (see the module docs). Shared by every clone of a store.
#[derive(Debug, Default)]
pub struct VerifiedBlobs {
    inner: BoundedCache<ArtifactHash, FileStamp, VERIFIED_ENTRIES>,
}

impl VerifiedBlobs {
    /// Whether the blob `id`, whose file now has `stamp`, passed its check in this process.
    pub fn contains(&self, id: &ArtifactHash, stamp: &FileStamp) -> bool {
        self.inner.get(id).is_some_and(|s| &s == stamp)
    }

    /// Remember that the blob `id`, whose file has `stamp`, passed its full check.
    pub fn insert(&self, id: ArtifactHash, stamp: FileStamp) {
        self.inner.insert(id, stamp);
    }

    /// Forget the blob `id` (its check failed).
    pub fn remove(&self, id: &ArtifactHash) {
        self.inner.remove(id);
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ino: u64) -> FileStamp {
        FileStamp { dev: 1, ino, len: 10, mtime_ns: 5 }
    }

    #[test]
    fn bounded_and_keyed_by_the_file() {
        let v = VerifiedBlobs::default();
        let hot = ArtifactHash::from_bytes([1; 32]);
        v.insert(hot, stamp(1));
        assert!(v.contains(&hot, &stamp(1)));
        assert!(!v.contains(&hot, &stamp(2)), "another file under the same name is checked again");
        for i in 0..VERIFIED_ENTRIES as u64 * 3 {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&i.to_le_bytes());
            b[31] = 9;
            v.insert(ArtifactHash::from_bytes(b), stamp(i));
            if i % 1000 == 0 {
                assert!(v.contains(&hot, &stamp(1)), "at {i}");
            }
        }
        assert!(v.len() <= 2 * VERIFIED_ENTRIES);
        v.remove(&hot);
        assert!(!v.contains(&hot, &stamp(1)));
    }
}
