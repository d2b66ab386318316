//! Unit tests of the mesh state machine: a few machines wired by an in-memory, instantaneous
//! network whose links can be cut, on a virtual clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;
use crate::id::ArtifactHash;
use crate::identity::NodeKey;
use crate::placement::{PlacementKey, Requirements};
use crate::store_path::StoreDir;
use crate::wire::{BuildMode, FailureReason, OutputAttestation};

mod attacks;
mod capacity;
mod policy;
mod props;
mod replicas;
mod shards;
mod strikes;
mod waiting;

const T0: u64 = 1_700_000_000_000;
const SYS: &str = "x86_64-linux";

fn key(i: usize) -> NodeKey {
    let mut seed = [0x42u8; 32];
    seed[0] = i as u8;
    NodeKey::from_seed(&format!("node-{i}"), seed).unwrap()
}

fn drv(d: u8) -> StorePath {
    StorePath::new([d; 20], &format!("pkg-{d}.drv")).unwrap()
}

fn out_path(d: u8) -> StorePath {
    StorePath::new([d.wrapping_add(100); 20], &format!("pkg-{d}")).unwrap()
}

fn job(submitter: NodeId, d: u8, replicas: u8) -> JobSubmission {
    JobSubmission {
        job: JobId::derive(&submitter, &drv(d).to_string(), u64::from(d)),
        submitter,
        submitted_at_ms: 0,
        store_dir: StoreDir::nix(),
        drv: drv(d),
        outputs: BTreeSet::new(),
        system: SYS.to_string(),
        required_features: BTreeSet::new(),
        priority: 0,
        replicas,
    }
}

fn attestation(k: &NodeKey, d: u8, hash: [u8; 32], now: u64) -> Attestation {
    let o = OutputAttestation::new_signed(
        k,
        &StoreDir::nix(),
        out_path(d),
        hash,
        1234,
        BTreeSet::new(),
        ArtifactHash::from_bytes(hash),
        Some(drv(d)),
    )
    .unwrap();
    Attestation {
        builder: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: drv(d),
        mode: BuildMode::Native,
        started_at_ms: now - 10,
        finished_at_ms: now,
        outputs: [("out".to_string(), o)].into_iter().collect(),
        log: None,
        provenance: None,
    }
}

/// Machines on an instantaneous network. `cut` holds directed links that drop messages.
struct Net {
    keys: Vec<NodeKey>,
    nodes: Vec<Mesh>,
    now: u64,
    queue: VecDeque<(usize, Message)>,
    log: Vec<(usize, Output)>,
    cut: BTreeSet<(usize, usize)>,
    /// Drop this node's claims (a builder whose renewals do not get through).
    mute_claims: BTreeSet<usize>,
    /// Drop every strike record.
    mute_strikes: bool,
    /// Directed links whose messages wait in `held` until [`Net::release_held`] (reordering).
    hold: BTreeSet<(usize, usize)>,
    held: Vec<(usize, Message)>,
}

impl Net {
    fn new(n: usize, cfg: MeshConfig) -> Net {
        Net::with_configs(vec![cfg; n])
    }

    /// One node per configuration.
    fn with_configs(cfgs: Vec<MeshConfig>) -> Net {
        let keys: Vec<NodeKey> = (0..cfgs.len()).map(key).collect();
        let nodes = keys
            .iter()
            .zip(cfgs)
            .map(|(k, cfg)| Mesh::new(cfg, k.node_id(), LocalInfo::new("buildmesh test", [SYS], 2), T0).unwrap())
            .collect();
        let mut net = Net {
            keys,
            nodes,
            now: T0,
            queue: VecDeque::new(),
            log: Vec::new(),
            cut: BTreeSet::new(),
            mute_claims: BTreeSet::new(),
            mute_strikes: false,
            hold: BTreeSet::new(),
            held: Vec::new(),
        };
        net.drain();
        net
    }

    fn id(&self, i: usize) -> NodeId {
        self.keys[i].node_id()
    }

    fn index(&self, id: &NodeId) -> usize {
        self.keys.iter().position(|k| k.node_id() == *id).unwrap()
    }

