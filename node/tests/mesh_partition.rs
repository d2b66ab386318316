//! A partition and its healing: nodes {0, 1} and {2, 3, 4} block each other (the net layer's
//! block list through the API), each side builds a job on its own, then the block is lifted and
//! anti-entropy brings every node to the same attestation set. Then a node is killed, the mesh
//! builds without it, and after its restart it catches up.

mod mesh_support;

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_support::*;

#[test]
fn partitioned_sides_converge_after_healing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 5, &[]);
    let (left, right) = ([0usize, 1], [2usize, 3, 4]);
    for &i in &left {
        for &j in &right {
            c.block(i, &c.peer_ids[j], true);
            c.block(j, &c.peer_ids[i], true);
        }
    }
    // Each side's view shrinks to itself.
    for &i in &left {
        let url = c.urls[i].clone();
        wait_for(&format!("node {i} to see 2 members"), Duration::from_secs(30), || {
            (get_json(&format!("{url}/api/v1/mesh")).1["members"] == 2).then_some(())
        });
    }
    for &i in &right {
        let url = c.urls[i].clone();
        wait_for(&format!("node {i} to see 3 members"), Duration::from_secs(30), || {
            (get_json(&format!("{url}/api/v1/mesh")).1["members"] == 3).then_some(())
        });
    }

    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (x, x_out) = d.add("left-side-job", "echo left > $out", &[]);
    let (y, y_out) = d.add("right-side-job", "echo right > $out", &[]);
    c.submit(0, &dir, &[sd().display(&x)], 2);
    c.submit(2, &dir, &[sd().display(&y)], 2);
    wait_state(&c.urls[0], &x, "done", Duration::from_secs(60));
    wait_state(&c.urls[2], &y, "done", Duration::from_secs(60));
    let (x_out, y_out) = (sd().display(&x_out), sd().display(&y_out));
    assert!(c.attesters(0, &y_out).is_empty(), "the left side cannot know the right side's result yet");
    assert!(c.attesters(3, &x_out).is_empty(), "the right side cannot know the left side's result yet");

    // Heal.
    for &i in &left {
        for &j in &right {
            c.block(i, &c.peer_ids[j], false);
            c.block(j, &c.peer_ids[i], false);
        }
    }
    c.wait_members(5, Duration::from_secs(30));
    let all: Vec<BTreeSet<String>> =
        wait_for("every node to hold the same attestations", Duration::from_secs(60), || {
            let sets: Vec<BTreeSet<String>> = (0..5).map(|i| c.attestation_ids(i)).collect();
            (sets.iter().all(|s| s == &sets[0]) && sets[0].len() >= 4).then_some(sets)
        });
    assert!(all[0].len() >= 4, "{:?}", all[0]);
    // The other side's results came through anti-entropy (jobs that are finished are not gossiped
    // again).
    let synced: u64 = (0..5).map(|i| c.mesh(i)["sync"]["attestations"].as_u64().unwrap()).sum();
    assert!(synced >= 2, "expected anti-entropy to carry the results across: {synced}");
    for i in 0..5 {
        let bx: BTreeSet<String> = c.attesters(i, &x_out).values().flatten().cloned().collect();
        let by: BTreeSet<String> = c.attesters(i, &y_out).values().flatten().cloned().collect();
        assert!(bx.len() >= 2 && by.len() >= 2, "node {i}: {bx:?} {by:?}");
    }

    // A node that was down (SIGKILL) while the mesh built something catches up when it is back.
    c.nodes[4].as_mut().unwrap().stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    c.nodes[4] = None;
    let (z, z_out) = d.add("while-node-4-was-down", "echo later > $out", &[]);
    c.submit(0, &dir, &[sd().display(&z)], 2);
    wait_state(&c.urls[0], &z, "done", Duration::from_secs(60));
    c.restart(4);
    let z_out = sd().display(&z_out);
    wait_for("the restarted node to catch up", Duration::from_secs(60), || {
        let (a, b) = (c.attestation_ids(0), c.attestation_ids(4));
        (a == b && c.attesters(4, &z_out).values().flatten().count() >= 2).then_some(())
    });
}
