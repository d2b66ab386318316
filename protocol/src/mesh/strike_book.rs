//! Gossiped strikes: signed records that a member's lease ran out, applied alike by every node.
//!
//! `strikes.rs` keeps what this node observed; the struck member never observes its own lapse,
//! so a rule that moves its live claim, applied from local observations, would be applied by the
//! others and not by it (two builders for one place). Here the observation becomes a fact every
//! node has: an observer that sees a lease run out publishes a [`Strike`] record, and every node
//! (the struck member included) keeps the records it receives and applies one rule to them.
//!
//! ## Who may strike, and how many
//! A record counts only if its observer is allowed to strike: the `builders` keys when that
//! policy is set, else the trusted keys, else (an open mesh that trusts every key) any member. A
//! record of another key is refused ([`super::Ignored::NotAnObserver`]; the driver penalises the
//! peer that sent it). A member is *struck* on a derivation when `strike_quorum` distinct
//! observers (default 2; fewer when fewer observers other than it exist) recorded it; one
//! observer, honest but cut off, or malicious, cannot strike a member alone.
//!
//! ## The rule (deterministic)
//! Each derivation a member is struck on is an event at the latest `lease_expires_at_ms` among
//! its records (the claimant's own signed lease end). Sorted by that time, events give a penalty
//! like `strikes.rs`: `no_delivery_penalty_ms`, doubled for each further event within the
//! penalty, at most 16 times (shown by the API; it also bounds which records are republished).
//! On a derivation where a member is struck (on every node, itself included), its live claim does
//! not count as a claim: it ranks with the lapsed members, so it yields to any fresh candidate,
//! in its own view too (it sees the same records), publishing a release. Its claims elsewhere
//! still count: a spurious strike (renewals lost in a partition) must not cancel an honest
//! member's other builds, and applying the penalty to every derivation's order was measured to
//! make the simulator's open-mesh Sybil run 2.8x slower than the local penalty alone. A
//! penalised member that claims a new derivation first holds it one lease, then is struck there.
//!
//! A result does not wash a strike (anyone can sign an attestation). Observers do not strike a
//! member whose result they know.
//!
//! ## Bounds
//! Per member at most [`MAX_DRVS_PER_MEMBER`] derivations (oldest forgotten), per derivation at
//! most `quorum` observers (later records are duplicates), per observer at most
//! [`MAX_RECORDS_PER_OBSERVER`] records (more are refused: [`super::Ignored::StrikeQuota`]), at
//! most `max_members` struck members (the one struck longest ago forgotten). A record is kept
//! until the longest penalty it can cause ends (`lease end + 16 × penalty`) and refused as
//! stale after that.
//!
//! ## Restart
//! The machine keeps nothing on disk. Each observer republishes its own records of members still
//! penalised every `resubmit_interval_ms`, so a node that restarted (the struck one included)
//! learns them again like it learns jobs and claims.

use std::collections::BTreeMap;

use crate::id::NodeId;
use crate::store_path::StorePath;
use crate::wire::Strike;

/// Most derivations remembered per struck member.
pub const MAX_DRVS_PER_MEMBER: usize = 16;
/// Most records remembered per observer.
pub const MAX_RECORDS_PER_OBSERVER: usize = 256;
/// Most doublings of the penalty (16x).
const MAX_DOUBLINGS: u32 = 4;

/// What [`StrikeBook::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// Kept; `changed`: the member's penalty changed.
    New { changed: bool },
    /// Known already (or the derivation has its quorum of observers).
    Duplicate,
    /// The observer holds [`MAX_RECORDS_PER_OBSERVER`] records.
    ObserverQuota,
}

/// One member's records and the penalty they make.
#[derive(Debug, Default, Clone)]
struct MemberRecords {
    /// Derivation -> observer -> record.
    drvs: BTreeMap<StorePath, BTreeMap<NodeId, Strike>>,
    /// Derivations with a quorum (events).
    events: u32,
    /// Penalised until (ms, from the records' signed lease ends).
    until_ms: u64,
}

impl MemberRecords {
    fn latest_ms(&self) -> u64 {
        self.drvs.values().flat_map(|o| o.values()).map(|s| s.lease_expires_at_ms).max().unwrap_or(0)
    }

    /// Recompute the events and the penalty (the rule of the module docs).
    fn recompute(&mut self, quorum: usize, base_ms: u64) {
        let mut times: Vec<u64> = self
            .drvs
            .values()
            .filter(|o| o.len() >= quorum)
            .filter_map(|o| o.values().map(|s| s.lease_expires_at_ms).max())
            .collect();
        times.sort_unstable();
        let (mut count, mut until) = (0u32, 0u64);
        for t in &times {
            count = if until > *t { count.saturating_add(1) } else { 1 };
            let factor = 1u64 << (count - 1).min(MAX_DOUBLINGS);
            until = t.saturating_add(base_ms.saturating_mul(factor));
        }
        self.events = times.len() as u32;
        self.until_ms = until;
    }
}

/// The gossiped strike records (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct StrikeBook {
    by_member: BTreeMap<NodeId, MemberRecords>,
    per_observer: BTreeMap<NodeId, usize>,
}

