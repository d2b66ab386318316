//! Issue 10, findings 2 and 11 on a real standalone `buildmesh node` process: anonymous uploads
//! must never become node-signed narinfos, and `/nar/…` follows the same trust rule as the
//! narinfos.
//!
//! - an upload of a derivation plus a "source" placed at the derivation's own output path is
//!   refused (the output is not `already_built`, no narinfo or NAR is served for the attacker's
//!   bytes);
//! - an upload whose "source" is a made-up path (`/nix/store/<hash>-glibc-2.38`) with arbitrary
//!   bytes is refused;
//! - a registration that exists anyway (written straight into the stopped node's store, as an
//!   upload before this fix would have left it) is neither served as a narinfo nor as a NAR;
//! - what the node built itself is still served, signed by the node, and verifies with
//!   `buildmesh narinfo verify`; an honest text source is served unsigned with its `CA:`.

mod node_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use buildmesh::store::{PathInfo, Store};
use buildmesh::submit::wire::{DrvEntry, HEADER_VERSION, SourceEntry, SubmitHeader, encode_body};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::nar::NarWriter;
use buildmesh_protocol::narinfo::NarInfo;
use buildmesh_protocol::nixbase32;
use buildmesh_protocol::store_path::{StorePath, make_text_path};
use node_support::*;
use sha2::Digest as _;

fn flat_nar(contents: &[u8]) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.regular(false, contents.len() as u64, &mut &contents[..]).unwrap();
    w.finish().unwrap()
}

fn sha(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

/// `Authorization` for state-changing requests once the node has an API token.
fn token(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("api.token")).ok().map(|t| t.trim().to_string())
}

