//! Garbage collection in the store: pins, inventory order, crash-safe collection.

use std::collections::BTreeSet;

use super::test_support::*;
use super::*;

fn stored_path(store: &Store, n: u8, registered_at: u64) -> PathInfo {
    let data = bytes(u64::from(n), 4096 + usize::from(n));
    let blob = store.put_nar(&mut data.as_slice()).expect("put_nar");
    let info = PathInfo {
        path: path(n, &format!("p{n}")),
        nar_hash: blob.nar_hash.clone(),
        nar_size: blob.nar_size,
        references: BTreeSet::new(),
        deriver: None,
        ca: None,
        blob: blob.blake3,
        registered_at,
    };
    store.register_path(&info).expect("register");
    info
}

#[test]
fn pins_are_durable_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let p = path(7, "pinned");
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.pin_path(&p).unwrap());
        assert!(!store.pin_path(&p).unwrap());
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.pinned_paths().unwrap(), vec![p.clone()]);
    assert!(store.unpin_path(&p).unwrap());
    assert!(!store.unpin_path(&p).unwrap());
    assert!(store.pinned_paths().unwrap().is_empty());
}

#[test]
fn inventory_is_least_recently_used_first_and_serving_refreshes() {
    let (store, _dir) = memory_store();
    let a = stored_path(&store, 1, 0);
    let b = stored_path(&store, 2, 0);
    store.flush_blob_access().unwrap();
    // Both were stored now; serve `a` later: `b` becomes the least recently used.
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.note_blob_access(&a.blob);
    let inv = store.gc_inventory().unwrap();
    assert_eq!(inv.iter().map(|b| b.blob).collect::<Vec<_>>(), vec![b.blob, a.blob]);
    assert_eq!(inv[0].paths, vec![b.clone()]);
    // Persisted accesses give the same order.
    store.flush_blob_access().unwrap();
    let inv = store.gc_inventory().unwrap();
    assert_eq!(inv[0].blob, b.blob);
}

#[test]
fn collecting_removes_rows_and_file_and_keeps_attestations() {
    let (store, _dir) = memory_store();
    let info = stored_path(&store, 3, 1);
    let file = store.inner.blobs.path_of(&info.blob);
    assert!(file.exists());
    store.insert_attestation(&attestation(1, 1, 1, &[3])).unwrap();
    assert!(store.collect_blob(&info.blob, std::slice::from_ref(&info.path)).unwrap());
    assert!(!file.exists());
    assert!(store.path_info(&info.path).unwrap().is_none());
    assert!(store.blob_info(&info.blob).unwrap().is_none());
    assert!(store.blob_by_nar_hash(&info.nar_hash).unwrap().is_none());
    assert_eq!(store.attestations_for_output(&path(103, "out3")).unwrap().len(), 1);
    // Stored again (fetched back from a peer): a normal blob again.
    let data = bytes(3, 4096 + 3);
    store.put_nar(&mut data.as_slice()).unwrap();
    assert!(file.exists());
}

#[test]
fn a_stale_decision_collects_nothing() {
    let (store, _dir) = memory_store();
    let info = stored_path(&store, 4, 1);
    // A second path with the same NAR registered after the decision.
    let twin = PathInfo { path: path(5, "twin"), ..info.clone() };
    store.register_path(&twin).unwrap();
    assert!(!store.collect_blob(&info.blob, std::slice::from_ref(&info.path)).unwrap());
    assert!(store.path_info(&info.path).unwrap().is_some());
    assert!(store.inner.blobs.path_of(&info.blob).exists());
    assert!(store.collect_blob(&info.blob, &[info.path.clone(), twin.path.clone()]).unwrap());
}

#[test]
fn a_crash_between_commit_and_unlink_leaves_an_orphan_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let (victim, keep) = {
        let store = Store::open(dir.path()).unwrap();
        let victim = stored_path(&store, 6, 1);
        let keep = stored_path(&store, 8, 1);
        super::gc::crash_point::arm();
        assert!(store.collect_blob(&victim.blob, std::slice::from_ref(&victim.path)).unwrap());
        (victim, keep)
    };
    // "Restarted": no row names the file that is still there.
    let store = Store::open(dir.path()).unwrap();
    let file = store.inner.blobs.path_of(&victim.blob);
    assert!(file.exists(), "the unlink did not happen before the crash");
    assert!(store.path_info(&victim.path).unwrap().is_none());
    assert!(store.blob_info(&victim.blob).unwrap().is_none());
    assert!(store.sweep_orphan_blobs().unwrap() > 0);
    assert!(!file.exists());
    // What was not collected is whole.
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut store.open_nar(&keep.blob).unwrap(), &mut out).unwrap();
    assert_eq!(out, bytes(8, 4096 + 8));
    assert_eq!(store.sweep_orphan_blobs().unwrap(), 0);
}
