//! Attacks by keys that are neither trusted nor designated (issue 10, finding 6): their failures,
//! claims and attestations count for nothing until placement would have asked them, and they can
//! fill no table that designated or trusted builders need. Nodes 0..3 of each mesh are trusted.

use super::*;

/// A config trusting nodes `0..n` (the honest ones).
fn trusting(n: usize) -> MeshConfig {
    let trusted: BTreeSet<NodeId> = (0..n).map(|i| key(i).node_id()).collect();
    MeshConfig {
        trust: TrustConfig {
            trusted: Some(trusted),
            quorum: 2,
            needs_native: false,
            no_emulation_for: Default::default(),
        },
        ..MeshConfig::default()
    }
}

/// A key of no node of the mesh.
fn stranger(i: usize) -> NodeKey {
    let mut seed = [0xeeu8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    NodeKey::from_seed(&format!("stranger-{i}"), seed).unwrap()
}

fn failure(k: &NodeKey, d: u8, now: u64) -> Message {
    Message::BuildFailure(crate::wire::BuildFailure {
        builder: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: drv(d),
        attempt: 1,
        mode: BuildMode::Native,
        at_ms: now,
        reason: FailureReason::BuilderExit { code: 1 },
        log: None,
    })
}

fn claim(k: &NodeKey, j: &JobSubmission, now: u64, lease_ms: u64) -> Message {
    Message::Claim(Claim {
        job: j.job,
        claimant: k.node_id(),
        store_dir: StoreDir::nix(),
        drv: j.drv.clone(),
        attempt: 1,
        claimed_at_ms: now,
        lease_expires_at_ms: now + lease_ms,
    })
}

fn announcement(k: &NodeKey, slots: u32, now: u64) -> Message {
    Message::Announcement(Announcement {
        node: k.node_id(),
        seq: now,
        timestamp_ms: now,
        version: "intruder".into(),
        owner: String::new(),
        native_systems: [SYS.to_string()].into_iter().collect(),
        emulated_systems: BTreeSet::new(),
        features: BTreeSet::new(),
        mandatory_features: BTreeSet::new(),
        slots,
        load: 0,
        slowdown: Default::default(),
        disk_pressure: None,
    })
}

impl Net {
    /// Hand a forged message to every node; their dispositions.
    fn inject(&mut self, m: &Message) -> Vec<Disposition> {
        let now = self.now;
        let d = self.nodes.iter_mut().map(|n| n.handle_message(m, now).unwrap()).collect();
        self.drain();
        d
    }
}

#[test]
fn failures_from_throwaway_keys_do_not_give_a_job_up() {
    let cfg = trusting(3);
    let mut net = Net::new(3, cfg.clone());
    net.advance(cfg.warmup_ms);
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, 20, 1), inputs: BTreeSet::new() });
    let builder = Net::started(&net.take_log());
    assert_eq!(builder.len(), 1);
    // Two (and more) throwaway keys report deterministic failures: more than failure_quorum.
    for i in 0..4 {
        let f = failure(&stranger(50 + i), 20, net.now);
        assert!(net.inject(&f).iter().all(|d| *d == Disposition::Applied), "kept, latent");
    }
    for i in 0..3 {
        let v = net.nodes[i].job(&drv(20)).unwrap();
        assert_eq!((v.state, v.failed.len()), ("active", 0), "node {i}: {v:?}");
    }
    assert!(Net::cancelled(&net.take_log()).is_empty(), "the real build goes on");
    net.finish(builder[0], 20, [3; 32]);
    for i in 0..3 {
        assert_eq!(net.nodes[i].job(&drv(20)).unwrap().state, "complete", "node {i}");
    }
}

