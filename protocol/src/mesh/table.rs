//! Per-derivation state and the bounded table that holds it.

use std::collections::{BTreeMap, BTreeSet};

use super::JobFailure;
use super::membership::Window;
use crate::id::{JobId, NodeId};
use crate::placement::{PlacementKey, Requirements};
use crate::store_path::StorePath;
use crate::wire::{Attestation, BuildFailure, BuildMode, FailureReason, JobSubmission};

/// The submission a derivation is scheduled by, with its placement inputs.
#[derive(Debug, Clone)]
pub(crate) struct JobInfo {
    /// The submission with the smallest job id (so every node picks the same one).
    pub(crate) canonical: JobSubmission,
    pub(crate) key: PlacementKey,
    pub(crate) req: Requirements,
    /// k: the largest `replicas` of the known submissions, capped by the config.
    pub(crate) replicas: u8,
    /// The derivation lies in another shard: this node only observes it (`shard.rs`). Kept here
    /// so that designation does not hash the path on every evaluation.
    pub(crate) observed: bool,
}

/// Where a derivation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrvState {
    Active,
    Complete { at_ms: u64 },
    Failed { at_ms: u64 },
}

/// A live claim of another builder as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClaimState {
    /// When the lease ends on this node's clock.
    pub(crate) local_expiry_ms: u64,
    /// When it was received (local clock). A claim received before its claimant (re)joined the
    /// view predates the claimant's absence and does not count.
    pub(crate) received_ms: u64,
    pub(crate) attempt: u32,
    /// The claim's signed lease end (for a strike record if it runs out).
    pub(crate) lease_expires_at_ms: u64,
}

/// A failure of one builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailureMark {
    pub(crate) attempt: u32,
    pub(crate) deterministic: bool,
}

/// What this node knows about one builder of one derivation.
///
/// A builder is *vetted* for the derivation when it may speak for it: it is this node, a trusted
/// node, or a node this node's designation chose at some time (`vetting.rs`). Only a vetted
/// builder's failure and attestation count (towards giving the job up, towards k) and exclude it
/// from designation; an unvetted builder's are kept *latent* on its record and count once
/// designation chooses it. Unvetted records have a small quota of their own in the table, so
/// strangers can never push a vetted record out.
#[derive(Debug, Clone)]
pub(crate) struct Builder {
    pub(crate) node: NodeId,
    /// It may speak for this derivation (see above). Never reset.
    pub(crate) vetted: bool,
    /// The attestation of an unvetted builder, recorded when it is vetted.
    pub(crate) latent_attestation: Option<Box<AttSummary>>,
    /// The reason of an unvetted builder's deterministic failure (becomes the job's failure
    /// reason if it is the first to count).
    pub(crate) latent_reason: Option<Box<FailureReason>>,
    /// The latest `claimed_at_ms` seen from it (older claims are stale).
    pub(crate) last_claimed_at_ms: Option<u64>,
    pub(crate) claim: Option<ClaimState>,
    /// Its claim ran out, or it never claimed while designated.
    pub(crate) lapsed_at_ms: Option<u64>,
    /// Designated without a claim since.
    pub(crate) waiting_since_ms: Option<u64>,
    /// How long it was designated without claiming before designation last dropped it: a wait
    /// resumes where it stopped ([`Builder::pause_waiting`]). Without this a claim that reached
    /// this node just before a lapse due here pushed a waiting member out for a few ms and gave
    /// it a fresh `claim_timeout_ms`, a minute after the other nodes had lapsed it: the next
    /// member claimed here a minute late, after the others had lapsed it in turn (transient
    /// k + 1 claims in the simulator).
    pub(crate) waited_ms: u64,
    pub(crate) failure: Option<FailureMark>,
    pub(crate) attested: bool,
}

impl Builder {
    pub(crate) fn new(node: NodeId, vetted: bool) -> Builder {
        Builder {
            node,
            vetted,
            latent_attestation: None,
            latent_reason: None,
            last_claimed_at_ms: None,
            claim: None,
            lapsed_at_ms: None,
            waiting_since_ms: None,
            waited_ms: 0,
            failure: None,
            attested: false,
        }
    }

    /// It is no longer waited for (it claimed, released, delivered or lapsed): forget the wait.
    pub(crate) fn stop_waiting(&mut self) {
        self.waiting_since_ms = None;
        self.waited_ms = 0;
    }

