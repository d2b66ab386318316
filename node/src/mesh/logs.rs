//! Build logs from any node (issue 14): a node that does not hold the log of a derivation asks a
//! builder that does, over `/buildmesh/sync/1` ([`SyncRequest::Log`], 1 MiB chunks), and accepts
//! the bytes only when they are the log the builder signed: every attestation and signed failure
//! carries the [`LogDigest`] (sha256 and size) of the log its builder stored, so a peer that
//! relays or serves other bytes is caught. A builder keeps one log per derivation (its latest
//! build), so the log must match one of the digests that builder signed for that derivation.
//!
//! Bounds: a log larger than [`MAX_FETCHED_LOG`] is not fetched; the size is known from the
//! signed digest before the first chunk, and the responder's stated total must equal it. At most
//! [`MAX_CONCURRENT_LOG_FETCHES`] fetches run at once (each holds up to 64 MiB); beyond,
//! [`LogError::Busy`]. A fetched log is kept in the [`LogCache`] and read from there next time,
//! checked again against the digests signed for the derivation.
//!
//! Answers are read as every answer from a peer is ([`super::answers`]): the node's configured
//! cap, and one strike for an answer that does not decode or is of another kind than a log chunk,
//! "not found" or an error ([`LogRefused::WrongKind`]). A log of another size or hash than signed
//! costs no strike: a builder keeps only the log of its latest build, which this node may not have
//! the signature of yet. But a builder whose bytes were not its signed log is not asked for that
//! log again for [`crate::mesh::skips::MISMATCH_SKIP`] (keyed by [`skip_key`] of its signed
//! digests, so a newly signed log is asked for at once).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::signed::Signed;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::{Attestation, BuildFailure, LogDigest};

use super::answers;
use super::log_cache::LogCache;
use super::rpc::{LOG_CHUNK_SIZE, SyncRequest, SyncResponse};
use super::skips::SharedSkips;
use crate::net::NetHandle;
use crate::store::{Store, StoreError};

/// Largest log fetched from a peer (64 MiB, the most a store ever decompresses of a log).
pub const MAX_FETCHED_LOG: u64 = 64 << 20;

/// Log fetches from peers running at once (a cached log needs none).
pub const MAX_CONCURRENT_LOG_FETCHES: usize = 4;
static FETCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_LOG_FETCHES);

/// Why a log could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// No attestation or failure of the derivation (by the builder asked for) carries a log digest.
    #[error("no signed attestation or failure of {drv}{by} names a build log")]
    NoSignedLog {
        /// The derivation.
        drv: String,
        /// ` by <builder>` when one was asked for.
        by: String,
    },
    /// Every builder asked failed; each failure is listed.
    #[error("no builder served a log of {drv} that matches its signature: {tried}")]
    Unavailable {
        /// The derivation.
        drv: String,
        /// `<builder>: <why>`, separated by `; `.
        tried: String,
    },
    /// [`MAX_CONCURRENT_LOG_FETCHES`] fetches are running already (HTTP 503).
    #[error("{0} build log fetches are running; try again later")]
    Busy(usize),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("task failed: {0}")]
    Task(String),
}

/// Why one builder's log was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogRefused {
    /// The peer could not be asked or answered with an error.
    #[error("the peer failed: {0}")]
    Peer(String),
    /// The peer holds no log of the derivation.
    #[error("the builder holds no log of it")]
    NotFound,
    /// The peer's stated size is none of the signed sizes.
    #[error("the builder serves {total} bytes, but signed a log of {signed:?} bytes")]
    WrongSize {
        /// What the peer said.
        total: u64,
        /// The sizes it signed.
        signed: Vec<u64>,
    },
    /// The bytes do not hash to the signed digest: a swapped or altered log.
    #[error("the log served does not match the builder's signed sha256 {signed} (got {got}): refused")]
    WrongHash {
        /// The signed sha256 (hex).
        signed: String,
        /// The sha256 of the bytes received (hex).
        got: String,
    },
    /// An answer of another kind than a log chunk, "not found" or an error (garbage: the peer
    /// gets a strike).
    #[error("the answer at offset {offset} is not a log chunk")]
    WrongKind {
        /// Where.
        offset: u64,
    },
    /// A chunk out of place (wrong length, changed total).
    #[error("bad chunk at offset {offset}: {reason}")]
    BadChunk {
        /// Where.
        offset: u64,
        /// Why.
        reason: String,
    },
}

/// A log checked against its builder's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLog {
    /// The builder whose signed digest it matches.
    pub builder: NodeId,
    /// The digest it matches.
    pub digest: LogDigest,
    /// The log.
    pub bytes: Vec<u8>,
    /// Whether it came from this node's [`LogCache`] (checked again) rather than the network.
    pub cached: bool,
}