    /// Deliver everything until quiet.
    fn drain(&mut self) {
        loop {
            for i in 0..self.nodes.len() {
                while let Some(o) = self.nodes[i].poll_output() {
                    match o {
                        Output::Publish(m) => {
                            let muted = (matches!(m, Message::Claim(_)) && self.mute_claims.contains(&i))
                                || (matches!(m, Message::Strike(_)) && self.mute_strikes);
                            if !muted {
                                self.queue.push_back((i, m));
                            }
                        }
                        other => self.log.push((i, other)),
                    }
                }
            }
            let Some((from, m)) = self.queue.pop_front() else { break };
            for to in 0..self.nodes.len() {
                if self.hold.contains(&(from, to)) {
                    self.held.push((to, m.clone()));
                } else if to != from && !self.cut.contains(&(from, to)) {
                    self.nodes[to].handle_message(&m, self.now).unwrap();
                }
            }
        }
    }

    /// Run every timer up to `to`.
    fn advance_to(&mut self, to: u64) {
        loop {
            let next = self.nodes.iter().filter_map(Mesh::poll_timeout).min().unwrap_or(u64::MAX);
            if next > to {
                break;
            }
            self.now = self.now.max(next);
            for i in 0..self.nodes.len() {
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                }
            }
            self.drain();
        }
        self.now = to;
    }

    /// Deliver the held messages now, in the order they were sent.
    fn release_held(&mut self) {
        for (to, m) in std::mem::take(&mut self.held) {
            self.nodes[to].handle_message(&m, self.now).unwrap();
        }
        self.drain();
    }

    fn advance(&mut self, ms: u64) {
        self.advance_to(self.now + ms);
    }

    fn input(&mut self, i: usize, input: Input) {
        self.nodes[i].handle(input, self.now).unwrap();
        self.drain();
    }

    fn take_log(&mut self) -> Vec<(usize, Output)> {
        std::mem::take(&mut self.log)
    }

    fn started(log: &[(usize, Output)]) -> Vec<usize> {
        log.iter().filter(|(_, o)| matches!(o, Output::StartBuild(_))).map(|(i, _)| *i).collect()
    }

    fn cancelled(log: &[(usize, Output)]) -> Vec<(usize, CancelReason)> {
        log.iter()
            .filter_map(|(i, o)| match o {
                Output::CancelBuild { reason, .. } => Some((*i, *reason)),
                _ => None,
            })
            .collect()
    }

    fn finish(&mut self, i: usize, d: u8, hash: [u8; 32]) {
        let a = attestation(&self.keys[i], d, hash, self.now);
        self.input(i, Input::BuildFinished(a));
    }

    /// The rank order of all nodes for a derivation (every node is eligible and equal).
    fn rank(&mut self, d: u8) -> Vec<usize> {
        let members: Vec<_> = self.nodes[0].members().map(crate::placement::Member::from_announcement).collect();
        let view = crate::placement::View::new(members).unwrap();
        let r = view.rank(&PlacementKey::for_drv(&drv(d)), &Requirements::new(SYS, Vec::<String>::new()));
        r.iter().map(|r| self.index(&r.node)).collect()
    }
}

fn events(log: &[(usize, Output)]) -> Vec<(usize, &Event)> {
    log.iter()
        .filter_map(|(i, o)| match o {
            Output::Event(e) => Some((*i, e)),
            _ => None,
        })
        .collect()
}

