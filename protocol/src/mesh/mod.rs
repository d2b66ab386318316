//! The mesh coordination state machine: one [`Mesh`] per node, without I/O.
//!
//! The driver (the real node on libp2p, or the simulator) feeds it verified messages and local
//! events with the current time, and executes what it asks for:
//!
//! ```text
//! let mut mesh = Mesh::new(config, my_node_id, local_info, now)?;
//! loop {
//!     // 1. inputs: gossip (verified), executor results, user requests, the clock
//!     mesh.handle(Input::Message(verified.into_value()), now)?;
//!     if mesh.poll_timeout().is_some_and(|t| t <= now) { mesh.handle_timeout(now); }
//!     // 2. effects
//!     while let Some(out) = mesh.poll_output() {
//!         match out {
//!             Output::Publish(msg) => { /* persist if attestation; sign with the node key; gossip */ }
//!             Output::StartBuild(order) => { /* queue the build */ }
//!             Output::CancelBuild { drv, .. } => { /* kill it */ }
//!             Output::RequestRetry { peer, drv } => { /* send to peer directly */ }
//!             Output::Event(e) => { /* log, notify the gateway */ }
//!         }
//!     }
//!     // 3. sleep until the next message or mesh.poll_timeout()
//! }
//! ```
//!
//! ## Roles
//! - **Every node** announces itself every `announce_interval_ms` and keeps the *view*: the
//!   members heard from within `member_ttl_ms`. It tracks every job it hears of and every
//!   attestation, so it can answer quorum questions ([`Mesh::assess_output`]).
//! - **The submitter** publishes a [`JobSubmission`] once the job's inputs are complete, and
//!   republishes it every `resubmit_interval_ms` until k trusted builders attested it (so nodes that
//!   missed it, restarted, or sat behind a partition learn it).
//! - **Builders.** For each active job every node computes the *designated* builders
//!   ([`designate`](self#designation)); a designated node claims (a [`Claim`] with a lease of
//!   `lease_ms`), builds, renews the lease every `renew_interval_ms`, and on success publishes its
//!   [`Attestation`] (persisted first), on failure a [`BuildFailure`].
//!
//! ## Designation
//! From the rank order of the eligible live members (weighted rendezvous, native before emulated,
//! [`crate::placement`]), drop the builders that already attested or failed the derivation; put
//! live claimants first (claims are sticky), builders that lapsed last; take `k − trusted
//! attesters` of them, preferring distinct owners. See `designate.rs` for the exact rule. Hence:
//! - **Takeover**: a claimant that leaves the view or whose lease runs out (not renewed) is no
//!   longer a claimant; a designated node that does not claim within `claim_timeout_ms` is marked
//!   lapsed; the next node in rank order is designated and claims.
//! - **Yield**: a node that holds a claim but is no longer designated (more than k − attested live
//!   claims, e.g. after a partition heals; it ranks lowest among them) cancels its build and
//!   publishes a *release*: a claim whose lease lasts 1 ms.
//! - **Retry after failure**: a failed builder is excluded, so the next node is designated. A job
//!   is given up when `failure_quorum` (2) distinct builders failed *deterministically* (builder
//!   exit, hash mismatch: the derivation is broken) or `max_attempts` (4) distinct builders failed
//!   for any reason.
//! - **Targeted retry** ([`Input::Retry`]) makes a given node build regardless of placement.
//! - **Slots**: a node holds at most `slots` claims (its [`LocalInfo`]; targeted retries aside).
//!   Designated for more, it waits and claims the next one, in table order, as a build ends. After
//!   half of `claim_timeout_ms` of waiting it counts itself as lapsed, before the others do (after
//!   the whole timeout), so an idle node takes the job over and the late claim cannot make k + 1
//!   builders. Without this a node designated for hundreds of jobs held a renewed lease on each
//!   while idle nodes could take none.
//!
//! A job is **complete** when k distinct trusted builders attested it; then nobody else claims it
//! and running builds are cancelled.
//!
//! ## Freshness, replays, bounds
//! Announcements: highest `seq` per node; timestamps older than the TTL or further in the future
//! than `max_clock_skew_ms` are dropped. Claims: latest `claimed_at_ms` per (drv, claimant); a lease
//! is judged on the local clock (`min(received + lease, expiry + skew)`). Attestations and failures
//! are a union (duplicates dropped). Every table is bounded ([`MeshConfig`]); finished derivations
//! are evicted oldest first; outputs beyond `max_queued_outputs` refuse input
//! ([`MeshError::Backpressure`]).
//!
//! Restart: the machine keeps nothing on disk. The driver feeds back its own persisted
//! attestations ([`Input::RestoreAttestation`]) and its unfinished submissions; for
//! `warmup_ms` after [`Mesh::new`] the node only listens (it learns the view and the live claims
//! before claiming anything).

