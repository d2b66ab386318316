//! `GET`/`HEAD /nar/<nix32 NarHash>.nar` and `.nar.zst`: the NARs, under the trust rule.
//!
//! A blob is the zstd-compressed NAR named by the blake3 of the uncompressed NAR
//! ([`crate::store`]). `.nar.zst` is the blob file as stored (what narinfos advertise; Nix 2.8 and
//! later decompresses it and checks `NarHash`). `.nar` is the NAR, decompressed on the fly.
//!
//! **Integrity of `.nar`: verified once per process.** The blob reader
//! ([`crate::store::NarBlobReader`]) hashes what it decompresses and checks the blake3 id and the
//! length at the end of the stream; the body pump ([`super::stream`]) holds the last chunk back
//! until that check passed (a small body is read and checked whole before anything is sent), so
//! a damaged blob (a flipped byte anywhere, a truncated or swapped file) never yields a complete
//! response the first time this process serves it: the connection is cut (a small one answers
//! 500). A blob whose check passed joins an in-memory set keyed by the identity of its file
//! ([`crate::store::verified`]); later downloads of it stream without blake3 (still decompressed,
//! the length still checked). What this trades: a blob damaged in place after its first verified
//! read in this process (same inode, length and mtime) is served whole, and the client's
//! `NarHash` check catches it (Nix refuses a NAR that does not hash to the narinfo's NarHash),
//! not the node; a file replaced or rewritten, and every blob after a restart, is checked again.
//! Why: checking every download kept `.nar` at ~1 GB/s on one connection (decompression and
//! blake3 on one core), below harmonia's 1.6-2.8 GB/s from the page cache; with the check done
//! once and decompression overlapping sending, `.nar` is level with harmonia on one connection
//! and ahead on four (docs/benchmarks.md). Issue 11 item 3 allows this choice.
//!
//! **Plain copies** ([`crate::store::plain`]): the first download of a large blob in a process also
//! writes the NAR it decompresses to an uncompressed file, put in place only when that read's
//! checks passed; later downloads send that file (no decompression: level with a server sending
//! from the page cache on four connections, docs/benchmarks.md). Same trade as above: a copy
//! damaged in place after it was written is caught by the client's `NarHash` check.
//!
//! **`.nar.zst` is not checked by the node**: checking it costs a full decompression, which is
//! what serving the stored file avoids; the client checks it (Nix decompresses and compares the
//! NarHash of the narinfo, so a damaged `.nar.zst` never becomes a valid path), and
//! `buildmesh`'s own scrub ([`crate::store::Store::verify_nar`]) finds damaged blobs.
//!
//! **Ranges** ([`super::range`]): one range gets a `206`, several get the whole body, nothing
//! satisfiable a `416`; `Accept-Ranges: bytes` on every NAR answer. A range of `.nar.zst` is a
//! slice of the file. A range of `.nar` is cut out of the decompressed stream, which is still
//! read and hashed to its end before the range's last chunk is sent, so a ranged answer from a
//! damaged blob is cut too (a range costs a read of the whole blob; resumed downloads are rare).
//!
//! Downloads (`GET`) take a slot of the node's [`super::limits::DownloadLimiter`] (in all and
//! per client) for as long as they stream; `HEAD` takes none and reads nothing but the record.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::nixbase32;

use super::AppState;
use super::cache::{NAR_CACHE, internal, not_found, plain};
use super::range::{self, RangeReader, Ranged};
use super::stream::{BodyReader, FileSlice, stream_body_with};
use crate::store::{ServedNar, StoreError};

/// `Content-Type` of NARs (whatever the compression).
const NAR_TYPE: &str = "application/x-nix-nar";

