//! Anti-entropy: pulling the attestations and failures a peer has and this node lacks.
//!
//! When a peer connects (and every `sync_interval_ms` with one connected peer), the node asks for
//! the peer's set fingerprints ([`SyncRequest::Summary`]: count and XOR of message ids). When a
//! set differs from the local one, it pages through the peer's records in the peer's insertion
//! order, from a per-peer cursor (the next sequence number it has not fetched from that peer),
//! [`MAX_PAGE_ITEMS`] at a time. Each record is decoded with its size checked, verified (kind,
//! signature, payload) and committed to the store before it is used (given to the state machine);
//! the cursor is persisted after the page is committed, so a crash re-fetches at most one page.
//! Sets merge by union; the pull is one-directional, but the peer pulls too when it sees the
//! connection, so both converge. A cursor beyond the peer's next sequence number (the peer lost
//! its database) is reset to 0.
//!
//! Answers are read as every answer from a peer is ([`super::answers`]): against the node's
//! configured `sync_limits.max_response`, with one strike ([`NetHandle::malformed`]) for an
//! answer that does not decode or is of another kind than asked, and one per page with records
//! that are not envelopes of the sequence's kind or whose signature does not verify. An error
//! answer is never counted (an older build answers a shard-filtered request with one, and is
//! then asked for everything), nor an answer variant this build does not know, a record of
//! another protocol version, or a correctly signed record that fails this build's checks (it is
//! skipped: a later build may check it differently).
//!
//! Cursors live in the store's redb database (table `sync_cursors`, one row per peer), each set in
//! its own durable transaction. An older build kept them in `DATA/mesh/sync-cursors.json`:
//! [`Cursors::load`] imports that file once and renames it (see `import_legacy_json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use buildmesh_protocol::signed::{Envelope, Verified};
use buildmesh_protocol::wire::{Kind, Message};
use libp2p::PeerId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::answers;
use super::quota::{self, Quotas, Stored};
use super::rpc::{MAX_PAGE_ITEMS, ShardFilter, Summary, SyncRequest, SyncResponse};
use crate::net::NetHandle;
use crate::store::{AttestationEntry, FailureEntry, Store, StoreError, unix_ms};

/// Pages pulled from one peer in one run at most (bounds one run; the next run continues).
const MAX_PAGES_PER_RUN: usize = 4096;

/// Why a sync run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The request failed.
    #[error("sync request to {peer}: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer answered something else than asked.
    #[error("{peer} answered a sync request with {got}")]
    Unexpected {
        /// The peer.
        peer: PeerId,
        /// What it answered.
        got: &'static str,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("task failed: {0}")]
    Task(String),
}

/// Per-peer positions in the peer's sequences (the store's `sync_cursors` row).
pub use crate::store::SyncCursor as Cursor;

/// The persisted cursors of every peer: rows of the store's `sync_cursors` table, with an
/// in-memory copy of those already read.
#[derive(Debug)]
pub struct Cursors {
    store: Store,
    /// Cursors read or written so far, by base58 peer id (always equal to the stored row).
    map: Mutex<BTreeMap<String, Cursor>>,
}

impl Cursors {
    /// The cursors kept in `store` (blocking). First imports `legacy_file`, the JSON file in which
    /// older builds kept them (`DATA/mesh/sync-cursors.json`), when it exists: see
    /// `import_legacy_json`. Fails only when the store does (or the imported file cannot be set
    /// aside).
    pub fn load(store: Store, legacy_file: &Path) -> Result<Cursors, StoreError> {
        import_legacy_json(legacy_file, "sync cursor", |map: BTreeMap<String, Cursor>| {
            store.write(|w| {
                for (peer, cursor) in &map {
                    w.put_sync_cursor(peer, cursor)?;
                }
                Ok(map.len())
            })
        })?;
        Ok(Cursors { store, map: Mutex::new(BTreeMap::new()) })
    }

