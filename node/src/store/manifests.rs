//! Revision manifests (issue 13): content-addressed by the blake3 of their canonical encoding,
//! kept zstd-compressed in table `manifests`, plus the `drv_manifests` index (which manifests
//! contain a derivation) written in the same transaction.
//!
//! Nothing is written unless the bytes hash to the key: a [`CheckedManifest`] is made (hash and
//! size checked, compressed) outside the write transaction, then stored. Reading back
//! decompresses with the size capped at [`MAX_MANIFEST_BYTES`] and checks the hash again, so a
//! damaged row is a [`StoreError::Corrupt`] rather than wrong data. The store does not decode
//! manifests: the caller, who did, passes the `.drv` basenames for the index.

use buildmesh_protocol::id::{MessageId, NodeId};
use redb::{ReadTransaction, ReadableTable};

use super::revisions::{StoredRevision, is_visible, require};
use super::tables::*;
use super::{DbResultExt, SignerLimit, Store, StoreError, StoreWriter};

/// Largest manifest the store accepts, uncompressed (REV-SPEC `MAX_MANIFEST_SIZE`, 128 MiB).
pub const MAX_MANIFEST_BYTES: u64 = buildmesh_protocol::revision::MAX_MANIFEST_SIZE as u64;

const LOW: [u8; 32] = [0; 32];
const HIGH: [u8; 32] = [0xff; 32];

/// A manifest whose bytes were checked against its hash and size, compressed and ready to store.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckedManifest {
    hash: [u8; 32],
    len: u64,
    compressed: Vec<u8>,
}

impl std::fmt::Debug for CheckedManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedManifest")
            .field("hash", &hex::encode(self.hash))
            .field("len", &self.len)
            .field("compressed", &self.compressed.len())
            .finish()
    }
}

impl CheckedManifest {
    /// Check that `bytes` is at most [`MAX_MANIFEST_BYTES`] long and hashes (blake3) to `hash`,
    /// then compress it at zstd `level` (CPU work: call it outside a write transaction).
    pub fn new(hash: [u8; 32], bytes: &[u8], level: i32) -> Result<CheckedManifest, StoreError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(StoreError::ManifestRefused {
                hash: hex::encode(hash),
                reason: format!("{} bytes exceed the limit of {MAX_MANIFEST_BYTES}", bytes.len()),
            });
        }
        let actual = blake3::hash(bytes);
        if actual.as_bytes() != &hash {
            return Err(StoreError::ManifestRefused {
                hash: hex::encode(hash),
                reason: format!("its {} bytes hash to {}", bytes.len(), actual.to_hex()),
            });
        }
        let compressed = zstd::bulk::compress(bytes, level).map_err(|e| StoreError::ManifestRefused {
            hash: hex::encode(hash),
            reason: format!("cannot compress: {e}"),
        })?;
        Ok(CheckedManifest { hash, len: bytes.len() as u64, compressed })
    }

    /// The manifest's hash.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Its uncompressed length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty (never, for a valid manifest; for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its compressed length (what it costs at rest, and what is charged to a signer).
    pub fn compressed_len(&self) -> u64 {
        self.compressed.len() as u64
    }
}

/// The cached answers of [`Store::first_revision_of_drvs`] and the epoch they were read at.
#[derive(Debug, Default)]
pub(super) struct FirstRevisionCache {
    epoch: u64,
    seqs: std::collections::HashMap<String, Option<u64>>,
}

impl StoreWriter<'_> {
    /// Store a checked manifest and index its derivations (`.drv` basenames); `false` when it was
    /// already stored (nothing written, the index is left as it is).
    pub fn put_manifest<S: AsRef<str>>(
        &mut self,
        m: &CheckedManifest,
        drvs: impl IntoIterator<Item = S>,
    ) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(MANIFESTS).ctx("opening table manifests")?;
        if table.get(&m.hash).ctx("reading manifests")?.is_some() {
            return Ok(false);
        }
        table.insert(&m.hash, m.compressed.as_slice()).ctx("writing manifests")?;
        let mut index = self.txn.open_table(DRV_MANIFESTS).ctx("opening table drv_manifests")?;
        for drv in drvs {
            index.insert((drv.as_ref(), &m.hash), ()).ctx("writing drv_manifests")?;
        }
        self.revision_index_changed = true;
        Ok(true)
    }

    /// [`StoreWriter::put_manifest`], charging its compressed bytes (and one record) to `signer`
    /// (the submitter of the header that named it) unless that would exceed `limit`: `None` then,
    /// and nothing is written. A manifest already stored is never refused nor charged again.
    pub fn put_manifest_within<S: AsRef<str>>(
        &mut self,
        m: &CheckedManifest,
        drvs: impl IntoIterator<Item = S>,
        signer: &NodeId,
        limit: Option<&SignerLimit>,
    ) -> Result<Option<bool>, StoreError> {
        let known = self
            .txn
            .open_table(MANIFESTS)
            .ctx("opening table manifests")?
            .get(&m.hash)
            .ctx("reading manifests")?
            .is_some();
        if known {
            return Ok(Some(false));
        }
        if !self.admits(signer, m.compressed.len(), limit)? {
            return Ok(None);
        }
        self.charge_signer(signer, m.compressed_len())?;
        self.put_manifest(m, drvs).map(Some)
    }
}

