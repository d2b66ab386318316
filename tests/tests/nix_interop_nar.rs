//! Interoperability with a real Nix: our dump equals `nix-store --dump`, our hash equals
//! `nix hash path` and `nix-hash`, and NARs restore across the two implementations to identical
//! trees (file types, contents, exec bits, symlink targets, modes).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use buildmesh::nar_fs;
use buildmesh_protocol::nar::{NarHasher, NarLimits};

use buildmesh_tests::require_nix;

fn nix(args: &[&OsStr], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{:?}: {e}", args[0]));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn write(p: &Path, contents: &[u8], mode: u32) {
    fs::write(p, contents).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with executables, a u-x-only-for-group file, empty files and directories, symlinks
/// (relative, absolute, dangling, to a directory), deep nesting, a large file, and names that test
/// byte-order sorting (case, punctuation, UTF-8, non-UTF-8 bytes, spaces, newline).
fn odd_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    write(&root.join("run-me"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("empty-exec"), b"", 0o700);
    write(&root.join("not-exec"), b"group and other may execute, owner may not\n", 0o654);
    write(&root.join("empty"), b"", 0o644);
    write(&root.join("read-only"), b"ro", 0o444);
    fs::create_dir(root.join("empty-dir")).unwrap();
    let mut deep = root.join("deep");
    for i in 0..20 {
        deep.push(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("bottom"), b"bottom", 0o644);
    let big: Vec<u8> = (0..(1 << 20) + 3).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    write(&root.join("big.bin"), &big, 0o644);
    for (i, len) in [1usize, 7, 8, 9, 15, 16, 17].into_iter().enumerate() {
        write(&root.join(format!("pad{i}")), &vec![b'p'; len], 0o644);
    }
    let names: [&[u8]; 13] = [
        b"A",
        b"a",
        b"B",
        b"_",
        b"-",
        b".hidden",
        b"Z~",
        b"with space",
        b"new\nline",
        "\u{e2}".as_bytes(),
        "a\u{302}".as_bytes(),
        b"\xff\xfe-not-utf8",
        b"0",
    ];
    let odd = root.join("names");
    fs::create_dir(&odd).unwrap();
    for n in names {
        write(&odd.join(OsStr::from_bytes(n)), n, 0o644);
    }
    let links = root.join("links");
    fs::create_dir(&links).unwrap();
    std::os::unix::fs::symlink("../run-me", links.join("relative")).unwrap();
    std::os::unix::fs::symlink("/nix/store/somewhereelse", links.join("absolute")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", links.join("dangling")).unwrap();
    std::os::unix::fs::symlink("../deep", links.join("to-dir")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"\xff weird target"), links.join("odd-target")).unwrap();
    // Directories with unusual modes: a NAR records none.
    fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File { exec: bool, mode: u32, contents: Vec<u8> },
    Link(PathBuf),
    Dir { mode: u32 },
}

/// Every path under `root` (relative, as bytes) with what a NAR preserves, plus the exact mode.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<Vec<u8>, Entry>) {
        let md = fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() {
            out.insert(rel, Entry::Link(fs::read_link(p).unwrap()));
        } else if md.is_dir() {
            out.insert(rel, Entry::Dir { mode });
            for e in fs::read_dir(p).unwrap() {
                walk(root, &e.unwrap().path(), out);
            }
        } else {
            out.insert(rel, Entry::File { exec: mode & 0o100 != 0, mode, contents: fs::read(p).unwrap() });
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The same snapshot without exact modes (to compare a source tree with a restored one).
fn content_view(s: &BTreeMap<Vec<u8>, Entry>) -> Vec<(Vec<u8>, String)> {
    s.iter()
        .map(|(k, v)| {
            let d = match v {
                Entry::File { exec, contents, .. } => format!("file exec={exec} {}", blake3::hash(contents)),
                Entry::Link(t) => format!("link {}", t.display()),
                Entry::Dir { .. } => "dir".to_string(),
            };
            (k.clone(), d)
        })
        .collect()
}

#[test]
fn dump_and_hash_equal_nix() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tree");
    odd_tree(&src);
    let ours = nar_fs::dump_path(&src, Vec::new()).unwrap();
    let theirs = nix(&[os("nix-store"), os("--dump"), src.as_os_str()], None);
    assert!(ours == theirs, "our dump differs from nix-store --dump ({} vs {} bytes)", ours.len(), theirs.len());

    let d = nar_fs::hash_path(&src).unwrap();
    assert_eq!(d, NarHasher::digest_of(&theirs));
    let nix_b32 = nix(
        &[
            os("nix"),
            os("--extra-experimental-features"),
            os("nix-command"),
            os("hash"),
            os("path"),
            os("--type"),
            os("sha256"),
            os("--base32"),
            src.as_os_str(),
        ],
        None,
    );
    assert_eq!(format!("sha256:{}", String::from_utf8(nix_b32).unwrap().trim()), d.nar_hash.to_string());
    let nix_hash = nix(&[os("nix-hash"), os("--type"), os("sha256"), os("--base32"), src.as_os_str()], None);
    assert_eq!(String::from_utf8(nix_hash).unwrap().trim(), d.nar_hash.to_nix32());

    // Single-node roots too: a file, an executable, a symlink.
    for sub in ["run-me", "not-exec", "links/dangling", "empty-dir"] {
        let p = src.join(sub);
        let ours = nar_fs::dump_path(&p, Vec::new()).unwrap();
        assert!(ours == nix(&[os("nix-store"), os("--dump"), p.as_os_str()], None), "{sub}");
    }
}

#[test]
fn our_nars_restore_with_nix_and_nix_nars_restore_with_ours() {
    require_nix();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("tree");
    odd_tree(&src);
    let want = content_view(&snapshot(&src));

    // Ours -> nix-store --restore.
    let ours = nar_fs::dump_path(&src, Vec::new()).unwrap();
    let by_nix = tmp.path().join("by-nix");
    nix(&[os("nix-store"), os("--restore"), by_nix.as_os_str()], Some(&ours));
    let nix_snap = snapshot(&by_nix);
    assert_eq!(content_view(&nix_snap), want);

    // nix-store --dump -> ours.
    let theirs = nix(&[os("nix-store"), os("--dump"), src.as_os_str()], None);
    let by_us = tmp.path().join("by-us");
    nar_fs::restore(&theirs[..], &by_us, NarLimits::default()).unwrap();
    let our_snap = snapshot(&by_us);
    assert_eq!(content_view(&our_snap), want);
    // Same modes as nix-store --restore produces (0644 / 0755 files, 0755 directories).
    assert_eq!(our_snap, nix_snap);

    // And the CLI restore gives the same tree.
    let by_cli = tmp.path().join("by-cli");
    let mut child = Command::new(env!("CARGO_BIN_EXE_buildmesh-under-test"))
        .args([os("nar"), os("restore"), by_cli.as_os_str()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&theirs).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(snapshot(&by_cli), nix_snap);
}

#[test]
fn vector_nars_restore_identically_with_both() {
    require_nix();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/nix/nar");
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension() != Some(os("nar")) {
            continue;
        }
        let nar = fs::read(&p).unwrap();
        let a = tmp.path().join(format!("{n}-nix"));
        let b = tmp.path().join(format!("{n}-us"));
        nix(&[os("nix-store"), os("--restore"), a.as_os_str()], Some(&nar));
        nar_fs::restore(&nar[..], &b, NarLimits::default()).unwrap();
        assert_eq!(snapshot(&a), snapshot(&b), "{}", p.display());
        n += 1;
    }
    assert!(n > 0);
}
