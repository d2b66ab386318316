//! Scheduling one derivation: designation, claims, renewals, yields, completion and failure.

use std::collections::BTreeSet;

use super::designate::{Cand, SelectInput, Selection, select};
use super::struck::Lapse;
use super::table::{ClaimState, DrvEntry, DrvState, OwnBuild};
use super::{BuildOrder, CancelReason, Event, JobFailure, Mesh, Output, RELEASE_LEASE_MS};
use crate::id::NodeId;
use crate::store_path::StorePath;
use crate::verdict::Verdict;
use crate::wire::{BuildMode, Claim};

impl Mesh {
    /// Re-decide everything about one derivation at `now`.
    pub(super) fn evaluate(&mut self, slot: u32, now: u64) {
        self.renew_and_resubmit(slot, now);
        let me = self.me;
        let Some(e) = self.drvs.get_mut(slot) else { return };
        if !e.is_active() || e.job.is_none() {
            self.reschedule(slot, now);
            return;
        }
        let mut lapses = Vec::new();
        let mut facts = Vec::new();
        for b in e.builders.iter_mut().filter(|b| b.node != me) {
            if let Some(c) = b.claim
                && c.local_expiry_ms <= now
            {
                b.claim = None;
                // Lapsed only if it was in the view when it last claimed; a claim from before
                // an absence just ends. A builder that attested or failed has delivered: a lease
                // left behind by a renewal that arrived after its result (gossip reorders) is no
                // lapse. Striking it here and not elsewhere made nodes designate differently:
                // transient k + 1 claims in large simulations.
                if !b.excluded() && self.members.get(&b.node).is_none_or(|m| m.joined_at_ms <= c.received_ms) {
                    b.lapsed_at_ms = Some(now);
                    lapses.push(b.node);
                    facts.push(Lapse {
                        node: b.node,
                        attempt: c.attempt,
                        claimed_at_ms: b.last_claimed_at_ms.unwrap_or(c.received_ms),
                        lease_expires_at_ms: c.lease_expires_at_ms,
                    });
                }
            }
        }
        self.record_lapses(&mut lapses, now);
        self.publish_strikes(slot, &facts, now);
        let (timeout, max_b, warmup) = (self.cfg.claim_timeout_ms, self.cfg.max_builders_per_drv, self.cfg.warmup_ms);
        let room = self.room();
        let mut chosen = Vec::new();
        for _ in 0..=max_b {
            chosen = self.designate(slot);
            // Whoever designation chooses speaks for the derivation from now on; a latent result
            // that now counts changes the designation (and may finish the derivation).
            let mut recount = false;
            for c in &chosen {
                recount |= self.vet(slot, &c.node);
            }
            if recount {
                if self.check_done(slot, now) {
                    return;
                }
                continue;
            }
            let Some(e) = self.drvs.get_mut(slot) else { return };
            let mut lapsed = false;
            for c in chosen.iter().filter(|c| c.node != me) {
                let joined = self.members.get(&c.node).map_or(0, |m| m.joined_at_ms);
                let Some(b) = e.builder_mut(&c.node, room, true) else { continue };
                if b.claim.is_some_and(|cl| cl.received_ms >= joined) {
                    continue;
                }
                // A member cannot claim before its warm-up ends: the timeout starts after it. A
                // paused wait resumes (`Builder::waited_ms`), unless the member (re)joined since.
                let since = match b.waiting_since_ms {
                    Some(since) => since,
                    None => {
                        let start = now.max(joined.saturating_add(warmup));
                        if start > now {
                            b.waited_ms = 0;
                        }
                        let since = start.saturating_sub(b.waited_ms);
                        b.waiting_since_ms = Some(since);
                        since
                    }
                };
                if now >= since.saturating_add(timeout) {
                    b.stop_waiting();
                    b.lapsed_at_ms = Some(now);
                    lapsed = true;
                }
            }
            if !lapsed {
                break;
            }
        }
        let Some(e) = self.drvs.get_mut(slot) else { return };
        for b in e.builders.iter_mut() {
            if !chosen.iter().any(|c| c.node == b.node) {
                b.pause_waiting(now);
            }
        }
        let need = self.need(slot);
        let Some(e) = self.drvs.get_mut(slot) else { return };
        let owners: BTreeSet<u64> = chosen.iter().map(|c| c.owner).collect();
        e.settled = chosen.len() == need
            && owners.len() == chosen.len()
            && chosen.iter().all(|c| {
                e.builder(&c.node)
                    .and_then(|b| b.claim)
                    .is_some_and(|cl| self.members.get(&c.node).is_some_and(|m| cl.received_ms >= m.joined_at_ms))
            });
        e.designated = chosen.iter().map(|c| c.node).collect();
        let mine = chosen.iter().find(|c| c.node == me).map(|c| c.mode);
        match (e.own_build, mine) {
            (Some(own), None) if !own.forced => self.stop_build(slot, now, CancelReason::Yielded),
            (None, Some(mode)) if self.may_claim(slot, now) => {
                if self.has_free_slot() {
                    self.claim(slot, now, mode, false);
                } else {
                    if let Some(e) = self.drvs.get_mut(slot) {
                        e.own_wait_since_ms.get_or_insert(now);
                    }
                    if let Some(j) = self.drvs.get(slot).and_then(|e| e.job.as_deref()) {
                        let (submitter, priority) = (j.canonical.submitter, j.canonical.priority);
                        self.drvs.waiting_for_slot.insert(slot, submitter, priority);
                    }
                }
            }
            _ => {}
        }
        self.reschedule(slot, now);
    }

