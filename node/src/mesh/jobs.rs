//! This node's own submissions to the mesh, persisted until they are decided.
//!
//! The state machine keeps nothing on disk; after a restart the driver submits the unfinished
//! jobs again (same job ids) from the store's `mesh_submissions` table (one row per `.drv`). An
//! entry is removed when the job is complete (its outputs fetched and its build recorded as done)
//! or failed. [`Submissions`] keeps the set in memory; [`Submissions::save`] commits the changes
//! made since the previous save in one durable redb transaction.
//!
//! An older build kept the set in `DATA/mesh/submissions.json`: [`Submissions::load`] imports that
//! file once and renames it (see `sync::import_legacy_json`). A stored row that does not
//! decode fails the load instead of being forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

pub use crate::store::SubmittedJob;
use crate::store::{Store, StoreError};

use super::sync::import_legacy_json;

/// The persisted set, keyed by `.drv` base name.
#[derive(Debug)]
pub struct Submissions {
    store: Store,
    jobs: BTreeMap<String, SubmittedJob>,
    /// Keys inserted or removed in memory since the last successful [`Submissions::save`] (behind a
    /// mutex so that `save` takes `&self`).
    unsaved: Mutex<BTreeSet<String>>,
}

impl Submissions {
    /// The submissions kept in `store` (blocking). First imports `legacy_file`, the JSON file in
    /// which older builds kept them (`DATA/mesh/submissions.json`), when it exists: see
    /// `import_legacy_json` (an unreadable file is kept aside as `<name>.unreadable`, with a
    /// warning). Fails when the store does, in particular with [`StoreError::Corrupt`] (naming the
    /// table and key) when a stored submission does not decode: nothing is forgotten silently.
    pub fn load(store: Store, legacy_file: &Path) -> Result<Submissions, StoreError> {
        import_legacy_json(legacy_file, "submission", |jobs: BTreeMap<String, SubmittedJob>| {
            store.put_mesh_submissions(jobs.iter().map(|(drv, job)| (drv.as_str(), job)))
        })?;
        let jobs = store.list_mesh_submissions()?.into_iter().collect();
        Ok(Submissions { store, jobs, unsaved: Mutex::new(BTreeSet::new()) })
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SubmittedJob)> {
        self.jobs.iter()
    }

    /// The entry of a `.drv` base name.
    pub fn get(&self, drv: &str) -> Option<&SubmittedJob> {
        self.jobs.get(drv)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Add or replace an entry (in memory; call [`Submissions::save`]).
    pub fn insert(&mut self, drv: String, job: SubmittedJob) {
        self.unsaved.get_mut().unwrap_or_else(PoisonError::into_inner).insert(drv.clone());
        self.jobs.insert(drv, job);
    }

    /// Remove an entry (in memory; call [`Submissions::save`]); whether it was there.
    pub fn remove(&mut self, drv: &str) -> bool {
        let was = self.jobs.remove(drv).is_some();
        if was {
            self.unsaved.get_mut().unwrap_or_else(PoisonError::into_inner).insert(drv.to_string());
        }
        was
    }

    /// Persist the changes made since the last save (blocking): one durable store transaction
    /// writes the inserted entries and deletes the removed ones. On `Ok` the store holds exactly
    /// the in-memory set; on `Err` nothing was written and the next save tries again.
    pub fn save(&self) -> Result<(), StoreError> {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(PoisonError::into_inner);
        if unsaved.is_empty() {
            return Ok(());
        }
        self.store.write(|w| {
            for drv in unsaved.iter() {
                match self.jobs.get(drv) {
                    Some(job) => w.put_mesh_submission(drv, job)?,
                    None => {
                        w.remove_mesh_submission(drv)?;
                    }
                }
            }
            Ok(())
        })?;
        unsaved.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::put_raw_row;
    use buildmesh_protocol::id::JobId;

    fn job(n: u8) -> SubmittedJob {
        SubmittedJob {
            job: JobId::from_bytes([n; 32]),
            submitted_at_ms: 5 + u64::from(n),
            priority: 1,
            replicas: 2,
            outputs: BTreeSet::new(),
            inputs: BTreeSet::from(["x.drv".to_string()]),
        }
    }

    fn legacy(dir: &Path) -> std::path::PathBuf {
        dir.join("mesh/submissions.json")
    }

    #[test]
    fn round_trip_through_a_reopened_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Submissions::load(Store::open(dir.path()).unwrap(), &legacy(dir.path())).unwrap();
            assert!(s.is_empty());
            s.insert("a.drv".into(), job(1));
            s.insert("b.drv".into(), job(2));
            s.insert("c.drv".into(), job(3));
            s.save().unwrap();
            assert!(s.remove("b.drv"));
            assert!(!s.remove("nope.drv"));
            s.insert("c.drv".into(), job(4));
            s.save().unwrap();
            s.save().unwrap();
            // Unsaved changes are not in the store.
            s.insert("d.drv".into(), job(5));
        }
        let s = Submissions::load(Store::open(dir.path()).unwrap(), &legacy(dir.path())).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("a.drv"), Some(&job(1)));
        assert_eq!(s.get("b.drv"), None);
        assert_eq!(s.get("c.drv"), Some(&job(4)));
        assert_eq!(s.get("d.drv"), None);
    }

    #[test]
    fn legacy_file_is_imported_then_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let file = legacy(dir.path());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let old = BTreeMap::from([("a.drv".to_string(), job(1)), ("b.drv".to_string(), job(2))]);
        // The format older builds wrote.
        let bytes = serde_json::to_vec_pretty(&old).unwrap();
        std::fs::write(&file, &bytes).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut s = Submissions::load(store.clone(), &file).unwrap();
        assert_eq!(s.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>(), old);
        assert!(!file.exists());
        assert_eq!(std::fs::read(dir.path().join("mesh/submissions.json.imported")).unwrap(), bytes);
        // Imported into the store, where later changes land.
        assert_eq!(store.list_mesh_submissions().unwrap().len(), 2);
        assert!(s.remove("a.drv"));
        s.save().unwrap();
        drop((s, store));
        let s = Submissions::load(Store::open(dir.path()).unwrap(), &file).unwrap();
        assert_eq!(s.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["b.drv"]);
    }

    #[test]
    fn unreadable_legacy_file_is_kept_and_load_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = legacy(dir.path());
        let store = Store::open(dir.path()).unwrap();
        store.put_mesh_submissions([("a.drv", &job(1))]).unwrap();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"[truncated").unwrap();
        let s = Submissions::load(store, &file).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a.drv"), Some(&job(1)));
        assert!(!file.exists());
        assert_eq!(std::fs::read(dir.path().join("mesh/submissions.json.unreadable")).unwrap(), b"[truncated");
    }

    #[test]
    fn corrupt_stored_submission_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_mesh_submissions([("a.drv", &job(1))]).unwrap();
        put_raw_row(&store, "mesh_submissions", "b.drv", b"\xff\xff garbage");
        let err = Submissions::load(store.clone(), &legacy(dir.path())).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { table: "mesh_submissions", key, .. } if key == "b.drv"), "{err}");
        assert!(err.to_string().contains("mesh_submissions") && err.to_string().contains("b.drv"), "{err}");
        // Nothing was forgotten: both rows are still there.
        assert_eq!(store.get_mesh_submission("a.drv").unwrap(), Some(job(1)));
        assert!(store.get_mesh_submission("b.drv").is_err());
    }
}
