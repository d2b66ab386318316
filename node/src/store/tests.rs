//! Unit tests of the store (in-memory database where the test does not need a file).

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;

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

/// A redb backend that simulates a crash: after `freeze_after` syncs, syncs fail (the process
/// "dies" there), and [`CrashBackend::durable_image`] is the disk as of the last successful sync.
#[derive(Debug, Clone)]
struct CrashBackend(Arc<std::sync::Mutex<CrashState>>);

#[derive(Debug)]
struct CrashState {
    current: Vec<u8>,
    durable: Vec<u8>,
    syncs: u64,
    freeze_after: u64,
}

impl CrashBackend {
    fn new(image: Vec<u8>, freeze_after: u64) -> CrashBackend {
        CrashBackend(Arc::new(std::sync::Mutex::new(CrashState {
            current: image.clone(),
            durable: image,
            syncs: 0,
            freeze_after,
        })))
    }

    fn durable_image(&self) -> Vec<u8> {
        self.0.lock().expect("lock").durable.clone()
    }
}

impl redb::StorageBackend for CrashBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().expect("lock").current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let s = self.0.lock().expect("lock");
        let src = s
            .current
            .get(offset as usize..offset as usize + out.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "read out of range"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.lock().expect("lock").current.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut s = self.0.lock().expect("lock");
        if s.syncs >= s.freeze_after {
            return Err(std::io::Error::other("simulated crash"));
        }
        s.syncs += 1;
        s.durable = s.current.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut s = self.0.lock().expect("lock");
        let dst = s
            .current
            .get_mut(offset as usize..offset as usize + data.len())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "write out of range"))?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// One step of the crash-consistency workload: a closure transaction, then a state change.
fn crash_step(store: &Store, i: u8) -> Result<(), StoreError> {
    store.write(|w| {
        w.put_drv(&drv(i), &[i; 10])?;
        w.enqueue(
            &EnqueueRequest { drv: drv(i), priority: i32::from(i % 3), wanted_outputs: BTreeSet::new(), replicas: 1 },
            1,
        )?;
        w.insert_attestation(&attestation(i, i, 1, &[i % 5]))?;
        Ok(())
    })?;
    store.mark_running(&drv(i), 2)?;
    Ok(())
}