    /// Strike every member in `lapses` (see `strikes.rs`) and empty the list.
    fn record_lapses(&mut self, lapses: &mut Vec<NodeId>, now: u64) {
        let (base, max) = (self.cfg.no_delivery_penalty_ms, self.cfg.max_members);
        for node in lapses.drain(..) {
            self.strikes.record(node, now, base, max);
            self.stats.lapses += 1;
        }
    }

    /// k minus the distinct attesters that count ([`Mesh::counted_attesters`]).
    fn need(&self, slot: u32) -> usize {
        let Some(e) = self.drvs.get(slot) else { return 0 };
        let Some(job) = &e.job else { return 0 };
        usize::from(job.replicas).saturating_sub(self.counted_attesters(e))
    }

    /// The designated builders of an active derivation with a known job.
    fn designate(&mut self, slot: u32) -> Vec<Cand> {
        let need = self.need(slot);
        // Members struck on this derivation by a quorum of signed records (`strike_book.rs`).
        let struck_here: BTreeSet<NodeId> = match self.drvs.get(slot) {
            Some(e) => self
                .strike_book
                .on_drv(&e.drv)
                .filter(|(n, observers)| *observers >= self.strike_quorum_for(n))
                .map(|(n, _)| n)
                .collect(),
            None => BTreeSet::new(),
        };
        let Some(e) = self.drvs.get_mut(slot) else { return Vec::new() };
        let Some(job) = e.job.as_deref() else { return Vec::new() };
        // A derivation of another shard is only observed here (`shard.rs`).
        if job.observed {
            return Vec::new();
        }
        let len = (4 * usize::from(job.replicas)).max(16);
        let window = match &mut e.window {
            Some(w) => {
                self.members.refresh(w, &job.key, &job.req, len);
                w
            }
            None => e.window.insert(self.members.window(&job.key, &job.req, len)),
        };
        let mut excluded = BTreeSet::new();
        let mut lapsed = BTreeSet::new();
        let mut claimants = Vec::new();
        let mut unvetted_claimants = Vec::new();
        let mut used_owners = BTreeSet::new();
        for b in &e.builders {
            let member = self.members.get(&b.node);
            if b.excluded() {
                excluded.insert(b.node);
                if b.attested
                    && let Some(m) = member
                {
                    used_owners.insert(m.owner);
                }
                continue;
            }
            let Some(m) = member else { continue };
            if struck_here.contains(&b.node) {
                // Struck on this derivation by gossiped records (`strike_book.rs`): its claim
                // does not count, on every node alike (itself included); it ranks with the
                // lapsed members. Its claims elsewhere still count (a spurious strike, e.g. lost
                // renewals, must not cancel its other builds).
                lapsed.insert(b.node);
            } else if b.claim.is_some_and(|c| c.received_ms >= m.joined_at_ms) {
                let cand =
                    window.order.iter().find(|c| c.node == b.node).copied().or_else(|| m.cand(&job.key, &job.req));
                if b.vetted {
                    claimants.extend(cand);
                } else {
                    unvetted_claimants.extend(cand);
                }
            } else if b.lapsed_at_ms.is_some_and(|t| t >= m.joined_at_ms) {
                lapsed.insert(b.node);
            }
        }
        // Members penalised for not delivering (`strikes.rs`) come last, like lapsed ones.
        let now_ms = self.now_ms;
        lapsed.extend(self.strikes.iter().filter(|(n, s)| **n != self.me && s.until_ms > now_ms).map(|(n, _)| *n));
        // Members struck here by gossiped records are already in `lapsed` (above). The records'
        // penalty is not applied to other derivations' order: measured in the simulator (100
        // Sybil members, open mesh) it made completion 2.8x slower than the local penalty alone.
        lapsed.extend(struck_here.iter().copied());
        // This node waited too long for a free slot: the others are about to count it as
        // lapsed (after the whole timeout), so it steps aside first (after half of it).
        if e.own_wait_since_ms.is_some_and(|t| self.now_ms >= t.saturating_add(self.cfg.claim_timeout_ms / 2)) {
            lapsed.insert(self.me);
        }
        // An unvetted claim counts only from the first need + 1 usable members (see vetting.rs);
        // members designated that have not claimed yet are skipped too: they are about to lapse
        // here, and may have lapsed already where the claim comes from.
        if !unvetted_claimants.is_empty() {
            let waiting: BTreeSet<NodeId> = e
                .builders
                .iter()
                .filter(|b| b.waiting_since_ms.is_some() && b.claim.is_none())
                .map(|b| b.node)
                .collect();
            let horizon: Vec<NodeId> = window
                .order
                .iter()
                .filter(|c| !excluded.contains(&c.node) && !lapsed.contains(&c.node) && !waiting.contains(&c.node))
                .take(need + 1)
                .map(|c| c.node)
                .collect();
            claimants.extend(unvetted_claimants.into_iter().filter(|c| horizon.contains(&c.node)));
        }
        let mut input = SelectInput {
            order: &window.order,
            complete: window.complete,
            window: len,
            claimants: &claimants,
            excluded: &excluded,
            lapsed: &lapsed,
            used_owners: &used_owners,
            need,
        };
        match select(&input) {
            Selection::Chosen(c) => c,
            Selection::NeedFullOrder => {
                let full = self.members.full_order(&job.key, &job.req);
                input.order = &full;
                input.complete = true;
                match select(&input) {
                    Selection::Chosen(c) => c,
                    Selection::NeedFullOrder => Vec::new(),
                }
            }
        }
    }