#[test]
fn single_node_builds_and_completes() {
    let cfg = MeshConfig {
        trust: TrustConfig { trusted: None, quorum: 1, needs_native: false, no_emulation_for: Default::default() },
        ..MeshConfig::default()
    };
    let mut net = Net::new(1, cfg.clone());
    assert_eq!(net.nodes[0].member_count(), 1);
    assert_eq!(net.nodes[0].view().map(|v| v.len()), Some(1));
    let me = net.id(0);
    net.input(0, Input::Submit { job: job(me, 1, 1), inputs: BTreeSet::new() });
    // Warm-up: nothing is claimed before it ends.
    assert!(Net::started(&net.log).is_empty());
    net.advance(cfg.warmup_ms);
    let log = net.take_log();
    assert_eq!(Net::started(&log), vec![0]);
    let Some((_, Output::StartBuild(order))) = log.iter().find(|(_, o)| matches!(o, Output::StartBuild(_))) else {
        panic!()
    };
    assert_eq!((order.drv.clone(), order.attempt, order.mode, order.forced), (drv(1), 1, BuildMode::Native, false));
    assert!(matches!(
        net.nodes[0].handle_build_failed(&drv(9), FailureReason::Timeout { limit_ms: 1 }, net.now),
        Err(MeshError::NotBuilding { .. })
    ));
    // Leases are renewed while building.
    let before = net.nodes[0].stats().claims_published;
    net.advance(3 * cfg.renew_interval_ms);
    assert_eq!(net.nodes[0].stats().claims_published, before + 3);
    net.finish(0, 1, [7; 32]);
    let log = net.take_log();
    let ev = events(&log);
    assert!(ev.iter().any(|(_, e)| matches!(e, Event::OutputAccepted { nar_hash: [7, ..], .. })));
    assert!(ev.iter().any(|(_, e)| matches!(e, Event::JobComplete { agreed: true, .. })));
    assert_eq!(net.nodes[0].accepted(&out_path(1)), Some(([7; 32], 1234)));
    assert_eq!(net.nodes[0].job(&drv(1)).unwrap().state, "complete");
    // Nothing left to do but announce.
    assert_eq!(net.nodes[0].poll_timeout(), Some(net.nodes[0].next_announce_ms));
}

#[test]
fn two_nodes_both_build_and_agree() {
    let mut net = Net::new(2, MeshConfig::default());
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, 2, 2), inputs: BTreeSet::new() });
    net.advance(MeshConfig::default().warmup_ms);
    let log = net.take_log();
    let mut started = Net::started(&log);
    started.sort();
    assert_eq!(started, vec![0, 1]);
    for i in 0..2 {
        assert_eq!(net.nodes[i].job(&drv(2)).unwrap().claimants.len(), 2);
    }
    net.finish(1, 2, [9; 32]);
    assert!(net.nodes[0].accepted(&out_path(2)).is_none(), "one builder is not a quorum");
    net.finish(0, 2, [9; 32]);
    let log = net.take_log();
    let complete: Vec<usize> = events(&log)
        .iter()
        .filter(|(_, e)| matches!(e, Event::JobComplete { agreed: true, .. }))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(complete.len(), 2);
    for i in 0..2 {
        assert_eq!(net.nodes[i].accepted(&out_path(2)), Some(([9; 32], 1234)));
        let v = net.nodes[i].assess_output(&out_path(2)).unwrap();
        assert_eq!(v.verdict, crate::verdict::Verdict::Match);
    }
    // A mismatch is reported, never accepted.
    net.input(0, Input::Submit { job: job(a, 3, 2), inputs: BTreeSet::new() });
    net.finish(0, 3, [1; 32]);
    net.finish(1, 3, [2; 32]);
    let log = net.take_log();
    assert!(events(&log).iter().any(|(_, e)| matches!(e, Event::OutputMismatch { .. })));
    assert!(events(&log).iter().any(|(_, e)| matches!(e, Event::JobComplete { agreed: false, .. })));
    assert!(net.nodes[0].accepted(&out_path(3)).is_none());
}

impl Input {
    fn clone_with_submitter(self, who: NodeId) -> Input {
        match self {
            Input::Submit { mut job, inputs } => {
                job.submitter = who;
                Input::Submit { job, inputs }
            }
            other => other,
        }
    }
}

