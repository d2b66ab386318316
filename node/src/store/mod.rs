//! The node's durable state: a redb database plus content-addressed, zstd-compressed NAR blobs.
//!
//! ```text
//! <data_dir>/state.redb                       the database (tables: see `tables.rs`)
//! <data_dir>/blobs/<aa>/<blake3 hex>.nar.zst  NAR blobs, named by blake3 of the uncompressed NAR
//! <data_dir>/blobs/.tmp-*                     blobs being written (deleted on open after a crash)
//! ```
//!
//! ## Durability
//! Every public write is one redb write transaction committed with [`redb::Durability::Immediate`]:
//! when the call returns `Ok`, the change survives `kill -9` and power loss; when the process dies
//! before that, none of it is visible. Several changes that must appear together (a submitted
//! closure: its `.drv` files, source paths and builds) go through [`Store::write`] with a
//! [`StoreWriter`]. A blob file is complete and fsynced under its final name before the row that
//! names it commits, so no row ever points at a partial blob.
//!
//! ## Threads
//! The API is synchronous. [`Store`] is `Clone + Send + Sync` (an `Arc` inside); async callers use
//! `tokio::task::spawn_blocking`. Reads run concurrently with each other and with one writer
//! (MVCC); writes are serialised by redb.
//!
//! ## Trust
//! Rows are decoded defensively: a row that does not decode yields [`StoreError::Corrupt`] naming
//! the table and key; a blob whose bytes do not hash to its name yields
//! [`StoreError::BlobCorrupt`] (from [`Store::verify_nar`]) or an `InvalidData` read error (from
//! [`Store::open_nar`]). Nothing here panics on bad data.

mod blobs;
mod builds;
mod disk_use;
mod gc;
mod health;
mod manifests;
mod mesh;
mod paths;
mod peers;
pub mod plain;
mod records;
mod revisions;
mod signed;
mod tables;
mod trust_index;
mod uploads;
mod usage;
pub mod verified;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::ArtifactHash;
use buildmesh_protocol::store_path::StorePath;
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};
use thiserror::Error;

pub use blobs::{NarBlobReader, ServedNar};
pub use disk_use::DiskUse;
pub use gc::GcBlob;
pub use health::StoreFailure;
pub use manifests::{CheckedManifest, MAX_MANIFEST_BYTES};
pub use paths::capped_log;
pub use peers::{PeerRecord, PeerRows, Reachability};
pub use plain::PlainReader;
pub use records::{
    AttestationEntry, AttestedOutput, BlobInfo, BuildCounts, BuildFilter, BuildRecord, BuildState, EnqueueOutcome,
    EnqueueRequest, FailureEntry, Inserted, PathInfo, SetSummary, StoredAttestation, StoredFailure, SubmittedJob,
    SyncCursor,
};
pub use revisions::{RevisionEntry, RevisionInserted, StoredRevision};
pub use trust_index::{MAX_PATHS_PER_NAR_HASH, QuarantinedPath};
pub use uploads::UploadRow;
pub use usage::{SignerLimit, SignerUsage};

use blobs::BlobDir;
use tables::*;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "state.redb";
/// Directory name of the blobs inside the data directory.
pub const BLOB_DIR: &str = "blobs";

