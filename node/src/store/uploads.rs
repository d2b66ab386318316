//! The durable half of the submitter ledger (`crate::scheduler::submitters`): one row per
//! unfinished upload of `POST /api/v1/submit` (who uploaded it, its bytes, the derivations it
//! queued), so that after a restart, `kill -9` included, the builds left in the queue still count
//! under their submitters (fair share) and against their limits (`max_outstanding_jobs`,
//! `max_closure_bytes_per_submitter`).
//!
//! A row is written by [`StoreWriter::put_upload`] in the same write transaction as the builds
//! the upload queues (`crate::submit::accept`), so an upload is either queued and recorded or
//! neither. Rows are removed ([`Store::remove_uploads`]) when the scheduler finds none of their
//! derivations queued or running any more; a row whose builds ended just before a crash is read
//! back at the next start and removed after the first scheduling pass. Ids come from a counter
//! in `meta` that only grows, so they give the uploads' order across restarts.
//!
//! Bound: at most one row per unfinished upload; the submit endpoint refuses a submitter's upload
//! when it has `max_outstanding_jobs` unfinished uploads (or that many derivations outstanding),
//! so the table holds at most (submitters + 1) x `max_outstanding_jobs` rows, each naming at most
//! the derivations of one upload.

use buildmesh_protocol::store_path::StorePath;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::records::{decode, encode};
use super::{DbResultExt, Store, StoreError, StoreWriter};

/// `submitter_uploads`: upload id (u64, from [`META_NEXT_UPLOAD_ID`]) -> [`UploadRow`].
pub(crate) const SUBMITTER_UPLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("submitter_uploads");

/// `meta` key: the next upload id (u64 little-endian).
const META_NEXT_UPLOAD_ID: &str = "next_upload_id";

/// The table's name, as it appears in errors.
const NAME: &str = "submitter_uploads";

/// One unfinished upload: the `submitter_uploads` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRow {
    /// The submitter's name (`operator`, or the `NAME` of `DATA/submitters/NAME.token`).
    pub submitter: String,
    /// The bytes it counts for against `max_closure_bytes_per_submitter`.
    pub bytes: u64,
    /// The `.drv` basenames it queued.
    pub drvs: Vec<String>,
}

impl UploadRow {
    /// The row of an upload by `submitter` of `bytes` that queued `drvs`.
    pub fn new<'a>(submitter: &str, bytes: u64, drvs: impl IntoIterator<Item = &'a StorePath>) -> UploadRow {
        UploadRow { submitter: submitter.to_string(), bytes, drvs: drvs.into_iter().map(ToString::to_string).collect() }
    }

    /// Its derivations as store paths; a basename that does not parse is left out (it cannot
    /// name a queued build).
    pub fn drv_paths(&self) -> Vec<StorePath> {
        self.drvs.iter().filter_map(|d| StorePath::from_basename(d).ok()).collect()
    }
}

impl StoreWriter<'_> {
    /// Record an unfinished upload; returns its id (larger than every id given before).
    pub fn put_upload(&mut self, row: &UploadRow) -> Result<u64, StoreError> {
        let id = self.next_counter(META_NEXT_UPLOAD_ID)?;
        let bytes = encode(NAME, &id, row)?;
        self.txn
            .open_table(SUBMITTER_UPLOADS)
            .ctx("opening table submitter_uploads")?
            .insert(id, bytes.as_slice())
            .ctx("writing submitter_uploads")?;
        Ok(id)
    }
}

impl Store {
    /// Every unfinished upload, oldest first. A row that does not decode is skipped with a
    /// warning (it is removed with the finished ones: its builds count as the operator's).
    pub fn list_uploads(&self) -> Result<Vec<(u64, UploadRow)>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(SUBMITTER_UPLOADS).ctx("opening table submitter_uploads")?;
        let mut out = Vec::new();
        for item in table.iter().ctx("scanning submitter_uploads")? {
            let (k, v) = item.ctx("scanning submitter_uploads")?;
            let id = k.value();
            match decode::<UploadRow>(NAME, &id, v.value()) {
                Ok(row) => out.push((id, row)),
                Err(e) => tracing::warn!(id, cause = %e, "an unfinished upload's row does not decode; skipped"),
            }
        }
        Ok(out)
    }

    /// Forget the uploads `ids` (finished), in one durable transaction; how many were there.
    pub fn remove_uploads(&self, ids: &[u64]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write(|w| {
            let mut table = w.txn.open_table(SUBMITTER_UPLOADS).ctx("opening table submitter_uploads")?;
            let mut n = 0;
            for id in ids {
                n += usize::from(table.remove(id).ctx("writing submitter_uploads")?.is_some());
            }
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv(n: u8) -> StorePath {
        StorePath::new([n; 20], &format!("d{n}.drv")).unwrap()
    }

    #[test]
    fn uploads_survive_a_reopen_in_order_and_are_removed_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let store = Store::open(dir.path()).unwrap();
            let a = store.write(|w| w.put_upload(&UploadRow::new("alice", 10, [&drv(1), &drv(2)]))).unwrap();
            let b = store.write(|w| w.put_upload(&UploadRow::new("bob", 20, [&drv(3)]))).unwrap();
            assert!(a < b);
            (a, b)
        };
        let store = Store::open(dir.path()).unwrap();
        let rows = store.list_uploads().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0, rows[0].1.submitter.as_str(), rows[0].1.bytes), (a, "alice", 10));
        assert_eq!(rows[0].1.drv_paths(), vec![drv(1), drv(2)]);
        assert_eq!(store.remove_uploads(&[a, 99]).unwrap(), 1);
        assert_eq!(store.list_uploads().unwrap().iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![b]);
        // Ids keep growing after removals (they order uploads across restarts).
        let c = store.write(|w| w.put_upload(&UploadRow::new("carol", 1, [&drv(4)]))).unwrap();
        assert!(c > b);
    }
}
