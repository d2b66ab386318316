//! What the trust rule needs from the store beyond paths and attestations:
//!
//! - an index from NarHash to the store paths that carry it (registered paths and attested
//!   outputs), so that `/nar/<NarHash>` can be decided by the same rule as the narinfo of a path;
//! - the quarantine: a registration that disagrees with what the trust policy accepts for its
//!   path is replaced by the accepted one, and the old record is kept here (its blob stays too),
//!   so the evidence of the poisoning is never lost.

use buildmesh_protocol::hash::{HashAlgo, NixHash};
use buildmesh_protocol::store_path::StorePath;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::records::{AttestationRow, decode, encode};
use super::tables::{ATTESTATIONS, META, PATHS};
use super::{DbResultExt, PathInfo, Store, StoreError, StoreWriter};

/// `nar_hash_paths`: `(sha256 NarHash digest, store path basename) -> ()` for every registered
/// path and every attested output.
pub(crate) const NAR_HASH_PATHS: TableDefinition<(&[u8; 32], &str), ()> = TableDefinition::new("nar_hash_paths");

/// `quarantine`: `"<basename> <old NarHash>"` -> [`QuarantinedPath`]: registrations replaced
/// because they disagreed with the accepted NarHash of their path.
pub(crate) const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// `meta` key: set once [`NAR_HASH_PATHS`] holds every path and attested output (databases
/// written before the index existed are indexed once at open).
const META_NAR_HASH_INDEXED: &str = "nar_hash_paths_indexed";

/// Most paths [`Store::paths_with_nar_hash`] returns.
pub const MAX_PATHS_PER_NAR_HASH: usize = 64;

/// A registration that was replaced because it disagreed with the trust policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedPath {
    /// The replaced registration (its blob is kept).
    pub old: PathInfo,
    /// The NarHash registered instead (`sha256:<nix32>`).
    pub replaced_by: String,
    /// Why.
    pub reason: String,
    /// When (Unix ms).
    pub at: u64,
}

fn sha256_of(h: &NixHash) -> Option<[u8; 32]> {
    (h.algo() == HashAlgo::Sha256).then(|| h.digest().try_into().ok()).flatten()
}

impl StoreWriter<'_> {
    /// Record that `path` carries the NAR with this NarHash (idempotent).
    pub(crate) fn index_nar_hash(&mut self, nar_hash: &NixHash, path: &StorePath) -> Result<(), StoreError> {
        let Some(sha) = sha256_of(nar_hash) else { return Ok(()) };
        let key = path.to_string();
        self.txn
            .open_table(NAR_HASH_PATHS)
            .ctx("opening table nar_hash_paths")?
            .insert((&sha, key.as_str()), ())
            .ctx("writing nar_hash_paths")?;
        Ok(())
    }

    /// Replace the registration of `new.path` by `new` (whose blob is stored), keeping the old
    /// registration in the quarantine with `reason`. Returns the old registration (`None` when
    /// the path was not registered: then this is a plain registration).
    pub fn replace_path(&mut self, new: &PathInfo, reason: &str, now: u64) -> Result<Option<PathInfo>, StoreError> {
        let key = new.path.to_string();
        let old = {
            let paths = self.txn.open_table(PATHS).ctx("opening table paths")?;
            let row = paths.get(key.as_str()).ctx("reading paths")?;
            row.map(|v| decode::<PathInfo>("paths", &key, v.value())).transpose()?
        };
        if let Some(old) = &old {
            if old.nar_hash == new.nar_hash {
                return Ok(None);
            }
            let record = QuarantinedPath {
                old: old.clone(),
                replaced_by: new.nar_hash.to_string(),
                reason: reason.to_string(),
                at: now,
            };
            let qkey = format!("{key} {}", old.nar_hash);
            let bytes = encode("quarantine", &qkey, &record)?;
            self.txn
                .open_table(QUARANTINE)
                .ctx("opening table quarantine")?
                .insert(qkey.as_str(), bytes.as_slice())
                .ctx("writing quarantine")?;
            self.txn.open_table(PATHS).ctx("opening table paths")?.remove(key.as_str()).ctx("writing paths")?;
        }
        self.register_path(new)?;
        Ok(old)
    }

    /// Fill [`NAR_HASH_PATHS`] from the paths and attestations once (databases older than it).
    pub(crate) fn backfill_nar_hash_index(&mut self) -> Result<(), StoreError> {
        {
            let meta = self.txn.open_table(META).ctx("opening table meta")?;
            if meta.get(META_NAR_HASH_INDEXED).ctx("reading meta")?.is_some() {
                return Ok(());
            }
        }
        let mut pairs: Vec<(NixHash, StorePath)> = Vec::new();
        {
            let paths = self.txn.open_table(PATHS).ctx("opening table paths")?;
            for item in paths.iter().ctx("scanning paths")? {
                let (k, v) = item.ctx("scanning paths")?;
                let info = decode::<PathInfo>("paths", &k.value(), v.value())?;
                pairs.push((info.nar_hash, info.path));
            }
            let atts = self.txn.open_table(ATTESTATIONS).ctx("opening table attestations")?;
            for item in atts.iter().ctx("scanning attestations")? {
                let (k, v) = item.ctx("scanning attestations")?;
                let row = decode::<AttestationRow>("attestations", &hex::encode(k.value()), v.value())?;
                pairs.extend(row.outputs.into_iter().map(|o| (o.nar_hash, o.path)));
            }
        }
        let n = pairs.len();
        for (h, p) in &pairs {
            self.index_nar_hash(h, p)?;
        }
        self.txn
            .open_table(META)
            .ctx("opening table meta")?
            .insert(META_NAR_HASH_INDEXED, 1u64.to_le_bytes().as_slice())
            .ctx("writing meta")?;
        if n > 0 {
            tracing::info!(entries = n, "indexed stored paths and attested outputs by NarHash");
        }
        Ok(())
    }
}

