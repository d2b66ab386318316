//! Issue 14, items 4 to 7, on one real 3-node mesh (k = 2, quorum 2, every key trusted): a
//! deterministic derivation built by two builders and an unreproducible one (a directory with a
//! file that holds the build time) built by two, which disagree.
//!
//! - Logs from any node: the node that built neither fetches the log from a builder, checked
//!   against the builder's signed log digest (`GET /api/v1/builds/<drv>/log`, `buildmesh log`);
//!   after a builder's stored log is swapped (written into its stopped database), asking that
//!   builder is refused and the other builder's log is served.
//!   The fetched log is cached there, served from the cache while it matches the signed digest,
//!   and fetched again when the cached file is altered.
//! - NAR diff: that node fetches both NARs of the disputed output and reports the differing file
//!   (`buildmesh diff`, `GET /diff` as HTML and as JSON).
//! - Bounds: 20 concurrent anonymous diffs and 20 concurrent log fetches get 503s that name the
//!   bound, and the dashboard keeps answering meanwhile.
//! - in-toto export of the mesh: the node that built `logged` neither exports every attestation
//!   it holds, each in the DSSE envelope its builder signed when it attested (checked here,
//!   independently of the node: ed25519 over the PAE under that builder's key), naming that
//!   builder's NarHash; nothing is left out (`x-buildmesh-not-exported: 0`, and `buildmesh
//!   export` says so on stderr); an altered payload does not verify. After a restart a builder
//!   still exports the other builder's envelope (stored with the attestation).
//! - forged provenance: an intruder peer gossips attestations whose envelope is signed by
//!   another key, names a NarHash the attestation does not, or is over the size limit; they are
//!   rejected (counted), and no node stores or exports them, while the intruder's honest
//!   attestation with its own envelope is stored and exported signed by the intruder's key.
//! - `/reproducible.json` and `/metrics` after a revision of both jobs is published.

mod mesh_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use buildmesh::store::Store;
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::intoto::{MAX_STATEMENT_LEN, PAYLOAD_TYPE, Provenance, Statement, builder_id, pae};
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Attestation, Encode as _, Kind, Message};
use mesh_support::intruder::{Intruder, signed_attestation, throwaway};
use mesh_support::*;

fn submit_wait(c: &Cluster, i: usize, dir: &Path, drv: &StorePath) -> (bool, String) {
    let shown = sd().display(drv);
    let out = Command::new(bin())
        .args(["submit", "--api", &c.urls[i], "--from", dir.to_str().unwrap(), "--replicas", "2", "--wait"])
        .args(["--timeout", "180", &shown])
        .env("BUILDMESH_LOG", "warn")
        .env("BUILDMESH_TOKEN", c.token(i))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn builders_of(c: &Cluster, i: usize, path: &str) -> BTreeSet<String> {
    c.attesters(i, path).into_values().flatten().collect()
}

fn get_with(url: &str, accept: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = http().get(url).header("accept", accept).send().unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.bytes().unwrap().to_vec())
}

/// `n` concurrent GETs of each of `urls` (JSON), all sent at once: which URL, status, body.
fn flood(urls: &[(String, &str)], n: usize) -> Vec<(usize, (u16, String))> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(n * urls.len()));
    let mut threads = Vec::new();
    for (i, (url, _)) in urls.iter().enumerate() {
        for _ in 0..n {
            let (url, start) = (url.clone(), start.clone());
            threads.push(std::thread::spawn(move || {
                let client = http();
                start.wait();
                let r = client.get(&url).header("accept", "application/json").send().unwrap();
                (i, (r.status().as_u16(), r.text().unwrap_or_default()))
            }));
        }
    }
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// DSSE's PAE of an in-toto payload, spelled out here (not the node's code).
fn dsse_pae(p: &[u8]) -> Vec<u8> {
    let mut v = format!("DSSEv1 28 application/vnd.in-toto+json {} ", p.len()).into_bytes();
    v.extend_from_slice(p);
    v
}