/// Tuning knobs of a [`Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// redb page cache size in bytes (default 64 MiB).
    pub cache_size: usize,
    /// Check every page's checksum when opening (slow on big databases; default `false`; redb
    /// always checks and repairs after an unclean shutdown).
    pub check_integrity_on_open: bool,
    /// zstd level of blobs at rest (default 3).
    pub zstd_level: i32,
    /// Largest build log kept per derivation, uncompressed (default 4 MiB); longer logs keep their
    /// tail.
    pub max_log_bytes: usize,
    /// Most bytes of uncompressed copies of large verified blobs kept for serving `.nar`
    /// ([`plain`]; default 1 GiB, `0`: none).
    pub plain_copy_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_size: 64 << 20,
            check_integrity_on_open: false,
            zstd_level: 3,
            max_log_bytes: 4 << 20,
            plain_copy_bytes: 1 << 30,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A filesystem operation on the data directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the NAR handed to [`Store::put_nar`] failed.
    #[error("reading the NAR to store failed: {source}")]
    Input {
        /// The reader's error.
        source: std::io::Error,
    },
    /// The database reported an error.
    #[error("database error while {op}: {source}")]
    Database {
        /// What was being done.
        op: &'static str,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// Another process has this data directory open.
    #[error("the database {path} is already open in another process (another node using this data dir?)")]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// The database was written by a newer buildmesh.
    #[error(
        "the database {path} has schema version {found}, this buildmesh supports up to {supported}; upgrade buildmesh"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: u64,
        /// The newest version this build understands.
        supported: u64,
    },
    /// A row does not decode.
    #[error("corrupt row in table `{table}` at key {key}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The key (display form).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A blob file does not match its id or record.
    #[error("NAR blob {blob} is corrupt: {reason}")]
    BlobCorrupt {
        /// The blob.
        blob: ArtifactHash,
        /// What is wrong.
        reason: String,
    },
    /// A blob recorded in the database has no file.
    #[error("NAR blob {blob} is recorded but its file {path} is missing")]
    BlobMissing {
        /// The blob.
        blob: ArtifactHash,
        /// Where its file should be.
        path: PathBuf,
    },
    /// A NAR was longer or shorter than expected.
    #[error("NAR size mismatch: expected {expected} bytes, got {actual_at_least}")]
    NarSizeMismatch {
        /// Expected NarSize.
        expected: u64,
        /// Bytes received (at least this many).
        actual_at_least: u64,
    },
    /// A NAR hashed to something else than expected.
    #[error("NarHash mismatch: expected {expected}, got {actual}")]
    NarHashMismatch {
        /// Expected NarHash.
        expected: NixHash,
        /// Actual NarHash.
        actual: NixHash,
    },
    /// A path was registered with a different NAR than the one already registered.
    #[error("store path {path} is already registered with NarHash {existing}, refusing {new}")]
    PathConflict {
        /// The path.
        path: StorePath,
        /// The registered NarHash.
        existing: NixHash,
        /// The NarHash offered.
        new: NixHash,
    },
    /// A path's record does not match the blob it names.
    #[error("store path {path} names blob {blob}, which {reason}")]
    BlobMismatch {
        /// The path.
        path: StorePath,
        /// The blob.
        blob: ArtifactHash,
        /// What is wrong.
        reason: String,
    },
    /// A derivation was stored again with different bytes.
    #[error("derivation {drv} is already stored with different contents")]
    DrvConflict {
        /// The derivation.
        drv: StorePath,
    },
    /// A key the operation needs does not exist.
    #[error("no {key} in table `{table}`")]
    NotFound {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
    },
    /// The database failed (an I/O error such as a full disk) and is closed until the node
    /// reopens it ([`Store::recover`]).
    #[error("the database is unavailable after a failure ({cause}); the node is reopening it")]
    Unavailable {
        /// The failure that closed it.
        cause: String,
    },
    /// A manifest was not stored: too large, or its bytes do not hash to the hash it was given as.
    #[error("manifest {hash} refused: {reason}")]
    ManifestRefused {
        /// The hash it was given as (hex).
        hash: String,
        /// What is wrong.
        reason: String,
    },
    /// A build state change that the state machine does not allow.
    #[error("build {drv} is {from}, cannot become {to}")]
    InvalidTransition {
        /// The derivation.
        drv: StorePath,
        /// Its state.
        from: BuildState,
        /// The state asked for.
        to: BuildState,
    },
}

/// Attach an operation name to a redb error.
pub(crate) trait DbResultExt<T> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbResultExt<T> for Result<T, E> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Database { op, source: Box::new(e.into()) })
    }
}

/// The current time in Unix milliseconds (for the `now` parameters).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Inner {
    /// The open database; `None` while [`Store::recover`] reopens it after a failure.
    db: RwLock<Option<Arc<Database>>>,
    /// The failure that broke the database, until it works again.
    failure: Mutex<Option<StoreFailure>>,
    /// Whether the database is a file [`Store::recover`] can reopen (not a custom backend).
    reopenable: bool,
    blobs: BlobDir,
    db_path: PathBuf,
    options: StoreOptions,
    /// Held shared while a blob is written and recorded, exclusively while one is collected
    /// (see [`gc`]).
    gc_lock: RwLock<()>,
    /// Blob accesses not yet written to `blob_access` (see [`gc`]).
    access: Mutex<std::collections::HashMap<ArtifactHash, u64>>,
    /// Why the node is over its disk limits and does not take new builds (`None`: it is not).
    disk_pressure: Mutex<Option<String>>,
    /// Bumped after every commit that added a manifest or a revision header (what
    /// [`Store::first_revision_of_drvs`] reads), so that its cache knows when to start over.
    revision_index_epoch: std::sync::atomic::AtomicU64,
    /// The answers of [`Store::first_revision_of_drvs`] at one epoch (only the derivations its
    /// last call asked for: the scheduler's pending builds).
    first_revision_cache: Mutex<manifests::FirstRevisionCache>,
}

