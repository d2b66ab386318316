//! Remembered peers (issue 18 item 4): a mesh of four real nodes, all bootstrapped from node 0,
//! learn each other; node 0 (the only bootstrap address anyone was given) and node 2 are killed
//! with SIGKILL; node 2 restarts with its data dir and NO bootstrap address and rejoins the mesh
//! through the peers it remembered in its database: it sees the live members again and receives
//! a new job's attestations by gossip.

mod mesh_support;

use std::time::Duration;

use mesh_support::*;
use nix::sys::signal::Signal;

#[test]
fn a_node_rejoins_without_bootstrap_after_the_bootstrap_node_died() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 4, &[]);

    // Node 2 has written the three others to its `peers` table (batched, within seconds).
    wait_for("node 2 to remember the three other nodes", Duration::from_secs(30), || {
        (c.mesh(2)["remembered_peers"].as_u64() >= Some(3)).then_some(())
    });
    let (status, peers) = get_json(&format!("{}/api/v1/peers", c.urls[2]));
    assert_eq!(status, 200);
    for p in peers.as_array().unwrap() {
        if p["connected"] == true {
            assert!(p["last_seen_ms"].as_u64().is_some_and(|t| t > 0), "last_seen_ms of a connected peer: {p}");
        }
    }

    // The bootstrap node dies, then node 2 (kill -9: nothing is flushed at exit).
    for i in [0, 2] {
        c.nodes[i].as_mut().unwrap().stop(Signal::SIGKILL, Duration::from_secs(5));
        c.nodes[i] = None;
    }
    c.wait_members(2, Duration::from_secs(30));

    // Node 2 comes back with its data dir and no bootstrap address.
    c.bootstrap = String::new();
    c.restart(2);
    c.wait_members(3, Duration::from_secs(30));
    let connected: Vec<String> = get_json(&format!("{}/api/v1/peers", c.urls[2]))
        .1
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"] == true)
        .map(|p| p["peer_id"].as_str().unwrap().to_string())
        .collect();
    assert!(connected.contains(&c.peer_ids[1]) && connected.contains(&c.peer_ids[3]), "{connected:?}");

    // A job submitted on node 1: node 2 receives its attestations by gossip.
    let accepted_before = c.mesh(2)["gossip"]["accepted"].as_u64().unwrap();
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (x, x_out) = d.add("after-the-rejoin", "echo rejoined > $out", &[]);
    c.submit(1, &dir, &[sd().display(&x)], 2);
    wait_state(&c.urls[1], &x, "done", Duration::from_secs(60));
    let x_out = sd().display(&x_out);
    wait_for("node 2 to hold the job's two attestations", Duration::from_secs(30), || {
        (c.attesters(2, &x_out).values().flatten().count() >= 2).then_some(())
    });
    let accepted = c.mesh(2)["gossip"]["accepted"].as_u64().unwrap();
    assert!(accepted > accepted_before, "node 2 accepted no gossip after its rejoin: {accepted}\n{}", c.logs());
}