    /// The cursor for `peer` (the first call per peer reads the store). A stored cursor that cannot
    /// be read is logged and treated as absent (a full re-sync with that peer); its row stays until
    /// the next [`Cursors::set`] replaces it.
    pub fn get(&self, peer: &PeerId) -> Cursor {
        let key = peer.to_base58();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(&key) {
            return *c;
        }
        match self.store.get_sync_cursor(&key) {
            Ok(c) => *map.entry(key).or_insert(c.unwrap_or_default()),
            Err(e) => {
                tracing::warn!(%peer, cause = %e, "sync cursor unreadable; pulling from this peer from the start");
                Cursor::default()
            }
        }
    }

    /// Set and persist the cursor for `peer` (blocking): committed to the store before it returns.
    pub fn set(&self, peer: &PeerId, cursor: Cursor) -> Result<(), SyncError> {
        let key = peer.to_base58();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        self.store.put_sync_cursor(&key, &cursor)?;
        map.insert(key, cursor);
        Ok(())
    }
}

/// Move a JSON state file written by an older build (before that state moved into the store) into
/// the store, once (blocking). `what` names the content in log lines.
///
/// - The file does not exist: nothing to do.
/// - It parses as `T`: `import` commits its content to the store (in one transaction; entries
///   replace stored ones with the same key), then the file is renamed to `<name>.imported` (never
///   deleted) and the directory synced.
/// - It cannot be read or does not parse: a warning names the file, which is renamed to
///   `<name>.unreadable` and left for the operator; the store's content is used as it is.
///
/// A name already taken gets a numeric suffix (`<name>.imported.1`, ...), so nothing earlier is
/// overwritten. When the file cannot be renamed this fails: it must not be imported again over
/// newer state at the next start. A crash between the import and the rename imports the same
/// content again, which changes nothing.
pub(crate) fn import_legacy_json<T: DeserializeOwned>(
    file: &Path,
    what: &str,
    import: impl FnOnce(T) -> Result<usize, StoreError>,
) -> Result<(), StoreError> {
    let parsed = match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice::<T>(&bytes).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let aside = |suffix: &'static str| {
        set_aside(file, suffix).map_err(|source| StoreError::Io {
            op: "set aside a legacy state file",
            path: file.to_path_buf(),
            source,
        })
    };
    match parsed {
        Ok(value) => {
            let n = import(value)?;
            let to = aside("imported")?;
            tracing::info!(file = %file.display(), renamed_to = %to.display(), entries = n, "imported the {what} file into the store");
        }
        Err(cause) => {
            let to = aside("unreadable")?;
            tracing::warn!(file = %file.display(), renamed_to = %to.display(), %cause, "{what} file unreadable; kept it aside, not imported");
        }
    }
    Ok(())
}

/// Rename `file` to `<file>.<suffix>` (or `<file>.<suffix>.<n>` when taken) and sync its directory.
fn set_aside(file: &Path, suffix: &str) -> std::io::Result<PathBuf> {
    let mut base = file.as_os_str().to_os_string();
    base.push(format!(".{suffix}"));
    let mut target = PathBuf::from(&base);
    let mut n = 0u32;
    while target.symlink_metadata().is_ok() {
        n += 1;
        let mut name = base.clone();
        name.push(format!(".{n}"));
        target = PathBuf::from(name);
    }
    std::fs::rename(file, &target)?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()?;
    Ok(target)
}

/// What a run pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// New attestations committed.
    pub attestations: u64,
    /// New failures committed.
    pub failures: u64,
    /// Records that did not verify (skipped).
    pub invalid: u64,
    /// Records skipped because their signer is at its storage quota ([`super::quota`]).
    #[serde(default)]
    pub over_quota: u64,
    /// Pages fetched.
    pub pages: u64,
    /// Of those, pages asked with a shard filter ([`SyncScope::filter`]).
    #[serde(default)]
    pub shard_pages: u64,
    /// Of those, pages with records no build serves (not an envelope of the sequence's kind, or
    /// a bad signature; [`super::answers::check_record`]): each cost the peer a strike
    /// ([`NetHandle::malformed`]).
    #[serde(default)]
    pub garbage_pages: u64,
}

