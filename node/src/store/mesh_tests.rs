//! Tests of the mesh tables ([`super::mesh`]): sync cursors and this node's own submissions
//! survive a reopen, corrupt rows are typed errors that delete nothing, and a database written
//! before these tables existed gains them on open.

use std::collections::BTreeSet;

use super::test_support::*;
use super::*;

fn submitted(n: u8) -> SubmittedJob {
    SubmittedJob {
        job: buildmesh_protocol::id::JobId::from_bytes([n; 32]),
        submitted_at_ms: 1000 + u64::from(n),
        priority: i32::from(n) - 1,
        replicas: n,
        outputs: BTreeSet::from(["out".to_string()]),
        inputs: BTreeSet::from([format!("{n}-input.drv")]),
    }
}

#[test]
fn sync_cursors_round_trip_through_a_reopened_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.get_sync_cursor("peerA").expect("get"), None);
        store.put_sync_cursor("peerA", &SyncCursor { attestations: 5, failures: 2 }).expect("put");
        store.put_sync_cursor("peerB", &SyncCursor { attestations: 1, failures: 0 }).expect("put");
        store.put_sync_cursor("peerA", &SyncCursor { attestations: 7, failures: 3 }).expect("replace");
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.get_sync_cursor("peerA").expect("get"), Some(SyncCursor { attestations: 7, failures: 3 }));
    assert_eq!(
        store.list_sync_cursors().expect("list"),
        vec![
            ("peerA".to_string(), SyncCursor { attestations: 7, failures: 3 }),
            ("peerB".to_string(), SyncCursor { attestations: 1, failures: 0 }),
        ]
    );
}

#[test]
fn mesh_submissions_round_trip_through_a_reopened_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        assert!(store.list_mesh_submissions().expect("list").is_empty());
        let (a, b, c) = (submitted(1), submitted(2), submitted(3));
        let n = store.put_mesh_submissions([("a.drv", &a), ("b.drv", &b), ("c.drv", &c)]).expect("batch");
        assert_eq!(n, 3);
        assert!(store.remove_mesh_submission("b.drv").expect("remove"));
        assert!(!store.remove_mesh_submission("b.drv").expect("remove again"));
        // A failing batch writes nothing.
        let err = store.write(|w| {
            w.put_mesh_submission("d.drv", &submitted(4))?;
            Err::<(), _>(StoreError::NotFound { table: "test", key: "abort".into() })
        });
        assert!(err.is_err());
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        store.list_mesh_submissions().expect("list"),
        vec![("a.drv".to_string(), submitted(1)), ("c.drv".to_string(), submitted(3))]
    );
    assert_eq!(store.get_mesh_submission("c.drv").expect("get"), Some(submitted(3)));
    assert_eq!(store.get_mesh_submission("d.drv").expect("get"), None);
}

#[test]
fn corrupt_mesh_rows_are_typed_errors_naming_table_and_key() {
    let (store, _dir) = memory_store();
    store.put_mesh_submissions([("a.drv", &submitted(1))]).expect("put");
    put_raw_row(&store, "mesh_submissions", "b.drv", &[0xff, 0xff, 0xff]);
    put_raw_row(&store, "sync_cursors", "peerX", b"not postcard at all");
    for err in [
        store.list_mesh_submissions().expect_err("corrupt list"),
        store.get_mesh_submission("b.drv").expect_err("corrupt get"),
    ] {
        assert!(matches!(&err, StoreError::Corrupt { table: "mesh_submissions", key, .. } if key == "b.drv"), "{err}");
    }
    for err in
        [store.get_sync_cursor("peerX").expect_err("corrupt get"), store.list_sync_cursors().expect_err("corrupt list")]
    {
        assert!(matches!(&err, StoreError::Corrupt { table: "sync_cursors", key, .. } if key == "peerX"), "{err}");
    }
    // Reads never delete: the rows are still there, and the good one still reads.
    assert!(store.get_mesh_submission("b.drv").is_err());
    assert_eq!(store.get_mesh_submission("a.drv").expect("good row"), Some(submitted(1)));
    // Writing over or removing a corrupt row works.
    assert!(store.remove_mesh_submission("b.drv").expect("remove corrupt"));
    store.put_sync_cursor("peerX", &SyncCursor { attestations: 1, failures: 1 }).expect("overwrite");
    assert_eq!(store.list_mesh_submissions().expect("list").len(), 1);
    assert_eq!(store.list_sync_cursors().expect("list").len(), 1);
}

#[test]
fn a_database_without_the_mesh_tables_opens_and_gains_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        store.put_drv(&drv(1), b"Derive(...)").expect("put_drv");
        // Make it look like a database written before these tables existed.
        let txn = store.db().expect("db").begin_write().expect("begin");
        assert!(txn.delete_table(tables::SYNC_CURSORS).expect("delete"));
        assert!(txn.delete_table(tables::MESH_SUBMISSIONS).expect("delete"));
        txn.commit().expect("commit");
        let read = store.db().expect("db").begin_read().expect("read");
        assert!(read.open_table(tables::MESH_SUBMISSIONS).is_err(), "table should be gone");
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.schema_version().expect("version"), tables::SCHEMA_VERSION);
    assert_eq!(store.get_drv(&drv(1)).expect("get").as_deref(), Some(&b"Derive(...)"[..]));
    assert!(store.list_mesh_submissions().expect("list").is_empty());
    assert_eq!(store.get_sync_cursor("p").expect("get"), None);
    store.put_mesh_submissions([("a.drv", &submitted(1))]).expect("put");
    assert_eq!(store.list_mesh_submissions().expect("list").len(), 1);
}
