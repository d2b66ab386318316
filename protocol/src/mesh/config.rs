//! [`MeshConfig`] (timers, limits, trust) and [`LocalInfo`] (what this node announces).

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::id::NodeId;
use crate::store_path::StoreDir;
use crate::wire::validate_system;
use crate::wire::{MAX_FEATURES, MAX_LEASE_MS, MAX_REPLICAS, MAX_SLOTS, MAX_SYSTEMS, validate_feature, validate_label};

/// A configuration value that breaks a rule, named by its field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field is out of its range or inconsistent with another.
    #[error("mesh config field `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// This node's announced capabilities are invalid.
    #[error("local node info field `{field}`: {reason}")]
    Local {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Which builders count towards the quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustConfig {
    /// The trusted builders; `None` = every builder (use only in closed meshes and simulations).
    pub trusted: Option<BTreeSet<NodeId>>,
    /// How many distinct trusted builders must attest the same NarHash before an output is
    /// accepted (default 2).
    pub quorum: usize,
    /// Whether at least one of the agreeing trusted builders must have built natively: emulated
    /// attestations alone never make a quorum (`quorum_needs_native`, default false).
    pub needs_native: bool,
    /// Systems whose emulated builds never count here (`no_emulation_for`, default empty): an
    /// emulated attestation of a derivation for one of them is kept and shown, but its builder
    /// counts as untrusted for that output (a disagreement is still reported as one). While the
    /// set is not empty, an emulated attestation whose derivation's system is unknown does not
    /// count either (see [`TrustConfig::counts`]).
    pub no_emulation_for: BTreeSet<String>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig { trusted: None, quorum: 2, needs_native: false, no_emulation_for: Default::default() }
    }
}

impl TrustConfig {
    /// Whether `node` is trusted: its attestations count towards the quorum, and its claims,
    /// failures and attestations count for scheduling whether designated or not.
    pub fn is_trusted(&self, node: &NodeId) -> bool {
        self.trusted.as_ref().is_none_or(|t| t.contains(node))
    }

    /// Whether a result built in this mode (`emulated`) for a derivation of `system` (`None`:
    /// not known here) may count towards the quorum under `no_emulation_for`. A native result
    /// always may; an emulated one only for a known system that is not excluded (unknown counts
    /// as excluded while the set is not empty, so a missing `.drv` never lets one through).
    pub fn counts(&self, emulated: bool, system: Option<&str>) -> bool {
        !emulated || self.no_emulation_for.is_empty() || system.is_some_and(|s| !self.no_emulation_for.contains(s))
    }
}

/// Whose attestations count towards a job's replication factor k (the trust policy's quorum,
/// for serving an output, always counts trusted builders only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReplicaRule {
    /// Only trusted builders' (the default): a job is built until k trusted builders attested it,
    /// so that the quorum can be reached. Untrusted builders that placement designates still
    /// build, but their results do not reduce what is needed.
    #[default]
    Trusted,
    /// Trusted builders' and those of the builders this node designated for the job. For a node
    /// that trusts nobody but itself (no trusted keys configured): without this, every such node
    /// counts only its own attestation and builds every job itself (k = 1 gave n builds on n
    /// nodes). With it the mesh builds each job k times, on the builders placement chose.
    Designated,
}

