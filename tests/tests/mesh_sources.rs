//! Builders check input sources against their store paths. A submitter offers a "source" whose
//! bytes are not those its (text) store path was computed from: the submitter's node refuses the
//! upload (issue 10, finding 2: only content-addressed sources whose bytes match may be
//! uploaded). When such a registration is on a node anyway (written into its store before it
//! started, as a malicious or old node could have it), every other node that is designated to
//! build fetches the bytes, finds that they do not hash to the path, refuses to build, and signs
//! a failure saying so, which every node can read at `GET /api/v1/failures`; the submitter's own
//! node does not build on it either. An honest source under the same scheme builds everywhere.

mod mesh_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::store_path::{StorePath, make_text_path};
use mesh_support::*;

fn flat_nar(contents: &[u8]) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.regular(false, contents.len() as u64, &mut &contents[..]).unwrap();
    w.finish().unwrap()
}

#[test]
fn a_source_whose_bytes_do_not_match_its_path_is_refused_by_other_builders() {
    let tmp = tempfile::tempdir().unwrap();
    // The forged source is registered on node 0 before it starts (see the module docs).
    let forged = make_text_path(&sd(), "forged-lib.sh", b"echo what was reviewed\n", []).unwrap();
    let forged_nar = flat_nar(b"echo something else\n");
    {
        let store = buildmesh::store::Store::open(tmp.path().join("node0")).unwrap();
        let blob = store.put_nar(&mut &forged_nar[..]).unwrap();
        store
            .register_path(&buildmesh::store::PathInfo {
                path: forged.clone(),
                nar_hash: blob.nar_hash,
                nar_size: blob.nar_size,
                references: BTreeSet::new(),
                deriver: None,
                ca: None,
                blob: blob.blake3,
                registered_at: 1,
            })
            .unwrap();
    }
    let c = Cluster::start(tmp.path(), 3, &[]);
    let (dir, srcs) = (tmp.path().join("drvs"), tmp.path().join("srcs"));
    std::fs::create_dir_all(&srcs).unwrap();
    let mut d = Drvs::new(&dir);

    // Honest: the path is the text path of these bytes.
    let honest = make_text_path(&sd(), "honest-lib.sh", b"echo honest\n", []).unwrap();
    std::fs::write(srcs.join(format!("{honest}.nar")), flat_nar(b"echo honest\n")).unwrap();
    let (good, good_out) = d.add_with_sources("uses-honest-source", ". $src0 > $out", &[], &[honest]);
    // Forged: the text path of other bytes.
    let (bad, _) = d.add_with_sources("uses-forged-source", ". $src0 > $out", &[], std::slice::from_ref(&forged));
    let forged_srcs = tmp.path().join("forged-srcs");
    std::fs::create_dir_all(&forged_srcs).unwrap();
    std::fs::write(forged_srcs.join(format!("{forged}.nar")), &forged_nar).unwrap();

    let submit = |drv: &StorePath, srcs: &Path| {
        cli(&[
            "submit",
            "--api",
            &c.urls[1],
            "--from",
            dir.to_str().unwrap(),
            "--sources",
            srcs.to_str().unwrap(),
            "--replicas",
            "2",
            &sd().display(drv),
        ])
    };
    // Uploading the forged source is refused by the node it is uploaded to.
    let (st, out, err) = submit(&bad, &forged_srcs);
    assert!(!st.success(), "the forged source must be refused: {out}\n{err}");
    assert!(err.contains("not a content-addressed path") && err.contains(&forged.to_string()), "{err}");
    let (st, out, err) = submit(&good, &srcs);
    assert!(st.success(), "submit: {out}\n{err}\n{}", c.logs());
    // Node 0 has the forged registration: the derivation alone is accepted there (a raw upload:
    // the client would want the source's bytes).
    {
        use buildmesh::submit::wire::{DrvEntry, HEADER_VERSION, SubmitHeader, encode_body};
        let bytes = std::fs::read(dir.join("uses-forged-source.drv")).unwrap();
        let header = SubmitHeader {
            version: HEADER_VERSION,
            store_dir: "/nix/store".into(),
            requested: vec![sd().display(&bad)],
            priority: 0,
            replicas: 2,
            drvs: vec![DrvEntry { path: sd().display(&bad), size: bytes.len() as u64 }],
            sources: vec![],
        };
        let body = encode_body(&header, &[&bytes], &[]).unwrap();
        let mut req = http().post(format!("{}/api/v1/submit", c.urls[0])).body(body);
        if let Ok(t) = std::fs::read_to_string(tmp.path().join("node0/api.token")) {
            req = req.bearer_auth(t.trim());
        }
        let r = req.send().unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
    }

    wait_state(&c.urls[1], &good, "done", Duration::from_secs(60));
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
    // No node holds an attestation of the forged job's output (the submitter's own node checks
    // its inputs too).
    let (_, builds) = get_json(&format!("{}/api/v1/attestations?drv={}", c.urls[0], sd().display(&bad)));
    let builders: BTreeSet<String> = builds
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["peer_id"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    assert!(builders.is_empty(), "{builders:?}");
    let (s, j) = get_json(&format!("{}/api/v1/failures?drv=not-a-drv", c.urls[1]));
    assert_eq!(s, 400, "{j}");
}
