//! Issue 10, findings 3, 11 and 12 on real `buildmesh node` processes (3-node local meshes,
//! k = 2, quorum 2, every key trusted).
//!
//! - Poisoned inputs (finding 3): after an input derivation was built and accepted, every node's
//!   store gets a poisoned registration of its output (written straight into the stopped node's
//!   database, and the realised copy removed), as an upload or a malicious peer could have left
//!   it. A dependent submitted afterwards is built on the accepted input, never on the poison:
//!   both builders agree on the honest output, the gateway serves it, and the builders report the
//!   quarantined copy at `GET /api/v1/quarantine`.
//! - Disputed outputs (findings 3 and 11): an unreproducible derivation built twice is a
//!   mismatch; `buildmesh submit --wait` exits non-zero naming the output and why, and a gateway
//!   serves neither its narinfo nor any of its NARs.
//! - Sources (finding 12): a real Nix client with a fresh store substitutes, through the quorum
//!   gateway of a node that built nothing and was not the submitter, an agreed output whose
//!   closure holds a `builtins.toFile`-style text source (max-jobs 0, signatures required).

mod mesh_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use buildmesh::store::{PathInfo, Store};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::store_path::{StorePath, make_text_path};
use mesh_support::*;
use sha2::Digest as _;

fn flat_nar(contents: &[u8]) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.regular(false, contents.len() as u64, &mut &contents[..]).unwrap();
    w.finish().unwrap()
}

fn nar_hash(nar: &[u8]) -> String {
    NixHash::sha256(sha2::Sha256::digest(nar).into()).to_string()
}

fn token(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("api.token")).ok().map(|t| t.trim().to_string())
}

