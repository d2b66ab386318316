//! The result of a run and its table.

use std::fmt;

use crate::central::CentralRun;

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Derivations.
    pub drvs: usize,
    /// k.
    pub replicas: u8,
    /// Virtual time from the first submission until every client had every submission resolved
    /// (`None`: not reached before the time limit).
    pub completion_ms: Option<u64>,
    /// Derivations that reached k trusted attestations.
    pub drvs_complete: usize,
    /// Derivations given up (broken, behind a broken one, or out of attempts).
    pub drvs_failed: usize,
    /// Builds started.
    pub builds_started: u64,
    /// Distinct (builder, derivation) attestations.
    pub attestations: u64,
    /// Attestations beyond k per derivation, summed (duplicated work).
    pub duplicated_builds: u64,
    /// Builds cancelled (yield, or complete elsewhere).
    pub cancelled_builds: u64,
    /// Of which: yielded to a better-placed claimant / the job completed elsewhere / failed.
    pub cancelled_by_reason: [u64; 3],
    /// Build time thrown away by cancellations (virtual ms of running builds).
    pub cancelled_build_ms: u64,
    /// Build failures published.
    pub failures: u64,
    /// Messages published, all nodes.
    pub messages: u64,
    /// Of which: announcements, job submissions, claims (renewals and releases included),
    /// attestations, failures (republications included).
    pub messages_by_kind: [u64; 5],
    /// Message deliveries, all nodes.
    pub deliveries: u64,
    /// Messages sent to a node, all nodes: each published message once per node it goes to
    /// (not lost, not cut off by a partition), up or not.
    pub transmissions: u64,
    /// Bytes of those transmissions: the message's encoding plus its signed envelope
    /// (`wire::ENVELOPE_OVERHEAD`), without gossipsub's framing.
    pub bytes_sent: u64,
    /// Time claimed builds waited at their builder for a free slot, summed. A machine claims only
    /// with a free slot, so this stays near 0 (targeted retries aside): a busy designated builder
    /// costs claim timeouts instead, which show in the makespan ratio.
    pub queued_build_ms: u64,
    /// The same workload scheduled centrally ([`crate::central`]).
    pub central: CentralRun,
    /// Most nodes building one derivation at once (non-forced), at any time.
    pub max_claims: usize,
    /// The same, in stable views only.
    pub max_claims_stable: usize,
    /// Overlaps (more than k builders) that began in a stable view and resolved in time.
    pub transient_overlaps: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Invariant violations (must be 0).
    pub violations: u64,
    /// The first violations, for the log.
    pub violation_log: Vec<String>,
    /// blake3 over every output of every node, in order: equal seeds give equal hashes.
    pub trace_hash: String,
    /// Events processed.
    pub steps: u64,
    /// Shards of the mesh (`protocol::mesh::shard`; 1: not split).
    pub shards: u32,
    /// Wall-clock seconds the run took (set by [`Report::measure`]; 0 until then, so that two
    /// runs of one seed compare equal).
    pub wall_s: f64,
    /// Peak resident memory of the process so far, bytes (`VmHWM` of `/proc/self/status`; set by
    /// [`Report::measure`]; 0 until then or where there is no `/proc`).
    pub peak_rss_bytes: u64,
}

pub use crate::resources::peak_rss_bytes;

