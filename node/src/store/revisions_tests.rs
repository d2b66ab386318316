//! Tests of revision headers and manifests (`revisions.rs`, `manifests.rs`): union merge and the
//! visible header per name whatever the arrival order, sync paging and fingerprints, listings,
//! manifests checked against their hash, the drv index in either arrival order, quotas, and
//! survival of a reopen.

use buildmesh_protocol::id::MessageId;

use super::test_support::*;
use super::*;

/// A header for `channel@commit` on `branch` by submitter `sub` made at `at`; `salt` varies the
/// envelope (two headers of one name differ by it).
pub(crate) fn revision(channel: &str, branch: &str, commit: &str, sub: u8, at: u64, manifest: &[u8]) -> RevisionEntry {
    let hash = *blake3::hash(manifest).as_bytes();
    let envelope = format!("{channel}|{branch}|{commit}|{sub}|{at}|{}", hex::encode(hash)).into_bytes();
    RevisionEntry {
        id: MessageId::from_bytes(*blake3::hash(&envelope).as_bytes()),
        channel: channel.to_string(),
        branch: branch.to_string(),
        commit: commit.to_string(),
        submitter: node(sub),
        created_at_ms: at,
        manifest_hash: hash,
        manifest_size: manifest.len() as u64,
        received_at: at + 1,
        envelope,
    }
}

fn ids(v: &[StoredRevision]) -> Vec<MessageId> {
    v.iter().map(|r| r.entry.id).collect()
}

#[test]
fn the_later_header_of_a_name_is_visible_in_either_order_and_every_one_is_kept() {
    let old = revision("guix", "master", "abc", 1, 100, b"m1");
    let new = revision("guix", "master", "abc", 1, 200, b"m2");
    let other_submitter = revision("guix", "master", "abc", 2, 50, b"m1");
    for order in [[&old, &new], [&new, &old]] {
        let (store, _dir) = memory_store();
        let first = store.insert_revision(order[0]).unwrap();
        assert!(first.new && first.visible);
        let second = store.insert_revision(order[1]).unwrap();
        assert!(second.new);
        assert_eq!(second.visible, order[1] == &new, "the later one wins, whatever the order");
        assert!(store.insert_revision(&other_submitter).unwrap().visible, "per submitter");
        // Replays change nothing.
        let again = store.insert_revision(&old).unwrap();
        assert!(!again.new && !again.visible);
        assert_eq!(again.seq, if order[0] == &old { 0 } else { 1 });
        let by_name = store.revision_by_name("guix", "abc").unwrap();
        assert_eq!(ids(&by_name), vec![new.id, other_submitter.id], "newest first, one per submitter");
        assert_eq!(store.revisions_since(0, 0).unwrap().len(), 3, "the superseded one is kept for sync");
        assert!(store.get_revision(&old.id).unwrap().is_some());
        assert!(store.has_revision(&old.id).unwrap());
    }
}

#[test]
fn equal_timestamps_are_decided_by_the_larger_id() {
    let a = revision("nixpkgs", "master", "c1", 1, 100, b"x");
    let b = revision("nixpkgs", "staging", "c1", 1, 100, b"y");
    let winner = if a.id.as_bytes() > b.id.as_bytes() { a.id } else { b.id };
    for order in [[&a, &b], [&b, &a]] {
        let (store, _dir) = memory_store();
        store.insert_revision(order[0]).unwrap();
        store.insert_revision(order[1]).unwrap();
        assert_eq!(ids(&store.revision_by_name("nixpkgs", "c1").unwrap()), vec![winner]);
    }
}

#[test]
fn sync_pages_and_the_fingerprint_cover_every_header() {
    let (store, _dir) = memory_store();
    assert_eq!(store.revision_summary().unwrap(), SetSummary { count: 0, xor: [0; 32], next_seq: 0 });
    let all: Vec<RevisionEntry> = (0..10).map(|i| revision("guix", "master", "c", 1, i, &[i as u8])).collect();
    for r in &all {
        store.insert_revision(r).unwrap();
    }
    let page = store.revisions_since(3, 4).unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
    assert_eq!(page[0].entry, all[3]);
    let summary = store.revision_summary().unwrap();
    let mut xor = [0u8; 32];
    for r in &all {
        for (a, b) in xor.iter_mut().zip(r.id.as_bytes()) {
            *a ^= b;
        }
    }
    assert_eq!(summary, SetSummary { count: 10, xor, next_seq: 10 });
    // The same set inserted elsewhere in another order has the same fingerprint.
    let (other, _d2) = memory_store();
    for r in all.iter().rev() {
        other.insert_revision(r).unwrap();
    }
    let s2 = other.revision_summary().unwrap();
    assert_eq!((s2.count, s2.xor), (summary.count, summary.xor));
    assert_eq!(ids(&store.list_revisions(None, None).unwrap()), vec![all[9].id], "one name, one visible");
}