impl Store {
    /// The store paths (registered or attested) whose NAR has this sha256 NarHash digest; at most
    /// [`MAX_PATHS_PER_NAR_HASH`].
    pub fn paths_with_nar_hash(&self, nar_hash: &[u8; 32]) -> Result<Vec<StorePath>, StoreError> {
        let txn = self.read()?;
        let index = txn.open_table(NAR_HASH_PATHS).ctx("opening table nar_hash_paths")?;
        let lo: (&[u8; 32], &str) = (nar_hash, "");
        let mut out = Vec::new();
        for item in index.range(lo..).ctx("scanning nar_hash_paths")? {
            let (k, _) = item.ctx("scanning nar_hash_paths")?;
            let (h, name) = k.value();
            if h != nar_hash || out.len() >= MAX_PATHS_PER_NAR_HASH {
                break;
            }
            if let Ok(p) = StorePath::from_basename(name) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Replace a registration (see [`StoreWriter::replace_path`]) in its own transaction.
    pub fn replace_path(&self, new: &PathInfo, reason: &str, now: u64) -> Result<Option<PathInfo>, StoreError> {
        self.write(|w| w.replace_path(new, reason, now))
    }

    /// Quarantined registrations, oldest key first, at most `limit` (0 = all).
    pub fn quarantined(&self, limit: usize) -> Result<Vec<QuarantinedPath>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(QUARANTINE).ctx("opening table quarantine")?;
        let mut out = Vec::new();
        for item in table.iter().ctx("scanning quarantine")? {
            let (k, v) = item.ctx("scanning quarantine")?;
            out.push(decode::<QuarantinedPath>("quarantine", &k.value(), v.value())?);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn info(store: &Store, path: &StorePath, contents: &[u8]) -> PathInfo {
        let nar = buildmesh_protocol::nar::tree::Node::Regular { executable: false, contents: contents.to_vec() }
            .to_nar()
            .unwrap();
        let blob = store.put_nar(&mut &nar[..]).unwrap();
        PathInfo {
            path: path.clone(),
            nar_hash: blob.nar_hash,
            nar_size: blob.nar_size,
            references: BTreeSet::new(),
            deriver: None,
            ca: None,
            blob: blob.blake3,
            registered_at: 1,
        }
    }

    #[test]
    fn replacing_a_registration_quarantines_the_old_one_and_indexes_both() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms6-x").unwrap();
        let bad = info(&store, &p, b"poison");
        let good = info(&store, &p, b"honest");
        store.register_path(&bad).unwrap();
        let sha = |i: &PathInfo| -> [u8; 32] { i.nar_hash.digest().try_into().unwrap() };
        assert_eq!(store.paths_with_nar_hash(&sha(&bad)).unwrap(), vec![p.clone()]);
        assert!(store.paths_with_nar_hash(&sha(&good)).unwrap().is_empty());

        let old = store.replace_path(&good, "test", 5).unwrap();
        assert_eq!(old.as_ref(), Some(&bad));
        assert_eq!(store.path_info(&p).unwrap().unwrap().nar_hash, good.nar_hash);
        assert_eq!(store.paths_with_nar_hash(&sha(&good)).unwrap(), vec![p.clone()]);
        let q = store.quarantined(0).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].old.clone(), q[0].replaced_by.clone(), q[0].at), (bad.clone(), good.nar_hash.to_string(), 5));
        // The old blob is still there (evidence).
        assert!(store.has_nar(&bad.blob).unwrap());
        // Same NarHash again: nothing changes.
        assert_eq!(store.replace_path(&good, "again", 6).unwrap(), None);
        assert_eq!(store.quarantined(0).unwrap().len(), 1);
    }
}