    /// Give freed build slots to the derivations that waited for one, in slot order. Each is
    /// evaluated again: it is claimed if this node is still designated for it.
    pub(super) fn fill_free_slots(&mut self) {
        let now = self.now_ms;
        while self.has_free_slot() {
            if self.outputs.len() >= self.cfg.max_queued_outputs {
                break;
            }
            let running = self.drvs.own_builds_by_submitter();
            let Some(slot) = self.drvs.waiting_for_slot.pop(&running) else { break };
            self.evaluate(slot, now);
        }
    }

    /// Whether this node runs fewer builds than its slots.
    fn has_free_slot(&self) -> bool {
        self.drvs.own_builds() < self.local.slots as usize
    }

    fn may_claim(&self, slot: u32, now: u64) -> bool {
        let Some(e) = self.drvs.get(slot) else { return false };
        self.warmup_done
            && now >= self.warmup_until_ms
            && now >= e.hold_until_ms
            && self.local.slots > 0
            && !e.builder(&self.me).is_some_and(|b| b.excluded())
    }

    /// Claim and start building.
    pub(super) fn claim(&mut self, slot: u32, now: u64, mode: BuildMode, forced: bool) {
        let (me, lease, renew, room) = (self.me, self.cfg.lease_ms, self.cfg.renew_interval_ms, self.room());
        let store_dir = self.cfg.store_dir.clone();
        let Some(e) = self.drvs.get_mut(slot) else { return };
        let Some(job) = e.job.as_deref() else { return };
        let attempt = 1 + e.builders.iter().filter(|b| b.counted_failure().is_some()).count() as u32;
        let claimed_at = now.max(e.own_last_claimed_at_ms + 1);
        let claim = Claim {
            job: job.canonical.job,
            claimant: me,
            store_dir: store_dir.clone(),
            drv: e.drv.clone(),
            attempt,
            claimed_at_ms: claimed_at,
            lease_expires_at_ms: claimed_at.saturating_add(lease),
        };
        let order = BuildOrder {
            job: job.canonical.job,
            store_dir,
            drv: e.drv.clone(),
            outputs: job.canonical.outputs.clone(),
            system: job.canonical.system.clone(),
            mode,
            attempt,
            forced,
        };
        e.own_last_claimed_at_ms = claimed_at;
        if let Some(b) = e.builder_mut(&me, room, true) {
            b.claim = Some(ClaimState {
                local_expiry_ms: claimed_at.saturating_add(lease),
                received_ms: now,
                attempt,
                lease_expires_at_ms: claimed_at.saturating_add(lease),
            });
            b.lapsed_at_ms = None;
            b.stop_waiting();
        }
        self.drvs
            .set_own_build(slot, Some(OwnBuild { attempt, mode, forced, next_renew_ms: now.saturating_add(renew) }));
        self.publish(claim);
        self.outputs.push_back(Output::StartBuild(order));
        self.stats.claims_published += 1;
        self.stats.builds_started += 1;
    }

