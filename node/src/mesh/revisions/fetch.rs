//! Fetching manifests from peers in the background (see the module docs of [`super`]).
//!
//! A header whose manifest is not stored is queued ([`ManifestFetcher::want`]; the queue holds
//! [`FETCH_QUEUE`] headers, a full queue drops the request and the next retry round picks it up);
//! at most [`FETCH_CONCURRENCY`] manifests are fetched at once. One fetch asks the submitter
//! first, then every other connected peer (at most [`MAX_PEERS_TRIED`]), chunk by chunk over
//! `/buildmesh/sync/1` ([`SyncRequest::Manifest`]: at most 1 MiB of the zstd-compressed bytes each).
//!
//! Checks, in order ([`fetch_from`]): the compressed length a peer announces must fit the signed
//! `manifest_size` (at most [`compressed_bound`] of it) and the submitter's storage quota before
//! the rest is fetched; every chunk must be the announced length; the bytes must decompress to at
//! most `manifest_size` bytes; then [`RevisionHeader::check_manifest`]: exactly `manifest_size`,
//! blake3 equal to the signed hash, strict decode, counts as signed. Only then is the manifest
//! stored (with its derivations indexed). A peer that fails a check is skipped for the next one.
//! A peer whose bytes were not the signed manifest (a chunk breaking the protocol, an announced
//! length beyond the bound, bytes that do not decompress, hash or decode as signed) or that
//! answered with another kind is not asked for *that* manifest again for [`MISMATCH_SKIP`]
//! (at most [`MAX_SKIPPED`] peers per manifest; [`crate::mesh::skips`] for the bounds): without
//! it, such a peer would cost this node up to the signed size in bandwidth at every retry round.
//! Answers are read as every answer from a peer is ([`crate::mesh::answers`]): the node's
//! configured cap, and one strike for an answer that does not decode or is of another kind than
//! a manifest chunk, "not found" or an error ([`FetchFailure::WrongKind`]). Bytes that do not
//! match the signed size or hash cost no strike (refused, the next peer is asked).
//!
//! When every peer failed, the manifest is **missing** ([`MissingManifest`]: hash, peers tried,
//! the last error per peer) and is tried again every `retry_ms` (the stored headers without a
//! manifest are re-queued then, which also covers a restart).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use buildmesh_protocol::revision::{Manifest, RevisionHeader};
use buildmesh_protocol::signed::Envelope;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::mesh::answers;
use crate::mesh::fetch::peer_of;
use crate::mesh::quota::Quotas;
use crate::mesh::rpc::{MANIFEST_CHUNK_SIZE, SyncRequest, SyncResponse};
use crate::mesh::skips::SharedSkips;
use crate::net::NetHandle;
use crate::store::{CheckedManifest, Store, unix_ms};

/// Headers waiting for their manifest to be fetched, at most.
pub const FETCH_QUEUE: usize = 256;
/// Manifests fetched at once, at most.
pub const FETCH_CONCURRENCY: usize = 2;
/// Peers asked for one manifest in one attempt, at most.
pub const MAX_PEERS_TRIED: usize = 8;
/// Manifest states remembered, at most (missing ones beyond it are forgotten, and reported again
/// at their next attempt).
pub const MAX_TRACKED: usize = 4096;

pub use crate::mesh::skips::{MAX_SKIPPED, MISMATCH_SKIP};

/// The most compressed bytes a manifest of `size` bytes may take (zstd's worst case, with room).
pub fn compressed_bound(size: u64) -> u64 {
    size + size / 128 + 4096
}

/// A manifest no peer could serve so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingManifest {
    /// blake3 of the manifest (hex), as signed in the header.
    pub hash: String,
    /// Its size as signed.
    pub size: u64,
    /// The peers asked in the last attempt (peer ids), each with why it failed.
    pub peers_tried: Vec<String>,
    /// A one-line summary naming the hash and the peers tried.
    pub error: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the last attempt ended (Unix ms).
    pub last_attempt_ms: u64,
}

/// Where a manifest is on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "manifest")]
pub enum ManifestState {
    /// Stored.
    Present,
    /// Queued or being fetched.
    Fetching,
    /// Every peer failed so far (retried later).
    Missing(MissingManifest),
}

