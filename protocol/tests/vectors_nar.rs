//! Every NAR vector in ../shared/vectors: the Nix-written archives (hash, size, canonical
//! re-encoding), the snix archives, and the NixOS/nix negative archives with their expected errors.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::nar::tree::Node;
use buildmesh_protocol::nar::{
    HashingReader, InvalidNameReason, NarEvent, NarHasher, NarLimits, NarReadErrorKind, NarReader,
};

fn vectors() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors");
    assert!(dir.is_dir(), "test vectors not found at {}", dir.display());
    dir
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Stream the archive from a file through the reader and a hashing adapter, reading every file's
/// contents in small chunks; returns (digest, number of events).
fn stream(p: &Path) -> (buildmesh_protocol::nar::NarDigest, usize) {
    let f = fs::File::open(p).unwrap();
    let mut r = NarReader::new(HashingReader::new(BufReader::with_capacity(4096, f)));
    let mut events = 0;
    let mut buf = [0u8; 100];
    while let Some(ev) = r.next().unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
        events += 1;
        if let NarEvent::Regular { len, .. } = ev {
            let mut got = 0u64;
            loop {
                let n = r.read_contents(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            assert_eq!(got, len);
        }
    }
    (r.into_inner().finish().1, events)
}

#[test]
fn nix_written_nars_hash_and_roundtrip() {
    let dir = vectors().join("nix/nar");
    let index = fs::read_to_string(dir.join("index.tsv")).unwrap();
    let mut n = 0;
    for line in index.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (name, hash, size) = (f[0], f[2], f[3].parse::<u64>().unwrap());
        let path = dir.join(format!("{name}.nar"));
        let bytes = read(&path);
        let want = NixHash::parse(hash, None).unwrap();
        let d = NarHasher::digest_of(&bytes);
        assert_eq!((&d.nar_hash, d.nar_size), (&want, size), "{name}");
        assert_eq!(d.nar_hash.to_string(), hash, "{name}");
        let (sd, events) = stream(&path);
        assert_eq!(sd, d, "{name}: streaming digest");
        assert!(events >= 1);
        let tree = Node::from_nar(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tree.to_nar().unwrap(), bytes, "{name}: re-encoding differs");
        n += 1;
    }
    assert!(n >= 10, "only {n} NARs in the index");
}

