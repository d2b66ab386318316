//! `buildmesh submit` run as the real binary against an in-process node endpoint (the submit
//! router on a real store, plus a stand-in for the builds API driven by a fake builder), with the
//! Nix vectors and with derivations instantiated by a real `nix-instantiate`.

mod submit_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildmesh::store::Store;
use buildmesh::submit::{SubmitLimits, router};
use buildmesh_protocol::derivation::Derivation;
use submit_support::*;

fn submit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_buildmesh-under-test"))
        .arg("submit")
        .args(args)
        .output()
        .expect("run buildmesh submit")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A node endpoint: submit router + builds API stand-in, and a fake builder running in a thread.
struct Node {
    store: Store,
    server: Server,
    stop: Arc<AtomicBool>,
    builder: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(limits: SubmitLimits, fail: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let built: Built = Arc::new(Mutex::new(Default::default()));
        let app = router(context(&store, limits)).merge(builds_stub(&store, &built));
        let server = Server::start(app);
        let stop = Arc::new(AtomicBool::new(false));
        let fake = FakeBuilder { store: store.clone(), built, fail: fail.iter().map(|s| s.to_string()).collect() };
        let stop2 = stop.clone();
        let builder = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                fake.step();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Node { store, server, stop, builder: Some(builder), _dir: dir }
    }

    fn url(&self) -> String {
        self.server.url()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = self.builder.take() {
            let _ = b.join();
        }
    }
}

/// What `--wait --json` must print for the vector drvs `drvs` (store paths): their outputs with
/// the vectors' NarHashes.
fn expected_outputs(drvs: &[&str]) -> serde_json::Value {
    let g = DrvGraph::load();
    let mut doc = serde_json::Map::new();
    for d in drvs {
        let mut outs = serde_json::Map::new();
        for (o, p) in g.get(d).outputs() {
            let row = g.nar(&p);
            outs.insert(o, serde_json::json!({"path": p, "nar_hash": row.nar_hash, "nar_size": row.nar_size}));
        }
        doc.insert(d.to_string(), serde_json::Value::Object(outs));
    }
    serde_json::Value::Object(doc)
}

/// `buildmesh submit --api URL --from <vector drvs> --wait --json` (fast polling, 60 s) of `drvs`.
fn submit_wait_json(url: &str, drvs: &[&str]) -> Output {
    let dir = drv_dir();
    let mut args = vec![
        "--api",
        url,
        "--from",
        dir.to_str().unwrap(),
        "--wait",
        "--json",
        "--poll-interval",
        "0.05",
        "--timeout",
        "60",
    ];
    args.extend_from_slice(drvs);
    submit(&args)
}