/// The longest a record matters: its lease end plus the longest penalty.
pub(crate) fn horizon_ms(s: &Strike, base_ms: u64) -> u64 {
    s.lease_expires_at_ms.saturating_add(base_ms.saturating_mul(1 << MAX_DOUBLINGS))
}

impl StrikeBook {
    /// Keep `s` (already checked: allowed observer, fresh, not stale) with `quorum` observers per
    /// derivation, base penalty `base_ms`, at most `max_members` members.
    pub(crate) fn insert(&mut self, s: &Strike, quorum: usize, base_ms: u64, max_members: usize) -> Inserted {
        let quorum = quorum.max(1);
        let known = self.by_member.get(&s.struck).and_then(|m| m.drvs.get(&s.drv));
        match known.and_then(|o| o.get(&s.observer)) {
            Some(old) if old.lease_expires_at_ms >= s.lease_expires_at_ms => return Inserted::Duplicate,
            Some(_) => {}
            None if known.is_some_and(|o| o.len() >= quorum) => return Inserted::Duplicate,
            None => {
                let n = self.per_observer.entry(s.observer).or_insert(0);
                if *n >= MAX_RECORDS_PER_OBSERVER {
                    return Inserted::ObserverQuota;
                }
                *n += 1;
            }
        }
        let member = self.by_member.entry(s.struck).or_default();
        let observers = member.drvs.entry(s.drv.clone()).or_default();
        observers.insert(s.observer, s.clone());
        let before = (member.events, member.until_ms);
        if member.drvs.len() > MAX_DRVS_PER_MEMBER {
            let oldest = member
                .drvs
                .iter()
                .min_by_key(|(_, o)| o.values().map(|s| s.lease_expires_at_ms).max().unwrap_or(0))
                .map(|(d, _)| d.clone());
            if let Some(d) = oldest
                && let Some(gone) = member.drvs.remove(&d)
            {
                release(&mut self.per_observer, gone.keys());
            }
        }
        member.recompute(quorum, base_ms);
        let changed = before != (member.events, member.until_ms);
        if self.by_member.len() > max_members
            && let Some(oldest) = self.by_member.iter().min_by_key(|(_, m)| m.latest_ms()).map(|(n, _)| *n)
            && let Some(gone) = self.by_member.remove(&oldest)
        {
            for o in gone.drvs.values() {
                release(&mut self.per_observer, o.keys());
            }
        }
        Inserted::New { changed }
    }

    /// Forget records whose horizon passed at `now`.
    pub(crate) fn prune(&mut self, now: u64, quorum: usize, base_ms: u64) {
        let mut empty = Vec::new();
        for (node, m) in self.by_member.iter_mut() {
            let mut gone = Vec::new();
            for (drv, o) in m.drvs.iter_mut() {
                let old: Vec<NodeId> =
                    o.iter().filter(|(_, s)| horizon_ms(s, base_ms) <= now).map(|(n, _)| *n).collect();
                for n in &old {
                    o.remove(n);
                }
                release(&mut self.per_observer, old.iter());
                if o.is_empty() {
                    gone.push(drv.clone());
                }
            }
            for d in gone {
                m.drvs.remove(&d);
            }
            m.recompute(quorum.max(1), base_ms);
            if m.drvs.is_empty() {
                empty.push(*node);
            }
        }
        for n in empty {
            self.by_member.remove(&n);
        }
    }

    /// Whether `node` is penalised by the records at `now`.
    pub(crate) fn penalised(&self, node: &NodeId, now: u64) -> bool {
        self.by_member.get(node).is_some_and(|m| m.until_ms > now)
    }

    /// Whether `struck` has `quorum` records on `drv`.
    pub(crate) fn has_quorum(&self, struck: &NodeId, drv: &StorePath, quorum: usize) -> bool {
        self.by_member.get(struck).and_then(|m| m.drvs.get(drv)).is_some_and(|o| o.len() >= quorum.max(1))
    }

    /// Members with records on `drv`, with how many observers each.
    pub(crate) fn on_drv<'a>(&'a self, drv: &'a StorePath) -> impl Iterator<Item = (NodeId, usize)> + 'a {
        self.by_member.iter().filter_map(move |(n, m)| m.drvs.get(drv).map(|o| (*n, o.len())))
    }

    /// Per member: derivations struck (with a quorum) and penalised-until (0: none).
    pub(crate) fn summary(&self) -> impl Iterator<Item = (&NodeId, u32, u64)> {
        self.by_member.iter().map(|(n, m)| (n, m.events, m.until_ms))
    }

    /// The records `observer` signed about members penalised at `now`.
    pub(crate) fn records_of(&self, observer: &NodeId, now: u64) -> Vec<Strike> {
        self.by_member
            .values()
            .filter(|m| m.until_ms > now)
            .flat_map(|m| m.drvs.values())
            .filter_map(|o| o.get(observer).cloned())
            .collect()
    }

    /// Records kept (all members).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_member.values().flat_map(|m| m.drvs.values()).map(BTreeMap::len).sum()
    }
}

fn release<'a>(per_observer: &mut BTreeMap<NodeId, usize>, observers: impl Iterator<Item = &'a NodeId>) {
    for o in observers {
        if let Some(n) = per_observer.get_mut(o) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_observer.remove(o);
            }
        }
    }
}

#[cfg(test)]
#[path = "strike_book_tests.rs"]
mod tests;
