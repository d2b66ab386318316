//! What garbage collection needs from the store: operator pins, last access of blobs, an
//! inventory of the blobs with the paths that name them, and the crash-safe removal of one blob.
//!
//! The policy (what is pinned, when to collect, how much) lives in `crate::gc`; this module only
//! keeps the store consistent while it shrinks.
//!
//! ## Crash safety
//! [`Store::collect_blob`] first commits one transaction that deletes the blob's row, its NarHash
//! index row and every `paths` row naming it, and only then unlinks the file. So a `kill -9` at
//! any point leaves either everything (nothing committed) or an unreferenced file (committed, not
//! yet unlinked), which [`Store::sweep_orphan_blobs`] deletes later; never a row naming a
//! half-deleted or missing file. Attestations and failures are never touched: a collected output
//! stays attested, and a peer that holds it can serve it back.
//!
//! Writing a blob ([`Store::put_nar`]) and collecting one exclude each other through a lock, so a
//! blob that is written again while it is being collected is never recorded with its file unlinked
//! behind it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::PoisonError;

use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::store_path::StorePath;
use redb::{ReadableTable, TableDefinition};

use super::records::{BlobRow, decode};
use super::tables::{BLOBS, BLOBS_BY_NAR_HASH, PATHS};
use super::trust_index::NAR_HASH_PATHS;
use super::{DbResultExt, PathInfo, Store, StoreError, unix_ms};

/// `gc_pins`: store path basename -> pinned at (Unix ms, u64): paths the operator pinned with
/// `buildmesh pin` (kept with their references whatever the limits).
pub(crate) const GC_PINS: TableDefinition<&str, u64> = TableDefinition::new("gc_pins");

/// `blob_access`: blake3 id -> the last time (Unix ms) the blob was served or stored, as last
/// flushed by [`Store::flush_blob_access`] (the newest accesses are kept in memory until then).
pub(crate) const BLOB_ACCESS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("blob_access");

/// One stored blob as garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcBlob {
    /// Its id.
    pub blob: ArtifactHash,
    /// Its compressed size on disk.
    pub compressed_size: u64,
    /// Its uncompressed NAR size (what a realised copy of it takes).
    pub nar_size: u64,
    /// The registered paths that name it (usually one).
    pub paths: Vec<PathInfo>,
    /// The last time it was stored, registered or served (Unix ms).
    pub last_access: u64,
}

impl Store {
    /// Pin `path` for the operator (kept with its references by the collector). Returns whether it
    /// was not pinned before.
    pub fn pin_path(&self, path: &StorePath) -> Result<bool, StoreError> {
        let key = path.to_string();
        self.write(|w| {
            let mut pins = w.txn.open_table(GC_PINS).ctx("opening table gc_pins")?;
            let old = pins.insert(key.as_str(), unix_ms()).ctx("writing gc_pins")?.map(|v| v.value());
            Ok(old.is_none())
        })
    }

    /// Remove the operator's pin of `path`. Returns whether it was pinned.
    pub fn unpin_path(&self, path: &StorePath) -> Result<bool, StoreError> {
        let key = path.to_string();
        self.write(|w| {
            let mut pins = w.txn.open_table(GC_PINS).ctx("opening table gc_pins")?;
            let old = pins.remove(key.as_str()).ctx("writing gc_pins")?.map(|v| v.value());
            Ok(old.is_some())
        })
    }

    /// The operator's pins, in basename order.
    pub fn pinned_paths(&self) -> Result<Vec<StorePath>, StoreError> {
        let txn = self.read()?;
        let pins = txn.open_table(GC_PINS).ctx("opening table gc_pins")?;
        let mut out = Vec::new();
        for item in pins.iter().ctx("scanning gc_pins")? {
            let (k, _) = item.ctx("scanning gc_pins")?;
            let key = k.value();
            let path = StorePath::from_basename(key).map_err(|e| StoreError::Corrupt {
                table: "gc_pins",
                key: key.to_string(),
                reason: e.to_string(),
            })?;
            out.push(path);
        }
        Ok(out)
    }

    /// Note that `blob` was used now (served, or written again). Kept in memory; persisted by
    /// [`Store::flush_blob_access`].
    pub fn note_blob_access(&self, blob: &ArtifactHash) {
        self.inner.access.lock().unwrap_or_else(PoisonError::into_inner).insert(*blob, unix_ms());
    }

