//! Gossip validation of a real node, attacked through the net layer directly: valid messages are
//! accepted (an attestation stored, both jobs of a batch tracked), a stale replay is ignored, and
//! an oversized message, a forged signature, a message on the wrong topic and a batch on the wrong
//! topic are rejected; after those rejections the node
//! takes nothing more from the attacker (its gossipsub score fell below the graylist threshold),
//! neither an attestation framing another node nor a valid message. The framing attestation is
//! rejected by `check_gossip` too (unit test in `mesh::validate`).

mod mesh_support;

use std::collections::BTreeSet;
use std::time::Duration;

use buildmesh::net::{MessageAcceptance, NetConfig, NetEvent, NetHandle, keypair_from_seed};
use buildmesh_protocol::id::JobId;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::signed::{Envelope, Signed};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use buildmesh_protocol::wire::{
    Announcement, Attestation, Batch, Claim, Encode as _, JobSubmission, Kind, MAX_MESSAGE_SIZE, Message,
};
use libp2p::PeerId;
use mesh_support::intruder::signed_attestation;
use mesh_support::*;

const TOPICS: [&str; 5] =
    ["buildmesh/announce/1", "buildmesh/claim/1", "buildmesh/attest/1", "buildmesh/failure/1", "buildmesh/job/1"];

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn announcement(node: buildmesh_protocol::id::NodeId, seq: u64) -> Announcement {
    Announcement {
        node,
        seq,
        timestamp_ms: now_ms(),
        version: "intruder 1".into(),
        owner: String::new(),
        native_systems: BTreeSet::from(["x86_64-linux".to_string()]),
        emulated_systems: BTreeSet::new(),
        features: BTreeSet::new(),
        mandatory_features: BTreeSet::new(),
        slots: 1,
        load: 0,
        slowdown: Default::default(),
        disk_pressure: None,
    }
}

fn attestation(key: &NodeKey, builder: buildmesh_protocol::id::NodeId, path: &StorePath) -> Attestation {
    let drv = StorePath::from_basename("mh08qwc103ql42f2zc4ka9nhz976z7m8-intruder.drv").unwrap();
    signed_attestation(key, builder, drv, path.clone(), [5; 32], [6; 32])
}

/// A job for a system no node has, so that nobody tries to build it.
fn job(submitter: buildmesh_protocol::id::NodeId, i: u8) -> JobSubmission {
    JobSubmission {
        job: JobId::from_bytes([i; 32]),
        submitter,
        submitted_at_ms: now_ms(),
        store_dir: StoreDir::nix(),
        drv: StorePath::new([i; 20], &format!("batched-{i}.drv")).unwrap(),
        outputs: BTreeSet::new(),
        system: "riscv64-linux".into(),
        required_features: BTreeSet::new(),
        priority: 0,
        replicas: 2,
    }
}

/// Derivations with a job and no outcome yet (the status is refreshed every few hundred ms).
fn drvs_active(url: &str) -> u64 {
    get_json(&format!("{url}/api/v1/mesh")).1["drvs_active"].as_u64().unwrap()
}

fn gossip_counts(url: &str) -> (u64, u64, u64) {
    let j = get_json(&format!("{url}/api/v1/mesh")).1;
    let g = &j["gossip"];
    (g["accepted"].as_u64().unwrap(), g["rejected"].as_u64().unwrap(), g["ignored"].as_u64().unwrap())
}