    /// Designation no longer chooses it: keep how long it was waited for, so that a wait
    /// interrupted by a displacement (a claim that arrives here before the lapse it followed
    /// elsewhere) resumes instead of starting over.
    pub(crate) fn pause_waiting(&mut self, now: u64) {
        if let Some(since) = self.waiting_since_ms.take() {
            self.waited_ms = self.waited_ms.saturating_add(now.saturating_sub(since));
        }
    }

    /// It attested or failed, and that counts: designation skips it.
    pub(crate) fn excluded(&self) -> bool {
        self.vetted && (self.attested || self.failure.is_some())
    }

    /// Its failure, if it counts.
    pub(crate) fn counted_failure(&self) -> Option<FailureMark> {
        self.failure.filter(|_| self.vetted)
    }
}

/// The size of a derivation's builder table: `max` records, of which at most `max_unvetted` for
/// unvetted builders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Room {
    pub(crate) max: usize,
    pub(crate) max_unvetted: usize,
}

/// One output as one builder attested it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutputResult {
    pub(crate) name: String,
    pub(crate) path: StorePath,
    pub(crate) nar_hash: [u8; 32],
    pub(crate) nar_size: u64,
}

/// The part of an attestation the machine keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttSummary {
    pub(crate) builder: NodeId,
    /// Built under emulation (for `TrustConfig::needs_native`).
    pub(crate) emulated: bool,
    pub(crate) outputs: Vec<OutputResult>,
}

impl AttSummary {
    pub(crate) fn of(a: &Attestation) -> AttSummary {
        AttSummary {
            builder: a.builder,
            emulated: a.mode == crate::wire::BuildMode::Emulated,
            outputs: a
                .outputs
                .iter()
                .map(|(name, o)| OutputResult {
                    name: name.clone(),
                    path: o.path.clone(),
                    nar_hash: o.nar_hash,
                    nar_size: o.nar_size,
                })
                .collect(),
        }
    }
}

/// This node's own build of a derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwnBuild {
    pub(crate) attempt: u32,
    pub(crate) mode: BuildMode,
    pub(crate) forced: bool,
    pub(crate) next_renew_ms: u64,
}

/// Everything known about one derivation.
#[derive(Debug, Clone)]
pub(crate) struct DrvEntry {
    pub(crate) drv: StorePath,
    pub(crate) job: Option<Box<JobInfo>>,
    pub(crate) jobs: Vec<JobId>,
    pub(crate) state: DrvState,
    pub(crate) builders: Vec<Builder>,
    pub(crate) attestations: Vec<AttSummary>,
    pub(crate) first_deterministic: Option<Box<FailureReason>>,
    /// Why the job was given up, once it was.
    pub(crate) failure: Option<Box<JobFailure>>,
    pub(crate) own_attestation: Option<Box<Attestation>>,
    pub(crate) own_failure: Option<Box<BuildFailure>>,
    pub(crate) own_job: Option<Box<JobSubmission>>,
    pub(crate) own_build: Option<OwnBuild>,
    /// Since when this node has been designated without a free build slot to claim with. After
    /// half of `claim_timeout_ms` it counts itself as lapsed, as the others soon will, so that it
    /// does not claim after someone took the job over.
    pub(crate) own_wait_since_ms: Option<u64>,
    /// The latest `claimed_at_ms` this node used for the derivation (its claims must increase).
    pub(crate) own_last_claimed_at_ms: u64,
    pub(crate) window: Option<Window>,
    pub(crate) hold_until_ms: u64,
    pub(crate) last_republish_ms: Option<u64>,
    pub(crate) next_resubmit_ms: Option<u64>,
    pub(crate) deadline: Option<u64>,
    /// The designated builders at the last evaluation.
    pub(crate) designated: Vec<NodeId>,
    /// Whether every designated builder holds a live claim and their owners are distinct (joins
    /// cannot change the designation).
    pub(crate) settled: bool,
    /// Digests of the output paths already reported as accepted / as mismatching (a few entries:
    /// a vector is far smaller than a set).
    pub(crate) reported_accepted: Vec<[u8; 20]>,
    pub(crate) reported_mismatch: Vec<[u8; 20]>,
    /// The untrusted submitter whose quota this active derivation counts against.
    pub(crate) opened_by: Option<NodeId>,
    /// Since when this is a stranger's entry (opened by an untrusted author's message, no job yet).
    pub(crate) stranger_since: Option<u64>,
}