    /// Stop this node's build. A yield publishes a release so that the next builder need not wait
    /// for the lease to run out; when the job is complete or failed everyone knows already.
    fn stop_build(&mut self, slot: u32, now: u64, reason: CancelReason) {
        let (me, room) = (self.me, self.room());
        let store_dir = self.cfg.store_dir.clone();
        let Some(own) = self.drvs.set_own_build(slot, None) else { return };
        let Some(e) = self.drvs.get_mut(slot) else { return };
        if let Some(b) = e.builder_mut(&me, room, true) {
            b.claim = None;
        }
        let drv = e.drv.clone();
        if reason == CancelReason::Yielded
            && let Some(job) = e.job.as_deref()
        {
            let claimed_at = now.max(e.own_last_claimed_at_ms + 1);
            e.own_last_claimed_at_ms = claimed_at;
            let release = Claim {
                job: job.canonical.job,
                claimant: me,
                store_dir,
                drv: drv.clone(),
                attempt: own.attempt,
                claimed_at_ms: claimed_at,
                lease_expires_at_ms: claimed_at + RELEASE_LEASE_MS,
            };
            self.publish(release);
            self.stats.claims_published += 1;
        }
        self.outputs.push_back(Output::CancelBuild { drv, reason });
        self.stats.builds_cancelled += 1;
    }

    /// Renew this node's lease and republish its own unfinished submission when due.
    fn renew_and_resubmit(&mut self, slot: u32, now: u64) {
        let (lease, renew, resubmit) = (self.cfg.lease_ms, self.cfg.renew_interval_ms, self.cfg.resubmit_interval_ms);
        let (me, room) = (self.me, self.room());
        let store_dir = self.cfg.store_dir.clone();
        let Some(e) = self.drvs.get_mut(slot) else { return };
        let mut msgs = Vec::new();
        if let Some(own) = &mut e.own_build
            && now >= own.next_renew_ms
            && let Some(job) = e.job.as_deref()
        {
            let claimed_at = now.max(e.own_last_claimed_at_ms + 1);
            e.own_last_claimed_at_ms = claimed_at;
            own.next_renew_ms = now.saturating_add(renew);
            msgs.push(crate::wire::Message::Claim(Claim {
                job: job.canonical.job,
                claimant: me,
                store_dir,
                drv: e.drv.clone(),
                attempt: own.attempt,
                claimed_at_ms: claimed_at,
                lease_expires_at_ms: claimed_at.saturating_add(lease),
            }));
            let attempt = own.attempt;
            if let Some(b) = e.builder_mut(&me, room, true) {
                b.claim = Some(ClaimState {
                    local_expiry_ms: claimed_at.saturating_add(lease),
                    received_ms: now,
                    attempt,
                    lease_expires_at_ms: claimed_at.saturating_add(lease),
                });
            }
            self.stats.claims_published += 1;
        }
        if e.is_active()
            && let Some(job) = e.own_job.as_deref()
            && e.next_resubmit_ms.is_some_and(|t| now >= t)
        {
            msgs.push(crate::wire::Message::JobSubmission(job.clone()));
            e.next_resubmit_ms = Some(now.saturating_add(resubmit));
        }
        for m in msgs {
            self.publish(m);
        }
    }

