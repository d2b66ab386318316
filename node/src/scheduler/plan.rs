//! The scheduler's ordering logic, as a pure function over a snapshot of the queue.
//!
//! [`plan`] takes every pending build (queued or running), what is known about each of their input
//! derivations, the number of free slots and the time, and decides:
//! - which queued builds start now: only builds whose input derivations' outputs are all
//!   registered ([`InputStatus::Available`]) and whose retry backoff has passed, by **fair share
//!   across submitters** (the submitter with the fewest builds running first, the rule of the
//!   mesh's claims: [`buildmesh_protocol::mesh::fair::fair_order`]), then within one submitter
//!   **oldest revision first, then highest effective priority, then longest critical path**, then
//!   queue order;
//! - which queued builds fail because an input failed permanently, was cancelled, or cannot be
//!   obtained ([`InputStatus::Failed`]);
//! - which input derivations are stored but not queued, and must be enqueued;
//! - when to look again (the earliest backoff deadline).
//!
//! **Effective priority** of a build is the highest priority of itself and every pending build
//! that (transitively) needs it, so a high-priority submission pulls its dependencies forward.
//! **Revision** of a build: the oldest revision it belongs to, as the order in which this node
//! learnt of the revisions whose manifests contain it ([`PendingBuild::revision`]; a manifest
//! holds a job's whole closure), or of a pending build that (transitively) needs it; a build in
//! no known revision (a plain `buildmesh submit`) comes after a submitter's revisions. So a
//! submitter's revisions are built one after the other, each finished before the next starts
//! (its results can be judged, `buildmesh compare`), instead of several half-built at once; within
//! a revision, priority and critical path order as before. The local arrival order is used, not
//! the header's signed `created_at_ms`, which its submitter chooses.
//! **Critical path** of a build is the number of builds on the longest chain of pending builds
//! that (transitively) need it, itself included: starting the head of a long chain first
//! shortens the total time when slots are scarce.
//!
//! **Fair share**: each build counts under one [`Submitter`] (the API token its upload came
//! with, [`super::submitters`]). With one slot free and submitter A running 1 build with 10,000
//! waiting while B runs none with 10 waiting, B's best build starts; between submitters running
//! as many, the one whose last build started longest ago ([`plan_fair`]'s `served`); so a
//! submitter's queue, however long, takes turns with another's rather than going first.
//!
//! Nothing here touches the store or the clock: the scheduler gathers the snapshot, calls
//! [`plan`], and applies the [`Plan`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

use buildmesh_protocol::store_path::StorePath;

use super::submitters::Submitter;

/// What the scheduler knows about one input derivation of a pending build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputStatus {
    /// Every needed output of the input is registered in the store.
    Available,
    /// The input's own build is queued or running.
    Pending,
    /// The input derivation is stored but has no build: it must be enqueued.
    NotQueued,
    /// The input cannot become available (its build failed permanently or was cancelled, or
    /// the derivation is not on this node): the dependent fails with this reason.
    Failed(String),
}

/// One input derivation of a pending build, with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputNeed {
    /// The input's `.drv` path.
    pub drv: StorePath,
    /// Its status.
    pub status: InputStatus,
}

/// One pending build, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBuild {
    /// The `.drv` path.
    pub drv: StorePath,
    /// Its own priority (higher first).
    pub priority: i32,
    /// Its position in the queue (lower first, within equal priority and critical path).
    pub queue_seq: u64,
    /// Whether it is running (running builds take a slot and are not started again).
    pub running: bool,
    /// Do not start before this time (Unix ms), after a transient failure.
    pub not_before: Option<u64>,
    /// Its input derivations.
    pub inputs: Vec<InputNeed>,
    /// Whose upload it counts under (fair share across submitters).
    pub submitter: Submitter,
    /// When this node first learnt of a revision containing it (the header's local sequence
    /// number; smaller is older), `None` when it is in no known revision.
    pub revision: Option<u64>,
}