#[test]
fn listings_filter_by_channel_and_branch_newest_first() {
    let (store, _dir) = memory_store();
    let g1 = revision("guix", "master", "a", 1, 10, b"1");
    let g2 = revision("guix", "staging", "b", 1, 30, b"2");
    let g3 = revision("guix", "master", "c", 2, 20, b"3");
    let n1 = revision("nixpkgs", "master", "a", 1, 40, b"4");
    let gx = revision("guixx", "master", "a", 1, 50, b"5");
    for r in [&g1, &g2, &g3, &n1, &gx] {
        store.insert_revision(r).unwrap();
    }
    assert_eq!(ids(&store.list_revisions(Some("guix"), None).unwrap()), vec![g2.id, g3.id, g1.id]);
    assert_eq!(ids(&store.list_revisions(Some("guix"), Some("master")).unwrap()), vec![g3.id, g1.id]);
    assert_eq!(ids(&store.list_revisions(None, Some("master")).unwrap()), vec![gx.id, n1.id, g3.id, g1.id]);
    assert_eq!(store.list_revisions(None, None).unwrap().len(), 5);
    assert!(store.list_revisions(Some("gui"), None).unwrap().is_empty());
    assert!(store.revision_by_name("guix", "zzz").unwrap().is_empty());
}

#[test]
fn a_manifest_is_stored_only_when_it_matches_its_hash() {
    let (store, _dir) = memory_store();
    let bytes = bytes(7, 100_000);
    let hash = *blake3::hash(&bytes).as_bytes();
    let mut wrong = bytes.clone();
    wrong[5] ^= 1;
    let err = store.put_manifest(hash, &wrong, ["x.drv"]).unwrap_err();
    assert!(matches!(err, StoreError::ManifestRefused { .. }), "{err}");
    assert!(err.to_string().contains(&hex::encode(hash)), "the error names the hash: {err}");
    assert!(!store.has_manifest(&hash).unwrap());
    assert_eq!(store.get_manifest(&hash).unwrap(), None);
    assert!(store.put_manifest(hash, &bytes, ["x.drv"]).unwrap());
    assert!(!store.put_manifest(hash, &bytes, ["x.drv"]).unwrap(), "already stored");
    assert!(store.has_manifest(&hash).unwrap());
    assert_eq!(store.get_manifest(&hash).unwrap().as_deref(), Some(bytes.as_slice()));
    // Chunks of the compressed form add up to what decompresses to the manifest.
    let (total, first) = store.manifest_chunk(&hash, 0, 1000).unwrap().unwrap();
    assert!(total < bytes.len() as u64, "stored compressed: {total}");
    let mut all = first;
    while (all.len() as u64) < total {
        let (_, more) = store.manifest_chunk(&hash, all.len() as u64, 1000).unwrap().unwrap();
        assert!(!more.is_empty());
        all.extend(more);
    }
    assert_eq!(zstd::bulk::decompress(&all, bytes.len()).unwrap(), bytes);
    assert_eq!(store.manifest_chunk(&hash, total + 5, 10).unwrap(), Some((total, Vec::new())));
    assert_eq!(store.manifest_chunk(&[9; 32], 0, 10).unwrap(), None);
    // Too large is refused before hashing.
    let huge = vec![0u8; MAX_MANIFEST_BYTES as usize + 1];
    let err = CheckedManifest::new(*blake3::hash(&huge).as_bytes(), &huge, 1).unwrap_err();
    assert!(err.to_string().contains("exceed"), "{err}");
}

#[test]
fn a_damaged_manifest_row_is_an_error_not_wrong_bytes() {
    let (store, _dir) = memory_store();
    let hash = *blake3::hash(b"the manifest").as_bytes();
    let other = zstd::bulk::compress(b"something else", 3).unwrap();
    let txn = store.db().unwrap().begin_write().unwrap();
    txn.open_table(tables::MANIFESTS).unwrap().insert(&hash, other.as_slice()).unwrap();
    txn.commit().unwrap();
    assert!(matches!(store.get_manifest(&hash), Err(StoreError::Corrupt { table: "manifests", .. })));
    let txn = store.db().unwrap().begin_write().unwrap();
    txn.open_table(tables::MANIFESTS).unwrap().insert(&hash, [1u8, 2, 3].as_slice()).unwrap();
    txn.commit().unwrap();
    assert!(matches!(store.get_manifest(&hash), Err(StoreError::Corrupt { table: "manifests", .. })));
}