mod config;
mod designate;
mod engine;
pub mod fair;
mod io;
mod membership;
mod quorum;
mod schedule;
pub mod shard;
mod strike_book;
mod strikes;
mod struck;
mod table;
mod vetting;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

pub use config::{ConfigError, LocalInfo, MeshConfig, ReplicaRule, TrustConfig};
pub use io::{BuildOrder, CancelReason, Disposition, Event, Ignored, Input, JobFailure, MeshError, Output};
pub use quorum::{OutputClaim, assess_attestations, assess_output};
pub use strike_book::{MAX_DRVS_PER_MEMBER, MAX_RECORDS_PER_OBSERVER};
pub use strikes::Strike;
pub use struck::StruckMember;

use crate::id::{JobId, NodeId};
use crate::store_path::StorePath;
use crate::verdict::Assessment;
use crate::wire::{Announcement, Message};
#[allow(unused_imports)] // BuildFailure, Claim: for the docs above
use crate::wire::{Attestation, BuildFailure, Claim, JobSubmission};

use membership::Membership;
use table::{DrvState, DrvTable};

/// How long a release claim lasts: a claim whose lease is this short gives the derivation up.
pub const RELEASE_LEASE_MS: u64 = 1;

/// Counters for logs, metrics and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Messages that changed state.
    pub applied: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Stale messages dropped.
    pub stale: u64,
    /// Messages ignored for another reason.
    pub ignored: u64,
    /// Claims published (first claims, renewals and releases).
    pub claims_published: u64,
    /// Builds started.
    pub builds_started: u64,
    /// Builds cancelled.
    pub builds_cancelled: u64,
    /// Own results republished for nodes that did not know them.
    pub republished: u64,
    /// Job submissions refused by the `submitters` policy.
    pub refused_submissions: u64,
    /// Lapses recorded against members (designated and not delivered; see [`Strike`]).
    pub lapses: u64,
    /// Strike records this node published (`strike_book.rs`).
    pub strikes_published: u64,
}

/// A derivation as [`Mesh::job`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// The derivation.
    pub drv: StorePath,
    /// Every job id merged into it.
    pub jobs: Vec<JobId>,
    /// k, if a submission is known.
    pub replicas: Option<u8>,
    /// `active`, `complete` or `failed`.
    pub state: &'static str,
    /// Builders holding a live claim.
    pub claimants: Vec<NodeId>,
    /// The live claims' lease expiries on this node's clock (unix ms), in the order of
    /// `claimants`.
    pub lease_expiries_ms: Vec<u64>,
    /// Builders that attested it.
    pub attesters: Vec<NodeId>,
    /// Builders that failed it (those whose failure counts: trusted or designated ones).
    pub failed: Vec<NodeId>,
    /// The designated builders at the last evaluation.
    pub designated: Vec<NodeId>,
    /// Whether this node is building it.
    pub building: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    job: JobSubmission,
    waiting: BTreeSet<StorePath>,
}

