//! Unit tests of the plain copies ([`super::plain`]), through the store.

use std::io::Read;
use std::path::{Path, PathBuf};

use buildmesh_protocol::id::ArtifactHash;

use super::test_support::*;
use super::*;

fn store_with_budget(dir: &Path, budget: u64) -> Store {
    let options = StoreOptions { plain_copy_bytes: budget, ..StoreOptions::default() };
    Store::open_with_backend(redb::backends::InMemoryBackend::new(), dir, options).expect("open in-memory store")
}

/// Serve the NAR of blob `id`: whether it came from a plain copy, and what it read.
fn serve(store: &Store, id: &ArtifactHash) -> (bool, std::io::Result<Vec<u8>>) {
    let mut nar = store.open_nar_for_serving(id).expect("open");
    let plain = matches!(nar, ServedNar::Plain(_));
    let mut out = Vec::new();
    (plain, nar.read_to_end(&mut out).map(|_| out))
}

fn copy_of(dir: &Path, id: &ArtifactHash) -> PathBuf {
    dir.join(".plain").join(format!("{id}.nar"))
}

fn plain_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join(".plain")).map(|d| d.map(|e| e.expect("entry").path()).collect()).unwrap_or_default()
}

const LEN: usize = plain::PLAIN_MIN as usize + 1000;

#[test]
fn a_large_blob_is_served_from_its_plain_copy_after_a_checked_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_budget(dir.path(), 1 << 30);
    let data = bytes(1, LEN);
    let a = store.put_nar(&mut data.as_slice()).expect("put");
    // A small blob gets no copy.
    let small = bytes(2, 1000);
    let s = store.put_nar(&mut small.as_slice()).expect("put");
    for _ in 0..2 {
        let (plain, got) = serve(&store, &s.blake3);
        assert!(!plain);
        assert_eq!(got.expect("read"), small);
    }
    assert!(plain_files(dir.path()).is_empty());
    // A read stopped before its end makes no copy.
    let mut partial = store.open_nar_for_serving(&a.blake3).expect("open");
    partial.read_exact(&mut [0u8; 100]).expect("read");
    drop(partial);
    assert!(plain_files(dir.path()).is_empty(), "{:?}", plain_files(dir.path()));
    // The first complete (checked) read makes it, the next reads send it.
    let (plain, got) = serve(&store, &a.blake3);
    assert!(!plain);
    assert_eq!(got.expect("read"), data);
    assert_eq!(plain_files(dir.path()), vec![copy_of(dir.path(), &a.blake3)]);
    let (plain, got) = serve(&store, &a.blake3);
    assert!(plain, "the second read is from the copy");
    assert_eq!(got.expect("read"), data);
    // A copy whose file changed (another mtime and length) is not used, and is made again.
    std::fs::write(copy_of(dir.path(), &a.blake3), b"not the NAR").expect("write");
    let (plain, got) = serve(&store, &a.blake3);
    assert!(!plain, "a changed copy is not sent");
    assert_eq!(got.expect("read"), data);
    assert!(serve(&store, &a.blake3).0);
    // A copy cut short while it is sent never reads as complete.
    let mut nar = store.open_nar_for_serving(&a.blake3).expect("open");
    assert!(matches!(nar, ServedNar::Plain(_)));
    std::fs::File::options().write(true).open(copy_of(dir.path(), &a.blake3)).expect("open").set_len(10).expect("cut");
    let err = nar.read_to_end(&mut Vec::new()).expect_err("cut short");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    // A new process (store) deletes the copies of the old one: nothing vouches for them.
    drop(store);
    let store = store_with_budget(dir.path(), 1 << 30);
    assert!(plain_files(dir.path()).is_empty());
    assert!(!store.open_nar_for_serving(&a.blake3).is_ok_and(|n| matches!(n, ServedNar::Plain(_))));
}

