//! The state machine's side of gossiped strikes (`strike_book.rs`): receiving records,
//! publishing this node's own, republishing them, and what the API shows.

use super::strike_book::{Inserted, horizon_ms};
use super::{Disposition, Ignored, Mesh};
use crate::id::NodeId;
use crate::wire::Strike;

/// A member struck by gossiped records, as [`Mesh::struck_members`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StruckMember {
    /// The member (this node possibly).
    pub node: NodeId,
    /// Derivations on which `strike_quorum` observers struck it (among the records kept).
    pub drvs: u32,
    /// Until when (unix ms) every node treats it as penalised; in the past when it ran out.
    pub until_ms: u64,
}

/// The facts of a lapse this node observed, for its strike record.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lapse {
    pub(super) node: NodeId,
    pub(super) attempt: u32,
    pub(super) claimed_at_ms: u64,
    pub(super) lease_expires_at_ms: u64,
}

impl Mesh {
    /// Whether `node` may sign strike records: a `builders` key when that policy is set, else a
    /// trusted key, else (an open mesh trusting every key) anyone.
    pub fn may_strike(&self, node: &NodeId) -> bool {
        match (&self.cfg.builders, &self.cfg.trust.trusted) {
            (Some(b), _) => b.contains(node),
            (None, Some(t)) => t.contains(node),
            (None, None) => true,
        }
    }

    /// Distinct observers needed to strike `struck`: `strike_quorum`, or every allowed observer
    /// other than it when there are fewer (at least 1).
    pub fn strike_quorum_for(&self, struck: &NodeId) -> usize {
        let observers = match (&self.cfg.builders, &self.cfg.trust.trusted) {
            (Some(set), _) | (None, Some(set)) => set.iter().filter(|n| *n != struck).count(),
            (None, None) => usize::MAX,
        };
        self.cfg.strike_quorum.min(observers).max(1)
    }

    /// Whether `node` is penalised now by gossiped strike records (the same answer on every node
    /// that holds the same records, `node` itself included).
    pub fn struck(&self, node: &NodeId) -> bool {
        self.strike_book.penalised(node, self.now_ms)
    }

    /// Every member with gossiped strike records, this node included.
    pub fn struck_members(&self) -> Vec<StruckMember> {
        self.strike_book.summary().map(|(n, drvs, until_ms)| StruckMember { node: *n, drvs, until_ms }).collect()
    }

    pub(super) fn on_strike(&mut self, s: &Strike, now: u64) -> Disposition {
        if s.observer == self.me {
            // Its own record come back (an echo): kept like one it published.
            if self.may_strike(&self.me)
                && self.store_dir_ok(&s.store_dir).is_ok()
                && horizon_ms(s, self.cfg.no_delivery_penalty_ms) > now
            {
                self.keep_strike(s, now);
            }
            return Disposition::Own;
        }
        if let Err(d) = self.store_dir_ok(&s.store_dir).and_then(|()| self.fresh(s.observed_at_ms, now)) {
            return d;
        }
        if !self.may_strike(&s.observer) {
            return Disposition::Ignored(Ignored::NotAnObserver);
        }
        let base = self.cfg.no_delivery_penalty_ms;
        if horizon_ms(s, base) <= now {
            return Disposition::Stale;
        }
        self.keep_strike(s, now)
    }

    /// Put a record in the book; re-evaluate where its member's penalty matters when it changed.
    fn keep_strike(&mut self, s: &Strike, now: u64) -> Disposition {
        let (q, base, max) = (self.strike_quorum_for(&s.struck), self.cfg.no_delivery_penalty_ms, self.cfg.max_members);
        match self.strike_book.insert(s, q, base, max) {
            Inserted::Duplicate => Disposition::Duplicate,
            Inserted::ObserverQuota => Disposition::Ignored(Ignored::StrikeQuota),
            Inserted::New { changed } => {
                if changed {
                    self.struck_changed(s.struck, now);
                }
                Disposition::Applied
            }
        }
    }

    /// The penalty of `node` changed: re-evaluate the derivations where it is designated or holds
    /// a claim (every active one when it is this node).
    fn struck_changed(&mut self, node: NodeId, now: u64) {
        let all = node == self.me;
        self.evaluate_where(now, |e| {
            all || e.designated.contains(&node) || e.builder(&node).is_some_and(|b| b.claim.is_some())
        });
    }

    /// This node saw the leases in `lapses` run out on derivation `slot`: publish a strike record
    /// for each, if this node may strike, the lease ended by its signed time, and the
    /// derivation does not have its quorum of records against that member yet.
    pub(super) fn publish_strikes(&mut self, slot: u32, lapses: &[Lapse], now: u64) {
        if lapses.is_empty() || !self.may_strike(&self.me) {
            return;
        }
        let Some(e) = self.drvs.get(slot) else { return };
        let Some(job) = e.job.as_deref() else { return };
        let (drv, job) = (e.drv.clone(), job.canonical.job);
        for l in lapses {
            if l.lease_expires_at_ms > now
                || l.lease_expires_at_ms.saturating_sub(l.claimed_at_ms) <= super::RELEASE_LEASE_MS
                || self.strike_book.has_quorum(&l.node, &drv, self.strike_quorum_for(&l.node))
                || !self.among_strikers(&l.node, &drv)
            {
                continue;
            }
            let s = Strike {
                observer: self.me,
                struck: l.node,
                job,
                store_dir: self.cfg.store_dir.clone(),
                drv: drv.clone(),
                attempt: l.attempt,
                claimed_at_ms: l.claimed_at_ms,
                lease_expires_at_ms: l.lease_expires_at_ms,
                observed_at_ms: now,
            };
            if matches!(self.keep_strike(&s, now), Disposition::Applied) {
                self.publish(s);
                self.stats.strikes_published += 1;
            }
        }
    }

    /// Whether this node is one of the `quorum + 1` allowed observers in its view that publish a
    /// record of `struck` on `drv`, by a rendezvous hash of (observer, struck, drv): the others
    /// saw the same lapse but stay quiet, so one lapse costs a few records, not one per member.
    /// (One more than the quorum, so one observer that is down or cut off does not prevent it.)
    fn among_strikers(&self, struck: &NodeId, drv: &crate::store_path::StorePath) -> bool {
        let score = |n: &NodeId| {
            let mut h = blake3::Hasher::new_derive_key("buildmesh v1 strike observers");
            h.update(n.as_bytes());
            h.update(struck.as_bytes());
            h.update(drv.to_string().as_bytes());
            *h.finalize().as_bytes()
        };
        let mine = score(&self.me);
        let better = self
            .members
            .iter()
            .map(|m| m.ann.node)
            .filter(|n| n != struck && *n != self.me && self.may_strike(n))
            .filter(|n| score(n) < mine)
            .count();
        better <= self.strike_quorum_for(struck)
    }

    /// Republish this node's records of members still penalised (for nodes that restarted or
    /// missed them) and forget records past their horizon.
    pub(super) fn republish_strikes(&mut self, now: u64) {
        self.next_strike_republish_ms = now.saturating_add(self.cfg.resubmit_interval_ms);
        let (q, base) = (self.cfg.strike_quorum, self.cfg.no_delivery_penalty_ms);
        self.strike_book.prune(now, q, base);
        for s in self.strike_book.records_of(&self.me, now) {
            self.publish(s);
        }
    }
}
