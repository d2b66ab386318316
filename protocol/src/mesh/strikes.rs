//! Members that were designated and did not deliver lose their designation weight for a while.
//!
//! A *strike* is recorded when a member **claimed and did not deliver**: its lease ran out here
//! without an attestation or a failure (while it stayed in the view). A member that attested or
//! failed is never struck, even if a renewal that gossip delivered after its result left a lease
//! behind (struck at some nodes and not others, it made them designate differently). A designated member that
//! does not claim at all is not struck: an honest node busy with its slots steps aside that way
//! on purpose (see `schedule.rs`), and nodes that observe such lapses at different times would
//! otherwise designate differently (the simulator's stable-view checker caught more than k
//! claims when they were struck). A member
//! with a strike is *penalised* until `last + penalty`, where `penalty` is
//! `no_delivery_penalty_ms` doubled for every further strike that came while it was penalised
//! (at most 16 times the base). A penalised member is treated by designation like a lapsed one
//! for every derivation: it is designated only when no other candidate is left. Its claims that
//! are live still count (a penalised member that does claim and build is not pushed out). A result
//! does not end the penalty early: anyone can sign an attestation, so that would let a Sybil
//! wash its record for free; the penalty runs out by itself.
//!
//! These are local observations: the struck member never sees its own lapse, so they only order
//! the candidates for unclaimed places (safe: claims stay sticky). What every node applies alike,
//! the struck member included, is the gossiped, signed record of a lapse (`strike_book.rs`): on a
//! derivation where a quorum of observers struck a member, its claim no longer holds the place and
//! it yields in its own view too (`takeover_after_lease_expiry`). A penalised member that claims
//! a new derivation first still holds it for one lease, then is struck there too.
//!
//! Why: a Sybil member that claims and never builds costs each job it claims one lease. Without the penalty it is designated again for every new
//! derivation at its full weight; with it, every identity costs the mesh at most one timeout per
//! penalty period, and the simulator (`sim --sybil-members`) shows the effect. The table is
//! bounded (`max_members`); when full, the oldest strike is forgotten.

use std::collections::BTreeMap;

use crate::id::NodeId;

/// Most doublings of the penalty.
const MAX_DOUBLINGS: u32 = 4;

/// One member's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strike {
    /// Lapses counted (back to 1 after a penalty ran out).
    pub count: u32,
    /// When the last lapse was recorded (local clock, ms).
    pub last_ms: u64,
    /// Until when it is designated last (local clock, ms).
    pub until_ms: u64,
}

/// The strike table (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Strikes {
    by_node: BTreeMap<NodeId, Strike>,
}

impl Strikes {
    /// Record a lapse of `node` at `now` with base penalty `base_ms`; keeps at most `max`
    /// records.
    pub(crate) fn record(&mut self, node: NodeId, now: u64, base_ms: u64, max: usize) {
        let entry = self.by_node.entry(node).or_insert(Strike { count: 0, last_ms: now, until_ms: 0 });
        if entry.last_ms == now && entry.count > 0 {
            return; // one lapse per instant (several derivations lapse at once)
        }
        entry.count = if entry.until_ms > now { entry.count.saturating_add(1) } else { 1 };
        entry.last_ms = now;
        let factor = 1u64 << (entry.count - 1).min(MAX_DOUBLINGS);
        entry.until_ms = now.saturating_add(base_ms.saturating_mul(factor));
        if self.by_node.len() > max
            && let Some(oldest) = self.by_node.iter().min_by_key(|(_, s)| s.last_ms).map(|(n, _)| *n)
        {
            self.by_node.remove(&oldest);
        }
    }

    /// Whether `node` is penalised at `now`.
    pub(crate) fn penalised(&self, node: &NodeId, now: u64) -> bool {
        self.by_node.get(node).is_some_and(|s| s.until_ms > now)
    }

    /// Every record.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&NodeId, &Strike)> {
        self.by_node.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        crate::identity::NodeKey::from_seed("n", [i; 32]).unwrap().node_id()
    }

    #[test]
    fn penalty_doubles_while_penalised_then_runs_out() {
        let n = id(7);
        let mut s = Strikes::default();
        s.record(n, 1000, 100, 8);
        assert!(s.penalised(&n, 1099) && !s.penalised(&n, 1100));
        s.record(n, 1050, 100, 8);
        assert_eq!(s.by_node[&n].count, 2);
        assert_eq!(s.by_node[&n].until_ms, 1250);
        s.record(n, 1050, 100, 8);
        assert_eq!(s.by_node[&n].count, 2, "one lapse per instant");
        assert!(s.penalised(&n, 1249) && !s.penalised(&n, 1250));
        s.record(n, 5000, 100, 8);
        assert_eq!(s.by_node[&n].count, 1, "a strike after the penalty ended starts over");
        for i in 0..40u64 {
            s.record(n, 6000 + i, 100, 8);
        }
        assert_eq!(s.by_node[&n].until_ms, 6039 + 1600, "at most 16x");
    }

    #[test]
    fn bounded() {
        let mut s = Strikes::default();
        for i in 0..20u8 {
            s.record(id(i), u64::from(i) + 1, 10, 8);
        }
        assert!(s.by_node.len() <= 9);
        assert!(!s.by_node.contains_key(&id(0)));
    }
}
