//! Shards on real nodes (`mesh_shards`, docs/protocol.md *Shards*): four `buildmesh node`
//! processes with `--mesh-shards 2`, two in each shard. A DAG of real derivations spread over both
//! shards, submitted to one node, completes with k = 2; every derivation is built only by members
//! of its shard; the submitter learns every result, of the other shard too (over that shard's
//! topics, which it subscribed to). A job of one shard that an intruder publishes on another
//! shard's topic is rejected (the sender penalised), while the same job on its own shard's topic
//! is not. Anti-entropy asks peers by shard: builders of a shard hear (and sync) the shards of
//! their inputs while they build, and a node holds no records of a shard it does not hear. A
//! node that trusts only itself refuses to start sharded.

mod mesh_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use buildmesh::mesh::validate::shard_topic;
use buildmesh_protocol::id::JobId;
use buildmesh_protocol::mesh::shard::{drv_shard, node_shard};
use buildmesh_protocol::signed::Envelope;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{Encode as _, JobSubmission, Kind, Message};
use mesh_support::intruder::{Intruder, now_ms};
use mesh_support::*;

const SHARDS: u32 = 2;

fn rejected(c: &Cluster, i: usize) -> u64 {
    c.mesh(i)["gossip"]["rejected"].as_u64().unwrap()
}

/// A job by `submitter` for a system no node has (nobody builds it) whose derivation lies in
/// shard `want`.
fn job_in_shard(submitter: buildmesh_protocol::id::NodeId, want: u32) -> JobSubmission {
    (0..64u8)
        .map(|i| JobSubmission {
            job: JobId::from_bytes([i; 32]),
            submitter,
            submitted_at_ms: now_ms(),
            store_dir: StoreDir::nix(),
            drv: StorePath::new([i; 20], &format!("intruded-{i}.drv")).unwrap(),
            outputs: BTreeSet::new(),
            system: "riscv64-linux".into(),
            required_features: BTreeSet::new(),
            priority: 0,
            replicas: 2,
        })
        .find(|j| drv_shard(&j.drv, SHARDS) == want)
        .expect("a derivation in each shard among 64")
}

