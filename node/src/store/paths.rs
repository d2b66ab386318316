//! NAR blobs, valid store paths, derivations and build logs.

use std::fs::File;
use std::io::Read;

use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::store_path::StorePath;
use redb::{ReadableTable, ReadableTableMetadata};

use super::blobs::{Expected, Written};
use super::records::{BlobRow, decode, encode};
use super::tables::*;
use super::{BlobInfo, DbResultExt, NarBlobReader, PathInfo, ServedNar, Store, StoreError, StoreWriter};

/// Marker put in front of a log whose head was dropped to respect the cap.
const LOG_TRUNCATED: &[u8] = b"[buildmesh: log truncated; earlier output dropped]\n";
/// Largest log [`Store::get_log`] decompresses whatever the current cap.
const MAX_LOG_READ: usize = 64 << 20;

fn blob_info(id: ArtifactHash, row: BlobRow) -> BlobInfo {
    BlobInfo { blake3: id, nar_hash: row.nar_hash, nar_size: row.nar_size, compressed_size: row.compressed_size }
}

pub(super) fn sha256_digest(h: &NixHash) -> Option<[u8; 32]> {
    (h.algo() == HashAlgo::Sha256).then(|| h.digest().try_into().ok()).flatten()
}

impl StoreWriter<'_> {
    /// Record a blob file that is already complete under its final name.
    fn record_blob(&mut self, written: &Written) -> Result<BlobInfo, StoreError> {
        let id = ArtifactHash::from_bytes(written.digest.blake3);
        let row = BlobRow {
            nar_hash: written.digest.nar_hash.clone(),
            nar_size: written.digest.nar_size,
            compressed_size: written.compressed_size,
        };
        let bytes = encode("blobs", &id, &row)?;
        self.txn
            .open_table(BLOBS)
            .ctx("opening table blobs")?
            .insert(id.as_bytes(), bytes.as_slice())
            .ctx("writing blobs")?;
        if let Some(sha) = sha256_digest(&row.nar_hash) {
            self.txn
                .open_table(BLOBS_BY_NAR_HASH)
                .ctx("opening table blobs_by_nar_hash")?
                .insert(&sha, id.as_bytes())
                .ctx("writing blobs_by_nar_hash")?;
        }
        Ok(blob_info(id, row))
    }

    /// Register a valid store path whose NAR blob is already stored. Returns `false` when the path
    /// was already registered with the same NarHash (nothing changes); a different NarHash is a
    /// [`StoreError::PathConflict`].
    pub fn register_path(&mut self, info: &PathInfo) -> Result<bool, StoreError> {
        let blob_row = {
            let blobs = self.txn.open_table(BLOBS).ctx("opening table blobs")?;
            let row = blobs.get(info.blob.as_bytes()).ctx("reading blobs")?;
            match row {
                Some(v) => decode::<BlobRow>("blobs", &info.blob, v.value())?,
                None => {
                    return Err(StoreError::BlobMismatch {
                        path: info.path.clone(),
                        blob: info.blob,
                        reason: "is not stored".to_string(),
                    });
                }
            }
        };
        if blob_row.nar_hash != info.nar_hash || blob_row.nar_size != info.nar_size {
            return Err(StoreError::BlobMismatch {
                path: info.path.clone(),
                blob: info.blob,
                reason: format!(
                    "has NarHash {} NarSize {}, the path says {} {}",
                    blob_row.nar_hash, blob_row.nar_size, info.nar_hash, info.nar_size
                ),
            });
        }
        let key = info.path.to_string();
        let mut paths = self.txn.open_table(PATHS).ctx("opening table paths")?;
        if let Some(existing) = paths.get(key.as_str()).ctx("reading paths")? {
            let existing = decode::<PathInfo>("paths", &key, existing.value())?;
            if existing.nar_hash != info.nar_hash {
                return Err(StoreError::PathConflict {
                    path: info.path.clone(),
                    existing: existing.nar_hash,
                    new: info.nar_hash.clone(),
                });
            }
            return Ok(false);
        }
        let bytes = encode("paths", &key, info)?;
        paths.insert(key.as_str(), bytes.as_slice()).ctx("writing paths")?;
        drop(paths);
        self.index_nar_hash(&info.nar_hash, &info.path)?;
        Ok(true)
    }

    /// Store a derivation's ATerm bytes. Returns `false` when it was already stored with the same
    /// bytes; different bytes are a [`StoreError::DrvConflict`].
    pub fn put_drv(&mut self, drv: &StorePath, aterm: &[u8]) -> Result<bool, StoreError> {
        let key = drv.to_string();
        let mut drvs = self.txn.open_table(DRVS).ctx("opening table drvs")?;
        if let Some(existing) = drvs.get(key.as_str()).ctx("reading drvs")? {
            if existing.value() == aterm {
                return Ok(false);
            }
            return Err(StoreError::DrvConflict { drv: drv.clone() });
        }
        drvs.insert(key.as_str(), aterm).ctx("writing drvs")?;
        Ok(true)
    }

    /// Replace the build log of `drv`. Logs longer than `max_log_bytes` keep their tail, behind a
    /// marker line. Stored zstd-compressed.
    pub fn put_log(&mut self, drv: &StorePath, log: &[u8]) -> Result<(), StoreError> {
        let capped = capped_log(log, self.store.options.max_log_bytes);
        let compressed = zstd::bulk::compress(&capped, 3).map_err(|e| StoreError::Corrupt {
            table: "logs",
            key: drv.to_string(),
            reason: format!("cannot compress: {e}"),
        })?;
        let key = drv.to_string();
        self.txn
            .open_table(LOGS)
            .ctx("opening table logs")?
            .insert(key.as_str(), compressed.as_slice())
            .ctx("writing logs")?;
        Ok(())
    }
}

