//! Unit and property tests of the NAR writer, reader and hasher.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::tree::Node;
use super::*;

fn reg(contents: &[u8]) -> Node {
    Node::Regular { executable: false, contents: contents.to_vec() }
}

fn dir(entries: Vec<(&[u8], Node)>) -> Node {
    Node::Directory(entries.into_iter().map(|(n, v)| (n.to_vec(), v)).collect())
}

fn str_(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v.resize(v.len() + padding_len(s.len() as u64), 0);
    v
}

fn toks(ts: &[&[u8]]) -> Vec<u8> {
    ts.iter().flat_map(|t| str_(t)).collect()
}

fn read_err(bytes: &[u8]) -> NarReadError {
    match Node::from_nar(bytes) {
        Ok(n) => panic!("accepted {n:?}"),
        Err(e) => e,
    }
}

#[test]
fn helloworld_matches_known_hash() {
    // snix nix-compat/src/nar/tests/helloworld.nar: 128 bytes, sha256 03e7f63b...
    let nar = reg(b"Hello World!").to_nar().unwrap();
    assert_eq!(nar.len(), 128);
    let d = NarHasher::digest_of(&nar);
    assert_eq!(d.nar_hash.to_hex(), "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040");
    assert_eq!(d.nar_size, 128);
    assert_eq!(d.blake3, *blake3::hash(&nar).as_bytes());
    assert_eq!(Node::from_nar(&nar).unwrap(), reg(b"Hello World!"));
}

#[test]
fn complicated_matches_known_hash() {
    let target = b"/nix/store/somewhereelse".to_vec();
    let tree = dir(vec![
        (b".keep", reg(b"")),
        (b"aa", Node::Symlink { target: target.clone() }),
        (b"keep", dir(vec![(b".keep", reg(b""))])),
    ]);
    let nar = tree.to_nar().unwrap();
    assert_eq!(nar.len(), 840);
    assert_eq!(
        NarHasher::digest_of(&nar).nar_hash.to_hex(),
        "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a"
    );
    let sym = Node::Symlink { target }.to_nar().unwrap();
    assert_eq!(
        NarHasher::digest_of(&sym).nar_hash.to_hex(),
        "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1"
    );
}

#[test]
fn executable_token_layout() {
    let nar = Node::Regular { executable: true, contents: b"x".to_vec() }.to_nar().unwrap();
    let mut want = toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"executable", b"", b"contents", b"x", b")"]);
    assert_eq!(nar, want);
    want.push(0);
    let e = read_err(&want);
    assert!(matches!(e.kind, NarReadErrorKind::TrailingData), "{e}");
    assert_eq!(e.offset, nar.len() as u64);
}