#[test]
fn takeover_after_lease_expiry() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(4, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(4);
    let (first, second) = (rank[0], rank[1]);
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, 4, 1), inputs: BTreeSet::new() });
    assert_eq!(Net::started(&net.take_log()), vec![first]);
    // The builder stays in the view (it announces) but its renewals never arrive.
    net.mute_claims.insert(first);
    net.advance(cfg.lease_ms - 1);
    assert!(Net::started(&net.log).is_empty(), "no takeover while the lease holds");
    net.advance(2);
    // The others struck it (`strike_book.rs`): two signed records reach every node, the first
    // included, so it yields in its own view as in everybody's: never two builders.
    let log = net.take_log();
    assert_eq!(Net::started(&log), vec![second]);
    assert_eq!(Net::cancelled(&log), vec![(first, CancelReason::Yielded)]);
    for i in 0..4 {
        assert!(net.nodes[i].struck(&net.id(first)), "node {i} holds the strike");
    }
    // Its renewals would arrive again now, but it released the place: one builder everywhere.
    net.mute_claims.clear();
    net.advance(cfg.renew_interval_ms);
    let log = net.take_log();
    assert!(Net::cancelled(&log).is_empty() && Net::started(&log).is_empty());
    for i in 0..4 {
        assert_eq!(net.nodes[i].job(&drv(4)).unwrap().claimants, vec![net.id(second)], "node {i}");
    }
}

/// Without strike records (dropped on the way) the rule of sticky claims still agrees: two live
/// claims for one place resolve to the better ranked on every node; the other yields.
#[test]
fn takeover_after_lease_expiry_without_strike_records() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(4, cfg.clone());
    net.mute_strikes = true;
    net.advance(cfg.warmup_ms);
    let rank = net.rank(4);
    let (first, second) = (rank[0], rank[1]);
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, 4, 1), inputs: BTreeSet::new() });
    assert_eq!(Net::started(&net.take_log()), vec![first]);
    net.mute_claims.insert(first);
    net.advance(cfg.lease_ms + 1);
    assert_eq!(Net::started(&net.take_log()), vec![second]);
    net.mute_claims.clear();
    net.advance(cfg.renew_interval_ms);
    let log = net.take_log();
    assert_eq!(Net::cancelled(&log), vec![(second, CancelReason::Yielded)]);
    for i in 0..4 {
        assert_eq!(net.nodes[i].job(&drv(4)).unwrap().claimants, vec![net.id(first)], "node {i}");
    }
}

#[test]
fn designated_node_that_never_claims_is_skipped() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(3, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(5);
    // The best-ranked node cannot build (it has no slots left to announce? it announces, but its
    // claims are lost): others take over after claim_timeout.
    net.mute_claims.insert(rank[0]);
    let a = net.id(rank[2]);
    net.input(rank[2], Input::Submit { job: job(a, 5, 1), inputs: BTreeSet::new() }.clone_with_submitter(a));
    assert_eq!(Net::started(&net.take_log()), vec![rank[0]]);
    net.advance(cfg.claim_timeout_ms);
    assert_eq!(Net::started(&net.take_log()), vec![rank[1]]);
}

#[test]
fn failure_retries_on_another_node_and_deterministic_failures_end_the_job() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(5, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(6);
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, 6, 1), inputs: BTreeSet::new() });
    assert_eq!(Net::started(&net.take_log()), vec![rank[0]]);
    // A timeout is worth retrying elsewhere.
    net.input(rank[0], Input::BuildFailed { drv: drv(6), reason: FailureReason::Timeout { limit_ms: 5 }, log: None });
    assert_eq!(Net::started(&net.take_log()), vec![rank[1]]);
    // A builder exit is deterministic: one more builder confirms it, then the job is given up.
    net.input(rank[1], Input::BuildFailed { drv: drv(6), reason: FailureReason::BuilderExit { code: 1 }, log: None });
    assert_eq!(Net::started(&net.take_log()), vec![rank[2]]);
    net.input(rank[2], Input::BuildFailed { drv: drv(6), reason: FailureReason::BuilderExit { code: 1 }, log: None });
    let log = net.take_log();
    assert!(Net::started(&log).is_empty());
    let failed: Vec<usize> = events(&log)
        .iter()
        .filter(|(_, e)| matches!(e, Event::JobFailed { failure: JobFailure::Deterministic { .. }, .. }))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(failed.len(), 5, "every node gives the job up");
    for i in 0..5 {
        let v = net.nodes[i].job(&drv(6)).unwrap();
        assert_eq!((v.state, v.failed.len()), ("failed", 3));
    }
    // Attempts run out after max_attempts transient failures.
    let cfg2 = MeshConfig { max_attempts: 2, failure_quorum: 2, ..cfg.clone() };
    let mut net = Net::new(4, cfg2.clone());
    net.advance(cfg2.warmup_ms);
    let rank = net.rank(7);
    net.input(0, Input::Submit { job: job(a, 7, 1), inputs: BTreeSet::new() });
    for r in &rank[..2] {
        net.input(*r, Input::BuildFailed { drv: drv(7), reason: FailureReason::Timeout { limit_ms: 5 }, log: None });
    }
    let log = net.take_log();
    assert!(
        events(&log)
            .iter()
            .any(|(_, e)| matches!(e, Event::JobFailed { failure: JobFailure::AttemptsExhausted { .. }, .. }))
    );
    assert_eq!(Net::started(&log), vec![rank[0], rank[1]]);
}