#[test]
fn revisions_of_a_drv_whatever_arrives_first() {
    let (store, _dir) = memory_store();
    let m1 = b"manifest one".to_vec();
    let m2 = b"manifest two".to_vec();
    let r1 = revision("guix", "master", "a", 1, 10, &m1);
    let r2 = revision("guix", "master", "b", 1, 20, &m2);
    // r1: header first, then manifest; r2: manifest first, then header.
    store.insert_revision(&r1).unwrap();
    assert_eq!(ids(&store.revisions_missing_manifest().unwrap()), vec![r1.id]);
    assert!(store.revisions_of_drv("aaa-hello.drv").unwrap().is_empty(), "no manifest, no index");
    store.put_manifest(r1.manifest_hash, &m1, ["aaa-hello.drv", "bbb-libc.drv"]).unwrap();
    store.put_manifest(r2.manifest_hash, &m2, ["aaa-hello.drv"]).unwrap();
    store.insert_revision(&r2).unwrap();
    assert!(store.revisions_missing_manifest().unwrap().is_empty());
    let mut of_hello = ids(&store.revisions_of_drv("aaa-hello.drv").unwrap());
    of_hello.sort();
    let mut want = vec![r1.id, r2.id];
    want.sort();
    assert_eq!(of_hello, want);
    assert_eq!(ids(&store.revisions_of_drv("bbb-libc.drv").unwrap()), vec![r1.id]);
    // The scheduler's revision tier: the first header this node stored that includes the drv.
    let first = store.first_revision_of_drvs(["aaa-hello.drv", "bbb-libc.drv", "ccc-none.drv"]).unwrap();
    let seq1 = store.get_revision(&r1.id).unwrap().unwrap().seq;
    assert!(seq1 < store.get_revision(&r2.id).unwrap().unwrap().seq);
    assert_eq!(first.len(), 2, "a drv in no known revision is left out: {first:?}");
    assert_eq!((first["aaa-hello.drv"], first["bbb-libc.drv"]), (seq1, seq1));
    // A later header for `guix@a` with another manifest supersedes r1: libc is no longer in a
    // visible revision, and the new header's manifest is missing.
    let r1b = revision("guix", "master", "a", 1, 30, b"manifest three");
    store.insert_revision(&r1b).unwrap();
    assert!(store.revisions_of_drv("bbb-libc.drv").unwrap().is_empty());
    assert_eq!(ids(&store.revisions_missing_manifest().unwrap()), vec![r1b.id]);
    assert_eq!(ids(&store.revisions_with_manifest(&r1.manifest_hash).unwrap()), vec![r1.id]);
    // The answers are cached: asked again with nothing new, they are the same; once the new
    // header's manifest arrives naming `ccc-none.drv`, it is found (the cache starts over).
    let again = store.first_revision_of_drvs(["aaa-hello.drv", "bbb-libc.drv", "ccc-none.drv"]).unwrap();
    assert_eq!(again, first);
    store.put_manifest(r1b.manifest_hash, b"manifest three", ["ccc-none.drv"]).unwrap();
    let seq1b = store.get_revision(&r1b.id).unwrap().unwrap().seq;
    let after = store.first_revision_of_drvs(["aaa-hello.drv", "ccc-none.drv"]).unwrap();
    assert_eq!(after.get("ccc-none.drv"), Some(&seq1b), "a manifest added later is seen: {after:?}");
    assert_eq!(after["aaa-hello.drv"], seq1);
    // And a header added later for a stored manifest too.
    let r4 = revision("guix", "master", "d", 1, 40, b"manifest one");
    let seq4 = store.insert_revision(&r4).unwrap().seq;
    store.put_manifest(*blake3::hash(b"manifest four").as_bytes(), b"manifest four", ["ddd-late.drv"]).unwrap();
    assert!(store.first_revision_of_drvs(["ddd-late.drv"]).unwrap().is_empty(), "manifest without a header");
    let r5 = revision("guix", "master", "e", 1, 50, b"manifest four");
    let seq5 = store.insert_revision(&r5).unwrap().seq;
    assert!(seq5 > seq4);
    assert_eq!(store.first_revision_of_drvs(["ddd-late.drv"]).unwrap()["ddd-late.drv"], seq5);
}

