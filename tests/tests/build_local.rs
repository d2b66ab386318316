//! The `local` executor end to end (run as root on Linux): the Nix vectors built from a node store
//! through `LocalExecutor` and `commit_attestation`, compared with what Nix 2.8 recorded; and the
//! failure cases (hash mismatch, missing inputs, builder failure, timeout, cancellation).

mod build_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use build_support::{Node, Vectors, make_drv, request, sd, sha256};
use buildmesh::build::attest::{commit_attestation, commit_failure};
use buildmesh::build::local::LocalExecutor;
use buildmesh::build::{BuildError, Executor};
use buildmesh_protocol::derivation::CaMethod;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Attestation, BuildMode};
use tokio_util::sync::CancellationToken;

fn key() -> NodeKey {
    NodeKey::from_seed("builder-local-1", [7; 32]).unwrap()
}

#[tokio::test]
async fn builds_every_deterministic_vector_like_nix() {
    let v = Vectors::load();
    let node = Node::new();
    v.load_into(&node.store);
    let exec = LocalExecutor::new(node.config()).unwrap();
    assert_eq!(exec.name(), "local");
    let fs = node.config().store_fs;
    let order = v.in_dependency_order(&v.deterministic());
    assert!(!order.is_empty());
    let (mut outputs, mut fixed, mut multi) = (0, 0, 0);
    let t = Instant::now();
    for drv_path in &order {
        let (name, drv) = &v.drvs[drv_path];
        let report = match exec.build(request(drv_path, drv), CancellationToken::new()).await {
            Ok(r) => r,
            Err(e) => panic!("{name}: {e}\n{}", String::from_utf8_lossy(e.log())),
        };
        assert!(!report.emulated);
        assert!(report.finished_at_ms >= report.started_at_ms);
        let committed = commit_attestation(&node.store, &key(), &sd(), drv_path, &report).unwrap();
        assert_eq!(committed.message.outputs.len(), drv.outputs.len(), "{name}");
        fixed += usize::from(drv.is_fixed_output());
        multi += usize::from(drv.outputs.len() > 1);
        for (out, built) in &report.outputs {
            let want = &v.nars[&built.path];
            let what = format!("{name}.{out}");
            assert_eq!(built.nar_hash, want.nar_hash, "{what}: NarHash differs from Nix's");
            assert_eq!(built.nar_size, want.nar_size, "{what}: NarSize");
            assert_eq!(built.references, want.references, "{what}: references");
            let info = node.store.path_info(&built.path).unwrap().unwrap();
            assert_eq!(
                (&info.nar_hash, info.nar_size, &info.references),
                (&want.nar_hash, want.nar_size, &want.references)
            );
            assert_eq!(info.blob, built.content_id);
            assert!(info.deriver.is_some(), "{what}");
            assert_eq!(info.ca, v.recorded_ca(&built.path).filter(|_| drv.is_fixed_output()), "{what}: CA");
            // Installed in DATA/store with the registered content.
            let (hash, size) = buildmesh::nar_fs::nar_hash_path(&fs.path_of(&built.path)).unwrap();
            assert_eq!((hash, size), (want.nar_hash.clone(), want.nar_size), "{what}: realised copy");
            outputs += 1;
        }
        // The committed attestation verifies offline and matches the report.
        let stored = node.store.attestations_for_drv(drv_path).unwrap();
        let att = Envelope::decode(&stored[0].entry.envelope).unwrap().verify_as::<Attestation>().unwrap();
        assert_eq!(att.mode, BuildMode::Native);
        assert_eq!(*att.signer(), key().node_id());
        assert!(node.store.get_log(drv_path).unwrap().is_some());
    }
    eprintln!(
        "built {} derivations ({outputs} outputs; {fixed} fixed-output, {multi} multi-output) in {:?}",
        order.len(),
        t.elapsed()
    );
    assert!(fixed > 0 && multi > 0, "the vectors have fixed-output and multi-output derivations");
    assert_eq!(node.builds_dir_entries(), 0, "every build dir is removed");
}