/// `GET`/`HEAD /nar/<nix32 NarHash>.nar` and `.nar.zst`.
#[tracing::instrument(level = "debug", skip_all, fields(file = %file))]
pub(super) async fn nar(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    Path(file): Path<String>,
) -> Response {
    if file.contains('-') {
        // A store path's base name (`nar/<basename>`, the Guix layout's uncompressed URL); a
        // nix32 NarHash has no `-`.
        return super::guix::nar_of_path(state, &file, false, method, headers, ext).await;
    }
    let (hash, compressed) = match file.strip_suffix(".nar.zst") {
        Some(h) => (h, true),
        None => match file.strip_suffix(".nar") {
            Some(h) => (h, false),
            None => return not_found(),
        },
    };
    let Ok(digest) = nixbase32::decode_fixed::<32>(hash)
        .map_err(|_| ())
        .and_then(|d| if hash.len() == 52 { Ok(d) } else { Err(()) })
    else {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("{} is not nar/<52-character nix32 NarHash>.nar[.zst]", super::echo(&file)),
        );
    };
    match nar_allowed(&state, digest).await {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(e) => return internal("trust", e),
    }
    send_blob(&state, digest, compressed, &method, headers, &ext).await
}

/// Send the stored NAR with NarHash `digest` (the zstd blob file when `compressed`, else the
/// decompressed NAR), once the caller's trust rule allowed it: a download slot, `Range`, `HEAD`.
/// Also the NAR routes of the Guix layout ([`super::guix`]) and of the per-builder views
/// ([`super::builder`]).
pub(super) async fn send_blob(
    state: &AppState,
    digest: [u8; 32],
    compressed: bool,
    method: &Method,
    headers: HeaderMap,
    ext: &axum::http::Extensions,
) -> Response {
    let head = *method == Method::HEAD;
    // A download holds its slot until its body is done or dropped.
    let slot = if head {
        None
    } else {
        match state.inner.downloads.acquire(super::server::client_ip(ext)).await {
            Ok(slot) => Some(slot),
            Err(busy) => {
                tracing::debug!(cause = %busy, "NAR download refused");
                let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, busy.to_string());
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return resp;
            }
        }
    };
    // One blocking task finds the blob, decides the range (the size of the whole body is known
    // before anything is read: the record's NarSize, or the file's length), opens what is sent
    // and reads a small body whole.
    let st = state.clone();
    let opened = tokio::task::spawn_blocking(move || open(&st, digest, compressed, head, &headers)).await;
    let (size, ranged, body) = match opened {
        Ok(Ok(Some(v))) => v,
        Ok(Ok(None)) => return not_found(),
        Ok(Err(e)) => return store_error(e),
        Err(e) => return internal("task", e),
    };
    if ranged == Ranged::Unsatisfiable {
        let mut resp = plain(StatusCode::RANGE_NOT_SATISFIABLE, format!("no satisfiable range in 0-{size}"));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_RANGE, header_value(range::unsatisfied_range(size)));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        return resp;
    }
    let body = match body {
        Opened::Nothing => Body::empty(),
        Opened::Whole(bytes) => Body::from(bytes),
        Opened::Stream(reader) => stream_body_with(reader, slot),
        Opened::Failed(e) => return internal("blob", e),
    };
    match ranged {
        Ranged::Partial(r) => nar_response(StatusCode::PARTIAL_CONTENT, r.end() - r.start() + 1, Some((r, size)), body),
        _ => nar_response(StatusCode::OK, size, None, body),
    }
}

/// What [`open`] prepared to send.
enum Opened {
    /// `HEAD`, or a `416`.
    Nothing,
    /// A small body, read whole (and, for `.nar`, checked) in the same blocking task.
    Whole(Bytes),
    /// A body to stream.
    Stream(BodyReader),
    /// Reading a small body failed (a damaged blob): nothing of it is sent.
    Failed(std::io::Error),
}

