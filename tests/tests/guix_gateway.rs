//! Issue 17 items 3, 4, 5 and 7 on real `buildmesh node` processes with store dir `/gnu/store`,
//! checked by Guix's own code (`../shared/guix`: the real `guix substitute` and Guix's verifier,
//! run by Debian's Guile; `scripts/install-deps.sh` installs it).
//!
//! - A standalone `/gnu/store` node builds a derivation and serves it as `guix publish` does: the
//!   real `guix substitute` (under an ACL made from `buildmesh key guix-public`) finds it, fetches
//!   it and checks its NarHash; the narinfo layout, `/signing-key.pub`, `/log/<basename>` and the
//!   per-builder view are checked too; a tampered NAR blob is refused by `guix substitute`.
//! - Per-builder views on a 3-node `/nix/store` mesh (k = 2): an unreproducible derivation is
//!   built by two builders; `/builder/A` and `/builder/B` of one gateway serve the two different
//!   NarHashes, each with its builder's own signature, to a real Nix client (`nix path-info
//!   --store http://node/builder/A`, `nix-store --realise` from the view), while the quorum
//!   gateway serves neither.

mod mesh_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use buildmesh_protocol::derivation::{Derivation, DrvSet, Output};
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use mesh_support::*;

fn gnu() -> StoreDir {
    StoreDir::new("/gnu/store").unwrap()
}

fn shared_guix() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/guix")
}

/// A `/gnu/store` derivation running `/bin/sh -c SCRIPT`, written as `<name>.drv` into `dir`.
fn gnu_drv(dir: &Path, name: &str, script: &str) -> (StorePath, StorePath) {
    std::fs::create_dir_all(dir).unwrap();
    let mut set = DrvSet::new(gnu());
    let mut d = Derivation {
        system: b"x86_64-linux".to_vec(),
        builder: b"/bin/sh".to_vec(),
        args: vec![b"-c".to_vec(), script.as_bytes().to_vec()],
        ..Default::default()
    };
    d.outputs.insert("out".into(), Output::input_addressed(None));
    for (k, v) in
        [("builder", "/bin/sh"), ("name", name), ("system", "x86_64-linux"), ("PATH", "/usr/bin:/bin"), ("out", "")]
    {
        d.env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    }
    set.fill_in(&mut d, name).unwrap();
    let drv = set.insert(name.to_string(), d.clone()).unwrap();
    let out = d.outputs["out"].path.clone().unwrap();
    std::fs::write(dir.join(format!("{name}.drv")), d.to_aterm(&gnu())).unwrap();
    (drv, out)
}