#[test]
fn rejoining_node_keeps_its_claim_and_the_stand_in_yields() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(4, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(8);
    let (first, second) = (rank[0], rank[1]);
    let submitter = rank[3];
    let s = net.id(submitter);
    net.input(submitter, Input::Submit { job: job(s, 8, 1), inputs: BTreeSet::new() }.clone_with_submitter(s));
    assert_eq!(Net::started(&net.take_log()), vec![first]);
    // Partition the builder away: the others drop it from the view and take over.
    for j in 0..4 {
        if j != first {
            net.cut.insert((first, j));
            net.cut.insert((j, first));
        }
    }
    net.advance(cfg.member_ttl_ms + 1);
    let log = net.take_log();
    assert_eq!(Net::started(&log), vec![second]);
    assert!(events(&log).iter().any(|(i, e)| *i == second && matches!(e, Event::MemberLeft { .. })));
    // Heal: the builder's announcements and renewals reach the others again; the stand-in, ranked
    // lower, yields; the builder never stops.
    net.cut.clear();
    net.advance(cfg.announce_interval_ms.max(cfg.renew_interval_ms) + 1);
    let log = net.take_log();
    assert_eq!(Net::cancelled(&log), vec![(second, CancelReason::Yielded)]);
    assert!(Net::started(&log).is_empty());
    net.finish(first, 8, [3; 32]);
    assert_eq!(net.nodes[submitter].job(&drv(8)).unwrap().state, "complete");
}

#[test]
fn a_join_does_not_cancel_a_running_build() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(6, cfg.clone());
    // Node 5 is away at first.
    for j in 0..5 {
        net.cut.insert((5, j));
        net.cut.insert((j, 5));
    }
    net.advance(cfg.member_ttl_ms + cfg.warmup_ms);
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, 9, 2), inputs: BTreeSet::new() });
    let started = Net::started(&net.take_log());
    assert_eq!(started.len(), 2);
    net.cut.clear();
    net.advance(cfg.announce_interval_ms * 2);
    let log = net.take_log();
    assert!(Net::cancelled(&log).is_empty(), "{log:?}");
    assert!(Net::started(&log).is_empty(), "node 5 learns the claims before it would claim: {log:?}");
}