/// Every log digest signed for `drv` in the attestations and failures this node holds, by
/// builder (each envelope verified again; a row that does not verify is skipped).
pub fn signed_digests(store: &Store, drv: &StorePath) -> Result<BTreeMap<NodeId, BTreeSet<LogDigest>>, StoreError> {
    let mut out: BTreeMap<NodeId, BTreeSet<LogDigest>> = BTreeMap::new();
    for a in store.attestations_for_drv(drv)? {
        if let Ok(v) = Signed::<Attestation>::decode(&a.entry.envelope).ok().and_then(|s| s.verify().ok()).ok_or(())
            && let Some(d) = v.log
        {
            out.entry(v.builder).or_default().insert(d);
        }
    }
    for f in store.failures_for_drv(drv)? {
        if let Ok(v) = Signed::<BuildFailure>::decode(&f.entry.envelope).ok().and_then(|s| s.verify().ok()).ok_or(())
            && let Some(d) = v.log
        {
            out.entry(v.builder).or_default().insert(d);
        }
    }
    Ok(out)
}

/// Check a whole log against the digests its builder signed.
pub fn check(bytes: &[u8], signed: &BTreeSet<LogDigest>) -> Result<LogDigest, LogRefused> {
    let got = LogDigest::of(bytes);
    if signed.contains(&got) {
        return Ok(got);
    }
    let want = signed.iter().find(|d| d.size == got.size).or(signed.iter().next());
    Err(LogRefused::WrongHash {
        signed: want.map(|d| hex::encode(d.sha256)).unwrap_or_default(),
        got: hex::encode(got.sha256),
    })
}

/// Fetch the log of `drv` through `ask` (one builder) and check it against `signed`, that
/// builder's digests.
pub async fn fetch_from<F, Fut>(
    drv: &StorePath,
    signed: &BTreeSet<LogDigest>,
    mut ask: F,
) -> Result<(LogDigest, Vec<u8>), LogRefused>
where
    F: FnMut(SyncRequest) -> Fut,
    Fut: Future<Output = Result<SyncResponse, String>>,
{
    let sizes: Vec<u64> = signed.iter().map(|d| d.size).collect();
    let mut buf: Vec<u8> = Vec::new();
    let mut total: Option<u64> = None;
    loop {
        let offset = buf.len() as u64;
        let req = SyncRequest::Log { drv: drv.to_string(), offset, len: LOG_CHUNK_SIZE };
        let bad = |reason: &str| LogRefused::BadChunk { offset, reason: reason.to_string() };
        let (t, bytes) = match ask(req).await.map_err(LogRefused::Peer)? {
            SyncResponse::LogChunk { total, bytes } => (total, bytes),
            SyncResponse::LogNotFound => return Err(LogRefused::NotFound),
            SyncResponse::Error(e) => return Err(LogRefused::Peer(e)),
            _ => return Err(LogRefused::WrongKind { offset }),
        };
        match total {
            None => {
                if !sizes.contains(&t) || t > MAX_FETCHED_LOG {
                    return Err(LogRefused::WrongSize { total: t, signed: sizes });
                }
                buf.reserve_exact(t as usize);
                total = Some(t);
            }
            Some(known) if known != t => return Err(bad("the total changed between chunks")),
            Some(_) => {}
        }
        let want = (t - offset).min(u64::from(LOG_CHUNK_SIZE));
        if bytes.len() as u64 != want {
            return Err(bad(&format!("{} bytes where {want} were due", bytes.len())));
        }
        buf.extend_from_slice(&bytes);
        if buf.len() as u64 == t {
            return check(&buf, signed).map(|d| (d, buf));
        }
    }
}

