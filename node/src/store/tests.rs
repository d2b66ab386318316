//! Unit tests of the store (in-memory database where the test does not need a file).

use std::collections::BTreeSet;
use std::io::Read;

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::nar::NarHasher;

use super::test_support::*;
use super::*;

fn put(store: &Store, seed: u64, len: usize) -> (Vec<u8>, BlobInfo) {
    let data = bytes(seed, len);
    let info = store.put_nar(&mut data.as_slice()).expect("put_nar");
    (data, info)
}

fn read_all(store: &Store, id: &ArtifactHash) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    store.open_nar(id).expect("open_nar").read_to_end(&mut out)?;
    Ok(out)
}

fn path_info_for(p: &StorePath, blob: &BlobInfo) -> PathInfo {
    PathInfo {
        path: p.clone(),
        nar_hash: blob.nar_hash.clone(),
        nar_size: blob.nar_size,
        references: BTreeSet::from([p.clone()]),
        deriver: Some(drv(1)),
        ca: None,
        blob: blob.blake3,
        registered_at: 42,
    }
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".tmp-")))
        .collect()
}

#[test]
fn open_creates_layout_and_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.schema_version().expect("version"), tables::SCHEMA_VERSION);
        store.put_drv(&drv(1), b"Derive(...)").expect("put_drv");
    }
    assert!(dir.path().join(DB_FILE).is_file());
    assert!(dir.path().join(BLOB_DIR).is_dir());
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.get_drv(&drv(1)).expect("get").as_deref(), Some(&b"Derive(...)"[..]));
}

#[test]
fn second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = Store::open(dir.path()).expect("open");
    let err = Store::open(dir.path()).expect_err("second open");
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err}");
}

#[test]
fn newer_schema_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).expect("open"));
    {
        let db = redb::Database::open(dir.path().join(DB_FILE)).expect("raw open");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(META_SCHEMA_VERSION, 99u64.to_le_bytes().as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = Store::open(dir.path()).expect_err("newer schema");
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99, supported: 1, .. }), "{err}");
    assert!(err.to_string().contains("upgrade buildmesh"), "{err}");
}