#[test]
fn replays_and_duplicates_are_ignored() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(2, cfg.clone());
    net.advance(cfg.warmup_ms);
    let b = net.id(1);
    let ann = net.nodes[1].members().find(|m| m.node == b).unwrap().clone();
    let mut old = ann.clone();
    old.seq -= 1;
    assert_eq!(net.nodes[0].handle_message(&Message::Announcement(old), net.now).unwrap(), Disposition::Stale);
    assert_eq!(
        net.nodes[0].handle_message(&Message::Announcement(ann.clone()), net.now).unwrap(),
        Disposition::Duplicate
    );
    let mut ancient = ann.clone();
    ancient.seq += 10;
    ancient.timestamp_ms = net.now - cfg.member_ttl_ms - 1;
    assert_eq!(net.nodes[0].handle_message(&Message::Announcement(ancient), net.now).unwrap(), Disposition::Stale);
    let mut future = ann.clone();
    future.seq += 10;
    future.timestamp_ms = net.now + cfg.max_clock_skew_ms + 1;
    assert_eq!(
        net.nodes[0].handle_message(&Message::Announcement(future), net.now).unwrap(),
        Disposition::Ignored(Ignored::FromTheFuture)
    );
    let a = net.id(0);
    let mine = Message::Announcement(net.nodes[0].members().find(|m| m.node == a).unwrap().clone());
    assert_eq!(net.nodes[0].handle_message(&mine, net.now).unwrap(), Disposition::Own);

    let j = job(a, 10, 2);
    net.input(0, Input::Submit { job: j.clone(), inputs: BTreeSet::new() });
    let claim = |at: u64| {
        Message::Claim(Claim {
            job: j.job,
            claimant: b,
            store_dir: StoreDir::nix(),
            drv: drv(10),
            attempt: 1,
            claimed_at_ms: at,
            lease_expires_at_ms: at + cfg.lease_ms,
        })
    };
    let now = net.now;
    assert_eq!(net.nodes[0].handle_message(&claim(now + 5), now).unwrap(), Disposition::Applied);
    assert_eq!(net.nodes[0].handle_message(&claim(now + 5), now).unwrap(), Disposition::Stale);
    assert_eq!(net.nodes[0].handle_message(&claim(now + 1), now).unwrap(), Disposition::Stale);
    let att = Message::Attestation(attestation(&net.keys[1], 10, [5; 32], now));
    assert_eq!(net.nodes[0].handle_message(&att, now).unwrap(), Disposition::Applied);
    assert_eq!(net.nodes[0].handle_message(&att, now).unwrap(), Disposition::Duplicate);
    let mut resubmitted = j.clone();
    resubmitted.submitter = b;
    let mut other = j.clone();
    other.store_dir = StoreDir::guix();
    other.submitter = b;
    assert_eq!(
        net.nodes[0].handle_message(&Message::JobSubmission(other), now).unwrap(),
        Disposition::Ignored(Ignored::OtherStoreDir)
    );
    assert_eq!(net.nodes[0].job(&drv(10)).unwrap().attesters, vec![b]);
}

#[test]
fn dependents_wait_for_their_inputs() {
    let cfg = MeshConfig {
        trust: TrustConfig { trusted: None, quorum: 1, needs_native: false, no_emulation_for: Default::default() },
        ..MeshConfig::default()
    };
    let mut net = Net::new(2, cfg.clone());
    net.advance(cfg.warmup_ms);
    let a = net.id(0);
    let dep = job(a, 11, 1);
    let top = job(a, 12, 1);
    let bottom = job(a, 13, 1);
    net.input(0, Input::Submit { job: dep.clone(), inputs: BTreeSet::new() });
    net.input(0, Input::Submit { job: top.clone(), inputs: [drv(11)].into_iter().collect() });
    net.input(0, Input::Submit { job: bottom.clone(), inputs: [drv(12)].into_iter().collect() });
    assert_eq!(net.nodes[0].pending_submissions(), 2);
    assert!(net.nodes[1].job(&drv(12)).is_none(), "not published yet");
    let log = net.take_log();
    let builder = Net::started(&log)[0];
    net.finish(builder, 11, [1; 32]);
    let log = net.take_log();
    assert!(
        events(&log).iter().any(|(i, e)| *i == 0 && matches!(e, Event::JobPublished { drv: d, .. } if *d == drv(12)))
    );
    assert_eq!(net.nodes[0].pending_submissions(), 1);
    let builder = Net::started(&log)[0];
    // The input fails: the dependent waiting for it fails too, without being published.
    net.input(builder, Input::BuildFailed { drv: drv(12), reason: FailureReason::BuilderExit { code: 2 }, log: None });
    let builder = Net::started(&net.take_log())[0];
    net.input(builder, Input::BuildFailed { drv: drv(12), reason: FailureReason::BuilderExit { code: 2 }, log: None });
    let log = net.take_log();
    assert!(events(&log).iter().any(|(i, e)| *i == 0
        && matches!(e, Event::JobFailed { drv: d, failure: JobFailure::InputFailed { .. }, .. } if *d == drv(13))));
    assert_eq!(net.nodes[0].pending_submissions(), 0);
    assert!(net.nodes[1].job(&drv(13)).is_none());
}

