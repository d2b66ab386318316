//! Who may speak for a derivation, and how much room strangers get.
//!
//! ## Vetting
//! Anyone with a key can sign a claim, a failure or an attestation. What they say counts for
//! scheduling only when the author may speak for the derivation, that is when it is *vetted*:
//! - this node and the trusted nodes speak for every derivation;
//! - any other node speaks for a derivation once this node's designation chose it (it is in the
//!   placement's rank order where the rule of `designate.rs` takes it). It stays vetted for that
//!   derivation.
//!
//! A vetted builder's failure counts towards giving the job up and its attestation towards k
//! (see [`ReplicaRule`]); both exclude it from designation. An unvetted builder's failure and
//! attestation are kept on its record, *latent*: they count if and when designation chooses it,
//! exactly as if it had been asked. So a stranger can fail or complete a job only where placement
//! would have given it the job anyway, at its (clamped, see [`crate::placement`]) weight.
//!
//! Claims: a live claim counts (the claimant is put first, claims are sticky) when the claimant is
//! vetted, or when it ranks among the first `need + 1` members of the rank order that are not
//! excluded, lapsed, or designated and still waiting for their claim (about to lapse). The extra place keeps a running build when this node's view differs from
//! the claimant's by one member (a join, a restart of this node). A claim of a node that is
//! neither in the view nor trusted is ignored ([`Ignored::NotMember`]).
//!
//! ## Room
//! - Per derivation, unvetted builders have at most `max_unvetted_builders_per_drv` records (the
//!   oldest is forgotten for a new one); vetted records may take their places, never the reverse.
//! - A message of an untrusted author about a derivation this node does not know opens a
//!   *stranger's entry*; at most `max_drvs / 8` of them exist, the oldest is evicted for a new
//!   one (and when the table is full for anyone else). An entry stops being a stranger's when a
//!   job or a trusted author's message arrives for it.
//! - Active derivations opened by untrusted submitters are bounded per submitter and in total
//!   ([`Ignored::SubmitterQuota`]).

use super::config::ReplicaRule;
use super::table::{DrvEntry, Room};
use super::{Ignored, Mesh};
use crate::id::NodeId;
use crate::store_path::StorePath;

impl Mesh {
    /// Whether `node` speaks for every derivation: this node or a trusted one.
    pub(super) fn speaks(&self, node: &NodeId) -> bool {
        *node == self.me || self.cfg.trust.is_trusted(node)
    }

    /// The size of a derivation's builder table.
    pub(super) fn room(&self) -> Room {
        Room { max: self.cfg.max_builders_per_drv, max_unvetted: self.cfg.max_unvetted_builders_per_drv }
    }

    /// Most stranger's entries in the derivation table.
    fn max_stranger_entries(&self) -> usize {
        (self.cfg.max_drvs / 8).max(1)
    }

    /// The slot of `drv` for a message by `author`, created if needed (as a stranger's entry when
    /// the author does not speak for everything); an existing stranger's entry is adopted when
    /// the author does.
    pub(super) fn entry_for(&mut self, drv: &StorePath, author: &NodeId, now: u64) -> Option<u32> {
        let max = self.cfg.max_drvs;
        if self.speaks(author) {
            let slot = self.drvs.get_or_insert(drv, max)?;
            self.drvs.adopt(slot);
            Some(slot)
        } else {
            let cap = self.max_stranger_entries();
            self.drvs.get_or_insert_stranger(drv, max, cap, now)
        }
    }

    /// Designation chose `node` for the derivation in `slot`: from now on it speaks for it. Its
    /// latent attestation is recorded and its latent failure counts. Returns whether that
    /// excludes it (the designation must be computed again).
    pub(super) fn vet(&mut self, slot: u32, node: &NodeId) -> bool {
        let (room, max_att) = (self.room(), self.cfg.max_builders_per_drv);
        let Some(e) = self.drvs.get_mut(slot) else { return false };
        let Some(b) = e.builder_mut(node, room, true) else { return false };
        if b.vetted {
            return false;
        }
        b.vetted = true;
        let deterministic = b.failure.is_some_and(|f| f.deterministic);
        let (latent, reason, excluded) = (b.latent_attestation.take(), b.latent_reason.take(), b.excluded());
        if deterministic
            && e.first_deterministic.is_none()
            && let Some(r) = reason
        {
            e.first_deterministic = Some(r);
        }
        if let Some(summary) = latent
            && e.attestations.len() < max_att
            && !e.attestations.contains(&summary)
        {
            let paths: Vec<StorePath> = summary.outputs.iter().map(|o| o.path.clone()).collect();
            e.attestations.push(*summary);
            for p in &paths {
                self.drvs.index_path(p, slot);
            }
            self.quorum_events(slot, &paths);
        }
        excluded
    }

    /// The attesters of a derivation that count towards k.
    pub(super) fn counted_attesters(&self, e: &DrvEntry) -> usize {
        // `attestations` holds vetted builders' only.
        e.attesters()
            .iter()
            .filter(|n| match self.cfg.replicas_from {
                ReplicaRule::Trusted => self.cfg.trust.is_trusted(n),
                ReplicaRule::Designated => true,
            })
            .count()
    }

    /// Whether a submission of `submitter` for `drv` may open an active derivation (`Err` with
    /// the reason when an untrusted submitter is over its quota).
    pub(super) fn submitter_quota(&self, submitter: &NodeId, drv: &StorePath) -> Result<(), Ignored> {
        if self.speaks(submitter) {
            return Ok(());
        }
        let opens = self.drvs.lookup(drv).and_then(|s| self.drvs.get(s)).is_none_or(|e| e.job.is_none());
        if !opens {
            return Ok(());
        }
        let mine = self.untrusted_open.get(submitter).copied().unwrap_or(0);
        if mine >= self.cfg.max_active_jobs_per_untrusted_submitter
            || self.untrusted_open_total >= self.cfg.max_untrusted_active_jobs
        {
            return Err(Ignored::SubmitterQuota);
        }
        Ok(())
    }

    /// The derivation in `slot` got its job from `submitter`: count it against the submitter's
    /// quota when untrusted.
    pub(super) fn opened_by(&mut self, slot: u32, submitter: &NodeId) {
        if self.speaks(submitter) {
            return;
        }
        let Some(e) = self.drvs.get_mut(slot) else { return };
        if e.opened_by.is_some() {
            return;
        }
        e.opened_by = Some(*submitter);
        *self.untrusted_open.entry(*submitter).or_default() += 1;
        self.untrusted_open_total += 1;
    }

    /// The derivation in `slot` finished: it no longer counts against its submitter's quota.
    pub(super) fn release_opener(&mut self, slot: u32) {
        let Some(who) = self.drvs.get_mut(slot).and_then(|e| e.opened_by.take()) else { return };
        self.untrusted_open_total = self.untrusted_open_total.saturating_sub(1);
        if let Some(n) = self.untrusted_open.get_mut(&who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.untrusted_open.remove(&who);
            }
        }
    }
}
