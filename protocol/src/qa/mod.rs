//! QA across revisions (issue 13): the status of a revision's jobs, the comparison of two
//! revisions, weather with root causes, history, and the ready verdict.
//!
//! Pure: the node gives what it knows about each derivation as [`DrvFacts`] (collected once per
//! manifest into [`RevisionFacts`]) and the current time as `now_ms`; everything here is a function
//! of those, linear or near-linear in the size of the derivation graph (designed for revisions of
//! 100,000+ jobs). Output types serialize to the JSON of issue 13 item 8 (extra fields are fine).
//!
//! - [`revision_status`]: every job's `succeeded` / `failed` / `blocked` / `building` / `queued` /
//!   `unknown`, with the verdict and the failed input that blocks it; counts per system.
//! - [`compare`]: new, removed, version-changed packages; per (package, system) `build_change` and
//!   `repro_change`; a summary of the classes.
//! - [`weather`] / [`weather_of_paths`]: substitutable outputs per system, NAR bytes, build rate,
//!   and the root causes ranked by dependents.
//! - [`package_history`] / [`drv_history`]: what a package had across revisions; where a
//!   derivation appears.
//! - [`ready`]: the verdict under a [`ReadyRule`].

mod compare;
mod facts;
mod graph;
mod history;
mod names;
mod ready;
mod status;
mod weather;

#[cfg(test)]
mod tests;

pub use compare::{
    BuildChange, CompareOptions, CompareSummary, Comparison, DerivationChange, ReproChange, VersionChange, compare,
};
pub use facts::{DrvFacts, DrvFactsSource, FactState, OutputFacts, OutputVerdict, RevisionFacts};
pub use graph::FAILED_INPUTS_CAP;
pub use history::{
    DrvHistory, DrvJob, DrvRevision, HistoryEntry, HistoryOutput, HistoryRevision, PackageHistory, drv_history,
    package_history,
};
pub use names::parse_drv_name;
pub use ready::{REASON_PACKAGES, ReadyReason, ReadyRule, ReadyVerdict, ReasonCode, ready};
pub use status::{Failure, JobState, JobStatus, RevisionStatus, StatusCounts, revision_status};
pub use weather::{
    CoverageEntry, DAY_MS, MissingOutput, PathItem, RootCause, SystemWeather, Weather, WeatherOptions, weather,
    weather_of_paths,
};

use serde::{Deserialize, Serialize};

use crate::revision::RevisionHeader;

/// The name `C@ID` of a revision.
pub fn revision_name(header: &RevisionHeader) -> String {
    format!("{}@{}", header.channel, header.commit)
}

/// A revision's header as the JSON of `revision list` / `revision show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSummary {
    /// `C@ID`.
    pub revision: String,
    /// The channel.
    pub channel: String,
    /// The branch.
    pub branch: String,
    /// The commit.
    pub commit: String,
    /// The submitter's key (as `NodeId` prints it).
    pub submitter: String,
    /// When it was created (unix ms, the submitter's clock).
    pub created_at_ms: u64,
    /// The manifest's blake3 hash, hex.
    pub manifest_hash: String,
    /// Jobs per system.
    pub jobs_per_system: std::collections::BTreeMap<String, u32>,
}

impl RevisionSummary {
    /// The summary of `header`.
    pub fn new(header: &RevisionHeader) -> RevisionSummary {
        RevisionSummary {
            revision: revision_name(header),
            channel: header.channel.clone(),
            branch: header.branch.clone(),
            commit: header.commit.clone(),
            submitter: header.submitter.to_string(),
            created_at_ms: header.created_at_ms,
            manifest_hash: hex::encode(header.manifest_hash),
            jobs_per_system: header.jobs_per_system.clone(),
        }
    }
}

/// The answer of `buildmesh revision show C@ID`: the header's fields and the status of every job,
/// flattened into one object (`revision`, `channel`, `branch`, `commit`, `submitter`, `jobs`,
/// `counts`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionShow {
    /// The header.
    #[serde(flatten)]
    pub summary: RevisionSummary,
    /// The jobs and counts.
    #[serde(flatten)]
    pub status: RevisionStatus,
}