fn hms(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

impl Report {
    /// Fill `wall_s` (since `started`) and `peak_rss_bytes` (now).
    pub fn measure(&mut self, started: std::time::Instant) {
        self.wall_s = started.elapsed().as_secs_f64();
        self.peak_rss_bytes = peak_rss_bytes().unwrap_or(0);
    }

    /// Messages published per node.
    pub fn messages_per_node(&self) -> f64 {
        self.messages as f64 / self.nodes.max(1) as f64
    }

    /// The mesh's makespan over the central one (`None` if either did not finish).
    pub fn makespan_ratio(&self) -> Option<f64> {
        match (self.completion_ms, self.central.makespan_ms) {
            (Some(m), Some(c)) => Some(m as f64 / c.max(1) as f64),
            _ => None,
        }
    }

    /// Duplicated builds as a fraction of the k × derivations builds the protocol intends.
    pub fn duplicated_fraction(&self) -> f64 {
        self.duplicated_builds as f64 / (usize::from(self.replicas) * self.drvs).max(1) as f64
    }

    /// Messages each node receives per derivation ([`Report::transmissions`] / nodes / drvs).
    pub fn messages_per_node_per_job(&self) -> f64 {
        self.transmissions as f64 / self.nodes.max(1) as f64 / self.drvs.max(1) as f64
    }

    /// Bytes each node receives per derivation ([`Report::bytes_sent`] / nodes / drvs).
    pub fn bytes_per_node_per_job(&self) -> f64 {
        self.bytes_sent as f64 / self.nodes.max(1) as f64 / self.drvs.max(1) as f64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<(&str, String)> = vec![
            ("seed", self.seed.to_string()),
            ("nodes / drvs / k", format!("{} / {} / {}", self.nodes, self.drvs, self.replicas)),
            ("shards", self.shards.to_string()),
            ("completion time (virtual)", self.completion_ms.map_or("not reached".to_string(), hms)),
            ("drvs complete / failed", format!("{} / {}", self.drvs_complete, self.drvs_failed)),
            ("central makespan (virtual)", self.central.makespan_ms.map_or("not reached".to_string(), hms)),
            ("makespan ratio (mesh / central)", self.makespan_ratio().map_or("-".to_string(), |r| format!("{r:.3}"))),
            ("builds started", self.builds_started.to_string()),
            ("attestations", self.attestations.to_string()),
            (
                "duplicated builds (beyond k)",
                format!("{} ({:.2} %)", self.duplicated_builds, 100.0 * self.duplicated_fraction()),
            ),
            (
                "cancelled builds (yield / complete / failed)",
                format!(
                    "{} ({} / {} / {})",
                    self.cancelled_builds,
                    self.cancelled_by_reason[0],
                    self.cancelled_by_reason[1],
                    self.cancelled_by_reason[2]
                ),
            ),
            ("build time lost to cancellations", hms(self.cancelled_build_ms)),
            ("build time waiting for a busy builder's slot", hms(self.queued_build_ms)),
            ("build failures", self.failures.to_string()),
            ("messages per node (published)", format!("{:.1}", self.messages_per_node())),
            ("  announce / submit / claim / attest / fail", {
                let n = self.nodes.max(1) as f64;
                let k = self.messages_by_kind.map(|x| format!("{:.1}", x as f64 / n));
                k.join(" / ")
            }),
            ("deliveries per node", format!("{:.1}", self.deliveries as f64 / self.nodes.max(1) as f64)),
            (
                "received per node per job (messages / bytes)",
                format!("{:.1} / {:.0}", self.messages_per_node_per_job(), self.bytes_per_node_per_job()),
            ),
            ("max concurrent claims (any / stable view)", format!("{} / {}", self.max_claims, self.max_claims_stable)),
            ("transient overlaps in stable view", self.transient_overlaps.to_string()),
            ("crashes / partitions", format!("{} / {}", self.crashes, self.partitions)),
            ("invariant violations", self.violations.to_string()),
            ("events", self.steps.to_string()),
            ("trace hash", self.trace_hash[..16].to_string()),
            (
                "wall time / peak RSS",
                format!("{:.1} s / {:.0} MiB", self.wall_s, self.peak_rss_bytes as f64 / 1048576.0),
            ),
        ];
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let v = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        writeln!(f, "| {:w$} | {:>v$} |", "metric", "value")?;
        writeln!(f, "|{}|{}:|", "-".repeat(w + 2), "-".repeat(v + 1))?;
        for (k, val) in rows {
            writeln!(f, "| {k:w$} | {val:>v$} |")?;
        }
        for line in &self.violation_log {
            writeln!(f, "violation: {line}")?;
        }
        Ok(())
    }
}