/// Run `substitute-e2e.sh URL` (the real `guix substitute`): (success, output, work dir).
fn substitute_e2e(url: &str, key_file: &Path, item: &str, wd: &Path) -> (bool, String) {
    let out = Command::new(shared_guix().join("oracle/substitute-e2e.sh"))
        .arg(url)
        .env("E2E_KEY", key_file)
        .env("E2E_ITEM", item)
        .env("E2E_DIR", wd)
        .output()
        .expect("run substitute-e2e.sh (scripts/install-deps.sh installs guile and its libraries)");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn text(url: &str) -> (u16, String) {
    let (s, b) = get(url);
    (s, String::from_utf8_lossy(&b).into_owned())
}

#[test]
fn guix_substitute_fetches_and_checks_what_a_gnu_store_node_built() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let node = NodeProc::start(&data, &["--store-dir", "/gnu/store", "--slots", "1"]);
    let dir = tmp.path().join("drvs");
    let (drv, out) = gnu_drv(&dir, "guix-hello", "mkdir -p $out/bin; echo hello-guix > $out/greeting; echo built-log");
    let (st, o, e) = cli(&[
        "submit",
        "--api",
        &node.url,
        "--store-dir",
        "/gnu/store",
        "--from",
        dir.to_str().unwrap(),
        "--wait",
        "--timeout",
        "120",
        &gnu().display(&drv),
    ]);
    assert!(st.success(), "submit: {o}\n{e}\n{}", node.log_text());
    let item = gnu().display(&out);

    // The narinfo: the current `guix publish` layout, signed by the builder (this node).
    let (s, ni) = text(&format!("{}/{}.narinfo", node.url, out.hash_part()));
    assert_eq!(s, 200, "{ni}");
    let keys: Vec<&str> = ni.lines().map(|l| l.split_once(": ").map_or(l, |(k, _)| k)).collect();
    assert_eq!(
        keys,
        [
            "StorePath",
            "NarHash",
            "NarSize",
            "References",
            "Deriver",
            "Signature",
            "URL",
            "Compression",
            "FileSize",
            "URL",
            "Compression",
            "FileSize"
        ],
        "{ni}"
    );
    assert!(ni.contains(&format!("URL: nar/zstd/{out}\nCompression: zstd\n")), "{ni}");
    assert!(ni.contains(&format!("URL: nar/{out}\nCompression: none\n")), "{ni}");

    // The node's Guix key, from the route and (once it exists: helper guixsig's command) from
    // `buildmesh key guix-public --api`, is what Guix authorizes.
    let (s, key) = text(&format!("{}/signing-key.pub", node.url));
    assert_eq!(s, 200);
    assert!(key.starts_with("(public-key"), "{key}");
    let (st, cli_key, _) = cli(&["key", "guix-public", "--api", &node.url]);
    if st.success() {
        assert_eq!(cli_key.trim(), key.trim(), "`buildmesh key guix-public --api` and /signing-key.pub");
    }
    let key_file = tmp.path().join("signing-key.pub");
    std::fs::write(&key_file, &key).unwrap();

    // Guix's own verifier accepts the narinfo under that key.
    let ni_file = tmp.path().join("n.narinfo");
    std::fs::write(&ni_file, &ni).unwrap();
    let v = Command::new(shared_guix().join("oracle/guix-oracle.sh"))
        .arg("verify")
        .arg(&key_file)
        .arg(&ni_file)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "Guix's verifier: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    // The log and the per-builder view (the builder's own statement, labelled).
    let (s, log) = text(&format!("{}/log/{out}", node.url));
    assert_eq!(s, 200);
    assert!(log.contains("built-log"), "{log}");
    let view = format!("{}/builder/{}", node.url, node.peer_id);
    let resp = http().get(format!("{view}/{}.narinfo", out.hash_part())).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-buildmesh-builder").is_some());
    let view_ni = resp.text().unwrap();
    assert_eq!(
        view_ni.split("Signature: ").nth(1).map(|s| s.lines().next()),
        ni.split("Signature: ").nth(1).map(|s| s.lines().next())
    );
    assert_eq!(text(&format!("{view}/signing-key.pub")).1.trim(), key.trim());

    // The real `guix substitute`: finds, fetches and checks it.
    let wd = tmp.path().join("e2e");
    let (ok, log) = substitute_e2e(&node.url, &key_file, &item, &wd);
    assert!(ok, "guix substitute against the node:\n{log}\n{}", node.log_text());
    assert_eq!(std::fs::read_to_string(wd.join("out/greeting")).unwrap(), "hello-guix\n");

    // Through the per-builder view too.
    let wd2 = tmp.path().join("e2e-view");
    let (ok, log) = substitute_e2e(&view, &key_file, &item, &wd2);
    assert!(ok, "guix substitute against the builder view:\n{log}");

    // A tampered NAR: flip a byte of the stored blob (re-compressed, so it still decompresses).
    let blobs = data.join("blobs");
    let mut tampered = 0;
    for entry in walk(&blobs) {
        let raw = std::fs::read(&entry).unwrap();
        let Ok(mut nar) = zstd::decode_all(&raw[..]) else { continue };
        let Some(i) = nar.windows(10).position(|w| w == b"hello-guix") else { continue };
        nar[i] ^= 1;
        std::fs::write(&entry, zstd::encode_all(&nar[..], 3).unwrap()).unwrap();
        tampered += 1;
    }
    assert!(tampered > 0, "found the blob to tamper with under {}", blobs.display());
    let wd3 = tmp.path().join("e2e-tampered");
    let (ok, log) = substitute_e2e(&node.url, &key_file, &item, &wd3);
    assert!(!ok, "guix substitute must refuse a tampered NAR:\n{log}");
    let reply = std::fs::read_to_string(wd3.join("reply-subst")).unwrap_or_default();
    assert!(reply.starts_with("hash-mismatch"), "reply: {reply}\n{log}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn per_builder_views_show_each_builders_own_output_to_nix_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 3, &[]);
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (unrepro, out) = d.add("unrepro-view", "date +%s%N > $out", &[]);
    c.submit(0, &dir, &[sd().display(&unrepro)], 2);
    let out_s = sd().display(&out);
    let gw = 2;
    let by_hash = wait_for("both attestations at the gateway", Duration::from_secs(90), || {
        let a = c.attesters(gw, &out_s);
        (a.len() >= 2).then_some(a)
    });
    // The quorum gateway serves neither; each builder's view serves its own.
    assert_eq!(get(&format!("{}/{}.narinfo", c.urls[gw], out.hash_part())).0, 404);
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut seen = BTreeSet::new();
    for (hash, builders) in &by_hash {
        let builder = builders.iter().next().unwrap();
        let i = c.peer_ids.iter().position(|p| p == builder).unwrap();
        let view = format!("{}/builder/{builder}", c.urls[gw]);
        let (s, ni) = text(&format!("{view}/{}.narinfo", out.hash_part()));
        assert_eq!(s, 200, "{ni}");
        assert!(ni.contains(&format!("NarHash: {hash}")), "{ni}");
        assert!(ni.contains(&format!("Sig: {}:", c.keys[i].name())), "only the builder's own signature: {ni}");
        assert_eq!(ni.matches("Sig: ").count(), 1, "{ni}");
        // A real Nix client reads the view with the builder's key trusted.
        let key = c.keys[i].nix_public_key().to_string();
        let nix = |prog: &str, args: &[&str]| {
            Command::new(prog)
                .args(args)
                .env("HOME", &home)
                .env("XDG_CACHE_HOME", home.join(".cache"))
                .env_remove("NIX_CONFIG")
                .output()
                .expect("run nix (scripts/test.sh installs nix-bin)")
        };
        let o = nix(
            "nix",
            &["--extra-experimental-features", "nix-command", "path-info", "--sigs", "--store", &view, &out_s],
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && stdout.contains(&format!("{}:", c.keys[i].name())),
            "nix path-info: {stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let root = tmp.path().join(format!("client-{i}"));
        let o = nix(
            "nix-store",
            &[
                "--store",
                root.to_str().unwrap(),
                "--realise",
                &out_s,
                "--option",
                "substituters",
                &view,
                "--option",
                "trusted-public-keys",
                &key,
                "--option",
                "require-sigs",
                "true",
                "--option",
                "max-jobs",
                "0",
            ],
        );
        assert!(
            o.status.success(),
            "nix-store --realise from {view}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            c.logs()
        );
        let o = nix("nix-store", &["--store", root.to_str().unwrap(), "--query", "--hash", &out_s]);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), hash.as_str());
        seen.insert(hash.clone());
    }
    assert_eq!(seen.len(), 2, "two builders, two NarHashes, both served through one node");
    // A node that never attested it has no view of it.
    let stranger = c.peer_ids.iter().find(|p| !by_hash.values().flatten().any(|b| b == *p));
    if let Some(s) = stranger {
        assert_eq!(get(&format!("{}/builder/{s}/{}.narinfo", c.urls[gw], out.hash_part())).0, 404);
    }
}

