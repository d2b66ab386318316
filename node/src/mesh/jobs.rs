//! This node's own submissions to the mesh, persisted until they are decided.
//!
//! The state machine keeps nothing on disk; after a restart the driver submits the unfinished
//! jobs again (same job ids) from `DATA/mesh/submissions.json`. An entry is removed when the
//! job is complete (its outputs fetched and its build recorded as done) or failed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use buildmesh_protocol::id::JobId;
use serde::{Deserialize, Serialize};

use super::sync::write_atomically;

/// One submitted derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedJob {
    /// The job id.
    pub job: JobId,
    /// When it was first submitted (Unix ms).
    pub submitted_at_ms: u64,
    /// Priority.
    pub priority: i32,
    /// Replication factor.
    pub replicas: u8,
    /// Outputs wanted (empty = all).
    pub outputs: BTreeSet<String>,
    /// Input derivations (base names) that had to be built first.
    pub inputs: BTreeSet<String>,
}

/// The persisted set, keyed by `.drv` base name.
#[derive(Debug)]
pub struct Submissions {
    path: PathBuf,
    jobs: BTreeMap<String, SubmittedJob>,
}

impl Submissions {
    /// Load `path` (missing: empty; unreadable: empty, with a warning).
    pub fn load(path: PathBuf) -> Submissions {
        let jobs = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), cause = %e, "submission file unreadable; forgetting it");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Submissions { path, jobs }
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

    /// Add entries (in memory; call [`Submissions::save`]).
    pub fn insert(&mut self, drv: String, job: SubmittedJob) {
        self.jobs.insert(drv, job);
    }

    /// Remove an entry (in memory); whether it was there.
    pub fn remove(&mut self, drv: &str) -> bool {
        self.jobs.remove(drv).is_some()
    }

    /// Persist (blocking; atomic).
    pub fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.jobs).unwrap_or_default();
        write_atomically(&self.path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut s = Submissions::load(path.clone());
        assert!(s.is_empty());
        let job = SubmittedJob {
            job: JobId::from_bytes([1; 32]),
            submitted_at_ms: 5,
            priority: 1,
            replicas: 2,
            outputs: BTreeSet::new(),
            inputs: BTreeSet::from(["x.drv".to_string()]),
        };
        s.insert("a.drv".into(), job.clone());
        s.save().unwrap();
        let s = Submissions::load(path);
        assert_eq!(s.get("a.drv"), Some(&job));
    }
}
