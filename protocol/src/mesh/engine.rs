//! Inputs: announcements, messages about jobs, and local requests.

use std::collections::BTreeSet;

use super::membership::{Change, Renewal};
use super::shard;
use super::table::{AttSummary, ClaimState, DrvState, FailureMark, JobInfo};
use super::{Disposition, Event, Ignored, LocalInfo, Mesh, MeshError, Output, Pending, RELEASE_LEASE_MS};
use crate::id::{JobId, NodeId};
use crate::placement::{PlacementKey, Requirements};
use crate::store_path::{StoreDir, StorePath};
use crate::wire::{Announcement, Attestation, BuildFailure, Claim, FailureReason, JobSubmission};

impl Mesh {
    // ---- membership ----

    pub(super) fn announce(&mut self, now: u64) {
        self.seq = (self.seq + 1).max(now);
        let l = &self.local;
        let ann = Announcement {
            node: self.me,
            seq: self.seq,
            timestamp_ms: now,
            version: l.version.clone(),
            owner: l.owner.clone(),
            native_systems: l.native_systems.clone(),
            emulated_systems: l.emulated_systems.clone(),
            features: l.features.clone(),
            mandatory_features: l.mandatory_features.clone(),
            slots: l.slots,
            load: l.load,
            slowdown: l.slowdown.clone(),
            disk_pressure: l.disk_pressure.clone(),
        };
        // Outside the `builders` policy this node is no member of its own view either (every
        // node must designate alike); it still announces (others judge by their own policy).
        let change = if self.accepts_builder(&self.me) { self.members.upsert(&ann, now) } else { Change::Renewed };
        self.publish(ann);
        self.next_announce_ms = now.saturating_add(self.cfg.announce_interval_ms);
        if change != Change::Renewed {
            self.view_joined(self.me, now, true);
        }
    }

    pub(super) fn set_local(&mut self, info: LocalInfo, now_ms: u64) -> Result<(), MeshError> {
        self.check_backpressure()?;
        info.validate()?;
        let now = self.clock(now_ms);
        let changed = !info.same_capabilities(&self.local);
        self.local = info;
        if changed {
            self.announce(now);
        }
        Ok(())
    }

    pub(super) fn fresh(&self, timestamp_ms: u64, now: u64) -> Result<(), Disposition> {
        if timestamp_ms > now.saturating_add(self.cfg.max_clock_skew_ms) {
            return Err(Disposition::Ignored(Ignored::FromTheFuture));
        }
        Ok(())
    }

    pub(super) fn store_dir_ok(&self, dir: &StoreDir) -> Result<(), Disposition> {
        if *dir != self.cfg.store_dir {
            return Err(Disposition::Ignored(Ignored::OtherStoreDir));
        }
        Ok(())
    }

    pub(super) fn on_announcement(&mut self, a: &Announcement, now: u64) -> Disposition {
        if a.node == self.me {
            return Disposition::Own;
        }
        if let Err(d) = self.fresh(a.timestamp_ms, now) {
            return d;
        }
        if a.timestamp_ms.saturating_add(self.cfg.member_ttl_ms) < now {
            return Disposition::Stale;
        }
        if !self.accepts_builder(&a.node) {
            return Disposition::Ignored(Ignored::NotABuilder);
        }
        // Most announcements renew a member as it was: one lookup.
        match self.members.renew(a, now) {
            Renewal::Stale => return Disposition::Stale,
            Renewal::Duplicate => return Disposition::Duplicate,
            Renewal::Renewed => return Disposition::Applied,
            Renewal::Other => {}
        }
        if self.members.get(&a.node).is_none() && self.members.len() >= self.cfg.max_members {
            return Disposition::Ignored(Ignored::TableFull);
        }
        match self.members.upsert(a, now) {
            Change::Joined => {
                self.event(Event::MemberJoined { node: a.node });
                self.view_joined(a.node, now, false);
            }
            Change::Changed => self.view_joined(a.node, now, true),
            Change::Renewed => {}
        }
        Disposition::Applied
    }