#[test]
fn from_dir_wait_json_prints_the_outputs() {
    let node = Node::start(SubmitLimits::default(), &[]);
    // The root of the longest chain by store path, and a diamond by its .drv file.
    let g = DrvGraph::load();
    let s5 = g.chain()[0].clone();
    let (diamond, _) = g.diamond();
    let bottom = drv_file(&diamond);
    let o = submit_wait_json(&node.url(), &[&s5, bottom.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(got, expected_outputs(&[&s5, &diamond]));
    assert!(o.stderr.is_empty(), "no progress bars when not on a terminal: {}", stderr(&o));

    // Submitting again: already built, answered from the submit response.
    let o = submit(&["--api", &node.url(), "--from", drv_dir().to_str().unwrap(), "--wait", "--json", &s5]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got, expected_outputs(&[&s5]));
}

#[test]
fn wait_reports_a_failed_input_and_exits_non_zero() {
    // A chain s5 -> ... -> s3 -> ... -> s1: s3 (in the middle) fails, s1 (the bottom) builds.
    let chain = DrvGraph::load().chain();
    let s3 = chain[(chain.len() - 1) / 2].clone();
    let (s5, s1) = (chain[0].clone(), chain[chain.len() - 1].clone());
    let node = Node::start(SubmitLimits::default(), &[&s3]);
    let o = submit_wait_json(&node.url(), &[&s5, &s1]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("build of {s5} failed")), "{err}");
    assert!(err.contains(&s3) && err.contains("builder failed with exit status 1"), "{err}");
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(got, expected_outputs(&[&s1]), "the successful build is still printed");
}

#[test]
fn without_wait_the_node_answer_is_printed() {
    let node = Node::start(SubmitLimits::default(), &[]);
    node.stop.store(true, Ordering::Relaxed); // nothing gets built
    let g = DrvGraph::load();
    let d = g.most_sources();
    let (drvs, sources) = (g.closure(&d).len(), g.source_closure(&[&d]).len());
    let o = submit(&["--api", &node.url(), "--from", drv_dir().to_str().unwrap(), "--json", &d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["accepted"], serde_json::json!([d]));
    assert_eq!(v["queued"], drvs);
    assert_eq!(v["sources_registered"], sources);

    let o = submit(&["--api", &node.url(), "--from", drv_dir().to_str().unwrap(), &d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = format!("accepted 1 derivation(s): {drvs} build(s) queued, 0 already built");
    assert!(stdout(&o).starts_with(&want), "{}", stdout(&o));
}

/// A directory with renamed .drv files and source NARs named after their store paths (no index).
#[test]
fn dir_with_renamed_drvs_and_store_path_named_nars() {
    let node = Node::start(SubmitLimits::default(), &[]);
    node.stop.store(true, Ordering::Relaxed);
    let tmp = tempfile::tempdir().unwrap();
    // A derivation without input derivations with a source that refers to another source.
    let (d, _) = DrvGraph::load().source_with_referrer();
    std::fs::copy(drv_file(&d), tmp.path().join("whatever.drv")).unwrap();
    std::fs::write(tmp.path().join("junk.drv"), b"not a derivation").unwrap();
    let chain = vector_closure(&[&d]);
    for s in chain.sources.values() {
        let row = &nar_index()[&sd().display(&s.path)];
        std::fs::copy(row.file(), tmp.path().join(format!("{}.nar", s.path))).unwrap();
    }
    let o = submit(&["--api", &node.url(), "--from", tmp.path().to_str().unwrap(), "--json", &d]);
    assert!(o.status.success(), "{}", stderr(&o));
    for s in chain.sources.values() {
        let info = node.store.path_info(&s.path).unwrap().expect("source registered");
        let row = &nar_index()[&sd().display(&s.path)];
        assert_eq!(info.nar_hash.to_string(), row.nar_hash);
        let refs: Vec<String> = info.references.iter().map(|r| sd().display(r)).collect();
        assert_eq!(refs, row.references, "references found by scanning the NAR");
        assert_eq!(info.ca, narinfo_ca(&row.path));
    }
    // The file can be named on the command line too.
    let o = submit(&[
        "--api",
        &node.url(),
        "--from",
        tmp.path().to_str().unwrap(),
        "--json",
        tmp.path().join("whatever.drv").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn client_side_errors_name_the_missing_path() {
    let tmp = tempfile::tempdir().unwrap();
    // A derivation without its input derivations.
    let g = DrvGraph::load();
    let (dep, _) = g.dependent();
    std::fs::copy(drv_file(&dep), tmp.path().join("s2.drv")).unwrap();
    let o = submit(&["--api", "http://127.0.0.1:9", "--from", tmp.path().to_str().unwrap(), &dep]);
    assert!(!o.status.success());
    assert!(g.inputs(&dep).iter().any(|i| stderr(&o).contains(i)), "names an input of {dep}: {}", stderr(&o));

    // A source that is nowhere.
    let with_src = g.with_sources();
    std::fs::copy(drv_file(&with_src), tmp.path().join("f.drv")).unwrap();
    let o = submit(&[
        "--api",
        "http://127.0.0.1:9",
        "--from",
        tmp.path().to_str().unwrap(),
        "--sources",
        tmp.path().to_str().unwrap(),
        &with_src,
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs source /nix/store/"), "{}", stderr(&o));

    // No node listening.
    let o = submit(&["--api", "http://127.0.0.1:9", "--from", drv_dir().to_str().unwrap(), &g.leaf()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("POST http://127.0.0.1:9/api/v1/submit"), "{}", stderr(&o));
}

#[test]
fn node_rejection_is_reported() {
    let node = Node::start(SubmitLimits { max_header_bytes: 64, ..SubmitLimits::default() }, &[]);
    let o = submit(&["--api", &node.url(), "--from", drv_dir().to_str().unwrap(), &DrvGraph::load().leaf()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("rejected the submission (413)") && err.contains("more than the limit of 64"), "{err}");
}

fn nix(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} is not installed: {e}"));
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn local_store_derivation_is_uploaded_with_its_closure() {
    let node = Node::start(SubmitLimits::default(), &[]);
    node.stop.store(true, Ordering::Relaxed);
    let tmp = tempfile::tempdir().unwrap();
    let expr = tmp.path().join("tiny.nix");
    std::fs::write(
        &expr,
        r#"
let
  lib = builtins.toFile "submit-test-lib.sh" "greet() { echo hello from buildmesh submit; }";
  main = builtins.toFile "submit-test-main.sh" ". ${lib}; greet > $out";
  dep = derivation { name = "submit-test-dep"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo dep > $out" ]; };
in derivation {
  name = "submit-test-top"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ main ]; inherit dep;
}
"#,
    )
    .unwrap();
    let drv = nix("nix-instantiate", &[expr.to_str().unwrap()]);
    assert!(drv.starts_with("/nix/store/") && drv.ends_with("-submit-test-top.drv"), "{drv}");
    let o = submit(&["--api", &node.url(), "--json", &drv]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["accepted"], serde_json::json!([drv]));
    assert_eq!(v["queued"], 2, "top and dep");

    // Every .drv of the closure stored byte for byte.
    let requisites = nix("nix-store", &["--query", "--requisites", &drv]);
    let mut drvs = 0;
    let mut sources = BTreeSet::new();
    for p in requisites.lines() {
        let sp = sd().parse_path(p).unwrap();
        if sp.is_derivation() {
            assert_eq!(node.store.get_drv(&sp).unwrap().expect("drv stored"), std::fs::read(p).unwrap(), "{p}");
            drvs += 1;
        } else {
            sources.insert(p.to_string());
        }
    }
    assert_eq!(drvs, 2);
    assert_eq!(sources.len(), 2, "the two toFile scripts");
    for p in &sources {
        let info = node.store.path_info(&sd().parse_path(p).unwrap()).unwrap().expect("source registered");
        assert_eq!(info.nar_hash.to_string(), nix("nix-store", &["--query", "--hash", p]), "{p}");
        let refs: Vec<String> = info.references.iter().map(|r| sd().display(r)).collect();
        let want: Vec<String> = nix("nix-store", &["--query", "--references", p]).lines().map(String::from).collect();
        assert_eq!(refs, want, "{p}");
        assert!(info.ca.as_deref().is_some_and(|c| c.starts_with("text:sha256:")), "{p}: {:?}", info.ca);
        let mut nar = Vec::new();
        std::io::Read::read_to_end(&mut node.store.open_nar(&info.blob).unwrap(), &mut nar).unwrap();
        assert_eq!(nar, buildmesh::nar_fs::dump_path(Path::new(p), Vec::new()).unwrap());
    }
    // The basename works as an argument too.
    let base = drv.rsplit('/').next().unwrap();
    let o = submit(&["--api", &node.url(), "--json", base]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Upload throughput of `buildmesh submit` (client, HTTP, spooling, hashing, blob store) for one
/// large source NAR. Run with
/// `cargo test --release -p buildmesh-tests --test submit_cli -- --ignored --nocapture bench_upload`
/// (`BENCH_MIB` sets the size, default 256).
#[test]
#[ignore = "benchmark: upload throughput, run in release with --ignored --nocapture"]
fn bench_upload() {
    use buildmesh_protocol::derivation::{DrvSet, Output};
    use buildmesh_protocol::hash::NixHash;
    use buildmesh_protocol::store_path::make_store_path;

    let mib: usize = std::env::var("BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = vec![0u8; mib << 20];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(tree.join("blob"), &data).unwrap();
    drop(data);
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    let nar = buildmesh::nar_fs::dump_path(&tree, Vec::new()).unwrap();
    let sha = NixHash::sha256_of(&nar);
    let digest: [u8; 32] = sha.digest().try_into().unwrap();
    let src = make_store_path(&sd(), "source", &digest, "bench-src").unwrap();
    std::fs::write(dir.join(format!("{src}.nar")), &nar).unwrap();
    let nar_len = nar.len();
    drop(nar);
    let mut drv = Derivation::default();
    drv.outputs.insert("out".into(), Output::input_addressed(None));
    drv.input_srcs.insert(src);
    drv.system = b"x86_64-linux".to_vec();
    drv.builder = b"/bin/sh".to_vec();
    for (k, v) in [("name", "bench"), ("builder", "/bin/sh"), ("system", "x86_64-linux"), ("out", "")] {
        drv.env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    }
    DrvSet::new(sd()).fill_in(&mut drv, "bench").unwrap();
    std::fs::write(dir.join("bench.drv"), drv.to_aterm(&sd())).unwrap();

    let node = Node::start(SubmitLimits::default(), &[]);
    node.stop.store(true, Ordering::Relaxed);
    let t = std::time::Instant::now();
    let o = submit(&[
        "--api",
        &node.url(),
        "--from",
        dir.to_str().unwrap(),
        "--json",
        dir.join("bench.drv").to_str().unwrap(),
    ]);
    let secs = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    println!("{:<34} {:>10} {:>9} {:>8}", "buildmesh submit (1 source NAR)", "NAR MiB", "seconds", "MiB/s");
    println!(
        "{:<34} {:>10.1} {:>9.2} {:>8.1}",
        "",
        nar_len as f64 / 1048576.0,
        secs,
        nar_len as f64 / 1048576.0 / secs
    );
}
