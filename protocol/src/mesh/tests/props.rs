//! Property test: whatever arrives in whatever order, the machine keeps its bounds and its
//! promises. Nodes 1..=3 are trusted, 4..=6 strangers (vetting applies to them).

use super::*;
use crate::nixkey::NixSignature;
use crate::signed::Envelope;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Announce { node: usize, slots: u32, owner: u8 },
    Submit { node: usize, d: u8, replicas: u8 },
    Claim { node: usize, d: u8, back_ms: u64, lease_ms: u64 },
    Attest { node: usize, d: u8, hash: u8 },
    Fail { node: usize, d: u8, attempt: u32, deterministic: bool },
    LocalSubmit { d: u8, input: Option<u8> },
    Finish { hash: u8 },
    FailOwn,
    Retry { d: u8 },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..7, 0u32..3, 0u8..3).prop_map(|(node, slots, owner)| Op::Announce { node, slots, owner }),
        (1usize..7, 0u8..8, 1u8..4).prop_map(|(node, d, replicas)| Op::Submit { node, d, replicas }),
        (1usize..7, 0u8..8, 0u64..300_000, 1u64..200_000).prop_map(|(node, d, back_ms, lease_ms)| Op::Claim {
            node,
            d,
            back_ms,
            lease_ms
        }),
        (1usize..7, 0u8..8, 0u8..3).prop_map(|(node, d, hash)| Op::Attest { node, d, hash }),
        (1usize..7, 0u8..8, 1u32..4, any::<bool>()).prop_map(|(node, d, attempt, deterministic)| Op::Fail {
            node,
            d,
            attempt,
            deterministic
        }),
        (0u8..8, proptest::option::of(0u8..8)).prop_map(|(d, input)| Op::LocalSubmit { d, input }),
        (0u8..3).prop_map(|hash| Op::Finish { hash }),
        Just(Op::FailOwn),
        (0u8..8).prop_map(|d| Op::Retry { d }),
        (0u64..200_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn other_attestation(node: NodeId, d: u8, hash: u8, now: u64) -> Attestation {
    let mut a = attestation(&key(0), d, [hash; 32], now);
    a.builder = node;
    for o in a.outputs.values_mut() {
        o.nix_signature = NixSignature::new("other", [hash; 64]).unwrap();
    }
    a
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever arrives, in whatever order: no panic, every bound holds, every published
    /// message is one a receiver accepts (it signs and verifies), builds start and stop in
    /// pairs, and the machine never asks to build something it has no job for.
    #[test]
    fn machine_survives_any_input(ops in proptest::collection::vec(op(), 1..60)) {
        let cfg = MeshConfig {
            max_members: 5,
            max_drvs: 5,
            max_builders_per_drv: 4,
            max_unvetted_builders_per_drv: 2,
            max_replicas: 2,
            max_jobs_per_drv: 2,
            max_pending_submissions: 3,
            ..MeshConfig::default()
        };
        let keys: Vec<NodeKey> = (0..7).map(key).collect();
        let me = keys[0].node_id();
        let mut now = T0;
        let mut mesh = Mesh::new(cfg.clone(), me, LocalInfo::new("t", [SYS], 2), now).unwrap();
        let mut building: BTreeMap<StorePath, u32> = BTreeMap::new();
        let mut seqs = [0u64; 7];
        for op in ops {
            let r = match op {
                Op::Announce { node, slots, owner } => {
                    seqs[node] += 1;
                    let mut info = LocalInfo::new("t", [SYS], slots);
                    info.owner = format!("o{owner}");
                    let a = Announcement {
                        node: keys[node].node_id(), seq: seqs[node], timestamp_ms: now, version: "t".into(),
                        owner: info.owner.clone(), native_systems: info.native_systems.clone(),
                        emulated_systems: BTreeSet::new(), features: BTreeSet::new(),
                        mandatory_features: BTreeSet::new(), slots, load: 0,
                        slowdown: Default::default(),
                        disk_pressure: None,
                    };
                    mesh.handle_message(&Message::Announcement(a), now).map(|_| ())
                }
                Op::Submit { node, d, replicas } => {
                    let mut j = job(keys[node].node_id(), d, replicas);
                    j.submitted_at_ms = now;
                    mesh.handle_message(&Message::JobSubmission(j), now).map(|_| ())
                }
                Op::Claim { node, d, back_ms, lease_ms } => {
                    let at = now.saturating_sub(back_ms);
                    let c = Claim { job: JobId::from_bytes([d; 32]), claimant: keys[node].node_id(),
                        store_dir: StoreDir::nix(), drv: drv(d), attempt: 1, claimed_at_ms: at,
                        lease_expires_at_ms: at + lease_ms };
                    mesh.handle_message(&Message::Claim(c), now).map(|_| ())
                }
                Op::Attest { node, d, hash } => {
                    let a = other_attestation(keys[node].node_id(), d, hash, now);
                    mesh.handle_message(&Message::Attestation(a), now).map(|_| ())
                }
                Op::Fail { node, d, attempt, deterministic } => {
                    let reason = if deterministic { FailureReason::BuilderExit { code: 1 } }
                        else { FailureReason::Timeout { limit_ms: 1 } };
                    let f = crate::wire::BuildFailure { builder: keys[node].node_id(), store_dir: StoreDir::nix(),
                        drv: drv(d), attempt, mode: BuildMode::Native, at_ms: now, reason, log: None };
                    mesh.handle_message(&Message::BuildFailure(f), now).map(|_| ())
                }
                Op::LocalSubmit { d, input } => {
                    let inputs = input.filter(|i| *i != d).map(drv).into_iter().collect();
                    match mesh.handle(Input::Submit { job: job(me, d, 2), inputs }, now) {
                        Err(MeshError::DuplicateJob { .. } | MeshError::TableFull { .. }) => Ok(()),
                        other => other.map(|_| ()),
                    }
                }
                Op::Finish { hash } => match building.keys().next().cloned() {
                    Some(p) => {
                        let d = p.digest()[0];
                        building.remove(&p);
                        mesh.handle(Input::BuildFinished(attestation(&keys[0], d, [hash; 32], now)), now).map(|_| ())
                    }
                    None => Ok(()),
                },
                Op::FailOwn => match building.keys().next().cloned() {
                    Some(p) => {
                        building.remove(&p);
                        mesh.handle(Input::BuildFailed { drv: p, reason: FailureReason::Timeout { limit_ms: 1 }, log: None }, now)
                            .map(|_| ())
                    }
                    None => Ok(()),
                },
                Op::Retry { d } => match mesh.handle(Input::Retry { drv: drv(d), on: me }, now) {
                    Err(MeshError::UnknownDrv { .. }) => Ok(()),
                    other => other.map(|_| ()),
                },
                Op::Advance { ms } => {
                    now += ms;
                    while let Some(t) = mesh.poll_timeout().filter(|t| *t <= now) {
                        mesh.handle_timeout(t.max(T0));
                    }
                    Ok(())
                }
            };
            prop_assert!(r.is_ok(), "{r:?}");
            while let Some(o) = mesh.poll_output() {
                match o {
                    Output::Publish(m) => {
                        prop_assert_eq!(*m.author(), me);
                        let env = Envelope::sign(&keys[0], &m);
                        prop_assert!(env.is_ok(), "{:?} {:?}", env, m);
                        prop_assert!(env.unwrap().verify().is_ok());
                    }
                    Output::StartBuild(b) => {
                        prop_assert!(mesh.job(&b.drv).is_some_and(|j| j.replicas.is_some()));
                        prop_assert!(building.insert(b.drv.clone(), b.attempt).is_none(), "started twice: {:?}", b.drv);
                    }
                    Output::CancelBuild { drv, .. } => {
                        prop_assert!(building.remove(&drv).is_some(), "cancelled a build that was not running");
                    }
                    _ => {}
                }
            }
            for d in 0..8 {
                if let Some(e) = mesh.drvs.lookup(&drv(d)).and_then(|s| mesh.drvs.get(s)) {
                    prop_assert!(e.builders.len() <= cfg.max_builders_per_drv);
                    let unvetted = e.builders.iter().filter(|b| !b.vetted).count();
                    prop_assert!(unvetted <= cfg.max_unvetted_builders_per_drv, "{unvetted} unvetted records");
                    // A stranger that was never designated counts for nothing.
                    for b in e.builders.iter().filter(|b| !b.vetted) {
                        prop_assert!(!e.attestations.iter().any(|a| a.builder == b.node));
                        prop_assert!(!b.excluded() && b.counted_failure().is_none());
                    }
                }
            }
            prop_assert!(mesh.member_count() <= cfg.max_members);
            prop_assert!(mesh.drv_counts().0 <= cfg.max_drvs);
            prop_assert!(mesh.pending_submissions() <= cfg.max_pending_submissions);
            if let Some(t) = mesh.poll_timeout() {
                prop_assert!(t > T0);
            }
        }
    }
}
