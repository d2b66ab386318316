//! The end of a run: the liveness checks and the report (with the central baseline's schedule).

use std::collections::BTreeSet;

use super::{T0, World};
use crate::report::Report;

impl World {
    /// Check liveness and build the report (after [`World::run_until`]).
    pub fn into_report(mut self) -> Report {
        let now = self.now;
        if self.done_at.is_none() {
            let missing: Vec<(u32, u32)> = self
                .nodes
                .iter()
                .enumerate()
                .flat_map(|(i, n)| n.submits.iter().filter(|d| !n.resolved.contains(d)).map(move |d| (i as u32, *d)))
                .take(5)
                .collect();
            self.checker.violation(
                now,
                format!(
                    "liveness: {} submissions unresolved at the time limit, e.g. (client, drv) {missing:?}",
                    self.unresolved
                ),
            );
        }
        let max_attempts = self.mesh_cfg.max_attempts as usize;
        let mut may_fail = vec![false; self.dag.drvs.len()];
        for (d, spec) in self.dag.drvs.iter().enumerate() {
            may_fail[d] = spec.expected_fail
                || self.checker.truth[d].failures.len() >= max_attempts
                || spec.deps.iter().any(|&x| may_fail[x as usize]);
        }
        let submitted: BTreeSet<u32> = self.nodes.iter().flat_map(|n| n.submits.iter().copied()).collect();
        let failed: BTreeSet<u32> = self.nodes.iter().flat_map(|n| n.failed.iter().copied()).collect();
        if self.done_at.is_some() {
            for &d in &submitted {
                if !may_fail[d as usize] && !self.checker.is_complete(d) {
                    let n = self.checker.trusted_attesters(d);
                    self.checker.violation(now, format!("liveness: drv {d} ended with {n} trusted attestations (< k)"));
                }
                if self.dag.drvs[d as usize].broken && self.checker.is_complete(d) {
                    self.checker.violation(now, format!("broken drv {d} was attested"));
                }
            }
        }
        let k = usize::from(self.cfg.replicas);
        let byzantine: Vec<bool> = self.nodes.iter().map(|n| n.byzantine).collect();
        let central = crate::central::schedule(&self.cfg, &self.mesh_cfg, &self.dag, &byzantine);
        let truth = &self.checker.truth;
        Report {
            seed: self.cfg.seed,
            nodes: self.cfg.nodes,
            drvs: self.cfg.drvs,
            replicas: self.cfg.replicas,
            completion_ms: self.done_at.map(|t| t - (T0 + 1_000)),
            drvs_complete: submitted.iter().filter(|d| self.checker.is_complete(**d)).count(),
            drvs_failed: failed.len(),
            builds_started: self.builds_started,
            attestations: truth.iter().map(|t| t.attesters.len() as u64).sum(),
            duplicated_builds: truth.iter().map(|t| t.attesters.len().saturating_sub(k) as u64).sum(),
            cancelled_builds: self.cancelled,
            cancelled_by_reason: self.cancelled_by,
            cancelled_build_ms: self.cancelled_ms,
            failures: self.failures,
            messages: self.messages,
            messages_by_kind: self.by_kind,
            deliveries: self.deliveries,
            transmissions: self.transmissions.0,
            bytes_sent: self.transmissions.1,
            queued_build_ms: self.queued_ms,
            central,
            max_claims: self.checker.max_claims,
            max_claims_stable: self.checker.max_claims_stable,
            transient_overlaps: self.checker.transient_overlaps,
            crashes: self.crashes,
            partitions: self.partitions,
            violations: self.checker.violation_count,
            violation_log: self.checker.violations.clone(),
            trace_hash: hex::encode(self.trace.finalize().as_bytes()),
            steps: self.steps,
            shards: self.topics.shards(),
            wall_s: 0.0,
            peak_rss_bytes: 0,
        }
    }
}
