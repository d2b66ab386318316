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
//! Cursors live in `DATA/mesh/sync-cursors.json`, written atomically (temp file, fsync, rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use buildmesh_protocol::signed::{Envelope, Verified};
use buildmesh_protocol::wire::{Kind, Message};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::rpc::{self, MAX_PAGE_ITEMS, Summary, SyncRequest, SyncResponse};
use crate::net::{NetConfig, NetHandle, RequestProtocol};
use crate::store::{AttestationEntry, AttestedOutput, FailureEntry, Store, StoreError, unix_ms};

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
    /// The cursor file could not be written.
    #[error("writing {path}: {source}")]
    Cursors {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A blocking task died.
    #[error("task failed: {0}")]
    Task(String),
}

/// Per-peer positions in the peer's sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Next attestation sequence number to fetch.
    pub attestations: u64,
    /// Next failure sequence number to fetch.
    pub failures: u64,
}

/// The persisted cursors of every peer.
#[derive(Debug)]
pub struct Cursors {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Cursor>>,
}

impl Cursors {
    /// Load `path` (a missing or unreadable file starts empty, which only costs a full re-sync).
    pub fn load(path: PathBuf) -> Cursors {
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), cause = %e, "sync cursor file unreadable; starting over");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Cursors { path, map: Mutex::new(map) }
    }

    /// The cursor for `peer`.
    pub fn get(&self, peer: &PeerId) -> Cursor {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).get(&peer.to_base58()).copied().unwrap_or_default()
    }

    /// Set and persist the cursor for `peer` (blocking).
    pub fn set(&self, peer: &PeerId, cursor: Cursor) -> Result<(), SyncError> {
        let json = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            map.insert(peer.to_base58(), cursor);
            serde_json::to_vec_pretty(&*map).unwrap_or_default()
        };
        write_atomically(&self.path, &json).map_err(|source| SyncError::Cursors { path: self.path.clone(), source })
    }
}

/// Write `bytes` to `path` so that a crash leaves either the old or the new contents.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
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
    /// Pages fetched.
    pub pages: u64,
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
        Message::Attestation(a) => Some(Entry::Attestation(AttestationEntry {
            id: v.id(),
            drv: a.drv.clone(),
            builder: a.builder,
            outputs: a
                .outputs
                .values()
                .map(|o| AttestedOutput { path: o.path.clone(), nar_hash: o.nar_hash(), nar_size: o.nar_size })
                .collect(),
            received_at: unix_ms(),
            envelope,
        })),
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

/// Commit a verified attestation or failure; `true` if it was new (blocking). A record already
/// stored costs a read, not a write transaction.
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

/// One anti-entropy run against `peer`. Newly committed records are sent to `deliver` one page
/// at a time, after they are durable (waiting while the receiver is busy, so memory stays bounded
/// by one page).
pub async fn sync_with(
    net: &NetHandle,
    store: &Store,
    cursors: &Arc<Cursors>,
    peer: PeerId,
    deliver: &tokio::sync::mpsc::Sender<Vec<Verified<Message>>>,
) -> Result<SyncReport, SyncError> {
    let max = NetConfig::default().sync_limits.max_response;
    let ask = |req: SyncRequest| {
        let net = net.clone();
        async move {
            let bytes = net
                .send_request(peer, RequestProtocol::Sync, rpc::encode(&req))
                .await
                .map_err(|e| SyncError::Request { peer, reason: e.to_string() })?;
            rpc::decode::<SyncResponse>("sync response", &bytes, max)
                .map_err(|e| SyncError::Request { peer, reason: e.to_string() })
        }
    };
    let (theirs_a, theirs_f) = match ask(SyncRequest::Summary).await? {
        SyncResponse::Summary { attestations, failures } => (attestations, failures),
        SyncResponse::Error(e) => return Err(SyncError::Request { peer, reason: e }),
        _ => return Err(SyncError::Unexpected { peer, got: "something else than a summary" }),
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
        let mut pos = if kind == Kind::Attestation { cursor.attestations } else { cursor.failures };
        if pos > theirs.next_seq {
            tracing::info!(%peer, cursor = pos, their_next = theirs.next_seq, "peer's sequence went back; syncing from 0");
            pos = 0;
        }
        for _ in 0..MAX_PAGES_PER_RUN {
            if pos >= theirs.next_seq {
                break;
            }
            let req = if kind == Kind::Attestation {
                SyncRequest::Attestations { from: pos, limit: MAX_PAGE_ITEMS }
            } else {
                SyncRequest::Failures { from: pos, limit: MAX_PAGE_ITEMS }
            };
            let (items, next, more) = match ask(req).await? {
                SyncResponse::Page { items, next, more } => (items, next, more),
                SyncResponse::Error(e) => return Err(SyncError::Request { peer, reason: e }),
                _ => return Err(SyncError::Unexpected { peer, got: "something else than a page" }),
            };
            report.pages += 1;
            let mut verified = Vec::with_capacity(items.len());
            for (_, bytes) in &items {
                match Envelope::decode(bytes).map_err(|e| e.to_string()).and_then(|env| {
                    if env.kind() != kind {
                        return Err(format!("a {} record in the {kind} sequence", env.kind()));
                    }
                    env.verify().map_err(|e| e.to_string())
                }) {
                    Ok(v) => verified.push(v),
                    Err(reason) => {
                        report.invalid += 1;
                        tracing::warn!(%peer, reason, "peer served a record that does not verify; skipped");
                    }
                }
            }
            let (store2, batch) = (store.clone(), verified);
            let (new, batch) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let mut fresh = Vec::new();
                store2.write(|w| {
                    for v in &batch {
                        let is_new = match entry_of(v) {
                            Some(Entry::Attestation(e)) => w.insert_attestation(&e)?.new,
                            Some(Entry::Failure(e)) => w.insert_failure(&e)?.new,
                            None => false,
                        };
                        fresh.push(is_new);
                    }
                    Ok(())
                })?;
                let new: Vec<Verified<Message>> =
                    batch.into_iter().zip(fresh).filter(|(_, n)| *n).map(|(v, _)| v).collect();
                Ok((new.len() as u64, new))
            })
            .await
            .map_err(|e| SyncError::Task(e.to_string()))??;
            if kind == Kind::Attestation {
                report.attestations += new;
            } else {
                report.failures += new;
            }
            if !batch.is_empty() && deliver.send(batch).await.is_err() {
                return Err(SyncError::Task("the receiver of synced records stopped".into()));
            }
            pos = next.max(pos);
            if kind == Kind::Attestation {
                cursor.attestations = pos;
            } else {
                cursor.failures = pos;
            }
            let (c, cur, p) = (cursors.clone(), cursor, peer);
            tokio::task::spawn_blocking(move || c.set(&p, cur)).await.map_err(|e| SyncError::Task(e.to_string()))??;
            if !more || items.is_empty() {
                break;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_persist_and_survive_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh/sync-cursors.json");
        let peer = PeerId::random();
        let c = Cursors::load(path.clone());
        assert_eq!(c.get(&peer), Cursor::default());
        c.set(&peer, Cursor { attestations: 5, failures: 2 }).unwrap();
        assert_eq!(Cursors::load(path.clone()).get(&peer), Cursor { attestations: 5, failures: 2 });
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(Cursors::load(path).get(&peer), Cursor::default());
    }
}
