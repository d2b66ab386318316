//! Crash test of the node's store with a real `kill -9`.
//!
//! The parent test re-runs this test binary as a child (selecting [`crash_child`] through an
//! environment variable). The child writes blobs, paths, derivations, builds and attestations in a
//! loop and prints a line after each operation returns (= committed). The parent SIGKILLs it at a
//! random moment, reopens the store and checks that everything the child reported is present and
//! intact, that every blob hashes to its name, and that multi-row transactions are all-or-nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buildmesh::store::{AttestationEntry, AttestedOutput, BuildState, EnqueueRequest, PathInfo, Store};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::{MessageId, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::StorePath;

const CHILD_DIR_ENV: &str = "BUILDMESH_STORE_CRASH_DIR";
const CHILD_START_ENV: &str = "BUILDMESH_STORE_CRASH_START";

/// Deterministic, compressible bytes for item `i`.
fn nar_bytes(i: u64) -> Vec<u8> {
    let len = if i.is_multiple_of(8) { 2 << 20 } else { 10_000 + (i as usize * 7919) % 300_000 };
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(b'a' + (x % 16) as u8);
    }
    out
}

fn out_path(i: u64) -> StorePath {
    let mut d = [0u8; 20];
    d[..8].copy_from_slice(&i.to_le_bytes());
    StorePath::new(d, &format!("out-{i}")).expect("valid name")
}

fn drv_path(i: u64) -> StorePath {
    let mut d = [1u8; 20];
    d[..8].copy_from_slice(&i.to_le_bytes());
    StorePath::new(d, &format!("pkg-{i}.drv")).expect("valid name")
}

fn builder() -> NodeId {
    NodeKey::from_seed("crash", [7; 32]).expect("key").node_id()
}

fn attestation(i: u64, nar_hash: NixHash, nar_size: u64) -> AttestationEntry {
    AttestationEntry {
        id: MessageId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()),
        drv: drv_path(i),
        builder: builder(),
        outputs: vec![AttestedOutput { path: out_path(i), nar_hash, nar_size }],
        received_at: i,
        envelope: i.to_le_bytes().repeat(8),
    }
}

fn say(line: String) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // If the parent is gone there is nobody to tell; the loop ends at the next kill anyway.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Child mode: runs only when the parent test sets the environment variables; otherwise it returns
/// at once (it is the child's entry point, not a test of its own).
#[test]
fn crash_child() {
    let (Ok(dir), Ok(start)) = (std::env::var(CHILD_DIR_ENV), std::env::var(CHILD_START_ENV)) else { return };
    let start: u64 = start.parse().expect("start index");
    let store = Store::open(&dir).expect("child opens the store");
    say("READY".to_string());
    for i in start.. {
        let nar = nar_bytes(i);
        let blob = store.put_nar(&mut nar.as_slice()).expect("put_nar");
        say(format!("BLOB {i} {}", blob.blake3));
        let info = PathInfo {
            path: out_path(i),
            nar_hash: blob.nar_hash.clone(),
            nar_size: blob.nar_size,
            references: BTreeSet::new(),
            deriver: Some(drv_path(i)),
            ca: None,
            blob: blob.blake3,
            registered_at: i,
        };
        store
            .write(|w| {
                w.put_drv(&drv_path(i), format!("Derive({i})").as_bytes())?;
                w.register_path(&info)?;
                w.enqueue(
                    &EnqueueRequest {
                        drv: drv_path(i),
                        priority: (i % 5) as i32,
                        wanted_outputs: BTreeSet::new(),
                        replicas: 2,
                    },
                    i,
                )?;
                w.insert_attestation(&attestation(i, blob.nar_hash.clone(), blob.nar_size))?;
                Ok(())
            })
            .expect("closure transaction");
        say(format!("TXN {i}"));
        store.mark_running(&drv_path(i), i).expect("mark_running");
        say(format!("RUN {i}"));
        if i.is_multiple_of(3) {
            store.mark_done(&drv_path(i), i).expect("mark_done");
            say(format!("DONE {i}"));
        }
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

#[derive(Default, Debug)]
struct Reported {
    blobs: BTreeMap<u64, String>,
    txns: BTreeSet<u64>,
    running: BTreeSet<u64>,
    done: BTreeSet<u64>,
}

fn parse(lines: &[String]) -> Reported {
    let mut r = Reported::default();
    for line in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["BLOB", i, id] => {
                r.blobs.insert(i.parse().expect("index"), id.to_string());
            }
            ["TXN", i] => {
                r.txns.insert(i.parse().expect("index"));
            }
            ["RUN", i] => {
                r.running.insert(i.parse().expect("index"));
            }
            ["DONE", i] => {
                r.done.insert(i.parse().expect("index"));
            }
            _ => {}
        }
    }
    r
}

