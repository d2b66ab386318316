//! Gossiped strike records against real nodes (issue 15 item 3, issue 18): a member that claims
//! and stops delivering (its process stopped with SIGSTOP while it builds, so its lease runs out
//! everywhere) is struck by signed records of the others; when it runs again it learns its own
//! strike, drops its claim (cancels its build) and the derivation completes on two other nodes
//! without a third build. Restarted, it learns its strike again from the observers' records and
//! shows it. Records forged by keys that may not strike (an untrusted peer) are refused and
//! strike nobody.

mod mesh_support;

use std::collections::BTreeSet;
use std::time::Duration;

use buildmesh_protocol::id::JobId;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Message, Strike};
use mesh_support::intruder::{Intruder, now_ms, throwaway};
use mesh_support::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The `struck` entries of node `i`'s `GET /api/v1/mesh`: (key, me, penalised now).
fn struck(c: &Cluster, i: usize) -> Vec<(String, bool, bool)> {
    c.mesh(i)["struck"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|s| (s["key"].as_str().unwrap_or("").to_string(), s["me"] == true, !s["until_ms"].is_null()))
        .collect()
}

fn key_b64(k: &NodeKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k.node_id().as_bytes())
}

fn forged(observer: &NodeKey, struck: &NodeKey) -> Strike {
    let now = now_ms();
    Strike {
        observer: observer.node_id(),
        struck: struck.node_id(),
        job: JobId::derive(&struck.node_id(), "forged", 1),
        store_dir: sd(),
        drv: StorePath::new([7; 20], "forged.drv").unwrap(),
        attempt: 1,
        claimed_at_ms: now - 7_000,
        lease_expires_at_ms: now - 1_000,
        observed_at_ms: now,
    }
}

#[test]
fn a_member_that_stops_delivering_is_struck_everywhere_itself_included() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 4, &[]);

    // 1. Records forged by untrusted keys against an honest builder are refused (the peer that
    // sends them is penalised like for any invalid message) and strike nobody.
    let intruder = Intruder::join(&c, throwaway(1));
    let rejected_before = c.mesh(0)["gossip"]["rejected"].as_u64().unwrap();
    for o in [throwaway(2), throwaway(3)] {
        intruder.publish_as(&o, &Message::Strike(forged(&o, &c.keys[1])));
    }
    wait_for("node 0 to reject the forged records", Duration::from_secs(10), || {
        (c.mesh(0)["gossip"]["rejected"].as_u64().unwrap() >= rejected_before + 2).then_some(())
    });
    intruder.shutdown();
    for i in 0..4 {
        assert!(struck(&c, i).is_empty(), "node {i} holds a forged strike: {:?}", struck(&c, i));
    }

    // 2. A derivation with k = 2; one of its builders stops (SIGSTOP) while building.
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (drv, out) = d.add("struck-build", "sleep 20; echo done > $out", &[]);
    let (drv_abs, out_abs) = (sd().display(&drv), sd().display(&out));
    c.submit(0, &dir, std::slice::from_ref(&drv_abs), 2);
    let building = |c: &Cluster, i: usize| {
        c.mesh(i)["building"].as_array().is_some_and(|l| l.iter().any(|x| x.as_str() == Some(&drv_abs)))
    };
    let builders: Vec<usize> = wait_for("two nodes building", Duration::from_secs(30), || {
        let b: Vec<usize> = (0..4).filter(|i| building(&c, *i)).collect();
        (b.len() >= 2).then_some(b)
    });
    let victim = builders.iter().copied().find(|i| *i != 0).unwrap();
    let victim_key = key_b64(&c.keys[victim]);
    let pid = Pid::from_raw(c.node(victim).pid());
    kill(pid, Signal::SIGSTOP).unwrap();
    // Its lease (6 s) runs out on the others: they strike it (a quorum of 2 signed records).
    let others: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    wait_for("the others to strike the stopped builder", Duration::from_secs(30), || {
        others.iter().all(|i| struck(&c, *i).iter().any(|(k, _, now)| *k == victim_key && *now)).then_some(())
    });
    let peer = c.peer_ids[victim].clone();
    let (_, peers) = get_json(&format!("{}/api/v1/peers", c.urls[0]));
    let entry = peers.as_array().unwrap().iter().find(|p| p["peer_id"] == peer.as_str()).cloned();
    assert!(entry.is_some_and(|e| !e["struck_until_ms"].is_null() && e["struck_drvs"] == 1), "{peers}");
    // A third node takes the place while it is stopped.
    wait_for("a replacement builder", Duration::from_secs(30), || {
        (others.iter().filter(|i| building(&c, **i)).count() >= 2).then_some(())
    });
    kill(pid, Signal::SIGCONT).unwrap();

    // 3. Running again, it learns its own strike and drops its claim: its build is cancelled.
    wait_for("the struck node to know its strike and stop its build", Duration::from_secs(30), || {
        let me = struck(&c, victim).iter().any(|(k, me, now)| *k == victim_key && *me && *now);
        (me && !building(&c, victim)).then_some(())
    });
    assert!(c.mesh(victim)["machine"]["builds_cancelled"].as_u64().unwrap() >= 1);
    // The derivation completes on two other nodes; the struck one never attests (no third build).
    let att = wait_for("two attesters", Duration::from_secs(60), || {
        let b: BTreeSet<String> = c.attesters(0, &out_abs).values().flatten().cloned().collect();
        (b.len() >= 2).then_some(b)
    });
    assert!(!att.contains(&peer), "the struck node attested: {att:?}\n{}", c.logs());
    std::thread::sleep(Duration::from_secs(3));
    let att: BTreeSet<String> = c.attesters(0, &out_abs).values().flatten().cloned().collect();
    assert_eq!(att.len(), 2, "a duplicate build: {att:?}");
    let published: u64 = others.iter().map(|i| c.mesh(*i)["machine"]["strikes_published"].as_u64().unwrap()).sum();
    assert!((2..=3).contains(&published), "{published} strike records published for one lapse");

    // 4. Restarted (memory lost), it learns its strike again from the observers' records.
    c.nodes[victim].as_mut().unwrap().stop(Signal::SIGKILL, Duration::from_secs(5));
    c.nodes[victim] = None;
    c.restart(victim);
    wait_for("the restarted node to learn its strike", Duration::from_secs(30), || {
        struck(&c, victim).iter().any(|(k, me, now)| *k == victim_key && *me && *now).then_some(())
    });
}