/// The bytes [`StoreWriter::put_log`] keeps of `log` under a cap of `max` bytes: all of it when it
/// fits, else a marker line and the tail. The digest a builder signs (issue 14) is of these bytes,
/// which are what it serves.
pub fn capped_log(log: &[u8], max: usize) -> std::borrow::Cow<'_, [u8]> {
    if log.len() <= max {
        return std::borrow::Cow::Borrowed(log);
    }
    let keep = max.saturating_sub(LOG_TRUNCATED.len());
    let mut capped = Vec::with_capacity(max);
    capped.extend_from_slice(&LOG_TRUNCATED[..LOG_TRUNCATED.len().min(max)]);
    capped.extend_from_slice(&log[log.len() - keep..]);
    std::borrow::Cow::Owned(capped)
}

impl Store {
    /// Store a NAR read from `reader` as a blob (zstd at rest), computing blake3, NarHash and
    /// NarSize on the way. Idempotent: storing the same NAR again yields the same [`BlobInfo`].
    pub fn put_nar(&self, reader: &mut dyn Read) -> Result<BlobInfo, StoreError> {
        let _shared = self.inner.gc_lock.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = self.inner.blobs.write(reader, None)?;
        let info = self.write(|w| w.record_blob(&written))?;
        self.note_blob_access(&info.blake3);
        Ok(info)
    }

    /// Store an untrusted NAR only if it has exactly `nar_size` bytes and hashes to `nar_hash`.
    /// Reading stops as soon as the NAR is too long; on a mismatch nothing is stored.
    pub fn put_nar_expecting(
        &self,
        reader: &mut dyn Read,
        nar_hash: &NixHash,
        nar_size: u64,
    ) -> Result<BlobInfo, StoreError> {
        let _shared = self.inner.gc_lock.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = self.inner.blobs.write(reader, Some(Expected { nar_hash, nar_size }))?;
        let info = self.write(|w| w.record_blob(&written))?;
        self.note_blob_access(&info.blake3);
        Ok(info)
    }

    /// The record of a stored blob.
    pub fn blob_info(&self, id: &ArtifactHash) -> Result<Option<BlobInfo>, StoreError> {
        let txn = self.read()?;
        let blobs = txn.open_table(BLOBS).ctx("opening table blobs")?;
        let row = blobs.get(id.as_bytes()).ctx("reading blobs")?;
        row.map(|v| decode::<BlobRow>("blobs", id, v.value()).map(|row| blob_info(*id, row))).transpose()
    }

    /// The stored blob whose NAR has this NarHash (serves `/nar/<nix32 NarHash>.nar`).
    pub fn blob_by_nar_hash(&self, nar_hash: &NixHash) -> Result<Option<BlobInfo>, StoreError> {
        let Some(sha) = sha256_digest(nar_hash) else { return Ok(None) };
        let id = {
            let txn = self.read()?;
            let index = txn.open_table(BLOBS_BY_NAR_HASH).ctx("opening table blobs_by_nar_hash")?;
            let row = index.get(&sha).ctx("reading blobs_by_nar_hash")?;
            match row {
                Some(v) => ArtifactHash::from_bytes(*v.value()),
                None => return Ok(None),
            }
        };
        self.blob_info(&id)
    }