#[test]
fn put_nar_hashes_compresses_and_reads_back() {
    let (store, dir) = memory_store();
    let (data, info) = put(&store, 1, 3 << 20);
    let digest = NarHasher::digest_of(&data);
    assert_eq!(info.blake3.as_bytes(), &digest.blake3);
    assert_eq!(info.nar_hash, digest.nar_hash);
    assert_eq!(info.nar_size, data.len() as u64);
    assert!(info.compressed_size < info.nar_size, "{info:?}");
    let hex = info.blake3.to_string();
    let file = dir.path().join(&hex[..2]).join(format!("{hex}.nar.zst"));
    assert_eq!(std::fs::metadata(&file).expect("blob file").len(), info.compressed_size);
    assert!(store.has_nar(&info.blake3).expect("has"));
    assert_eq!(store.blob_info(&info.blake3).expect("info"), Some(info.clone()));
    assert_eq!(store.blob_by_nar_hash(&info.nar_hash).expect("by hash"), Some(info.clone()));
    assert_eq!(read_all(&store, &info.blake3).expect("read"), data);
    assert_eq!(store.verify_nar(&info.blake3).expect("verify"), info);
    // Idempotent.
    let again = store.put_nar(&mut data.as_slice()).expect("again");
    assert_eq!(again, info);
    assert_eq!(store.list_blobs(None, 0).expect("list"), vec![info.blake3]);
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn empty_and_tiny_nars_work() {
    let (store, _dir) = memory_store();
    for len in [0usize, 1, 7] {
        let (data, info) = put(&store, 9, len);
        assert_eq!(read_all(&store, &info.blake3).expect("read"), data);
    }
}

#[test]
fn put_nar_expecting_rejects_wrong_hash_and_size_without_storing() {
    let (store, dir) = memory_store();
    let data = bytes(2, 100_000);
    let good = NarHasher::digest_of(&data);
    let wrong_hash = NixHash::sha256_of(b"something else");

    let err = store.put_nar_expecting(&mut data.as_slice(), &wrong_hash, data.len() as u64).expect_err("bad hash");
    assert!(matches!(err, StoreError::NarHashMismatch { .. }), "{err}");
    let err = store.put_nar_expecting(&mut data.as_slice(), &good.nar_hash, 10).expect_err("too long");
    assert!(matches!(err, StoreError::NarSizeMismatch { expected: 10, .. }), "{err}");
    let err = store.put_nar_expecting(&mut data.as_slice(), &good.nar_hash, 200_000).expect_err("too short");
    assert!(matches!(err, StoreError::NarSizeMismatch { expected: 200_000, .. }), "{err}");

    assert!(!store.has_nar(&ArtifactHash::from_bytes(good.blake3)).expect("has"));
    assert!(store.list_blobs(None, 0).expect("list").is_empty());
    assert!(temp_files(dir.path()).is_empty(), "temp files left behind");
    // No blob file was renamed into place either.
    let shards: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
    assert!(shards.is_empty(), "{shards:?}");

    let info = store.put_nar_expecting(&mut data.as_slice(), &good.nar_hash, data.len() as u64).expect("good");
    assert_eq!(info.nar_hash, good.nar_hash);
}

#[test]
fn failing_reader_is_an_input_error() {
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("peer went away"));
            }
            self.0 -= 1;
            buf[0] = 1;
            Ok(1)
        }
    }
    let (store, dir) = memory_store();
    let err = store.put_nar(&mut Broken(5)).expect_err("broken reader");
    assert!(matches!(err, StoreError::Input { .. }), "{err}");
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn a_verified_blob_streams_without_blake3_until_its_file_changes() {
    use std::io::{Seek, SeekFrom, Write};
    let (store, dir) = memory_store();
    // Noise: stored in raw zstd blocks, so a flipped byte changes the content, not the framing.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let data: Vec<u8> = (0..100_000)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let a = store.put_nar(&mut data.as_slice()).expect("put");
    assert!(store.blob_verified(&a.blake3), "its write verified it");
    let hex = a.blake3.to_string();
    let file = dir.path().join(&hex[..2]).join(format!("{hex}.nar.zst"));
    let mtime = std::fs::metadata(&file).expect("stat").modified().expect("mtime");
    let at = std::fs::metadata(&file).expect("stat").len() / 2;
    // Flip one byte in place (same inode and length), then set the mtime.
    let flip = |mtime: std::time::SystemTime| {
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&file).expect("open");
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.read_exact(&mut b).expect("read");
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(&[b[0] ^ 0x01]).expect("flip");
        f.set_modified(mtime).expect("set mtime");
    };
    let touch = |mtime| std::fs::File::options().write(true).open(&file).expect("open").set_modified(mtime);
    // A flip under the filesystem (same inode, length, mtime) after the check: the verified
    // blob is streamed without blake3, so it reads whole (what verify-once-per-process trades;
    // the client's NarHash check catches it).
    flip(mtime);
    let got = read_all(&store, &a.blake3).expect("a verified blob is not hashed again");
    assert_eq!(got.len(), data.len());
    assert_ne!(got, data);
    // The file changed (mtime): checked again, and the damage is found.
    touch(mtime + std::time::Duration::from_secs(1)).expect("touch");
    assert!(!store.blob_verified(&a.blake3));
    assert_eq!(read_all(&store, &a.blake3).expect_err("checked").kind(), std::io::ErrorKind::InvalidData);
    // The failed check forgot the blob: repaired under its old mtime it is checked again.
    flip(mtime);
    assert!(!store.blob_verified(&a.blake3));
    assert_eq!(read_all(&store, &a.blake3).expect("checked, intact"), data);
    assert!(store.blob_verified(&a.blake3), "a full read that passed verified it");
    // A failed verify_nar forgets it too.
    flip(mtime);
    assert!(store.verify_nar(&a.blake3).is_err());
    assert!(!store.blob_verified(&a.blake3));
    assert!(read_all(&store, &a.blake3).is_err());
}