/// The store entry of a verified attestation or failure (`None` for other kinds).
#[derive(Debug)]
pub enum Entry {
    /// An attestation.
    Attestation(AttestationEntry),
    /// A failure.
    Failure(FailureEntry),
}

/// The store entry for a verified message, if it is one the store keeps.
pub fn entry_of(v: &Verified<Message>) -> Option<Entry> {
    let envelope = buildmesh_protocol::wire::Encode::to_bytes(v.envelope());
    match v.value() {
        Message::Attestation(a) => Some(Entry::Attestation(AttestationEntry::of(v.id(), a, envelope, unix_ms()))),
        Message::BuildFailure(f) => Some(Entry::Failure(FailureEntry {
            id: v.id(),
            drv: f.drv.clone(),
            builder: f.builder,
            attempt: f.attempt,
            received_at: unix_ms(),
            envelope,
        })),
        _ => None,
    }
}

/// Commit a verified attestation or failure without a quota (this node's own); `true` if it was
/// new (blocking). A record already stored costs a read, not a write transaction. Received
/// records go through [`quota::commit`].
pub fn commit(store: &Store, v: &Verified<Message>) -> Result<bool, StoreError> {
    let known = match v.value() {
        Message::Attestation(_) => store.has_attestation(&v.id())?,
        Message::BuildFailure(_) => store.get_failure(&v.id())?.is_some(),
        _ => return Ok(false),
    };
    if known {
        return Ok(false);
    }
    match entry_of(v) {
        Some(Entry::Attestation(e)) => Ok(store.insert_attestation(&e)?.new),
        Some(Entry::Failure(e)) => Ok(store.insert_failure(&e)?.new),
        None => Ok(false),
    }
}

/// What one run asks for: every record, or only those of some shards (issue 18).
#[derive(Debug, Clone, Default)]
pub struct SyncScope {
    /// `Some`: only the records of these shards ([`SyncRequest::ShardAttestations`]); a peer
    /// that cannot filter (an older build) is asked for everything instead.
    pub filter: Option<ShardFilter>,
    /// Page from sequence number 0 instead of the peer's cursor: the filter gained a shard since
    /// the last run with this peer, and the records of that shard the cursor passed were skipped.
    pub from_zero: bool,
}