/// Why one peer's manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchFailure {
    /// The request failed or the peer answered with an error.
    #[error("{0}")]
    Peer(String),
    /// The peer does not have it.
    #[error("does not have it")]
    NotFound,
    /// The peer announced more compressed bytes than the signed size allows.
    #[error("announced {total} compressed bytes for a manifest of {size} bytes (at most {max})")]
    TooLarge {
        /// Announced.
        total: u64,
        /// Signed size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// The submitter's storage quota does not admit it.
    #[error("{0}")]
    Quota(String),
    /// An answer of another kind than a manifest chunk, "not found" or an error (garbage: the
    /// peer gets a strike).
    #[error("answer at offset {offset} is not a manifest chunk")]
    WrongKind {
        /// Where.
        offset: u64,
    },
    /// A chunk broke the protocol (wrong length, changed total).
    #[error("bad chunk at offset {offset}: {reason}")]
    BadChunk {
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
    /// The bytes do not decompress within the signed size.
    #[error("does not decompress within {size} bytes: {reason}")]
    Decompress {
        /// Signed size.
        size: u64,
        /// zstd's complaint.
        reason: String,
    },
    /// The bytes are not the signed manifest (size, hash, decode or counts).
    #[error("{0}")]
    Invalid(String),
}

impl FetchFailure {
    /// Whether the peer served something else than the signed manifest (it is then not asked
    /// for that manifest again for [`MISMATCH_SKIP`]); `false` for a failed request, an error
    /// or "not found" answer and a quota refusal, which say nothing of its bytes.
    pub fn served_wrong_bytes(&self) -> bool {
        match self {
            FetchFailure::Peer(_) | FetchFailure::NotFound | FetchFailure::Quota(_) => false,
            FetchFailure::TooLarge { .. }
            | FetchFailure::WrongKind { .. }
            | FetchFailure::BadChunk { .. }
            | FetchFailure::Decompress { .. }
            | FetchFailure::Invalid(_) => true,
        }
    }
}

/// Fetch one manifest through `ask` (one peer) and check it against `header` (see the module
/// docs); `admit(compressed_len)` is the quota check. Returns the canonical bytes and the decoded
/// manifest.
pub async fn fetch_from<F, Fut>(
    header: &RevisionHeader,
    admit: impl Fn(u64) -> Result<(), String>,
    mut ask: F,
) -> Result<(Vec<u8>, Manifest), FetchFailure>
where
    F: FnMut(SyncRequest) -> Fut,
    Fut: Future<Output = Result<SyncResponse, String>>,
{
    let max = compressed_bound(header.manifest_size);
    let mut buf: Vec<u8> = Vec::new();
    let mut total: Option<u64> = None;
    loop {
        let offset = buf.len() as u64;
        let req = SyncRequest::Manifest { hash: header.manifest_hash, offset, len: MANIFEST_CHUNK_SIZE };
        let bad = |reason: String| FetchFailure::BadChunk { offset, reason };
        let (t, bytes) = match ask(req).await.map_err(FetchFailure::Peer)? {
            SyncResponse::ManifestChunk { total, bytes } => (total, bytes),
            SyncResponse::ManifestNotFound => return Err(FetchFailure::NotFound),
            SyncResponse::Error(e) => return Err(FetchFailure::Peer(e)),
            _ => return Err(FetchFailure::WrongKind { offset }),
        };
        match total {
            None => {
                if t > max {
                    return Err(FetchFailure::TooLarge { total: t, size: header.manifest_size, max });
                }
                admit(t).map_err(FetchFailure::Quota)?;
                total = Some(t);
            }
            Some(known) if known != t => return Err(bad(format!("total changed from {known} to {t}"))),
            Some(_) => {}
        }
        let want = t.saturating_sub(offset).min(u64::from(MANIFEST_CHUNK_SIZE));
        if bytes.len() as u64 != want {
            return Err(bad(format!("{} bytes, expected {want}", bytes.len())));
        }
        buf.extend_from_slice(&bytes);
        if buf.len() as u64 >= t {
            break;
        }
    }
    let size = header.manifest_size;
    let raw = zstd::bulk::decompress(&buf, usize::try_from(size).unwrap_or(usize::MAX))
        .map_err(|e| FetchFailure::Decompress { size, reason: e.to_string() })?;
    let manifest = header.check_manifest(&raw).map_err(|e| FetchFailure::Invalid(e.to_string()))?;
    Ok((raw, manifest))
}

enum Tracked {
    /// Queued or being fetched, after `failed` attempts that failed.
    Fetching {
        failed: u32,
    },
    Missing(MissingManifest),
}

struct Inner {
    store: Store,
    net: NetHandle,
    quotas: Arc<Quotas>,
    retry: Duration,
    tx: mpsc::Sender<RevisionHeader>,
    rx: Mutex<Option<mpsc::Receiver<RevisionHeader>>>,
    states: Mutex<BTreeMap<[u8; 32], Tracked>>,
    skips: SharedSkips,
    fetched: AtomicU64,
    failed: AtomicU64,
}

/// The background manifest fetcher. Cheap to clone.
#[derive(Clone)]
pub struct ManifestFetcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ManifestFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestFetcher").field("retry", &self.inner.retry).finish_non_exhaustive()
    }
}