/// The node's durable state. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("db", &self.inner.db_path).field("blobs", &self.inner.blobs).finish()
    }
}

impl Store {
    /// Open (creating when missing) the store in `data_dir` with default options.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(data_dir, StoreOptions::default())
    }

    /// Open (creating when missing) the store in `data_dir`.
    pub fn open_with(data_dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let data_dir = data_dir.as_ref();
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            op: "create data directory",
            path: data_dir.to_path_buf(),
            source,
        })?;
        let db_path = data_dir.join(DB_FILE);
        let builder = db_builder(&options);
        if !db_path.exists() {
            create_database_atomically(&builder, data_dir, &db_path)?;
        }
        let db = open_database(&builder, &db_path)?;
        remove_database_drafts(data_dir)?;
        let blobs = BlobDir::open(data_dir.join(BLOB_DIR), options.zstd_level, options.plain_copy_bytes)?;
        Store::init(db, blobs, db_path, options, true)
    }

    /// Open a store whose database lives in `backend` (e.g. `redb::backends::InMemoryBackend` for
    /// tests) and whose blobs live in `blob_dir`.
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        blob_dir: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(options.cache_size);
        let db = builder.create_with_backend(backend).ctx("opening the database")?;
        let blobs = BlobDir::open(blob_dir.as_ref().to_path_buf(), options.zstd_level, options.plain_copy_bytes)?;
        Store::init(db, blobs, PathBuf::from("<backend>"), options, false)
    }

    fn init(
        db: Database,
        blobs: BlobDir,
        db_path: PathBuf,
        options: StoreOptions,
        reopenable: bool,
    ) -> Result<Store, StoreError> {
        let txn = db.begin_write().ctx("starting the schema transaction")?;
        {
            let mut meta = txn.open_table(META).ctx("opening table meta")?;
            let found = match meta.get(META_SCHEMA_VERSION).ctx("reading the schema version")? {
                Some(v) => Some(read_u64("meta", META_SCHEMA_VERSION, v.value())?),
                None => None,
            };
            match found {
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::SchemaTooNew { path: db_path, found, supported: SCHEMA_VERSION });
                }
                Some(_) => {}
                None => {
                    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())
                        .ctx("writing the schema version")?;
                }
            }
        }
        // Create every table so that read transactions never see a missing one.
        txn.open_table(PATHS).ctx("creating table paths")?;
        txn.open_table(BLOBS).ctx("creating table blobs")?;
        txn.open_table(BLOBS_BY_NAR_HASH).ctx("creating table blobs_by_nar_hash")?;
        txn.open_table(DRVS).ctx("creating table drvs")?;
        txn.open_table(BUILDS).ctx("creating table builds")?;
        txn.open_table(BUILD_QUEUE).ctx("creating table build_queue")?;
        txn.open_table(LOGS).ctx("creating table logs")?;
        txn.open_table(ATTESTATIONS).ctx("creating table attestations")?;
        txn.open_table(ATT_BY_OUTPUT).ctx("creating table attestations_by_output")?;
        txn.open_table(ATT_BY_DRV).ctx("creating table attestations_by_drv")?;
        txn.open_table(ATT_SEQ).ctx("creating table attestation_seq")?;
        txn.open_table(FAILURES).ctx("creating table failures")?;
        txn.open_table(FAIL_BY_DRV).ctx("creating table failures_by_drv")?;
        txn.open_table(FAIL_SEQ).ctx("creating table failure_seq")?;
        txn.open_table(SYNC_CURSORS).ctx("creating table sync_cursors")?;
        txn.open_table(MESH_SUBMISSIONS).ctx("creating table mesh_submissions")?;
        txn.open_table(trust_index::NAR_HASH_PATHS).ctx("creating table nar_hash_paths")?;
        txn.open_table(trust_index::QUARANTINE).ctx("creating table quarantine")?;
        txn.open_table(SIGNER_USAGE).ctx("creating table signer_usage")?;
        txn.open_table(REVISIONS).ctx("creating table revisions")?;
        txn.open_table(REVISION_SEQ).ctx("creating table revision_seq")?;
        txn.open_table(REVISIONS_BY_NAME).ctx("creating table revisions_by_name")?;
        txn.open_table(REVISIONS_BY_MANIFEST).ctx("creating table revisions_by_manifest")?;
        txn.open_table(MANIFESTS).ctx("creating table manifests")?;
        txn.open_table(DRV_MANIFESTS).ctx("creating table drv_manifests")?;
        txn.open_table(REVISION_CURSORS).ctx("creating table revision_cursors")?;
        txn.open_table(PEERS).ctx("creating table peers")?;
        txn.open_table(gc::GC_PINS).ctx("creating table gc_pins")?;
        txn.open_table(gc::BLOB_ACCESS).ctx("creating table blob_access")?;
        txn.open_table(uploads::SUBMITTER_UPLOADS).ctx("creating table submitter_uploads")?;
        usage::backfill(&txn)?;
        txn.commit().ctx("committing the schema transaction")?;
        // The database is open exclusively, so temp blobs are leftovers of a crash.
        let removed = blobs.remove_temp_files()?;
        if removed > 0 {
            tracing::info!(removed, "removed unfinished blob files left by a crash");
        }
        let store = Store {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(Arc::new(db))),
                failure: Mutex::new(None),
                reopenable,
                blobs,
                db_path,
                options,
                gc_lock: RwLock::new(()),
                access: Mutex::default(),
                disk_pressure: Mutex::new(None),
                revision_index_epoch: Default::default(),
                first_revision_cache: Mutex::default(),
            }),
        };
        store.write(|w| w.backfill_nar_hash_index())?;
        Ok(store)
    }

    /// Say why the node is over its disk limits (`Some`), or that it is not any more (`None`).
    /// The mesh announces no build slots while this is set, and the API and `explain` show it.
    pub fn set_disk_pressure(&self, reason: Option<String>) {
        *self.inner.disk_pressure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    /// Why the node is over its disk limits and takes no new builds, if it is.
    pub fn disk_pressure(&self) -> Option<String> {
        self.inner.disk_pressure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The directory of the blob files (its filesystem is the one `min_free_bytes` watches).
    pub fn blob_dir(&self) -> &Path {
        self.inner.blobs.root()
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Run `f` in one durable write transaction: everything it does commits together when it
    /// returns `Ok`, and nothing does when it returns `Err` (or the process dies first). Inside
    /// `f`, write only through the [`StoreWriter`]: calling a writing `Store` method there would
    /// wait forever for this transaction (reads are fine).
    ///
    /// An I/O error (a full disk) marks the store failed ([`Store::failure`]) until
    /// [`Store::recover`] finds it working again.
    pub fn write<T>(&self, f: impl FnOnce(&mut StoreWriter<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let result = self.write_once(f);
        if let Err(e) = &result {
            self.note_error(e);
        }
        result
    }

    fn write_once<T>(&self, f: impl FnOnce(&mut StoreWriter<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut txn = self.db()?.begin_write().ctx("starting a write transaction")?;
        txn.set_durability(Durability::Immediate).ctx("setting durability")?;
        let (result, revision_index_changed) = {
            let mut w = StoreWriter { txn: &txn, store: &self.inner, revision_index_changed: false };
            let result = f(&mut w);
            (result, w.revision_index_changed)
        };
        match result {
            Ok(v) => {
                txn.commit().ctx("committing")?;
                if revision_index_changed {
                    // After the commit: a reader that sees the new epoch also sees the new rows.
                    self.inner.revision_index_epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                Ok(v)
            }
            Err(e) => {
                txn.abort().ctx("aborting")?;
                Err(e)
            }
        }
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        let result = self.db()?.begin_read().ctx("starting a read transaction");
        if let Err(e) = &result {
            self.note_error(e);
        }
        result
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let meta = txn.open_table(META).ctx("opening table meta")?;
        let v = meta
            .get(META_SCHEMA_VERSION)
            .ctx("reading meta")?
            .ok_or_else(|| StoreError::NotFound { table: "meta", key: META_SCHEMA_VERSION.to_string() })?;
        read_u64("meta", META_SCHEMA_VERSION, v.value())
    }
}

/// Writes inside one transaction of [`Store::write`].
pub struct StoreWriter<'a> {
    txn: &'a WriteTransaction,
    store: &'a Inner,
    /// Whether this transaction added a manifest or a revision header (see
    /// [`Inner::revision_index_epoch`]).
    revision_index_changed: bool,
}

impl fmt::Debug for StoreWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreWriter").field("db", &self.store.db_path).finish()
    }
}

impl StoreWriter<'_> {
    /// Read a u64 counter from `meta` (0 when absent), store `value + 1`, return `value`.
    fn next_counter(&self, key: &'static str) -> Result<u64, StoreError> {
        let mut meta = self.txn.open_table(META).ctx("opening table meta")?;
        let current = match meta.get(key).ctx("reading meta")? {
            Some(v) => read_u64("meta", key, v.value())?,
            None => 0,
        };
        meta.insert(key, (current + 1).to_le_bytes().as_slice()).ctx("writing meta")?;
        Ok(current)
    }

    /// XOR `id` into the 32-byte fingerprint stored at `key`.
    fn xor_into(&self, key: &'static str, id: &[u8; 32]) -> Result<(), StoreError> {
        let mut meta = self.txn.open_table(META).ctx("opening table meta")?;
        let mut acc = match meta.get(key).ctx("reading meta")? {
            Some(v) => read_array32("meta", key, v.value())?,
            None => [0u8; 32],
        };
        for (a, b) in acc.iter_mut().zip(id) {
            *a ^= b;
        }
        meta.insert(key, acc.as_slice()).ctx("writing meta")?;
        Ok(())
    }
}

/// The redb builder for `options`.
fn db_builder(options: &StoreOptions) -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(options.cache_size).set_check_integrity_on_open(options.check_integrity_on_open);
    builder
}

