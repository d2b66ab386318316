//! Remembered peers through a real redb file: round trip across reopening, batches, corrupt
//! rows, clearing, and rows committed before a `kill -9` of the writing process.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use super::*;

fn rec(i: u64) -> PeerRecord {
    PeerRecord {
        addrs: vec![format!("/ip4/10.0.0.{}/tcp/7801", i % 250), format!("/ip4/10.0.0.{}/udp/7801/quic-v1", i % 250)],
        last_seen_ms: 1_000 + i,
        first_seen_ms: 500,
        reachability: if i.is_multiple_of(2) { Reachability::Public } else { Reachability::Unknown },
        seen_from: format!("10.0.0.{}", i % 250),
    }
}

#[test]
fn peers_round_trip_through_a_real_file() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.list_peers().unwrap(), PeerRows::default());
        let put: Vec<(String, PeerRecord)> = (0..5).map(|i| (format!("peer-{i}"), rec(i))).collect();
        assert_eq!(store.write_peers(&put, &[]).unwrap(), 5);
        // One batch replaces one row, adds one and removes two.
        let mut changed = rec(1);
        changed.reachability = Reachability::Private;
        let put = vec![("peer-1".to_string(), changed.clone()), ("peer-9".to_string(), rec(9))];
        assert_eq!(store.write_peers(&put, &["peer-3".into(), "peer-4".into(), "absent".into()]).unwrap(), 4);
    }
    let store = Store::open(tmp.path()).unwrap();
    let rows = store.list_peers().unwrap();
    assert!(rows.corrupt.is_empty());
    let keys: Vec<&str> = rows.rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["peer-0", "peer-1", "peer-2", "peer-9"]);
    assert_eq!(rows.rows[1].1.reachability, Reachability::Private);
    assert_eq!(rows.rows[3].1, rec(9));
    assert_eq!(store.clear_peers().unwrap(), 4);
    assert!(store.list_peers().unwrap().rows.is_empty());
}

#[test]
fn a_corrupt_row_is_skipped_and_can_be_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    store.write_peers(&[("good".into(), rec(1))], &[]).unwrap();
    store
        .write(|w| {
            let mut t = w.txn.open_table(PEERS).ctx("opening table peers")?;
            t.insert("bad", [0xffu8, 0xff, 0xff].as_slice()).ctx("writing peers")?;
            Ok(())
        })
        .unwrap();
    let rows = store.list_peers().unwrap();
    assert_eq!(rows.rows.len(), 1);
    assert_eq!(rows.corrupt, ["bad"]);
    assert_eq!(store.write_peers(&[], &rows.corrupt).unwrap(), 1);
}

#[test]
fn reachability_names() {
    let names: Vec<&str> =
        [Reachability::Unknown, Reachability::Public, Reachability::Private].iter().map(|r| r.as_str()).collect();
    assert_eq!(names, ["unknown", "public", "private"]);
    assert_eq!(serde_json::to_string(&Reachability::Public).unwrap(), "\"public\"");
    assert_eq!(Reachability::default(), Reachability::Unknown);
}

/// Set in the child process of [`batches_committed_before_kill_9_survive`]: its data dir.
const CHILD_ENV: &str = "BUILDMESH_PEERS_KILL9_CHILD";

#[test]
fn batches_committed_before_kill_9_survive() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // The child: commit batch after batch and say so after each commit, until killed.
        let store = Store::open(&dir).unwrap();
        for i in 0u64.. {
            let put: Vec<(String, PeerRecord)> = (0..20).map(|j| (format!("b{i:06}-{j:02}"), rec(i))).collect();
            store.write_peers(&put, &[]).unwrap();
            println!("committed {i}");
        }
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::peers::tests::batches_committed_before_kill_9_survive", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest may print the test's name on the same line before the first one.
        if let Some(n) = line.rsplit_once("committed ").map(|(_, n)| n) {
            let n: u64 = n.parse().unwrap();
            acknowledged = Some(n);
            if n >= 30 {
                // SIGKILL in the middle of the next batch's transaction (or right after it).
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");
    let acknowledged = acknowledged.expect("the child committed batches");
    let store = Store::open(tmp.path()).unwrap();
    let rows = store.list_peers().unwrap();
    assert!(rows.corrupt.is_empty(), "{:?}", rows.corrupt);
    // Every acknowledged batch is there whole; a batch after it is there whole or not at all.
    let keys: std::collections::BTreeSet<String> = rows.rows.into_iter().map(|(k, _)| k).collect();
    for i in 0..=acknowledged {
        for j in 0..20 {
            assert!(keys.contains(&format!("b{i:06}-{j:02}")), "batch {i} row {j} lost after kill -9");
        }
    }
    assert_eq!(keys.len() % 20, 0, "a torn batch: {} rows", keys.len());
}