/// The state machine of one node. See the module docs.
#[derive(Debug)]
pub struct Mesh {
    /// Shared: a simulator runs thousands of machines with one configuration (whose trusted set
    /// alone can hold every node's key).
    cfg: Arc<MeshConfig>,
    me: NodeId,
    /// This node's shard (`shard.rs`; 0 with one shard).
    shard: u32,
    local: LocalInfo,
    seq: u64,
    now_ms: u64,
    warmup_until_ms: u64,
    warmup_done: bool,
    next_announce_ms: u64,
    members: Membership,
    drvs: DrvTable,
    pending: BTreeMap<JobId, Pending>,
    /// Input drv -> local submissions waiting for it.
    waiters: BTreeMap<StorePath, Vec<JobId>>,
    /// Drv -> local submissions of it that wait for their inputs.
    pending_by_drv: BTreeMap<StorePath, Vec<JobId>>,
    outputs: VecDeque<Output>,
    stats: MeshStats,
    /// Active derivations opened by each untrusted submitter (see `vetting.rs`).
    untrusted_open: BTreeMap<NodeId, usize>,
    /// Their sum.
    untrusted_open_total: usize,
    /// Members that were designated and did not deliver (see `strikes.rs`).
    strikes: strikes::Strikes,
    /// Gossiped strike records, applied alike by every node (see `strike_book.rs`).
    strike_book: strike_book::StrikeBook,
    /// When this node next republishes its own strike records.
    next_strike_republish_ms: u64,
    /// The latest submissions refused by the `submitters` policy: derivation -> submitter, at
    /// most [`MAX_REFUSALS`], oldest forgotten first.
    refused: BTreeMap<StorePath, NodeId>,
    refused_order: VecDeque<StorePath>,
}

/// How many refused submissions [`Mesh::refusal`] remembers.
pub const MAX_REFUSALS: usize = 4096;

impl Mesh {
    /// A machine for node `me` with capabilities `local`, started at `now_ms`. It announces itself
    /// at once (the first output) and listens for `warmup_ms` before it claims anything.
    pub fn new(cfg: MeshConfig, me: NodeId, local: LocalInfo, now_ms: u64) -> Result<Mesh, MeshError> {
        Mesh::with_shared_config(Arc::new(cfg), me, local, now_ms)
    }

    /// [`Mesh::new`] with a configuration shared with other machines (not copied per machine).
    pub fn with_shared_config(
        cfg: Arc<MeshConfig>,
        me: NodeId,
        local: LocalInfo,
        now_ms: u64,
    ) -> Result<Mesh, MeshError> {
        cfg.validate()?;
        local.validate()?;
        let cfg_resubmit = cfg.resubmit_interval_ms;
        let mut mesh = Mesh {
            members: Membership::new(me, cfg.member_ttl_ms),
            warmup_until_ms: now_ms.saturating_add(cfg.warmup_ms),
            warmup_done: cfg.warmup_ms == 0,
            next_announce_ms: now_ms,
            shard: shard::node_shard(&me, cfg.shards),
            cfg,
            me,
            local,
            seq: 0,
            now_ms,
            drvs: DrvTable::default(),
            pending: BTreeMap::new(),
            waiters: BTreeMap::new(),
            pending_by_drv: BTreeMap::new(),
            outputs: VecDeque::new(),
            stats: MeshStats::default(),
            untrusted_open: BTreeMap::new(),
            untrusted_open_total: 0,
            strikes: strikes::Strikes::default(),
            strike_book: strike_book::StrikeBook::default(),
            next_strike_republish_ms: now_ms.saturating_add(cfg_resubmit),
            refused: BTreeMap::new(),
            refused_order: VecDeque::new(),
        };
        mesh.announce(now_ms);
        Ok(mesh)
    }

    /// Whether this node accepts job submissions of `submitter` (the `submitters` policy; its
    /// own always).
    pub fn accepts_submitter(&self, submitter: &NodeId) -> bool {
        *submitter == self.me || self.cfg.submitters.as_ref().is_none_or(|s| s.contains(submitter))
    }

    /// Whether `node` may be designated (the `builders` policy; `None` = open mesh).
    pub fn accepts_builder(&self, node: &NodeId) -> bool {
        self.cfg.builders.as_ref().is_none_or(|b| b.contains(node))
    }