/// Open the database file at `db_path`.
fn open_database(builder: &redb::Builder, db_path: &Path) -> Result<Database, StoreError> {
    builder.open(db_path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path: db_path.to_path_buf() },
        e => StoreError::Database { op: "opening the database", source: Box::new(e.into()) },
    })
}

/// Create a new database file so that a crash in the middle never leaves a half-initialised
/// `state.redb` (which redb would refuse to open): initialise it under a private name, then
/// hard-link it into place (which fails instead of replacing a database another process created
/// meanwhile) and fsync the directory.
fn create_database_atomically(builder: &redb::Builder, data_dir: &Path, db_path: &Path) -> Result<(), StoreError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    };
    let staging = data_dir.join(format!("{DB_FILE}.creating-{}", std::process::id()));
    match std::fs::remove_file(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale database draft", &staging)(e)),
    }
    let db = builder.create(&staging).ctx("creating the database")?;
    db.close().ctx("closing the new database")?;
    std::fs::File::open(&staging).and_then(|f| f.sync_all()).map_err(io("fsync new database", &staging))?;
    match std::fs::hard_link(&staging, db_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("link new database into place", db_path)(e)),
    }
    match std::fs::remove_file(&staging) {
        // Another store that opened the database meanwhile may have removed the draft already.
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove database draft", &staging)(e)),
    }
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(io("fsync data directory", data_dir))?;
    Ok(())
}