/// Run the child, let it commit at least `min_lines` records, then SIGKILL it after `extra` more.
fn run_child_and_kill(dir: &std::path::Path, start: u64, min_lines: usize, extra: Duration) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", "crash_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_START_ENV, start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = child.stdout.take().expect("stdout");
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill has no newline: it was not fully reported.
                    Ok(_) if line.ends_with('\n') => {
                        lines.lock().expect("lock").push(line.trim_end().to_string());
                    }
                    Ok(_) => break,
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = lines.lock().expect("lock").iter().filter(|l| l.starts_with("TXN") || l.starts_with("BLOB")).count();
        if n >= min_lines {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("child exited early with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "child made no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(extra);
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap child");
    reader.join().expect("reader thread");
    lines.lock().expect("lock").clone()
}

fn check(store: &Store, reported: &Reported, all: &Reported) {
    // Everything reported committed is present and intact.
    for (i, id) in &reported.blobs {
        let blob = id.parse().expect("blob id");
        let info = store.verify_nar(&blob).unwrap_or_else(|e| panic!("blob {i} reported committed: {e}"));
        let mut data = Vec::new();
        store.open_nar(&blob).expect("open_nar").read_to_end(&mut data).expect("read blob");
        assert_eq!(data, nar_bytes(*i), "blob {i} content");
        assert_eq!(info.nar_size, data.len() as u64);
    }
    for i in &reported.txns {
        let info = store.path_info(&out_path(*i)).expect("path_info").unwrap_or_else(|| panic!("path {i} lost"));
        assert_eq!(info.blob.to_string(), all.blobs[i]);
        assert!(store.has_drv(&drv_path(*i)).expect("has_drv"), "drv {i} lost");
        assert!(store.get_build(&drv_path(*i)).expect("get_build").is_some(), "build {i} lost");
        assert_eq!(store.attestations_for_drv(&drv_path(*i)).expect("attestations").len(), 1, "attestation {i}");
    }
    for i in &reported.running {
        let b = store.get_build(&drv_path(*i)).expect("get_build").expect("build");
        assert!(matches!(b.state, BuildState::Running | BuildState::Done), "build {i}: {:?}", b.state);
        assert!(b.attempts >= 1);
    }
    for i in &reported.done {
        assert_eq!(store.get_build(&drv_path(*i)).expect("get_build").expect("build").state, BuildState::Done);
    }
    // Nothing is half-visible: every row's blob verifies, and the closure transaction is
    // all-or-nothing.
    for info in store.list_paths(None, 0).expect("list_paths") {
        store.verify_nar(&info.blob).unwrap_or_else(|e| panic!("path {} points at a bad blob: {e}", info.path));
        let i = u64::from_le_bytes(info.path.digest()[..8].try_into().expect("8 bytes"));
        assert!(store.has_drv(&drv_path(i)).expect("has_drv"), "path {i} visible without its drv");
        assert!(store.get_build(&drv_path(i)).expect("get_build").is_some(), "path {i} visible without its build");
        assert_eq!(store.attestations_for_drv(&drv_path(i)).expect("atts").len(), 1, "path {i} without attestation");
    }
    for id in store.list_blobs(None, 0).expect("list_blobs") {
        store.verify_nar(&id).unwrap_or_else(|e| panic!("committed blob {id} is bad: {e}"));
    }
    let summary = store.attestation_summary().expect("summary");
    assert_eq!(summary.count, store.list_paths(None, 0).expect("paths").len() as u64);
    assert_eq!(store.attestation_ids_since(0, 0).expect("ids").len() as u64, summary.count);
}

#[test]
fn kill_9_loses_nothing_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = random_u64();
    eprintln!("store_crash seed {seed}");
    let mut all = Reported::default();
    let mut total_lines = 0;
    for round in 0..6u64 {
        let r = seed.rotate_left(round as u32 * 11);
        let min_lines = 1 + (r % 40) as usize;
        let extra = Duration::from_micros((r >> 8) % 30_000);
        let lines = run_child_and_kill(dir.path(), round * 1_000_000, min_lines, extra);
        total_lines += lines.len();
        let reported = parse(&lines);
        all.blobs.extend(reported.blobs.clone());
        all.txns.extend(reported.txns.iter().copied());
        all.done.extend(reported.done.iter().copied());

        let temp_before = std::fs::read_dir(dir.path().join("blobs"))
            .expect("ls blobs")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .count();
        let store = Store::open(dir.path()).expect("reopen after kill -9");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .expect("ls blobs")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temp blobs left after open: {leftovers:?}");
        check(&store, &reported, &all);
        check(
            &store,
            &Reported {
                blobs: all.blobs.clone(),
                txns: all.txns.clone(),
                running: BTreeSet::new(),
                done: all.done.clone(),
            },
            &all,
        );

        // Interrupted builds resume: nothing stays Running after a restart.
        let requeued = store.requeue_interrupted().expect("requeue");
        for p in &requeued {
            assert_eq!(store.get_build(p).expect("get").expect("build").state, BuildState::Queued);
        }
        assert_eq!(store.build_counts().expect("counts").running, 0);
        eprintln!(
            "round {round}: {} lines, {} blobs, {} txns, {} requeued, {temp_before} partial blob(s) cleaned (seed {seed})",
            lines.len(),
            reported.blobs.len(),
            reported.txns.len(),
            requeued.len()
        );
    }
    assert!(total_lines > 6, "the children committed almost nothing");
}