/// A build to start, with the keys it was ranked by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The `.drv` path.
    pub drv: StorePath,
    /// Whose it counts as.
    pub submitter: Submitter,
    /// Effective priority.
    pub priority: i32,
    /// Critical path length (builds, itself included).
    pub critical_path: u32,
}

/// What the scheduler should do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Builds to start, in order (at most the free slots).
    pub start: Vec<Start>,
    /// Ready builds that did not fit in the free slots.
    pub waiting_for_slot: usize,
    /// Queued builds to fail, with the reason.
    pub fail: Vec<(StorePath, String)>,
    /// Input derivations to enqueue, with the priority to give them.
    pub enqueue: Vec<(StorePath, i32)>,
    /// The earliest `not_before` in the future of a build that is otherwise ready.
    pub wake_at: Option<u64>,
    /// When each submitter was last served, after the starts (for the next [`plan_fair`]).
    pub served: BTreeMap<Submitter, u64>,
}

/// [`plan_fair`] with no submitter served before.
pub fn plan(pending: &[PendingBuild], free_slots: usize, now_ms: u64) -> Plan {
    plan_fair(pending, free_slots, now_ms, &BTreeMap::new())
}

/// Rank the pending builds and decide what to start, fail and enqueue (see the module docs);
/// `served` says when each submitter's last build started (larger is more recent; the previous
/// plan's [`Plan::served`]).
pub fn plan_fair(pending: &[PendingBuild], free_slots: usize, now_ms: u64, served: &BTreeMap<Submitter, u64>) -> Plan {
    let index: HashMap<&StorePath, usize> = pending.iter().enumerate().map(|(i, b)| (&b.drv, i)).collect();
    // dependents[i]: pending builds that need build i.
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); pending.len()];
    for (i, b) in pending.iter().enumerate() {
        for input in &b.inputs {
            if let Some(&j) = index.get(&input.drv)
                && j != i
            {
                dependents[j].push(i);
            }
        }
    }
    let (critical, effective, revision) = rank(pending, &dependents);

    let mut out = Plan::default();
    let mut ready = Vec::new();
    let mut enqueue: BTreeMap<StorePath, i32> = BTreeMap::new();
    for (i, b) in pending.iter().enumerate() {
        if b.running {
            continue;
        }
        let mut failed = None;
        let mut all_available = true;
        for input in &b.inputs {
            match &input.status {
                InputStatus::Available => {}
                InputStatus::Pending => all_available = false,
                InputStatus::NotQueued => {
                    all_available = false;
                    let p = enqueue.entry(input.drv.clone()).or_insert(effective[i]);
                    *p = (*p).max(effective[i]);
                }
                InputStatus::Failed(reason) => {
                    failed.get_or_insert_with(|| reason.clone());
                }
            }
        }
        if let Some(reason) = failed {
            out.fail.push((b.drv.clone(), reason));
            continue;
        }
        if !all_available {
            continue;
        }
        match b.not_before {
            Some(t) if t > now_ms => out.wake_at = Some(out.wake_at.map_or(t, |w| w.min(t))),
            _ => ready.push(i),
        }
    }
    // Within one submitter: oldest revision, highest effective priority, longest critical path,
    // queue order.
    let key =
        |i: usize| (revision[i], Reverse(effective[i]), Reverse(critical[i]), pending[i].queue_seq, &pending[i].drv, i);
    let mut queues: BTreeMap<&Submitter, Vec<_>> = BTreeMap::new();
    for &i in &ready {
        queues.entry(&pending[i].submitter).or_default().push(key(i));
    }
    let queues: BTreeMap<Submitter, VecDeque<_>> = queues
        .into_iter()
        .map(|(s, mut q)| {
            q.sort_unstable();
            (s.clone(), q.into())
        })
        .collect();
    let mut running: BTreeMap<Submitter, usize> = BTreeMap::new();
    for b in pending.iter().filter(|b| b.running) {
        *running.entry(b.submitter.clone()).or_insert(0) += 1;
    }
    out.waiting_for_slot = ready.len().saturating_sub(free_slots);
    let (picks, served) = buildmesh_protocol::mesh::fair::fair_order(queues, &running, served, free_slots);
    out.served = served;
    out.start = picks
        .into_iter()
        .map(|(submitter, (.., i))| Start {
            drv: pending[i].drv.clone(),
            submitter,
            priority: effective[i],
            critical_path: critical[i],
        })
        .collect();
    out.enqueue = enqueue.into_iter().collect();
    out
}

