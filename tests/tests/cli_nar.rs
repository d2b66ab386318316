//! `buildmesh nar dump|restore|hash` and `node::nar_fs` against the NAR vectors and generated
//! trees: restore-then-dump gives identical bytes, hashes match the index, hostile archives are
//! refused without leaving files behind, and hashing a large file stays within 64 MiB of RSS.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use buildmesh::nar_fs::{self, NarFsError};
use buildmesh_protocol::nar::{NarHasher, NarLimits, NarReadErrorKind};
use proptest::prelude::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_buildmesh-under-test")
}

fn vectors() -> PathBuf {
    buildmesh_tests::vectors_dir()
}

fn run(args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn buildmesh");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        // A rejected archive may close stdin early.
        let _ = s.write_all(input);
    }
    child.wait_with_output().unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// (name, NarHash, NarSize) of every archive in nix/nar/index.tsv.
fn index() -> Vec<(String, String, u64)> {
    let text = fs::read_to_string(vectors().join("nix/nar/index.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[2].to_string(), f[3].parse().unwrap())
        })
        .collect()
}

#[test]
fn library_restore_dump_hash_every_vector() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, hash, size)) in index().into_iter().enumerate() {
        let nar = fs::read(vectors().join(format!("nix/nar/{name}.nar"))).unwrap();
        let dst = tmp.path().join(format!("t{i}"));
        let stats = nar_fs::restore(&nar[..], &dst, NarLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stats.nar_size, size, "{name}");
        let dumped = nar_fs::dump_path(&dst, Vec::new()).unwrap();
        assert!(dumped == nar, "{name}: restore then dump differs");
        let d = nar_fs::hash_path(&dst).unwrap();
        assert_eq!((d.nar_hash.to_string(), d.nar_size), (hash.clone(), size), "{name}");
        assert_eq!(d, NarHasher::digest_of(&nar), "{name}: blake3 too");
    }
}

#[test]
fn cli_restore_dump_hash_every_vector() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, hash, size)) in index().into_iter().enumerate() {
        let nar = fs::read(vectors().join(format!("nix/nar/{name}.nar"))).unwrap();
        let dst = tmp.path().join(format!("t{i}"));
        let out = run(&[os("nar"), os("restore"), dst.as_os_str()], Some(&nar));
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let out = run(&[os("nar"), os("dump"), dst.as_os_str()], None);
        assert!(out.status.success(), "{name}");
        assert!(out.stdout == nar, "{name}: CLI restore then dump differs");
        let out = run(&[os("nar"), os("hash"), dst.as_os_str()], None);
        assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{hash}\n{size}\n"), "{name}");
    }
}

#[test]
fn hash_json_output() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    fs::write(&f, b"Hello World!").unwrap();
    let out = run(&[os("nar"), os("hash"), os("--json"), f.as_os_str()], None);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // snix helloworld.nar: a regular file "Hello World!" (sha256 03e7f63b...).
    let nar = nar_fs::dump_path(&f, Vec::new()).unwrap();
    let d = NarHasher::digest_of(&nar);
    assert_eq!(d.nar_hash.to_hex(), "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040");
    assert_eq!(v["narHash"], d.nar_hash.to_string());
    assert_eq!(v["narSize"], 128);
    assert_eq!(v["blake3"], hex::encode(blake3::hash(&nar).as_bytes()));
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    let dir = vectors().join("nix-upstream/src/libutil-tests/data/nars");
    let tmp = tempfile::tempdir().unwrap();
    for (name, msg) in [
        ("dot", "invalid file name '.'"),
        ("dotdot", "invalid file name '..'"),
        ("slash", "invalid file name 'x/y'"),
        ("nul-character", "invalid file name 'f"),
        ("empty", "invalid file name ''"),
        ("executable-after-contents", "expected tag ')', got 'executable'"),
        ("invalid-tag-instead-of-contents", "got 'AAAAAAAA'"),
        ("name-after-node", "expected tag 'name'"),
        ("regular-one-byte-non-zero-padding", "non-zero padding"),
        ("regular-truncated-large-contents", "truncated"),
        ("regular-truncated-padding", "truncated"),
    ] {
        let nar = fs::read(dir.join(format!("{name}.nar"))).unwrap();
        let dst = tmp.path().join(name);
        let out = run(&[os("nar"), os("restore"), dst.as_os_str()], Some(&nar));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(err.contains(msg) && err.contains("at byte"), "{name}: {err}");
        assert!(!dst.exists() && fs::symlink_metadata(&dst).is_err(), "{name}: left {}", dst.display());
    }
    let dup = fs::read(vectors().join("nix-upstream/tests/functional/duplicate.nar")).unwrap();
    let dst = tmp.path().join("dup");
    let e = nar_fs::restore(&dup[..], &dst, NarLimits::default()).unwrap_err();
    assert!(matches!(e, NarFsError::Read(ref r) if matches!(r.kind, NarReadErrorKind::DuplicateEntry { .. })), "{e}");
    assert!(!dst.exists());
    // The accepted one-byte vector restores to a one-byte file.
    let ok = fs::read(dir.join("regular-one-byte-zero-padding.nar")).unwrap();
    let dst = tmp.path().join("one");
    nar_fs::restore(&ok[..], &dst, NarLimits::default()).unwrap();
    assert_eq!(fs::read(&dst).unwrap(), b"x");
}

