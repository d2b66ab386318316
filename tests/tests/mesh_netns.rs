//! A real network partition: five nodes, each in its own network namespace, talk over a bridge
//! (TCP on 10.x.200.0/24, no loopback shortcut); moving the mesh ports of {2, 3, 4} to a second
//! bridge drops every packet between {0, 1} and {2, 3, 4}. Each side builds on its own; after
//! moving the ports back, every node holds the same attestation set. Then a job submitted to one
//! side after the heal reaches every node by gossip. Needs root and iproute2 (`scripts/test.sh`
//! installs it).

mod mesh_support;

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_support::*;

#[test]
fn a_split_network_heals_and_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start_in_namespaces(tmp.path(), 5, &[]);
    let ns = c.netns.as_ref().expect("namespaces");
    // Every node listens on its bridge address only and reaches the others through it.
    for i in 0..5 {
        let addr = libp2p_address(&c.urls[i]);
        assert!(addr.starts_with(&format!("/ip4/{}/tcp/", ns.mesh_ip(i))), "node {i}: {addr}");
    }
    let (left, right) = ([0usize, 1], [2usize, 3, 4]);
    let dir = tmp.path().join("drvs");
    let mut d = partition_and_heal(&c, &dir, &left, &right, |split| {
        if split {
            ns.partition(&right);
        } else {
            ns.heal();
        }
    });

    // After the heal, gossip crosses the former split again.
    let (z, z_out) = d.add("after-the-heal", "echo healed > $out", &[]);
    c.submit(4, &dir, &[sd().display(&z)], 2);
    wait_state(&c.urls[4], &z, "done", Duration::from_secs(60));
    let z_out = sd().display(&z_out);
    for i in 0..5 {
        wait_for(&format!("node {i} to hold both attestations of the new job"), Duration::from_secs(30), || {
            let builders: BTreeSet<String> = c.attesters(i, &z_out).values().flatten().cloned().collect();
            (builders.len() >= 2).then_some(())
        });
    }
}