#[test]
fn forged_replayed_and_oversized_messages_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    // `--submitter any`: the intruder's batch of jobs must be accepted as valid gossip and its
    // jobs tracked (under the default `submitters` they are ignored; mesh_policy tests that).
    let c = Cluster::start(tmp.path(), 1, &["--submitter", "any"]);
    let url = c.urls[0].clone();
    let node_peer: PeerId = c.peer_ids[0].parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = NodeKey::from_seed("intruder", [99; 32]).unwrap();
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![c.bootstrap.parse().unwrap()],
        mdns: false,
        max_gossip_size: 70 * 1024,
        gossip_heartbeat: Duration::from_millis(200),
        ..NetConfig::default()
    };
    let net: NetHandle = rt.block_on(async {
        let (net, mut events, _task) = buildmesh::net::spawn(keypair_from_seed(key.seed()), cfg).unwrap();
        // Wait until the node subscribed to every topic, then keep draining events.
        let mut subscribed = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while subscribed.len() < TOPICS.len() {
            let ev = tokio::time::timeout_at(deadline, events.recv()).await.expect("node subscription").unwrap();
            if let NetEvent::PeerSubscribed { peer, topic } = ev
                && peer == node_peer
            {
                subscribed.insert(topic);
            }
        }
        let n = net.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let NetEvent::Gossip(g) = ev {
                    let _ = n.report_validation(g.id, g.propagation_source, MessageAcceptance::Ignore).await;
                }
            }
        });
        net
    });
    let publish = |topic: &str, data: Vec<u8>| {
        rt.block_on(net.publish(topic, data)).unwrap_or_else(|e| panic!("publish on {topic}: {e}"));
    };
    let me = key.node_id();
    let seq = now_ms();

    // 1. Valid messages are accepted: an announcement and an attestation (stored).
    publish(TOPICS[0], Envelope::sign(&key, &Message::Announcement(announcement(me, seq))).unwrap().to_bytes());
    let path = StorePath::from_basename("an8vyn8v0lxs937kjy709ghv3zp4wms6-intruder-out").unwrap();
    let att = Envelope::sign(&key, &Message::Attestation(attestation(&key, me, &path))).unwrap().to_bytes();
    publish(TOPICS[2], att);
    wait_for("two accepted messages", Duration::from_secs(20), || (gossip_counts(&url).0 >= 2).then_some(()));
    let stored = c.attesters(0, &sd().display(&path));
    assert_eq!(stored.len(), 1, "the valid attestation is stored: {stored:?}");
    // A batch of two job submissions is one message, and both jobs become known.
    assert_eq!(drvs_active(&url), 0, "no job known before the batch");
    let batch = Batch::new(vec![job(me, 1).into(), job(me, 2).into()]).unwrap();
    publish(TOPICS[4], Signed::sign(&key, &batch).unwrap().to_bytes());
    wait_for("the batch accepted", Duration::from_secs(20), || (gossip_counts(&url).0 >= 3).then_some(()));
    wait_for("both jobs of the batch active", Duration::from_secs(20), || (drvs_active(&url) == 2).then_some(()));

    // 2. A replay of an older announcement (valid signature, lower seq) is ignored, not rejected.
    publish(TOPICS[0], Envelope::sign(&key, &Message::Announcement(announcement(me, seq - 5))).unwrap().to_bytes());
    wait_for("a stale replay to be ignored", Duration::from_secs(20), || (gossip_counts(&url).2 >= 1).then_some(()));
    assert_eq!(gossip_counts(&url).1, 0, "nothing rejected so far");

    // 3. Forgeries, each rejected: an oversized message, a flipped signature bit, a batch of claims
    // on the job topic, a message on the wrong topic.
    publish(TOPICS[2], vec![1u8; MAX_MESSAGE_SIZE + 200]);
    wait_for("the oversized message rejected", Duration::from_secs(20), || (gossip_counts(&url).1 >= 1).then_some(()));
    let mut forged = Envelope::sign(&key, &Message::Announcement(announcement(me, seq + 1))).unwrap().to_bytes();
    let last = forged.len() - 1;
    forged[last] ^= 0x40;
    publish(TOPICS[0], forged);
    wait_for("the forged signature rejected", Duration::from_secs(20), || (gossip_counts(&url).1 >= 2).then_some(()));
    let claim = Claim {
        job: JobId::from_bytes([1; 32]),
        claimant: me,
        store_dir: StoreDir::nix(),
        drv: job(me, 1).drv,
        attempt: 1,
        claimed_at_ms: now_ms(),
        lease_expires_at_ms: now_ms() + 60_000,
    };
    let claims = Batch::new(vec![claim.clone().into(), Claim { attempt: 2, ..claim }.into()]).unwrap();
    publish(TOPICS[4], Signed::sign(&key, &claims).unwrap().to_bytes());
    wait_for("a batch of claims on the job topic rejected", Duration::from_secs(20), || {
        (gossip_counts(&url).1 >= 3).then_some(())
    });
    let wrong_topic = Envelope::sign(&key, &Message::Announcement(announcement(me, seq + 2))).unwrap().to_bytes();
    publish(TOPICS[2], wrong_topic);
    wait_for("the wrong topic rejected", Duration::from_secs(20), || (gossip_counts(&url).1 >= 4).then_some(()));

    // 4. Four rejections (the penalty grows with the square of the count per topic) put the
    // attacker below the graylist threshold: an attestation framing another node (signed by the
    // attacker, naming node 0 as builder) is not stored, and even a valid message is no longer
    // taken.
    let (accepted_before, _, _) = gossip_counts(&url);
    let node0 = c.keys[0].node_id();
    let other_path = StorePath::from_basename("wm32icn8hzjm0kah51xh8nv14dn4crdz-framed").unwrap();
    let framed = Envelope::sign_raw_payload(&key, Kind::Attestation, attestation(&key, node0, &other_path).to_bytes());
    publish(TOPICS[2], framed.to_bytes());
    publish(TOPICS[0], Envelope::sign(&key, &Message::Announcement(announcement(me, seq + 10))).unwrap().to_bytes());
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.attesters(0, &sd().display(&other_path)).is_empty(), "a forged attestation must not be stored");
    assert_eq!(gossip_counts(&url).0, accepted_before, "a graylisted peer's message was accepted");
    rt.block_on(net.shutdown());
}
