//! The store's health: an I/O error in the database (a full disk during a commit) makes redb
//! fail every later operation (`Previous I/O error occurred`) until the database is closed and
//! opened again, even after the cause is gone. The store remembers such a failure
//! ([`Store::failure`], which `GET /health` reports) and [`Store::recover`] (called by the node
//! every few seconds while it is failed) checks whether the database works again and otherwise
//! reopens it; redb then repairs the file from its last durable commit.

use std::sync::{Arc, PoisonError};

use redb::Database;
use serde::{Deserialize, Serialize};

use super::{DbResultExt as _, Store, StoreError, db_builder, open_database, unix_ms};

/// Why the store is failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreFailure {
    /// The error that broke the database.
    pub error: String,
    /// When it happened (Unix ms).
    pub since_unix_ms: u64,
    /// Recovery attempts since.
    pub attempts: u32,
    /// The error of the last recovery attempt.
    pub last_attempt: Option<String>,
}

/// Whether `e` leaves redb failing until the database is reopened.
fn breaks_the_database(e: &StoreError) -> bool {
    match e {
        StoreError::Database { source, .. } => matches!(**source, redb::Error::Io(_) | redb::Error::PreviousIo),
        _ => false,
    }
}

impl Store {
    /// The open database.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        let db = self.inner.db.read().unwrap_or_else(PoisonError::into_inner).clone();
        db.ok_or_else(|| StoreError::Unavailable {
            cause: self.failure().map(|f| f.error).unwrap_or_else(|| "closed".to_string()),
        })
    }

    /// Remember `e` when it broke the database (see the module docs).
    pub(crate) fn note_error(&self, e: &StoreError) {
        if !breaks_the_database(e) {
            return;
        }
        let mut failure = self.inner.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if failure.is_none() {
            tracing::error!(
                cause = %e, db = %self.inner.db_path.display(),
                "the database failed; writes fail until it is reopened"
            );
            *failure =
                Some(StoreFailure { error: e.to_string(), since_unix_ms: unix_ms(), attempts: 0, last_attempt: None });
        }
    }

    /// The failure the store is in, if any.
    pub fn failure(&self) -> Option<StoreFailure> {
        self.inner.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A cheap read of the database (for health checks); a failure is remembered.
    pub fn check(&self) -> Result<(), StoreError> {
        let result = self.schema_version().map(|_| ());
        if let Err(e) = &result {
            self.note_error(e);
        }
        result
    }

    /// When the store is failed: commit an empty durable transaction, and when that fails too,
    /// close the database and open it again. `Ok(true)`: it works again; `Ok(false)`: it was not
    /// failed; `Err`: it still fails (the failure records the attempt).
    pub fn recover(&self) -> Result<bool, StoreError> {
        if self.failure().is_none() {
            return Ok(false);
        }
        let result = self.probe_write().or_else(|probe| {
            tracing::info!(cause = %probe, "the database still fails; reopening it");
            self.reopen()
        });
        let mut failure = self.inner.failure.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                if let Some(f) = failure.take() {
                    tracing::info!(
                        after_attempts = f.attempts + 1, cause = %f.error,
                        "the database works again"
                    );
                }
                Ok(true)
            }
            Err(e) => {
                if let Some(f) = failure.as_mut() {
                    f.attempts += 1;
                    f.last_attempt = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Commit an empty durable write transaction.
    fn probe_write(&self) -> Result<(), StoreError> {
        let mut txn = self.db()?.begin_write().ctx("starting a probe transaction")?;
        txn.set_durability(redb::Durability::Immediate).ctx("setting durability")?;
        txn.commit().ctx("committing a probe transaction")
    }

    /// Close the database (once the operations still using it finish) and open it again.
    fn reopen(&self) -> Result<(), StoreError> {
        if !self.inner.reopenable {
            return Err(StoreError::Unavailable { cause: "a database on a custom backend cannot be reopened".into() });
        }
        let mut slot = self.inner.db.write().unwrap_or_else(PoisonError::into_inner);
        // Dropping the last reference closes the file and releases its lock; an operation still
        // running on it keeps it open, and the open below then fails until the next attempt.
        drop(slot.take());
        let db = open_database(&db_builder(&self.inner.options), &self.inner.db_path)?;
        *slot = Some(Arc::new(db));
        drop(slot);
        self.probe_write()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::StoreOptions;
    use crate::store::test_support::FullDiskBackend;

    #[test]
    fn a_failed_commit_marks_the_store_failed_until_it_works_again() {
        let blobs = tempfile::tempdir().unwrap();
        let backend = FullDiskBackend::new();
        let full = backend.full.clone();
        let store = Store::open_with_backend(backend, blobs.path(), StoreOptions::default()).unwrap();
        assert!(!store.recover().unwrap());
        store.put_log(&crate::store::test_support::drv(1), b"fine").unwrap();
        assert!(store.failure().is_none());

        full.store(true, Ordering::SeqCst);
        let e = store.put_log(&crate::store::test_support::drv(2), b"no space").unwrap_err();
        let f = store.failure().unwrap_or_else(|| panic!("not marked failed after {e}"));
        assert!(f.error.contains("No space left"), "{f:?}");
        // A custom backend cannot be reopened: recovery fails and says why.
        full.store(false, Ordering::SeqCst);
        let e = store.recover().unwrap_err().to_string();
        let f = store.failure().unwrap();
        assert_eq!(f.attempts, 1);
        assert_eq!(f.last_attempt.as_deref(), Some(e.as_str()));
        assert!(store.failure().is_some());
    }
}
