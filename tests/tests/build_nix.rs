//! The `nix` executor end to end with the host's Nix 2.8 (run as root, single-user `/nix/store`):
//! a representative subset of the vectors, chosen by kind (fixed-output flat and recursive, with
//! inputs, multi-output, the deepest chain, input sources, structured attrs, passAsFile, a
//! self-reference), gives the NAR hashes Nix recorded; failures map to typed errors.

mod build_support;

use std::time::{Duration, Instant};

use build_support::{Node, Vectors, make_drv, request, sd, sha256};
use buildmesh::build::attest::commit_attestation;
use buildmesh::build::nix::NixExecutor;
use buildmesh::build::{BuildError, Executor, ExecutorSetupError};
use buildmesh_protocol::derivation::{CaMethod, Derivation, OutputHash};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use tokio_util::sync::CancellationToken;

fn depth(v: &Vectors, p: &StorePath) -> usize {
    1 + v.drvs[p].1.input_drvs.keys().map(|i| depth(v, i)).max().unwrap_or(0)
}

/// One derivation of each kind that matters to the executor (by property, not by name).
fn representative(v: &Vectors) -> Vec<StorePath> {
    let det = v.deterministic();
    let d = |p: &StorePath| -> &Derivation { &v.drvs[p].1 };
    let fixed_method = |p: &StorePath| match d(p).outputs.get("out").map(|o| &o.hash) {
        Some(OutputHash::Fixed { method, hash }) => Some((*method, hash.algo())),
        _ => None,
    };
    type Kind<'a> = Box<dyn Fn(&StorePath) -> bool + 'a>;
    let kinds: Vec<Kind<'_>> = vec![
        Box::new(|p| fixed_method(p).is_some_and(|(m, _)| m == CaMethod::Flat)),
        Box::new(|p| fixed_method(p).is_some_and(|(m, a)| m == CaMethod::Nar && a.name() != "sha256")),
        Box::new(|p| fixed_method(p).is_some() && !d(p).input_drvs.is_empty()),
        Box::new(|p| d(p).outputs.len() >= 3),
        Box::new(|p| d(p).input_drvs.values().any(|o| !o.contains("out"))),
        Box::new(|p| !d(p).input_srcs.is_empty() && fixed_method(p).is_none()),
        Box::new(|p| d(p).has_structured_attrs()),
        Box::new(|p| d(p).env.contains_key(b"passAsFile".as_slice())),
        Box::new(|p| {
            d(p).outputs.values().any(|o| o.path.as_ref().is_some_and(|op| v.nars[op].references.contains(op)))
        }),
    ];
    let mut picked: Vec<StorePath> = kinds.iter().filter_map(|k| det.iter().find(|p| k(p)).cloned()).collect();
    if let Some(deepest) = det.iter().max_by_key(|p| depth(v, p)) {
        picked.push(deepest.clone());
    }
    picked.sort();
    picked.dedup();
    picked
}

fn key() -> NodeKey {
    NodeKey::from_seed("builder-nix-1", [8; 32]).unwrap()
}

#[tokio::test]
async fn nix_builds_a_representative_subset_like_nix() {
    let v = Vectors::load();
    let roots = representative(&v);
    assert!(roots.len() >= 6, "{roots:?}");
    let order = v.in_dependency_order(&roots);
    let node = Node::new();
    v.load_into(&node.store);
    let exec = NixExecutor::new(nix_config(&node)).unwrap();
    assert_eq!(exec.name(), "nix");
    let t = Instant::now();
    let mut outputs = 0;
    for drv_path in &order {
        let (name, drv) = &v.drvs[drv_path];
        let report = match exec.build(request(drv_path, drv), CancellationToken::new()).await {
            Ok(r) => r,
            Err(e) => panic!("{name}: {e}\n{}", String::from_utf8_lossy(e.log())),
        };
        for (out, built) in &report.outputs {
            let want = &v.nars[&built.path];
            assert_eq!(built.nar_hash, want.nar_hash, "{name}.{out}: NarHash differs from Nix's recorded one");
            assert_eq!(built.nar_size, want.nar_size, "{name}.{out}");
            assert_eq!(built.references, want.references, "{name}.{out}: references");
            let info = node.store.path_info(&built.path).unwrap().unwrap();
            assert_eq!(info.ca, v.recorded_ca(&built.path).filter(|_| drv.is_fixed_output()), "{name}.{out}: CA");
            outputs += 1;
        }
        commit_attestation(&node.store, &key(), &sd(), drv_path, &report).unwrap();
    }
    eprintln!("nix executor: {} derivations, {outputs} outputs in {:?}", order.len(), t.elapsed());
    assert_eq!(node.builds_dir_entries(), 0);

    // A second node with the same host store: the outputs are valid there already, so the
    // executor rebuilds with --check and still reports (and registers) the same NARs.
    let node2 = Node::new();
    v.load_into(&node2.store);
    let exec2 = NixExecutor::new(nix_config(&node2)).unwrap();
    let first = &order[0];
    let dep_free: Vec<&StorePath> = order.iter().filter(|p| v.drvs[*p].1.input_drvs.is_empty()).collect();
    assert!(dep_free.contains(&first));
    let report = exec2.build(request(first, &v.drvs[first].1), CancellationToken::new()).await.unwrap();
    for built in report.outputs.values() {
        assert_eq!(built.nar_hash, v.nars[&built.path].nar_hash);
        assert!(node2.store.path_info(&built.path).unwrap().is_some());
    }
}