    /// Recompute the derivation's deadline from its state.
    pub(super) fn reschedule(&mut self, slot: u32, now: u64) {
        let timeout = self.cfg.claim_timeout_ms;
        let (me, warmup) = (self.me, self.warmup_until_ms);
        let Some(e) = self.drvs.get(slot) else { return };
        let mut times: Vec<u64> = Vec::new();
        times.extend(e.own_build.map(|b| b.next_renew_ms));
        if e.is_active() && e.job.is_some() {
            times.extend(e.next_resubmit_ms.filter(|_| e.own_job.is_some()));
            for b in e.builders.iter().filter(|b| b.node != me) {
                times.extend(b.claim.map(|c| c.local_expiry_ms));
                times.extend(b.waiting_since_ms.map(|t| t.saturating_add(timeout)));
            }
            if e.own_build.is_none() && e.designated.contains(&me) {
                let at = warmup.max(e.hold_until_ms);
                if at > now {
                    times.push(at);
                }
            }
        }
        let deadline = times.into_iter().min().map(|t| t.max(now + 1));
        self.drvs.set_deadline(slot, deadline);
    }

    /// Complete or fail the derivation if its results say so; `true` if it is finished.
    pub(super) fn check_done(&mut self, slot: u32, now: u64) -> bool {
        let Some(e) = self.drvs.get(slot) else { return true };
        if !e.is_active() {
            return true;
        }
        let Some(job) = e.job.as_deref() else { return false };
        if self.counted_attesters(e) >= usize::from(job.replicas) {
            self.finish(slot, now, None);
            return true;
        }
        // Only the failures of builders that speak for the derivation count (vetting.rs).
        let failed: Vec<NodeId> = e.builders.iter().filter(|b| b.counted_failure().is_some()).map(|b| b.node).collect();
        let deterministic: Vec<NodeId> = e
            .builders
            .iter()
            .filter(|b| b.counted_failure().is_some_and(|f| f.deterministic))
            .map(|b| b.node)
            .collect();
        let failure = if deterministic.len() >= self.cfg.failure_quorum as usize {
            e.first_deterministic
                .as_deref()
                .cloned()
                .map(|reason| JobFailure::Deterministic { builders: deterministic, reason })
        } else if failed.len() >= self.cfg.max_attempts as usize {
            Some(JobFailure::AttemptsExhausted { builders: failed })
        } else {
            None
        };
        match failure {
            Some(f) => {
                self.finish(slot, now, Some(f));
                true
            }
            None => false,
        }
    }

    /// The derivation is complete (`failure` = None) or given up.
    fn finish(&mut self, slot: u32, now: u64, failure: Option<JobFailure>) {
        self.release_opener(slot);
        let Some(e) = self.drvs.get_mut(slot) else { return };
        e.state = if failure.is_some() { DrvState::Failed { at_ms: now } } else { DrvState::Complete { at_ms: now } };
        e.failure = failure.clone().map(Box::new);
        e.window = None;
        e.designated = Vec::new();
        e.settled = true;
        e.next_resubmit_ms = None;
        e.builders.retain(|b| b.excluded());
        e.builders.shrink_to_fit();
        e.attestations.shrink_to_fit();
        let forced = e.own_build.is_some_and(|b| b.forced);
        let drv = e.drv.clone();
        if !forced {
            let reason = if failure.is_some() { CancelReason::Failed } else { CancelReason::Complete };
            self.stop_build(slot, now, reason);
            self.drvs.mark_finished(slot, now);
        } else {
            self.drvs.active.remove(&slot);
        }
        if let Some(e) = self.drvs.get(slot) {
            let ev = self.finished_event(e);
            self.event(ev);
        }
        match failure {
            None => self.resolve_complete(&drv, now),
            Some(_) => self.resolve_failed(&drv),
        }
        self.reschedule(slot, now);
        self.drvs.forget_finished(self.cfg.max_finished_drvs);
    }

    /// The event that reports a finished derivation.
    pub(super) fn finished_event(&self, e: &DrvEntry) -> Event {
        match &e.failure {
            Some(failure) => {
                Event::JobFailed { drv: e.drv.clone(), jobs: e.jobs.clone(), failure: (**failure).clone() }
            }
            None => {
                let paths: BTreeSet<&StorePath> =
                    e.attestations.iter().flat_map(|a| a.outputs.iter().map(|o| &o.path)).collect();
                Event::JobComplete {
                    drv: e.drv.clone(),
                    jobs: e.jobs.clone(),
                    builders: e.attesters(),
                    agreed: paths.iter().all(|p| self.accepted(p).is_some()),
                }
            }
        }
    }