#[test]
fn a_sharded_mesh_builds_each_job_in_its_shard_and_rejects_jobs_on_other_shards_topics() {
    let tmp = tempfile::tempdir().unwrap();
    // `--submitter any`: the intruder's job on the right topic is tracked (the control case).
    // `--mesh-max-finished-drvs 2`: the nodes forget finished jobs beyond the 2 latest while the
    // 6-job DAG runs (`MeshConfig::max_finished_drvs`).
    let c = Cluster::start_sharded(tmp.path(), 2, SHARDS, &["--submitter", "any", "--mesh-max-finished-drvs", "2"]);
    let shard_of: Vec<u32> = c.keys.iter().map(|k| node_shard(&k.node_id(), SHARDS)).collect();
    let by_peer: BTreeMap<String, usize> = c.peer_ids.iter().cloned().enumerate().map(|(i, p)| (p, i)).collect();
    for (i, shard) in shard_of.iter().enumerate() {
        let m = c.mesh(i);
        assert_eq!((m["shard"].as_u64(), m["shards"].as_u64()), (Some(u64::from(*shard)), Some(2)), "node {i}");
        assert_eq!(m["members"], 2, "node {i}'s view is its shard");
    }
    let home = shard_of[0];
    let other = 1 - home;

    // 1. An intruder's jobs on node 0's own shard's job topic: a job of that shard is tracked, a
    //    job of the other shard is rejected there.
    let intruder_key = mesh_support::intruder::throwaway(18);
    let home_topics: Vec<String> =
        [Kind::Announcement, Kind::Claim, Kind::Attestation, Kind::BuildFailure, Kind::JobSubmission]
            .iter()
            .map(|k| shard_topic(*k, home, SHARDS))
            .collect();
    let intruder = Intruder::join_on(&c, intruder_key.clone(), &home_topics, |_| {});
    let job_topic = shard_topic(Kind::JobSubmission, home, SHARDS);
    let signed = |j: JobSubmission| Envelope::sign(&intruder_key, &Message::JobSubmission(j)).unwrap().to_bytes();
    assert_eq!(rejected(&c, 0), 0, "nothing rejected yet");
    intruder.publish_raw(&job_topic, signed(job_in_shard(intruder_key.node_id(), home)));
    wait_for("the right-shard job to be tracked", Duration::from_secs(20), || {
        (c.mesh(0)["drvs_active"].as_u64() == Some(1)).then_some(())
    });
    assert_eq!(rejected(&c, 0), 0, "a job on its own shard's topic is not rejected");
    intruder.publish_raw(&job_topic, signed(job_in_shard(intruder_key.node_id(), other)));
    wait_for("the wrong-shard job to be rejected", Duration::from_secs(20), || (rejected(&c, 0) >= 1).then_some(()));
    assert_eq!(c.mesh(0)["drvs_active"].as_u64(), Some(1), "the wrong-shard job is not tracked");
    assert!(c.node(0).log_text().contains("WrongShard") || c.node(0).log_text().contains("its topic is"));
    intruder.shutdown();

    // 2. A DAG spread over both shards, submitted to node 0 with k = 2.
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let names = ["leaf-a", "leaf-b", "leaf-c", "mid-ab", "mid-bc", "root"];
    d.add("leaf-a", "echo a > $out", &[]);
    d.add("leaf-b", "echo b > $out", &[]);
    d.add("leaf-c", "echo c > $out", &[]);
    d.add("mid-ab", "cat $input0 $input1 > $out", &["leaf-a", "leaf-b"]);
    d.add("mid-bc", "cat $input0 $input1 > $out", &["leaf-b", "leaf-c"]);
    d.add("root", "cat $input0 $input1 > $out", &["mid-ab", "mid-bc"]);
    let in_shard: BTreeSet<u32> = names.iter().map(|n| drv_shard(&d.drv(n), SHARDS)).collect();
    assert_eq!(in_shard.len(), 2, "the DAG lies in both shards");
    c.submit(0, &dir, &[sd().display(&d.drv("root"))], 2);
    wait_state(&c.urls[0], &d.drv("root"), "done", Duration::from_secs(120));

    // 3. Every derivation built twice, only by members of its shard, and the submitter holds
    //    every result.
    for n in names {
        let (drv, out) = (d.drv(n), sd().display(&d.out(n)));
        let want = drv_shard(&drv, SHARDS);
        let by_hash = wait_for(&format!("two attestations of {n} on the submitter"), Duration::from_secs(30), || {
            let a = c.attesters(0, &out);
            (a.values().map(BTreeSet::len).sum::<usize>() >= 2).then_some(a)
        });
        assert_eq!(by_hash.len(), 1, "{n}: one NarHash {by_hash:?}");
        for peer in by_hash.values().flatten() {
            let i = by_peer[peer];
            assert_eq!(
                shard_of[i],
                want,
                "{n} (shard {want}) built by node {i} of shard {}\n{}",
                shard_of[i],
                c.logs()
            );
        }
    }
    // The submitter forgot the finished jobs beyond the 2 latest (it tracked 6 and the
    // intruder's active one); their results stay stored.
    wait_for("node 0 to keep 2 finished jobs", Duration::from_secs(20), || {
        let m = c.mesh(0);
        (m["drvs_tracked"].as_u64().unwrap() <= 3).then_some(())
    });
    // The submitter heard the other shard's results on that shard's topic (not only by sync).
    let heard = c.metrics(0, &shard_topic(Kind::Attestation, other, SHARDS));
    let got = heard.get("gossipsub_topic_msg_recv_counts_unfiltered_total").copied().unwrap_or(0.0);
    assert!(got > 0.0, "node 0 received no gossip on the other shard's attestation topic: {heard:?}");

    // 4. Anti-entropy asks by shard. Node j of node 0's shard submitted nothing; a job of the
    //    other shard alone (no inputs), submitted to a node x of that shard, is built there. Node
    //    j, having asked its peers with the shard filter, holds none of its attestations after
    //    several more sync runs (unfiltered, it would pull them).
    let j = (1..shard_of.len()).find(|&i| shard_of[i] == home).expect("two nodes per shard");
    let x = (0..shard_of.len()).find(|&i| shard_of[i] == other).expect("two nodes per shard");
    let solo = (0..64)
        .map(|i| format!("solo-{i}"))
        .find(|n| drv_shard(&d.add(n, &format!("echo {n} > $out"), &[]).0, SHARDS) == other)
        .expect("a derivation of the other shard among 64");
    c.submit(x, &dir, &[sd().display(&d.drv(&solo))], 2);
    wait_state(&c.urls[x], &d.drv(&solo), "done", Duration::from_secs(120));
    let solo_out = sd().display(&d.out(&solo));
    wait_for("two attestations of the solo job on its submitter", Duration::from_secs(30), || {
        (c.attesters(x, &solo_out).values().map(BTreeSet::len).sum::<usize>() >= 2).then_some(())
    });
    let runs = c.mesh(j)["sync"]["runs"].as_u64().unwrap();
    wait_for("node j to run 3 more syncs", Duration::from_secs(60), || {
        (c.mesh(j)["sync"]["runs"].as_u64().unwrap() >= runs + 3).then_some(())
    });
    let m = c.mesh(j);
    assert!(m["sync"]["shard_pages"].as_u64().unwrap() > 0, "node {j} never asked by shard: {m}");
    assert!(
        c.attesters(j, &solo_out).is_empty(),
        "node {j} (shard {home}) holds attestations of a job of shard {other} it does not hear\n{}",
        c.logs()
    );
}

#[test]
fn a_node_that_trusts_only_itself_refuses_shards() {
    let (st, out, err) = cli(&["check-config", "--mesh-shards", "2"]);
    assert!(!st.success(), "accepted: {out}");
    assert!(err.contains("mesh_shards") && err.contains("trusted_keys"), "{err}");
    let (st, out, err) = cli(&["check-config", "--mesh-shards", "0"]);
    assert!(!st.success() && err.contains("mesh_shards"), "{out}{err}");
}
