//! A builder killed with SIGKILL in the middle of a build is replaced: its lease lapses (it left
//! the view), the next node in placement order claims the job, and the derivation still ends up
//! attested by two distinct nodes, neither of them the dead one. Then `buildmesh retry DRV --on
//! PEER` makes a third node build it, and `buildmesh retry DRV` at a fourth makes that one build
//! it for the mesh too.

mod mesh_support;

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_support::*;

#[test]
fn a_builder_killed_mid_build_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 5, &[]);
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (drv, out) = d.add("slow-mesh-build", "sleep 4; echo slow > $out", &[]);
    let drv_abs = sd().display(&drv);
    let out_abs = sd().display(&out);
    // `buildmesh submit --wait` on the submitting node, in the background.
    let waiter = {
        let (api, from, d) = (c.urls[0].clone(), dir.display().to_string(), drv_abs.clone());
        std::thread::spawn(move || {
            cli(&[
                "submit",
                "--api",
                &api,
                "--from",
                &from,
                "--replicas",
                "2",
                "--wait",
                "--json",
                "--timeout",
                "90",
                &d,
            ])
        })
    };

    // Two nodes claim and start building.
    let builders: Vec<usize> = wait_for("two nodes building", Duration::from_secs(30), || {
        let b: Vec<usize> = c
            .running()
            .into_iter()
            .filter(|i| {
                c.mesh(*i)["building"].as_array().is_some_and(|l| l.iter().any(|x| x.as_str() == Some(&drv_abs)))
            })
            .collect();
        (b.len() >= 2).then_some(b)
    });
    let victim = builders.iter().copied().find(|i| *i != 0).unwrap_or(builders[0]);
    let victim_peer = c.peer_ids[victim].clone();
    c.nodes[victim].as_mut().unwrap().stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    c.nodes[victim] = None;

    // Another node takes over; two distinct live nodes attest the output.
    let observer = c.running().into_iter().find(|i| *i != 0).unwrap();
    let att = wait_for("two attesters after the takeover", Duration::from_secs(60), || {
        let a = c.attesters(observer, &out_abs);
        let b: BTreeSet<String> = a.values().flatten().cloned().collect();
        (b.len() >= 2).then_some(b)
    });
    assert!(!att.contains(&victim_peer), "the killed node cannot have attested: {att:?}\n{}", c.logs());
    let started: u64 = c.running().into_iter().map(|i| c.mesh(i)["builds_started"].as_u64().unwrap()).sum();
    assert!(started >= 2, "the survivors started {started} builds");
    let replacement: Vec<&String> = att.iter().filter(|b| builders.iter().all(|i| &c.peer_ids[*i] != *b)).collect();
    assert_eq!(replacement.len(), 1, "one node that was not a first builder took over: {att:?}");
    if victim != 0 {
        let (st, out, err) = waiter.join().unwrap();
        assert!(st.success(), "submit --wait: {out}\n{err}\n{}", c.logs());
        let done: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(done[&drv_abs]["out"]["path"], out_abs.as_str(), "{done}");
        let outputs = build_json(&c.urls[0], &drv)["outputs"].clone();
        assert_eq!(outputs["out"]["path"], out_abs.as_str());
    }

    // `buildmesh retry DRV --on PEER` (relayed by node 0's driver) makes a node that has not
    // built it build it anyway: a third attester appears.
    let target = c.running().into_iter().find(|i| *i != 0 && !att.contains(&c.peer_ids[*i])).unwrap();
    let (st, out, err) = cli(&["retry", &drv_abs, "--on", &c.peer_ids[target], "--api", &c.urls[0]]);
    assert!(st.success(), "retry --on: {out}\n{err}");
    wait_for("the targeted node to attest too", Duration::from_secs(60), || {
        c.attesters(0, &out_abs).values().flatten().any(|b| b == &c.peer_ids[target]).then_some(())
    });

    // Plain `buildmesh retry DRV` at a mesh node that has not built it: that node builds the
    // mesh's job, and its attestation reaches the others by gossip.
    let attested: BTreeSet<String> = c.attesters(0, &out_abs).values().flatten().cloned().collect();
    let here = c.running().into_iter().find(|i| !attested.contains(&c.peer_ids[*i])).unwrap();
    let (st, out, err) = cli(&["retry", &drv_abs, "--api", &c.urls[here], "--json"]);
    assert!(st.success(), "retry: {out}\n{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["mesh"], true, "{answer}");
    wait_for("the retrying node's attestation to reach node 0", Duration::from_secs(60), || {
        c.attesters(0, &out_abs).values().flatten().any(|b| b == &c.peer_ids[here]).then_some(())
    });
}