    /// The compressed size of the stored blob of each sha256 NarHash digest (`None` when not
    /// stored), in one read transaction (the QA weather asks for every output of a revision).
    pub fn compressed_sizes(&self, nar_hashes: &[[u8; 32]]) -> Result<Vec<Option<u64>>, StoreError> {
        let txn = self.read()?;
        let index = txn.open_table(BLOBS_BY_NAR_HASH).ctx("opening table blobs_by_nar_hash")?;
        let blobs = txn.open_table(BLOBS).ctx("opening table blobs")?;
        let mut out = Vec::with_capacity(nar_hashes.len());
        for sha in nar_hashes {
            let Some(id) = index.get(sha).ctx("reading blobs_by_nar_hash")?.map(|v| *v.value()) else {
                out.push(None);
                continue;
            };
            let id = ArtifactHash::from_bytes(id);
            let row = blobs.get(id.as_bytes()).ctx("reading blobs")?;
            out.push(row.map(|v| decode::<BlobRow>("blobs", &id, v.value()).map(|r| r.compressed_size)).transpose()?);
        }
        Ok(out)
    }

    /// Whether the blob is stored (its row committed).
    pub fn has_nar(&self, id: &ArtifactHash) -> Result<bool, StoreError> {
        let txn = self.read()?;
        let blobs = txn.open_table(BLOBS).ctx("opening table blobs")?;
        Ok(blobs.get(id.as_bytes()).ctx("reading blobs")?.is_some())
    }

    /// Read a stored NAR, decompressed. The reader fails with `InvalidData` at the end if the blob
    /// does not hash to `id` or has the wrong length.
    pub fn open_nar(&self, id: &ArtifactHash) -> Result<NarBlobReader, StoreError> {
        let info = self.blob_info(id)?.ok_or_else(|| StoreError::NotFound { table: "blobs", key: id.to_string() })?;
        self.inner.blobs.reader(id, info.nar_size)
    }

    /// A stored NAR to serve: like [`Store::open_nar`], but from this process's uncompressed copy
    /// of a large blob once one was made (the first serving read of it writes it; see
    /// [`super::plain`]).
    pub fn open_nar_for_serving(&self, id: &ArtifactHash) -> Result<ServedNar, StoreError> {
        let info = self.blob_info(id)?.ok_or_else(|| StoreError::NotFound { table: "blobs", key: id.to_string() })?;
        self.inner.blobs.reader_for_serving(id, info.nar_size)
    }

    /// The zstd file of a stored NAR as it is on disk (to serve `Compression: zstd` without
    /// recompressing), with its record. Not verified.
    pub fn open_nar_compressed(&self, id: &ArtifactHash) -> Result<(File, BlobInfo), StoreError> {
        let info = self.blob_info(id)?.ok_or_else(|| StoreError::NotFound { table: "blobs", key: id.to_string() })?;
        Ok((self.inner.blobs.open_compressed(id)?, info))
    }

    /// Whether the blob is in this process's verified set with its current file (tests).
    #[cfg(test)]
    pub(crate) fn blob_verified(&self, id: &ArtifactHash) -> bool {
        self.inner.blobs.is_verified(id)
    }

    /// Re-read a blob and check blake3, NarHash and NarSize against its id and record; one
    /// that passes joins this process's verified set ([`super::verified`]), one that fails
    /// leaves it.
    pub fn verify_nar(&self, id: &ArtifactHash) -> Result<BlobInfo, StoreError> {
        let info = self.blob_info(id)?.ok_or_else(|| StoreError::NotFound { table: "blobs", key: id.to_string() })?;
        let (digest, stamp) = self.inner.blobs.digest(id)?;
        let reason = if &digest.blake3 != id.as_bytes() {
            Some(format!("content hashes to {}", hex::encode(digest.blake3)))
        } else if digest.nar_size != info.nar_size {
            Some(format!("{} bytes, the record says {}", digest.nar_size, info.nar_size))
        } else if digest.nar_hash != info.nar_hash {
            Some(format!("NarHash {}, the record says {}", digest.nar_hash, info.nar_hash))
        } else {
            None
        };
        self.inner.blobs.mark_verified(id, stamp, reason.is_none());
        match reason {
            Some(reason) => Err(StoreError::BlobCorrupt { blob: *id, reason }),
            None => Ok(info),
        }
    }