#[test]
fn a_strangers_failure_counts_once_placement_designates_it() {
    let cfg = trusting(3);
    let mut net = Net::new(3, cfg.clone());
    let stranger = stranger(60);
    let m = announcement(&stranger, 2, net.now);
    net.inject(&m);
    net.advance(cfg.warmup_ms);
    // A derivation for which the stranger ranks second.
    let view: Vec<_> = net.nodes[0].members().map(crate::placement::Member::from_announcement).collect();
    let view = crate::placement::View::new(view).unwrap();
    let req = Requirements::new(SYS, Vec::<String>::new());
    let d = (1..=200u8)
        .find(|d| view.rank(&PlacementKey::for_drv(&drv(*d)), &req)[1].node == stranger.node_id())
        .expect("a derivation where the stranger ranks second");
    // It fails the job before anyone was asked: latent.
    let f = failure(&stranger, d, net.now);
    net.inject(&f);
    let a = net.id(0);
    net.input(0, Input::Submit { job: job(a, d, 1), inputs: BTreeSet::new() });
    let first = Net::started(&net.take_log());
    assert_eq!(first.len(), 1);
    assert!(net.nodes[0].job(&drv(d)).unwrap().failed.is_empty());
    // The first builder fails deterministically too: the next in line is the stranger, whom
    // placement would have asked anyway; now its failure counts, and two confirm the job broken.
    net.input(first[0], Input::BuildFailed { drv: drv(d), reason: FailureReason::BuilderExit { code: 1 }, log: None });
    for i in 0..3 {
        let v = net.nodes[i].job(&drv(d)).unwrap();
        assert_eq!(v.state, "failed", "node {i}: {v:?}");
        assert!(v.failed.contains(&stranger.node_id()));
    }
}

#[test]
fn throwaway_claims_cannot_fill_the_builder_table() {
    let cfg = trusting(3);
    let mut net = Net::new(3, cfg.clone());
    let a = net.id(0);
    let j = job(a, 21, 2);
    // 64 strangers join the view (so their claims are not dropped as non-members').
    for i in 0..64 {
        let m = announcement(&stranger(100 + i), 1, net.now);
        net.inject(&m);
    }
    net.advance(cfg.warmup_ms);
    net.input(0, Input::Submit { job: j.clone(), inputs: BTreeSet::new() });
    // 64 keys outside the view claim: ignored outright.
    for i in 0..64 {
        let c = claim(&stranger(200 + i), &j, net.now, cfg.lease_ms);
        assert!(net.inject(&c).iter().all(|d| *d == Disposition::Ignored(Ignored::NotMember)));
    }
    // The 64 members claim too (and never renew).
    for i in 0..64 {
        let c = claim(&stranger(100 + i), &j, net.now, cfg.lease_ms);
        net.inject(&c);
    }
    for i in 0..3 {
        let e = net.nodes[i].drvs.get(net.nodes[i].drvs.lookup(&drv(21)).unwrap()).unwrap();
        let unvetted = e.builders.iter().filter(|b| !b.vetted).count();
        assert!(unvetted <= cfg.max_unvetted_builders_per_drv, "node {i}: {unvetted} unvetted records");
        assert!(e.builders.len() < cfg.max_builders_per_drv, "node {i}: table full");
    }
    // Whoever holds the designation, honest nodes end up building it and their results count.
    let mut built = BTreeSet::new();
    for _ in 0..6 {
        for i in Net::started(&net.take_log()) {
            built.insert(i);
        }
        for &i in &built.clone() {
            if net.nodes[i].job(&drv(21)).is_some_and(|v| v.building) {
                net.finish(i, 21, [4; 32]);
            }
        }
        if net.nodes[0].job(&drv(21)).unwrap().state == "complete" {
            break;
        }
        net.advance(cfg.lease_ms + cfg.claim_timeout_ms);
    }
    for i in 0..3 {
        let v = net.nodes[i].job(&drv(21)).unwrap();
        assert_eq!(v.state, "complete", "node {i}: {v:?}");
        assert!(v.attesters.iter().all(|n| net.keys[..3].iter().any(|k| k.node_id() == *n)));
    }
}