#[test]
fn a_damaged_blob_never_gets_a_plain_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_budget(dir.path(), 1 << 30);
    let data = bytes(3, LEN);
    let a = store.put_nar(&mut data.as_slice()).expect("put");
    let hex = a.blake3.to_string();
    let blob = dir.path().join(&hex[..2]).join(format!("{hex}.nar.zst"));
    let good = std::fs::read(&blob).expect("read blob");
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&blob, &bad).expect("damage"); // a rewrite: not in the verified set any more
    for _ in 0..2 {
        let (plain, got) = serve(&store, &a.blake3);
        assert!(!plain);
        assert_eq!(got.expect_err("damaged").kind(), std::io::ErrorKind::InvalidData);
        assert!(plain_files(dir.path()).is_empty(), "no copy, no temp file: {:?}", plain_files(dir.path()));
    }
    // Repaired, it gets its copy; a scrub that finds the blob damaged again forgets the copy.
    std::fs::write(&blob, &good).expect("repair");
    assert_eq!(serve(&store, &a.blake3).1.expect("intact"), data);
    assert!(copy_of(dir.path(), &a.blake3).exists());
    std::fs::write(&blob, &bad).expect("damage");
    assert!(store.verify_nar(&a.blake3).is_err());
    assert!(!copy_of(dir.path(), &a.blake3).exists());
    assert!(!serve(&store, &a.blake3).0);
}

#[test]
fn plain_copies_stay_within_their_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = 2 * LEN as u64 + LEN as u64 / 2;
    let store = store_with_budget(dir.path(), budget);
    let ids: Vec<_> =
        (10..13).map(|seed| store.put_nar(&mut bytes(seed, LEN).as_slice()).expect("put").blake3).collect();
    for id in &ids {
        serve(&store, id).1.expect("read");
    }
    // The least recently used copy went.
    assert!(store.inner.blobs.plain_bytes() <= budget);
    assert!(!copy_of(dir.path(), &ids[0]).exists());
    assert!(copy_of(dir.path(), &ids[1]).exists() && copy_of(dir.path(), &ids[2]).exists());
    assert_eq!(plain_files(dir.path()).len(), 2);
    // Budget 0: no copies at all.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_budget(dir.path(), 0);
    let id = store.put_nar(&mut bytes(20, LEN).as_slice()).expect("put").blake3;
    for _ in 0..2 {
        assert!(!serve(&store, &id).0);
    }
    assert!(!dir.path().join(".plain").exists());
}

/// Read a plain copy with reads at hand only (falling back to `read` when not at hand), in
/// odd-sized steps.
fn read_at_hand_all(nar: &mut ServedNar) -> std::io::Result<Vec<u8>> {
    let ServedNar::Plain(copy) = nar else { panic!("not a plain copy") };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_001];
    loop {
        let n = match copy.read_at_hand(&mut buf) {
            Some(r) => r?,
            None => copy.read(&mut buf)?,
        };
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_plain_copy_reads_at_hand_whole_and_never_past_a_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_budget(dir.path(), 1 << 30);
    let data = bytes(3, LEN);
    let a = store.put_nar(&mut data.as_slice()).expect("put");
    assert_eq!(serve(&store, &a.blake3).1.expect("read"), data);
    // Just written, the copy is in the page cache: read at hand, whole.
    let mut nar = store.open_nar_for_serving(&a.blake3).expect("open");
    assert!(read_at_hand_all(&mut nar).expect("read") == data, "the copy read at hand differs");
    // A range: skip and limit.
    let mut nar = store.open_nar_for_serving(&a.blake3).expect("open");
    let ServedNar::Plain(copy) = &mut nar else { panic!("not a plain copy") };
    copy.skip(1000).expect("skip");
    copy.limit(5000);
    assert!(read_at_hand_all(&mut nar).expect("read") == data[1000..6000]);
    // Cut short while it is sent: an error, never a short clean end.
    let mut nar = store.open_nar_for_serving(&a.blake3).expect("open");
    std::fs::File::options().write(true).open(copy_of(dir.path(), &a.blake3)).expect("open").set_len(10).expect("cut");
    let err = read_at_hand_all(&mut nar).expect_err("cut short");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}