/// Critical path length, effective priority and effective revision (`u64::MAX`: none) of every
/// pending build, computed over the
/// "is needed by" edges in reverse topological order (iteratively: real graphs can be thousands
/// deep). A cycle, which a hash-addressed derivation graph cannot have, is broken arbitrarily
/// instead of looping.
fn rank(pending: &[PendingBuild], dependents: &[Vec<usize>]) -> (Vec<u32>, Vec<i32>, Vec<u64>) {
    let n = pending.len();
    let mut critical = vec![0u32; n];
    let mut effective: Vec<i32> = pending.iter().map(|b| b.priority).collect();
    let mut revision: Vec<u64> = pending.iter().map(|b| b.revision.unwrap_or(u64::MAX)).collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; n];
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        // (node, next dependent index to visit)
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = dependents[node].get(*next) {
                *next += 1;
                if state[dep] == 0 {
                    state[dep] = 1;
                    stack.push((dep, 0));
                }
                continue;
            }
            let mut longest = 0u32;
            let mut prio = pending[node].priority;
            let mut oldest = revision[node];
            for &dep in &dependents[node] {
                if state[dep] == 2 {
                    longest = longest.max(critical[dep]);
                    prio = prio.max(effective[dep]);
                    oldest = oldest.min(revision[dep]);
                }
            }
            critical[node] = longest.saturating_add(1);
            effective[node] = prio;
            revision[node] = oldest;
            state[node] = 2;
            stack.pop();
        }
    }
    (critical, effective, revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv(n: u8) -> StorePath {
        StorePath::new([n; 20], &format!("d{n}.drv")).unwrap()
    }

    fn build(n: u8, priority: i32, inputs: &[(u8, InputStatus)]) -> PendingBuild {
        PendingBuild {
            drv: drv(n),
            priority,
            queue_seq: u64::from(n),
            running: false,
            not_before: None,
            inputs: inputs.iter().map(|(d, s)| InputNeed { drv: drv(*d), status: s.clone() }).collect(),
            submitter: Submitter::operator(),
            revision: None,
        }
    }

    fn started(p: &Plan) -> Vec<StorePath> {
        p.start.iter().map(|s| s.drv.clone()).collect()
    }

    #[test]
    fn waits_for_inputs_and_respects_slots() {
        use InputStatus::*;
        // 1 and 2 have no inputs; 3 needs 1 (pending) and 4 (available).
        let pending =
            vec![build(1, 0, &[]), build(2, 0, &[]), build(3, 0, &[(1, Pending), (4, Available)]), build(5, 0, &[])];
        let p = plan(&pending, 2, 0);
        assert_eq!(started(&p), vec![drv(1), drv(2)]);
        assert_eq!(p.waiting_for_slot, 1);
        let p = plan(&pending, 10, 0);
        assert_eq!(started(&p), vec![drv(1), drv(2), drv(5)]);
        assert_eq!(plan(&pending, 0, 0).start, vec![]);
    }

    #[test]
    fn running_builds_are_not_started_again() {
        let mut pending = vec![build(1, 0, &[]), build(2, 0, &[])];
        pending[0].running = true;
        assert_eq!(started(&plan(&pending, 5, 0)), vec![drv(2)]);
    }

    #[test]
    fn priority_first_then_critical_path_then_queue_order() {
        use InputStatus::*;
        // Chain 1 <- 2 <- 3 (3 needs 2 needs 1): critical path of 1 is 3.
        // 4 is alone but queued before 1? No: queue_seq = n, so 4 is after 1; make 5 alone
        // and first in queue order by giving it a lower seq.
        let mut pending = vec![
            build(1, 0, &[]),
            build(2, 0, &[(1, Pending)]),
            build(3, 0, &[(2, Pending)]),
            build(4, 0, &[]),
            build(5, 0, &[]),
        ];
        pending[4].queue_seq = 0;
        let p = plan(&pending, 1, 0);
        assert_eq!(started(&p), vec![drv(1)], "the head of the longest chain goes first");
        assert_eq!(p.start[0].critical_path, 3);
        let p = plan(&pending, 3, 0);
        assert_eq!(started(&p), vec![drv(1), drv(5), drv(4)], "then queue order");
        // A higher priority beats a longer chain.
        pending[3].priority = 1;
        assert_eq!(started(&plan(&pending, 1, 0)), vec![drv(4)]);
    }

    #[test]
    fn priority_is_inherited_from_dependents() {
        use InputStatus::*;
        // 9 (priority 10) needs 1; 2 has priority 5; 1 has priority 0 but inherits 10.
        let pending = vec![build(1, 0, &[]), build(2, 5, &[]), build(9, 10, &[(1, Pending)])];
        let p = plan(&pending, 1, 0);
        assert_eq!(started(&p), vec![drv(1)]);
        assert_eq!(p.start[0].priority, 10);
    }

    #[test]
    fn failed_inputs_fail_dependents_and_missing_ones_are_enqueued() {
        use InputStatus::*;
        let pending = vec![
            build(1, 0, &[(7, Failed("input derivation d7 failed: boom".into()))]),
            build(2, 3, &[(8, NotQueued)]),
            build(3, 9, &[(8, NotQueued), (1, Pending)]),
        ];
        let p = plan(&pending, 4, 0);
        assert_eq!(p.fail, vec![(drv(1), "input derivation d7 failed: boom".to_string())]);
        assert_eq!(p.enqueue, vec![(drv(8), 9)]);
        assert!(p.start.is_empty());
    }

    #[test]
    fn backoff_delays_and_sets_a_wake_up() {
        let mut pending = vec![build(1, 0, &[]), build(2, 0, &[]), build(3, 0, &[])];
        pending[0].not_before = Some(5_000);
        pending[1].not_before = Some(2_000);
        pending[2].not_before = Some(1_000);
        let p = plan(&pending, 3, 1_500);
        assert_eq!(started(&p), vec![drv(3)]);
        assert_eq!(p.wake_at, Some(2_000));
    }

    #[test]
    fn diamond_and_deep_chains() {
        use InputStatus::*;
        // Diamond: 4 needs 2 and 3, both need 1.
        let pending = vec![
            build(1, 0, &[]),
            build(2, 0, &[(1, Pending)]),
            build(3, 0, &[(1, Pending)]),
            build(4, 0, &[(2, Pending), (3, Pending)]),
        ];
        let p = plan(&pending, 4, 0);
        assert_eq!(
            p.start,
            vec![Start { drv: drv(1), submitter: Submitter::operator(), priority: 0, critical_path: 3 }]
        );
        // A 5000-deep chain does not overflow the stack.
        let n = 5000usize;
        let paths: Vec<StorePath> =
            (0..n).map(|i| StorePath::new([(i % 251) as u8; 20], &format!("c{i}.drv")).unwrap()).collect();
        let chain: Vec<PendingBuild> = (0..n)
            .map(|i| PendingBuild {
                drv: paths[i].clone(),
                priority: 0,
                queue_seq: i as u64,
                running: false,
                not_before: None,
                inputs: if i == 0 { vec![] } else { vec![InputNeed { drv: paths[i - 1].clone(), status: Pending }] },
                submitter: Submitter::operator(),
                revision: None,
            })
            .collect();
        let p = plan(&chain, 1, 0);
        assert_eq!(p.start[0].critical_path, n as u32);
    }

    #[test]
    fn submitters_take_turns_whatever_their_queue_length_or_priority() {
        let (alice, bob) = (Submitter(std::sync::Arc::from("alice")), Submitter(std::sync::Arc::from("bob")));
        // Alice queued 200 builds first (one of them running), Bob 3 afterwards.
        let mut pending: Vec<PendingBuild> = (0..200u8)
            .map(|n| PendingBuild { submitter: alice.clone(), ..build(n, 0, &[]) })
            .chain((200..203u8).map(|n| PendingBuild {
                submitter: bob.clone(),
                queue_seq: 1000 + u64::from(n),
                ..build(n, 0, &[])
            }))
            .collect();
        pending[0].running = true;
        let p = plan(&pending, 1, 0);
        assert_eq!(started(&p), vec![drv(200)], "Bob runs nothing, Alice runs one: Bob's turn");
        assert_eq!(p.waiting_for_slot, 201);
        let p = plan(&pending, 4, 0);
        assert_eq!(started(&p), vec![drv(200), drv(1), drv(201), drv(2)], "then turns, each in its own order");
        // Priority ranks within one submitter, not across: Alice's priority 100 build waits its turn.
        pending[5].priority = 100;
        assert_eq!(started(&plan(&pending, 2, 0)), vec![drv(200), drv(5)]);
        // One slot at a time and nothing running: the submitter served longest ago goes next.
        pending[0].running = false;
        pending[5].priority = 0;
        let mut served = BTreeMap::new();
        let mut order = Vec::new();
        for _ in 0..5 {
            let p = plan_fair(&pending, 1, 0, &served);
            order.push(p.start[0].submitter.0.to_string());
            pending.retain(|b| b.drv != p.start[0].drv);
            served = p.served;
        }
        assert_eq!(order, ["alice", "bob", "alice", "bob", "alice"]);
        // One submitter alone: the order is the old one.
        pending.retain(|b| b.submitter == alice);
        pending[0].running = true;
        pending[2].priority = 100;
        assert_eq!(started(&plan(&pending, 2, 0)), vec![drv(5), drv(4)]);
    }

    #[test]
    fn within_a_submitter_the_oldest_revision_goes_first_then_priority() {
        use InputStatus::*;
        let (alice, bob) = (Submitter(std::sync::Arc::from("alice")), Submitter(std::sync::Arc::from("bob")));
        let of = |n: u8, who: &Submitter, revision: Option<u64>, priority: i32| PendingBuild {
            submitter: who.clone(),
            revision,
            ..build(n, priority, &[])
        };
        let mut pending = vec![
            // Alice: a newer revision (seq 9) queued first and with a higher priority, an older
            // one (seq 4), and a plain upload in no revision.
            of(1, &alice, Some(9), 50),
            of(2, &alice, Some(9), 0),
            of(3, &alice, None, 100),
            of(4, &alice, Some(4), 0),
            of(5, &alice, Some(4), 10),
            // Bob's newest revision still takes its fair turn before Alice's second build.
            of(6, &bob, Some(20), 0),
        ];
        assert_eq!(started(&plan(&pending, 6, 0)), vec![drv(5), drv(6), drv(4), drv(1), drv(2), drv(3)]);
        // An input needed by a build of the old revision ranks with it, whatever its own.
        pending.push(PendingBuild {
            inputs: vec![InputNeed { drv: drv(7), status: Pending }],
            ..of(8, &alice, Some(4), 0)
        });
        pending.push(of(7, &alice, Some(9), 0));
        // (d7, needed by d8 of revision 4, ranks in revision 4, ahead of d4 by its longer critical
        // path; in its own revision 9 it would come after d4.)
        assert_eq!(started(&plan(&pending, 3, 0)), vec![drv(5), drv(6), drv(7)]);
    }

    #[test]
    fn a_cycle_does_not_hang() {
        use InputStatus::*;
        let pending = vec![build(1, 0, &[(2, Pending)]), build(2, 0, &[(1, Pending)])];
        let p = plan(&pending, 2, 0);
        assert!(p.start.is_empty());
    }
}