/// POST a raw upload: `drv` (with its bytes) requested, plus one "source" at `source` with the
/// NAR `nar`. Returns (status, body).
fn upload(url: &str, data: &Path, drv: &StorePath, drv_bytes: &[u8], source: &StorePath, nar: &[u8]) -> (u16, String) {
    let header = SubmitHeader {
        version: HEADER_VERSION,
        store_dir: "/nix/store".into(),
        requested: vec![sd().display(drv)],
        priority: 0,
        replicas: 1,
        drvs: vec![DrvEntry { path: sd().display(drv), size: drv_bytes.len() as u64 }],
        sources: vec![SourceEntry {
            path: sd().display(source),
            nar_hash: NixHash::sha256(sha(nar)).to_string(),
            nar_size: nar.len() as u64,
            references: vec![],
        }],
    };
    let body = encode_body(&header, &[drv_bytes], &[nar]).unwrap();
    let mut req = http().post(format!("{url}/api/v1/submit")).body(body);
    if let Some(t) = token(data) {
        req = req.bearer_auth(t);
    }
    let r = req.send().unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

fn narinfo_status(url: &str, p: &StorePath) -> (u16, Vec<u8>) {
    get(&format!("{url}/{}.narinfo", p.hash_part()))
}

fn nar_status(url: &str, nar: &[u8]) -> u16 {
    let h = nixbase32::encode(&sha(nar));
    let a = get(&format!("{url}/nar/{h}.nar")).0;
    let b = get(&format!("{url}/nar/{h}.nar.zst")).0;
    assert_eq!(a, b, "both NAR routes answer alike");
    a
}

fn submit_wait(url: &str, data: &Path, dir: &Path, srcs: Option<&Path>, drv: &StorePath) {
    let mut args = vec!["submit", "--api", url, "--from", dir.to_str().unwrap(), "--wait", "--timeout", "120"];
    if let Some(s) = srcs {
        args.extend(["--sources", s.to_str().unwrap()]);
    }
    let shown = sd().display(drv);
    args.push(&shown);
    let out = std::process::Command::new(bin())
        .args(&args)
        .env("BUILDMESH_LOG", "warn")
        .envs(token(data).map(|t| ("BUILDMESH_TOKEN", t)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit --wait: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn uploads_never_become_signed_narinfos() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut node = NodeProc::start(&data, &["--slots", "2"]);
    let url = node.url.clone();
    let dir = tmp.path().join("drvs");
    let srcs = tmp.path().join("srcs");
    std::fs::create_dir_all(&srcs).unwrap();
    let mut d = Drvs::new(&dir);

    // Honest: the node builds a derivation that reads a text source.
    let lib = make_text_path(&sd(), "lib.sh", b"echo built-here\n", []).unwrap();
    std::fs::write(srcs.join(format!("{lib}.nar")), flat_nar(b"echo built-here\n")).unwrap();
    let (honest, honest_out) = d.add_with_sources("honest", ". $src0 > $out", &[], std::slice::from_ref(&lib));
    submit_wait(&url, &data, &dir, Some(&srcs), &honest);

    // Attack 1: a derivation plus a "source" at its own output path.
    let (victim, victim_out) = d.add("victim", "echo what-the-builder-makes > $out", &[]);
    let evil = flat_nar(b"attacker bytes\n");
    let victim_bytes = std::fs::read(dir.join("victim.drv")).unwrap();
    let (s, body) = upload(&url, &data, &victim, &victim_bytes, &victim_out, &evil);
    assert_eq!(s, 400, "an upload at an output path must be refused: {body}");
    assert!(body.contains("output") && body.contains(&sd().display(&victim_out)), "{body}");

    // Attack 2: a made-up path with arbitrary bytes as an input source.
    let glibc = StorePath::from_basename(&format!("{}-glibc-2.38", victim_out.hash_part().replace('a', "b"))).unwrap();
    let (uses, _) = d.add_with_sources("uses-glibc", "cat $src0 > $out", &[], std::slice::from_ref(&glibc));
    let uses_bytes = std::fs::read(dir.join("uses-glibc.drv")).unwrap();
    let (s, body) = upload(&url, &data, &uses, &uses_bytes, &glibc, &evil);
    assert_eq!(s, 400, "a source that is not content-addressed must be refused: {body}");
    assert!(body.contains("not a content-addressed path"), "{body}");

    // Nothing of the attacker is served: no narinfo, no NAR.
    for p in [&victim_out, &glibc] {
        assert_eq!(narinfo_status(&url, p).0, 404, "{p} must not be served");
    }
    assert_eq!(nar_status(&url, &evil), 404, "the attacker's NAR must not be served");
    let (_, j) = get_json(&format!("{url}/api/v1/builds/{victim}"));
    assert!(j.get("state").is_none() || j["state"] != "done", "{j}");

    // The honest output is served, signed by the node (the signature it made when it built it),
    // and `buildmesh narinfo verify` accepts it; the text source is served unsigned with `CA:`.
    let (s, body) = narinfo_status(&url, &honest_out);
    assert_eq!(s, 200);
    let ni_file = tmp.path().join("honest.narinfo");
    std::fs::write(&ni_file, &body).unwrap();
    let (st, out, err) = cli(&["narinfo", "verify", "--trusted-key", &node.public_key, ni_file.to_str().unwrap()]);
    assert!(st.success(), "narinfo verify: {out}\n{err}");
    let ni = NarInfo::parse_bytes(&body, &sd()).unwrap();
    assert_eq!(ni.sigs.len(), 1, "one Sig: the node's own, made when it built the output");
    let (s, body) = narinfo_status(&url, &lib);
    assert_eq!(s, 200, "the honest text source is served");
    let src_ni = NarInfo::parse_bytes(&body, &sd()).unwrap();
    assert!(src_ni.sigs.is_empty(), "sources are not signed: {}", String::from_utf8_lossy(&body));
    assert_eq!(
        src_ni.ca.as_ref().map(|c| c.as_str().to_string()),
        Some(format!("text:sha256:{}", nixbase32::encode(&sha(b"echo built-here\n"))))
    );
    assert_eq!(nar_status(&url, &flat_nar(b"echo built-here\n")), 200);

    // A registration that got in anyway (written straight into the stopped node's store) is
    // neither served as a narinfo nor as a NAR: registration is not trust.
    node.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    {
        let store = Store::open(&data).unwrap();
        let blob = store.put_nar(&mut &evil[..]).unwrap();
        for p in [&victim_out, &glibc] {
            store
                .register_path(&PathInfo {
                    path: p.clone(),
                    nar_hash: blob.nar_hash.clone(),
                    nar_size: blob.nar_size,
                    references: BTreeSet::new(),
                    deriver: None,
                    ca: None,
                    blob: blob.blake3,
                    registered_at: 1,
                })
                .unwrap();
        }
    }
    let node = NodeProc::start(&data, &["--slots", "2"]);
    let url = node.url.clone();
    for p in [&victim_out, &glibc] {
        assert_eq!(narinfo_status(&url, p).0, 404, "registered-only {p} must not be served");
    }
    assert_eq!(nar_status(&url, &evil), 404, "a registered-only NAR must not be served");
    assert_eq!(narinfo_status(&url, &honest_out).0, 200);
}
