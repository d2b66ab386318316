//! History (issue 13 item 5): for a package, the derivations and outputs it had across revisions
//! (first and last revision seen, status and verdict); for a derivation, every revision it belongs to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::facts::OutputVerdict;
use super::revision_name;
use super::status::{JobState, RevisionStatus};
use crate::revision::{Manifest, RevisionHeader};
use crate::store_path::StorePath;

/// One revision as history reads it: the header, its manifest and the status of its jobs.
#[derive(Debug, Clone, Copy)]
pub struct HistoryRevision<'a> {
    /// The signed header.
    pub header: &'a RevisionHeader,
    /// Its manifest.
    pub manifest: &'a Manifest,
    /// The status of its jobs ([`super::revision_status`]).
    pub status: &'a RevisionStatus,
}

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryOutput {
    /// The output name.
    pub name: String,
    /// The absolute output path.
    pub path: String,
}

/// One derivation a package had on one system, over the revisions that contain it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The system.
    pub system: String,
    /// The version.
    pub version: String,
    /// The absolute `.drv` path.
    pub drv: String,
    /// Its outputs.
    pub outputs: Vec<HistoryOutput>,
    /// The first revision (by `created_at_ms`) that had it (`C@ID`).
    pub first_revision: String,
    /// When that revision was created (unix ms).
    pub first_seen_ms: u64,
    /// The last revision that had it.
    pub last_revision: String,
    /// When that revision was created (unix ms).
    pub last_seen_ms: u64,
    /// How many of the given revisions had it.
    pub revisions: u64,
    /// Its status now (from the last revision's status).
    pub status: JobState,
    /// Its verdict now.
    pub verdict: Option<OutputVerdict>,
}

/// The answer of `buildmesh history PACKAGE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageHistory {
    /// The package.
    pub package: String,
    /// Its derivations, in the order they first appeared (then by system and path).
    pub derivations: Vec<HistoryEntry>,
}

/// The history of `package` over `revisions` (the caller picks them, e.g. one branch's, and sorts
/// them by `created_at_ms`; the order decides "first" and "last"). O(R · (log J + jobs of the package)).
pub fn package_history(package: &str, revisions: &[HistoryRevision<'_>]) -> PackageHistory {
    // (system, drv) → entry, plus the order of first appearance.
    let mut entries: BTreeMap<(String, String), HistoryEntry> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for rev in revisions {
        let m = rev.manifest;
        let name = revision_name(rev.header);
        let start = m.jobs.partition_point(|j| j.package.as_str() < package);
        let status_start = rev.status.jobs.partition_point(|j| j.package.as_str() < package);
        let status_jobs = rev.status.jobs[status_start..].iter().take_while(|j| j.package == package);
        let status_jobs: Vec<_> = status_jobs.collect();
        for job in m.jobs[start..].iter().take_while(|j| j.package == package) {
            let Some(drv) = m.drvs.get(job.drv as usize) else { continue };
            let drv_path = m.store_dir.display(&drv.drv);
            let system = m.systems.get(drv.system as usize).cloned().unwrap_or_else(|| "unknown".into());
            let st = status_jobs.iter().find(|j| j.drv == drv_path);
            let status = st.map_or(JobState::Unknown, |j| j.status);
            let verdict = st.and_then(|j| j.verdict);
            let key = (system.clone(), drv_path.clone());
            match entries.get_mut(&key) {
                Some(e) => {
                    e.last_revision = name.clone();
                    e.last_seen_ms = rev.header.created_at_ms;
                    e.revisions += 1;
                    e.status = status;
                    e.verdict = verdict;
                }
                None => {
                    order.push(key.clone());
                    let outputs = drv
                        .outputs
                        .iter()
                        .map(|o| HistoryOutput { name: o.name.clone(), path: m.store_dir.display(&o.path) })
                        .collect();
                    entries.insert(
                        key,
                        HistoryEntry {
                            system,
                            version: job.version.clone(),
                            drv: drv_path,
                            outputs,
                            first_revision: name.clone(),
                            first_seen_ms: rev.header.created_at_ms,
                            last_revision: name.clone(),
                            last_seen_ms: rev.header.created_at_ms,
                            revisions: 1,
                            status,
                            verdict,
                        },
                    );
                }
            }
        }
    }
    let derivations = order.into_iter().filter_map(|k| entries.remove(&k)).collect();
    PackageHistory { package: package.to_string(), derivations }
}

/// A job that builds the derivation in one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrvJob {
    /// The package.
    pub package: String,
    /// The version.
    pub version: String,
}

/// One revision a derivation belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrvRevision {
    /// `C@ID`.
    pub revision: String,
    /// The channel.
    pub channel: String,
    /// The branch.
    pub branch: String,
    /// The commit.
    pub commit: String,
    /// When the revision was created (unix ms).
    pub created_at_ms: u64,
    /// The jobs of that revision built by this derivation (empty: it is only in the closure).
    pub jobs: Vec<DrvJob>,
}

/// Every revision a derivation belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrvHistory {
    /// The `.drv` base name.
    pub drv: String,
    /// The revisions containing it (as a job or in a job's closure), in the order given.
    pub revisions: Vec<DrvRevision>,
}

/// The revisions among `revisions` whose manifest's graph contains `drv` (binary search: the
/// manifests are in canonical order). O(R · (log V + J)).
pub fn drv_history(drv: &StorePath, revisions: &[(&RevisionHeader, &Manifest)]) -> DrvHistory {
    let mut out = Vec::new();
    for (header, m) in revisions {
        let Ok(index) = m.drvs.binary_search_by(|d| d.drv.cmp(drv)) else { continue };
        let jobs = m
            .jobs
            .iter()
            .filter(|j| j.drv as usize == index)
            .map(|j| DrvJob { package: j.package.clone(), version: j.version.clone() })
            .collect();
        out.push(DrvRevision {
            revision: revision_name(header),
            channel: header.channel.clone(),
            branch: header.branch.clone(),
            commit: header.commit.clone(),
            created_at_ms: header.created_at_ms,
            jobs,
        });
    }
    DrvHistory { drv: drv.to_string(), revisions: out }
}