    /// A member joined or changed: re-evaluate the derivations it can affect. A join cannot move a
    /// settled designation (every designated builder holds a live claim, owners distinct) unless
    /// the newcomer itself holds a claim there.
    fn view_joined(&mut self, node: NodeId, now: u64, changed: bool) {
        let all = node == self.me;
        self.evaluate_where(now, |e| {
            all || !e.settled
                || (changed && e.designated.contains(&node))
                || e.builder(&node).is_some_and(|b| b.claim.is_some())
        });
    }

    /// A member left: re-evaluate the derivations where it was designated, claiming, or in the
    /// rank window.
    pub(super) fn view_left(&mut self, node: NodeId, now: u64) {
        self.evaluate_where(now, |e| {
            e.designated.contains(&node)
                || e.builder(&node).is_some_and(|b| b.claim.is_some())
                || e.window.as_ref().is_some_and(|w| w.order.iter().any(|c| c.node == node))
        });
    }

    /// Re-evaluate every active derivation whose entry `affected` selects (what a change of the
    /// view or of a member's penalty can move).
    pub(super) fn evaluate_where(&mut self, now: u64, affected: impl Fn(&super::table::DrvEntry) -> bool) {
        let slots: Vec<u32> =
            self.drvs.active.iter().copied().filter(|&s| self.drvs.get(s).is_some_and(&affected)).collect();
        for slot in slots {
            self.evaluate(slot, now);
        }
    }

    // ---- jobs ----

    pub(super) fn on_submission(&mut self, j: &JobSubmission, now: u64) -> Disposition {
        if j.submitter == self.me {
            return Disposition::Own;
        }
        if let Err(d) = self.store_dir_ok(&j.store_dir).and_then(|()| self.fresh(j.submitted_at_ms, now)) {
            return d;
        }
        if !self.accepts_submitter(&j.submitter) {
            self.note_refusal(&j.drv, j.submitter);
            return Disposition::Ignored(Ignored::SubmitterRefused);
        }
        if let Err(why) = self.submitter_quota(&j.submitter, &j.drv) {
            return Disposition::Ignored(why);
        }
        match self.apply_submission(j, now, false) {
            Ok(d) => d,
            Err(_) => Disposition::Ignored(Ignored::TableFull),
        }
    }

    /// Merge a submission into its derivation's entry (creating it), then schedule.
    pub(super) fn apply_submission(
        &mut self,
        j: &JobSubmission,
        now: u64,
        own: bool,
    ) -> Result<Disposition, MeshError> {
        let max = self.cfg.max_drvs;
        let slot =
            self.drvs.get_or_insert(&j.drv, max).ok_or(MeshError::TableFull { table: "derivations", limit: max })?;
        let replicas = j.replicas.min(self.cfg.max_replicas).max(1);
        let (fresh_ms, renew_ms, resubmit_ms, max_jobs) = (
            self.cfg.fresh_job_ms,
            self.cfg.renew_interval_ms,
            self.cfg.resubmit_interval_ms,
            self.cfg.max_jobs_per_drv,
        );
        let Some(e) = self.drvs.get_mut(slot) else { return Ok(Disposition::Ignored(Ignored::TableFull)) };
        let opens = e.job.is_none();
        if e.jobs.contains(&j.job) {
            self.maybe_republish(slot, now);
            return Ok(Disposition::Duplicate);
        }
        if e.jobs.len() >= max_jobs {
            return Ok(Disposition::Ignored(Ignored::TableFull));
        }
        let pos = e.jobs.partition_point(|x| *x < j.job);
        e.jobs.insert(pos, j.job);
        let req = Requirements::of_submission(j);
        match &mut e.job {
            None => {
                let observed = self.cfg.shards > 1 && shard::drv_shard(&j.drv, self.cfg.shards) != self.shard;
                e.job = Some(Box::new(JobInfo {
                    canonical: j.clone(),
                    key: PlacementKey::for_drv(&j.drv),
                    req,
                    replicas,
                    observed,
                }));
                let late = now.saturating_sub(j.submitted_at_ms) > fresh_ms;
                e.hold_until_ms = if late && !own { now.saturating_add(renew_ms + fresh_ms) } else { now };
            }
            Some(info) => {
                info.replicas = info.replicas.max(replicas);
                if j.job < info.canonical.job {
                    info.canonical = j.clone();
                    if info.req != req {
                        info.req = req;
                        e.window = None;
                    }
                }
            }
        }
        if own {
            e.own_job = Some(Box::new(j.clone()));
            e.next_resubmit_ms = Some(now.saturating_add(resubmit_ms));
        }
        let active = e.is_active();
        self.drvs.adopt(slot);
        if opens && active {
            self.opened_by(slot, &j.submitter);
        }
        if active {
            self.drvs.active.insert(slot);
            if !self.check_done(slot, now) {
                self.evaluate(slot, now);
            }
        }
        if !own {
            // The sender may not know this node's result (a resubmission after a restart).
            self.maybe_republish(slot, now);
        }
        Ok(Disposition::Applied)
    }

