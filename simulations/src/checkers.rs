//! Ground truth and the invariants checked after every step.
//!
//! 1. **No output accepted without quorum**: whenever a node reports an output as accepted (event
//!    or gateway query), at least `quorum` distinct trusted builders really published attestations
//!    of that NarHash, and for a reproducible derivation it is the true NarHash.
//! 2. **Completion is real**: a node reports a job complete only when k distinct trusted builders
//!    really attested it.
//! 3. **Dependencies first**: no job is published, and no build starts, before every dependency
//!    has k trusted attestations.
//! 4. **At most k live claims in a stable view**: a view is stable when no crash, restart,
//!    partition or heal happened within the stability window (max(lease, member TTL) + claim
//!    timeout) and no partition is active. Without message loss, more than k nodes building one
//!    job in a stable view is a violation at once; with loss, a lost renewal can make a node take
//!    over by mistake, so an overlap is a violation only if it outlasts two renewal intervals
//!    plus twice the maximum latency (the time the protocol needs to resolve it).
//! 5. **Liveness**: at the end, every submitted derivation is resolved at its clients, and every
//!    derivation that is not broken (or behind a broken one) has k trusted attestations.
//! 6. **The driver never gets an error** from the machine for inputs it derives from outputs.

use std::collections::{BTreeMap, BTreeSet};

use buildmesh_protocol::id::NodeId;

use crate::dag::Dag;

/// Ground truth about one derivation.
#[derive(Debug, Clone, Default)]
pub(crate) struct DrvTruth {
    /// Published attestations: builder -> NarHash (first one).
    pub(crate) attesters: BTreeMap<NodeId, [u8; 32]>,
    /// Builders that published a failure.
    pub(crate) failures: BTreeSet<NodeId>,
    /// Nodes with a (non-forced) build queued or running.
    pub(crate) active: BTreeSet<u32>,
    pub(crate) overlap_since: Option<u64>,
    pub(crate) overlap_reported: bool,
    /// When k trusted builders had attested it.
    pub(crate) complete_at: Option<u64>,
}

/// The invariant checker and the counters of the report.
#[derive(Debug)]
pub(crate) struct Checker {
    k: usize,
    quorum: usize,
    trusted: Option<BTreeSet<NodeId>>,
    loss_free: bool,
    resolve_bound_ms: u64,
    pub(crate) truth: Vec<DrvTruth>,
    overlapping: BTreeSet<u32>,
    pub(crate) violations: Vec<String>,
    pub(crate) violation_count: u64,
    pub(crate) max_claims: usize,
    pub(crate) max_claims_stable: usize,
    pub(crate) transient_overlaps: u64,
}

const MAX_RECORDED: usize = 50;

impl Checker {
    pub(crate) fn new(
        dag: &Dag,
        k: usize,
        quorum: usize,
        trusted: Option<BTreeSet<NodeId>>,
        loss_free: bool,
        resolve_bound_ms: u64,
    ) -> Checker {
        Checker {
            k,
            quorum,
            trusted,
            loss_free,
            resolve_bound_ms,
            truth: vec![DrvTruth::default(); dag.drvs.len()],
            overlapping: BTreeSet::new(),
            violations: Vec::new(),
            violation_count: 0,
            max_claims: 0,
            max_claims_stable: 0,
            transient_overlaps: 0,
        }
    }

    pub(crate) fn violation(&mut self, now: u64, what: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_RECORDED {
            self.violations.push(format!("t={now}: {what}"));
        }
    }

    fn trusted(&self, n: &NodeId) -> bool {
        self.trusted.as_ref().is_none_or(|t| t.contains(n))
    }

    pub(crate) fn trusted_attesters(&self, d: u32) -> usize {
        self.truth[d as usize].attesters.keys().filter(|n| self.trusted(n)).count()
    }

    pub(crate) fn is_complete(&self, d: u32) -> bool {
        self.trusted_attesters(d) >= self.k
    }