/// Remove drafts left by a crash during [`create_database_atomically`] (call while holding the
/// database open, i.e. exclusively).
fn remove_database_drafts(data_dir: &Path) -> Result<(), StoreError> {
    let prefix = format!("{DB_FILE}.creating-");
    let entries = std::fs::read_dir(data_dir).map_err(|source| StoreError::Io {
        op: "list data directory",
        path: data_dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { op: "remove database draft", path, source }),
            }
        }
    }
    Ok(())
}

/// Read a little-endian u64 value.
fn read_u64(table: &'static str, key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_le_bytes(arr))
}

fn read_array32(table: &'static str, key: &str, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: format!("expected 32 bytes, found {}", bytes.len()),
    })
}

/// Read the u64 counter at `key` from a read transaction's `meta` (0 when absent).
fn meta_u64(txn: &ReadTransaction, key: &'static str) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).ctx("opening table meta")?;
    match meta.get(key).ctx("reading meta")? {
        Some(v) => read_u64("meta", key, v.value()),
        None => Ok(0),
    }
}

fn meta_array32(txn: &ReadTransaction, key: &'static str) -> Result<[u8; 32], StoreError> {
    let meta = txn.open_table(META).ctx("opening table meta")?;
    match meta.get(key).ctx("reading meta")? {
        Some(v) => read_array32("meta", key, v.value()),
        None => Ok([0u8; 32]),
    }
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod plain_tests;

#[cfg(test)]
mod mesh_tests;

#[cfg(test)]
mod crash_tests;

#[cfg(test)]
mod gc_tests;

#[cfg(test)]
mod model_tests;

#[cfg(test)]
pub(crate) mod revisions_tests;