/// The blob with this NarHash (blocking): the size of the whole body, the range to send, and
/// what to send (see [`Opened`]); `None` when no blob has this NarHash.
fn open(
    st: &AppState,
    digest: [u8; 32],
    compressed: bool,
    head: bool,
    headers: &HeaderMap,
) -> Result<Option<(u64, Ranged, Opened)>, StoreError> {
    let Some(blob) = st.store().blob_by_nar_hash(&NixHash::sha256(digest))? else { return Ok(None) };
    // Least recently served blobs are collected first (`crate::gc`).
    st.store().note_blob_access(&blob.blake3);
    let io = |op: &'static str| move |source| StoreError::Io { op, path: blob.blake3.to_string().into(), source };
    let (size, mut file) = if compressed {
        let (file, _) = st.store().open_nar_compressed(&blob.blake3)?;
        (file.metadata().map_err(io("stat blob"))?.len(), Some(file))
    } else {
        (blob.nar_size, None)
    };
    let ranged = if head { Ranged::Full } else { range::decide(headers, size) };
    if head || ranged == Ranged::Unsatisfiable {
        return Ok(Some((size, ranged, Opened::Nothing)));
    }
    let part = match &ranged {
        Ranged::Partial(r) => Some(r.clone()),
        _ => None,
    };
    let mut reader: BodyReader = match (file.take(), &part) {
        (Some(file), None) => Box::new(FileSlice::new(file, 0, size)),
        (Some(file), Some(r)) => Box::new(FileSlice::new(file, *r.start(), r.end() - r.start() + 1)),
        (None, part) => match (st.store().open_nar_for_serving(&blob.blake3)?, part) {
            (nar, None) => Box::new(nar),
            // A plain copy holds verified bytes: a range is a slice of it.
            (ServedNar::Plain(mut copy), Some(r)) => {
                copy.skip(*r.start()).map_err(io("seek plain copy"))?;
                copy.limit(r.end() - r.start() + 1);
                Box::new(copy)
            }
            (nar, Some(r)) => Box::new(RangeReader::new(nar, r)),
        },
    };
    if part.is_some() || size > WHOLE_BODY {
        return Ok(Some((size, ranged, Opened::Stream(reader))));
    }
    // Small: one read here instead of a blocking task per chunk (and the check at the end of
    // the reader runs before anything is sent).
    let mut buf = Vec::with_capacity(size as usize);
    let opened = match reader.read_to_end(&mut buf) {
        Ok(_) if buf.len() as u64 == size => Opened::Whole(Bytes::from(buf)),
        Ok(n) => Opened::Failed(std::io::Error::other(format!("blob {} gave {n} bytes, not {size}", blob.blake3))),
        Err(e) => Opened::Failed(e),
    };
    Ok(Some((size, ranged, opened)))
}

/// Bodies up to this size are read whole in the task that opens them (see [`open`]): most
/// store paths' NARs (clientbench measured a small `.nar.zst` at 0.21 ms here against nginx's
/// 0.07 ms, much of it in per-chunk blocking tasks).
const WHOLE_BODY: u64 = 256 * 1024;

fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::BlobMissing { blob, path } => {
            tracing::error!(%blob, path = %path.display(), "blob file missing");
            not_found()
        }
        e => internal("store", e),
    }
}

/// The head of a NAR answer: type, length, `Accept-Ranges`, `Cache-Control`, and for a `206` its
/// `Content-Range` (`range` of a body of `size` bytes).
fn nar_response(
    status: StatusCode,
    len: u64,
    range: Option<(std::ops::RangeInclusive<u64>, u64)>,
    body: Body,
) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NAR_TYPE));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NAR_CACHE));
    if let Some((r, size)) = range {
        h.insert(header::CONTENT_RANGE, header_value(range::content_range(&r, size)));
    }
    resp
}

/// Whether the NAR with this NarHash may be served: under the same trust rule as the narinfos
/// (the mesh's quorum on a mesh node, own attested builds on a standalone node, or a
/// content-addressed path whose bytes match it).
///
/// A standalone node remembers a positive answer ([`NarAllowedCache`]) the way it remembers
/// narinfos ([`super::cache::NarinfoCache`]): what it serves there (its own attested builds,
/// content-addressed paths whose bytes match) is never withdrawn. A mesh node asks the gateway
/// every time, like it does for narinfos, because a dispute can withdraw a quorum.
async fn nar_allowed(state: &AppState, digest: [u8; 32]) -> Result<bool, String> {
    if let Some(mesh) = &state.inner.mesh {
        return mesh.gateway().nar_allowed(digest).await.map_err(|e| e.to_string());
    }
    if state.inner.nars_allowed.contains(&digest) {
        return Ok(true);
    }
    // One check per NarHash at a time: many requests for the same NAR arriving together (e.g.
    // many clients of a big `text` path, whose check re-hashes its whole NAR) wait for the first
    // one's answer instead of each running the check.
    // The flight is left when this future ends in any way, a dropped request included, so the
    // map of flights holds only checks under way.
    let flight = state.inner.nars_allowed.flight(digest);
    let _turn = flight.lock.lock().await;
    if state.inner.nars_allowed.contains(&digest) {
        return Ok(true);
    }
    let st = state.clone();
    let allowed = tokio::task::spawn_blocking(move || {
        crate::trust::serve::nar_servable(st.store(), st.store_dir(), &st.inner.trust, &digest)
    })
    .await
    .map_err(|e| e.to_string());
    if let Ok(Ok(true)) = allowed {
        state.inner.nars_allowed.insert(digest);
    }
    allowed?.map_err(|e| e.to_string())
}

