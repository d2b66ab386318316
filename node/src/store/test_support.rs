//! Helpers for the store's unit tests.

use buildmesh_protocol::id::{MessageId, NodeId};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::store_path::StorePath;

use super::{AttestationEntry, AttestedOutput, Store, StoreOptions};
use buildmesh_protocol::hash::NixHash;

/// A store with an in-memory database and blobs in a temp dir (kept alive by the returned guard).
pub(crate) fn memory_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with_backend(redb::backends::InMemoryBackend::new(), dir.path(), StoreOptions::default())
        .expect("open in-memory store");
    (store, dir)
}

/// A store path with digest byte `n` everywhere.
pub(crate) fn path(n: u8, name: &str) -> StorePath {
    StorePath::new([n; 20], name).expect("valid store path name")
}

/// A drv path numbered `n`.
pub(crate) fn drv(n: u8) -> StorePath {
    path(n, &format!("pkg{n}.drv"))
}

/// A valid node id numbered `n`.
pub(crate) fn node(n: u8) -> NodeId {
    NodeKey::from_seed("test", [n; 32]).expect("key").node_id()
}

/// Pseudo-random, somewhat compressible bytes (a deterministic xorshift stream).
pub(crate) fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Small alphabet: compresses, like real NARs mostly do.
        out.push(b'a' + (x % 16) as u8);
    }
    out
}

/// A deterministic attestation numbered `id`: the same number always gives the same entry, as a
/// real message id (a hash of the content) would.
pub(crate) fn attestation(id: u8, drv_n: u8, builder: u8, outputs: &[u8]) -> AttestationEntry {
    AttestationEntry {
        id: MessageId::from_bytes(*blake3::hash(&[id, drv_n, builder]).as_bytes()),
        drv: drv(drv_n),
        builder: node(builder),
        outputs: outputs
            .iter()
            .map(|&o| AttestedOutput {
                path: path(100 + o, &format!("out{o}")),
                nar_hash: NixHash::sha256_of(&[o, builder]),
                nar_size: 100 + u64::from(o),
            })
            .collect(),
        received_at: u64::from(id) * 1000,
        envelope: vec![id; 40],
    }
}

/// Write `value` as the raw bytes of `key` in the `&str -> &[u8]` table named `table`, bypassing
/// the record encoding (to plant a corrupt row).
pub(crate) fn put_raw_row(store: &Store, table: &str, key: &str, value: &[u8]) {
    let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(table);
    let txn = store.db().expect("db").begin_write().expect("begin write");
    txn.open_table(def).expect("open table").insert(key, value).expect("insert raw row");
    txn.commit().expect("commit raw row");
}

/// An in-memory database backend whose writes and syncs fail with `ENOSPC` while `full` is set
/// (a disk that filled up).
#[derive(Debug)]
pub(crate) struct FullDiskBackend {
    inner: redb::backends::InMemoryBackend,
    pub(crate) full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FullDiskBackend {
    pub(crate) fn new() -> FullDiskBackend {
        FullDiskBackend { inner: redb::backends::InMemoryBackend::new(), full: Default::default() }
    }

    fn check(&self) -> Result<(), std::io::Error> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(28))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for FullDiskBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
}
