//! The status of every job of a revision (issue 13 item 2), with counts per system.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::facts::{FactState, OutputVerdict, RevisionFacts};
use super::graph::{FAILED_INPUTS_CAP, failed_inputs, topo_order};
use crate::revision::Manifest;

/// The status of one job (JSON: `succeeded`, `failed`, `blocked`, `building`, `queued`, `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// At least one trusted attestation.
    Succeeded,
    /// The mesh gave up on it.
    Failed,
    /// Not built because a transitive input failed (named by `blocked_by`).
    Blocked,
    /// A builder holds a live claim.
    Building,
    /// Submitted, waiting for a builder.
    Queued,
    /// Nothing known.
    Unknown,
}

impl JobState {
    /// Every state, in the order counts are printed.
    pub const ALL: [JobState; 6] = [
        JobState::Succeeded,
        JobState::Failed,
        JobState::Blocked,
        JobState::Building,
        JobState::Queued,
        JobState::Unknown,
    ];

    /// The JSON string of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Blocked => "blocked",
            JobState::Building => "building",
            JobState::Queued => "queued",
            JobState::Unknown => "unknown",
        }
    }
}

/// The status of one job of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The package name.
    pub package: String,
    /// Its version (may be empty).
    pub version: String,
    /// The system of its derivation.
    pub system: String,
    /// The absolute `.drv` path.
    pub drv: String,
    /// Its status.
    pub status: JobState,
    /// With `succeeded`: the worst verdict over its outputs.
    pub verdict: Option<OutputVerdict>,
    /// With `blocked`: the failed input that blocks it (the one with the smallest store path among
    /// the failed derivations reachable through inputs that did not succeed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    /// With `blocked`: how many failed inputs block it (counted up to 16; 16 means "16 or more").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blocked_by_count: u32,
    /// Builders that attested it (trusted ones first).
    #[serde(default)]
    pub builders: Vec<String>,
    /// With `failed`: the signed reasons, as `{builder, reason}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
    /// When its derivation was first built (unix ms), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_at_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One builder's signed failure of a derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Who failed it.
    pub builder: String,
    /// The signed reason.
    pub reason: String,
}

/// Jobs per status for one system (every status present, zero or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// Jobs `succeeded`.
    pub succeeded: u64,
    /// Jobs `failed`.
    pub failed: u64,
    /// Jobs `blocked`.
    pub blocked: u64,
    /// Jobs `building`.
    pub building: u64,
    /// Jobs `queued`.
    pub queued: u64,
    /// Jobs `unknown`.
    pub unknown: u64,
}

impl StatusCounts {
    /// The count of `state`.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Succeeded => self.succeeded,
            JobState::Failed => self.failed,
            JobState::Blocked => self.blocked,
            JobState::Building => self.building,
            JobState::Queued => self.queued,
            JobState::Unknown => self.unknown,
        }
    }

    fn bump(&mut self, state: JobState) {
        let slot = match state {
            JobState::Succeeded => &mut self.succeeded,
            JobState::Failed => &mut self.failed,
            JobState::Blocked => &mut self.blocked,
            JobState::Building => &mut self.building,
            JobState::Queued => &mut self.queued,
            JobState::Unknown => &mut self.unknown,
        };
        *slot += 1;
    }

    /// All jobs counted.
    pub fn total(&self) -> u64 {
        JobState::ALL.iter().map(|&s| self.get(s)).sum()
    }
}

/// The status of every job of a revision (`jobs` in the manifest's order: by package, then drv)
/// and the counts per system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionStatus {
    /// Every job.
    pub jobs: Vec<JobStatus>,
    /// `{system: {status: n}}`.
    pub counts: BTreeMap<String, StatusCounts>,
}

/// The state of every derivation of the graph (not only the jobs'), and for the blocked ones the
/// failed inputs: the shared first step of status and weather.
#[derive(Debug)]
pub(crate) struct DrvStates {
    pub(crate) order: Vec<u32>,
    pub(crate) states: Vec<JobState>,
    pub(crate) blockers: Vec<Option<Box<[u32]>>>,
}

pub(crate) fn drv_states(manifest: &Manifest, facts: &RevisionFacts) -> DrvStates {
    let n = manifest.drvs.len();
    let fact_state = |d: usize| facts.get(d).state;
    let failed: Vec<bool> = (0..n).map(|d| fact_state(d) == FactState::Failed).collect();
    let succeeded: Vec<bool> = (0..n).map(|d| fact_state(d) == FactState::Succeeded).collect();
    let order = topo_order(manifest);
    let blockers = failed_inputs(manifest, &order, &failed, &succeeded);
    let states = (0..n)
        .map(|d| match fact_state(d) {
            FactState::Succeeded => JobState::Succeeded,
            FactState::Failed => JobState::Failed,
            _ if blockers[d].is_some() => JobState::Blocked,
            FactState::Building => JobState::Building,
            FactState::Queued => JobState::Queued,
            FactState::Unknown => JobState::Unknown,
        })
        .collect();
    DrvStates { order, states, blockers }
}

/// The status of every job of `manifest` from the node's `facts` (collected with
/// [`RevisionFacts::collect`]). Linear in the graph (O(V+E), times a small constant when inputs
/// failed).
pub fn revision_status(manifest: &Manifest, facts: &RevisionFacts) -> RevisionStatus {
    let st = drv_states(manifest, facts);
    let store_dir = &manifest.store_dir;
    let system_name = |s: u16| manifest.systems.get(s as usize).map(String::as_str).unwrap_or("unknown");
    let mut counts: BTreeMap<String, StatusCounts> = BTreeMap::new();
    // Count by system index first (no string lookups per job).
    let mut by_system = vec![StatusCounts::default(); manifest.systems.len() + 1];
    let mut jobs = Vec::with_capacity(manifest.jobs.len());
    for job in &manifest.jobs {
        let d = job.drv as usize;
        let Some(drv) = manifest.drvs.get(d) else {
            continue; // the decoder refuses this; skip rather than panic
        };
        let f = facts.get(d);
        let status = st.states[d];
        let (blocked_by, blocked_by_count) = match (&st.blockers[d], status) {
            (Some(b), JobState::Blocked) => (
                b.first().and_then(|&i| manifest.drvs.get(i as usize)).map(|i| store_dir.display(&i.drv)),
                b.len().min(FAILED_INPUTS_CAP) as u32,
            ),
            _ => (None, 0),
        };
        let sys = (drv.system as usize).min(manifest.systems.len());
        by_system[sys].bump(status);
        jobs.push(JobStatus {
            package: job.package.clone(),
            version: job.version.clone(),
            system: system_name(drv.system).to_string(),
            drv: store_dir.display(&drv.drv),
            status,
            verdict: if status == JobState::Succeeded { f.verdict } else { None },
            blocked_by,
            blocked_by_count,
            builders: f.builders.clone(),
            failures: if status == JobState::Failed {
                f.failures.iter().map(|(b, r)| Failure { builder: b.clone(), reason: r.clone() }).collect()
            } else {
                Vec::new()
            },
            built_at_ms: f.built_at_ms,
        });
    }
    for (s, c) in by_system.into_iter().enumerate() {
        if c.total() > 0 {
            let name = manifest.systems.get(s).map(String::as_str).unwrap_or("unknown");
            counts.insert(name.to_string(), c);
        }
    }
    RevisionStatus { jobs, counts }
}