/// What identifies the log a builder is asked for in the skip book: a hash of the digests it
/// signed for the derivation (a new signed digest, e.g. after a rebuild, is a new object).
pub fn skip_key(signed: &BTreeSet<LogDigest>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for d in signed {
        h.update(&d.sha256);
        h.update(&d.size.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

impl LogRefused {
    /// Whether the peer served other bytes than the signed log (it is then skipped for that log
    /// a while, [`crate::mesh::skips`]); `false` for a failed request, an error or "not found".
    pub fn served_wrong_bytes(&self) -> bool {
        match self {
            LogRefused::Peer(_) | LogRefused::NotFound => false,
            LogRefused::WrongSize { .. }
            | LogRefused::WrongHash { .. }
            | LogRefused::WrongKind { .. }
            | LogRefused::BadChunk { .. } => true,
        }
    }
}

/// The log of `drv` from the builders that signed one (only `builder`, when given), the first
/// whose bytes match its signed digest: from `cache` when it holds one of those digests, else
/// fetched (and then cached). `me` is skipped (the caller reads its own store). A builder that
/// served other bytes than its signed log is not asked for that log again for a while
/// (`skips`, [`crate::mesh::skips`]).
pub async fn fetch(
    net: &NetHandle,
    store: &Store,
    (cache, skips): (&std::sync::Arc<LogCache>, &SharedSkips),
    drv: &StorePath,
    builder: Option<NodeId>,
    me: NodeId,
) -> Result<VerifiedLog, LogError> {
    let (s, d) = (store.clone(), drv.clone());
    let mut digests = tokio::task::spawn_blocking(move || signed_digests(&s, &d))
        .await
        .map_err(|e| LogError::Task(e.to_string()))??;
    if let Some(b) = builder {
        digests.retain(|k, _| *k == b);
    }
    digests.remove(&me);
    let by = builder.map(|b| format!(" by {}", b.to_peer_id())).unwrap_or_default();
    if digests.is_empty() {
        return Err(LogError::NoSignedLog { drv: drv.to_string(), by });
    }
    let (c, wanted) = (cache.clone(), digests.clone());
    let hit = tokio::task::spawn_blocking(move || {
        wanted.iter().find_map(|(node, set)| set.iter().find_map(|d| c.get(d).map(|b| (*node, *d, b))))
    })
    .await
    .map_err(|e| LogError::Task(e.to_string()))?;
    if let Some((builder, digest, bytes)) = hit {
        return Ok(VerifiedLog { builder, digest, bytes, cached: true });
    }
    let _permit = FETCHES.try_acquire().map_err(|_| LogError::Busy(MAX_CONCURRENT_LOG_FETCHES))?;
    let mut tried = Vec::new();
    for (node, signed) in digests {
        let Some(peer) = super::fetch::peer_of(&node) else { continue };
        let key = skip_key(&signed);
        if skips.skipped(&key, &peer) {
            tried.push(format!("{peer}: skipped (it served other bytes than this signed log a while ago)"));
            continue;
        }
        let ask = |req: SyncRequest| async move { answers::ask_sync(net, peer, &req).await.map_err(|e| e.to_string()) };
        match fetch_from(drv, &signed, ask).await {
            Ok((digest, bytes)) => {
                let (c, b) = (cache.clone(), bytes.clone());
                // Checked by `fetch_from` against the builder's signed digest before it goes in.
                let _ = tokio::task::spawn_blocking(move || c.put(&digest, &b)).await;
                skips.forget(&key);
                return Ok(VerifiedLog { builder: node, digest, bytes, cached: false });
            }
            Err(e) => {
                if let LogRefused::WrongKind { .. } = e {
                    answers::wrong_kind(net, peer, "log answer of another kind").await;
                }
                if e.served_wrong_bytes() {
                    skips.add(key, peer);
                }
                tracing::info!(drv = %drv, builder = %peer, cause = %e, "log refused");
                tried.push(format!("{peer}: {e}"));
            }
        }
    }
    Err(LogError::Unavailable { drv: drv.to_string(), tried: tried.join("; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv() -> StorePath {
        StorePath::from_basename("0123456789abcdfghijklmnpqrsvwxyz-x.drv").unwrap()
    }

    /// A peer serving `log` in chunks of at most `chunk` bytes.
    fn serve(log: Vec<u8>) -> impl FnMut(SyncRequest) -> std::future::Ready<Result<SyncResponse, String>> {
        move |req| {
            let SyncRequest::Log { offset, len, .. } = req else { panic!("not a log request") };
            let end = (offset as usize + len as usize).min(log.len());
            std::future::ready(Ok(SyncResponse::LogChunk {
                total: log.len() as u64,
                bytes: log[offset as usize..end].to_vec(),
            }))
        }
    }

    #[tokio::test]
    async fn the_signed_log_is_taken_and_a_swapped_one_refused() {
        let log = b"building\nok\n".repeat(200_000); // 2.4 MB: three chunks
        let signed = BTreeSet::from([LogDigest::of(&log)]);
        let (d, got) = fetch_from(&drv(), &signed, serve(log.clone())).await.unwrap();
        assert_eq!(got, log);
        assert_eq!(d, LogDigest::of(&log));

        let mut swapped = log.clone();
        swapped[5] ^= 1;
        let err = fetch_from(&drv(), &signed, serve(swapped)).await.unwrap_err();
        assert!(matches!(err, LogRefused::WrongHash { .. }), "{err}");
        let err = fetch_from(&drv(), &signed, serve(b"short".to_vec())).await.unwrap_err();
        assert!(matches!(err, LogRefused::WrongSize { total: 5, .. }), "{err}");
        let err = fetch_from(&drv(), &signed, |_| std::future::ready(Ok(SyncResponse::LogNotFound))).await.unwrap_err();
        assert_eq!(err, LogRefused::NotFound);
        let manifest = |_| std::future::ready(Ok(SyncResponse::ManifestChunk { total: 1, bytes: vec![1] }));
        assert_eq!(fetch_from(&drv(), &signed, manifest).await.unwrap_err(), LogRefused::WrongKind { offset: 0 });
    }
}