/// Timers and limits of the mesh state machine. Every time is in milliseconds. Start from
/// [`MeshConfig::default`] and change fields; [`MeshConfig::validate`] (called by
/// [`crate::mesh::Mesh::new`]) checks the relations between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// The store directory of the mesh; messages about another store directory are ignored.
    pub store_dir: StoreDir,
    /// How often this node announces itself (default 30 s).
    pub announce_interval_ms: u64,
    /// A member not heard from for this long leaves the view (default 100 s: three announcements
    /// may be lost).
    pub member_ttl_ms: u64,
    /// Length of a claim's lease (default 120 s).
    pub lease_ms: u64,
    /// How often a builder renews its lease (default 30 s: four renewals per lease).
    pub renew_interval_ms: u64,
    /// A designated builder that has not claimed within this long is skipped (default 60 s).
    pub claim_timeout_ms: u64,
    /// After start, how long the node listens before it claims anything (default 65 s: one
    /// announcement and one renewal interval, plus slack), so that it knows the view and the live
    /// claims first.
    pub warmup_ms: u64,
    /// A job learned more than this long after its submission was published (a resubmission, or a
    /// gossip that was late) is claimed only after one renewal interval, so that the live claims of
    /// other builders are known first (default 5 s).
    pub fresh_job_ms: u64,
    /// How often the submitter republishes an unfinished job (default 120 s).
    pub resubmit_interval_ms: u64,
    /// Least time between two republications of this node's own result for one derivation, sent
    /// when another node shows it does not know the result (default 10 s).
    pub republish_interval_ms: u64,
    /// Messages whose timestamp lies further than this in the future are ignored (default 30 s).
    pub max_clock_skew_ms: u64,
    /// Replication factor used when a job asks for more than this (default and maximum 16).
    pub max_replicas: u8,
    /// Distinct builders that may fail a job before it is given up (default 4).
    pub max_attempts: u32,
    /// Distinct builders whose *deterministic* failure (builder exit, hash mismatch) ends the job
    /// (default 2: one more builder confirms the first one's failure).
    pub failure_quorum: u32,
    /// Trust policy for accepting outputs and counting replicas.
    pub trust: TrustConfig,
    /// Whose attestations count towards k (default: trusted builders only).
    pub replicas_from: ReplicaRule,
    /// Most members in the view (default 4096).
    pub max_members: usize,
    /// Most derivations tracked, finished ones included; finished ones are evicted oldest first
    /// (default 65,536).
    pub max_drvs: usize,
    /// Most *finished* derivations kept (default: no limit below `max_drvs`); beyond it the
    /// oldest finished one is forgotten at once, not only when the table is full. A node that
    /// serves outputs as a gateway keeps them (the default); a pure builder of a large mesh needs
    /// only the recent ones (late messages about a finished job), so its memory stays bounded by
    /// the active jobs.
    pub max_finished_drvs: usize,
    /// Most local submissions waiting for their inputs (default 65,536).
    pub max_pending_submissions: usize,
    /// Most outputs queued before inputs are refused with [`crate::mesh::MeshError::Backpressure`]
    /// (default 262,144; a driver that drains after every call never gets near it).
    pub max_queued_outputs: usize,
    /// Most builders (claimants, attesters, failed) remembered per derivation (default 64).
    pub max_builders_per_drv: usize,
    /// Most job ids merged into one derivation (default 8).
    pub max_jobs_per_drv: usize,
    /// Of the `max_builders_per_drv` records of a derivation, most for builders that are neither
    /// trusted nor designated by this node (default 8). Their claims, failures and attestations
    /// are kept there until designation chooses them; when it is full the oldest is forgotten, so
    /// strangers can fill only this part and never push a designated or trusted builder out.
    pub max_unvetted_builders_per_drv: usize,
    /// Most active derivations opened by the submissions of one untrusted submitter (default
    /// 4096). Further submissions of that key are ignored (not forwarded) until some finish, so a
    /// stranger cannot fill the table (nor make this node fetch and store unbounded closures).
    pub max_active_jobs_per_untrusted_submitter: usize,
    /// Most active derivations opened by untrusted submitters together (default 32,768, half of
    /// `max_drvs`): trusted submitters and this node always have the rest.
    pub max_untrusted_active_jobs: usize,
    /// Whose job submissions this node accepts (`None`: anyone's). A submission of another key
    /// is not tracked, not built and not forwarded ([`crate::mesh::Ignored::SubmitterRefused`]);
    /// the machine remembers the last refusals for `explain` ([`crate::mesh::Mesh::refusal`]).
    /// This node's own submissions are always accepted.
    pub submitters: Option<BTreeSet<NodeId>>,
    /// Who may be designated to build (`None`: an open mesh, any member). A member outside the
    /// set is not admitted to the view: it is never designated and its claims do not count
    /// ([`crate::mesh::Ignored::NotABuilder`]). Every node of a mesh should use the same set, or
    /// their designations differ.
    pub builders: Option<BTreeSet<NodeId>>,
    /// A member that claimed and let its lease run out without a result is designated only
    /// after every other candidate for this long (default 30 min); each further lapse within the penalty doubles it, up to 16 times. See
    /// `strikes.rs`.
    pub no_delivery_penalty_ms: u64,
    /// How many distinct observers must have signed a [`crate::wire::Strike`] against one member
    /// on one derivation before every node applies it (default 2; fewer when fewer observers
    /// other than the member exist). Observers are the `builders` keys, else the trusted keys,
    /// else (an open mesh that trusts everyone) any member. See `strike_book.rs`.
    pub strike_quorum: usize,
    /// Number of shards the mesh is split into (default 1: no split). Each node and each
    /// derivation belongs to one shard; a node hears, tracks and designates among its own shard
    /// only (see `shard.rs`). Every node of a mesh must use the same number.
    pub shards: u32,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            store_dir: StoreDir::nix(),
            announce_interval_ms: 30_000,
            member_ttl_ms: 100_000,
            lease_ms: 120_000,
            renew_interval_ms: 30_000,
            claim_timeout_ms: 60_000,
            warmup_ms: 65_000,
            fresh_job_ms: 5_000,
            resubmit_interval_ms: 120_000,
            republish_interval_ms: 10_000,
            max_clock_skew_ms: 30_000,
            max_replicas: MAX_REPLICAS,
            max_attempts: 4,
            failure_quorum: 2,
            trust: TrustConfig::default(),
            max_members: 4096,
            max_drvs: 65_536,
            max_finished_drvs: usize::MAX,
            max_pending_submissions: 65_536,
            max_queued_outputs: 262_144,
            max_builders_per_drv: 64,
            max_jobs_per_drv: 8,
            replicas_from: ReplicaRule::Trusted,
            max_unvetted_builders_per_drv: 8,
            max_active_jobs_per_untrusted_submitter: 4096,
            max_untrusted_active_jobs: 32_768,
            submitters: None,
            builders: None,
            no_delivery_penalty_ms: 1_800_000,
            strike_quorum: 2,
            shards: 1,
        }
    }
}