/// One subject of an exported envelope: which of `keys` signed it, the output, its sha256.
type Exported = (usize, String, String);

/// Node `i`'s in-toto export, every envelope checked here: its signature with ed25519 over the
/// PAE under the key its `keyid` names (one of `keys`), the statement's type and builder id.
/// Returns the subjects and the `x-buildmesh-not-exported` header.
fn in_toto_export(c: &Cluster, i: usize, keys: &[NodeKey]) -> (Vec<Exported>, String) {
    let (s, h, body) = get_with(&format!("{}/api/v1/attestations?format=in-toto", c.urls[i]), "application/json");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let mut out = Vec::new();
    for line in std::str::from_utf8(&body).unwrap().lines() {
        let env: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
        let payload = B64.decode(env["payload"].as_str().unwrap()).unwrap();
        let sig = &env["signatures"][0];
        let keyid = sig["keyid"].as_str().unwrap();
        let k = keys.iter().position(|k| k.nix_public_key().to_string() == keyid).expect("a known builder key");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(keys[k].node_id().as_bytes()).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&B64.decode(sig["sig"].as_str().unwrap()).unwrap()).unwrap();
        vk.verify_strict(&dsse_pae(&payload), &sig).expect("the DSSE signature verifies under the builder key");
        let mut altered = payload.clone();
        altered[10] ^= 1;
        assert!(vk.verify_strict(&dsse_pae(&altered), &sig).is_err(), "an altered statement does not verify");
        let st: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
        assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
        assert_eq!(st["predicate"]["runDetails"]["builder"]["id"], keyid);
        for s in st["subject"].as_array().unwrap() {
            let (name, sha) = (s["name"].as_str().unwrap(), s["digest"]["sha256"].as_str().unwrap());
            out.push((k, name.to_string(), sha.to_string()));
        }
    }
    let left_out = h.get("x-buildmesh-not-exported").map_or("(no header)", |v| v.to_str().unwrap()).to_string();
    (out, left_out)
}

/// The NarHash (hex) builder `b` signed for `path`, as node `i` knows it.
fn hash_hex(c: &Cluster, i: usize, path: &str, b: usize) -> String {
    let by = c.attesters(i, path);
    let (h, _) = by.iter().find(|(_, who)| who.contains(&c.peer_ids[b])).expect("b attested path");
    hex::encode(buildmesh_protocol::hash::NixHash::parse(h, None).unwrap().digest())
}

/// An attestation by `key` of a made-up derivation `n` (nobody builds it), NarHash bytes `h`.
fn made_up(key: &NodeKey, n: u8, h: u8) -> Attestation {
    let drv = StorePath::new([n; 20], &format!("forged-{n}.drv")).unwrap();
    let path = StorePath::new([n; 20], &format!("forged-{n}")).unwrap();
    signed_attestation(key, key.node_id(), drv, path, [h; 32], [h; 32])
}

/// The intruder's gossip: its honest attestation (with its own envelope) and three with a forged
/// one. Returns the honest output and the forged outputs.
fn forge_provenance(intruder: &Intruder) -> (String, Vec<String>) {
    let (x, y) = (&intruder.key, throwaway(7));
    let out = |a: &Attestation| sd().display(&a.outputs["out"].path);
    let mut honest = made_up(x, 0xa1, 1);
    honest.provenance = Provenance::sign(x, &honest, None);
    intruder.publish_as(x, &Message::Attestation(honest.clone()));
    let mut forged = Vec::new();
    // Signed by another key (its statement otherwise right).
    let mut a = made_up(x, 0xa2, 2);
    a.provenance = Provenance::sign(&y, &a, None);
    forged.push(a);
    // Signed by the builder, but a subject's NarHash is not the attested one.
    let mut a = made_up(x, 0xa3, 3);
    let mut st = Statement::of(&a, None, &builder_id(&a).unwrap(), None);
    st.subject[0].digest.sha256 = hex::encode([0xee; 32]);
    let payload = st.to_bytes();
    a.provenance = Some(Provenance { signature: *x.sign_nix(&pae(PAYLOAD_TYPE, &payload)).bytes(), payload });
    forged.push(a);
    // A statement over the size limit.
    let mut a = made_up(x, 0xa4, 4);
    a.provenance = Some(Provenance { payload: vec![b' '; MAX_STATEMENT_LEN + 1], signature: [0; 64] });
    forged.push(a);
    for a in &forged {
        intruder.publish_forged(x, Kind::Attestation, a.to_bytes());
    }
    (out(&honest), forged.iter().map(out).collect())
}

