//! Interop with a real Nix (2.8): keys from `buildmesh key generate` work with `nix store sign`,
//! and narinfos signed by `buildmesh narinfo sign` pass `nix store verify` and `nix copy` with
//! `require-sigs`. A missing Nix fails these tests; it never skips them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use buildmesh_protocol::narinfo::{NarInfo, SigResult};
use buildmesh_protocol::nixkey::PublicKey;
use buildmesh_protocol::store_path::StoreDir;

const BIN: &str = env!("CARGO_BIN_EXE_buildmesh-under-test");

fn vectors() -> PathBuf {
    buildmesh_tests::vectors_dir()
}

use buildmesh_tests::require_nix;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `nix` command with nix-command enabled and its caches inside `tmp` (so that a narinfo cached
/// by one run can never answer for another).
fn nix(tmp: &Path, args: &[&str]) -> Output {
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(args)
        .env("XDG_CACHE_HOME", tmp.join("xdg-cache"))
        .output()
        .expect("run nix");
    eprintln!("$ nix {}\n{}{}", args.join(" "), text(&out.stdout), text(&out.stderr));
    out
}

fn buildmesh(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("run buildmesh");
    assert!(out.status.success(), "buildmesh {args:?}: {}", text(&out.stderr));
    out
}

fn generate_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let (sk, pk) = (dir.join(format!("{name}.sec")), dir.join(format!("{name}.pub")));
    buildmesh(&["key", "generate", name, "--secret-file", sk.to_str().unwrap(), "--public-file", pk.to_str().unwrap()]);
    let public = fs::read_to_string(&pk).unwrap();
    (sk, public)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The vector cache's narinfos, parsed.
fn vector_cache(dir: &Path) -> Vec<(PathBuf, NarInfo)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "narinfo"))
        .map(|p| {
            let ni = NarInfo::parse(&fs::read_to_string(&p).unwrap(), &StoreDir::nix()).unwrap();
            (p, ni)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty());
    out
}

/// An input-addressed path (no `CA`): Nix trusts content-addressed paths without any signature, so
/// only these prove that a signature was checked. Prefer one with references (sorted fingerprint).
fn input_addressed(cache: &[(PathBuf, NarInfo)]) -> (PathBuf, NarInfo) {
    cache
        .iter()
        .filter(|(_, ni)| ni.ca.is_none())
        .max_by_key(|(_, ni)| ni.references.iter().filter(|r| **r != ni.store_path).count())
        .cloned()
        .expect("an input-addressed path in the vector cache")
}