    /// Write the accesses noted in memory to `blob_access` (the collector does before each run).
    pub fn flush_blob_access(&self) -> Result<usize, StoreError> {
        let noted: Vec<(ArtifactHash, u64)> =
            std::mem::take(&mut *self.inner.access.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        if noted.is_empty() {
            return Ok(0);
        }
        let n = noted.len();
        self.write(|w| {
            let blobs = w.txn.open_table(BLOBS).ctx("opening table blobs")?;
            let mut access = w.txn.open_table(BLOB_ACCESS).ctx("opening table blob_access")?;
            for (id, at) in &noted {
                // A blob collected meanwhile gets no row.
                if blobs.get(id.as_bytes()).ctx("reading blobs")?.is_some() {
                    access.insert(id.as_bytes(), *at).ctx("writing blob_access")?;
                }
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// Every stored blob with its paths and last access, oldest access first.
    pub fn gc_inventory(&self) -> Result<Vec<GcBlob>, StoreError> {
        let memory = self.inner.access.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let txn = self.read()?;
        let mut by_blob: BTreeMap<ArtifactHash, Vec<PathInfo>> = BTreeMap::new();
        let paths = txn.open_table(PATHS).ctx("opening table paths")?;
        for item in paths.iter().ctx("scanning paths")? {
            let (k, v) = item.ctx("scanning paths")?;
            let info = decode::<PathInfo>("paths", &k.value(), v.value())?;
            by_blob.entry(info.blob).or_default().push(info);
        }
        let access = txn.open_table(BLOB_ACCESS).ctx("opening table blob_access")?;
        let blobs = txn.open_table(BLOBS).ctx("opening table blobs")?;
        let mut out = Vec::new();
        for item in blobs.iter().ctx("scanning blobs")? {
            let (k, v) = item.ctx("scanning blobs")?;
            let id = ArtifactHash::from_bytes(*k.value());
            let row = decode::<BlobRow>("blobs", &id, v.value())?;
            let paths = by_blob.remove(&id).unwrap_or_default();
            let stored = access.get(id.as_bytes()).ctx("reading blob_access")?.map(|v| v.value()).unwrap_or(0);
            let registered = paths.iter().map(|p| p.registered_at).max().unwrap_or(0);
            let last_access = stored.max(registered).max(memory.get(&id).copied().unwrap_or(0));
            out.push(GcBlob {
                blob: id,
                compressed_size: row.compressed_size,
                nar_size: row.nar_size,
                paths,
                last_access,
            });
        }
        out.sort_by_key(|b| (b.last_access, b.blob));
        Ok(out)
    }

    /// Remove `blob` and the registrations of `paths` naming it, crash-safely (module docs).
    /// Nothing is removed (`Ok(false)`) when the set of paths naming it changed since `paths` was
    /// read (a registration came in meanwhile: the caller's decision is stale).
    pub fn collect_blob(&self, blob: &ArtifactHash, paths: &[StorePath]) -> Result<bool, StoreError> {
        let _exclusive = self.inner.gc_lock.write().unwrap_or_else(PoisonError::into_inner);
        let expected: BTreeSet<String> = paths.iter().map(|p| p.to_string()).collect();
        let removed = self.write(|w| {
            let Some(row) = w
                .txn
                .open_table(BLOBS)
                .ctx("opening table blobs")?
                .get(blob.as_bytes())
                .ctx("reading blobs")?
                .map(|v| v.value().to_vec())
            else {
                return Ok(false);
            };
            let row = decode::<BlobRow>("blobs", blob, &row)?;
            let sha = super::paths::sha256_digest(&row.nar_hash);
            // Every path naming the blob carries its NarHash, so the NarHash index finds them all.
            let mut naming = BTreeSet::new();
            let mut table = w.txn.open_table(PATHS).ctx("opening table paths")?;
            if let Some(sha) = &sha {
                let index = w.txn.open_table(NAR_HASH_PATHS).ctx("opening table nar_hash_paths")?;
                let lo: (&[u8; 32], &str) = (sha, "");
                for item in index.range(lo..).ctx("scanning nar_hash_paths")? {
                    let (k, _) = item.ctx("scanning nar_hash_paths")?;
                    let (h, name) = k.value();
                    if h != sha {
                        break;
                    }
                    if let Some(v) = table.get(name).ctx("reading paths")? {
                        let info = decode::<PathInfo>("paths", &name, v.value())?;
                        if info.blob == *blob {
                            naming.insert(name.to_string());
                        }
                    }
                }
            }
            for key in &expected {
                if table
                    .get(key.as_str())
                    .ctx("reading paths")?
                    .is_some_and(|v| decode::<PathInfo>("paths", key, v.value()).is_ok_and(|i| i.blob == *blob))
                {
                    naming.insert(key.clone());
                }
            }
            if naming != expected {
                return Ok(false);
            }
            for key in &naming {
                table.remove(key.as_str()).ctx("removing paths")?;
            }
            drop(table);
            w.txn.open_table(BLOBS).ctx("opening table blobs")?.remove(blob.as_bytes()).ctx("removing blobs")?;
            if let Some(sha) = sha {
                let mut index = w.txn.open_table(BLOBS_BY_NAR_HASH).ctx("opening table blobs_by_nar_hash")?;
                let points_here = index.get(&sha).ctx("reading blobs_by_nar_hash")?.map(|v| *v.value());
                if points_here == Some(*blob.as_bytes()) {
                    index.remove(&sha).ctx("removing blobs_by_nar_hash")?;
                }
            }
            w.txn
                .open_table(BLOB_ACCESS)
                .ctx("opening table blob_access")?
                .remove(blob.as_bytes())
                .ctx("removing blob_access")?;
            Ok(true)
        })?;
        if removed {
            #[cfg(test)]
            if crash_point::hit() {
                return Ok(true);
            }
            self.inner.blobs.remove_blob_file(blob)?;
            self.inner.access.lock().unwrap_or_else(PoisonError::into_inner).remove(blob);
        }
        Ok(removed)
    }

    /// Delete blob files that no row names (left by a collection that died between its commit
    /// and the unlink). Returns the bytes freed.
    pub fn sweep_orphan_blobs(&self) -> Result<u64, StoreError> {
        let _exclusive = self.inner.gc_lock.write().unwrap_or_else(PoisonError::into_inner);
        let files = self.inner.blobs.list_blob_files()?;
        let txn = self.read()?;
        let blobs = txn.open_table(BLOBS).ctx("opening table blobs")?;
        let mut freed = 0;
        for (id, len) in files {
            if blobs.get(id.as_bytes()).ctx("reading blobs")?.is_none() {
                self.inner.blobs.remove_blob_file(&id)?;
                freed += len;
            }
        }
        Ok(freed)
    }
}

/// A test hook: make the next [`Store::collect_blob`] stop after its commit, as a `kill -9`
/// would.
#[cfg(test)]
pub(crate) mod crash_point {
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
    }

    /// Stop the next collection on this thread after its commit.
    pub(crate) fn arm() {
        ARMED.with(|a| a.set(true));
    }

    pub(super) fn hit() -> bool {
        ARMED.with(|a| a.replace(false))
    }
}
