//! The builds and attestations API against a `BTreeMap` model (STYLE.md 14).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::test_support::*;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue { d: u8, priority: i32, outputs: Vec<u8>, replicas: u32 },
    Running(u8),
    Done(u8),
    Failed(u8),
    RetryLater(u8),
    Retry(u8),
    Cancel(u8),
    RequeueInterrupted,
    Attest { id: u8 },
    Since { cursor: u64, limit: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, -2i32..3, proptest::collection::vec(0u8..3, 0..3), 1u32..4)
            .prop_map(|(d, priority, outputs, replicas)| Op::Enqueue { d, priority, outputs, replicas }),
        3 => (0u8..6).prop_map(Op::Running),
        2 => (0u8..6).prop_map(Op::Done),
        1 => (0u8..6).prop_map(Op::Failed),
        1 => (0u8..6).prop_map(Op::RetryLater),
        1 => (0u8..6).prop_map(Op::Retry),
        1 => (0u8..6).prop_map(Op::Cancel),
        1 => Just(Op::RequeueInterrupted),
        3 => (0u8..16).prop_map(|id| Op::Attest { id }),
        1 => (0u64..20, 0usize..5).prop_map(|(cursor, limit)| Op::Since { cursor, limit }),
    ]
}

/// The attestation numbered `id` (same number, same content).
fn att(id: u8) -> AttestationEntry {
    attestation(id, id % 4, id % 3, &[id % 5, (id + 1) % 5])
}

#[derive(Debug, Clone, PartialEq)]
struct MBuild {
    state: BuildState,
    priority: i32,
    attempts: u32,
    outputs: BTreeSet<String>,
    replicas: u32,
    seq: u64,
    error: Option<String>,
}

#[derive(Default)]
struct Model {
    builds: BTreeMap<u8, MBuild>,
    next_build_seq: u64,
    atts: Vec<u8>, // insertion order; position = seq
}

impl Model {
    fn transition(&mut self, d: u8, from: &[BuildState], to: BuildState) -> Result<&mut MBuild, ()> {
        match self.builds.get_mut(&d) {
            Some(b) if from.contains(&b.state) => {
                b.state = to;
                Ok(b)
            }
            _ => Err(()),
        }
    }

    fn queue(&self) -> Vec<u8> {
        let mut q: Vec<(i32, u64, u8)> = self
            .builds
            .iter()
            .filter(|(_, b)| b.state == BuildState::Queued)
            .map(|(d, b)| (-b.priority, b.seq, *d))
            .collect();
        q.sort();
        q.into_iter().map(|(_, _, d)| d).collect()
    }
}