#[test]
fn keys_we_generate_work_with_nix_store_sign() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (sk, public) = generate_key(tmp, "mesh-interop-1");
    fs::create_dir(tmp.join("other")).unwrap();
    let (_, impostor) = generate_key(&tmp.join("other"), "mesh-interop-1");

    let src = tmp.join("src-cache");
    copy_dir(&vectors().join("nix/narinfo"), &src);
    let (_, target) = input_addressed(&vector_cache(&src));
    let path = target.store_path_string();
    let store = tmp.join("store");
    let store_s = store.to_str().unwrap();

    let src_url = format!("file://{}", src.display());
    let out = nix(tmp, &["copy", "--from", &src_url, "--to", store_s, "--no-check-sigs", &path]);
    assert!(out.status.success());

    // Nix signs with our secret key file.
    let out = nix(tmp, &["store", "sign", "--store", store_s, "--key-file", sk.to_str().unwrap(), &path]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("added 1 signatures"));

    // Nix accepts the signature under our public key, and rejects it under another key of the same name.
    let out = nix(
        tmp,
        &["store", "verify", "--store", store_s, "--sigs-needed", "1", "--trusted-public-keys", &public, &path],
    );
    assert!(out.status.success());
    let out = nix(
        tmp,
        &["store", "verify", "--store", store_s, "--sigs-needed", "1", "--trusted-public-keys", &impostor, &path],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is untrusted"));

    // Our code verifies the signature Nix made: export a narinfo with Nix and check it.
    let out_cache = tmp.join("out-cache");
    let out_url = format!("file://{}?compression=none", out_cache.display());
    let out = nix(tmp, &["copy", "--from", store_s, "--to", &out_url, &path]);
    assert!(out.status.success());
    let file = out_cache.join(format!("{}.narinfo", target.store_path.hash_part()));
    let written = fs::read_to_string(&file).unwrap();
    let ni = NarInfo::parse(&written, &StoreDir::nix()).unwrap();
    assert_eq!(ni.to_string(), written, "Nix's narinfo round-trips");
    let ours = PublicKey::parse(&public).unwrap();
    let v = ni.verify(std::slice::from_ref(&ours)).unwrap();
    assert!(v.is_valid(), "{:?}", v.checks);
    assert!(v.valid_keys().all(|k| *k == ours));
    let v = ni.verify(&[PublicKey::parse(&impostor).unwrap()]).unwrap();
    assert!(!v.is_valid());
    assert!(v.checks.iter().any(|c| c.result == SigResult::BadSignature));
    // And so does the command line.
    let out = Command::new(BIN)
        .args(["narinfo", "verify", "--trusted-key", &public, file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn our_signatures_pass_nix_store_verify() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (sk, public) = generate_key(tmp, "mesh-interop-2");
    let vectors_public = fs::read_to_string(vectors().join("nix/keys/public-key")).unwrap();

    // A copy of the vector cache whose Sig lines are replaced by ours.
    let cache = tmp.join("cache");
    copy_dir(&vectors().join("nix/narinfo"), &cache);
    let entries = vector_cache(&cache);
    for (file, ni) in &entries {
        let mut unsigned = ni.clone();
        unsigned.sigs.clear();
        fs::write(file, unsigned.to_string()).unwrap();
        let out = buildmesh(&["narinfo", "sign", "--secret-file", sk.to_str().unwrap(), file.to_str().unwrap()]);
        fs::write(file, &out.stdout).unwrap();
        assert!(text(&out.stdout).contains("\nSig: mesh-interop-2:"));
    }
    let url = format!("file://{}", cache.display());

    // Every path passes with our key (NAR contents are checked too) ...
    let verify = |url: &str, key: &str, paths: &[&str]| {
        let mut args = vec!["store", "verify", "--store", url, "--sigs-needed", "1", "--trusted-public-keys", key];
        args.extend_from_slice(paths);
        nix(tmp, &args)
    };
    let out = verify(&url, &public, &["--all"]);
    assert!(out.status.success());
    assert!(!text(&out.stderr).contains("untrusted"));
    // ... and the input-addressed ones fail with the key that signed the originals, whose Sig lines are gone.
    let out = verify(&url, &vectors_public, &["--all"]);
    assert!(!out.status.success());
    let untrusted = text(&out.stderr).matches("is untrusted").count();
    assert_eq!(untrusted, entries.iter().filter(|(_, ni)| ni.ca.is_none()).count());

    // nix copy with require-sigs accepts our signatures.
    let (victim_file, victim) = input_addressed(&entries);
    let victim_path = victim.store_path_string();
    let store = tmp.join("store");
    let copy = |from: &str, to: &Path, key: &str| {
        nix(
            tmp,
            &[
                "copy",
                "--from",
                from,
                "--to",
                to.to_str().unwrap(),
                "--option",
                "require-sigs",
                "true",
                "--option",
                "trusted-public-keys",
                key,
                &victim_path,
            ],
        )
    };
    let out = copy(&url, &store, &public);
    assert!(out.status.success());

    // A tampered signature fails: flip one bit of the victim's signature in a fresh copy of the cache.
    let tampered = tmp.join("tampered");
    copy_dir(&cache, &tampered);
    let tampered_file = tampered.join(victim_file.file_name().unwrap());
    let signed = fs::read_to_string(&tampered_file).unwrap();
    let sig_line = signed.lines().find(|l| l.starts_with("Sig: mesh-interop-2:")).unwrap();
    let b64 = sig_line.rsplit_once(':').unwrap().1;
    let mut raw = BASE64.decode(b64).unwrap();
    raw[10] ^= 0x01;
    let bad_line = format!("Sig: mesh-interop-2:{}", BASE64.encode(&raw));
    fs::write(&tampered_file, signed.replace(sig_line, &bad_line)).unwrap();
    let tampered_url = format!("file://{}", tampered.display());
    let out = verify(&tampered_url, &public, &[&victim_path]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is untrusted"));
    let out = copy(&tampered_url, &tmp.join("store2"), &public);
    assert!(!out.status.success());
    // Our verifier agrees.
    let ni = NarInfo::parse(&fs::read_to_string(&tampered_file).unwrap(), &StoreDir::nix()).unwrap();
    let v = ni.verify(&[PublicKey::parse(&public).unwrap()]).unwrap();
    assert_eq!(v.checks[0].result, SigResult::BadSignature);
}