#[tokio::test]
async fn nix_failures_are_typed() {
    let node = Node::new();
    let exec = NixExecutor::new(nix_config(&node)).unwrap();
    let salt = format!("{}", std::process::id());

    let wrong = sha256(format!("nope {salt}").as_bytes());
    let (p, d) =
        make_drv(&node.store, "nix-wrong-hash", "echo hi > $out", Some((CaMethod::Flat, wrong.clone())), &[], &[]);
    match exec.build(request(&p, &d), CancellationToken::new()).await {
        Err(BuildError::HashMismatch { output, expected, actual, .. }) => {
            assert_eq!((output.as_str(), expected, actual), ("out", wrong, sha256(b"hi\n")))
        }
        other => panic!("{other:?}"),
    }
    assert!(node.store.path_info(d.outputs["out"].path.as_ref().unwrap()).unwrap().is_none());

    let (p, d) = make_drv(&node.store, "nix-fails", &format!("echo failing {salt} >&2; exit 3"), None, &[], &[]);
    let err = exec.build(request(&p, &d), CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, BuildError::BuilderExit { code: 3, .. }), "{err:?}");
    assert!(String::from_utf8_lossy(err.log()).contains(&format!("failing {salt}")));

    let (p, d) = make_drv(&node.store, "nix-no-output", &format!("echo {salt}"), None, &[], &[]);
    let err = exec.build(request(&p, &d), CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, BuildError::OutputMissing { .. } | BuildError::BuilderExit { .. }), "{err:?}");

    let (p, d) = make_drv(&node.store, "nix-slow", &format!("sleep 98765{}", salt.len()), None, &[], &[]);
    let mut req = request(&p, &d);
    req.timeout = Some(Duration::from_secs(1));
    let err = exec.build(req, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, BuildError::Timeout { .. }), "{err:?}\n{}", String::from_utf8_lossy(err.log()));

    // Cancellation stops nix-store and its builder.
    let marker = format!("987656{salt}");
    let (p, d) = make_drv(&node.store, "nix-forever", &format!("sleep {marker}"), None, &[], &[]);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        c2.cancel();
    });
    let t = Instant::now();
    let err = exec.build(request(&p, &d), cancel).await.unwrap_err();
    assert!(matches!(err, BuildError::Cancelled), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(15));
    let running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!running(), "the builder survived cancellation");

    // A missing input is found before Nix runs.
    let ghost = StorePath::from_basename("0l9jkh2syydr3gbsw3zpf2z5bs131mmb-not-here").unwrap();
    let (p, d) = make_drv(&node.store, "nix-needs-ghost", "cat $src > $out", None, std::slice::from_ref(&ghost), &[]);
    match exec.build(request(&p, &d), CancellationToken::new()).await {
        Err(BuildError::MissingInput { path }) => assert_eq!(path, ghost),
        other => panic!("{other:?}"),
    }
    assert_eq!(node.builds_dir_entries(), 0);
}

/// The executor config with the operator's opt-in to the host Nix's weaker isolation.
fn nix_config(node: &Node) -> buildmesh::build::ExecutorConfig {
    let mut c = node.config();
    c.sandbox.allow_unsafe_nix_executor = true;
    c
}

#[test]
fn nix_executor_refuses_to_start_without_the_opt_in() {
    let node = Node::new();
    match NixExecutor::new(node.config()) {
        Err(ExecutorSetupError::Unusable(m)) => {
            assert!(m.contains("allow_unsafe_nix_executor") && m.contains("sandbox = false"), "{m}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn nix_executor_needs_the_nix_store() {
    let node = Node::new();
    let mut config = nix_config(&node);
    config.store_dir = StoreDir::guix();
    match NixExecutor::new(config) {
        Err(ExecutorSetupError::Unusable(m)) => assert!(m.contains("/nix/store") && m.contains("/gnu/store"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let mut config = nix_config(&node);
    config.nix_bin_dir = Some("/nonexistent".into());
    assert!(matches!(NixExecutor::new(config), Err(ExecutorSetupError::Unusable(_))));
}