    /// Local submissions waiting for `drv` may go; local submissions of `drv` are done.
    fn resolve_complete(&mut self, drv: &StorePath, now: u64) {
        if let Some(jobs) = self.pending_by_drv.remove(drv) {
            for j in jobs {
                if let Some(p) = self.pending.remove(&j) {
                    self.forget_pending(&j, &p);
                }
            }
        }
        let Some(jobs) = self.waiters.remove(drv) else { return };
        for j in jobs {
            let ready = self.pending.get_mut(&j).is_some_and(|p| {
                p.waiting.remove(drv);
                p.waiting.is_empty()
            });
            if !ready {
                continue;
            }
            let Some(p) = self.pending.remove(&j) else { continue };
            self.forget_pending(&j, &p);
            let drv = p.job.drv.clone();
            if self.publish_submission(p.job, now).is_err() {
                self.event(Event::JobFailed { drv, jobs: vec![j], failure: JobFailure::NoRoom });
            }
        }
    }

    /// Local submissions waiting for `drv` fail, and so do those waiting for them.
    fn resolve_failed(&mut self, drv: &StorePath) {
        let mut work = vec![drv.clone()];
        while let Some(d) = work.pop() {
            if let Some(jobs) = self.pending_by_drv.remove(&d) {
                for j in jobs {
                    if let Some(p) = self.pending.remove(&j) {
                        self.forget_pending(&j, &p);
                    }
                }
            }
            let Some(jobs) = self.waiters.remove(&d) else { continue };
            for j in jobs {
                let Some(p) = self.pending.remove(&j) else { continue };
                self.forget_pending(&j, &p);
                self.event(Event::JobFailed {
                    drv: p.job.drv.clone(),
                    jobs: vec![j],
                    failure: JobFailure::InputFailed { input: d.clone() },
                });
                work.push(p.job.drv);
            }
        }
    }

    /// Report outputs that reached the quorum or mismatch, once each.
    pub(super) fn quorum_events(&mut self, slot: u32, paths: &[StorePath]) {
        for p in paths {
            let Some(a) = self.assess_output(p) else { continue };
            let accepted = a.accepted.as_ref().and_then(|(h, size)| self.find_output(p, h, *size));
            let Some(e) = self.drvs.get_mut(slot) else { return };
            let drv = e.drv.clone();
            let mut events = Vec::new();
            if let (Some((nar_hash, nar_size)), Some(group)) =
                (accepted, a.accepted.as_ref().and_then(|k| a.groups.get(k)))
                && DrvEntry::first_report(&mut e.reported_accepted, p)
            {
                events.push(Event::OutputAccepted {
                    drv: drv.clone(),
                    path: p.clone(),
                    nar_hash,
                    nar_size,
                    builders: group.iter().copied().collect(),
                });
            }
            if a.verdict == Verdict::Mismatch && DrvEntry::first_report(&mut e.reported_mismatch, p) {
                events.push(Event::OutputMismatch { drv, path: p.clone() });
            }
            for ev in events {
                self.event(ev);
            }
        }
    }

    /// `retry --on` this node: build whatever placement says.
    pub(super) fn force_build(&mut self, slot: u32, now: u64) {
        let (me, room) = (self.me, self.room());
        let Some(e) = self.drvs.get_mut(slot) else { return };
        e.own_failure = None;
        if let Some(b) = e.builder_mut(&me, room, true) {
            b.failure = None;
        }
        if let Some(own) = &mut e.own_build {
            own.forced = true;
            return;
        }
        let finished_at = match e.state {
            DrvState::Complete { at_ms } | DrvState::Failed { at_ms } => Some(at_ms),
            DrvState::Active => None,
        };
        let mode = e
            .job
            .as_deref()
            .and_then(|j| self.members.get(&me).and_then(|m| m.cand(&j.key, &j.req)))
            .map_or(BuildMode::Native, |c| c.mode);
        if let Some(at) = finished_at {
            self.drvs.unmark_finished(slot, at);
        }
        self.claim(slot, now, mode, true);
        self.reschedule(slot, now);
    }

    /// A forced build ended: a finished derivation may be evicted again.
    pub(super) fn forced_done(&mut self, slot: u32, now: u64) {
        let Some(e) = self.drvs.get(slot) else { return };
        if e.own_build.is_some() {
            return;
        }
        match e.state {
            DrvState::Complete { at_ms } | DrvState::Failed { at_ms } => {
                self.drvs.mark_finished(slot, at_ms);
                self.drvs.forget_finished(self.cfg.max_finished_drvs);
            }
            DrvState::Active => {
                self.evaluate(slot, now);
            }
        }
    }
}