#[test]
fn binary_cache_nars_are_named_by_their_hash() {
    let dir = vectors().join("nix/narinfo/nar");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let Some(stem) = p.file_name().and_then(|s| s.to_str()).and_then(|s| s.strip_suffix(".nar")) else {
            continue;
        };
        let bytes = read(&p);
        assert_eq!(NarHasher::digest_of(&bytes).nar_hash.to_nix32(), stem);
        assert_eq!(Node::from_nar(&bytes).unwrap().to_nar().unwrap(), bytes);
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn snix_nars() {
    let s = vectors().join("snix/snix");
    let target = b"/nix/store/somewhereelse".to_vec();
    let reg = |c: &[u8]| Node::Regular { executable: false, contents: c.to_vec() };
    let cases: Vec<(&str, Option<&str>, Node)> = vec![
        (
            "nix-compat/src/nar/tests/helloworld.nar",
            Some("03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040"),
            reg(b"Hello World!"),
        ),
        (
            "nix-compat/src/nar/tests/symlink.nar",
            Some("097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1"),
            Node::Symlink { target: target.clone() },
        ),
        (
            "nix-compat/src/nar/tests/complicated.nar",
            Some("ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a"),
            Node::Directory(
                [
                    (b".keep".to_vec(), reg(b"")),
                    (b"aa".to_vec(), Node::Symlink { target: target.clone() }),
                    (b"keep".to_vec(), Node::Directory([(b".keep".to_vec(), reg(b""))].into())),
                ]
                .into(),
            ),
        ),
        ("store-go/testdata/emptydirectory.nar", None, Node::Directory(Default::default())),
        ("store-go/testdata/onebyteregular.nar", None, reg(&[1])),
        ("store-go/testdata/symlink.nar", None, Node::Symlink { target }),
    ];
    for (file, sha, want) in cases {
        let bytes = read(&s.join(file));
        let tree = Node::from_nar(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(tree, want, "{file}");
        assert_eq!(want.to_nar().unwrap(), bytes, "{file}: writer output differs");
        if let Some(sha) = sha {
            assert_eq!(NarHasher::digest_of(&bytes).nar_hash.to_hex(), sha, "{file}");
        }
    }
}

#[test]
fn nix_upstream_negative_nars_are_rejected() {
    let dir = vectors().join("nix-upstream/src/libutil-tests/data/nars");
    let name_err = |r: InvalidNameReason| move |k: &NarReadErrorKind| matches!(k, NarReadErrorKind::InvalidName { reason, .. } if *reason == r);
    type Check = Box<dyn Fn(&NarReadErrorKind) -> bool>;
    let cases: Vec<(&str, &str, Check)> = vec![
        (
            "invalid-tag-instead-of-contents",
            "got 'AAAAAAAA'",
            Box::new(|k| matches!(k, NarReadErrorKind::UnexpectedTag { .. })),
        ),
        ("nul-character", "invalid file name 'f", Box::new(name_err(InvalidNameReason::Nul))),
        ("dot", "invalid file name '.'", Box::new(name_err(InvalidNameReason::Dot))),
        ("dotdot", "invalid file name '..'", Box::new(name_err(InvalidNameReason::DotDot))),
        ("slash", "invalid file name 'x/y'", Box::new(name_err(InvalidNameReason::Slash))),
        ("empty", "invalid file name ''", Box::new(name_err(InvalidNameReason::Empty))),
        (
            "executable-after-contents",
            "expected tag ')', got 'executable'",
            Box::new(|k| matches!(k, NarReadErrorKind::UnexpectedTag { .. })),
        ),
        ("name-after-node", "expected tag 'name'", Box::new(|k| matches!(k, NarReadErrorKind::UnexpectedTag { .. }))),
        (
            "regular-one-byte-non-zero-padding",
            "non-zero padding",
            Box::new(|k| matches!(k, NarReadErrorKind::NonZeroPadding)),
        ),
        ("regular-truncated-large-contents", "truncated", Box::new(|k| matches!(k, NarReadErrorKind::UnexpectedEof))),
        ("regular-truncated-padding", "truncated", Box::new(|k| matches!(k, NarReadErrorKind::UnexpectedEof))),
    ];
    for (name, msg, check) in cases {
        let bytes = read(&dir.join(format!("{name}.nar")));
        let err = Node::from_nar(&bytes).expect_err(name);
        assert!(check(&err.kind), "{name}: wrong kind: {err}");
        assert!(err.to_string().contains(msg), "{name}: message {err:?} lacks {msg:?}");
        assert!(err.offset <= bytes.len() as u64, "{name}");
        // The streaming reader over a file gives the same error.
        let mut r = NarReader::new(BufReader::new(fs::File::open(dir.join(format!("{name}.nar"))).unwrap()));
        let e2 = loop {
            match r.next() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("{name}: accepted by the streaming reader"),
                Err(e) => break e,
            }
        };
        assert_eq!(e2.to_string(), err.to_string(), "{name}");
    }
    // The large-contents case fails without allocating: also under a tight size limit.
    let bytes = read(&dir.join("regular-truncated-large-contents.nar"));
    let e = Node::read_nar(&bytes[..], NarLimits { max_total_size: 1 << 20, ..Default::default() }).unwrap_err();
    assert!(matches!(e.kind, NarReadErrorKind::TooLarge { .. }), "{e}");
}

#[test]
fn nix_upstream_valid_nars() {
    let up = vectors().join("nix-upstream");
    // Valid, and the reader stops exactly at the end when trailing data is allowed.
    let bytes = read(&up.join("src/libutil-tests/data/nars/regular-one-byte-zero-padding.nar"));
    assert_eq!(Node::from_nar(&bytes).unwrap(), Node::Regular { executable: false, contents: b"x".to_vec() });
    let mut with_sentinel = bytes.clone();
    with_sentinel.extend_from_slice(b"sentinel");
    let mut r = NarReader::new(&with_sentinel[..]).allow_trailing(true);
    r.skip_to_end().unwrap();
    assert_eq!(r.offset(), 120);
    assert_eq!(r.into_inner(), b"sentinel");
    // By default the trailing bytes are an error.
    let e = Node::from_nar(&with_sentinel).unwrap_err();
    assert!(matches!(e.kind, NarReadErrorKind::TrailingData) && e.offset == 120, "{e}");

    for f in ["simple", "empty-dir", "empty-subdir"] {
        let bytes = read(&up.join(format!("src/libutil-tests/fuzz/data/nars/{f}.nar")));
        let tree = Node::from_nar(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(tree.to_nar().unwrap(), bytes, "{f}");
    }
    // Byte-valid for a plain parser (the attacks need a case-insensitive or normalising FS).
    for f in ["case", "case-collision", "unnormalized"] {
        let bytes = read(&up.join(format!("tests/functional/{f}.nar")));
        let tree = Node::from_nar(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(tree.to_nar().unwrap(), bytes, "{f}");
    }
    let e = Node::from_nar(&read(&up.join("tests/functional/duplicate.nar"))).unwrap_err();
    assert!(matches!(e.kind, NarReadErrorKind::DuplicateEntry { .. }), "{e}");
    assert!(e.to_string().contains("NAR directory is not sorted"), "{e}");
}
