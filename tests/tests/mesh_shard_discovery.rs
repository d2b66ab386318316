//! Shard discovery on real nodes (issue 18; docs/protocol.md *Shards*): six `buildmesh node`
//! processes with `--mesh-shards 2`, three in each shard, each in its own network namespace,
//! every one bootstrapped to node 0 only and with `target_peers = 1`, so that the ordinary
//! dialling stops at the bootstrap connection.
//!
//! The members of the shard node 0 is not in ("far") join while the paths between them are cut
//! (`prohibit` routes: a dial fails at once); every other path is open. In a mesh this small
//! Kademlia's walks at the join reach every node they can, so without the cut they would connect
//! the far members anyway (gossipsub then keeps the connection: the test passed with discovery
//! off). With the cut the walks miss them, as they miss most of a shard in a mesh much larger
//! than Kademlia's k; once the walks are over the paths open, and only shard discovery (a
//! Kademlia provider record per shard, `shard_peers`) brings the far members together: their
//! views fill, a k = 2 DAG of that shard submitted to node 0 is built by two of them, node 0
//! learns every result, and once its submission is done it stops observing that shard
//! (`shard_released`). With `shard_peers = 0` the test fails at "connect to the rest of shard".
//! Needs root and iproute2, like `mesh_netns`.

mod mesh_support;

use std::collections::BTreeMap;
use std::time::Duration;

use buildmesh_protocol::mesh::shard::{drv_shard, node_shard};
use mesh_support::*;

const SHARDS: u32 = 2;
/// Time for Kademlia's walks at the join to end.
const WALKS: Duration = Duration::from_secs(3);

/// The fast timers, the bootstrap connection as the only ordinary one, and shard discovery
/// (`shard_peers = 0` turns it off: then this test fails).
fn mesh_config() -> String {
    format!("{FAST_MESH}target_peers = 1\nshard_peers = 4\n")
}

/// The peers node `i` has a connection open to.
fn connected(c: &Cluster, i: usize) -> Vec<String> {
    let (s, j) = get_json(&format!("{}/api/v1/peers", c.urls[i]));
    assert_eq!(s, 200, "{j}");
    j.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"].as_bool() == Some(true))
        .map(|p| p["peer_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_members_of_a_shard_find_each_other_through_one_bootstrap_node() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = sharded_keys(tmp.path(), 3, SHARDS);
    let shard_of: Vec<u32> = keys.iter().map(|k| node_shard(&k.node_id(), SHARDS)).collect();
    let other = 1 - shard_of[0];
    let far: Vec<usize> = (0..6).filter(|i| shard_of[*i] == other).collect();
    assert_eq!(far.len(), 3);
    let far_but = |i: usize| -> Vec<usize> { far.iter().copied().filter(|j| *j != i).collect() };

    // 0. The far shard's members join while they cannot reach each other (every other path is
    //    open): Kademlia's walks at the join, which in a mesh this small reach every node they
    //    can, miss them. Once the walks are over, the paths open.
    let ns = netns::Netns::new(6);
    for &i in &far {
        ns.cut(i, &far_but(i));
    }
    let c = Cluster::start_sharded_in(tmp.path(), keys, SHARDS, &mesh_config(), ns);
    let by_peer: BTreeMap<String, usize> = c.peer_ids.iter().cloned().enumerate().map(|(i, p)| (p, i)).collect();
    for &i in &far {
        wait_for(&format!("node {i} to connect to node 0"), Duration::from_secs(20), || {
            connected(&c, i).contains(&c.peer_ids[0]).then_some(())
        });
    }
    // The first walk takes milliseconds; Kademlia starts another one 500 ms after new entries
    // of its routing table (each node's last ones come in as the last nodes join): all are over
    // well within this.
    std::thread::sleep(WALKS);
    for &i in &far {
        let mine = connected(&c, i);
        assert!(
            far_but(i).iter().all(|j| !mine.contains(&c.peer_ids[*j])),
            "node {i} reached its shard through the cut"
        );
    }
    let ns = c.netns.as_ref().expect("namespaces");
    for &i in &far {
        ns.join(i, &far_but(i));
    }

    // 1. The far shard's members connect to each other (nothing but shard discovery dials them
    //    now) and see each other in their views; every node counts its shard's connections.
    for &i in &far {
        wait_for(&format!("node {i} to connect to the rest of shard {other}"), Duration::from_secs(20), || {
            let mine = connected(&c, i);
            far.iter().filter(|j| **j != i).all(|j| mine.contains(&c.peer_ids[*j])).then_some(())
        });
    }
    c.wait_members(3, Duration::from_secs(15));
    for (i, shard) in shard_of.iter().enumerate() {
        let m = c.mesh(i);
        assert!(m["shard_peers"].as_u64().unwrap() >= 2, "node {i}: {m}");
        assert_eq!(m["heard_shards"], serde_json::json!([shard]), "node {i}");
    }

    // 2. A k = 2 DAG of the far shard, submitted to node 0 (which observes that shard).
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let in_far = |d: &mut Drvs, name: &str, script: &str, inputs: &[&str]| -> String {
        for salt in 0..64 {
            let n = format!("{name}-{salt}");
            let (drv, _) = d.add(&n, &format!("{script} # {salt}"), inputs);
            if drv_shard(&drv, SHARDS) == other {
                return n;
            }
        }
        panic!("no derivation in the far shard among 64")
    };
    let leaf = in_far(&mut d, "leaf", "echo leaf > $out", &[]);
    let root = in_far(&mut d, "root", "cat $input0 > $out; echo root >> $out", &[&leaf]);
    c.submit(0, &dir, &[sd().display(&d.drv(&root))], 2);
    wait_state(&c.urls[0], &d.drv(&root), "done", Duration::from_secs(60));

    // 3. Both built twice, by members of the far shard only; node 0 holds every result.
    for n in [&leaf, &root] {
        let out = sd().display(&d.out(n));
        let by_hash = wait_for(&format!("two attestations of {n} on node 0"), Duration::from_secs(20), || {
            let a = c.attesters(0, &out);
            (a.values().map(|s| s.len()).sum::<usize>() >= 2).then_some(a)
        });
        assert_eq!(by_hash.len(), 1, "{n}: one NarHash {by_hash:?}");
        for peer in by_hash.values().flatten() {
            assert!(far.contains(&by_peer[peer]), "{n} built by node {} outside shard {other}", by_peer[peer]);
        }
    }

    // 4. Node 0's submission is done: it stops observing the far shard.
    wait_for("node 0 to leave the far shard's topics", Duration::from_secs(20), || {
        (c.mesh(0)["heard_shards"] == serde_json::json!([shard_of[0]])).then_some(())
    });
    assert!(c.node(0).log_text().contains("shard_released"), "no shard_released event on node 0");
}