/// `buildmesh submit --wait` against node `i`: (success, stdout + stderr).
fn submit_wait(c: &Cluster, i: usize, dir: &Path, srcs: Option<&Path>, drv: &StorePath) -> (bool, String) {
    let shown = sd().display(drv);
    let mut args: Vec<&str> =
        vec!["submit", "--api", &c.urls[i], "--from", dir.to_str().unwrap(), "--replicas", "2", "--wait"];
    args.extend(["--timeout", "180"]);
    if let Some(s) = srcs {
        args.extend(["--sources", s.to_str().unwrap()]);
    }
    args.push(&shown);
    let out = Command::new(bin())
        .args(&args)
        .env("BUILDMESH_LOG", "warn")
        .envs(token(&c.dir.join(format!("node{i}"))).map(|t| ("BUILDMESH_TOKEN", t)))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// Write a registration of `path` with the NAR `nar` straight into the stopped node's database
/// (replacing whatever is registered) and remove its realised copy: a poisoned local copy.
fn poison(data: &Path, path: &StorePath, nar: &[u8]) {
    let info = {
        let store = Store::open(data).unwrap();
        let blob = store.put_nar(&mut &nar[..]).unwrap();
        PathInfo {
            path: path.clone(),
            nar_hash: blob.nar_hash,
            nar_size: blob.nar_size,
            references: BTreeSet::new(),
            deriver: None,
            ca: None,
            blob: blob.blake3,
            registered_at: 1,
        }
    };
    let db = redb::Database::open(data.join("state.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut paths = txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("paths")).unwrap();
        let key = path.to_string();
        paths.insert(key.as_str(), postcard::to_allocvec(&info).unwrap().as_slice()).unwrap();
    }
    txn.commit().unwrap();
    let realised = data.join("store").join(path.to_string());
    if realised.exists() {
        std::fs::remove_file(&realised).or_else(|_| std::fs::remove_dir_all(&realised)).unwrap();
    }
}

fn builders_of(c: &Cluster, i: usize, path: &str) -> BTreeSet<String> {
    c.attesters(i, path).into_values().flatten().collect()
}

#[test]
fn a_poisoned_local_input_is_never_built_upon() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 3, &[]);
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (input, input_out) = d.add("trusted-input", "echo honest > $out", &[]);
    let (dependent, dependent_out) = d.add("dependent", "cat $input0 > $out", &["trusted-input"]);
    let (input_out_s, dependent_out_s) = (sd().display(&input_out), sd().display(&dependent_out));

    let (ok, out) = submit_wait(&c, 0, &dir, None, &input);
    assert!(ok, "input: {out}\n{}", c.logs());
    for i in 0..3 {
        wait_for(&format!("node {i} to hold both attestations of the input"), Duration::from_secs(60), || {
            (builders_of(&c, i, &input_out_s).len() >= 2).then_some(())
        });
    }

    // Every node's local copy of the input is poisoned.
    let poisoned = flat_nar(b"poison\n");
    for i in 0..3 {
        drop(c.nodes[i].take());
    }
    for i in 0..3 {
        poison(&tmp.path().join(format!("node{i}")), &input_out, &poisoned);
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_members(3, Duration::from_secs(60));

    let (ok, out) = submit_wait(&c, 0, &dir, None, &dependent);
    assert!(ok, "dependent: {out}\n{}", c.logs());
    let honest = nar_hash(&flat_nar(b"honest\n"));
    let atts = wait_for("two attestations of the dependent", Duration::from_secs(60), || {
        let a = c.attesters(0, &dependent_out_s);
        (a.values().flatten().count() >= 2).then_some(a)
    });
    assert_eq!(
        atts.keys().cloned().collect::<Vec<_>>(),
        vec![honest.clone()],
        "the dependent must be built on the accepted input, not the poisoned copy\n{}",
        c.logs()
    );
    // Served with the honest bytes by every gateway; the poisoned NAR by none.
    for i in 0..3 {
        let (s, body) = get(&format!("{}/{}.narinfo", c.urls[i], dependent_out.hash_part()));
        assert_eq!(s, 200, "node {i}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains(&format!("NarHash: {honest}")));
        let p = nar_hash(&poisoned);
        let (s, _) = get(&format!("{}/nar/{}.nar", c.urls[i], p.strip_prefix("sha256:").unwrap()));
        assert_eq!(s, 404, "node {i} served the poisoned NAR");
    }
    // The builders report the replaced copy.
    let quarantined: usize = (0..3)
        .map(|i| {
            let (s, j) = get_json(&format!("{}/api/v1/quarantine", c.urls[i]));
            assert_eq!(s, 200, "{j}");
            j.as_array()
                .unwrap()
                .iter()
                .filter(|q| q["old"]["path"].as_str() == Some(input_out.to_string().as_str()))
                .inspect(|q| assert_eq!(q["old"]["nar_hash"].as_str(), Some(nar_hash(&poisoned).as_str()), "{q}"))
                .count()
        })
        .sum();
    assert!(quarantined >= 2, "both builders of the dependent quarantine the poisoned input ({quarantined})");
}

#[test]
fn disputed_outputs_fail_and_are_not_served_and_sources_substitute() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 3, &[]);
    let dir = tmp.path().join("drvs");
    let srcs = tmp.path().join("srcs");
    std::fs::create_dir_all(&srcs).unwrap();
    let mut d = Drvs::new(&dir);

    // An output that references a text source (as `builtins.toFile` makes).
    let contents = b"echo from-lib\n";
    let lib = make_text_path(&sd(), "lib.sh", contents, []).unwrap();
    std::fs::write(srcs.join(format!("{lib}.nar")), flat_nar(contents)).unwrap();
    let (uses, uses_out) =
        d.add_with_sources("uses-lib", ". $src0 > $out; echo $src0 >> $out", &[], std::slice::from_ref(&lib));
    let (ok, out) = submit_wait(&c, 0, &dir, Some(&srcs), &uses);
    assert!(ok, "uses-lib: {out}\n{}", c.logs());

    // An unreproducible derivation: a mismatch, reported as a failure naming the output.
    let (unrepro, unrepro_out) = d.add("unrepro-clock", "date +%s%N > $out", &[]);
    let (ok, out) = submit_wait(&c, 0, &dir, None, &unrepro);
    assert!(!ok, "submit --wait must fail for a disputed output: {out}\n{}", c.logs());
    let unrepro_out_s = sd().display(&unrepro_out);
    assert!(out.contains(&unrepro_out_s) && out.contains("disagree"), "the failure names the output and why: {out}");

    // The gateway: a node other than the submitter, preferably one that built neither.
    let uses_out_s = sd().display(&uses_out);
    let builders = builders_of(&c, 0, &uses_out_s);
    let gw_index = (1..3).find(|i| !builders.contains(&c.peer_ids[*i])).unwrap_or(2);
    let gw = c.urls[gw_index].clone();
    let hashes = wait_for("both NarHashes of the disputed output at the gateway", Duration::from_secs(60), || {
        let a = c.attesters(gw_index, &unrepro_out_s);
        (a.len() >= 2).then_some(a)
    });
    assert_eq!(get(&format!("{gw}/{}.narinfo", unrepro_out.hash_part())).0, 404);
    for h in hashes.keys() {
        let h = h.strip_prefix("sha256:").unwrap();
        for ext in ["nar", "nar.zst"] {
            let (s, _) = get(&format!("{gw}/nar/{h}.{ext}"));
            assert_eq!(s, 404, "the NAR {h}.{ext} of a disputed output must not be served");
        }
    }

    // A real Nix client substitutes the agreed output and its source from that gateway.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let root = tmp.path().join("client");
    let keys: Vec<String> = c.keys.iter().map(|k| k.nix_public_key().to_string()).collect();
    let keys = keys.join(" ");
    let nix = |args: &[&str]| {
        Command::new("nix-store")
            .args(args)
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env_remove("NIX_CONFIG")
            .output()
            .expect("run nix-store (scripts/test.sh installs nix-bin)")
    };
    let root_s = root.display().to_string();
    let lib_s = sd().display(&lib);
    let o = nix(&[
        "--store",
        &root_s,
        "--realise",
        &uses_out_s,
        "--option",
        "substituters",
        &gw,
        "--option",
        "trusted-public-keys",
        &keys,
        "--option",
        "require-sigs",
        "true",
        "--option",
        "max-jobs",
        "0",
    ]);
    assert!(o.status.success(), "nix-store --realise failed:\n{}\n{}", String::from_utf8_lossy(&o.stderr), c.logs());
    let o = nix(&["--store", &root_s, "--query", "--requisites", &uses_out_s]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&lib_s), "{}", String::from_utf8_lossy(&o.stdout));
    let o = nix(&["--store", &root_s, "--query", "--hash", &lib_s]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), nar_hash(&flat_nar(contents)));
}