/// One anti-entropy run against `peer`. Newly committed records are sent to `deliver` one page
/// at a time, after they are durable (waiting while the receiver is busy, so memory stays bounded
/// by one page). Answers are read with [`super::answers`] (the node's configured cap; garbage
/// costs `peer` a strike).
pub async fn sync_with(
    net: &NetHandle,
    store: &Store,
    cursors: &Arc<Cursors>,
    quotas: &Arc<Quotas>,
    peer: PeerId,
    deliver: &tokio::sync::mpsc::Sender<Vec<Verified<Message>>>,
    scope: SyncScope,
) -> Result<SyncReport, SyncError> {
    let mut filter = scope.filter;
    let ask = |req: SyncRequest| async move {
        answers::ask_sync(net, peer, &req).await.map_err(|e| SyncError::Request { peer, reason: e.to_string() })
    };
    let unexpected = |got: &'static str| async move {
        answers::wrong_kind(net, peer, "sync answer of another kind").await;
        SyncError::Unexpected { peer, got }
    };
    let (theirs_a, theirs_f) = match ask(SyncRequest::Summary).await? {
        SyncResponse::Summary { attestations, failures } => (attestations, failures),
        SyncResponse::Error(e) => return Err(SyncError::Request { peer, reason: e }),
        _ => return Err(unexpected("something else than a summary").await),
    };
    let (ours_a, ours_f): (Summary, Summary) = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            Ok((store.attestation_summary()?.into(), store.failure_summary()?.into()))
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??
    };
    let mut report = SyncReport::default();
    let mut cursor = cursors.get(&peer);
    for kind in [Kind::Attestation, Kind::BuildFailure] {
        let (theirs, ours) = if kind == Kind::Attestation { (theirs_a, ours_a) } else { (theirs_f, ours_f) };
        if theirs.same_set(&ours) {
            continue;
        }
        let mut pos = match (scope.from_zero, kind) {
            (true, _) => 0,
            (false, Kind::Attestation) => cursor.attestations,
            (false, _) => cursor.failures,
        };
        if pos > theirs.next_seq {
            tracing::info!(%peer, cursor = pos, their_next = theirs.next_seq, "peer's sequence went back; syncing from 0");
            pos = 0;
        }
        for _ in 0..MAX_PAGES_PER_RUN {
            if pos >= theirs.next_seq {
                break;
            }
            let (from, limit) = (pos, MAX_PAGE_ITEMS);
            let req = match (filter.clone(), kind == Kind::Attestation) {
                (Some(filter), true) => SyncRequest::ShardAttestations { from, limit, filter },
                (Some(filter), false) => SyncRequest::ShardFailures { from, limit, filter },
                (None, true) => SyncRequest::Attestations { from, limit },
                (None, false) => SyncRequest::Failures { from, limit },
            };
            let (items, next, more) = match ask(req).await? {
                SyncResponse::Page { items, next, more } => (items, next, more),
                SyncResponse::Error(e) if filter.is_some() => {
                    // An older build (or another shard count): ask it for everything.
                    tracing::debug!(%peer, cause = %e, "peer does not filter sync pages by shard; asking for all");
                    filter = None;
                    continue;
                }
                SyncResponse::Error(e) => return Err(SyncError::Request { peer, reason: e }),
                _ => return Err(unexpected("something else than a page").await),
            };
            report.pages += 1;
            report.shard_pages += u64::from(filter.is_some());
            let mut verified = Vec::with_capacity(items.len());
            let mut garbage = 0u64;
            for (_, bytes) in &items {
                match answers::check_record(bytes, kind, Envelope::verify) {
                    Ok(v) => verified.push(v),
                    Err(refused) => {
                        report.invalid += 1;
                        garbage += u64::from(refused.garbage);
                        tracing::warn!(%peer, reason = refused.reason, "peer served a record that does not verify; skipped");
                    }
                }
            }
            if garbage > 0 {
                // One strike per page, however many of its records are garbage.
                report.garbage_pages += 1;
                net.malformed(peer, "sync page").await;
            }
            let (store2, batch, q) = (store.clone(), verified, quotas.clone());
            let (new, over, batch) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let mut outcome = Vec::new();
                store2.write(|w| {
                    for v in &batch {
                        outcome.push(quota::insert(w, v, &q)?);
                    }
                    Ok(())
                })?;
                let over = outcome.iter().filter(|o| **o == Stored::OverQuota).count() as u64;
                let new: Vec<Verified<Message>> =
                    batch.into_iter().zip(outcome).filter(|(_, o)| *o == Stored::New).map(|(v, _)| v).collect();
                Ok((new.len() as u64, over, new))
            })
            .await
            .map_err(|e| SyncError::Task(e.to_string()))??;
            if over > 0 {
                tracing::info!(%peer, records = over, "skipped synced records whose signer is at its storage quota");
            }
            report.over_quota += over;
            if kind == Kind::Attestation {
                report.attestations += new;
            } else {
                report.failures += new;
            }
            if !batch.is_empty() && deliver.send(batch).await.is_err() {
                return Err(SyncError::Task("the receiver of synced records stopped".into()));
            }
            let before = pos;
            pos = next.max(pos);
            if kind == Kind::Attestation {
                cursor.attestations = pos;
            } else {
                cursor.failures = pos;
            }
            let (c, cur, p) = (cursors.clone(), cursor, peer);
            tokio::task::spawn_blocking(move || c.set(&p, cur)).await.map_err(|e| SyncError::Task(e.to_string()))??;
            // A filtered page may be empty and have more; any page that does not move on ends.
            if !more || pos == before || (items.is_empty() && filter.is_none()) {
                break;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::test_support::{memory_store, put_raw_row};

    fn legacy(dir: &Path) -> PathBuf {
        dir.join("mesh/sync-cursors.json")
    }

    #[test]
    fn cursors_round_trip_through_a_reopened_store() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        {
            let c = Cursors::load(Store::open(dir.path()).unwrap(), &legacy(dir.path())).unwrap();
            assert_eq!(c.get(&peer), Cursor::default());
            c.set(&peer, Cursor { attestations: 5, failures: 2 }).unwrap();
            assert_eq!(c.get(&peer), Cursor { attestations: 5, failures: 2 });
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_sync_cursor(&peer.to_base58()).unwrap(), Some(Cursor { attestations: 5, failures: 2 }));
        let c = Cursors::load(store, &legacy(dir.path())).unwrap();
        assert_eq!(c.get(&peer), Cursor { attestations: 5, failures: 2 });
        assert_eq!(c.get(&PeerId::random()), Cursor::default());
    }

    #[test]
    fn legacy_cursor_file_is_imported_then_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let file = legacy(dir.path());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let old = BTreeMap::from([
            (p1.to_base58(), Cursor { attestations: 9, failures: 1 }),
            (p2.to_base58(), Cursor { attestations: 3, failures: 4 }),
        ]);
        std::fs::write(&file, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
        let c = Cursors::load(Store::open(dir.path()).unwrap(), &file).unwrap();
        assert_eq!(c.get(&p1), Cursor { attestations: 9, failures: 1 });
        assert!(!file.exists());
        let imported = dir.path().join("mesh/sync-cursors.json.imported");
        assert_eq!(std::fs::read(&imported).unwrap(), serde_json::to_vec_pretty(&old).unwrap());
        drop(c);
        // The store has them; a later file does not overwrite the earlier backup.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list_sync_cursors().unwrap().len(), 2);
        std::fs::write(&file, b"{}").unwrap();
        let c = Cursors::load(store, &file).unwrap();
        assert_eq!(c.get(&p2), Cursor { attestations: 3, failures: 4 });
        assert!(imported.exists());
        assert!(dir.path().join("mesh/sync-cursors.json.imported.1").exists());
    }

    #[test]
    fn unreadable_legacy_cursor_file_is_kept_and_load_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let file = legacy(dir.path());
        let store = Store::open(dir.path()).unwrap();
        store.put_sync_cursor(&peer.to_base58(), &Cursor { attestations: 2, failures: 0 }).unwrap();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"{not json").unwrap();
        let c = Cursors::load(store, &file).unwrap();
        assert_eq!(c.get(&peer), Cursor { attestations: 2, failures: 0 });
        assert!(!file.exists());
        assert_eq!(std::fs::read(dir.path().join("mesh/sync-cursors.json.unreadable")).unwrap(), b"{not json");
    }

    #[test]
    fn corrupt_stored_cursor_means_a_full_resync_until_set() {
        let (store, dir) = memory_store();
        let peer = PeerId::random();
        put_raw_row(&store, "sync_cursors", &peer.to_base58(), &[0xff; 3]);
        let c = Cursors::load(store.clone(), &legacy(dir.path())).unwrap();
        assert_eq!(c.get(&peer), Cursor::default());
        assert!(matches!(
            store.get_sync_cursor(&peer.to_base58()),
            Err(StoreError::Corrupt { table: "sync_cursors", .. })
        ));
        c.set(&peer, Cursor { attestations: 1, failures: 1 }).unwrap();
        assert_eq!(store.get_sync_cursor(&peer.to_base58()).unwrap(), Some(Cursor { attestations: 1, failures: 1 }));
    }
}
