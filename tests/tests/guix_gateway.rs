//! Issue 17 items 3 to 7 on real `buildmesh node` processes, checked by Guix's own code
//! (`../shared/guix`: the real `guix substitute`, run by Debian's Guile; `scripts/install-deps.sh`
//! installs it) and by real Nix. Two tests, each on its own nodes (they run at once):
//!
//! - `guix_substitute_against_gnu_store_nodes`: real `/gnu/store` derivations made by Nix
//!   (`nix-instantiate --store 'local?store=/gnu/store&root=…'`); a standalone `/gnu/store` node
//!   builds two and serves them as `guix publish` does (narinfo layout, `/signing-key.pub` =
//!   `buildmesh key guix-public --api`, `/log/<basename>`, the per-builder view); a 3-node
//!   `/gnu/store` mesh (k = 2) builds a third. Then ONE Guile process runs the real
//!   `guix substitute` code against all of them (`tests/fixtures/guix/substitute-session.scm`):
//!   it finds, fetches and checks the standalone node's output through the quorum route and the
//!   builder view, refuses a NAR whose stored blob was tampered with (`hash-mismatch`), fetches the
//!   mesh's agreed output through its quorum gateway under the signing builder's key, and offers
//!   nothing under a key that did not sign.
//! - `nix_mesh_builder_views_and_challenge`: a 3-node `/nix/store` mesh builds a revision of three
//!   jobs (one unreproducible) with two builders each. The quorum gateway serves the agreed outputs
//!   and not the disputed one; `/builder/A` and `/builder/B` serve each builder's NarHash with its
//!   own `Sig:` only, to `nix path-info --store` and `nix-store --realise`; `buildmesh challenge`
//!   against a classic cache (written by `nix copy`, served by `python3 -m http.server`, one NAR
//!   changed): by paths, with `--trusted-key`, and with `--revision` and `--diff` (the NAR diffs
//!   of the server's mismatch and of the builders' dispute).

mod mesh_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use mesh_support::*;

fn gnu() -> StoreDir {
    StoreDir::new("/gnu/store").unwrap()
}

fn shared_guix() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/guix")
}