#[test]
fn targeted_retry_forces_a_node() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(3, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(14);
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, 14, 1), inputs: BTreeSet::new() });
    assert_eq!(Net::started(&net.take_log()), vec![rank[0]]);
    net.finish(rank[0], 14, [4; 32]);
    // `retry --on` the last-ranked node, asked at node rank[0]: a request goes out.
    let target = net.id(rank[2]);
    net.input(rank[0], Input::Retry { drv: drv(14), on: target });
    let log = net.take_log();
    assert!(log.iter().any(|(_, o)| matches!(o, Output::RequestRetry { peer, .. } if *peer == target)));
    // Its driver turns it into a local retry: it builds although the job is complete.
    net.input(rank[2], Input::Retry { drv: drv(14), on: target });
    let log = net.take_log();
    let forced: Vec<bool> = log
        .iter()
        .filter_map(|(_, o)| match o {
            Output::StartBuild(b) => Some(b.forced),
            _ => None,
        })
        .collect();
    assert_eq!(forced, vec![true]);
    net.advance(cfg.lease_ms * 2);
    assert!(Net::cancelled(&net.log).is_empty(), "a forced build is not yielded");
    net.finish(rank[2], 14, [4; 32]);
    assert_eq!(net.nodes[0].job(&drv(14)).unwrap().attesters.len(), 2);
    assert_eq!(net.nodes[0].accepted(&out_path(14)), Some(([4; 32], 1234)));
    let unknown = net.nodes[rank[2]].handle(Input::Retry { drv: drv(99), on: target }, net.now);
    assert!(matches!(unknown, Err(MeshError::UnknownDrv { .. })));
}

#[test]
fn restart_restores_own_results_and_answers_resubmissions() {
    let cfg = MeshConfig {
        trust: TrustConfig { trusted: None, quorum: 1, needs_native: false, no_emulation_for: Default::default() },
        ..MeshConfig::default()
    };
    let mut net = Net::new(3, cfg.clone());
    net.advance(cfg.warmup_ms);
    let rank = net.rank(15);
    let submitter = rank[2];
    let s = net.id(submitter);
    net.input(submitter, Input::Submit { job: job(s, 15, 1), inputs: BTreeSet::new() }.clone_with_submitter(s));
    net.finish(rank[0], 15, [6; 32]);
    let persisted = attestation(&net.keys[rank[0]], 15, [6; 32], net.now);
    let _ = net.take_log();
    // The submitter restarts and forgets everything; the builder restarts too.
    for i in [submitter, rank[0]] {
        net.nodes[i] = Mesh::new(cfg.clone(), net.id(i), LocalInfo::new("buildmesh test", [SYS], 2), net.now).unwrap();
    }
    net.nodes[rank[0]].handle(Input::RestoreAttestation(persisted), net.now).unwrap();
    net.drain();
    assert!(net.nodes[submitter].job(&drv(15)).is_none());
    // The driver resubmits its unfinished job: the builder answers with its attestation instead
    // of anyone building again.
    net.input(submitter, Input::Submit { job: job(s, 15, 1), inputs: BTreeSet::new() }.clone_with_submitter(s));
    net.advance(cfg.warmup_ms * 2);
    let log = net.take_log();
    assert!(Net::started(&log).is_empty(), "{log:?}");
    assert_eq!(net.nodes[submitter].job(&drv(15)).unwrap().state, "complete");
    assert!(net.nodes[rank[0]].stats().republished >= 1);
}