#[test]
fn writer_enforces_grammar_and_names() {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    assert!(matches!(w.entry(b"a"), Err(NarWriteError::WrongState { .. })));
    assert!(matches!(w.end_directory(), Err(NarWriteError::WrongState { .. })));
    w.directory().unwrap();
    assert!(matches!(w.symlink(b"x"), Err(NarWriteError::WrongState { .. })));
    for (bad, reason) in [
        (&b""[..], InvalidNameReason::Empty),
        (b".", InvalidNameReason::Dot),
        (b"..", InvalidNameReason::DotDot),
        (b"a/b", InvalidNameReason::Slash),
        (b"a\0b", InvalidNameReason::Nul),
        (&[b'x'; 256], InvalidNameReason::TooLong),
    ] {
        match w.entry(bad) {
            Err(NarWriteError::InvalidName { reason: r, .. }) => assert_eq!(r, reason),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    w.entry(b"b").unwrap();
    assert!(matches!(w.end_directory(), Err(NarWriteError::WrongState { .. })));
    assert!(matches!(w.symlink(b""), Err(NarWriteError::InvalidTarget { .. })));
    w.symlink(b"t").unwrap();
    assert!(matches!(w.entry(b"a"), Err(NarWriteError::Unsorted { .. })));
    assert!(matches!(w.entry(b"b"), Err(NarWriteError::Unsorted { .. })));
    w.entry(b"c").unwrap();
    w.begin_regular(false, 2).unwrap();
    w.write_contents(b"x").unwrap();
    assert!(matches!(w.end_regular(), Err(NarWriteError::ContentsLength { declared: 2, actual: 1, .. })));
    // The writer is now failed: nothing more is accepted.
    assert!(matches!(w.end_directory(), Err(NarWriteError::WrongState { .. })));
}

#[test]
fn writer_rejects_short_and_long_contents() {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    let e = w.regular(false, 5, &mut &b"abc"[..]).unwrap_err();
    assert!(matches!(e, NarWriteError::ContentsLength { declared: 5, actual: 3, .. }), "{e}");
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.begin_regular(false, 2).unwrap();
    assert!(matches!(w.write_contents(b"abc"), Err(NarWriteError::ContentsLength { .. })));
    // `regular` reads only the declared length from a longer source.
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.regular(false, 2, &mut &b"abc"[..]).unwrap();
    let nar = w.finish().unwrap();
    assert_eq!(Node::from_nar(&nar).unwrap(), reg(b"ab"));
    // finish before the root is complete fails.
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.directory().unwrap();
    assert!(matches!(w.finish(), Err(NarWriteError::WrongState { .. })));
}

fn entry_nar(name: &[u8]) -> Vec<u8> {
    let mut v = toks(&[b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"(", b"name"]);
    v.extend(str_(name));
    v.extend(toks(&[b"node", b"(", b"type", b"regular", b"contents", b"", b")", b")", b")"]));
    v
}

#[test]
fn reader_rejects_bad_names_with_offset_and_path() {
    for (name, reason) in [
        (&b""[..], InvalidNameReason::Empty),
        (b".", InvalidNameReason::Dot),
        (b"..", InvalidNameReason::DotDot),
        (b"x/y", InvalidNameReason::Slash),
        (b"f\0o", InvalidNameReason::Nul),
    ] {
        let e = read_err(&entry_nar(name));
        match &e.kind {
            NarReadErrorKind::InvalidName { reason: r, .. } => assert_eq!(*r, reason),
            k => panic!("{name:?}: {k}"),
        }
        assert_eq!(e.offset, 128, "{e}");
        assert!(e.to_string().contains("invalid file name"), "{e}");
    }
    let e = read_err(&entry_nar(&[b'a'; 256]));
    assert!(matches!(e.kind, NarReadErrorKind::InvalidName { reason: InvalidNameReason::TooLong, .. }));
    assert!(Node::from_nar(&entry_nar(&[b'a'; 255])).is_ok());
}

#[test]
fn reader_rejects_duplicates_and_unsorted_with_path() {
    let inner = |a: &[u8], b: &[u8]| {
        let tree = dir(vec![(b"sub", dir(vec![(a, reg(b"1"))]))]);
        let mut nar = tree.to_nar().unwrap();
        // Append a second entry by re-writing the tail: build by hand instead.
        nar.clear();
        nar.extend(toks(&[b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"(", b"name", b"sub", b"node"]));
        nar.extend(toks(&[b"(", b"type", b"directory"]));
        for n in [a, b] {
            nar.extend(toks(&[b"entry", b"(", b"name", n, b"node", b"(", b"type", b"symlink", b"target", b"t"]));
            nar.extend(toks(&[b")", b")"]));
        }
        nar.extend(toks(&[b")", b")", b")"]));
        nar
    };
    assert!(Node::from_nar(&inner(b"a", b"b")).is_ok());
    let e = read_err(&inner(b"a", b"a"));
    assert!(matches!(e.kind, NarReadErrorKind::DuplicateEntry { .. }), "{e}");
    assert_eq!(e.path, "/sub", "the path names the directory");
    assert!(e.to_string().contains("not sorted"), "{e}");
    let e = read_err(&inner(b"b", b"a"));
    assert!(matches!(e.kind, NarReadErrorKind::UnsortedEntry { .. }), "{e}");
    // Byte order, not locale order: "B" < "a".
    assert!(Node::from_nar(&inner(b"B", b"a")).is_ok());
    assert!(Node::from_nar(&inner(b"a", b"B")).is_err());
}

#[test]
fn reader_structural_errors() {
    let e = read_err(&toks(&[b"nix-archive-2", b"("]));
    assert!(matches!(e.kind, NarReadErrorKind::BadMagic { .. }), "{e}");
    assert_eq!(e.offset, 0);
    let e = read_err(&toks(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]));
    assert!(matches!(e.kind, NarReadErrorKind::UnknownType { .. }), "{e}");
    let e = read_err(&toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"AAAAAAAA"]));
    assert!(e.to_string().contains("expected tag 'contents' or 'executable', got 'AAAAAAAA'"), "{e}");
    let e = read_err(&toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"x", b"executable"]));
    assert!(e.to_string().contains("expected tag ')', got 'executable'"), "{e}");
    let e = read_err(&toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", b""]));
    assert!(matches!(e.kind, NarReadErrorKind::InvalidTarget { reason: InvalidTargetReason::Empty, .. }), "{e}");
    let e = read_err(&toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", &[b'a'; 4096]]));
    assert!(matches!(e.kind, NarReadErrorKind::InvalidTarget { reason: InvalidTargetReason::TooLong, .. }), "{e}");
    assert!(
        Node::from_nar(&toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", &[b'a'; 4095], b")"])).is_ok()
    );
    // Empty input and a truncated magic.
    assert!(matches!(read_err(b"").kind, NarReadErrorKind::UnexpectedEof));
    assert!(matches!(read_err(&str_(b"nix-archive-1")[..10]).kind, NarReadErrorKind::UnexpectedEof));
    // A huge tag length is rejected without reading (or allocating) it.
    let mut v = str_(b"nix-archive-1");
    v.extend(u64::MAX.to_le_bytes());
    let e = read_err(&v);
    assert!(matches!(e.kind, NarReadErrorKind::UnexpectedTag { .. }), "{e}");
}

#[test]
fn reader_padding_and_truncation() {
    let good = reg(b"x").to_nar().unwrap();
    // contents "x" is at offset 96..97 with padding 97..104.
    for i in 97..104 {
        let mut bad = good.clone();
        bad[i] = 1;
        let e = read_err(&bad);
        assert!(matches!(e.kind, NarReadErrorKind::NonZeroPadding), "{e}");
        assert_eq!(e.offset, 97);
    }
    for cut in 0..good.len() {
        let e = read_err(&good[..cut]);
        assert!(matches!(e.kind, NarReadErrorKind::UnexpectedEof), "cut {cut}: {e}");
    }
    // Contents length far beyond the input.
    let mut v = toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    v.extend(u64::MAX.to_le_bytes());
    v.push(b'x');
    assert!(matches!(read_err(&v).kind, NarReadErrorKind::UnexpectedEof | NarReadErrorKind::TooLarge { .. }));
}

#[test]
fn reader_limits() {
    let deep = (0..5).fold(reg(b"abc"), |n, _| dir(vec![(b"d", n)]));
    let nar = deep.to_nar().unwrap();
    let lim = |f: fn(&mut NarLimits)| {
        let mut l = NarLimits::default();
        f(&mut l);
        Node::read_nar(&nar[..], l)
    };
    assert!(lim(|l| l.max_depth = 5).is_ok());
    assert!(matches!(lim(|l| l.max_depth = 4).unwrap_err().kind, NarReadErrorKind::TooDeep { max: 4 }));
    assert!(lim(|l| l.max_entries = 5).is_ok());
    assert!(matches!(lim(|l| l.max_entries = 4).unwrap_err().kind, NarReadErrorKind::TooManyEntries { max: 4 }));
    assert!(lim(|l| l.max_file_size = 3).is_ok());
    assert!(matches!(lim(|l| l.max_file_size = 2).unwrap_err().kind, NarReadErrorKind::FileTooLarge { len: 3, .. }));
    let size = nar.len() as u64;
    let mut l = NarLimits { max_total_size: size, ..NarLimits::default() };
    assert!(Node::read_nar(&nar[..], l).is_ok());
    l.max_total_size = size - 1;
    assert!(matches!(Node::read_nar(&nar[..], l).unwrap_err().kind, NarReadErrorKind::TooLarge { .. }));
}

#[test]
fn reader_streams_contents_and_stops_at_end() {
    let tree = dir(vec![(b"a", reg(&[7u8; 100_000])), (b"b", Node::Regular { executable: true, contents: vec![] })]);
    let mut nar = tree.to_nar().unwrap();
    let len = nar.len();
    nar.extend_from_slice(b"sentinel");
    let mut r = NarReader::new(&nar[..]).allow_trailing(true);
    assert_eq!(r.next().unwrap(), Some(NarEvent::DirectoryStart));
    assert_eq!(r.next().unwrap(), Some(NarEvent::Entry { name: b"a" }));
    assert_eq!(r.path(), b"/a");
    assert_eq!(r.next().unwrap(), Some(NarEvent::Regular { executable: false, len: 100_000 }));
    let mut buf = [0u8; 1000];
    assert_eq!(r.read_contents(&mut buf).unwrap(), 1000);
    assert_eq!(r.contents_remaining(), 99_000);
    // Skipping the rest.
    assert_eq!(r.next().unwrap(), Some(NarEvent::Entry { name: b"b" }));
    assert_eq!(r.next().unwrap(), Some(NarEvent::Regular { executable: true, len: 0 }));
    assert_eq!(r.read_contents(&mut buf).unwrap(), 0);
    assert_eq!(r.next().unwrap(), Some(NarEvent::DirectoryEnd));
    assert_eq!(r.next().unwrap(), None);
    assert_eq!(r.offset(), len as u64);
    assert_eq!(r.into_inner(), b"sentinel");
}

#[test]
fn poisoned_after_error() {
    let mut r = NarReader::new(&b"garbage!"[..]);
    assert!(r.next().is_err());
    assert!(matches!(r.next().unwrap_err().kind, NarReadErrorKind::Poisoned));
}

#[test]
fn hashing_reader_and_writer_agree() {
    let tree = dir(vec![(b"x", reg(b"hello")), (b"y", Node::Symlink { target: b"x".to_vec() })]);
    let nar = tree.to_nar().unwrap();
    let want = NarHasher::digest_of(&nar);
    let (out, d) = HashingWriter::new(Vec::new()).finish();
    assert!(out.is_empty() && d.nar_size == 0);
    let w = tree.write_nar(HashingWriter::new(Vec::new())).unwrap();
    let (out, d) = w.finish();
    assert_eq!((out, &d), (nar.clone(), &want));
    let mut with_tail = nar.clone();
    with_tail.extend_from_slice(b"tail");
    let mut r = NarReader::new(HashingReader::new(&with_tail[..])).allow_trailing(true);
    r.skip_to_end().unwrap();
    let (rest, d) = r.into_inner().finish();
    assert_eq!(d, want);
    assert_eq!(rest, b"tail");
    assert_eq!(d.nar_hash.to_string(), format!("sha256:{}", d.nar_hash.to_nix32()));
}

// --- property tests -------------------------------------------------------------------------

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..12),
        "[a-zA-Z0-9._-]{1,8}".prop_map(String::into_bytes),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn arb_tree() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(executable, contents)| Node::Regular { executable, contents }),
        proptest::collection::vec(1u8..=255, 1..30).prop_map(|target| Node::Symlink { target }),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        proptest::collection::btree_map(arb_name(), inner, 0..6).prop_map(Node::Directory)
    })
}