impl MeshConfig {
    /// Check ranges and relations: `renew < lease ≤ MAX_LEASE_MS`, `announce < member_ttl`,
    /// `claim_timeout > renew` (a builder that learned a job late waits one renewal before it
    /// claims), every interval and limit above 0, `failure_quorum ≤ max_attempts`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        let positive: [(&'static str, u64); 12] = [
            ("announce_interval_ms", self.announce_interval_ms),
            ("member_ttl_ms", self.member_ttl_ms),
            ("lease_ms", self.lease_ms),
            ("renew_interval_ms", self.renew_interval_ms),
            ("claim_timeout_ms", self.claim_timeout_ms),
            ("resubmit_interval_ms", self.resubmit_interval_ms),
            ("republish_interval_ms", self.republish_interval_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("failure_quorum", u64::from(self.failure_quorum)),
            ("max_replicas", u64::from(self.max_replicas)),
            ("shards", u64::from(self.shards)),
            ("strike_quorum", self.strike_quorum as u64),
        ];
        for (field, v) in positive {
            if v == 0 {
                return bad(field, "must be above 0".to_string());
            }
        }
        if self.lease_ms > MAX_LEASE_MS {
            return bad("lease_ms", format!("{} exceeds the wire limit of {MAX_LEASE_MS} ms", self.lease_ms));
        }
        if self.renew_interval_ms >= self.lease_ms {
            return bad(
                "renew_interval_ms",
                format!("{} must be below lease_ms {}", self.renew_interval_ms, self.lease_ms),
            );
        }
        if self.announce_interval_ms >= self.member_ttl_ms {
            return bad(
                "announce_interval_ms",
                format!("{} must be below member_ttl_ms {}", self.announce_interval_ms, self.member_ttl_ms),
            );
        }
        if self.claim_timeout_ms <= self.renew_interval_ms {
            return bad(
                "claim_timeout_ms",
                format!("{} must exceed renew_interval_ms {}", self.claim_timeout_ms, self.renew_interval_ms),
            );
        }
        if self.max_replicas > MAX_REPLICAS {
            return bad("max_replicas", format!("{} exceeds {MAX_REPLICAS}", self.max_replicas));
        }
        if self.failure_quorum > self.max_attempts {
            return bad(
                "failure_quorum",
                format!("{} exceeds max_attempts {}", self.failure_quorum, self.max_attempts),
            );
        }
        if self.trust.quorum == 0 {
            return bad("trust.quorum", "must be above 0".to_string());
        }
        let limits: [(&'static str, usize); 10] = [
            ("max_unvetted_builders_per_drv", self.max_unvetted_builders_per_drv),
            ("max_active_jobs_per_untrusted_submitter", self.max_active_jobs_per_untrusted_submitter),
            ("max_untrusted_active_jobs", self.max_untrusted_active_jobs),
            ("max_members", self.max_members),
            ("max_drvs", self.max_drvs),
            ("max_finished_drvs", self.max_finished_drvs),
            ("max_pending_submissions", self.max_pending_submissions),
            ("max_queued_outputs", self.max_queued_outputs),
            ("max_builders_per_drv", self.max_builders_per_drv),
            ("max_jobs_per_drv", self.max_jobs_per_drv),
        ];
        for (field, v) in limits {
            if v == 0 {
                return bad(field, "must be above 0".to_string());
            }
        }
        if self.max_builders_per_drv < 2 * usize::from(self.max_replicas).min(16) {
            return bad("max_builders_per_drv", "must be at least twice max_replicas".to_string());
        }
        if self.max_unvetted_builders_per_drv >= self.max_builders_per_drv {
            return bad(
                "max_unvetted_builders_per_drv",
                format!(
                    "{} must be below max_builders_per_drv {}",
                    self.max_unvetted_builders_per_drv, self.max_builders_per_drv
                ),
            );
        }
        Ok(())
    }
}