    pub(crate) fn on_attestation(&mut self, now: u64, node: u32, id: NodeId, d: u32, hash: [u8; 32]) {
        let t = &mut self.truth[d as usize];
        t.active.remove(&node);
        t.attesters.entry(id).or_insert(hash);
        if t.complete_at.is_none() && self.is_complete(d) {
            self.truth[d as usize].complete_at = Some(now);
        }
    }

    pub(crate) fn on_failure(&mut self, node: u32, id: NodeId, d: u32) {
        let t = &mut self.truth[d as usize];
        t.active.remove(&node);
        t.failures.insert(id);
    }

    /// Invariant 3 (builds) and 4 (bookkeeping).
    pub(crate) fn on_start(&mut self, now: u64, node: u32, d: u32, deps: &[u32], forced: bool, stable: bool) {
        for &x in deps {
            if !self.is_complete(x) {
                self.violation(now, format!("node {node} starts drv {d} before its dependency {x} is complete"));
            }
        }
        if forced {
            return;
        }
        let t = &mut self.truth[d as usize];
        t.active.insert(node);
        let n = t.active.len();
        self.max_claims = self.max_claims.max(n);
        if stable {
            self.max_claims_stable = self.max_claims_stable.max(n);
        }
        if n > self.k {
            if t.overlap_since.is_none() {
                t.overlap_since = Some(now);
                t.overlap_reported = false;
                if stable {
                    self.transient_overlaps += 1;
                }
            }
            self.overlapping.insert(d);
        }
    }

    pub(crate) fn on_stop(&mut self, node: u32, d: u32) {
        self.truth[d as usize].active.remove(&node);
    }

    pub(crate) fn on_crash(&mut self, node: u32) {
        for t in &mut self.truth {
            t.active.remove(&node);
        }
    }

    /// Invariant 3 (publication).
    pub(crate) fn on_published(&mut self, now: u64, node: u32, d: u32, deps: &[u32]) {
        for &x in deps {
            if !self.is_complete(x) {
                self.violation(now, format!("node {node} publishes drv {d} before its dependency {x} is complete"));
            }
        }
    }

    /// Invariant 1.
    pub(crate) fn on_accepted(
        &mut self,
        now: u64,
        node: u32,
        d: u32,
        hash: &[u8; 32],
        reproducible: bool,
        true_hash: &[u8; 32],
    ) {
        let agreeing = self.truth[d as usize].attesters.iter().filter(|(n, h)| *h == hash && self.trusted(n)).count();
        if agreeing < self.quorum {
            self.violation(
                now,
                format!(
                    "node {node} accepts drv {d} output with {agreeing} trusted agreeing builders (< {})",
                    self.quorum
                ),
            );
        }
        if reproducible && hash != true_hash {
            self.violation(now, format!("node {node} accepts a forged NarHash for drv {d}"));
        }
    }

    /// Invariant 2.
    pub(crate) fn on_complete(&mut self, now: u64, node: u32, d: u32) {
        if !self.is_complete(d) {
            let n = self.trusted_attesters(d);
            self.violation(
                now,
                format!("node {node} reports drv {d} complete with {n} trusted attesters (< {})", self.k),
            );
        }
    }

    /// Invariant 4, after every step.
    pub(crate) fn after_step(&mut self, now: u64, stable_since: Option<u64>) {
        if self.overlapping.is_empty() {
            return;
        }
        let ds: Vec<u32> = self.overlapping.iter().copied().collect();
        for d in ds {
            let t = &mut self.truth[d as usize];
            if t.active.len() <= self.k {
                t.overlap_since = None;
                self.overlapping.remove(&d);
                continue;
            }
            let (Some(stable), Some(since)) = (stable_since, t.overlap_since) else { continue };
            if t.overlap_reported {
                continue;
            }
            let start = since.max(stable);
            if self.loss_free || now.saturating_sub(start) > self.resolve_bound_ms {
                t.overlap_reported = true;
                let n = t.active.len();
                let who: Vec<u32> = t.active.iter().copied().collect();
                self.violation(now, format!("drv {d} has {n} live claims {who:?} (> k = {}) in a stable view", self.k));
            }
        }
    }
}