    /// The submitter whose submission of `drv` this node refused (the `submitters` policy), if
    /// it is among the last [`MAX_REFUSALS`] refusals.
    pub fn refusal(&self, drv: &StorePath) -> Option<NodeId> {
        self.refused.get(drv).copied()
    }

    /// Record that a submission of `drv` by `submitter` was refused (also called by a driver
    /// that refuses before the machine sees the message).
    pub fn note_refusal(&mut self, drv: &StorePath, submitter: NodeId) {
        if self.refused.insert(drv.clone(), submitter).is_none() {
            self.refused_order.push_back(drv.clone());
            self.stats.refused_submissions += 1;
        }
        while self.refused_order.len() > MAX_REFUSALS {
            if let Some(old) = self.refused_order.pop_front() {
                self.refused.remove(&old);
            }
        }
    }

    /// Members that did not deliver, with their penalty (see `strikes.rs`).
    pub fn strikes(&self) -> impl Iterator<Item = (&NodeId, &Strike)> {
        self.strikes.iter()
    }

    /// Whether `node` is penalised now for not delivering.
    pub fn penalised(&self, node: &NodeId) -> bool {
        self.strikes.penalised(node, self.now_ms)
    }

    /// This node's shard (0 with one shard; see [`shard`]).
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Whether this node designates, claims and builds `drv`: it is in this node's shard.
    pub fn designates(&self, drv: &StorePath) -> bool {
        self.cfg.shards <= 1 || shard::drv_shard(drv, self.cfg.shards) == self.shard
    }

    /// Whether this node tracks `drv`: it designates it, or observes it (a derivation of another
    /// shard that it submitted or waits for; see [`shard`]).
    pub fn tracks(&self, drv: &StorePath) -> bool {
        // Lookups first: `designates` hashes the path.
        self.drvs.lookup(drv).is_some() || self.waiters.contains_key(drv) || self.designates(drv)
    }