#[test]
fn crash_at_every_sync_keeps_every_acknowledged_write() {
    let blobs = tempfile::tempdir().expect("tempdir");
    let mut interrupted_runs = 0;
    for freeze_after in 0..40 {
        let backend = CrashBackend::new(Vec::new(), freeze_after);
        let mut acked: Vec<(u8, bool)> = Vec::new(); // (step, running acknowledged)
        let opened = Store::open_with_backend(backend.clone(), blobs.path(), StoreOptions::default());
        // A crash while redb initialises a new file leaves no valid database; `Store::open` makes
        // file creation atomic (create aside, then link into place), so only opened stores count.
        let Ok(store) = opened else { continue };
        {
            for i in 0..20u8 {
                match crash_step(&store, i) {
                    Ok(()) => acked.push((i, true)),
                    Err(_) => {
                        // The closure may have committed before mark_running failed.
                        if store.has_drv(&drv(i)).unwrap_or(false) {
                            acked.push((i, false));
                        }
                        break;
                    }
                }
            }
        }
        drop(store);
        if !acked.is_empty() && acked.len() < 20 {
            interrupted_runs += 1;
        }
        let image = backend.durable_image();
        let reopened =
            Store::open_with_backend(CrashBackend::new(image, u64::MAX), blobs.path(), StoreOptions::default())
                .unwrap_or_else(|e| panic!("freeze {freeze_after}: reopen failed: {e}"));
        for &(i, running) in &acked {
            let b = reopened
                .get_build(&drv(i))
                .expect("get")
                .unwrap_or_else(|| panic!("freeze {freeze_after}: build {i} lost"));
            if running {
                assert_eq!(b.state, BuildState::Running, "freeze {freeze_after}: step {i}");
            }
            assert!(reopened.has_drv(&drv(i)).expect("has"), "freeze {freeze_after}: drv {i} lost");
            assert_eq!(reopened.attestations_for_drv(&drv(i)).expect("atts").len(), 1);
        }
        // All-or-nothing: every visible build has its drv and attestation, and nothing beyond the
        // last acknowledged step is visible except possibly the one in flight.
        let builds = reopened.list_builds(&BuildFilter::default()).expect("list");
        for b in &builds {
            assert!(reopened.has_drv(&b.drv).expect("has"));
        }
        assert!(
            builds.len() <= acked.len() + 1,
            "freeze {freeze_after}: {} builds, {} acked",
            builds.len(),
            acked.len()
        );
        assert_eq!(reopened.attestation_summary().expect("summary").count, builds.len() as u64);
    }
    assert!(interrupted_runs >= 10, "only {interrupted_runs} runs crashed mid-workload");
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

mod model {
    //! The builds and attestations API against a `BTreeMap` model (STYLE.md 14).

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue { d: u8, priority: i32, outputs: Vec<u8>, replicas: u32 },
        Running(u8),
        Done(u8),
        Failed(u8),
        RetryLater(u8),
        Retry(u8),
        Cancel(u8),
        RequeueInterrupted,
        Attest { id: u8 },
        Since { cursor: u64, limit: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6, -2i32..3, proptest::collection::vec(0u8..3, 0..3), 1u32..4)
                .prop_map(|(d, priority, outputs, replicas)| Op::Enqueue { d, priority, outputs, replicas }),
            3 => (0u8..6).prop_map(Op::Running),
            2 => (0u8..6).prop_map(Op::Done),
            1 => (0u8..6).prop_map(Op::Failed),
            1 => (0u8..6).prop_map(Op::RetryLater),
            1 => (0u8..6).prop_map(Op::Retry),
            1 => (0u8..6).prop_map(Op::Cancel),
            1 => Just(Op::RequeueInterrupted),
            3 => (0u8..16).prop_map(|id| Op::Attest { id }),
            1 => (0u64..20, 0usize..5).prop_map(|(cursor, limit)| Op::Since { cursor, limit }),
        ]
    }

    /// The attestation numbered `id` (same number, same content).
    fn att(id: u8) -> AttestationEntry {
        attestation(id, id % 4, id % 3, &[id % 5, (id + 1) % 5])
    }

    #[derive(Debug, Clone, PartialEq)]
    struct MBuild {
        state: BuildState,
        priority: i32,
        attempts: u32,
        outputs: BTreeSet<String>,
        replicas: u32,
        seq: u64,
        error: Option<String>,
    }

    #[derive(Default)]
    struct Model {
        builds: BTreeMap<u8, MBuild>,
        next_build_seq: u64,
        atts: Vec<u8>, // insertion order; position = seq
    }

    impl Model {
        fn transition(&mut self, d: u8, from: &[BuildState], to: BuildState) -> Result<&mut MBuild, ()> {
            match self.builds.get_mut(&d) {
                Some(b) if from.contains(&b.state) => {
                    b.state = to;
                    Ok(b)
                }
                _ => Err(()),
            }
        }

        fn queue(&self) -> Vec<u8> {
            let mut q: Vec<(i32, u64, u8)> = self
                .builds
                .iter()
                .filter(|(_, b)| b.state == BuildState::Queued)
                .map(|(d, b)| (-b.priority, b.seq, *d))
                .collect();
            q.sort();
            q.into_iter().map(|(_, _, d)| d).collect()
        }
    }

    fn check_same(store: &Store, model: &Model) -> Result<(), TestCaseError> {
        let builds = store.list_builds(&BuildFilter::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut by_drv = BTreeMap::new();
        for r in builds {
            let d = (0u8..6).find(|d| drv(*d) == r.drv).expect("known drv");
            by_drv.insert(
                d,
                MBuild {
                    state: r.state,
                    priority: r.priority,
                    attempts: r.attempts,
                    outputs: r.wanted_outputs,
                    replicas: r.replicas,
                    seq: r.queue_seq,
                    error: r.last_error,
                },
            );
        }
        prop_assert_eq!(&by_drv, &model.builds);
        let queue: Vec<StorePath> = store.queued_builds(0).expect("queue").into_iter().map(|r| r.drv).collect();
        let expected: Vec<StorePath> = model.queue().into_iter().map(drv).collect();
        prop_assert_eq!(queue, expected);

        let seqs = store.attestation_ids_since(0, 0).expect("ids");
        let expected: Vec<(u64, MessageIdAlias)> =
            model.atts.iter().enumerate().map(|(i, id)| (i as u64, att(*id).id)).collect();
        prop_assert_eq!(seqs, expected);
        for d in 0u8..4 {
            let got: BTreeSet<_> =
                store.attestations_for_drv(&drv(d)).expect("by drv").into_iter().map(|s| s.entry.id).collect();
            let want: BTreeSet<_> =
                model.atts.iter().map(|i| att(*i)).filter(|e| e.drv == drv(d)).map(|e| e.id).collect();
            prop_assert_eq!(got, want);
        }
        for o in 0u8..5 {
            let out = path(100 + o, &format!("out{o}"));
            let got: Vec<_> = store.attestations_for_output(&out).expect("by output");
            let got_ids: BTreeSet<_> = got.iter().map(|s| s.entry.id).collect();
            let want: BTreeSet<_> = model
                .atts
                .iter()
                .map(|i| att(*i))
                .filter(|e| e.outputs.iter().any(|x| x.path == out))
                .map(|e| e.id)
                .collect();
            prop_assert_eq!(got_ids, want);
            // Grouped by builder.
            let builders: Vec<_> = got.iter().map(|s| *s.entry.builder.as_bytes()).collect();
            let mut sorted = builders.clone();
            sorted.sort();
            prop_assert_eq!(builders, sorted);
        }
        let summary = store.attestation_summary().expect("summary");
        let mut xor = [0u8; 32];
        for id in &model.atts {
            for (a, b) in xor.iter_mut().zip(att(*id).id.as_bytes()) {
                *a ^= b;
            }
        }
        prop_assert_eq!(summary, SetSummary { count: model.atts.len() as u64, xor, next_seq: model.atts.len() as u64 });
        Ok(())
    }

    type MessageIdAlias = buildmesh_protocol::id::MessageId;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn builds_and_attestations_follow_the_model(ops in proptest::collection::vec(op(), 1..60)) {
            let (store, _dir) = memory_store();
            let mut m = Model::default();
            for (step, op) in ops.iter().enumerate() {
                let now = step as u64;
                match op.clone() {
                    Op::Enqueue { d, priority, outputs, replicas } => {
                        let outputs: BTreeSet<String> = outputs.iter().map(|o| format!("o{o}")).collect();
                        let req = EnqueueRequest { drv: drv(d), priority, wanted_outputs: outputs.clone(), replicas };
                        let got = store.enqueue(&req, now).expect("enqueue never fails");
                        match m.builds.get_mut(&d) {
                            Some(b) => {
                                prop_assert!(matches!(got, EnqueueOutcome::Existing(_)));
                                b.priority = b.priority.max(priority);
                                b.outputs.extend(outputs);
                                b.replicas = b.replicas.max(replicas);
                            }
                            None => {
                                prop_assert!(matches!(got, EnqueueOutcome::Created(_)));
                                m.builds.insert(d, MBuild { state: BuildState::Queued, priority, attempts: 0, outputs, replicas, seq: m.next_build_seq, error: None });
                                m.next_build_seq += 1;
                            }
                        }
                    }
                    Op::Running(d) => {
                        let want = m.transition(d, &[BuildState::Queued], BuildState::Running).map(|b| { b.attempts += 1; });
                        prop_assert_eq!(store.mark_running(&drv(d), now).is_ok(), want.is_ok());
                    }
                    Op::Done(d) => {
                        let want = m.transition(d, &[BuildState::Running], BuildState::Done).map(|b| { b.error = None; });
                        prop_assert_eq!(store.mark_done(&drv(d), now).is_ok(), want.is_ok());
                    }
                    Op::Failed(d) => {
                        let want = m.transition(d, &[BuildState::Running], BuildState::Failed).map(|b| { b.error = Some("boom".into()); });
                        prop_assert_eq!(store.mark_failed(&drv(d), now, "boom").is_ok(), want.is_ok());
                    }
                    Op::RetryLater(d) => {
                        // The store takes a sequence number before checking the transition, but
                        // the transaction aborts on error, so the counter only moves on success.
                        let seq = m.next_build_seq;
                        let want = m.transition(d, &[BuildState::Running], BuildState::Queued).map(|b| { b.error = Some("later".into()); b.seq = seq; });
                        if want.is_ok() { m.next_build_seq += 1; }
                        prop_assert_eq!(store.mark_retry(&drv(d), "later", Some(now + 10)).is_ok(), want.is_ok());
                    }
                    Op::Retry(d) => {
                        let seq = m.next_build_seq;
                        let want = m.transition(d, &[BuildState::Failed, BuildState::Cancelled], BuildState::Queued).map(|b| { b.seq = seq; });
                        if want.is_ok() { m.next_build_seq += 1; }
                        prop_assert_eq!(store.retry(&drv(d)).is_ok(), want.is_ok());
                    }
                    Op::Cancel(d) => {
                        let before = m.builds.get(&d).map(|b| b.state);
                        let want = match before {
                            Some(BuildState::Cancelled) => Ok(BuildState::Cancelled),
                            Some(s @ (BuildState::Queued | BuildState::Running)) => {
                                m.transition(d, &[s], BuildState::Cancelled).map(|_| s)
                            }
                            _ => Err(()),
                        };
                        let got = store.cancel(&drv(d), now);
                        prop_assert_eq!(got.ok(), want.ok());
                    }
                    Op::RequeueInterrupted => {
                        let mut want = Vec::new();
                        for (d, b) in m.builds.iter_mut() {
                            if b.state == BuildState::Running {
                                b.state = BuildState::Queued;
                                want.push(drv(*d));
                            }
                        }
                        let mut got = store.requeue_interrupted().expect("requeue");
                        got.sort_by_key(|p| p.to_string());
                        want.sort_by_key(|p| p.to_string());
                        prop_assert_eq!(got, want);
                    }
                    Op::Attest { id } => {
                        let got = store.insert_attestation(&att(id)).expect("insert");
                        let pos = m.atts.iter().position(|x| *x == id);
                        match pos {
                            Some(p) => prop_assert_eq!(got, Inserted { new: false, seq: p as u64 }),
                            None => {
                                prop_assert_eq!(got, Inserted { new: true, seq: m.atts.len() as u64 });
                                m.atts.push(id);
                            }
                        }
                    }
                    Op::Since { cursor, limit } => {
                        let got: Vec<u64> = store.attestations_since(cursor, limit).expect("since").iter().map(|s| s.seq).collect();
                        let mut want: Vec<u64> = (cursor..m.atts.len() as u64).collect();
                        if limit != 0 { want.truncate(limit); }
                        prop_assert_eq!(got, want);
                    }
                }
                check_same(&store, &m)?;
            }
        }
    }
}