#[test]
fn headers_and_manifests_count_against_the_signers_quota() {
    let (store, _dir) = memory_store();
    let r = revision("guix", "master", "a", 3, 10, b"m");
    let limit = SignerLimit { records: 1, bytes: 10_000 };
    assert!(store.write(|w| w.insert_revision_within(&r, Some(&limit))).unwrap().is_some());
    let r2 = revision("guix", "master", "b", 3, 11, b"m2");
    assert_eq!(store.write(|w| w.insert_revision_within(&r2, Some(&limit))).unwrap(), None);
    assert!(!store.has_revision(&r2.id).unwrap(), "refused means not stored");
    assert!(store.write(|w| w.insert_revision_within(&r, Some(&limit))).unwrap().is_some(), "known: not refused");
    let m = CheckedManifest::new(*blake3::hash(b"m").as_bytes(), b"m", 3).unwrap();
    let roomy = SignerLimit { records: 10, bytes: 10_000 };
    let tight = SignerLimit { records: 10, bytes: r.envelope.len() as u64 };
    assert_eq!(store.write(|w| w.put_manifest_within(&m, ["a.drv"], &node(3), Some(&tight))).unwrap(), None);
    assert!(!store.has_manifest(&m.hash()).unwrap());
    assert_eq!(store.write(|w| w.put_manifest_within(&m, ["a.drv"], &node(3), Some(&roomy))).unwrap(), Some(true));
    let usage = store.signer_usage(&node(3)).unwrap();
    assert_eq!(usage, SignerUsage { records: 2, bytes: r.envelope.len() as u64 + m.compressed_len() });
}

#[test]
fn headers_manifests_and_cursors_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let m = bytes(3, 5000);
    let r = revision("guix", "master", "a", 1, 10, &m);
    let old = revision("guix", "master", "a", 1, 5, b"older");
    {
        let store = Store::open(dir.path()).unwrap();
        store.insert_revision(&r).unwrap();
        store.insert_revision(&old).unwrap();
        store.put_manifest(r.manifest_hash, &m, ["aaa-x.drv"]).unwrap();
        store.put_revision_cursor("peerA", 7).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&store.revision_by_name("guix", "a").unwrap()), vec![r.id]);
    assert_eq!(store.revisions_since(0, 0).unwrap().len(), 2);
    assert_eq!(store.revision_summary().unwrap().next_seq, 2);
    assert_eq!(store.get_manifest(&r.manifest_hash).unwrap(), Some(m));
    assert_eq!(ids(&store.revisions_of_drv("aaa-x.drv").unwrap()), vec![r.id]);
    assert_eq!(store.get_revision_cursor("peerA").unwrap(), Some(7));
    assert_eq!(store.get_revision_cursor("peerB").unwrap(), None);
    // Sequence numbers go on after a reopen.
    let next = revision("guix", "master", "z", 1, 50, b"z");
    assert_eq!(store.insert_revision(&next).unwrap().seq, 2);
}

/// What the scheduler's revision tier costs per pass (`Store::first_revision_of_drvs` over every
/// pending build): the first pass after a new manifest or header (cold) and the passes after it
/// (cached): `cargo test -p buildmesh --lib first_revision_bench -- --ignored
/// --nocapture`.
#[test]
#[ignore = "benchmark: prints a table"]
fn first_revision_bench() {
    let (store, _dir) = memory_store();
    println!("| pending builds | in 2 revisions | first pass after a new revision | later passes (best of 3) |");
    println!("|---:|---:|---:|---:|");
    for n in [1_000usize, 10_000, 100_000] {
        let names: Vec<String> = (0..n).map(|i| format!("{:032x}-d{i}.drv", i)).collect();
        for (m, commit) in [(format!("m{n}a").into_bytes(), "a"), (format!("m{n}b").into_bytes(), "b")] {
            let r = revision("bench", "master", &format!("{commit}{n}"), 1, n as u64, &m);
            let checked = CheckedManifest::new(r.manifest_hash, &m, 3).unwrap();
            store.write(|w| w.put_manifest(&checked, names.iter().take(n / 2))).unwrap();
            store.insert_revision(&r).unwrap();
        }
        let t = std::time::Instant::now();
        let got = store.first_revision_of_drvs(names.iter().map(String::as_str)).unwrap();
        let cold = t.elapsed();
        assert_eq!(got.len(), n / 2);
        let mut best = std::time::Duration::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let got = store.first_revision_of_drvs(names.iter().map(String::as_str)).unwrap();
            best = best.min(t.elapsed());
            assert_eq!(got.len(), n / 2);
        }
        println!("| {n} | {} | {:.1} ms | {:.1} ms |", n / 2, cold.as_secs_f64() * 1e3, best.as_secs_f64() * 1e3);
    }
}