#[tokio::test]
async fn fixed_output_hash_mismatch_registers_nothing() {
    let node = Node::new();
    let exec = LocalExecutor::new(node.config()).unwrap();
    let wrong = sha256(b"not what the builder writes");
    let (drv_path, drv) =
        make_drv(&node.store, "wrong-hash", "echo hi > $out", Some((CaMethod::Flat, wrong.clone())), &[], &[]);
    let out = drv.outputs["out"].path.clone().unwrap();
    match exec.build(request(&drv_path, &drv), CancellationToken::new()).await {
        Err(BuildError::HashMismatch { output, expected, actual, .. }) => {
            assert_eq!((output.as_str(), &expected, &actual), ("out", &wrong, &sha256(b"hi\n")));
        }
        other => panic!("{other:?}"),
    }
    assert!(node.store.path_info(&out).unwrap().is_none());
    assert!(!node.config().store_fs.is_realised(&out));
    assert_eq!(node.store.list_blobs(None, 0).unwrap().len(), 0, "no blob is stored for a mismatching output");
    assert_eq!(node.builds_dir_entries(), 0);

    // The right hash builds, in both modes, and records Nix's CA.
    let (drv_path, drv) =
        make_drv(&node.store, "right-hash", "echo hi > $out", Some((CaMethod::Flat, sha256(b"hi\n"))), &[], &[]);
    let report = exec.build(request(&drv_path, &drv), CancellationToken::new()).await.unwrap();
    let info = node.store.path_info(&report.outputs["out"].path).unwrap().unwrap();
    assert_eq!(info.ca.unwrap(), format!("fixed:{}", sha256(b"hi\n")));
    // A fixed output must not refer to store paths.
    let refers = format!("echo {} > $out", sd().display(&report.outputs["out"].path));
    let nar_of_file = |s: &str| {
        buildmesh_protocol::nar::tree::Node::Regular { executable: false, contents: s.as_bytes().to_vec() }
            .to_nar()
            .unwrap()
    };
    let contents = format!("{}\n", sd().display(&report.outputs["out"].path));
    let (drv_path, drv) = make_drv(
        &node.store,
        "refers",
        &refers,
        Some((CaMethod::Nar, sha256(&nar_of_file(&contents)))),
        &[report.outputs["out"].path.clone()],
        &[],
    );
    match exec.build(request(&drv_path, &drv), CancellationToken::new()).await {
        Err(BuildError::OutputRejected { reason, .. }) => {
            assert!(reason.contains("illegal path references"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn missing_inputs_are_named() {
    let node = Node::new();
    let exec = LocalExecutor::new(node.config()).unwrap();
    let ghost = StorePath::from_basename("0l9jkh2syydr3gbsw3zpf2z5bs131mmb-not-here").unwrap();
    let (drv_path, drv) =
        make_drv(&node.store, "needs-ghost", "cat $src > $out", None, std::slice::from_ref(&ghost), &[]);
    match exec.build(request(&drv_path, &drv), CancellationToken::new()).await {
        Err(BuildError::MissingInput { path }) => assert_eq!(path, ghost),
        other => panic!("{other:?}"),
    }
    // An input derivation whose output is not built yet: the output path is missing.
    let (dep_path, dep) = make_drv(&node.store, "dep", "echo dep > $out", None, &[], &[]);
    let (drv_path, drv) =
        make_drv(&node.store, "needs-dep", "cat $dep > $out", None, &[], &[(dep_path.clone(), "out")]);
    match exec.build(request(&drv_path, &drv), CancellationToken::new()).await {
        Err(e @ BuildError::MissingInput { .. }) => {
            assert!(e.is_transient());
            let BuildError::MissingInput { path } = e else { unreachable!() };
            assert_eq!(Some(path), dep.outputs["out"].path.clone());
        }
        other => panic!("{other:?}"),
    }
    // Once the dependency is built, the dependent builds and refers to it.
    let dep_report = exec.build(request(&dep_path, &dep), CancellationToken::new()).await.unwrap();
    let dep_out = dep_report.outputs["out"].path.clone();
    let (drv_path, drv) = make_drv(
        &node.store,
        "uses-dep",
        &format!("echo {} > $out", sd().display(&dep_out)),
        None,
        &[],
        &[(dep_path, "out")],
    );
    let r = exec.build(request(&drv_path, &drv), CancellationToken::new()).await.unwrap();
    assert_eq!(r.outputs["out"].references, BTreeSet::from([dep_out]));
    // A missing input derivation is named too.
    let store2 = Node::new();
    let exec2 = LocalExecutor::new(store2.config()).unwrap();
    match exec2.build(request(&drv_path, &drv), CancellationToken::new()).await {
        Err(BuildError::MissingInput { path }) => assert!(path.is_derivation(), "{path}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn failures_register_nothing() {
    let node = Node::new();
    let exec = LocalExecutor::new(node.config()).unwrap();
    let before = node.store.path_count().unwrap();

    let (p, d) = make_drv(&node.store, "fails", "echo partial > $out; echo oops >&2; exit 3", None, &[], &[]);
    let err = exec.build(request(&p, &d), CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, BuildError::BuilderExit { code: 3, .. }), "{err:?}");
    assert_eq!(err.log(), b"oops\n");
    let c = commit_failure(&node.store, &key(), &sd(), &p, 1, &err, 5).unwrap();
    assert!(c.inserted.new);
    assert_eq!(node.store.get_log(&p).unwrap().unwrap(), b"oops\n");

    let (p, d) = make_drv(&node.store, "no-output", "true", None, &[], &[]);
    let err = exec.build(request(&p, &d), CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, BuildError::OutputMissing { ref output, .. } if output == "out"), "{err:?}");

    let (p, d) = make_drv(&node.store, "slow", "echo start; sleep 987654", None, &[], &[]);
    let mut req = request(&p, &d);
    req.timeout = Some(Duration::from_millis(700));
    let t = Instant::now();
    let err = exec.build(req, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, BuildError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient() && t.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(err.log()).starts_with("start\n"));

    assert_eq!(node.store.path_count().unwrap(), before);
    assert_eq!(node.builds_dir_entries(), 0);
}

#[tokio::test]
async fn cancellation_stops_the_build() {
    let node = Node::new();
    let exec = LocalExecutor::new(node.config()).unwrap();
    let (p, d) =
        make_drv(&node.store, "forever", "trap '' TERM; sleep 987655 & sleep 987655; echo x > $out", None, &[], &[]);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c2.cancel();
    });
    let t = Instant::now();
    let err = exec.build(request(&p, &d), cancel.clone()).await.unwrap_err();
    assert!(matches!(err, BuildError::Cancelled), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Nothing registered, nothing left running, work dir gone.
    assert!(node.store.path_info(d.outputs["out"].path.as_ref().unwrap()).unwrap().is_none());
    assert_eq!(node.builds_dir_entries(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("987655"))
        })
    };
    while running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!running(), "the builder survived cancellation");
    // An already-cancelled token does not start anything.
    let err = exec.build(request(&p, &d), cancel).await.unwrap_err();
    assert!(matches!(err, BuildError::Cancelled));
}

#[tokio::test]
async fn leftovers_of_a_crash_are_removed_at_start() {
    let node = Node::new();
    let builds = node.dir.path().join("builds/abc-123/store");
    std::fs::create_dir_all(&builds).unwrap();
    std::fs::write(builds.join("junk"), "x").unwrap();
    let tmp = node.dir.path().join("store/.tmp-1-1-abc");
    std::fs::create_dir_all(&tmp).unwrap();
    let _exec = LocalExecutor::new(node.config()).unwrap();
    assert_eq!(node.builds_dir_entries(), 0);
    assert!(!tmp.exists());
}