fn has(txn: &ReadTransaction, hash: &[u8; 32]) -> Result<bool, StoreError> {
    let table = txn.open_table(MANIFESTS).ctx("opening table manifests")?;
    Ok(table.get(hash).ctx("reading manifests")?.is_some())
}

fn corrupt(hash: &[u8; 32], reason: String) -> StoreError {
    StoreError::Corrupt { table: "manifests", key: hex::encode(hash), reason }
}

impl Store {
    /// Check, compress and store a manifest in its own durable transaction (see
    /// [`CheckedManifest::new`] and [`StoreWriter::put_manifest`]); `false` when already stored.
    pub fn put_manifest<S: AsRef<str>>(
        &self,
        hash: [u8; 32],
        bytes: &[u8],
        drvs: impl IntoIterator<Item = S>,
    ) -> Result<bool, StoreError> {
        if self.has_manifest(&hash)? {
            return Ok(false);
        }
        let m = CheckedManifest::new(hash, bytes, self.options().zstd_level)?;
        self.write(|w| w.put_manifest(&m, drvs))
    }

    /// Whether the manifest with this hash is stored.
    pub fn has_manifest(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        has(&self.read()?, hash)
    }

    /// The manifest's canonical bytes, decompressed (at most [`MAX_MANIFEST_BYTES`]) and checked
    /// against the hash; `None` when not stored.
    pub fn get_manifest(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(MANIFESTS).ctx("opening table manifests")?;
        let Some(row) = table.get(hash).ctx("reading manifests")? else { return Ok(None) };
        let bytes = zstd::bulk::decompress(row.value(), MAX_MANIFEST_BYTES as usize)
            .map_err(|e| corrupt(hash, format!("does not decompress within {MAX_MANIFEST_BYTES} bytes: {e}")))?;
        if blake3::hash(&bytes).as_bytes() != hash {
            return Err(corrupt(hash, "its bytes do not hash to the key".to_string()));
        }
        Ok(Some(bytes))
    }