    /// All stored blob ids (in id order), from `after` (exclusive), at most `limit` (0 = all).
    pub fn list_blobs(&self, after: Option<&ArtifactHash>, limit: usize) -> Result<Vec<ArtifactHash>, StoreError> {
        let txn = self.read()?;
        let blobs = txn.open_table(BLOBS).ctx("opening table blobs")?;
        let range = match after {
            Some(a) => blobs.range::<&[u8; 32]>((std::ops::Bound::Excluded(a.as_bytes()), std::ops::Bound::Unbounded)),
            None => blobs.range::<&[u8; 32]>(..),
        }
        .ctx("scanning blobs")?;
        let mut out = Vec::new();
        for item in range {
            let (k, _) = item.ctx("scanning blobs")?;
            out.push(ArtifactHash::from_bytes(*k.value()));
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Register a valid store path (see [`StoreWriter::register_path`]), in its own transaction.
    pub fn register_path(&self, info: &PathInfo) -> Result<bool, StoreError> {
        self.write(|w| w.register_path(info))
    }

    /// The record of a valid store path.
    pub fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        let key = path.to_string();
        let txn = self.read()?;
        let paths = txn.open_table(PATHS).ctx("opening table paths")?;
        let row = paths.get(key.as_str()).ctx("reading paths")?;
        row.map(|v| decode::<PathInfo>("paths", &key, v.value())).transpose()
    }

    /// The valid store path with this 32-character hash part (narinfo lookups).
    pub fn path_by_hash_part(&self, hash_part: &str) -> Result<Option<PathInfo>, StoreError> {
        if hash_part.len() != 32 || !hash_part.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        let lo = format!("{hash_part}-");
        let hi = format!("{hash_part}.");
        let txn = self.read()?;
        let paths = txn.open_table(PATHS).ctx("opening table paths")?;
        let mut range = paths.range(lo.as_str()..hi.as_str()).ctx("scanning paths")?;
        match range.next() {
            Some(item) => {
                let (k, v) = item.ctx("scanning paths")?;
                decode::<PathInfo>("paths", &k.value(), v.value()).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Whether the path is valid here.
    pub fn has_path(&self, path: &StorePath) -> Result<bool, StoreError> {
        let key = path.to_string();
        let txn = self.read()?;
        let paths = txn.open_table(PATHS).ctx("opening table paths")?;
        Ok(paths.get(key.as_str()).ctx("reading paths")?.is_some())
    }

    /// Valid paths in basename order, after `after` (exclusive), at most `limit` (0 = all).
    pub fn list_paths(&self, after: Option<&StorePath>, limit: usize) -> Result<Vec<PathInfo>, StoreError> {
        let after = after.map(|p| p.to_string());
        let txn = self.read()?;
        let paths = txn.open_table(PATHS).ctx("opening table paths")?;
        let range = match &after {
            Some(a) => paths.range::<&str>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded)),
            None => paths.range::<&str>(..),
        }
        .ctx("scanning paths")?;
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.ctx("scanning paths")?;
            out.push(decode::<PathInfo>("paths", &k.value(), v.value())?);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Number of valid paths.
    pub fn path_count(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        txn.open_table(PATHS).ctx("opening table paths")?.len().ctx("counting paths")
    }

    /// Store a derivation (see [`StoreWriter::put_drv`]), in its own transaction.
    pub fn put_drv(&self, drv: &StorePath, aterm: &[u8]) -> Result<bool, StoreError> {
        self.write(|w| w.put_drv(drv, aterm))
    }

    /// A stored derivation's ATerm bytes.
    pub fn get_drv(&self, drv: &StorePath) -> Result<Option<Vec<u8>>, StoreError> {
        let key = drv.to_string();
        let txn = self.read()?;
        let drvs = txn.open_table(DRVS).ctx("opening table drvs")?;
        Ok(drvs.get(key.as_str()).ctx("reading drvs")?.map(|v| v.value().to_vec()))
    }

    /// Whether the derivation is stored.
    pub fn has_drv(&self, drv: &StorePath) -> Result<bool, StoreError> {
        let key = drv.to_string();
        let txn = self.read()?;
        let drvs = txn.open_table(DRVS).ctx("opening table drvs")?;
        Ok(drvs.get(key.as_str()).ctx("reading drvs")?.is_some())
    }

    /// Replace the build log of `drv` (see [`StoreWriter::put_log`]).
    pub fn put_log(&self, drv: &StorePath, log: &[u8]) -> Result<(), StoreError> {
        self.write(|w| w.put_log(drv, log))
    }

    /// The (capped) build log of `drv`, decompressed.
    pub fn get_log(&self, drv: &StorePath) -> Result<Option<Vec<u8>>, StoreError> {
        let key = drv.to_string();
        let txn = self.read()?;
        let logs = txn.open_table(LOGS).ctx("opening table logs")?;
        let Some(v) = logs.get(key.as_str()).ctx("reading logs")? else { return Ok(None) };
        // Bound the decompressed size (a store opened earlier with a larger cap may have longer logs).
        let cap = self.inner.options.max_log_bytes.max(MAX_LOG_READ);
        zstd::bulk::decompress(v.value(), cap).map(Some).map_err(|e| StoreError::Corrupt {
            table: "logs",
            key,
            reason: format!("cannot decompress: {e}"),
        })
    }
}