impl DrvEntry {
    pub(crate) fn new(drv: StorePath) -> DrvEntry {
        DrvEntry {
            drv,
            job: None,
            jobs: Vec::new(),
            state: DrvState::Active,
            builders: Vec::new(),
            attestations: Vec::new(),
            first_deterministic: None,
            failure: None,
            own_attestation: None,
            own_failure: None,
            own_job: None,
            own_build: None,
            own_wait_since_ms: None,
            own_last_claimed_at_ms: 0,
            window: None,
            hold_until_ms: 0,
            last_republish_ms: None,
            next_resubmit_ms: None,
            deadline: None,
            designated: Vec::new(),
            settled: false,
            reported_accepted: Vec::new(),
            reported_mismatch: Vec::new(),
            opened_by: None,
            stranger_since: None,
        }
    }

    pub(crate) fn builder(&self, node: &NodeId) -> Option<&Builder> {
        self.builders.iter().find(|b| b.node == *node)
    }

    /// The builder record of `node`, created (vetted or not, as `vetted` says) if there is room:
    /// a vetted record may take the place of the oldest unvetted one when the table is full; an
    /// unvetted record takes the place of the oldest unvetted one when unvetted records fill
    /// their quota, and never that of a vetted one. An existing record is returned as it is.
    pub(crate) fn builder_mut(&mut self, node: &NodeId, room: Room, vetted: bool) -> Option<&mut Builder> {
        if let Some(i) = self.builders.iter().position(|b| b.node == *node) {
            return self.builders.get_mut(i);
        }
        let oldest_unvetted = self.builders.iter().position(|b| !b.vetted);
        let unvetted = self.builders.iter().filter(|b| !b.vetted).count();
        let make_room = if vetted {
            self.builders.len() >= room.max
        } else {
            unvetted >= room.max_unvetted || (self.builders.len() >= room.max && unvetted > 0)
        };
        if make_room {
            self.builders.remove(oldest_unvetted?);
        }
        if self.builders.len() >= room.max {
            return None;
        }
        self.builders.push(Builder::new(*node, vetted));
        self.builders.last_mut()
    }

    /// Record that `path` was reported in `list`; `false` if it already was.
    pub(crate) fn first_report(list: &mut Vec<[u8; 20]>, path: &StorePath) -> bool {
        if list.contains(path.digest()) {
            return false;
        }
        list.push(*path.digest());
        true
    }

    pub(crate) fn is_active(&self) -> bool {
        self.state == DrvState::Active
    }

    /// Distinct attesters, trusted or not.
    pub(crate) fn attesters(&self) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> = self.attestations.iter().map(|a| a.builder).collect();
        set.into_iter().collect()
    }
}

/// The bounded table of derivations: a slab with indexes by derivation, by output path digest,
/// by deadline; the active set; finished entries in eviction order.
#[derive(Debug, Default)]
pub(crate) struct DrvTable {
    slots: Vec<Option<DrvEntry>>,
    free: Vec<u32>,
    by_drv: BTreeMap<StorePath, u32>,
    by_path: BTreeMap<[u8; 20], u32>,
    pub(crate) timers: BTreeSet<(u64, u32)>,
    pub(crate) active: BTreeSet<u32>,
    finished: BTreeSet<(u64, u32)>,
    /// Slots whose entry has an `own_build` (kept by [`DrvTable::set_own_build`]): the build slots
    /// this node uses.
    building: BTreeSet<u32>,
    /// Slots this node is designated for but could not claim because every build slot was taken.
    pub(crate) waiting_for_slot: super::fair::FairQueue,
    /// Strangers' entries (see `vetting.rs`), oldest first: evicted first.
    strangers: BTreeSet<(u64, u32)>,
}

impl DrvTable {
    pub(crate) fn len(&self) -> usize {
        self.by_drv.len()
    }

    pub(crate) fn lookup(&self, drv: &StorePath) -> Option<u32> {
        self.by_drv.get(drv).copied()
    }