    pub(super) fn on_claim(&mut self, c: &Claim, now: u64) -> Disposition {
        if c.claimant == self.me {
            return Disposition::Own;
        }
        if let Err(d) = self.store_dir_ok(&c.store_dir).and_then(|()| self.fresh(c.claimed_at_ms, now)) {
            return d;
        }
        let speaks = self.speaks(&c.claimant);
        if !speaks && self.members.get(&c.claimant).is_none() {
            return Disposition::Ignored(Ignored::NotMember);
        }
        let (room, skew) = (self.room(), self.cfg.max_clock_skew_ms);
        let Some(slot) = self.entry_for(&c.drv, &c.claimant, now) else {
            return Disposition::Ignored(Ignored::TableFull);
        };
        let Some(e) = self.drvs.get_mut(slot) else { return Disposition::Ignored(Ignored::TableFull) };
        let finished = !e.is_active();
        let Some(b) = e.builder_mut(&c.claimant, room, speaks) else {
            return Disposition::Ignored(Ignored::TableFull);
        };
        if b.last_claimed_at_ms.is_some_and(|t| t >= c.claimed_at_ms) {
            return Disposition::Stale;
        }
        b.last_claimed_at_ms = Some(c.claimed_at_ms);
        let lease = c.lease_expires_at_ms.saturating_sub(c.claimed_at_ms);
        let was_live = b.claim.is_some_and(|x| x.local_expiry_ms > now);
        let excluded = b.excluded();
        if lease <= RELEASE_LEASE_MS {
            b.claim = None;
            b.lapsed_at_ms = None;
            b.stop_waiting();
        } else {
            let local_expiry = now.saturating_add(lease).min(c.lease_expires_at_ms.saturating_add(skew));
            if local_expiry <= now {
                return Disposition::Stale;
            }
            b.claim = Some(ClaimState {
                local_expiry_ms: local_expiry,
                received_ms: now,
                attempt: c.attempt,
                lease_expires_at_ms: c.lease_expires_at_ms,
            });
            b.lapsed_at_ms = None;
            b.stop_waiting();
        }
        let now_live = b.claim.is_some();
        if finished || excluded {
            // Somebody works on what this node considers done: tell it (rate-limited).
            if !was_live && now_live {
                self.maybe_republish(slot, now);
            }
            return Disposition::Applied;
        }
        if was_live != now_live {
            if !was_live {
                self.maybe_republish(slot, now);
            }
            self.evaluate(slot, now);
        } else {
            self.reschedule(slot, now);
        }
        Disposition::Applied
    }

    pub(super) fn on_attestation(&mut self, a: &Attestation, now: u64) -> Disposition {
        if let Err(d) = self.store_dir_ok(&a.store_dir).and_then(|()| self.fresh(a.finished_at_ms, now)) {
            return d;
        }
        if a.builder == self.me {
            // Our own, come back (sync, echo): record it like a restored one.
            return match self.record_own(a, now, false) {
                Ok(true) => Disposition::Applied,
                Ok(false) => Disposition::Duplicate,
                Err(_) => Disposition::Ignored(Ignored::TableFull),
            };
        }
        let Some(slot) = self.entry_for(&a.drv, &a.builder, now) else {
            return Disposition::Ignored(Ignored::TableFull);
        };
        match self.record_attestation(slot, a, now) {
            Some(true) => Disposition::Applied,
            Some(false) => Disposition::Duplicate,
            None => Disposition::Ignored(Ignored::TableFull),
        }
    }