proptest! {
    #[test]
    fn roundtrip(tree in arb_tree()) {
        let nar = tree.to_nar().unwrap();
        prop_assert_eq!(nar.len() % 8, 0);
        prop_assert_eq!(Node::from_nar(&nar).unwrap(), tree.clone());
        // Streaming writer through a hasher gives the same digest as hashing the bytes.
        let d = tree.write_nar(NarHasher::new()).unwrap().finish();
        prop_assert_eq!(d, NarHasher::digest_of(&nar));
    }

    #[test]
    fn every_single_byte_mutation_fails_or_decodes_to_another_tree(tree in arb_tree(), seed in any::<u64>()) {
        let nar = tree.to_nar().unwrap();
        // Mutate every position (with a value derived from the seed), never panicking.
        for i in 0..nar.len() {
            let mut m = nar.clone();
            let delta = ((seed >> (i % 57)) as u8) | 1;
            m[i] = m[i].wrapping_add(delta);
            if let Ok(other) = Node::from_nar(&m) {
                prop_assert_ne!(&other, &tree, "mutation at {} decoded to the same tree", i);
                // A decoded tree re-encodes to exactly the mutated bytes (the format is canonical).
                prop_assert_eq!(other.to_nar().unwrap(), m);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Node::read_nar(&bytes[..], NarLimits { max_total_size: 1 << 16, ..NarLimits::default() });
    }

    #[test]
    fn trees_sort_like_nix(names in proptest::collection::btree_set(arb_name(), 1..10)) {
        // Writing entries in BTreeMap order (byte order) is always accepted; any other order is not.
        let entries: BTreeMap<Vec<u8>, Node> = names.iter().map(|n| (n.clone(), reg(b""))).collect();
        prop_assert!(Node::Directory(entries).to_nar().is_ok());
        let sorted: Vec<_> = names.iter().collect();
        if sorted.len() >= 2 {
            let mut w = NarWriter::new(Vec::new()).unwrap();
            w.directory().unwrap();
            w.entry(sorted[1]).unwrap();
            w.symlink(b"x").unwrap();
            let unsorted = matches!(w.entry(sorted[0]), Err(NarWriteError::Unsorted { .. }));
            prop_assert!(unsorted);
        }
    }
}

#[test]
fn write_contents_with_fills_the_sink_directly() {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.begin_regular(false, 5).unwrap();
    let n = w
        .write_contents_with(|sink, due| {
            assert_eq!(due, 5);
            sink.extend_from_slice(b"abc");
            Ok(3)
        })
        .unwrap();
    assert_eq!(n, 3);
    w.write_contents_with(|sink, due| {
        assert_eq!(due, 2);
        sink.extend_from_slice(b"de");
        Ok(2)
    })
    .unwrap();
    w.end_regular().unwrap();
    assert_eq!(Node::from_nar(&w.finish().unwrap()).unwrap(), reg(b"abcde"));
    // Claiming more than is due fails and stops the writer.
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.begin_regular(false, 1).unwrap();
    assert!(matches!(w.write_contents_with(|_, _| Ok(2)), Err(NarWriteError::ContentsLength { .. })));
    assert!(matches!(w.end_regular(), Err(NarWriteError::WrongState { .. })));
    // Outside a file it is a state error.
    let mut w = NarWriter::new(Vec::new()).unwrap();
    assert!(matches!(w.write_contents_with(|_, _| Ok(0)), Err(NarWriteError::WrongState { .. })));
}