    pub(crate) fn by_path(&self, path: &StorePath) -> Option<u32> {
        self.by_path.get(path.digest()).copied()
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&DrvEntry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut DrvEntry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// The slot of `drv`, creating an entry if needed. When the table is full, the oldest
    /// finished entry is evicted; `None` if every entry is still active.
    pub(crate) fn get_or_insert(&mut self, drv: &StorePath, max: usize) -> Option<u32> {
        if let Some(slot) = self.lookup(drv) {
            return Some(slot);
        }
        if self.by_drv.len() >= max {
            let (_, victim) = self.finished.pop_first().or_else(|| self.strangers.pop_first())?;
            self.remove(victim);
        }
        let entry = DrvEntry::new(drv.clone());
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1).ok()?
            }
        };
        self.by_drv.insert(drv.clone(), slot);
        Some(slot)
    }

    /// Like [`DrvTable::get_or_insert`] for a message of an untrusted author: a new entry is a
    /// stranger's; when `cap` of those exist the oldest is evicted first.
    pub(crate) fn get_or_insert_stranger(&mut self, drv: &StorePath, max: usize, cap: usize, now: u64) -> Option<u32> {
        if let Some(slot) = self.lookup(drv) {
            return Some(slot);
        }
        if self.strangers.len() >= cap
            && let Some((_, victim)) = self.strangers.pop_first()
        {
            self.remove(victim);
        }
        let slot = self.get_or_insert(drv, max)?;
        if let Some(e) = self.get_mut(slot) {
            e.stranger_since = Some(now);
        }
        self.strangers.insert((now, slot));
        Some(slot)
    }

    /// The entry in `slot` is no longer a stranger's (it got a job, or a trusted author spoke).
    pub(crate) fn adopt(&mut self, slot: u32) {
        if let Some(t) = self.get_mut(slot).and_then(|e| e.stranger_since.take()) {
            self.strangers.remove(&(t, slot));
        }
    }

    /// Number of strangers' entries.
    #[cfg(test)]
    pub(crate) fn stranger_entries(&self) -> usize {
        self.strangers.len()
    }

    fn remove(&mut self, slot: u32) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else { return };
        if let Some(t) = entry.stranger_since {
            self.strangers.remove(&(t, slot));
        }
        self.by_drv.remove(&entry.drv);
        for a in &entry.attestations {
            for o in &a.outputs {
                if self.by_path.get(o.path.digest()) == Some(&slot) {
                    self.by_path.remove(o.path.digest());
                }
            }
        }
        if let Some(t) = entry.deadline {
            self.timers.remove(&(t, slot));
        }
        self.active.remove(&slot);
        self.building.remove(&slot);
        self.waiting_for_slot.remove(slot);
        self.free.push(slot);
    }

    /// Set (or clear) this node's build of the entry in `slot`, keeping the index of slots in use
    /// in step; the previous value.
    pub(crate) fn set_own_build(&mut self, slot: u32, build: Option<OwnBuild>) -> Option<OwnBuild> {
        let e = self.slots.get_mut(slot as usize).and_then(Option::as_mut)?;
        let old = std::mem::replace(&mut e.own_build, build);
        if build.is_some() {
            e.own_wait_since_ms = None;
            self.building.insert(slot);
            self.waiting_for_slot.remove(slot);
        } else {
            self.building.remove(&slot);
        }
        old
    }

    /// How many builds this node runs (entries with an `own_build`).
    pub(crate) fn own_builds(&self) -> usize {
        self.building.len()
    }

    /// This node's running builds per submitter (of the job's canonical submission), for the
    /// fair share of slots (`fair.rs`).
    pub(crate) fn own_builds_by_submitter(&self) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for &slot in &self.building {
            if let Some(j) = self.get(slot).and_then(|e| e.job.as_deref()) {
                *out.entry(j.canonical.submitter).or_insert(0) += 1;
            }
        }
        out
    }

    pub(crate) fn index_path(&mut self, path: &StorePath, slot: u32) {
        self.by_path.insert(*path.digest(), slot);
    }

    pub(crate) fn set_deadline(&mut self, slot: u32, deadline: Option<u64>) {
        let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        if e.deadline == deadline {
            return;
        }
        if let Some(t) = e.deadline {
            self.timers.remove(&(t, slot));
        }
        e.deadline = deadline;
        if let Some(t) = deadline {
            self.timers.insert((t, slot));
        }
    }

    /// The entry finished (complete or failed): it may be evicted from now on.
    pub(crate) fn mark_finished(&mut self, slot: u32, at_ms: u64) {
        self.active.remove(&slot);
        self.finished.insert((at_ms, slot));
        self.set_deadline(slot, None);
    }

    /// Forget the oldest finished entries beyond `keep`.
    pub(crate) fn forget_finished(&mut self, keep: usize) {
        while self.finished.len() > keep {
            let Some((_, victim)) = self.finished.pop_first() else { return };
            self.remove(victim);
        }
    }

    /// A finished entry became active again (a forced retry).
    pub(crate) fn unmark_finished(&mut self, slot: u32, at_ms: u64) {
        self.finished.remove(&(at_ms, slot));
    }
}