#[test]
fn tampered_blobs_are_detected() {
    let (store, dir) = memory_store();
    let (_, a) = put(&store, 3, 500_000);
    let (_, b) = put(&store, 4, 500_000);
    let file_of = |id: &ArtifactHash| {
        let hex = id.to_string();
        dir.path().join(&hex[..2]).join(format!("{hex}.nar.zst"))
    };

    // A valid zstd stream of other content under a's name.
    std::fs::copy(file_of(&b.blake3), file_of(&a.blake3)).expect("swap");
    let err = store.verify_nar(&a.blake3).expect_err("swapped");
    assert!(matches!(&err, StoreError::BlobCorrupt { blob, .. } if *blob == a.blake3), "{err}");
    let err = read_all(&store, &a.blake3).expect_err("read must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

    // Garbage.
    std::fs::write(file_of(&a.blake3), b"not zstd at all").expect("garble");
    let err = store.verify_nar(&a.blake3).expect_err("garbled");
    assert!(matches!(err, StoreError::BlobCorrupt { .. }), "{err}");
    assert_eq!(read_all(&store, &a.blake3).expect_err("garbled read").kind(), std::io::ErrorKind::InvalidData);

    // Truncated.
    let full = std::fs::read(file_of(&b.blake3)).expect("read b");
    std::fs::write(file_of(&b.blake3), &full[..full.len() / 2]).expect("truncate");
    assert!(matches!(store.verify_nar(&b.blake3), Err(StoreError::BlobCorrupt { .. })));
    assert!(read_all(&store, &b.blake3).is_err());

    // Missing.
    std::fs::remove_file(file_of(&b.blake3)).expect("rm");
    let err = store.verify_nar(&b.blake3).expect_err("missing");
    assert!(matches!(err, StoreError::BlobMissing { .. }), "{err}");

    // Storing the NAR again repairs it.
    let data = bytes(3, 500_000);
    store.put_nar(&mut data.as_slice()).expect("repair");
    assert_eq!(store.verify_nar(&a.blake3).expect("repaired"), a);
}

#[test]
fn register_path_checks_the_blob_and_is_idempotent() {
    let (store, _dir) = memory_store();
    let (_, blob) = put(&store, 5, 10_000);
    let p = path(7, "hello-1.0");
    let mut info = path_info_for(&p, &blob);

    let mut missing = info.clone();
    missing.blob = ArtifactHash::from_bytes([9; 32]);
    assert!(matches!(store.register_path(&missing), Err(StoreError::BlobMismatch { .. })));
    let mut wrong = info.clone();
    wrong.nar_size += 1;
    assert!(matches!(store.register_path(&wrong), Err(StoreError::BlobMismatch { .. })));
    assert!(!store.has_path(&p).expect("has"));

    assert!(store.register_path(&info).expect("register"));
    assert!(!store.register_path(&info).expect("again"));
    assert_eq!(store.path_info(&p).expect("get"), Some(info.clone()));
    assert_eq!(store.path_by_hash_part(&p.hash_part()).expect("by hash"), Some(info.clone()));
    assert_eq!(store.path_by_hash_part(&path(8, "x").hash_part()).expect("other"), None);
    assert_eq!(store.path_by_hash_part("../etc").expect("junk"), None);

    let (_, other) = put(&store, 6, 10_000);
    info.nar_hash = other.nar_hash.clone();
    info.nar_size = other.nar_size;
    info.blob = other.blake3;
    let err = store.register_path(&info).expect_err("conflict");
    assert!(matches!(err, StoreError::PathConflict { .. }), "{err}");
}

#[test]
fn list_paths_pages_in_order() {
    let (store, _dir) = memory_store();
    let (_, blob) = put(&store, 5, 1000);
    let paths: Vec<StorePath> = (1..=5).map(|n| path(n, &format!("p{n}"))).collect();
    for p in &paths {
        store.register_path(&path_info_for(p, &blob)).expect("register");
    }
    assert_eq!(store.path_count().expect("count"), 5);
    let first = store.list_paths(None, 2).expect("page 1");
    assert_eq!(first.len(), 2);
    let rest = store.list_paths(Some(&first[1].path), 0).expect("rest");
    assert_eq!(rest.len(), 3);
    let mut all: Vec<String> = first.iter().chain(&rest).map(|i| i.path.to_string()).collect();
    let sorted = {
        let mut s = all.clone();
        s.sort();
        s
    };
    assert_eq!(all, sorted);
    all.dedup();
    assert_eq!(all.len(), 5);
}

#[test]
fn drvs_are_write_once() {
    let (store, _dir) = memory_store();
    assert!(store.put_drv(&drv(1), b"A").expect("put"));
    assert!(!store.put_drv(&drv(1), b"A").expect("same"));
    assert!(matches!(store.put_drv(&drv(1), b"B"), Err(StoreError::DrvConflict { .. })));
    assert!(store.has_drv(&drv(1)).expect("has"));
    assert!(!store.has_drv(&drv(2)).expect("has not"));
}

#[test]
fn logs_are_capped_keeping_the_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions { max_log_bytes: 1000, ..StoreOptions::default() };
    let store = Store::open_with_backend(redb::backends::InMemoryBackend::new(), dir.path(), options).expect("open");
    store.put_log(&drv(1), b"short log\n").expect("put");
    assert_eq!(store.get_log(&drv(1)).expect("get").as_deref(), Some(&b"short log\n"[..]));
    let long: Vec<u8> = (0..10_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    store.put_log(&drv(2), &long).expect("put long");
    let got = store.get_log(&drv(2)).expect("get").expect("present");
    assert_eq!(got.len(), 1000);
    assert!(got.starts_with(b"[buildmesh: log truncated"));
    assert!(got.ends_with(b"line 9999\n"));
    assert_eq!(store.get_log(&drv(3)).expect("none"), None);
}

#[test]
fn a_failed_write_batch_leaves_nothing() {
    let (store, _dir) = memory_store();
    let err = store
        .write(|w| {
            w.put_drv(&drv(1), b"A")?;
            w.enqueue(&EnqueueRequest { drv: drv(1), priority: 0, wanted_outputs: BTreeSet::new(), replicas: 1 }, 1)?;
            w.put_drv(&drv(2), b"B")?;
            Err::<(), _>(StoreError::NotFound { table: "drvs", key: "input".to_string() })
        })
        .expect_err("aborted");
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert!(!store.has_drv(&drv(1)).expect("has"));
    assert_eq!(store.get_build(&drv(1)).expect("get"), None);
    assert!(store.queued_builds(0).expect("queue").is_empty());
}

#[test]
fn build_lifecycle() {
    let (store, _dir) = memory_store();
    let req = |n: u8, priority: i32| EnqueueRequest {
        drv: drv(n),
        priority,
        wanted_outputs: BTreeSet::from(["out".to_string()]),
        replicas: 1,
    };
    assert!(matches!(store.enqueue(&req(1, 0), 10).expect("enqueue"), EnqueueOutcome::Created(_)));
    store.enqueue(&req(2, 5), 11).expect("enqueue");
    store.enqueue(&req(3, 0), 12).expect("enqueue");
    let merged = store
        .enqueue(
            &EnqueueRequest { drv: drv(1), priority: -1, wanted_outputs: BTreeSet::from(["dev".into()]), replicas: 3 },
            13,
        )
        .expect("merge");
    let EnqueueOutcome::Existing(merged) = merged else { panic!("expected Existing") };
    assert_eq!(merged.priority, 0);
    assert_eq!(merged.replicas, 3);
    assert_eq!(merged.wanted_outputs.len(), 2);
    assert_eq!(merged.submitted_at, 10);

    let order: Vec<_> = store.queued_builds(0).expect("queue").into_iter().map(|r| r.drv).collect();
    assert_eq!(order, vec![drv(2), drv(1), drv(3)]);

    let r = store.mark_running(&drv(2), 20).expect("running");
    assert_eq!((r.state, r.attempts, r.started_at), (BuildState::Running, 1, Some(20)));
    let err = store.mark_running(&drv(2), 21).expect_err("twice");
    assert!(
        matches!(err, StoreError::InvalidTransition { from: BuildState::Running, to: BuildState::Running, .. }),
        "{err}"
    );
    let r = store.mark_retry(&drv(2), "network down", Some(99)).expect("retry");
    assert_eq!((r.state, r.not_before, r.last_error.as_deref()), (BuildState::Queued, Some(99), Some("network down")));
    // Retried builds go behind those of the same priority; drv 2 still has the highest priority.
    assert_eq!(store.queued_builds(1).expect("queue")[0].drv, drv(2));
    store.mark_running(&drv(2), 30).expect("running again");
    let r = store.mark_failed(&drv(2), 31, "exit status 1").expect("fail");
    assert_eq!((r.state, r.attempts, r.finished_at), (BuildState::Failed, 2, Some(31)));
    assert!(
        matches!(store.enqueue(&req(2, 9), 32).expect("enqueue"), EnqueueOutcome::Existing(r) if r.state == BuildState::Failed)
    );
    let r = store.retry(&drv(2)).expect("retry");
    assert_eq!(r.state, BuildState::Queued);

    store.mark_running(&drv(1), 40).expect("running");
    store.mark_running(&drv(3), 40).expect("running");
    store.mark_done(&drv(3), 41).expect("done");
    assert_eq!(store.cancel(&drv(2), 42).expect("cancel queued"), BuildState::Queued);
    assert_eq!(store.cancel(&drv(2), 43).expect("cancel again"), BuildState::Cancelled);
    assert!(matches!(store.cancel(&drv(3), 44), Err(StoreError::InvalidTransition { .. })));
    assert!(matches!(store.mark_done(&drv(9), 1), Err(StoreError::NotFound { .. })));

    let counts = store.build_counts().expect("counts");
    assert_eq!(counts, BuildCounts { queued: 0, running: 1, done: 1, failed: 0, cancelled: 1 });
    assert_eq!(store.requeue_interrupted().expect("requeue"), vec![drv(1)]);
    let r = store.get_build(&drv(1)).expect("get").expect("present");
    assert_eq!((r.state, r.attempts, r.started_at), (BuildState::Queued, 1, None));
    assert_eq!(store.queued_builds(0).expect("queue").len(), 1);

    let done = store.list_builds(&BuildFilter { states: vec![BuildState::Done], ..Default::default() }).expect("list");
    assert_eq!(done.len(), 1);
    let page = store.list_builds(&BuildFilter { after: Some(drv(1)), limit: 1, ..Default::default() }).expect("page");
    assert_eq!(page.iter().map(|r| r.drv.clone()).collect::<Vec<_>>(), vec![drv(2)]);
}

#[test]
fn attestations_merge_by_union_and_page_by_sequence() {
    let (a, _da) = memory_store();
    let (b, _db) = memory_store();
    let entries: Vec<AttestationEntry> =
        vec![attestation(1, 1, 1, &[1, 2]), attestation(2, 1, 2, &[1]), attestation(3, 2, 1, &[3])];
    for e in &entries {
        let ins = a.insert_attestation(e).expect("insert");
        assert!(ins.new);
    }
    assert_eq!(a.insert_attestation(&entries[0]).expect("dup"), Inserted { new: false, seq: 0 });
    for e in entries.iter().rev() {
        b.insert_attestation(e).expect("insert");
    }
    let (sa, sb) = (a.attestation_summary().expect("sum"), b.attestation_summary().expect("sum"));
    assert_eq!((sa.count, sa.xor, sa.next_seq), (sb.count, sb.xor, sb.next_seq));
    assert_eq!(sa.count, 3);

    let out1 = a.attestations_for_output(&entries[0].outputs[0].path).expect("by output");
    let ids: BTreeSet<_> = out1.iter().map(|s| s.entry.id).collect();
    assert_eq!(ids, BTreeSet::from([entries[0].id, entries[1].id]));
    assert_eq!(a.attestations_for_drv(&drv(1)).expect("by drv").len(), 2);
    assert_eq!(a.attestations_for_drv(&drv(2)).expect("by drv")[0].entry, entries[2]);
    assert!(a.attestations_for_drv(&drv(3)).expect("none").is_empty());

    let page1 = a.attestations_since(0, 2).expect("page");
    assert_eq!(page1.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![0, 1]);
    let page2 = a.attestation_ids_since(page1[1].seq + 1, 2).expect("page 2");
    assert_eq!(page2, vec![(2, entries[2].id)]);
    assert_eq!(a.get_attestation(&entries[1].id).expect("get").map(|s| s.entry), Some(entries[1].clone()));
    assert!(a.has_attestation(&entries[2].id).expect("has"));
    assert_eq!(a.insert_attestations(&entries).expect("batch"), 0);
}

#[test]
fn failures_merge_by_union() {
    let (store, _dir) = memory_store();
    let f = |id: u8, attempt: u32| FailureEntry {
        id: buildmesh_protocol::id::MessageId::from_bytes([id; 32]),
        drv: drv(1),
        builder: node(1),
        attempt,
        received_at: 5,
        envelope: vec![1, 2, 3],
    };
    assert!(store.insert_failure(&f(1, 1)).expect("insert").new);
    assert!(store.insert_failure(&f(2, 2)).expect("insert").new);
    assert!(!store.insert_failure(&f(1, 1)).expect("dup").new);
    assert_eq!(store.failures_for_drv(&drv(1)).expect("by drv").len(), 2);
    assert_eq!(store.failures_since(1, 0).expect("since")[0].entry, f(2, 2));
    assert_eq!(store.failure_ids_since(0, 0).expect("ids").len(), 2);
    assert_eq!(store.failure_summary().expect("summary").count, 2);
    assert_eq!(store.get_failure(&f(2, 2).id).expect("get").map(|s| s.seq), Some(1));
}

#[test]
fn corrupt_rows_are_typed_errors_naming_table_and_key() {
    let (store, _dir) = memory_store();
    let p = path(1, "broken");
    {
        let txn = store.db().expect("db").begin_write().expect("txn");
        txn.open_table(PATHS).expect("paths").insert(p.to_string().as_str(), &b"\xff\xff\xff"[..]).expect("insert");
        txn.open_table(BUILDS).expect("builds").insert(drv(1).to_string().as_str(), &b"\x00"[..]).expect("insert");
        txn.open_table(META).expect("meta").insert(META_NEXT_ATT_SEQ, &b"\x01"[..]).expect("insert");
        txn.commit().expect("commit");
    }
    let err = store.path_info(&p).expect_err("corrupt path row");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { table: "paths", .. }) && msg.contains(&p.to_string()), "{msg}");
    assert!(matches!(store.list_paths(None, 0), Err(StoreError::Corrupt { table: "paths", .. })));
    let err = store.get_build(&drv(1)).expect_err("corrupt build row");
    assert!(matches!(err, StoreError::Corrupt { table: "builds", .. }), "{err}");
    assert!(matches!(store.requeue_interrupted(), Err(StoreError::Corrupt { .. })));
    let err = store.insert_attestation(&attestation(1, 1, 1, &[1])).expect_err("corrupt counter");
    assert!(matches!(err, StoreError::Corrupt { table: "meta", .. }), "{err}");
}

