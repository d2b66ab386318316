//! Tests of `nar_fs`: dump, hash and restore against each other and Nix's rules.

use super::*;

#[test]
fn hashing_across_chunk_boundaries_matches_the_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fs::create_dir(&root).unwrap();
    for (i, len) in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7].into_iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
        fs::write(root.join(format!("f{i}")), data).unwrap();
    }
    let nar = dump_path(&root, Vec::new()).unwrap();
    let want = NarHasher::digest_of(&nar);
    assert_eq!(hash_path(&root).unwrap(), want);
    for threads in [Threads::One, Threads::Two, Threads::Auto] {
        let got = nar_hash_path_with(&root, threads).unwrap();
        assert_eq!(got, (want.nar_hash.clone(), want.nar_size), "{threads:?}");
    }
    // A root that is a single large file.
    let big = root.join("f5");
    let want = NarHasher::digest_of(&dump_path(&big, Vec::new()).unwrap());
    assert_eq!(hash_path(&big).unwrap(), want);
    for threads in [Threads::One, Threads::Two] {
        assert_eq!(nar_hash_path_with(&big, threads).unwrap(), (want.nar_hash.clone(), want.nar_size));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// One thread, two threads and the plain dump give the same NarHash and NarSize for any
    /// tree (file sizes around the read buffer and chunk sizes, executables, symlinks, nesting).
    #[test]
    fn one_and_two_threads_agree_with_the_dump(
        files in proptest::collection::vec(
            (0usize..3, proptest::prop_oneof![0usize..300, (HASH_BUF - 9)..(HASH_BUF + 9), (CHUNK - 9)..(CHUNK + 9)], proptest::bool::ANY),
            0..12,
        ),
        seed in 0u8..255,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        fs::create_dir_all(root.join("d/e")).unwrap();
        for (i, (dir, len, exec)) in files.iter().enumerate() {
            let parent = root.join(["", "d", "d/e"][*dir]);
            let p = parent.join(format!("f{i}"));
            let data: Vec<u8> = (0..*len).map(|j| (j as u8).wrapping_mul(seed).wrapping_add(i as u8)).collect();
            fs::write(&p, data).unwrap();
            if *exec {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
            if i % 3 == 0 {
                std::os::unix::fs::symlink(format!("f{i}"), parent.join(format!("l{i}"))).unwrap();
            }
        }
        let want = NarHasher::digest_of(&dump_path(&root, Vec::new()).unwrap());
        for threads in [Threads::One, Threads::Two] {
            let got = nar_hash_path_with(&root, threads).unwrap();
            proptest::prop_assert_eq!(&got, &(want.nar_hash.clone(), want.nar_size), "{:?}", threads);
        }
    }
}

/// A tree nested deeper than [`FD_DEPTH`] (read relative to open directories above, by path
/// below), with files, executables and symlinks at every level, restored from an in-memory
/// NAR (built without the walker) hashes and dumps back to that NAR.
#[test]
fn deep_trees_hash_like_their_nar() {
    use buildmesh_protocol::nar::tree::Node;
    let mut node = Node::Regular { executable: false, contents: b"leaf".to_vec() };
    for level in (0..FD_DEPTH + 6).rev() {
        let mut entries = std::collections::BTreeMap::new();
        entries.insert(b"d".to_vec(), node);
        entries.insert(b"a".to_vec(), Node::Regular { executable: level % 2 == 0, contents: vec![level as u8; level] });
        entries.insert(b"z".to_vec(), Node::Symlink { target: format!("../{level}").into_bytes() });
        node = Node::Directory(entries);
    }
    let nar = node.to_nar().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("deep");
    restore(&nar[..], &root, NarLimits::default()).unwrap();
    let want = NarHasher::digest_of(&nar);
    assert_eq!(dump_path(&root, Vec::new()).unwrap(), nar);
    assert_eq!(hash_path(&root).unwrap(), want);
    for threads in [Threads::One, Threads::Two] {
        assert_eq!(nar_hash_path_with(&root, threads).unwrap(), (want.nar_hash.clone(), want.nar_size));
    }
}

#[test]
fn restore_cleans_up_only_what_it_created() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing parent: nothing is created, nothing removed.
    let e = restore(&b"garbage"[..], &tmp.path().join("no/such/dir"), NarLimits::default()).unwrap_err();
    assert!(matches!(e, NarFsError::Read(_)), "{e}");
    let good = buildmesh_protocol::nar::tree::Node::Regular { executable: true, contents: b"x".to_vec() };
    let nar = good.to_nar().unwrap();
    let e = restore(&nar[..], &tmp.path().join("no/such/dir"), NarLimits::default()).unwrap_err();
    assert!(matches!(e, NarFsError::Io { op: "create file", .. }), "{e}");
    let dst = tmp.path().join("exe");
    restore(&nar[..], &dst, NarLimits::default()).unwrap();
    assert_eq!(fs::metadata(&dst).unwrap().permissions().mode() & 0o777, 0o755);
    // A truncated archive removes the partial tree.
    let tree =
        buildmesh_protocol::nar::tree::Node::Directory([(b"a".to_vec(), good.clone()), (b"b".to_vec(), good)].into());
    let nar = tree.to_nar().unwrap();
    let dst = tmp.path().join("partial");
    assert!(restore(&nar[..nar.len() - 20], &dst, NarLimits::default()).is_err());
    assert!(fs::symlink_metadata(&dst).is_err());
}