impl ManifestFetcher {
    /// A fetcher (not running until [`ManifestFetcher::spawn`]).
    pub fn new(store: Store, net: NetHandle, quotas: Arc<Quotas>, retry_ms: u64) -> ManifestFetcher {
        let (tx, rx) = mpsc::channel(FETCH_QUEUE);
        ManifestFetcher {
            inner: Arc::new(Inner {
                store,
                net,
                quotas,
                retry: Duration::from_millis(retry_ms.max(100)),
                tx,
                rx: Mutex::new(Some(rx)),
                states: Mutex::default(),
                skips: SharedSkips::default(),
                fetched: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        }
    }

    /// Manifests fetched and fetch attempts that failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.inner.fetched.load(Ordering::Relaxed), self.inner.failed.load(Ordering::Relaxed))
    }

    fn states(&self) -> std::sync::MutexGuard<'_, BTreeMap<[u8; 32], Tracked>> {
        self.inner.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of a manifest that is not stored (see [`super::Revisions::manifest_state`]).
    pub fn state(&self, hash: &[u8; 32]) -> ManifestState {
        match self.states().get(hash) {
            Some(Tracked::Missing(m)) => ManifestState::Missing(m.clone()),
            _ => ManifestState::Fetching,
        }
    }

    /// Queue `header`'s manifest for fetching unless it is queued or being fetched already.
    pub fn want(&self, header: RevisionHeader) {
        let hash = header.manifest_hash;
        let previous = {
            let mut states = self.states();
            let failed = match states.get(&hash) {
                Some(Tracked::Fetching { .. }) => return,
                Some(Tracked::Missing(m)) => m.attempts,
                None if states.len() >= MAX_TRACKED => return, // the retry round asks again
                None => 0,
            };
            states.insert(hash, Tracked::Fetching { failed })
        };
        if self.inner.tx.try_send(header).is_err() {
            let mut states = self.states();
            match previous {
                Some(p) => states.insert(hash, p),
                None => states.remove(&hash),
            };
            tracing::debug!(hash = %hex::encode(hash), "manifest fetch queue full; the next retry round asks again");
        }
    }

    /// Start the worker (once; later calls do nothing). It stops when `token` is cancelled.
    pub fn spawn(&self, token: CancellationToken) {
        let Some(rx) = self.inner.rx.lock().unwrap_or_else(PoisonError::into_inner).take() else { return };
        let this = self.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = this.run(rx) => {}
            }
        }));
    }

    async fn run(self, mut rx: mpsc::Receiver<RevisionHeader>) {
        let permits = Arc::new(Semaphore::new(FETCH_CONCURRENCY));
        let mut retry = tokio::time::interval(self.inner.retry);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(header) = rx.recv() => {
                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                    let this = self.clone();
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        this.fetch(header).await;
                        drop(permit);
                    }));
                }
                _ = retry.tick() => self.requeue_missing().await,
            }
        }
    }

    /// Queue every visible header whose manifest is not stored.
    async fn requeue_missing(&self) {
        let store = self.inner.store.clone();
        let list = match tokio::task::spawn_blocking(move || store.revisions_missing_manifest()).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return tracing::warn!(cause = %e, "cannot list revisions without their manifest"),
            Err(e) => return tracing::warn!(cause = %e, "task failed"),
        };
        for r in list {
            match Envelope::decode(&r.entry.envelope)
                .map_err(|e| e.to_string())
                .and_then(|env| env.verify_as::<RevisionHeader>().map_err(|e| e.to_string()))
            {
                Ok(v) => self.want(v.into_value()),
                Err(e) => tracing::warn!(id = %r.entry.id, cause = e, "a stored revision header does not verify"),
            }
        }
    }

    /// One attempt at `header`'s manifest over every candidate peer.
    async fn fetch(&self, header: RevisionHeader) {
        let hash = header.manifest_hash;
        if self.inner.store.has_manifest(&hash).unwrap_or(false) {
            self.states().remove(&hash);
            return;
        }
        let mut peers: Vec<PeerId> = peer_of(&header.submitter).into_iter().collect();
        let me = self.inner.net.local_peer_id();
        for p in self.inner.net.connected_peers().await.unwrap_or_default() {
            if !peers.contains(&p) && p != me {
                peers.push(p);
            }
        }
        peers.retain(|p| *p != me);
        self.inner.skips.retain_unskipped(&hash, &mut peers);
        peers.truncate(MAX_PEERS_TRIED);
        let mut tried = Vec::new();
        for peer in peers {
            match self.fetch_one(&header, peer).await {
                Ok(()) => {
                    self.states().remove(&hash);
                    self.inner.skips.forget(&hash);
                    self.inner.fetched.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(target: "buildmesh::_events::mesh", event = "manifest_fetched",
                        hash = %hex::encode(hash), %peer, revision = %header.id());
                    return;
                }
                Err(e) => {
                    tracing::info!(hash = %hex::encode(hash), %peer, cause = %e, "manifest fetch from a peer failed");
                    if e.served_wrong_bytes() {
                        self.inner.skips.add(hash, peer);
                    }
                    tried.push(format!("{peer}: {e}"));
                }
            }
        }
        self.inner.failed.fetch_add(1, Ordering::Relaxed);
        let error = if tried.is_empty() {
            format!("manifest {} of {}: no peer to ask", hex::encode(hash), header.id())
        } else {
            format!("manifest {} of {} not fetched; peers tried: {}", hex::encode(hash), header.id(), tried.join("; "))
        };
        tracing::warn!(target: "buildmesh::_events::mesh", event = "manifest_missing", %error);
        let mut states = self.states();
        // The attempts before this one are kept while it is queued and fetched (`want`).
        let attempts = match states.get(&hash) {
            Some(Tracked::Fetching { failed }) => failed.saturating_add(1),
            Some(Tracked::Missing(m)) => m.attempts.saturating_add(1),
            None => 1,
        };
        states.insert(
            hash,
            Tracked::Missing(MissingManifest {
                hash: hex::encode(hash),
                size: header.manifest_size,
                peers_tried: tried,
                error,
                attempts,
                last_attempt_ms: unix_ms(),
            }),
        );
    }

    /// Fetch from one peer, check, and store within the submitter's quota.
    async fn fetch_one(&self, header: &RevisionHeader, peer: PeerId) -> Result<(), FetchFailure> {
        let net = &self.inner.net;
        let ask = |req: SyncRequest| async move { answers::ask_sync(net, peer, &req).await.map_err(|e| e.to_string()) };
        let limit = self.inner.quotas.limit_for(&header.submitter).copied();
        let usage = self.inner.store.signer_usage(&header.submitter).unwrap_or_default();
        let admit = |len: u64| match &limit {
            Some(l) if !usage.admits(len, l) => {
                Err(format!("the submitter {} is at its storage quota", header.submitter.fmt_short()))
            }
            _ => Ok(()),
        };
        let (raw, manifest) = match fetch_from(header, admit, ask).await {
            Ok(fetched) => fetched,
            Err(e) => {
                if let FetchFailure::WrongKind { .. } = e {
                    answers::wrong_kind(net, peer, "manifest answer of another kind").await;
                }
                return Err(e);
            }
        };
        let (store, h) = (self.inner.store.clone(), header.clone());
        let stored = tokio::task::spawn_blocking(move || -> Result<Option<bool>, String> {
            let checked =
                CheckedManifest::new(h.manifest_hash, &raw, store.options().zstd_level).map_err(|e| e.to_string())?;
            let drvs: Vec<String> = manifest.drvs.iter().map(|d| d.drv.to_string()).collect();
            store
                .write(|w| w.put_manifest_within(&checked, &drvs, &h.submitter, limit.as_ref()))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| FetchFailure::Peer(format!("task failed: {e}")))?;
        match stored {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(FetchFailure::Quota("the submitter is at its storage quota".into())),
            Err(e) => Err(FetchFailure::Peer(format!("storing it failed: {e}"))),
        }
    }
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