fn text(url: &str) -> (u16, String) {
    let (s, b) = get(url);
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// Real `/gnu/store` derivations, written by Nix itself: `nix-instantiate --store
/// 'local?store=/gnu/store&root=ROOT'` of one `derivation { builder = "/bin/sh"; args = ["-c"
/// SCRIPT]; }` per job, each `.drv` copied into `dir`. Returns name → (drv, out).
fn gnu_drvs(work: &Path, dir: &Path, jobs: &[(&str, &str)]) -> BTreeMap<String, (StorePath, StorePath)> {
    std::fs::create_dir_all(dir).unwrap();
    let root = work.join("nix-root");
    let store = format!("local?store=/gnu/store&root={}", root.display());
    let nix_file = work.join("jobs.nix");
    let body: String = jobs
        .iter()
        .map(|(name, script)| {
            format!(
                "  (derivation {{ name = \"{name}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; \
                 args = [ \"-c\" {script:?} ]; PATH = \"/usr/bin:/bin\"; }})\n"
            )
        })
        .collect();
    std::fs::write(&nix_file, format!("[\n{body}]\n")).unwrap();
    let home = work.join("nix-home");
    let nix = |args: &[&str]| {
        let o = Command::new(args[0])
            .args(&args[1..])
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env_remove("NIX_CONFIG")
            .output()
            .expect("run nix (scripts/install-deps.sh installs nix-bin)");
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let drvs = nix(&["nix-instantiate", "--store", &store, nix_file.to_str().unwrap()]);
    let drvs: Vec<&str> = drvs.lines().collect();
    assert_eq!(drvs.len(), jobs.len(), "{drvs:?}");
    let mut out = BTreeMap::new();
    for ((name, _), drv_s) in jobs.iter().zip(drvs) {
        let drv = gnu().parse_path(drv_s).unwrap();
        let file = walk(&root).into_iter().find(|p| p.file_name().is_some_and(|n| *n == *drv.to_string())).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(dir.join(drv.to_string()), &bytes).unwrap();
        let out_s = nix(&["nix-store", "--store", &store, "--query", "--outputs", drv_s]);
        let o = gnu().parse_path(out_s.trim()).unwrap();
        out.insert(name.to_string(), (drv, o));
    }
    out
}

/// One run of `tests/fixtures/guix/substitute-session.scm` (the real `guix substitute` code in one
/// Guile process) over `lines` (label, URL, key file, item, destination): label → (have, reply).
fn guix_substitute_session(
    work: &Path,
    lines: &[(&str, &str, &Path, &str, &Path)],
) -> BTreeMap<String, (String, String)> {
    let oracle_cache = work.join("oracle-cache");
    // guix-oracle.sh writes the (guix config) stand-in the load path needs.
    let o = Command::new(shared_guix().join("oracle/guix-oracle.sh"))
        .args(["nix-base32", "00"])
        .env("GUIX_ORACLE_CACHE", &oracle_cache)
        .output()
        .expect("run guix-oracle.sh (scripts/install-deps.sh installs guile and its libraries)");
    assert!(o.status.success(), "guix-oracle.sh: {}", String::from_utf8_lossy(&o.stderr));
    let script = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/guix/substitute-session.scm"));
    let input: String = lines
        .iter()
        .map(|(label, url, key, item, dest)| format!("{label}\t{url}\t{}\t{item}\t{}\n", key.display(), dest.display()))
        .collect();
    let state = work.join("guix-state");
    let mut child = Command::new("guile")
        .args(["--no-auto-compile", "-L"])
        .arg(oracle_cache.join("cfg"))
        .arg("-L")
        .arg(shared_guix().join("src"))
        .arg(script)
        .env("GUILE_AUTO_COMPILE", "0")
        .env("XDG_CACHE_HOME", state.join("cache"))
        .env("GUIX_CONFIGURATION_DIRECTORY", state.join("etc"))
        .env("GUIX_STATE_DIRECTORY", state.join("var"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run guile");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "substitute-session.scm: {stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    stdout
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let [label, have, subst] = cols[..] else { return None };
            Some((
                label.to_string(),
                (
                    have.strip_prefix("have=").unwrap_or(have).to_string(),
                    subst.strip_prefix("substitute=").unwrap_or(subst).to_string(),
                ),
            ))
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
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

fn submit_gnu(url: &str, dir: &Path, drvs: &[&StorePath], replicas: &str) -> (bool, String) {
    let d = dir.to_str().unwrap().to_string();
    let shown: Vec<String> = drvs.iter().map(|p| gnu().display(p)).collect();
    let mut args = vec!["submit", "--api", url, "--store-dir", "/gnu/store", "--from", &d, "--replicas", replicas];
    args.extend(["--wait", "--timeout", "120"]);
    args.extend(shown.iter().map(String::as_str));
    let (st, o, e) = cli(&args);
    (st.success(), format!("{o}\n{e}"))
}

#[test]
fn guix_substitute_against_gnu_store_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("drvs");
    let jobs = gnu_drvs(
        tmp.path(),
        &dir,
        &[
            ("guix-hello", "mkdir -p $out/bin; echo hello-guix > $out/greeting; echo built-log"),
            ("guix-tampered", "mkdir -p $out; echo tampered-guix > $out/greeting"),
            ("guix-mesh-hello", "mkdir -p $out; echo agreed > $out/greeting"),
        ],
    );
    let (hello_drv, hello) = jobs["guix-hello"].clone();
    let (tampered_drv, tampered) = jobs["guix-tampered"].clone();
    let (mesh_drv, mesh_out) = jobs["guix-mesh-hello"].clone();

    // The 3-node mesh starts while the standalone node builds.
    let mesh_dir = tmp.path().join("mesh");
    std::fs::create_dir_all(&mesh_dir).unwrap();
    let c = Cluster::start(&mesh_dir, 3, &["--store-dir", "/gnu/store"]);
    let data = tmp.path().join("node");
    let node = NodeProc::start(&data, &["--store-dir", "/gnu/store", "--slots", "2"]);
    let (ok, log) = submit_gnu(&node.url, &dir, &[&hello_drv, &tampered_drv], "1");
    assert!(ok, "submit: {log}\n{}", node.log_text());
    let (ok, log) = submit_gnu(&c.urls[0], &dir, &[&mesh_drv], "2");
    assert!(ok, "submit to the mesh: {log}\n{}", c.logs());

    // The narinfo: the current `guix publish` layout, signed by the builder (this node).
    let (s, ni) = text(&format!("{}/{}.narinfo", node.url, hello.hash_part()));
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
    assert!(ni.contains(&format!("Deriver: {hello_drv}\n")), "{ni}");
    assert!(ni.contains(&format!("URL: nar/zstd/{hello}\nCompression: zstd\n")), "{ni}");
    assert!(ni.contains(&format!("URL: nar/{hello}\nCompression: none\n")), "{ni}");

    // The node's Guix key, from the route and from `buildmesh key guix-public --api`.
    let (s, key) = text(&format!("{}/signing-key.pub", node.url));
    assert_eq!(s, 200);
    assert!(key.starts_with("(public-key"), "{key}");
    let (st, cli_key, e) = cli(&["key", "guix-public", "--api", &node.url]);
    assert!(st.success(), "{e}");
    assert_eq!(cli_key.trim(), key.trim(), "`buildmesh key guix-public --api` and /signing-key.pub");
    let node_key = tmp.path().join("node.pub");
    std::fs::write(&node_key, &key).unwrap();

    // The log and the per-builder view (the builder's own statement, labelled).
    let (s, log) = text(&format!("{}/log/{hello}", node.url));
    assert_eq!(s, 200);
    assert!(log.contains("built-log"), "{log}");
    let view = format!("{}/builder/{}", node.url, node.peer_id);
    let resp = http().get(format!("{view}/{}.narinfo", hello.hash_part())).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-buildmesh-builder").is_some());
    let view_ni = resp.text().unwrap();
    assert_eq!(
        view_ni.split("Signature: ").nth(1).map(|s| s.lines().next()),
        ni.split("Signature: ").nth(1).map(|s| s.lines().next())
    );
    assert_eq!(text(&format!("{view}/signing-key.pub")).1.trim(), key.trim());

    // A tampered NAR: flip a byte of the second output's stored blob (re-compressed, so it still
    // decompresses; the narinfo and its signature are unchanged).
    let mut flipped = 0;
    for entry in walk(&data.join("blobs")) {
        let raw = std::fs::read(&entry).unwrap();
        let Ok(mut nar) = zstd::decode_all(&raw[..]) else { continue };
        let Some(i) = nar.windows(13).position(|w| w == b"tampered-guix") else { continue };
        nar[i] ^= 1;
        std::fs::write(&entry, zstd::encode_all(&nar[..], 3).unwrap()).unwrap();
        flipped += 1;
    }
    assert!(flipped > 0, "found the blob to tamper with");

    // The mesh: the quorum narinfo at a gateway, signed by one of the agreeing builders.
    let gw = 2;
    let mesh_ni = wait_for("the quorum narinfo at the gateway", Duration::from_secs(60), || {
        let (s, t) = text(&format!("{}/{}.narinfo", c.urls[gw], mesh_out.hash_part()));
        (s == 200).then_some(t)
    });
    assert_eq!(mesh_ni.matches("Signature: ").count(), 1, "{mesh_ni}");
    let host = mesh_ni.split("Signature: 1;").nth(1).and_then(|s| s.split(';').next()).unwrap().to_string();
    let i = c.keys.iter().position(|k| k.name() == host).unwrap_or_else(|| panic!("signer {host}: {mesh_ni}"));
    let mesh_item = gnu().display(&mesh_out);
    let builders: BTreeSet<String> = c.attesters(gw, &mesh_item).into_values().flatten().collect();
    assert!(builders.contains(&c.peer_ids[i]) && builders.len() >= 2, "{builders:?}");
    let (s, builder_key) = text(&format!("{}/builder/{}/signing-key.pub", c.urls[gw], c.peer_ids[i]));
    assert_eq!(s, 200);
    let mesh_key = tmp.path().join("builder.pub");
    std::fs::write(&mesh_key, builder_key).unwrap();

    // The real `guix substitute`, once for everything.
    let (hello_s, tampered_s) = (gnu().display(&hello), gnu().display(&tampered));
    let d = |n: &str| tmp.path().join("e2e").join(n);
    std::fs::create_dir_all(tmp.path().join("e2e")).unwrap(); // Guix restores DEST into an existing dir
    let r = guix_substitute_session(
        tmp.path(),
        &[
            ("node", node.url.as_str(), node_key.as_path(), hello_s.as_str(), d("node").as_path()),
            ("view", view.as_str(), node_key.as_path(), hello_s.as_str(), d("view").as_path()),
            ("tampered", node.url.as_str(), node_key.as_path(), tampered_s.as_str(), d("tampered").as_path()),
            ("mesh", c.urls[gw].as_str(), mesh_key.as_path(), mesh_item.as_str(), d("mesh").as_path()),
            (
                "mesh-unauthorized",
                c.urls[gw].as_str(),
                node_key.as_path(),
                mesh_item.as_str(),
                d("mesh-unauthorized").as_path(),
            ),
        ],
    );
    let all = format!("{r:#?}\n{}\n{}", node.log_text(), c.logs());
    let (have, reply) = &r["node"];
    assert_eq!(have, &hello_s, "`have` offers the item: {all}");
    assert!(reply.starts_with("success sha256:"), "{all}");
    assert_eq!(std::fs::read_to_string(d("node").join("greeting")).unwrap(), "hello-guix\n");
    assert!(d("node").join("bin").is_dir());
    assert!(r["view"].1.starts_with("success sha256:"), "through the builder view: {all}");
    assert_eq!(std::fs::read_to_string(d("view").join("greeting")).unwrap(), "hello-guix\n");
    assert!(r["tampered"].1.starts_with("hash-mismatch sha256"), "a tampered NAR is refused: {all}");
    assert_eq!(r["mesh"].0, mesh_item, "{all}");
    assert!(r["mesh"].1.starts_with("success sha256:"), "through the quorum gateway: {all}");
    assert_eq!(std::fs::read_to_string(d("mesh").join("greeting")).unwrap(), "agreed\n");
    assert_eq!(r["mesh-unauthorized"].0, "", "nothing offered under a key that did not sign: {all}");
    assert!(r["mesh-unauthorized"].1.starts_with("error"), "{all}");
    assert!(!d("mesh-unauthorized").exists());
}

/// Run `prog args` as a Nix client with its own `HOME`; panics unless it succeeds.
fn nix_ok(home: &Path, prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env_remove("NIX_CONFIG")
        .output()
        .expect("run nix (scripts/test.sh installs nix-bin)");
    assert!(o.status.success(), "{prog} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn challenge_json(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let (st, out, err) = cli(args);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (st.code(), j, format!("{out}\n{err}"))
}

#[test]
fn nix_mesh_builder_views_and_challenge() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), 3, &[]);
    let dir = tmp.path().join("drvs");
    let mut d = Drvs::new(&dir);
    let (unrepro, out) = d.add("unrepro-view", "date +%s%N > $out", &[]);
    let (same, same_out) = d.add("challenge-same", "echo same > $out", &[]);
    let (differ, differ_out) = d.add("challenge-differ", "echo differ > $out", &[]);
    let drvs: Vec<String> = [&unrepro, &same, &differ].iter().map(|p| sd().display(p)).collect();
    let from = dir.display().to_string();
    let mut args = vec!["revision", "submit", "--channel", "guix", "--branch", "master", "--commit", "c0ffee17"];
    args.extend(["--from", from.as_str(), "--replicas", "2", "--api", &c.urls[0], "--json"]);
    args.extend(drvs.iter().map(String::as_str));
    let (st, o, e) = cli(&args);
    assert!(st.success(), "revision submit: {o}\n{e}\n{}", c.logs());
    let rev = serde_json::from_str::<serde_json::Value>(&o).unwrap()["revision"].as_str().unwrap().to_string();
    let (out_s, same_s, differ_s) = (sd().display(&out), sd().display(&same_out), sd().display(&differ_out));
    let gw = 2;
    let by_hash = wait_for("both attestations at the gateway", Duration::from_secs(90), || {
        let a = c.attesters(gw, &out_s);
        (a.len() >= 2).then_some(a)
    });
    for p in [&same_out, &differ_out] {
        wait_for("a quorum narinfo", Duration::from_secs(60), || {
            (get(&format!("{}/{}.narinfo", c.urls[gw], p.hash_part())).0 == 200).then_some(())
        });
    }

    // Per-builder views: the quorum gateway serves neither result; each builder's view serves its
    // own, to real Nix clients trusting that builder's key.
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
        let key = c.keys[i].nix_public_key().to_string();
        let info = nix_ok(
            &home,
            "nix",
            &["--extra-experimental-features", "nix-command", "path-info", "--sigs", "--store", &view, &out_s],
        );
        assert!(info.contains(&format!("{}:", c.keys[i].name())), "nix path-info: {info}");
        let root = tmp.path().join(format!("client-{i}"));
        let root_s = root.to_str().unwrap();
        nix_ok(
            &home,
            "nix-store",
            &["--store", root_s, "--realise", out_s.as_str(), "--option", "substituters", view.as_str()]
                .into_iter()
                .chain(["--option", "trusted-public-keys", key.as_str(), "--option", "require-sigs", "true"])
                .chain(["--option", "max-jobs", "0"])
                .collect::<Vec<_>>(),
        );
        let got = nix_ok(&home, "nix-store", &["--store", root_s, "--query", "--hash", &out_s]);
        assert_eq!(got.trim(), hash.as_str());
        seen.insert(hash.clone());
    }
    assert_eq!(seen.len(), 2, "two builders, two NarHashes, both served through one node");
    let stranger = c.peer_ids.iter().find(|p| !by_hash.values().flatten().any(|b| b == *p));
    if let Some(s) = stranger {
        assert_eq!(get(&format!("{}/builder/{s}/{}.narinfo", c.urls[gw], out.hash_part())).0, 404);
    }

    // A classic server: real Nix substitutes the agreed outputs from the gateway and copies them
    // into a file:// cache (uncompressed), served by `python3 -m http.server`; the second path's
    // NAR is then replaced by another (`differ` -> `dIffer`), its NarHash with it.
    let root = tmp.path().join("root");
    let root_s = root.to_str().unwrap();
    let cache = tmp.path().join("cache");
    let gw_key = c.keys.iter().map(|k| k.nix_public_key().to_string()).collect::<Vec<_>>().join(" ");
    nix_ok(
        &home,
        "nix-store",
        &[
            "--store",
            root_s,
            "--realise",
            same_s.as_str(),
            differ_s.as_str(),
            "--option",
            "substituters",
            c.urls[gw].as_str(),
        ]
        .into_iter()
        .chain(["--option", "trusted-public-keys", gw_key.as_str(), "--option", "max-jobs", "0"])
        .collect::<Vec<_>>(),
    );
    let to = format!("file://{}?compression=none", cache.display());
    nix_ok(
        &home,
        "nix",
        &["--extra-experimental-features", "nix-command", "copy", "--store", root_s, "--to", &to, &same_s, &differ_s],
    );
    let ni_file = cache.join(format!("{}.narinfo", differ_out.hash_part()));
    let ni = std::fs::read_to_string(&ni_file).unwrap();
    let url = ni.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().to_string();
    let mut nar = std::fs::read(cache.join(&url)).unwrap();
    let at = nar.windows(7).position(|w| w == b"differ\n").expect("the NAR holds the file's bytes");
    nar[at + 1] = b'I';
    let other = NixHash::sha256_of(&nar).to_string();
    std::fs::write(cache.join("nar/changed.nar"), &nar).unwrap();
    let changed: String = ni
        .lines()
        .map(|l| match l.split_once(": ") {
            Some(("NarHash" | "FileHash", _)) => format!("{}: {other}\n", l.split_once(": ").unwrap().0),
            Some(("URL", _)) => "URL: nar/changed.nar\n".to_string(),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&ni_file, changed).unwrap();
    // A lying server under /liar: its narinfo of the same path names the changed NAR with a
    // NarHash that NAR does not have (`--diff` must refuse to compare it).
    let liar = cache.join("liar");
    std::fs::create_dir_all(liar.join("nar")).unwrap();
    std::fs::copy(cache.join("nar/changed.nar"), liar.join("nar/changed.nar")).unwrap();
    let lie = NixHash::sha256_of(b"not this NAR").to_string();
    let lying: String = std::fs::read_to_string(&ni_file)
        .unwrap()
        .lines()
        .map(|l| if l.starts_with("NarHash: ") { format!("NarHash: {lie}\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(liar.join(format!("{}.narinfo", differ_out.hash_part())), lying).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port_s = port.to_string();
    let http_server = ["-m", "http.server", &port_s, "--bind", "127.0.0.1", "--directory", cache.to_str().unwrap()];
    let _server = ChildGuard(
        Command::new("python3")
            .args(http_server)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server"),
    );
    let server_url = format!("http://127.0.0.1:{port}");
    wait_for("the classic server", Duration::from_secs(20), || {
        http().get(format!("{server_url}/nix-cache-info")).send().ok().filter(|r| r.status() == 200).map(|_| ())
    });
    let api = c.urls[gw].as_str();

    // By paths: one match, one mismatch (exit 2), in JSON and worded as guix challenge's.
    let (code, j, all) =
        challenge_json(&["challenge", "--api", api, "--server", &server_url, "--json", &same_s, &differ_s]);
    assert_eq!(code, Some(2), "a mismatch exits 2: {all}");
    assert_eq!(j["paths"][0]["verdict"], "match", "{j}");
    assert_eq!(j["paths"][1]["verdict"], "mismatch", "{j}");
    assert_eq!(j["paths"][1]["servers"][0]["nar_hash"], other, "{j}");
    assert_eq!(j["paths"][1]["mesh_builders"].as_array().map(Vec::len), Some(2), "per builder: {j}");
    assert_eq!((j["totals"]["identical"].as_u64(), j["totals"]["differed"].as_u64()), (Some(1), Some(1)));
    let (_, text_out, _) = cli(&["challenge", "--api", api, "--server", &server_url, &same_s, &differ_s]);
    assert!(text_out.contains(&format!("{differ_s} contents differ:")), "{text_out}");
    assert!(text_out.contains("2 store items were analyzed:") && text_out.contains("1 (50.0%) differed"), "{text_out}");
    // With the builders' keys trusted (Nix copied their signatures), the changed narinfo no longer
    // counts: that path is inconclusive, the other still matches.
    let (code, j, all) = challenge_json(&[
        "challenge",
        "--api",
        api,
        "--server",
        &server_url,
        "--trusted-key",
        &c.keys[0].nix_public_key().to_string(),
        "--trusted-key",
        &c.keys[1].nix_public_key().to_string(),
        "--trusted-key",
        &c.keys[2].nix_public_key().to_string(),
        "--json",
        &same_s,
        &differ_s,
    ]);
    assert_eq!(code, Some(1), "{all}");
    assert_eq!(j["paths"][0]["verdict"], "match", "{j}");
    assert_eq!(j["paths"][1]["verdict"], "inconclusive", "{j}");
    assert_eq!(j["paths"][1]["servers"][0]["status"], "untrusted", "{j}");

    // --revision: every output of the revision's jobs, each builder's NarHash; --diff: what
    // differs in the server's NAR and between the two builders of the unreproducible job.
    let (code, j, all) =
        challenge_json(&["challenge", "--api", api, "--server", &server_url, "--revision", &rev, "--diff", "--json"]);
    assert_eq!(code, Some(2), "{all}");
    let by_path: BTreeMap<String, &serde_json::Value> =
        j["paths"].as_array().unwrap().iter().map(|p| (p["path"].as_str().unwrap().to_string(), p)).collect();
    assert_eq!(
        by_path.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([out_s.clone(), same_s.clone(), differ_s.clone()]),
        "{j}"
    );
    assert_eq!(j["totals"]["analyzed"], 3, "{j}");
    assert_eq!(by_path[&same_s]["verdict"], "match", "{j}");
    assert!(by_path[&same_s]["diff"].is_null(), "no diff of a match: {j}");
    let differ_diff = by_path[&differ_s]["diff"].as_str().unwrap_or_else(|| panic!("a diff: {j}"));
    assert!(
        differ_diff.contains("1 changed") && differ_diff.contains("-differ") && differ_diff.contains("+dIffer"),
        "{differ_diff}"
    );
    assert!(differ_diff.contains(&server_url), "{differ_diff}");
    let unrepro_report = by_path[&out_s];
    assert_eq!(unrepro_report["verdict"], "mismatch", "the builders disagree: {j}");
    let hashes: BTreeSet<&str> =
        unrepro_report["mesh_builders"].as_array().unwrap().iter().map(|b| b["nar_hash"].as_str().unwrap()).collect();
    assert_eq!(hashes.len(), 2, "{j}");
    let unrepro_diff = unrepro_report["diff"].as_str().unwrap_or_else(|| panic!("a diff: {j}"));
    assert!(unrepro_diff.contains("1 changed"), "the builders' NARs differ in one file: {unrepro_diff}");
    // The text form shows the per-builder lines and the diff.
    let (_, text_out, _) = cli(&["challenge", "--api", api, "--server", &server_url, "--revision", &rev, "--diff"]);
    assert!(text_out.contains("3 store items were analyzed:") && text_out.contains("+dIffer"), "{text_out}");
    assert!(text_out.contains("    builder "), "{text_out}");

    // --diff checks each downloaded NAR against its narinfo's NarHash before comparing.
    let liar_url = format!("{server_url}/liar");
    let (code, j, all) =
        challenge_json(&["challenge", "--api", api, "--server", &liar_url, "--diff", "--json", &differ_s]);
    assert_eq!(code, Some(2), "{all}");
    assert_eq!(j["paths"][0]["servers"][0]["nar_hash"], lie, "{j}");
    let liar_diff = j["paths"][0]["diff"].as_str().unwrap_or_else(|| panic!("a diff field: {j}"));
    assert!(
        liar_diff.contains(&format!("no diff with {liar_url}")) && liar_diff.contains(&format!("not the {lie}")),
        "a NAR without its claimed NarHash is not compared: {liar_diff}"
    );
    assert!(!liar_diff.contains("+dIffer"), "{liar_diff}");
}

/// Kills and reaps a helper process (the classic server) when the test ends, passed or not.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