#[test]
fn a_member_announcing_huge_slots_does_not_capture_placement() {
    let cfg = trusting(3);
    let mut net = Net::new(3, cfg.clone());
    let liar = stranger(70);
    let m = announcement(&liar, crate::wire::MAX_SLOTS, net.now);
    net.inject(&m);
    let a = net.id(0);
    let jobs = 40u8;
    for d in 1..=jobs {
        net.input(0, Input::Submit { job: job(a, d, 1), inputs: BTreeSet::new() });
    }
    let first = (1..=jobs).filter(|d| net.nodes[1].job(&drv(*d)).unwrap().designated[0] == liar.node_id()).count();
    // Its weight is twice the median (2 slots): at most 4 / (4 + 3 × 2) of the jobs, expected.
    assert!(first <= usize::from(jobs) / 2, "the liar is first for {first} of {jobs} jobs");
    assert!(first > 0, "it is still a member like any other");
    // Locally, too many slots are refused with the field named.
    let local = LocalInfo::new("v", [SYS], crate::wire::MAX_SLOTS + 1);
    assert!(matches!(local.validate(), Err(ConfigError::Local { field: "slots", .. })));
}

#[test]
fn strangers_cannot_fill_the_derivation_table() {
    let cfg = MeshConfig { max_drvs: 64, ..trusting(1) };
    let mut net = Net::new(1, cfg.clone());
    for d in 0..=255u8 {
        let f = failure(&stranger(80 + usize::from(d % 3)), d, net.now);
        net.inject(&f);
    }
    assert_eq!(net.nodes[0].drvs.stranger_entries(), 8, "at most max_drvs / 8 strangers' entries");
    assert_eq!(net.nodes[0].drv_counts().0, 8);
    let me = net.id(0);
    net.input(0, Input::Submit { job: job(me, 7, 1), inputs: BTreeSet::new() });
    assert_eq!(net.nodes[0].job(&drv(7)).unwrap().state, "active");
}

#[test]
fn untrusted_submitters_have_a_quota() {
    let cfg = MeshConfig { max_active_jobs_per_untrusted_submitter: 3, max_untrusted_active_jobs: 5, ..trusting(2) };
    let mut net = Net::new(2, cfg.clone());
    let (s1, s2, s3) = (stranger(90).node_id(), stranger(91).node_id(), stranger(92).node_id());
    let submit = |net: &mut Net, who: NodeId, d: u8| {
        let mut j = job(who, d, 1);
        j.submitted_at_ms = net.now;
        net.nodes[0].handle_message(&Message::JobSubmission(j), net.now).unwrap()
    };
    for d in 1..=3 {
        assert_eq!(submit(&mut net, s1, d), Disposition::Applied);
    }
    assert_eq!(submit(&mut net, s1, 4), Disposition::Ignored(Ignored::SubmitterQuota), "per key");
    // Another job id for a derivation already open is no new derivation.
    let mut again = job(s1, 3, 1);
    again.job = JobId::from_bytes([3; 32]);
    assert_eq!(net.nodes[0].handle_message(&Message::JobSubmission(again), net.now).unwrap(), Disposition::Applied);
    assert_eq!(submit(&mut net, s2, 5), Disposition::Applied);
    assert_eq!(submit(&mut net, s2, 6), Disposition::Applied);
    assert_eq!(submit(&mut net, s3, 7), Disposition::Ignored(Ignored::SubmitterQuota), "all strangers together");
    // Trusted submitters are not held back; a finished job gives its submitter room again.
    let trusted = net.id(1);
    assert_eq!(submit(&mut net, trusted, 8), Disposition::Applied);
    let a = attestation(&net.keys[1], 1, [1; 32], net.now);
    net.nodes[0].handle_message(&Message::Attestation(a), net.now).unwrap();
    let a = attestation(&net.keys[0], 1, [1; 32], net.now);
    net.nodes[0].handle(Input::RestoreAttestation(a), net.now).unwrap();
    assert_eq!(net.nodes[0].job(&drv(1)).unwrap().state, "complete");
    assert_eq!(submit(&mut net, s3, 7), Disposition::Applied);
}