#[test]
fn restore_refuses_existing_target_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let nar = fs::read(vectors().join("snix/snix/nix-compat/src/nar/tests/complicated.nar")).unwrap();
    let out = run(&[os("nar"), os("restore"), tmp.path().as_os_str()], Some(&nar));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let dst = tmp.path().join("x");
    let out = run(&[os("nar"), os("restore"), os("--max-size"), os("839"), dst.as_os_str()], Some(&nar));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("size limit"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dst.exists());
    let out = run(&[os("nar"), os("restore"), os("--max-size"), os("840"), dst.as_os_str()], Some(&nar));
    assert!(out.status.success());
    assert_eq!(fs::read_link(dst.join("aa")).unwrap(), Path::new("/nix/store/somewhereelse"));
    assert_eq!(fs::metadata(dst.join("keep")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(fs::metadata(dst.join(".keep")).unwrap().permissions().mode() & 0o7777, 0o644);
}

#[test]
fn special_files_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("d/fifo");
    fs::create_dir(tmp.path().join("d")).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let e = nar_fs::dump_path(&tmp.path().join("d"), Vec::new()).unwrap_err();
    assert!(matches!(e, NarFsError::UnsupportedFileType { kind: "FIFO", .. }), "{e}");
    let out = run(&[os("nar"), os("hash"), tmp.path().join("d").as_os_str()], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FIFO") && err.contains("d/fifo"), "{err}");
    let sock = tmp.path().join("s");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    assert!(matches!(nar_fs::hash_path(&sock), Err(NarFsError::UnsupportedFileType { kind: "socket", .. })));
    assert!(matches!(nar_fs::hash_path(&tmp.path().join("missing")), Err(NarFsError::Io { .. })));
}

#[test]
fn large_file_streams_in_bounded_memory() {
    // A 1 GiB sparse file: dumping or hashing it must not load it into memory.
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("big");
    let file = fs::File::create(&f).unwrap();
    file.set_len(1 << 30).unwrap();
    drop(file);
    let out = Command::new(bin())
        .args([os("nar"), os("measure"), os("--"), os(bin()), os("nar"), os("hash")])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err.lines().find_map(|l| l.strip_prefix("buildmesh-measure:")).expect("measurement");
    let rss_kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(rss_kib < 64 * 1024, "peak RSS {rss_kib} KiB");
    let stdout = String::from_utf8(out.stdout).unwrap();
    // 112 bytes of framing around the contents of a root regular file.
    assert_eq!(stdout.lines().nth(1), Some(((1u64 << 30) + 112).to_string().as_str()));
}

// --- property test: random trees on disk --------------------------------------------------------

#[derive(Debug, Clone)]
enum T {
    File(bool, Vec<u8>),
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, T>),
}

fn arb_tree() -> impl Strategy<Value = T> {
    let name = proptest::collection::vec(any::<u8>().prop_filter("", |b| *b != b'/' && *b != 0), 1..10)
        .prop_filter("", |n| n != b"." && n != b"..");
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..3000)).prop_map(|(x, c)| T::File(x, c)),
        proptest::collection::vec(1u8..=255, 1..20).prop_map(T::Link),
    ];
    leaf.prop_recursive(3, 24, 5, move |inner| {
        proptest::collection::btree_map(name.clone(), inner, 0..5).prop_map(T::Dir)
    })
}

fn make(p: &Path, t: &T) {
    match t {
        T::File(x, c) => {
            fs::write(p, c).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(if *x { 0o750 } else { 0o640 })).unwrap();
        }
        T::Link(target) => std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), p).unwrap(),
        T::Dir(m) => {
            fs::create_dir(p).unwrap();
            for (n, c) in m {
                make(&p.join(std::ffi::OsStr::from_bytes(n)), c);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn disk_tree_dump_restore_dump(t in arb_tree()) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make(&src, &t);
        let nar = nar_fs::dump_path(&src, Vec::new()).unwrap();
        prop_assert_eq!(nar_fs::hash_path(&src).unwrap(), NarHasher::digest_of(&nar));
        let dst = tmp.path().join("dst");
        let stats = nar_fs::restore(&nar[..], &dst, NarLimits::default()).unwrap();
        prop_assert_eq!(stats.nar_size, nar.len() as u64);
        prop_assert!(nar_fs::dump_path(&dst, Vec::new()).unwrap() == nar);
    }
}
