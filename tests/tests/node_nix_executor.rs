//! The `nix` executor end to end: a `buildmesh node --executor nix` process builds every vector
//! derivation through the host's Nix (`nix-store --realise`), then a fresh Nix client store
//! substitutes every output from the node's gateway without building, and each NarHash equals the
//! one real Nix recorded in the vectors.

mod node_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use node_support::*;

#[test]
fn nix_executor_builds_the_vectors_and_a_client_substitutes_them() {
    let tmp = tempfile::tempdir().unwrap();
    // Without the operator's opt-in the nix executor (builders as root, host network) refuses.
    match NodeProc::try_start(&tmp.path().join("refused"), &["--executor", "nix"]) {
        Err((_, log)) => assert!(log.contains("allow_unsafe_nix_executor"), "{log}"),
        Ok(_) => panic!("the nix executor started without --allow-unsafe-nix-executor"),
    }
    let node = NodeProc::start(
        &tmp.path().join("data"),
        &["--executor", "nix", "--slots", "2", "--allow-unsafe-nix-executor"],
    );
    let url = node.url.clone();

    let drv_rows = tsv(&vectors().join("drv/index.tsv"));
    let nar_rows: BTreeMap<String, Vec<String>> =
        tsv(&vectors().join("nar/index.tsv")).into_iter().map(|r| (r[1].clone(), r)).collect();
    // Only derivations whose every output has a NAR in the vectors, i.e. the deterministic ones:
    // once the host store holds an unreproducible output, `nix` rebuilds it with `--check`, and
    // Nix itself then reports the difference as a failure.
    let mut outputs_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &drv_rows {
        outputs_of.entry(r[1].clone()).or_default().push(r[3].clone());
    }
    let drvs: BTreeSet<String> = outputs_of
        .iter()
        .filter(|(_, outs)| outs.iter().all(|o| nar_rows.contains_key(o)))
        .map(|(d, _)| d.clone())
        .collect();
    assert!(drvs.len() > 10 && drvs.len() < outputs_of.len(), "{} of {}", drvs.len(), outputs_of.len());
    let mut args: Vec<String> = ["submit", "--api", &url, "--from"].iter().map(|s| s.to_string()).collect();
    args.push(vectors().join("drv").display().to_string());
    args.extend(["--wait", "--json", "--timeout", "600"].iter().map(|s| s.to_string()));
    args.extend(drvs.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (st, out, err) = cli(&refs);
    assert!(st.success(), "submit --wait failed: {out}\n{err}\n{}", node.log_text());

    // Every output with a NAR in the vectors has the NarHash and NarSize Nix recorded.
    let result: BTreeMap<String, BTreeMap<String, serde_json::Value>> = serde_json::from_str(&out).unwrap();
    let mut checked = BTreeSet::new();
    for outputs in result.values() {
        for o in outputs.values() {
            let path = o["path"].as_str().unwrap().to_string();
            if let Some(row) = nar_rows.get(&path) {
                assert_eq!(o["nar_hash"].as_str().unwrap(), row[2], "{path}");
                assert_eq!(o["nar_size"].as_u64().unwrap().to_string(), row[3], "{path}");
                checked.insert(path);
            }
        }
    }
    assert!(checked.len() > 10, "only {} outputs checked", checked.len());

    // A fresh client store substitutes them all from the gateway (max-jobs 0: no local builds).
    let root = tmp.path().join("client");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let o = Command::new("nix-store")
        .arg("--store")
        .arg(&root)
        .arg("--realise")
        .args(&checked)
        .args(["--option", "substituters", &url, "--option", "trusted-public-keys", &node.public_key])
        .args(["--option", "max-jobs", "0"])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(o.status.success(), "nix-store --realise failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("nix-store")
        .arg("--store")
        .arg(&root)
        .args(["--query", "--hash"])
        .args(&checked)
        .env("HOME", &home)
        .output()
        .unwrap();
    let hashes: Vec<String> = String::from_utf8(o.stdout).unwrap().lines().map(String::from).collect();
    assert_eq!(hashes.len(), checked.len());
    for (p, h) in checked.iter().zip(&hashes) {
        assert_eq!(*h, nar_rows[p][2], "{p}");
    }
}