/// NarHashes kept per generation of [`NarAllowedCache`] (at most twice this many, 32 bytes each).
pub const NAR_ALLOWED_ENTRIES: usize = 16384;

/// The NarHashes a standalone node's trust rule allowed on the NAR route, so that a hot NAR
/// costs no trust check (for a `text` path, a re-read and re-hash of its whole NAR). Bounded
/// like [`super::cache::NarinfoCache`]: two generations of [`NAR_ALLOWED_ENTRIES`].
#[derive(Debug, Default)]
pub struct NarAllowedCache {
    /// The allowed NarHashes.
    inner: crate::bounded_cache::BoundedCache<[u8; 32], (), NAR_ALLOWED_ENTRIES>,
    /// The checks under way, by NarHash (one at a time per NarHash).
    flights: std::sync::Mutex<HashMap<[u8; 32], FlightLock>>,
}

/// The lock one NarHash's trust checks take turns on.
type FlightLock = Arc<tokio::sync::Mutex<()>>;

/// A request's part in the checks of one NarHash; dropping it (when the check ends, or when the
/// request is dropped while it waits) forgets the lock once no one else holds it.
struct Flight<'a> {
    cache: &'a NarAllowedCache,
    digest: [u8; 32],
    lock: FlightLock,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.cache.landed(&self.digest);
    }
}

impl NarAllowedCache {
    /// The lock that orders the checks of `digest`.
    fn flight(&self, digest: [u8; 32]) -> Flight<'_> {
        let mut f = self.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Flight { cache: self, digest, lock: Arc::clone(f.entry(digest).or_default()) }
    }

    /// A [`Flight`] of `digest` ends: forget its lock once no one else waits on it.
    fn landed(&self, digest: &[u8; 32]) {
        let mut f = self.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // One reference in the map, one held by the caller: no one else waits.
        if f.get(digest).is_some_and(|l| Arc::strong_count(l) <= 2) {
            f.remove(digest);
        }
    }

    /// Whether the NarHash `digest` was allowed.
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.inner.get(digest).is_some()
    }

    /// Remember that the NarHash `digest` is allowed.
    pub fn insert(&self, digest: [u8; 32]) {
        self.inner.insert(digest, ());
    }

    /// NarHashes held (both generations).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no NarHash is held.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Checks under way (NarHashes with a flight).
    #[cfg(test)]
    fn flights_in_progress(&self) -> usize {
        self.flights.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_allowed_cache_is_bounded_and_keeps_hot_entries() {
        let c = NarAllowedCache::default();
        let hot = [7u8; 32];
        assert!(!c.contains(&hot));
        c.insert(hot);
        for i in 0..NAR_ALLOWED_ENTRIES as u64 * 3 {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&i.to_le_bytes());
            c.insert(d);
            if i % 1000 == 0 {
                assert!(c.contains(&hot), "at {i}");
            }
        }
        assert!(c.len() <= 2 * NAR_ALLOWED_ENTRIES);
    }

    #[tokio::test]
    async fn a_request_dropped_while_it_waits_leaves_no_flight() {
        let c = NarAllowedCache::default();
        let digest = [3u8; 32];
        let first = c.flight(digest);
        let turn = first.lock.lock().await;
        {
            // A second request for the same NarHash waits for the first one's turn, and is
            // dropped (its client went away) before it gets it.
            let waiting = async {
                let f = c.flight(digest);
                let _t = f.lock.lock().await;
            };
            let timed_out = tokio::time::timeout(std::time::Duration::from_millis(20), waiting).await;
            assert!(timed_out.is_err());
        }
        drop(turn);
        drop(first);
        assert_eq!(c.flights_in_progress(), 0);
    }
}