    /// Whether a message concerns this node's shard or a derivation it observes.
    fn in_scope(&self, m: &Message) -> bool {
        if self.cfg.shards <= 1 {
            return true;
        }
        match m {
            // Only members of this shard are in the view: a lookup saves hashing the id.
            Message::Announcement(a) => {
                a.node == self.me
                    || self.members.get(&a.node).is_some()
                    || shard::node_shard(&a.node, self.cfg.shards) == self.shard
            }
            Message::JobSubmission(j) => self.tracks(&j.drv),
            Message::Claim(c) => self.tracks(&c.drv),
            Message::Attestation(a) => self.tracks(&a.drv),
            Message::BuildFailure(f) => self.tracks(&f.drv),
            // A member's penalty matters in its own shard: the struck member's.
            Message::Strike(s) => s.struck == self.me || shard::node_shard(&s.struck, self.cfg.shards) == self.shard,
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The configuration.
    pub fn config(&self) -> &MeshConfig {
        &self.cfg
    }

    /// What this node announces.
    pub fn local(&self) -> &LocalInfo {
        &self.local
    }

    /// Counters.
    pub fn stats(&self) -> MeshStats {
        self.stats
    }

    /// Handle one input at `now_ms`. Messages yield their [`Disposition`]; local inputs yield
    /// `Disposition::Applied` or an error (and change nothing).
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Result<Disposition, MeshError> {
        let d = self.handle_input(input, now_ms);
        self.fill_free_slots();
        d
    }

    fn handle_input(&mut self, input: Input, now_ms: u64) -> Result<Disposition, MeshError> {
        match input {
            Input::Message(m) => self.handle_message(&m, now_ms),
            Input::SetLocal(info) => self.set_local(info, now_ms).map(|()| Disposition::Applied),
            Input::Submit { job, inputs } => self.submit(job, inputs, now_ms).map(|()| Disposition::Applied),
            Input::CancelSubmission { job } => {
                self.cancel_submission(&job);
                Ok(Disposition::Applied)
            }
            Input::BuildFinished(a) => self.build_finished(a, now_ms, true).map(|()| Disposition::Applied),
            Input::RestoreAttestation(a) => self.build_finished(a, now_ms, false).map(|()| Disposition::Applied),
            Input::BuildFailed { drv, reason, log } => {
                self.build_failed(&drv, reason, log, now_ms).map(|()| Disposition::Applied)
            }
            Input::Retry { drv, on } => self.retry(&drv, on, now_ms).map(|()| Disposition::Applied),
        }
    }

    /// Handle a verified message (by reference, so a driver can share one message between nodes).
    pub fn handle_message(&mut self, message: &Message, now_ms: u64) -> Result<Disposition, MeshError> {
        self.check_backpressure()?;
        let now = self.clock(now_ms);
        let d = match message {
            _ if !self.in_scope(message) => Disposition::Ignored(Ignored::OtherShard),
            Message::Announcement(a) => self.on_announcement(a, now),
            Message::JobSubmission(j) => self.on_submission(j, now),
            Message::Claim(c) => self.on_claim(c, now),
            Message::Attestation(a) => self.on_attestation(a, now),
            Message::BuildFailure(f) => self.on_failure(f, now),
            Message::Strike(s) => self.on_strike(s, now),
        };
        match d {
            Disposition::Applied => self.stats.applied += 1,
            Disposition::Duplicate => self.stats.duplicates += 1,
            Disposition::Stale => self.stats.stale += 1,
            Disposition::Own | Disposition::Ignored(_) => self.stats.ignored += 1,
        }
        self.fill_free_slots();
        Ok(d)
    }

    /// This node's build succeeded: `handle(Input::BuildFinished(attestation), now_ms)`.
    pub fn handle_build_finished(&mut self, attestation: Attestation, now_ms: u64) -> Result<(), MeshError> {
        self.handle(Input::BuildFinished(attestation), now_ms).map(drop)
    }

    /// This node's build failed: `handle(Input::BuildFailed { drv, reason, log: None }, now_ms)`.
    pub fn handle_build_failed(
        &mut self,
        drv: &StorePath,
        reason: crate::wire::FailureReason,
        now_ms: u64,
    ) -> Result<(), MeshError> {
        self.handle(Input::BuildFailed { drv: drv.clone(), reason, log: None }, now_ms).map(drop)
    }

    /// The live view as placement sees it (this node included); `None` only
    /// if placement refused the member list, which cannot happen (members are keyed by id).
    pub fn view(&mut self) -> Option<&crate::placement::View> {
        self.members.view()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Mesh::handle_timeout`] should be called next (unix ms), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        let warmup = (!self.warmup_done).then_some(self.warmup_until_ms);
        [
            Some(self.next_announce_ms),
            Some(self.next_strike_republish_ms),
            self.members.next_expiry(),
            warmup,
            self.drvs.timers.first().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Run the timers due at `now_ms`: announcement, member expiry, the end of the warm-up, lease
    /// renewals, lapses and resubmissions. Stops early (and stays due) if the output queue is full.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let now = self.clock(now_ms);
        if now >= self.next_announce_ms {
            self.announce(now);
        }
        if now >= self.next_strike_republish_ms {
            self.republish_strikes(now);
        }
        for node in self.members.expire(now) {
            self.outputs.push_back(Output::Event(Event::MemberLeft { node }));
            self.view_left(node, now);
        }
        if !self.warmup_done && now >= self.warmup_until_ms {
            self.warmup_done = true;
            let all: Vec<u32> = self.drvs.active.iter().copied().collect();
            for slot in all {
                self.evaluate(slot, now);
            }
        }
        while let Some(&(t, slot)) = self.drvs.timers.first() {
            if t > now || self.outputs.len() >= self.cfg.max_queued_outputs {
                break;
            }
            self.drvs.set_deadline(slot, None);
            self.evaluate(slot, now);
        }
        self.fill_free_slots();
    }

    /// The live members' latest announcements (this node's included).
    pub fn members(&self) -> impl Iterator<Item = &Announcement> {
        self.members.iter().map(|m| &m.ann)
    }

    /// The live members' latest announcements with when each was last heard from (the `now_ms`
    /// of the input that brought its latest announcement; this node's own entry included).
    pub fn members_heard(&self) -> impl Iterator<Item = (&Announcement, u64)> {
        self.members.iter().map(|m| (&m.ann, m.last_heard_ms))
    }

    /// Number of live members (this node included).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// What this node knows about a derivation.
    pub fn job(&self, drv: &StorePath) -> Option<JobView> {
        let e = self.drvs.get(self.drvs.lookup(drv)?)?;
        let now = self.now_ms;
        Some(JobView {
            drv: e.drv.clone(),
            jobs: e.jobs.clone(),
            replicas: e.job.as_ref().map(|j| j.replicas),
            state: match e.state {
                DrvState::Active => "active",
                DrvState::Complete { .. } => "complete",
                DrvState::Failed { .. } => "failed",
            },
            claimants: e
                .builders
                .iter()
                .filter(|b| b.claim.is_some_and(|c| c.local_expiry_ms > now))
                .map(|b| b.node)
                .collect(),
            lease_expiries_ms: e
                .builders
                .iter()
                .filter_map(|b| b.claim.filter(|c| c.local_expiry_ms > now).map(|c| c.local_expiry_ms))
                .collect(),
            attesters: e.attesters(),
            failed: e.builders.iter().filter(|b| b.counted_failure().is_some()).map(|b| b.node).collect(),
            designated: e.designated.clone(),
            building: e.own_build.is_some(),
        })
    }

    /// Number of derivations tracked (finished ones included) and of active ones.
    pub fn drv_counts(&self) -> (usize, usize) {
        (self.drvs.len(), self.drvs.active.len())
    }

    /// Whether a local submission of `drv` waits for its inputs (it is not placed yet).
    pub fn is_pending(&self, drv: &StorePath) -> bool {
        self.pending_by_drv.contains_key(drv)
    }

    /// Number of local submissions waiting for their inputs.
    pub fn pending_submissions(&self) -> usize {
        self.pending.len()
    }

    /// The verdict on an output path from the attestations this node knows, under the trust
    /// policy; `None` if no attestation names the path.
    pub fn assess_output(&self, path: &StorePath) -> Option<Assessment<NodeId>> {
        let e = self.drvs.get(self.drvs.by_path(path)?)?;
        let results = e.attestations.iter().flat_map(|a| {
            a.outputs.iter().filter(|o| o.path == *path).map(move |o| OutputClaim {
                builder: &a.builder,
                nar_hash: &o.nar_hash,
                nar_size: o.nar_size,
                emulated: a.emulated,
                system: e.job.as_ref().map(|j| j.canonical.system.as_str()),
            })
        });
        let assessment = assess_output(results, &self.cfg.trust);
        (!assessment.groups.is_empty()).then_some(assessment)
    }

    /// The NarHash and NarSize of `path` if the trust policy accepts one (what the gateway serves).
    pub fn accepted(&self, path: &StorePath) -> Option<([u8; 32], u64)> {
        let a = self.assess_output(path)?;
        let (hash, size) = a.accepted?;
        self.find_output(path, &hash, size)
    }

    /// The raw NarHash of `path` whose Nix form is `hash`.
    fn find_output(&self, path: &StorePath, hash: &str, size: u64) -> Option<([u8; 32], u64)> {
        let e = self.drvs.get(self.drvs.by_path(path)?)?;
        e.attestations
            .iter()
            .flat_map(|a| a.outputs.iter())
            .find(|o| {
                o.path == *path && o.nar_size == size && crate::hash::NixHash::sha256(o.nar_hash).to_string() == hash
            })
            .map(|o| (o.nar_hash, o.nar_size))
    }

    fn clock(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        self.now_ms
    }

    fn check_backpressure(&self) -> Result<(), MeshError> {
        if self.outputs.len() >= self.cfg.max_queued_outputs {
            return Err(MeshError::Backpressure { queued: self.outputs.len(), limit: self.cfg.max_queued_outputs });
        }
        Ok(())
    }

    fn publish(&mut self, m: impl Into<Message>) {
        self.outputs.push_back(Output::Publish(m.into()));
    }

    fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }
}
