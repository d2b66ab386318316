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
//!
//! The rule itself is [`fairest`], generic over who a submitter is and over how one submitter's
//! jobs are ranked, so that a standalone node's local scheduler (`node/src/scheduler/plan.rs`,
//! submitters named by their API tokens) orders its queue the same way as [`FairQueue`] does
//! here; [`fair_order`] applies it to whole queues.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::id::NodeId;

/// The fair-share rule: among the submitters with work waiting, given each one's best waiting
/// job (its `head`, by the caller's ranking within one submitter: lower is better), the one with
/// the lowest `rank` (the caller's: at least the builds it has running, fewest first), then the
/// best head. `None` when nothing waits.
pub fn fairest<'a, S: 'a, K: Ord + 'a, R: Ord>(
    heads: impl IntoIterator<Item = (&'a S, &'a K)>,
    rank: impl Fn(&S) -> R,
) -> Option<(&'a S, &'a K)> {
    heads.into_iter().map(|(s, k)| ((rank(s), k), (s, k))).min_by(|a, b| a.0.cmp(&b.0)).map(|(_, pick)| pick)
}

/// The first `take` jobs of `queues` (per submitter, each already in that submitter's own order,
/// best first) in [`fairest`] order, ranking a submitter by its builds running (`running`, plus
/// the picks so far), then by when it was last served (`served`: a larger number is more recent;
/// absent = never), so that with one free slot at a time, when nobody has anything running, the
/// submitters still take turns. Each pick counts as one more build running and as served last.
/// Returns the picks and the `served` marks after them. What a scheduler with `take` free slots
/// starts.
pub fn fair_order<S: Ord + Clone, K: Ord>(
    mut queues: BTreeMap<S, VecDeque<K>>,
    running: &BTreeMap<S, usize>,
    served: &BTreeMap<S, u64>,
    take: usize,
) -> (Vec<(S, K)>, BTreeMap<S, u64>) {
    let mut running = running.clone();
    let mut served = served.clone();
    let mut clock = served.values().copied().max().unwrap_or(0);
    let mut out = Vec::with_capacity(take.min(queues.values().map(VecDeque::len).sum()));
    while out.len() < take {
        let heads = queues.iter().filter_map(|(s, q)| q.front().map(|k| (s, k)));
        let rank = |s: &S| (running.get(s).copied().unwrap_or(0), served.get(s).copied().unwrap_or(0));
        let Some((s, _)) = fairest(heads, rank) else { break };
        let s = s.clone();
        let Some(q) = queues.get_mut(&s) else { break };
        let Some(k) = q.pop_front() else { break };
        if q.is_empty() {
            queues.remove(&s);
        }
        *running.entry(s.clone()).or_insert(0) += 1;
        clock += 1;
        served.insert(s.clone(), clock);
        out.push((s, k));
    }
    (out, served)
}

/// The derivations waiting for a build slot, by submitter (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct FairQueue {
    by_slot: BTreeMap<u32, (NodeId, i32)>,
    by_submitter: BTreeMap<NodeId, BTreeSet<(Reverse<i32>, u32)>>,
    /// When each submitter with jobs waiting was last popped (larger is more recent): between
    /// submitters running as many builds, the one served longest ago goes first, so that with one
    /// slot (nothing running at each pop) the submitters still take turns.
    served: BTreeMap<NodeId, u64>,
    clock: u64,
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
                self.served.remove(&submitter);
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
        let heads = self.by_submitter.iter().filter_map(|(s, set)| set.first().map(|head| (s, head)));
        let rank = |s: &NodeId| (running.get(s).copied().unwrap_or(0), self.served.get(s).copied().unwrap_or(0));
        let (&submitter, &(_, slot)) = fairest(heads, rank)?;
        self.remove(slot);
        if self.by_submitter.contains_key(&submitter) {
            self.clock += 1;
            self.served.insert(submitter, self.clock);
        }
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

    #[test]
    fn with_one_slot_the_submitters_still_take_turns() {
        // One slot: nothing runs when the next job is popped, so "fewest running" ties every time;
        // the submitter served longest ago goes next, not the one with the older jobs.
        let (big, small) = (id(1), id(2));
        let mut q = FairQueue::default();
        for s in 0..1_000u32 {
            q.insert(s, big, 0);
        }
        for s in 1_000..1_003u32 {
            q.insert(s, small, 0);
        }
        let order = simulate(&mut q, 1, 8);
        assert_eq!(order, [big, small, big, small, big, small, big, big]);
        assert!(q.served.len() <= 1, "only submitters with jobs waiting are remembered");
    }

    #[test]
    fn fair_order_alternates_between_queues_of_any_size() {
        // Submitters named by strings, jobs ranked by plain numbers (lower first).
        let big: VecDeque<u32> = (0..100_000).collect();
        let small: VecDeque<u32> = (0..3).map(|i| 1_000_000 + i).collect();
        let queues = BTreeMap::from([("big", big), ("small", small)]);
        let none = BTreeMap::new();
        let (order, _) = fair_order(queues.clone(), &BTreeMap::new(), &none, 8);
        let who: Vec<&str> = order.iter().map(|(s, _)| *s).collect();
        assert_eq!(who, ["big", "small", "big", "small", "big", "small", "big", "big"], "{order:?}");
        assert_eq!(order[0].1, 0, "each queue in its own order");
        // Builds already running count: the small submitter, running none, goes first twice.
        let running = BTreeMap::from([("big", 2usize)]);
        let (order, _) = fair_order(queues.clone(), &running, &none, 3);
        let who: Vec<&str> = order.iter().map(|(s, _)| *s).collect();
        assert_eq!(who, ["small", "small", "big"]);
        // One slot, nothing running at each pick: the one served longest ago goes next, so the
        // queues still take turns (without the served marks the better head would win each time).
        let mut served = BTreeMap::new();
        let mut who = Vec::new();
        let mut queues = queues;
        for _ in 0..6 {
            let (order, after) = fair_order(queues.clone(), &BTreeMap::new(), &served, 1);
            let (s, k) = order[0];
            queues.get_mut(s).unwrap().retain(|x| *x != k);
            who.push(s);
            served = after;
        }
        assert_eq!(who, ["big", "small", "big", "small", "big", "small"]);
        // Ties between submitters never served: the better head.
        let q = BTreeMap::from([("a", VecDeque::from([5u32])), ("b", VecDeque::from([1u32]))]);
        assert_eq!(fair_order(q, &BTreeMap::new(), &none, 1).0, vec![("b", 1)]);
        assert!(fair_order(BTreeMap::<&str, VecDeque<u32>>::new(), &BTreeMap::new(), &none, 4).0.is_empty());
    }
}
