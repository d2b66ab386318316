//! Mesh bookkeeping kept in the database: per-peer anti-entropy cursors ([`SyncCursor`], table
//! `sync_cursors`) and this node's own undecided mesh submissions ([`SubmittedJob`], table
//! `mesh_submissions`), and the revision cursors (table `revision_cursors`, a u64 per peer). Rows are postcard-encoded; a row that does not decode is a
//! [`StoreError::Corrupt`] naming the table and key, and is never removed by a read.

use redb::ReadableTable;

use super::records::{decode, encode};
use super::tables::*;
use super::{DbResultExt, Store, StoreError, StoreWriter, SubmittedJob, SyncCursor};

/// Table names, as they appear in errors.
const CURSORS_NAME: &str = "sync_cursors";
const SUBMISSIONS_NAME: &str = "mesh_submissions";

impl StoreWriter<'_> {
    /// Set the anti-entropy cursor of `peer` (its base58 peer id), replacing any previous one.
    pub fn put_sync_cursor(&mut self, peer: &str, cursor: &SyncCursor) -> Result<(), StoreError> {
        let bytes = encode(CURSORS_NAME, &peer, cursor)?;
        self.txn
            .open_table(SYNC_CURSORS)
            .ctx("opening table sync_cursors")?
            .insert(peer, bytes.as_slice())
            .ctx("writing sync_cursors")?;
        Ok(())
    }

    /// Set the revision anti-entropy cursor of `peer` (the next revision sequence number to pull).
    pub fn put_revision_cursor(&mut self, peer: &str, next: u64) -> Result<(), StoreError> {
        self.txn
            .open_table(REVISION_CURSORS)
            .ctx("opening table revision_cursors")?
            .insert(peer, next)
            .ctx("writing revision_cursors")?;
        Ok(())
    }

    /// Record (or replace) this node's submission of the derivation `drv` (`.drv` basename).
    pub fn put_mesh_submission(&mut self, drv: &str, job: &SubmittedJob) -> Result<(), StoreError> {
        let bytes = encode(SUBMISSIONS_NAME, &drv, job)?;
        self.txn
            .open_table(MESH_SUBMISSIONS)
            .ctx("opening table mesh_submissions")?
            .insert(drv, bytes.as_slice())
            .ctx("writing mesh_submissions")?;
        Ok(())
    }

    /// Forget the submission of `drv`; whether there was one. The row is removed without being
    /// decoded, so a corrupt row can be removed too.
    pub fn remove_mesh_submission(&mut self, drv: &str) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(MESH_SUBMISSIONS).ctx("opening table mesh_submissions")?;
        let removed = table.remove(drv).ctx("writing mesh_submissions")?.is_some();
        Ok(removed)
    }
}

impl Store {
    /// The anti-entropy cursor of `peer` (base58 peer id), if one was stored.
    pub fn get_sync_cursor(&self, peer: &str) -> Result<Option<SyncCursor>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(SYNC_CURSORS).ctx("opening table sync_cursors")?;
        let row = table.get(peer).ctx("reading sync_cursors")?;
        row.map(|v| decode::<SyncCursor>(CURSORS_NAME, &peer, v.value())).transpose()
    }

    /// Every stored anti-entropy cursor, in peer id order. Fails on the first row that does not
    /// decode.
    pub fn list_sync_cursors(&self) -> Result<Vec<(String, SyncCursor)>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(SYNC_CURSORS).ctx("opening table sync_cursors")?;
        let mut out = Vec::new();
        for item in table.iter().ctx("scanning sync_cursors")? {
            let (k, v) = item.ctx("scanning sync_cursors")?;
            let peer = k.value();
            out.push((peer.to_string(), decode::<SyncCursor>(CURSORS_NAME, &peer, v.value())?));
        }
        Ok(out)
    }

    /// Set the anti-entropy cursor of `peer` in its own durable transaction (see
    /// [`StoreWriter::put_sync_cursor`]).
    pub fn put_sync_cursor(&self, peer: &str, cursor: &SyncCursor) -> Result<(), StoreError> {
        self.write(|w| w.put_sync_cursor(peer, cursor))
    }

    /// The revision anti-entropy cursor of `peer` (base58 peer id), if one was stored.
    pub fn get_revision_cursor(&self, peer: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(REVISION_CURSORS).ctx("opening table revision_cursors")?;
        Ok(table.get(peer).ctx("reading revision_cursors")?.map(|v| v.value()))
    }

    /// Set the revision cursor of `peer` in its own durable transaction.
    pub fn put_revision_cursor(&self, peer: &str, next: u64) -> Result<(), StoreError> {
        self.write(|w| w.put_revision_cursor(peer, next))
    }

    /// The stored submission of `drv` (`.drv` basename), if any.
    pub fn get_mesh_submission(&self, drv: &str) -> Result<Option<SubmittedJob>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(MESH_SUBMISSIONS).ctx("opening table mesh_submissions")?;
        let row = table.get(drv).ctx("reading mesh_submissions")?;
        row.map(|v| decode::<SubmittedJob>(SUBMISSIONS_NAME, &drv, v.value())).transpose()
    }

    /// Every stored submission, in `.drv` basename order. Fails on the first row that does not
    /// decode (the row is left alone: nothing is forgotten because it could not be read).
    pub fn list_mesh_submissions(&self) -> Result<Vec<(String, SubmittedJob)>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(MESH_SUBMISSIONS).ctx("opening table mesh_submissions")?;
        let mut out = Vec::new();
        for item in table.iter().ctx("scanning mesh_submissions")? {
            let (k, v) = item.ctx("scanning mesh_submissions")?;
            let drv = k.value();
            out.push((drv.to_string(), decode::<SubmittedJob>(SUBMISSIONS_NAME, &drv, v.value())?));
        }
        Ok(out)
    }

    /// Record (or replace) several submissions in one durable transaction: all of them or none.
    /// Returns how many were written.
    pub fn put_mesh_submissions<'a>(
        &self,
        jobs: impl IntoIterator<Item = (&'a str, &'a SubmittedJob)>,
    ) -> Result<usize, StoreError> {
        self.write(|w| {
            let mut n = 0;
            for (drv, job) in jobs {
                w.put_mesh_submission(drv, job)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Forget the submission of `drv` in its own durable transaction; whether there was one.
    pub fn remove_mesh_submission(&self, drv: &str) -> Result<bool, StoreError> {
        self.write(|w| w.remove_mesh_submission(drv))
    }
}