fn check_same(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let builds = store.list_builds(&BuildFilter::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut by_drv = BTreeMap::new();
    for r in builds {
        let d = (0u8..6).find(|d| drv(*d) == r.drv).expect("known drv");
        by_drv.insert(
            d,
            MBuild {
                state: r.state,
                priority: r.priority,
                attempts: r.attempts,
                outputs: r.wanted_outputs,
                replicas: r.replicas,
                seq: r.queue_seq,
                error: r.last_error,
            },
        );
    }
    prop_assert_eq!(&by_drv, &model.builds);
    let queue: Vec<StorePath> = store.queued_builds(0).expect("queue").into_iter().map(|r| r.drv).collect();
    let expected: Vec<StorePath> = model.queue().into_iter().map(drv).collect();
    prop_assert_eq!(queue, expected);

    let seqs = store.attestation_ids_since(0, 0).expect("ids");
    let expected: Vec<(u64, MessageIdAlias)> =
        model.atts.iter().enumerate().map(|(i, id)| (i as u64, att(*id).id)).collect();
    prop_assert_eq!(seqs, expected);
    for d in 0u8..4 {
        let got: BTreeSet<_> =
            store.attestations_for_drv(&drv(d)).expect("by drv").into_iter().map(|s| s.entry.id).collect();
        let want: BTreeSet<_> = model.atts.iter().map(|i| att(*i)).filter(|e| e.drv == drv(d)).map(|e| e.id).collect();
        prop_assert_eq!(got, want);
    }
    for o in 0u8..5 {
        let out = path(100 + o, &format!("out{o}"));
        let got: Vec<_> = store.attestations_for_output(&out).expect("by output");
        let got_ids: BTreeSet<_> = got.iter().map(|s| s.entry.id).collect();
        let want: BTreeSet<_> = model
            .atts
            .iter()
            .map(|i| att(*i))
            .filter(|e| e.outputs.iter().any(|x| x.path == out))
            .map(|e| e.id)
            .collect();
        prop_assert_eq!(got_ids, want);
        // Grouped by builder.
        let builders: Vec<_> = got.iter().map(|s| *s.entry.builder.as_bytes()).collect();
        let mut sorted = builders.clone();
        sorted.sort();
        prop_assert_eq!(builders, sorted);
    }
    let summary = store.attestation_summary().expect("summary");
    let mut xor = [0u8; 32];
    for id in &model.atts {
        for (a, b) in xor.iter_mut().zip(att(*id).id.as_bytes()) {
            *a ^= b;
        }
    }
    prop_assert_eq!(summary, SetSummary { count: model.atts.len() as u64, xor, next_seq: model.atts.len() as u64 });
    Ok(())
}

type MessageIdAlias = buildmesh_protocol::id::MessageId;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn builds_and_attestations_follow_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let (store, _dir) = memory_store();
        let mut m = Model::default();
        for (step, op) in ops.iter().enumerate() {
            let now = step as u64;
            match op.clone() {
                Op::Enqueue { d, priority, outputs, replicas } => {
                    let outputs: BTreeSet<String> = outputs.iter().map(|o| format!("o{o}")).collect();
                    let req = EnqueueRequest { drv: drv(d), priority, wanted_outputs: outputs.clone(), replicas };
                    let got = store.enqueue(&req, now).expect("enqueue never fails");
                    match m.builds.get_mut(&d) {
                        Some(b) => {
                            prop_assert!(matches!(got, EnqueueOutcome::Existing(_)));
                            b.priority = b.priority.max(priority);
                            b.outputs.extend(outputs);
                            b.replicas = b.replicas.max(replicas);
                        }
                        None => {
                            prop_assert!(matches!(got, EnqueueOutcome::Created(_)));
                            m.builds.insert(d, MBuild { state: BuildState::Queued, priority, attempts: 0, outputs, replicas, seq: m.next_build_seq, error: None });
                            m.next_build_seq += 1;
                        }
                    }
                }
                Op::Running(d) => {
                    let want = m.transition(d, &[BuildState::Queued], BuildState::Running).map(|b| { b.attempts += 1; });
                    prop_assert_eq!(store.mark_running(&drv(d), now).is_ok(), want.is_ok());
                }
                Op::Done(d) => {
                    let want = m.transition(d, &[BuildState::Running], BuildState::Done).map(|b| { b.error = None; });
                    prop_assert_eq!(store.mark_done(&drv(d), now).is_ok(), want.is_ok());
                }
                Op::Failed(d) => {
                    let want = m.transition(d, &[BuildState::Running], BuildState::Failed).map(|b| { b.error = Some("boom".into()); });
                    prop_assert_eq!(store.mark_failed(&drv(d), now, "boom").is_ok(), want.is_ok());
                }
                Op::RetryLater(d) => {
                    // The store takes a sequence number before checking the transition, but
                    // the transaction aborts on error, so the counter only moves on success.
                    let seq = m.next_build_seq;
                    let want = m.transition(d, &[BuildState::Running], BuildState::Queued).map(|b| { b.error = Some("later".into()); b.seq = seq; });
                    if want.is_ok() { m.next_build_seq += 1; }
                    prop_assert_eq!(store.mark_retry(&drv(d), "later", Some(now + 10)).is_ok(), want.is_ok());
                }
                Op::Retry(d) => {
                    let seq = m.next_build_seq;
                    let want = m.transition(d, &[BuildState::Failed, BuildState::Cancelled], BuildState::Queued).map(|b| { b.seq = seq; });
                    if want.is_ok() { m.next_build_seq += 1; }
                    prop_assert_eq!(store.retry(&drv(d)).is_ok(), want.is_ok());
                }
                Op::Cancel(d) => {
                    let before = m.builds.get(&d).map(|b| b.state);
                    let want = match before {
                        Some(BuildState::Cancelled) => Ok(BuildState::Cancelled),
                        Some(s @ (BuildState::Queued | BuildState::Running)) => {
                            m.transition(d, &[s], BuildState::Cancelled).map(|_| s)
                        }
                        _ => Err(()),
                    };
                    let got = store.cancel(&drv(d), now);
                    prop_assert_eq!(got.ok(), want.ok());
                }
                Op::RequeueInterrupted => {
                    let mut want = Vec::new();
                    for (d, b) in m.builds.iter_mut() {
                        if b.state == BuildState::Running {
                            b.state = BuildState::Queued;
                            want.push(drv(*d));
                        }
                    }
                    let mut got = store.requeue_interrupted().expect("requeue");
                    got.sort_by_key(|p| p.to_string());
                    want.sort_by_key(|p| p.to_string());
                    prop_assert_eq!(got, want);
                }
                Op::Attest { id } => {
                    let got = store.insert_attestation(&att(id)).expect("insert");
                    let pos = m.atts.iter().position(|x| *x == id);
                    match pos {
                        Some(p) => prop_assert_eq!(got, Inserted { new: false, seq: p as u64 }),
                        None => {
                            prop_assert_eq!(got, Inserted { new: true, seq: m.atts.len() as u64 });
                            m.atts.push(id);
                        }
                    }
                }
                Op::Since { cursor, limit } => {
                    let got: Vec<u64> = store.attestations_since(cursor, limit).expect("since").iter().map(|s| s.seq).collect();
                    let mut want: Vec<u64> = (cursor..m.atts.len() as u64).collect();
                    if limit != 0 { want.truncate(limit); }
                    prop_assert_eq!(got, want);
                }
            }
            check_same(&store, &m)?;
        }
    }
}
