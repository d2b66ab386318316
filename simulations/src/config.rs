//! [`SimConfig`]: the size of the world, its faults, and the protocol configuration.

use anyhow::{Result, ensure};
use buildmesh_protocol::mesh::MeshConfig;

/// Everything a run depends on. Same config, same seed: same trace.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the ChaCha8 RNG that drives every random choice.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Number of derivations (a DAG).
    pub drvs: usize,
    /// Replication factor k of every job.
    pub replicas: u8,
    /// Distinct trusted builders that must agree before an output is accepted.
    pub quorum: usize,
    /// Number of nodes that submit (each submits the closure of some root derivations).
    pub clients: usize,
    /// Most direct dependencies per derivation.
    pub max_deps: usize,
    /// One-way message latency, uniform in this range (ms).
    pub latency_ms: (u64, u64),
    /// Probability that one delivery of a gossiped message to one node is lost.
    pub loss: f64,
    /// Crashes per node per virtual hour (each followed by a restart).
    pub churn: f64,
    /// Downtime after a crash, uniform in this range (ms).
    pub downtime_ms: (u64, u64),
    /// Number of partition episodes (a random 10–40 % of the nodes cut off from the rest).
    pub partitions: usize,
    /// Partition length, uniform in this range (ms).
    pub partition_ms: (u64, u64),
    /// Partitions start within this long after the start (ms).
    pub fault_window_ms: u64,
    /// Build duration per derivation, log-uniform in this range (ms); emulated builds take 3×.
    pub build_ms: (u64, u64),
    /// Fraction of derivations that fail deterministically (builder exit).
    pub broken: f64,
    /// Probability that one build fails transiently (timeout).
    pub flaky: f64,
    /// Fraction of derivations whose output differs per builder.
    pub unreproducible: f64,
    /// Fraction of nodes that attest a forged NarHash (all the same forgery: they collude).
    pub byzantine: f64,
    /// Sybil attacker (see `world/sybil.rs`): this many throwaway keys fail every job, and a
    /// liar member announces the most slots there are (0: no attacker).
    pub sybils: usize,
    /// Sybil members (see `world/sybil_members.rs`): fresh identities that join as members,
    /// claim and never deliver.
    pub sybil_members: usize,
    /// Every honest node lists the honest keys as its `builders` (issue 15 item 3).
    pub builders_policy: bool,
    /// Trust only honest nodes (what an operator does); `false` trusts every builder, so
    /// colluding liars can reach the quorum (used to show that the checker catches it).
    pub trust_honest_only: bool,
    /// Give up (a liveness violation) if the work is not done by this virtual time (ms).
    pub max_virtual_ms: u64,
    /// Members per shard of the mesh (`mesh.shards` becomes `ceil(nodes / shard_size)`; 0
    /// keeps `mesh.shards` as it is, one shard by default). See `protocol::mesh::shard`.
    pub shard_size: usize,
    /// The protocol's timers and limits.
    pub mesh: MeshConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            nodes: 20,
            drvs: 200,
            replicas: 2,
            quorum: 2,
            clients: 3,
            max_deps: 3,
            latency_ms: (10, 150),
            loss: 0.0,
            churn: 0.0,
            downtime_ms: (30_000, 600_000),
            partitions: 0,
            partition_ms: (60_000, 600_000),
            fault_window_ms: 3_600_000,
            build_ms: (10_000, 300_000),
            broken: 0.01,
            flaky: 0.02,
            unreproducible: 0.02,
            byzantine: 0.0,
            sybils: 0,
            sybil_members: 0,
            builders_policy: false,
            trust_honest_only: true,
            max_virtual_ms: 48 * 3_600_000,
            shard_size: 0,
            mesh: sim_mesh_config(),
        }
    }
}

/// The protocol defaults, with the limits raised to fit a simulation of this size.
pub fn sim_mesh_config() -> MeshConfig {
    MeshConfig::default()
}

impl SimConfig {
    /// Check ranges.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.nodes >= 1 && self.nodes <= 100_000, "--nodes must be 1..=100000, got {}", self.nodes);
        ensure!(self.drvs >= 1 && self.drvs <= 1_000_000, "--drvs must be 1..=1000000, got {}", self.drvs);
        ensure!(self.clients >= 1 && self.clients <= self.nodes, "--clients must be 1..=nodes, got {}", self.clients);
        ensure!(self.replicas >= 1 && self.replicas <= 16, "--replicas must be 1..=16");
        ensure!(self.quorum >= 1, "--quorum must be at least 1");
        for (name, p) in [
            ("loss", self.loss),
            ("broken", self.broken),
            ("flaky", self.flaky),
            ("unreproducible", self.unreproducible),
            ("byzantine", self.byzantine),
        ] {
            ensure!((0.0..=1.0).contains(&p), "--{name} must be a probability in [0, 1], got {p}");
        }
        ensure!(self.loss < 1.0, "--loss 1 would drop every message");
        ensure!(self.churn >= 0.0 && self.churn.is_finite(), "--churn must be >= 0");
        for (name, (lo, hi)) in [
            ("latency", self.latency_ms),
            ("downtime", self.downtime_ms),
            ("partition", self.partition_ms),
            ("build", self.build_ms),
        ] {
            ensure!(lo <= hi, "{name} range {lo}..{hi} is empty");
        }
        ensure!(self.build_ms.0 >= 1, "builds take at least 1 ms");
        self.mesh.validate()?;
        ensure!(
            self.mesh.max_drvs >= self.drvs,
            "mesh.max_drvs {} is below --drvs {}: nodes could not track every derivation",
            self.mesh.max_drvs,
            self.drvs
        );
        // Otherwise the clients' machines refuse submissions (a violation) and the run waits for
        // them until the time limit: 10,000 x 100,000 ran for 48 virtual hours that way.
        ensure!(
            self.mesh.max_pending_submissions >= self.drvs,
            "mesh.max_pending_submissions {} is below --drvs {}: a client could not queue its closure",
            self.mesh.max_pending_submissions,
            self.drvs
        );
        Ok(())
    }
}