#[test]
fn logs_diff_export_feed_and_metrics_on_a_real_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 3, &[]);
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (logged, logged_out) = d.add("logged", "echo audit-log-marker-1; echo ok > $out", &[]);
    let (unrepro, unrepro_out) =
        d.add("unrepro-dir", "mkdir $out; echo same > $out/same; date +%s%N > $out/stamp; echo unrepro-log", &[]);
    let (ok, out) = submit_wait(&c, 0, &dir, &logged);
    assert!(ok, "logged: {out}\n{}", c.logs());
    let (ok, out) = submit_wait(&c, 0, &dir, &unrepro);
    assert!(!ok, "the unreproducible derivation is disputed: {out}");
    let (logged_s, unrepro_s) = (sd().display(&logged_out), sd().display(&unrepro_out));
    for i in 0..3 {
        wait_for(&format!("node {i} to hold both builders' attestations"), Duration::from_secs(60), || {
            (builders_of(&c, i, &logged_s).len() >= 2 && builders_of(&c, i, &unrepro_s).len() >= 2).then_some(())
        });
    }

    // ---- item 4: the log from a node that built nothing ----
    let builders = builders_of(&c, 0, &logged_s);
    let other = (0..3).find(|i| !builders.contains(&c.peer_ids[*i])).expect("a node that did not build `logged`");
    let b_idx: Vec<usize> = (0..3).filter(|i| builders.contains(&c.peer_ids[*i])).collect();
    let drv_s = sd().display(&logged);
    let log_url = |url: &str, q: &str| format!("{url}/api/v1/builds/{logged}/log{q}");
    let (s, h, body) = get_with(&log_url(&c.urls[other], ""), "text/plain");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(s, 200, "{text}\n{}", c.logs());
    assert!(text.contains("audit-log-marker-1"), "{text}");
    let served_by = h["x-buildmesh-log-builder"].to_str().unwrap().to_string();
    assert!(builders.contains(&served_by), "{served_by} is a builder");
    assert!(h.contains_key("x-buildmesh-log-sha256"), "a fetched log is marked as checked");
    // The fetched log is cached on `other`, and read from the cache only while it still matches
    // the signed digest: altered on disk, it is fetched again.
    let sha = h["x-buildmesh-log-sha256"].to_str().unwrap().to_string();
    let cached_file = tmp.path().join(format!("node{other}/mesh/logs/{sha}"));
    assert_eq!(std::fs::read(&cached_file).unwrap(), body, "the fetched log is cached as {}", cached_file.display());
    let (s, h, again) = get_with(&log_url(&c.urls[other], ""), "text/plain");
    assert_eq!((s, again.as_slice()), (200, body.as_slice()));
    assert_eq!(h.get("x-buildmesh-log-cached").map(|v| v.to_str().unwrap()), Some("true"), "served from the cache");
    std::fs::write(&cached_file, text.replace("marker-1", "marker-Y")).unwrap();
    let (s, h, again) = get_with(&log_url(&c.urls[other], ""), "text/plain");
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&again).contains("audit-log-marker-1"), "the altered cached log is not served");
    assert!(h.get("x-buildmesh-log-cached").is_none(), "an altered cached log is fetched again");
    assert_eq!(std::fs::read(&cached_file).unwrap(), body, "and cached again");
    let (st, stdout, stderr) = cli_env(
        &["log", "--api", &c.urls[other], "--builder", &c.peer_ids[b_idx[1]], &drv_s],
        &[("BUILDMESH_LOG", "warn")],
    );
    assert!(st.success() && stdout.contains("audit-log-marker-1"), "{stdout}\n{stderr}");

    // ---- item 5: the NAR diff of the disputed output, computed by the node that built `logged` neither ----
    let (st, stdout, stderr) = cli_env(&["diff", "--api", &c.urls[other], &unrepro_s], &[("BUILDMESH_LOG", "warn")]);
    assert!(st.success(), "{stdout}\n{stderr}\n{}", c.logs());
    assert!(stdout.contains("changed  /stamp  (contents)"), "{stdout}");
    assert!(!stdout.contains("/same"), "the identical file is not reported: {stdout}");
    assert!(stdout.contains("0 added, 0 removed, 1 changed"), "{stdout}");
    let diff_url = format!("{}/diff?path={}", c.urls[other], unrepro_s);
    let (s, h, body) = get_with(&diff_url, "text/html");
    let html = String::from_utf8_lossy(&body);
    assert_eq!(s, 200, "{html}");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(html.contains("/stamp") && html.contains("<pre>"), "{html}");
    let (s, _, body) = get_with(&diff_url, "application/json");
    assert_eq!(s, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["diff"]["changed"][0]["path"], "/stamp", "{j}");
    assert!(j["diff"]["changed"][0]["unified_diff"].as_str().unwrap().contains("+"), "{j}");
    assert_ne!(j["a"]["nar_hash"], j["b"]["nar_hash"]);
    let (s, _, _) = get_with(&format!("{}/api/v1/diff?path={}", c.urls[other], logged_s), "application/json");
    assert_eq!(s, 409, "builders that agree have nothing to diff");

    // ---- bounds: floods of anonymous diffs and log fetches are refused naming the bound, while
    // the dashboard keeps answering from its cache ----
    let logs_dir = tmp.path().join(format!("node{other}/mesh/logs"));
    let (s, _) = get(&format!("{}/", c.urls[other]));
    assert_eq!(s, 200, "the overview before the flood");
    let mut refused = (0, 0);
    for round in 0..5 {
        let _ = std::fs::remove_dir_all(&logs_dir);
        let urls =
            [(diff_url.clone(), "diffs are running"), (log_url(&c.urls[other], ""), "build log fetches are running")];
        let answers = flood(&urls, 20);
        let (s, _) = get(&format!("{}/", c.urls[other]));
        assert_eq!(s, 200, "the overview during the flood (round {round})");
        for (i, (status, body)) in answers {
            let bound = urls[i].1;
            assert!(status == 200 || status == 503, "{}: {status} {body}", urls[i].0);
            if status == 503 {
                assert!(body.contains(bound), "a refusal names the bound ({bound}): {body}");
                if i == 0 { refused.0 += 1 } else { refused.1 += 1 }
            }
        }
        if refused.0 > 0 && refused.1 > 0 {
            break;
        }
    }
    assert!(refused.0 > 0 && refused.1 > 0, "20 concurrent diffs and 20 log fetches hit their bounds: {refused:?}");
    let (s, _, _) = get_with(&diff_url, "application/json");
    assert_eq!(s, 200, "diffs are served again after the flood");

    // ---- item 6: the in-toto export of the mesh, from the node that built `logged` neither:
    // every attestation in the envelope its builder signed ----
    let (exported, left_out) = in_toto_export(&c, other, &c.keys);
    assert_eq!(left_out, "0", "every attestation carries its builder's envelope");
    assert_eq!(exported.len(), c.attestation_ids(other).len(), "one envelope per attestation: {exported:?}");
    for &b in &b_idx {
        assert_ne!(b, other);
        let want = (b, logged_s.clone(), hash_hex(&c, other, &logged_s, b));
        assert!(exported.contains(&want), "builder {b}'s envelope for `logged`: {exported:?}");
    }
    for b in (0..3).filter(|b| builders_of(&c, other, &unrepro_s).contains(&c.peer_ids[*b])) {
        let want = (b, unrepro_s.clone(), hash_hex(&c, other, &unrepro_s, b));
        assert!(exported.contains(&want), "builder {b}'s own NarHash of the disputed output: {exported:?}");
    }
    let (st, stdout, stderr) =
        cli_env(&["export", "--api", &c.urls[other], "--format", "in-toto"], &[("BUILDMESH_LOG", "warn")]);
    assert!(st.success() && stdout.lines().count() == exported.len(), "{stdout}\n{stderr}");
    assert!(stderr.contains("0 attestations of other builders not exported"), "{stderr}");

    // ---- /reproducible.json and /metrics after a revision of both jobs ----
    let rev = serde_json::json!({
        "channel": "test", "branch": "main", "commit": "c0ffee", "replicas": 2,
        "jobs": [{"drv": drv_s, "package": "logged"}, {"drv": sd().display(&unrepro), "package": "unrepro-dir"}],
    });
    let r = http()
        .post(format!("{}/api/v1/revisions", c.urls[0]))
        .bearer_auth(c.token(0))
        .header("content-type", "application/json")
        .body(rev.to_string())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
    let feed = wait_for("the revision in /reproducible.json", Duration::from_secs(30), || {
        let (s, j) = get_json(&format!("{}/reproducible.json", c.urls[0]));
        (s == 200 && j["revisions"].as_array().is_some_and(|r| !r.is_empty())).then_some(j)
    });
    let r0 = &feed["revisions"][0];
    assert_eq!(r0["branch"], "main", "{feed}");
    assert_eq!(r0["systems"]["x86_64-linux"]["matching"], 1, "{feed}");
    assert_eq!(r0["systems"]["x86_64-linux"]["not_matching"], 1, "{feed}");
    let bad = &r0["not_matching"][0];
    assert_eq!(bad["package"], "unrepro-dir");
    assert_eq!(bad["outputs"][&unrepro_s].as_array().unwrap().len(), 2, "{feed}");

    let mtext = String::from_utf8(get(&format!("{}/metrics", c.urls[b_idx[0]])).1).unwrap();
    assert_eq!(mtext.matches("# EOF").count(), 1, "one OpenMetrics document");
    assert!(mtext.trim_end().ends_with("# EOF"));
    let m = c.metric_series(b_idx[0]);
    let v = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no series {k} in\n{mtext}"));
    assert!(v("buildmesh_attestations") >= 4.0);
    assert_eq!(v("buildmesh_outputs{verdict=\"mismatch\"}"), 1.0);
    assert_eq!(v("buildmesh_peers{state=\"members\"}"), 3.0);
    assert!(v("buildmesh_gossip_bytes_total{direction=\"in\"}") > 0.0);
    assert!(v("buildmesh_build_duration_seconds_count") >= 1.0, "this builder built `logged`");
    assert!(v("buildmesh_store_disk_bytes{part=\"database\"}") > 0.0);
    assert!(v("buildmesh_local_builds{state=\"done\"}") >= 1.0);
    let labels = "channel=\"test\",branch=\"main\",system=\"x86_64-linux\"";
    let m0 = c.metric_series(0);
    let v0 = |k: String| *m0.get(&k).unwrap_or_else(|| panic!("no series {k}"));
    // Both built (the disputed one too: its state is succeeded, its verdict not-matching).
    assert_eq!(v0(format!("buildmesh_revision_jobs{{{labels},state=\"succeeded\"}}")), 2.0);
    assert_eq!(v0(format!("buildmesh_revision_outputs{{{labels},verdict=\"not-matching\"}}")), 1.0);
    assert!((0.0..=1.0).contains(&v0(format!("buildmesh_revision_availability_ratio{{{labels}}}"))));

    // ---- item 4 again: a builder's log swapped in its database is refused ----
    for &i in &b_idx {
        let (s, h, body) = get_with(&log_url(&c.urls[other], &format!("?builder={}", c.peer_ids[i])), "text/plain");
        assert_eq!(s, 200, "builder {i}: {}", String::from_utf8_lossy(&body));
        assert_eq!(h["x-buildmesh-log-builder"].to_str().unwrap(), c.peer_ids[i]);
    }
    // Not node 0: the others bootstrap to its address, which a restart changes.
    let (swapped, honest) = if b_idx[0] == 0 { (b_idx[1], b_idx[0]) } else { (b_idx[0], b_idx[1]) };
    c.nodes[swapped].as_mut().unwrap().stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    c.nodes[swapped] = None;
    {
        let store = Store::open(tmp.path().join(format!("node{swapped}"))).unwrap();
        // Same length as the signed log, other bytes: only the hash can tell.
        let forged = text.replace("marker-1", "marker-X");
        assert_eq!(forged.len(), text.len());
        store.put_log(&logged, forged.as_bytes()).unwrap();
    }
    c.restart(swapped);
    c.wait_members(3, Duration::from_secs(60));
    // The honest log is cached on `other` under the digest both builders signed; without the
    // cache, asking the swapped builder goes to the network.
    let _ = std::fs::remove_dir_all(&logs_dir);
    let q = format!("?builder={}", c.peer_ids[swapped]);
    let (s, _, body) = get_with(&log_url(&c.urls[other], &q), "text/plain");
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(s, 502, "{msg}");
    assert!(msg.contains("does not match the builder's signed sha256"), "{msg}");
    let (s, h, body) = get_with(&log_url(&c.urls[other], ""), "text/plain");
    assert_eq!(s, 200, "{}\n{}", String::from_utf8_lossy(&body), c.logs());
    assert_eq!(h["x-buildmesh-log-builder"].to_str().unwrap(), c.peer_ids[honest], "the honest builder's log");
    assert!(String::from_utf8_lossy(&body).contains("audit-log-marker-1"));

    // ---- item 6 again: the restarted builder still exports the other builder's envelope ----
    let (exported, _) = in_toto_export(&c, swapped, &c.keys);
    let want = (honest, logged_s.clone(), hash_hex(&c, swapped, &logged_s, honest));
    assert!(exported.contains(&want), "kept across a restart: {exported:?}");

    // ---- forged provenance from an intruder peer: rejected, stored and exported nowhere ----
    let intruder = Intruder::join(&c, throwaway(6));
    let rejected = |i: usize| c.mesh(i)["gossip"]["rejected"].as_u64().unwrap_or(0);
    let before = rejected(0);
    let (honest_out, forged_outs) = forge_provenance(&intruder);
    wait_for("the intruder's honest attestation on node 0", Duration::from_secs(30), || {
        (!c.attesters(0, &honest_out).is_empty()).then_some(())
    });
    wait_for("the three forged ones rejected", Duration::from_secs(30), || (rejected(0) >= before + 3).then_some(()));
    let mut keys = c.keys.clone();
    keys.push(intruder.key.clone());
    for i in 0..3 {
        for f in &forged_outs {
            assert!(c.attesters(i, f).is_empty(), "node {i} stored the forged attestation of {f}");
        }
        let (exported, _) = in_toto_export(&c, i, &keys);
        assert!(!exported.iter().any(|(_, name, _)| forged_outs.contains(name)), "node {i} exports a forgery");
        if i == 0 {
            assert!(exported.iter().any(|(k, name, _)| *k == 3 && *name == honest_out), "the honest one, by its key");
        }
    }
    intruder.shutdown();
}