    /// `len` bytes at `offset` of the stored **compressed** manifest, with its total compressed
    /// length (what `/buildmesh/manifest/1` serves: the receiver decompresses and verifies the
    /// whole); `None` when not stored. A range beyond the end is cut short.
    pub fn manifest_chunk(&self, hash: &[u8; 32], offset: u64, len: u32) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(MANIFESTS).ctx("opening table manifests")?;
        let Some(row) = table.get(hash).ctx("reading manifests")? else { return Ok(None) };
        let all = row.value();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
        let end = start.saturating_add(len as usize).min(all.len());
        Ok(Some((all.len() as u64, all[start..end].to_vec())))
    }

    /// Every stored header (superseded ones included) naming manifest `hash`.
    pub fn revisions_with_manifest(&self, hash: &[u8; 32]) -> Result<Vec<StoredRevision>, StoreError> {
        let txn = self.read()?;
        let ids = manifest_revision_ids(&txn, hash)?;
        ids.iter().map(|id| require(&txn, id, "revisions_by_manifest")).collect()
    }

    /// The visible revisions a derivation (`.drv` basename) belongs to, in the order of their
    /// manifests' hashes; only revisions whose manifest is stored are known here.
    pub fn revisions_of_drv(&self, drv: &str) -> Result<Vec<StoredRevision>, StoreError> {
        let txn = self.read()?;
        let hashes: Vec<[u8; 32]> = {
            let index = txn.open_table(DRV_MANIFESTS).ctx("opening table drv_manifests")?;
            let mut out = Vec::new();
            for item in index.range((drv, &LOW)..=(drv, &HIGH)).ctx("scanning drv_manifests")? {
                let (k, _) = item.ctx("scanning drv_manifests")?;
                out.push(*k.value().1);
            }
            out
        };
        let mut out = Vec::new();
        for h in &hashes {
            for id in manifest_revision_ids(&txn, h)? {
                let r = require(&txn, &id, "revisions_by_manifest")?;
                if is_visible(&txn, &r)? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// For each of `drvs` (`.drv` basenames) that a stored manifest contains, the smallest local
    /// sequence number of a header naming such a manifest: when this node first learnt of a
    /// revision that includes it (the scheduler's "then revision" tier, oldest first).
    /// Derivations in no known revision are left out.
    ///
    /// The scheduler asks this for every pending build on every pass, so answers are cached until
    /// a manifest or a revision header is added (the only writes that can change one): a pass
    /// with nothing new reads no table. The cache keeps only the derivations of the last call.
    pub fn first_revision_of_drvs<'a>(
        &self,
        drvs: impl IntoIterator<Item = &'a str>,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        use std::sync::atomic::Ordering;
        // Read the epoch before the transaction: rows committed in between are newer than the
        // epoch says, and the next epoch clears them anyway.
        let epoch = self.inner.revision_index_epoch.load(Ordering::Acquire);
        let mut cache = self.inner.first_revision_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut kept = std::mem::take(&mut cache.seqs);
        if cache.epoch != epoch {
            kept.clear();
        }
        let drvs: Vec<&str> = drvs.into_iter().collect();
        let missing: Vec<&str> = drvs.iter().copied().filter(|d| !kept.contains_key(*d)).collect();
        let mut looked_up =
            if missing.is_empty() { Default::default() } else { self.first_revision_uncached(&missing)? };
        let mut seqs = std::collections::HashMap::with_capacity(drvs.len());
        let mut out = std::collections::HashMap::new();
        for drv in drvs {
            let seq = match kept.remove(drv) {
                Some(seq) => seq,
                None => looked_up.remove(drv).flatten(),
            };
            if let Some(s) = seq {
                out.insert(drv.to_string(), s);
            }
            seqs.insert(drv.to_string(), seq);
        }
        *cache = FirstRevisionCache { epoch, seqs };
        Ok(out)
    }

    /// [`Store::first_revision_of_drvs`] read from the tables: `None` for a derivation in no
    /// known revision. One read transaction; each manifest's headers are looked up once.
    fn first_revision_uncached(
        &self,
        drvs: &[&str],
    ) -> Result<std::collections::HashMap<String, Option<u64>>, StoreError> {
        let txn = self.read()?;
        let index = txn.open_table(DRV_MANIFESTS).ctx("opening table drv_manifests")?;
        let mut by_manifest: std::collections::HashMap<[u8; 32], Option<u64>> = Default::default();
        let mut out = std::collections::HashMap::with_capacity(drvs.len());
        for &drv in drvs {
            let mut first: Option<u64> = None;
            for item in index.range((drv, &LOW)..=(drv, &HIGH)).ctx("scanning drv_manifests")? {
                let (k, _) = item.ctx("scanning drv_manifests")?;
                let hash = *k.value().1;
                let seq = match by_manifest.get(&hash) {
                    Some(s) => *s,
                    None => {
                        let mut s: Option<u64> = None;
                        for id in manifest_revision_ids(&txn, &hash)? {
                            let r = require(&txn, &id, "revisions_by_manifest")?;
                            s = Some(s.map_or(r.seq, |s| s.min(r.seq)));
                        }
                        by_manifest.insert(hash, s);
                        s
                    }
                };
                first = match (first, seq) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            out.insert(drv.to_string(), first);
        }
        Ok(out)
    }

    /// The visible headers whose manifest is not stored (what the manifest fetcher still has to
    /// fetch), oldest first.
    pub fn revisions_missing_manifest(&self) -> Result<Vec<StoredRevision>, StoreError> {
        let txn = self.read()?;
        let ids: Vec<MessageId> = {
            let index = txn.open_table(REVISIONS_BY_NAME).ctx("opening table revisions_by_name")?;
            let mut ids = Vec::new();
            for item in index.iter().ctx("scanning revisions_by_name")? {
                let (_, v) = item.ctx("scanning revisions_by_name")?;
                ids.push(MessageId::from_bytes(*v.value()));
            }
            ids
        };
        let mut out = Vec::new();
        for id in &ids {
            let r = require(&txn, id, "revisions_by_name")?;
            if !has(&txn, &r.entry.manifest_hash)? {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }
}

fn manifest_revision_ids(txn: &ReadTransaction, hash: &[u8; 32]) -> Result<Vec<MessageId>, StoreError> {
    let index = txn.open_table(REVISIONS_BY_MANIFEST).ctx("opening table revisions_by_manifest")?;
    let mut out = Vec::new();
    for item in index.range((hash, &LOW)..=(hash, &HIGH)).ctx("scanning revisions_by_manifest")? {
        let (k, _) = item.ctx("scanning revisions_by_manifest")?;
        out.push(MessageId::from_bytes(*k.value().1));
    }
    Ok(out)
}
