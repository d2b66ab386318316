//! The figures of one run as one JSON object (`sim --json`), for scripts and the sweep's charts.
//! The field names are an interface: keep them.

use serde::{Deserialize, Serialize};

use crate::Report;

/// One run's figures. Times in seconds of virtual time unless named `wall_s`; `None` (JSON
/// `null`) when the run or the central schedule did not finish within the time limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Derivations.
    pub drvs: usize,
    /// k.
    pub replicas: u8,
    /// Crashes per node per virtual hour.
    pub churn: f64,
    /// The mesh's makespan: from the submission until every client had every submission resolved.
    pub makespan_s: Option<f64>,
    /// The central list scheduler's makespan on the same workload ([`crate::central`]).
    pub central_makespan_s: Option<f64>,
    /// `makespan_s / central_makespan_s`.
    pub makespan_ratio: Option<f64>,
    /// Successful builds (distinct attesters) beyond k per derivation, summed.
    pub duplicated_builds: u64,
    /// `duplicated_builds / (k × drvs)`.
    pub duplicated_fraction: f64,
    /// Builds started in the mesh (cancelled and failed ones included).
    pub builds_started: u64,
    /// Builds started by the central schedule.
    pub central_builds_started: u64,
    /// Messages each node received per derivation (see [`Report::messages_per_node_per_job`]).
    pub messages_per_node_per_job: f64,
    /// Bytes each node received per derivation, envelopes included.
    pub bytes_per_node_per_job: f64,
    /// Messages each node published per derivation.
    pub published_per_node_per_job: f64,
    /// Of `messages_per_node_per_job`, the announcements (every node announces itself every
    /// `announce_interval_ms` to every other member of its shard: with one shard this share
    /// grows with N). Computed from the announcements published × (members per shard − 1), so it
    /// ignores `--loss`.
    #[serde(default)]
    pub announcements_per_node_per_job: f64,
    /// Seconds claimed builds waited for a slot at a busy builder, summed over builds.
    #[serde(default)]
    pub queued_build_s: f64,
    /// Derivations complete / failed in the mesh.
    pub drvs_complete: usize,
    /// Derivations failed in the mesh.
    pub drvs_failed: usize,
    /// Crashes injected.
    pub crashes: u64,
    /// Invariant violations (must be 0).
    pub violations: u64,
    /// Wall time of the run (world construction, run and central schedule), seconds.
    pub wall_s: f64,
    /// Peak resident memory of the process so far (`VmHWM`), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The trace hash (equal seeds, equal hashes).
    pub trace_hash: String,
}

impl Figures {
    /// The figures of `r`, with the host's cost of the run.
    pub fn new(r: &Report, churn: f64, wall_s: f64, peak_rss_bytes: Option<u64>) -> Figures {
        let per_job = (r.nodes.max(1) * r.drvs.max(1)) as f64;
        Figures {
            seed: r.seed,
            nodes: r.nodes,
            drvs: r.drvs,
            replicas: r.replicas,
            churn,
            makespan_s: r.completion_ms.map(|ms| ms as f64 / 1000.0),
            central_makespan_s: r.central.makespan_ms.map(|ms| ms as f64 / 1000.0),
            makespan_ratio: r.makespan_ratio(),
            duplicated_builds: r.duplicated_builds,
            duplicated_fraction: r.duplicated_fraction(),
            builds_started: r.builds_started,
            central_builds_started: r.central.builds_started,
            messages_per_node_per_job: r.messages_per_node_per_job(),
            bytes_per_node_per_job: r.bytes_per_node_per_job(),
            published_per_node_per_job: r.messages as f64 / per_job,
            // An announcement reaches the other members of its author's shard (all N − 1 nodes
            // with one shard).
            announcements_per_node_per_job: r.messages_by_kind[0] as f64
                * (r.nodes as f64 / f64::from(r.shards.max(1)) - 1.0).max(0.0)
                / per_job,
            queued_build_s: r.queued_build_ms as f64 / 1000.0,
            drvs_complete: r.drvs_complete,
            drvs_failed: r.drvs_failed,
            crashes: r.crashes,
            violations: r.violations,
            wall_s,
            peak_rss_bytes,
            trace_hash: r.trace_hash.clone(),
        }
    }

    /// The one-line JSON object.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and options always serializes.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
