//! Builders check input sources against their store paths. A submitter offers a "source" whose
//! bytes are not those its (text) store path was computed from; the submitter's own node accepts
//! it (it cannot tell an input-addressed path from a forged one), but every other node that is
//! designated to build fetches the bytes, finds that they do not hash to the path, refuses to
//! build, and signs a failure saying so, which every node can read at `GET /api/v1/failures`.
//! An honest source under the same scheme builds everywhere.

mod mesh_support;

use std::collections::BTreeSet;
use std::time::Duration;

use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::store_path::make_text_path;
use mesh_support::*;

fn flat_nar(contents: &[u8]) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.regular(false, contents.len() as u64, &mut &contents[..]).unwrap();
    w.finish().unwrap()
}

#[test]
fn a_source_whose_bytes_do_not_match_its_path_is_refused_by_other_builders() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 3, &[]);
    let (dir, srcs) = (tmp.path().join("drvs"), tmp.path().join("srcs"));
    std::fs::create_dir_all(&srcs).unwrap();
    let mut d = Drvs::new(&dir);

    // Honest: the path is the text path of these bytes.
    let honest = make_text_path(&sd(), "honest-lib.sh", b"echo honest\n", []).unwrap();
    std::fs::write(srcs.join(format!("{honest}.nar")), flat_nar(b"echo honest\n")).unwrap();
    let (good, good_out) = d.add_with_sources("uses-honest-source", ". $src0 > $out", &[], &[honest]);
    // Forged: the text path of other bytes.
    let forged = make_text_path(&sd(), "forged-lib.sh", b"echo what was reviewed\n", []).unwrap();
    std::fs::write(srcs.join(format!("{forged}.nar")), flat_nar(b"echo something else\n")).unwrap();
    let (bad, _) = d.add_with_sources("uses-forged-source", ". $src0 > $out", &[], std::slice::from_ref(&forged));

    for drv in [&good, &bad] {
        let (st, out, err) = cli(&[
            "submit",
            "--api",
            &c.urls[0],
            "--from",
            dir.to_str().unwrap(),
            "--sources",
            srcs.to_str().unwrap(),
            "--replicas",
            "2",
            &sd().display(drv),
        ]);
        assert!(st.success(), "submit: {out}\n{err}\n{}", c.logs());
    }

    wait_state(&c.urls[0], &good, "done", Duration::from_secs(60));
    let good_out = sd().display(&good_out);
    wait_for("two builders to attest the honest job", Duration::from_secs(60), || {
        (c.attesters(0, &good_out).values().flatten().count() >= 2).then_some(())
    });

    // Some node other than the submitter was designated for the forged job, and refused it.
    let url = format!("{}/api/v1/failures?drv={}", c.urls[0], sd().display(&bad));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let failures = loop {
        let (s, j) = get_json(&url);
        assert_eq!(s, 200, "{j}");
        let refusals: Vec<serde_json::Value> = j
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["peer_id"] != c.peer_ids[0].as_str())
            .filter(|f| f["reason"].as_str().unwrap().contains("do not match its store path"))
            .cloned()
            .collect();
        if !refusals.is_empty() {
            break refusals;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no builder refused the forged source; failures: {j}\nmesh: {}\n{}",
            c.mesh(0),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(reason.contains(&forged.to_string()), "the failure names the source: {reason}");
    // No node but the submitter holds an attestation of the forged job's output.
    let (_, builds) = get_json(&format!("{}/api/v1/attestations?drv={}", c.urls[0], sd().display(&bad)));
    let builders: BTreeSet<String> = builds
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["peer_id"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    assert!(builders.iter().all(|b| b == &c.peer_ids[0]), "{builders:?}");
    let (s, j) = get_json(&format!("{}/api/v1/failures?drv=not-a-drv", c.urls[1]));
    assert_eq!(s, 400, "{j}");
}