/// What this node announces about itself. Set by the driver ([`crate::mesh::Input::SetLocal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    /// Software version (`buildmesh 0.1.0`).
    pub version: String,
    /// Owner label for replica diversity; empty = unknown.
    pub owner: String,
    /// Systems built natively.
    pub native_systems: BTreeSet<String>,
    /// Systems built under emulation (disjoint from the native ones).
    pub emulated_systems: BTreeSet<String>,
    /// Supported features.
    pub features: BTreeSet<String>,
    /// Mandatory features.
    pub mandatory_features: BTreeSet<String>,
    /// Concurrent build slots (placement weight; 0 = build nothing, only coordinate and serve).
    pub slots: u32,
    /// Builds running now (informational; placement ignores it).
    pub load: u32,
    /// The measured slowdown of each emulated system, in hundredths (see
    /// [`crate::wire::Announcement::slowdown`]); empty = not measured.
    pub slowdown: BTreeMap<String, u32>,
    /// Why this node takes no new builds (over its disk limits), announced as such.
    pub disk_pressure: Option<String>,
}

impl LocalInfo {
    /// A node building `native` systems natively with `slots` slots, no features, no owner.
    pub fn new(version: &str, native: impl IntoIterator<Item = impl Into<String>>, slots: u32) -> LocalInfo {
        LocalInfo {
            version: version.to_string(),
            owner: String::new(),
            native_systems: native.into_iter().map(Into::into).collect(),
            emulated_systems: BTreeSet::new(),
            features: BTreeSet::new(),
            mandatory_features: BTreeSet::new(),
            slots,
            load: 0,
            slowdown: BTreeMap::new(),
            disk_pressure: None,
        }
    }

    /// Check every field with the wire rules, so the announcement will be accepted by receivers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: String| Err(ConfigError::Local { field, reason });
        if let Err(e) = validate_label(&self.version, false) {
            return bad("version", e);
        }
        if let Err(e) = validate_label(&self.owner, true) {
            return bad("owner", e);
        }
        for (field, set, max) in [
            ("native_systems", &self.native_systems, MAX_SYSTEMS),
            ("emulated_systems", &self.emulated_systems, MAX_SYSTEMS),
            ("features", &self.features, MAX_FEATURES),
            ("mandatory_features", &self.mandatory_features, MAX_FEATURES),
        ] {
            if set.len() > max {
                return bad(field, format!("{} entries, at most {max}", set.len()));
            }
            let is_system = field.ends_with("systems");
            for s in set {
                let r = if is_system { validate_system(s) } else { validate_feature(s) };
                if let Err(e) = r {
                    return bad(field, e);
                }
            }
        }
        if let Some(s) = self.native_systems.intersection(&self.emulated_systems).next() {
            return bad("emulated_systems", format!("{s:?} is also native"));
        }
        if self.slots > MAX_SLOTS {
            return bad("slots", format!("{} slots, at most {MAX_SLOTS}", self.slots));
        }
        if let Err(e) = crate::wire::validate_slowdown(&self.slowdown, &self.emulated_systems) {
            return bad("slowdown", e);
        }
        if let Some(Err(e)) = self.disk_pressure.as_deref().map(crate::wire::validate_disk_pressure) {
            return bad("disk_pressure", e);
        }
        Ok(())
    }

    /// Whether `other` differs in something placement uses (everything but `version` and `load`).
    pub(crate) fn same_capabilities(&self, other: &LocalInfo) -> bool {
        self.owner == other.owner
            && self.native_systems == other.native_systems
            && self.emulated_systems == other.emulated_systems
            && self.features == other.features
            && self.mandatory_features == other.mandatory_features
            && self.slots == other.slots
            && self.slowdown == other.slowdown
            && self.disk_pressure == other.disk_pressure
    }
}