#[test]
fn leftover_temp_blobs_are_removed_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).expect("open"));
    let blobs = dir.path().join(BLOB_DIR);
    std::fs::write(blobs.join(".tmp-abandoned"), b"half a blob").expect("write");
    std::fs::write(dir.path().join("state.redb.creating-12345"), b"half a database").expect("write");
    let store = Store::open(dir.path()).expect("reopen");
    assert!(temp_files(&blobs).is_empty());
    assert!(!dir.path().join("state.redb.creating-12345").exists());
    drop(store);
}

#[test]
fn a_half_created_database_never_takes_the_real_name() {
    // A crash during creation leaves only a draft; the next open creates the database afresh.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("state.redb.creating-1"), b"").expect("write");
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(store.schema_version().expect("version"), 1);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("creating")), "{names:?}");
}

#[test]
fn store_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Store>();
}

/// Throughput of `put_nar` and `open_nar` on a 200 MiB NAR (file-backed store, fsync included).
/// Run: `cargo test -p buildmesh --lib store::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_put_and_read_200mib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mib = 200usize;
    let compressible = bytes(11, mib << 20);
    let mut random = vec![0u8; mib << 20];
    let mut x = 0x1234_5678_9abc_def1u64;
    for chunk in random.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    // Optionally a real NAR too, e.g. `nix-store --dump /usr/lib/x86_64-linux-gnu | head -c 200M > f`.
    let real = std::env::var_os("BUILDMESH_BENCH_NAR").map(|p| std::fs::read(p).expect("read BUILDMESH_BENCH_NAR"));
    let mut inputs = vec![("synthetic 16-symbol text", &compressible), ("incompressible random", &random)];
    if let Some(real) = &real {
        inputs.push(("real NAR (BUILDMESH_BENCH_NAR)", real));
    }
    for (label, data) in inputs {
        let mib = data.len() as f64 / 1048576.0;
        let t = std::time::Instant::now();
        let info = store.put_nar(&mut data.as_slice()).expect("put");
        let put = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let mut r = store.open_nar(&info.blake3).expect("open");
        let n = std::io::copy(&mut r, &mut std::io::sink()).expect("read");
        let read = t.elapsed().as_secs_f64();
        assert_eq!(n, data.len() as u64);
        let t = std::time::Instant::now();
        store.verify_nar(&info.blake3).expect("verify");
        let verify = t.elapsed().as_secs_f64();
        println!(
            "{label}: {mib:.0} MiB -> {:.1} MiB on disk; put_nar {:.0} MiB/s, open_nar read {:.0} MiB/s, verify_nar {:.0} MiB/s",
            info.compressed_size as f64 / 1048576.0,
            mib / put,
            mib / read,
            mib / verify
        );
    }
}