/// `buildmesh challenge` against a classic server: a `file://` binary cache written by real Nix
/// (`nix copy --to file://…`) served by `python3 -m http.server`, holding one path as the mesh
/// built it and one whose narinfo says another NarHash.
#[test]
fn challenge_compares_a_classic_cache_with_the_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&tmp.path().join("node"), &["--slots", "2"]);
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (a, a_out) = d.add("challenge-same", "echo same > $out", &[]);
    let (b, b_out) = d.add("challenge-differ", "echo differ > $out", &[]);
    submit(&node.url, &dir, &[a.clone(), b.clone()], 0);
    wait_state(&node.url, &a, "done", Duration::from_secs(60));
    wait_state(&node.url, &b, "done", Duration::from_secs(60));
    let (a_s, b_s) = (sd().display(&a_out), sd().display(&b_out));

    // Real Nix: substitute both from the node into a store, copy them into a file:// cache.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let root = tmp.path().join("root");
    let cache = tmp.path().join("cache");
    let nix = |prog: &str, args: &[&str]| {
        let o = Command::new(prog)
            .args(args)
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env_remove("NIX_CONFIG")
            .output()
            .expect("run nix");
        assert!(o.status.success(), "{prog} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let root_s = root.to_str().unwrap();
    let key = node.public_key.clone();
    nix(
        "nix-store",
        &[
            "--store",
            root_s,
            "--realise",
            &a_s,
            &b_s,
            "--option",
            "substituters",
            &node.url,
            "--option",
            "trusted-public-keys",
            &key,
            "--option",
            "max-jobs",
            "0",
        ],
    );
    let to = format!("file://{}", cache.display());
    nix("nix", &["--extra-experimental-features", "nix-command", "copy", "--store", root_s, "--to", &to, &a_s, &b_s]);
    // The second path's narinfo now says another NarHash (its signature no longer verifies).
    let ni = cache.join(format!("{}.narinfo", b_out.hash_part()));
    let text = std::fs::read_to_string(&ni).unwrap();
    let other = "sha256:0000000000000000000000000000000000000000000000000000";
    let changed: String = text
        .lines()
        .map(|l| if l.starts_with("NarHash: ") { format!("NarHash: {other}\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(&ni, changed).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory", cache.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the classic server", Duration::from_secs(20), || {
        http().get(format!("{url}/nix-cache-info")).send().ok().filter(|r| r.status() == 200).map(|_| ())
    });

    let (st, out, err) = cli(&["challenge", "--api", &node.url, "--server", &url, "--json", &a_s, &b_s]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(st.code(), Some(2), "a mismatch exits 2: {out}\n{err}");
    assert_eq!(j["paths"][0]["verdict"], "match", "{j}");
    assert_eq!(j["paths"][1]["verdict"], "mismatch", "{j}");
    assert_eq!(j["paths"][1]["servers"][0]["nar_hash"], other, "{j}");
    assert_eq!(j["totals"]["identical"], 1);
    assert_eq!(j["totals"]["differed"], 1);
    // The text report, worded as guix challenge's.
    let (_, text_out, _) = cli(&["challenge", "--api", &node.url, "--server", &url, &a_s, &b_s]);
    assert!(text_out.contains(&format!("{b_s} contents differ:")), "{text_out}");
    assert!(text_out.contains("2 store items were analyzed:") && text_out.contains("1 (50.0%) differed"), "{text_out}");
    // With the cache's key trusted (Nix copied the node's signatures), the tampered narinfo no
    // longer counts: the path is inconclusive, the other still matches.
    let (st, out, err) =
        cli(&["challenge", "--api", &node.url, "--server", &url, "--trusted-key", &key, "--json", &a_s, &b_s]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(st.code(), Some(1), "{out}");
    assert_eq!(j["paths"][0]["verdict"], "match", "{j}");
    assert_eq!(j["paths"][1]["verdict"], "inconclusive", "{j}");
    assert_eq!(j["paths"][1]["servers"][0]["status"], "untrusted", "{j}");
    let _ = server.kill();
    let _ = server.wait();
}

/// A 3-node `/gnu/store` mesh with k = 2: the quorum gateway of a node serves an output two
/// builders agreed on to the real `guix substitute`, under an ACL of the builder whose Guix
/// signature it carries (an agreeing trusted builder's, made when it built the output).
#[test]
fn a_gnu_store_mesh_serves_agreed_outputs_to_guix_substitute() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 3, &["--store-dir", "/gnu/store"]);
    let dir = tmp.path().join("drvs");
    let (drv, out) = gnu_drv(&dir, "guix-mesh-hello", "mkdir -p $out; echo agreed > $out/greeting");
    let (st, o, e) = cli(&[
        "submit",
        "--api",
        &c.urls[0],
        "--store-dir",
        "/gnu/store",
        "--from",
        dir.to_str().unwrap(),
        "--replicas",
        "2",
        "--wait",
        "--timeout",
        "120",
        &gnu().display(&drv),
    ]);
    assert!(st.success(), "submit: {o}\n{e}\n{}", c.logs());
    let item = gnu().display(&out);
    let gw = 2;
    let ni = wait_for("the quorum narinfo at the gateway", Duration::from_secs(60), || {
        let (s, t) = text(&format!("{}/{}.narinfo", c.urls[gw], out.hash_part()));
        (s == 200).then_some(t)
    });
    assert_eq!(ni.matches("Signature: ").count(), 1, "{ni}");
    // Whose signature: the builder named in it; its key from the builder view of the gateway.
    let host = ni.split("Signature: 1;").nth(1).and_then(|s| s.split(';').next()).unwrap().to_string();
    let i = c.keys.iter().position(|k| k.name() == host).unwrap_or_else(|| panic!("signer {host}: {ni}"));
    let builders: BTreeSet<String> = c.attesters(gw, &item).into_values().flatten().collect();
    assert!(builders.contains(&c.peer_ids[i]) && builders.len() >= 2, "{builders:?}");
    let (s, key) = text(&format!("{}/builder/{}/signing-key.pub", c.urls[gw], c.peer_ids[i]));
    assert_eq!(s, 200);
    let key_file = tmp.path().join("builder.pub");
    std::fs::write(&key_file, key).unwrap();
    let wd = tmp.path().join("e2e");
    let (ok, log) = substitute_e2e(&c.urls[gw], &key_file, &item, &wd);
    assert!(ok, "guix substitute against the quorum gateway:\n{log}\n{}", c.logs());
    assert_eq!(std::fs::read_to_string(wd.join("out/greeting")).unwrap(), "agreed\n");
}