    /// Record an attestation: `Some(true)` if new, `Some(false)` if a duplicate, `None` if the
    /// derivation's builder table is full. Then check completion and re-schedule.
    pub(super) fn record_attestation(&mut self, slot: u32, a: &Attestation, now: u64) -> Option<bool> {
        let (max_b, room, speaks) = (self.cfg.max_builders_per_drv, self.room(), self.speaks(&a.builder));
        let e = self.drvs.get_mut(slot)?;
        let summary = AttSummary::of(a);
        if e.attestations.contains(&summary) {
            return Some(false);
        }
        let vetted = e.builder(&a.builder).is_some_and(|b| b.vetted) || speaks;
        if vetted && e.attestations.len() >= max_b {
            return None;
        }
        let active = e.is_active();
        let b = e.builder_mut(&a.builder, room, speaks)?;
        if !b.vetted {
            // Latent until designation chooses this builder (see vetting.rs).
            if b.latent_attestation.as_deref() == Some(&summary) {
                return Some(false);
            }
            let was_claiming = b.claim.is_some();
            b.attested = true;
            b.claim = None;
            b.stop_waiting();
            b.latent_attestation = Some(Box::new(summary));
            if was_claiming && active {
                self.evaluate(slot, now);
            }
            return Some(true);
        }
        b.attested = true;
        b.claim = None;
        b.stop_waiting();
        let paths: Vec<StorePath> = summary.outputs.iter().map(|o| o.path.clone()).collect();
        e.attestations.push(summary);
        for p in &paths {
            self.drvs.index_path(p, slot);
        }
        self.quorum_events(slot, &paths);
        if self.drvs.get(slot).is_some_and(|e| e.is_active()) && !self.check_done(slot, now) {
            self.evaluate(slot, now);
        }
        Some(true)
    }

    pub(super) fn on_failure(&mut self, f: &BuildFailure, now: u64) -> Disposition {
        if f.builder == self.me {
            return Disposition::Own;
        }
        if let Err(d) = self.store_dir_ok(&f.store_dir).and_then(|()| self.fresh(f.at_ms, now)) {
            return d;
        }
        let Some(slot) = self.entry_for(&f.drv, &f.builder, now) else {
            return Disposition::Ignored(Ignored::TableFull);
        };
        match self.record_failure(slot, f.builder, f.attempt, &f.reason, now) {
            Some(true) => Disposition::Applied,
            Some(false) => Disposition::Duplicate,
            None => Disposition::Ignored(Ignored::TableFull),
        }
    }

    fn record_failure(
        &mut self,
        slot: u32,
        builder: NodeId,
        attempt: u32,
        reason: &FailureReason,
        now: u64,
    ) -> Option<bool> {
        let (room, speaks) = (self.room(), self.speaks(&builder));
        let e = self.drvs.get_mut(slot)?;
        let active = e.is_active();
        let b = e.builder_mut(&builder, room, speaks)?;
        if b.failure.is_some_and(|f| f.attempt >= attempt) {
            return Some(false);
        }
        let deterministic = reason.is_deterministic();
        let was_claiming = b.claim.is_some();
        b.failure = Some(FailureMark { attempt, deterministic });
        b.claim = None;
        b.stop_waiting();
        if !b.vetted {
            // Latent until designation chooses this builder (see vetting.rs).
            b.latent_reason = deterministic.then(|| Box::new(reason.clone()));
            if was_claiming && active {
                self.evaluate(slot, now);
            }
            return Some(true);
        }
        if deterministic && e.first_deterministic.is_none() {
            e.first_deterministic = Some(Box::new(reason.clone()));
        }
        if e.is_active() && !self.check_done(slot, now) {
            self.evaluate(slot, now);
        }
        Some(true)
    }

    // ---- local requests ----