#[test]
fn bounds_and_errors() {
    let cfg = MeshConfig { max_drvs: 2, max_queued_outputs: 64, ..MeshConfig::default() };
    let mut net = Net::new(1, cfg.clone());
    let me = net.id(0);
    let other = key(9).node_id();
    assert!(matches!(
        net.nodes[0].handle(Input::Submit { job: job(other, 1, 1), inputs: BTreeSet::new() }, net.now),
        Err(MeshError::NotMine { .. })
    ));
    net.input(0, Input::Submit { job: job(me, 1, 1), inputs: BTreeSet::new() });
    assert!(matches!(
        net.nodes[0].handle(Input::Submit { job: job(me, 1, 1), inputs: BTreeSet::new() }, net.now),
        Err(MeshError::DuplicateJob { .. })
    ));
    net.input(0, Input::Submit { job: job(me, 2, 1), inputs: BTreeSet::new() });
    // Two active derivations fill the table: a third is refused, nothing is evicted.
    assert!(matches!(
        net.nodes[0].handle(Input::Submit { job: job(me, 3, 1), inputs: BTreeSet::new() }, net.now),
        Err(MeshError::TableFull { .. })
    ));
    let m = Message::JobSubmission(job(other, 4, 1));
    assert_eq!(net.nodes[0].handle_message(&m, net.now).unwrap(), Disposition::Ignored(Ignored::TableFull));
    // Once one is finished, it makes room.
    net.advance(cfg.warmup_ms);
    net.finish(0, 1, [1; 32]);
    assert_eq!(net.nodes[0].handle_message(&m, net.now).unwrap(), Disposition::Applied);
    assert!(net.nodes[0].job(&drv(1)).is_none(), "evicted");
    assert!(matches!(
        net.nodes[0].handle(
            Input::BuildFailed { drv: drv(4), reason: FailureReason::Timeout { limit_ms: 1 }, log: None },
            net.now
        ),
        Err(MeshError::NotBuilding { .. })
    ));
    // Backpressure: an undrained queue refuses input.
    for _ in 0..64 {
        net.nodes[0].outputs.push_back(Output::Event(Event::MemberJoined { node: me }));
    }
    assert!(matches!(net.nodes[0].handle_message(&m, net.now), Err(MeshError::Backpressure { .. })));
    // Config validation names the field.
    let bad = MeshConfig { renew_interval_ms: MeshConfig::default().lease_ms, ..MeshConfig::default() };
    assert!(matches!(bad.validate(), Err(ConfigError::Invalid { field: "renew_interval_ms", .. })));
    let mut local = LocalInfo::new("v", ["x86_64-linux"], 1);
    local.emulated_systems.insert("x86_64-linux".into());
    assert!(matches!(local.validate(), Err(ConfigError::Local { field: "emulated_systems", .. })));
}

#[test]
fn emulated_builders_only_when_no_native_one() {
    let cfg = MeshConfig::default();
    let mut net = Net::new(3, cfg.clone());
    // Node 0 builds aarch64 natively, the others emulate it.
    let mut native = LocalInfo::new("t", [SYS, "aarch64-linux"], 1);
    native.owner = "alice".into();
    net.input(0, Input::SetLocal(native));
    for i in 1..3 {
        let mut emu = LocalInfo::new("t", [SYS], 4);
        emu.emulated_systems.insert("aarch64-linux".into());
        net.input(i, Input::SetLocal(emu));
    }
    net.advance(cfg.warmup_ms);
    let a = net.id(1);
    let mut j = job(a, 16, 2);
    j.system = "aarch64-linux".into();
    j.submitter = a;
    net.input(1, Input::Submit { job: j, inputs: BTreeSet::new() });
    let log = net.take_log();
    let modes: BTreeMap<usize, BuildMode> = log
        .iter()
        .filter_map(|(i, o)| match o {
            Output::StartBuild(b) => Some((*i, b.mode)),
            _ => None,
        })
        .collect();
    assert_eq!(modes.len(), 2);
    assert_eq!(modes.get(&0), Some(&BuildMode::Native));
    assert_eq!(modes.values().filter(|m| **m == BuildMode::Emulated).count(), 1);
}
