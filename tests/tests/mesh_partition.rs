//! A partition and its healing: nodes {0, 1} and {2, 3, 4} block each other (the net layer's
//! block list through the API), each side builds a job on its own, then the block is lifted and
//! anti-entropy brings every node to the same attestation set. Then a node is killed, the mesh
//! builds without it, and after its restart it catches up. (`mesh_netns` splits a real network.)

mod mesh_support;

use std::time::Duration;

use mesh_support::*;

#[test]
fn partitioned_sides_converge_after_healing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 5, &[]);
    let (left, right) = ([0usize, 1], [2usize, 3, 4]);
    let dir = tmp.path().join("drvs");
    let mut d = partition_and_heal(&c, &dir, &left, &right, |blocked| {
        for &i in &left {
            for &j in &right {
                c.block(i, &c.peer_ids[j], blocked);
                c.block(j, &c.peer_ids[i], blocked);
            }
        }
    });
    // Blocking closed the connections, so the other side's results can only have come through
    // anti-entropy (finished jobs are not gossiped again). In a real split (`mesh_netns`) TCP may
    // also deliver them late, once the network is back.
    let synced: u64 = (0..5).map(|i| c.mesh(i)["sync"]["attestations"].as_u64().unwrap()).sum();
    assert!(synced >= 2, "expected anti-entropy to carry the results across: {synced}");

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