    pub(super) fn submit(
        &mut self,
        job: JobSubmission,
        inputs: BTreeSet<StorePath>,
        now_ms: u64,
    ) -> Result<(), MeshError> {
        self.check_backpressure()?;
        let now = self.clock(now_ms);
        if job.submitter != self.me {
            return Err(MeshError::NotMine { what: "job submission", author: job.submitter, me: self.me });
        }
        if job.store_dir != self.cfg.store_dir {
            return Err(MeshError::OtherStoreDir {
                what: "job submission",
                found: job.store_dir.to_string(),
                expected: self.cfg.store_dir.to_string(),
            });
        }
        let known = self.drvs.lookup(&job.drv).and_then(|s| self.drvs.get(s));
        if self.pending.contains_key(&job.job) || known.is_some_and(|e| e.jobs.contains(&job.job)) {
            return Err(MeshError::DuplicateJob { job: job.job });
        }
        if let Some(e) = known.filter(|e| !e.is_active()) {
            // Already decided: tell the caller again.
            let ev = self.finished_event(e);
            self.event(ev);
            return Ok(());
        }
        let mut waiting = BTreeSet::new();
        for input in inputs {
            match self.drvs.lookup(&input).and_then(|s| self.drvs.get(s)).map(|e| e.state) {
                Some(DrvState::Complete { .. }) => {}
                Some(DrvState::Failed { .. }) => {
                    self.event(Event::JobFailed {
                        drv: job.drv.clone(),
                        jobs: vec![job.job],
                        failure: super::JobFailure::InputFailed { input },
                    });
                    return Ok(());
                }
                _ => {
                    waiting.insert(input);
                }
            }
        }
        if waiting.is_empty() {
            return self.publish_submission(job, now);
        }
        if self.pending.len() >= self.cfg.max_pending_submissions {
            return Err(MeshError::TableFull { table: "pending submissions", limit: self.cfg.max_pending_submissions });
        }
        for input in &waiting {
            self.waiters.entry(input.clone()).or_default().push(job.job);
        }
        self.pending_by_drv.entry(job.drv.clone()).or_default().push(job.job);
        self.pending.insert(job.job, Pending { job, waiting });
        Ok(())
    }

    /// Publish a local submission (its inputs are complete) and schedule it here.
    pub(super) fn publish_submission(&mut self, mut job: JobSubmission, now: u64) -> Result<(), MeshError> {
        if self.drvs.lookup(&job.drv).is_none() && self.drvs.len() >= self.cfg.max_drvs {
            // Make sure there is room before publishing (eviction happens in get_or_insert).
            self.drvs
                .get_or_insert(&job.drv, self.cfg.max_drvs)
                .ok_or(MeshError::TableFull { table: "derivations", limit: self.cfg.max_drvs })?;
        }
        job.submitted_at_ms = now;
        self.publish(job.clone());
        self.event(Event::JobPublished { job: job.job, drv: job.drv.clone() });
        self.apply_submission(&job, now, true).map(|_| ())
    }

    pub(super) fn cancel_submission(&mut self, job: &JobId) {
        if let Some(p) = self.pending.remove(job) {
            self.forget_pending(job, &p);
        }
    }

    pub(super) fn forget_pending(&mut self, job: &JobId, p: &Pending) {
        for input in &p.waiting {
            if let Some(v) = self.waiters.get_mut(input) {
                v.retain(|j| j != job);
                if v.is_empty() {
                    self.waiters.remove(input);
                }
            }
        }
        if let Some(v) = self.pending_by_drv.get_mut(&p.job.drv) {
            v.retain(|j| j != job);
            if v.is_empty() {
                self.pending_by_drv.remove(&p.job.drv);
            }
        }
    }

    /// This node's build finished (`publish`) or its old attestation is restored.
    pub(super) fn build_finished(&mut self, a: Attestation, now_ms: u64, publish: bool) -> Result<(), MeshError> {
        self.check_backpressure()?;
        let now = self.clock(now_ms);
        if a.builder != self.me {
            return Err(MeshError::NotMine { what: "attestation", author: a.builder, me: self.me });
        }
        if a.store_dir != self.cfg.store_dir {
            return Err(MeshError::OtherStoreDir {
                what: "attestation",
                found: a.store_dir.to_string(),
                expected: self.cfg.store_dir.to_string(),
            });
        }
        self.record_own(&a, now, publish).map(|_| ())
    }

