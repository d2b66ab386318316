//! The collector on a real store: pins and their references are kept, the rest goes least
//! recently used first, a dry run removes nothing, the limits stop it early.

use std::collections::BTreeSet;

use buildmesh_protocol::store_path::{StoreDir, StorePath};

use super::*;

fn path(n: u8) -> StorePath {
    StorePath::new([n; 20], &format!("p{n}")).unwrap()
}

/// A store with paths 1..=4 (4 references 3), each a 64 KiB incompressible NAR, registered in
/// that order (1 is the least recently used).
fn setup() -> (tempfile::TempDir, Store, Collector) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for n in 1..=4u8 {
        std::thread::sleep(std::time::Duration::from_millis(3));
        let mut x: u64 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let data: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let blob = store.put_nar(&mut data.as_slice()).unwrap();
        let references = if n == 4 { BTreeSet::from([path(3)]) } else { BTreeSet::new() };
        store
            .register_path(&PathInfo {
                path: path(n),
                nar_hash: blob.nar_hash.clone(),
                nar_size: blob.nar_size,
                references,
                deriver: None,
                ca: None,
                blob: blob.blake3,
                registered_at: u64::from(n),
            })
            .unwrap();
    }
    let settings = GcSettings { max_store_bytes: 0, min_free_bytes: 0, interval_secs: 1 };
    let c = Collector::new(store.clone(), StoreDir::nix(), dir.path().to_path_buf(), None, settings).unwrap();
    (dir, store, c)
}

fn full(n: u8) -> String {
    StoreDir::nix().display(&path(n))
}

#[test]
fn everything_unpinned_goes_and_a_pin_keeps_its_references() {
    let (_dir, store, c) = setup();
    c.pin(&path(4)).unwrap();
    let dry = c.collect(Goal::Everything, true).unwrap();
    assert_eq!(dry.collected, vec![full(1), full(2)]);
    assert!(store.has_path(&path(1)).unwrap(), "a dry run removes nothing");
    let r = c.collect(Goal::Everything, false).unwrap();
    assert_eq!(r.collected, vec![full(1), full(2)]);
    assert!(r.freed_bytes >= 2 * 65536);
    assert_eq!(r.store_bytes, r.pinned_bytes);
    assert!(!store.has_path(&path(1)).unwrap());
    assert!(store.has_path(&path(3)).unwrap(), "referenced by a pin");
    assert!(store.has_path(&path(4)).unwrap());
    c.unpin(&path(4)).unwrap();
    let r = c.collect(Goal::Everything, false).unwrap();
    assert_eq!(r.collected, vec![full(3), full(4)]);
    assert_eq!((r.store_bytes, r.pinned_bytes), (0, 0));
}

#[test]
fn the_limit_collects_least_recently_used_first_and_pressure_follows() {
    let (dir, store, _) = setup();
    // Serving path 1 makes it the most recently used.
    let p1 = store.path_info(&path(1)).unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    store.note_blob_access(&p1.blob);
    let settings = GcSettings { max_store_bytes: 150_000, min_free_bytes: 0, interval_secs: 1 };
    let c = Collector::new(store.clone(), StoreDir::nix(), dir.path().to_path_buf(), None, settings.clone()).unwrap();
    // Everything was stored just now; registration times 1..4 are older than the store times,
    // so the order is by when each was stored, then the served one last.
    let r = c.enforce().unwrap();
    assert!(r.store_bytes <= 150_000, "{r:?}");
    assert!(!r.collected.contains(&full(1)), "the recently served path stays: {r:?}");
    assert!(store.disk_pressure().is_none());
    // Pin everything left and lower the limit: over it with nothing to collect.
    for n in 1..=4 {
        c.pin(&path(n)).unwrap();
    }
    let tight = GcSettings { max_store_bytes: 1000, ..settings };
    let c = Collector::new(store.clone(), StoreDir::nix(), dir.path().to_path_buf(), None, tight).unwrap();
    let r = c.enforce().unwrap();
    assert!(r.collected.is_empty());
    let reason = store.disk_pressure().expect("pressure set");
    assert!(reason.contains("over max_store_bytes 1000"), "{reason}");
    for n in 1..=4 {
        c.unpin(&path(n)).unwrap();
    }
    c.enforce().unwrap();
    assert!(store.disk_pressure().is_none());
}

#[test]
fn a_nar_without_a_path_goes_like_any_blob() {
    // What `buildmesh diff` leaves: a peer's NAR stored as a blob (verified against the signed
    // NarHash) and never registered as a path.
    let (_dir, store, c) = setup();
    let nar = vec![7u8; 4096];
    let blob = store.put_nar(&mut nar.as_slice()).unwrap();
    assert!(store.blob_by_nar_hash(&blob.nar_hash).unwrap().is_some());
    let inv = store.gc_inventory().unwrap();
    assert!(inv.iter().any(|b| b.blob == blob.blake3 && b.paths.is_empty()), "in the collector's inventory");
    c.pin(&path(1)).unwrap();
    let r = c.collect(Goal::Everything, false).unwrap();
    assert!(store.blob_by_nar_hash(&blob.nar_hash).unwrap().is_none(), "the pathless NAR is collected");
    assert!(r.freed_bytes >= blob.compressed_size);
    assert!(store.has_path(&path(1)).unwrap());
}
