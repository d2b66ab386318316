//! Fair share of this node's build slots across submitters.
//!
//! A node designated for more derivations than it has slots waits, and claims the next one as a
//! build ends. Which one: the waiting derivation of the submitter that has the **fewest builds
//! running here**, then the **highest priority**, then table order (oldest slot first). So one
//! submitter's 100,000 waiting jobs take their turn with another's 10: each submitter gets a
//! share of the slots while it has work waiting, whatever the size of its queue (Buildbarn's
//! fair share per user). A job's submitter is the one of its canonical submission (the smallest
//! job id), so every node counts it the same way.
//!
//! Picking costs `O(submitters waiting + log n)`; the index is kept in step with the table.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::id::NodeId;

/// The derivations waiting for a build slot, by submitter (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct FairQueue {
    by_slot: BTreeMap<u32, (NodeId, i32)>,
    by_submitter: BTreeMap<NodeId, BTreeSet<(Reverse<i32>, u32)>>,
}

impl FairQueue {
    /// Add (or move) `slot`, a job of `submitter` with `priority`.
    pub(crate) fn insert(&mut self, slot: u32, submitter: NodeId, priority: i32) {
        self.remove(slot);
        self.by_slot.insert(slot, (submitter, priority));
        self.by_submitter.entry(submitter).or_default().insert((Reverse(priority), slot));
    }

    /// Take `slot` out; whether it was there.
    pub(crate) fn remove(&mut self, slot: u32) -> bool {
        let Some((submitter, priority)) = self.by_slot.remove(&slot) else { return false };
        if let Some(set) = self.by_submitter.get_mut(&submitter) {
            set.remove(&(Reverse(priority), slot));
            if set.is_empty() {
                self.by_submitter.remove(&submitter);
            }
        }
        true
    }

    /// How many wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_slot.len()
    }

    /// Whether `slot` waits.
    #[cfg(test)]
    pub(crate) fn contains(&self, slot: u32) -> bool {
        self.by_slot.contains_key(&slot)
    }

    /// Take the next slot to claim, given the builds running here per submitter.
    pub(crate) fn pop(&mut self, running: &BTreeMap<NodeId, usize>) -> Option<u32> {
        let (_, slot) = self
            .by_submitter
            .iter()
            .filter_map(|(s, set)| set.first().map(|head| ((running.get(s).copied().unwrap_or(0), *head), head.1)))
            .min_by_key(|(key, _)| *key)?;
        self.remove(slot);
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        crate::identity::NodeKey::from_seed("n", [i; 32]).unwrap().node_id()
    }

    /// Start `slots` builds, then one more each time one ends (oldest first), and return which
    /// submitter got each start.
    fn simulate(q: &mut FairQueue, slots: usize, starts: usize) -> Vec<NodeId> {
        let mut running: Vec<NodeId> = Vec::new();
        let mut order = Vec::new();
        let of: BTreeMap<u32, NodeId> = q.by_slot.iter().map(|(s, (n, _))| (*s, *n)).collect();
        while order.len() < starts {
            if running.len() == slots {
                running.remove(0);
            }
            let mut counts = BTreeMap::new();
            for r in &running {
                *counts.entry(*r).or_insert(0) += 1;
            }
            let Some(slot) = q.pop(&counts) else { break };
            running.push(of[&slot]);
            order.push(of[&slot]);
        }
        order
    }

    #[test]
    fn a_big_queue_does_not_starve_a_small_one() {
        let (big, small) = (id(1), id(2));
        let mut q = FairQueue::default();
        for s in 0..100_000u32 {
            q.insert(s, big, 0);
        }
        for s in 100_000..100_010u32 {
            q.insert(s, small, 0);
        }
        let order = simulate(&mut q, 4, 20);
        // The small submitter's 10 jobs start within the first 20 starts, alternating.
        assert_eq!(order.iter().filter(|n| **n == small).count(), 10, "{order:?}");
        assert!(order[..4].contains(&small) && order[..4].contains(&big));
        assert_eq!(q.len(), 100_000 - 10);
    }

    #[test]
    fn priority_then_table_order_within_a_submitter_and_removal() {
        let a = id(1);
        let mut q = FairQueue::default();
        q.insert(5, a, 0);
        q.insert(3, a, 0);
        q.insert(9, a, 7);
        assert!(q.contains(9));
        assert_eq!(q.pop(&BTreeMap::new()), Some(9), "highest priority first");
        assert_eq!(q.pop(&BTreeMap::new()), Some(3), "then table order");
        q.insert(3, a, 0);
        assert!(q.remove(3) && !q.remove(3));
        q.insert(5, a, 2); // moved to another priority: one entry
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(&BTreeMap::new()), Some(5));
        assert_eq!(q.pop(&BTreeMap::new()), None);
    }

    #[test]
    fn the_submitter_with_fewer_running_builds_goes_first() {
        let (a, b) = (id(1), id(2));
        let mut q = FairQueue::default();
        q.insert(1, a, 100);
        q.insert(2, b, 0);
        let running = BTreeMap::from([(a, 3usize), (b, 1)]);
        assert_eq!(q.pop(&running), Some(2), "fair share before priority");
    }
}