    fn record_own(&mut self, a: &Attestation, now: u64, publish: bool) -> Result<bool, MeshError> {
        let max = self.cfg.max_drvs;
        let me = self.me;
        let slot = self.entry_for(&a.drv, &me, now).ok_or(MeshError::TableFull { table: "derivations", limit: max })?;
        let Some(e) = self.drvs.get_mut(slot) else { return Ok(false) };
        let forced = e.own_build.is_some_and(|b| b.forced);
        if publish || e.own_attestation.is_none() {
            e.own_attestation = Some(Box::new(a.clone()));
        }
        if publish {
            e.own_failure = None;
            e.last_republish_ms = Some(now);
            self.drvs.set_own_build(slot, None);
            self.publish(a.clone());
        }
        let new = self.record_attestation(slot, a, now).unwrap_or(false);
        if forced && publish {
            self.forced_done(slot, now);
        }
        self.reschedule(slot, now);
        Ok(new)
    }

    pub(super) fn build_failed(
        &mut self,
        drv: &StorePath,
        reason: FailureReason,
        log: Option<crate::wire::LogDigest>,
        now_ms: u64,
    ) -> Result<(), MeshError> {
        self.check_backpressure()?;
        let now = self.clock(now_ms);
        let slot = self.drvs.lookup(drv).ok_or_else(|| MeshError::NotBuilding { drv: drv.clone() })?;
        let store_dir = self.cfg.store_dir.clone();
        let own = self.drvs.set_own_build(slot, None).ok_or_else(|| MeshError::NotBuilding { drv: drv.clone() })?;
        let e = self.drvs.get_mut(slot).ok_or_else(|| MeshError::NotBuilding { drv: drv.clone() })?;
        let failure = BuildFailure {
            builder: self.me,
            store_dir,
            drv: drv.clone(),
            attempt: own.attempt,
            mode: own.mode,
            at_ms: now,
            reason: reason.clone(),
            log,
        };
        e.own_failure = Some(Box::new(failure.clone()));
        e.last_republish_ms = Some(now);
        self.publish(failure);
        self.record_failure(slot, self.me, own.attempt, &reason, now);
        if own.forced {
            self.forced_done(slot, now);
        }
        self.reschedule(slot, now);
        Ok(())
    }

    pub(super) fn retry(&mut self, drv: &StorePath, on: NodeId, now_ms: u64) -> Result<(), MeshError> {
        self.check_backpressure()?;
        let now = self.clock(now_ms);
        if on != self.me {
            self.outputs.push_back(Output::RequestRetry { peer: on, drv: drv.clone() });
            return Ok(());
        }
        let slot = self
            .drvs
            .lookup(drv)
            .filter(|s| self.drvs.get(*s).is_some_and(|e| e.job.is_some()))
            .ok_or_else(|| MeshError::UnknownDrv { drv: drv.clone() })?;
        self.force_build(slot, now);
        Ok(())
    }

    /// Republish this node's own result for a derivation, at most once per
    /// `republish_interval_ms`, when another node shows it does not know it.
    pub(super) fn maybe_republish(&mut self, slot: u32, now: u64) {
        let interval = self.cfg.republish_interval_ms;
        let Some(e) = self.drvs.get_mut(slot) else { return };
        if e.own_attestation.is_none() && e.own_failure.is_none() {
            return;
        }
        if e.last_republish_ms.is_some_and(|t| now < t.saturating_add(interval)) {
            return;
        }
        e.last_republish_ms = Some(now);
        let a = e.own_attestation.as_deref().cloned();
        let f = e.own_failure.as_deref().cloned();
        if let Some(a) = a {
            self.publish(a);
            self.stats.republished += 1;
        }
        if let Some(f) = f {
            self.publish(f);
            self.stats.republished += 1;
        }
    }
}
