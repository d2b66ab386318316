//! Bounded disk (issue 15 item 5) on two real `buildmesh node` processes: node 1 runs with a
//! small `--max-store-bytes`, node 0 without a limit. Derivations made by a real
//! `nix-instantiate` are built by both; then node 1's background collector brings its store
//! under the limit, least recently used first; a collected output stays attested and node 1's
//! gateway fetches it back from node 0 when a client asks (checked against the signed NarHash);
//! `buildmesh pin` keeps a path through `buildmesh gc`; pinned outputs over the limit make node 1
//! announce no build slots (it builds nothing new, and says why in `/api/v1/node` and `explain`)
//! until they are unpinned; and a `kill -9` in the middle of a collection loses nothing.

mod mesh_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_support::*;

/// node 1's limit: two of the 200 kB outputs (blob plus realised copy) do not fit.
const LIMIT: u64 = 700_000;

fn nix_instantiate(dir: &Path, name: &str, key: u32) -> String {
    let expr = dir.join(format!("{name}.nix"));
    // 200,000 deterministic bytes that do not compress (AES-CTR of zeros under a per-derivation key).
    let script = format!(
        "head -c 200000 /dev/zero | openssl enc -aes-128-ctr -K {key:032x} -iv 00000000000000000000000000000000 -nosalt > $out"
    );
    std::fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "{name}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "{script}" ]; PATH = "/usr/bin:/bin"; }}"#
        ),
    )
    .unwrap();
    let o = Command::new("nix-instantiate").arg(&expr).output().expect("nix-instantiate is installed");
    assert!(o.status.success(), "nix-instantiate: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn out_of(drv: &str) -> String {
    let o = Command::new("nix-store").args(["--query", "--outputs", drv]).output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn hash_part(path: &str) -> String {
    base(path).hash_part().to_string()
}

fn gc_json(c: &Cluster, dry: bool) -> serde_json::Value {
    let token = c.token(1);
    let mut args = vec!["gc", "--api", c.urls[1].as_str(), "--json"];
    if dry {
        args.push("--dry-run");
    }
    let (st, out, err) = cli_env(&args, &[("BUILDMESH_TOKEN", token.as_str())]);
    assert!(st.success(), "gc: {out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("gc --json printed {out:?}: {e}"))
}

fn pin(c: &Cluster, path: &str, on: bool) {
    let token = c.token(1);
    let (st, out, err) =
        cli_env(&[if on { "pin" } else { "unpin" }, path, "--api", &c.urls[1]], &[("BUILDMESH_TOKEN", token.as_str())]);
    assert!(st.success(), "pin {path}: {out}\n{err}");
}

/// Node 1's narinfo and NAR of `out`: served, and the NAR hashes to the narinfo's NarHash.
fn fetch_and_check(c: &Cluster, out: &str) {
    let url = &c.urls[1];
    let (s, body) = get(&format!("{url}/{}.narinfo", hash_part(out)));
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(s, 200, "narinfo of {out} on node 1: {text}\n{}", c.logs());
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k}: ")).map(str::to_string)).unwrap();
    let nar_url = field("URL");
    let nar_hash = field("NarHash");
    let (s, nar) = get(&format!("{url}/{nar_url}"));
    assert_eq!(s, 200, "NAR of {out} on node 1");
    let nar = if nar_url.ends_with(".zst") { zstd::decode_all(nar.as_slice()).unwrap() } else { nar };
    let got = buildmesh_protocol::hash::NixHash::sha256_of(&nar).to_string();
    assert_eq!(got, nar_hash, "NAR of {out} served by node 1 hashes to the signed NarHash");
}

/// What node 1's store takes on disk now: blob files plus realised paths.
fn disk_bytes(data: &Path) -> u64 {
    fn tree(p: &Path) -> u64 {
        let Ok(md) = p.symlink_metadata() else { return 0 };
        if md.is_dir() {
            std::fs::read_dir(p).map(|r| r.flatten().map(|e| tree(&e.path())).sum()).unwrap_or(0)
        } else {
            md.len()
        }
    }
    let mut total = 0;
    for shard in std::fs::read_dir(data.join("blobs")).unwrap().flatten() {
        if shard.file_name().len() == 2 {
            total += tree(&shard.path());
        }
    }
    total + tree(&data.join("store"))
}

fn blob_files(data: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(data.join("blobs")).unwrap().flatten() {
        if shard.file_name().len() == 2 {
            n += std::fs::read_dir(shard.path()).unwrap().count();
        }
    }
    n
}

#[test]
fn a_small_store_limit_collects_fetches_back_pins_and_pauses_claims() {
    buildmesh_tests::require_nix();
    let tmp = tempfile::tempdir().unwrap();
    // Node 1 runs with the limit (a restart keeps its flags).
    let mut c = Cluster::start_each(tmp.path(), &[&[], &["--max-store-bytes", "700000", "--gc-interval-secs", "1"]]);

    // Six derivations of 200 kB outputs, built by both nodes.
    let drvs: Vec<String> = (0..6).map(|i| nix_instantiate(tmp.path(), &format!("gc-test-{i}"), 0x100 + i)).collect();
    let outs: Vec<String> = drvs.iter().map(|d| out_of(d)).collect();
    c.submit(0, tmp.path(), &drvs, 2);
    for out in &outs {
        let url = c.urls[0].clone();
        wait_for(&format!("{out} served by quorum on node 0"), Duration::from_secs(120), || {
            (get(&format!("{url}/{}.narinfo", hash_part(out))).0 == 200).then_some(())
        });
    }

    // The collector brings node 1 under its limit; every collected output is still attested.
    let data1 = c.dir.join("node1");
    wait_for("node 1 under its limit", Duration::from_secs(60), || (disk_bytes(&data1) <= LIMIT).then_some(()));
    let report = gc_json(&c, true);
    let keys: BTreeSet<&str> = report.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["freed_bytes", "store_bytes", "pinned_bytes", "collected"]), "{report}");
    assert!(
        blob_files(&data1) < 6,
        "node 1 collected blobs: {} left; {report}; now {}\n{}",
        blob_files(&data1),
        gc_json(&c, true),
        c.logs()
    );
    assert!(blob_files(&c.dir.join("node0")) >= 6, "node 0 has no limit and keeps them all");
    let (_, node_view) = get_json(&format!("{}/api/v1/node", c.urls[1]));
    assert!(node_view.get("disk_pressure").is_none(), "{node_view}");
    for out in &outs {
        assert_eq!(c.attesters(1, out).values().map(BTreeSet::len).sum::<usize>(), 2, "{out} stays attested");
    }

    // A client asks node 1 for every output: collected ones are fetched back from node 0.
    for out in &outs {
        fetch_and_check(&c, out);
    }
    assert!(
        c.node(1).log_text().contains("fetching an accepted NAR for the gateway"),
        "node 1 fetched a collected NAR back:\n{}",
        c.logs()
    );

    // A pinned output survives `buildmesh gc`, which collects everything else.
    pin(&c, &outs[0], true);
    let r = gc_json(&c, false);
    let collected: Vec<&str> = r["collected"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(!collected.contains(&outs[0].as_str()), "{r}");
    assert!(r["pinned_bytes"].as_u64().unwrap() >= 200_000, "{r}");
    assert_eq!(r["store_bytes"], r["pinned_bytes"], "only pinned paths are left: {r}");
    fetch_and_check(&c, &outs[0]);

    // Pinned outputs over the limit: node 1 cannot get under it, announces no slots and builds
    // nothing new (node 0 builds the new job alone); `explain` and /api/v1/node say why.
    for out in &outs[1..4] {
        pin(&c, out, true);
        fetch_and_check(&c, out); // fetched back, now pinned
    }
    let url1 = c.urls[1].clone();
    let reason = wait_for("node 1 over its limit", Duration::from_secs(30), || {
        get_json(&format!("{url1}/api/v1/node")).1["disk_pressure"].as_str().map(str::to_string)
    });
    assert!(reason.contains("max_store_bytes 700000"), "{reason}");
    let peer1 = c.peer_ids[1].clone();
    let url0 = c.urls[0].clone();
    wait_for("node 0 to see node 1 with no slots", Duration::from_secs(30), || {
        let (_, peers) = get_json(&format!("{url0}/api/v1/peers"));
        peers.as_array()?.iter().find(|p| p["peer_id"] == peer1.as_str()).filter(|p| p["slots"] == 0).map(|_| ())
    });
    let late = nix_instantiate(tmp.path(), "gc-test-late", 0x200);
    c.submit(0, tmp.path(), std::slice::from_ref(&late), 2);
    let late_drv = base(&late);
    wait_state(&c.urls[0], &late_drv, "done", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(build_state(&c.urls[1], &late_drv), None, "node 1 took no new build while over its limit");
    let (st, out, err) = cli(&["explain", &late, "--api", &c.urls[1], "--json"]);
    assert!(st.success() || st.code() == Some(1), "explain: {out}\n{err}");
    assert!(out.contains("takes no new builds"), "{out}");

    // Unpinned: under the limit again, slots back, and node 1 builds its replica.
    for out in &outs[1..4] {
        pin(&c, out, false);
    }
    wait_for("node 1 under its limit again", Duration::from_secs(30), || {
        get_json(&format!("{url1}/api/v1/node")).1.get("disk_pressure").is_none().then_some(())
    });
    wait_state(&c.urls[1], &late_drv, "done", Duration::from_secs(90));

    // kill -9 during a collection: after the restart every path node 1 serves is whole, and the
    // pinned one is still there.
    let token = c.token(1);
    let api = c.urls[1].clone();
    let gc = std::thread::spawn(move || {
        let _ = cli_env(&["gc", "--api", &api, "--json"], &[("BUILDMESH_TOKEN", token.as_str())]);
    });
    std::thread::sleep(Duration::from_millis(30));
    c.nodes[1].as_mut().unwrap().stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10));
    gc.join().unwrap();
    c.restart(1);
    c.wait_members(2, Duration::from_secs(30));
    let r = gc_json(&c, true);
    assert!(r["pinned_bytes"].as_u64().unwrap() >= 200_000, "the pin survived: {r}");
    for out in outs.iter().chain(std::iter::once(&out_of(&late))) {
        fetch_and_check(&c, out);
    }
}
