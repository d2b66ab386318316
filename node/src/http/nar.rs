//! `GET`/`HEAD /nar/<nix32 NarHash>.nar` and `.nar.zst`: the NARs, under the trust rule.
//!
//! A blob is the zstd-compressed NAR named by the blake3 of the uncompressed NAR
//! ([`crate::store`]). `.nar.zst` is the blob file as stored (what narinfos advertise; Nix 2.8 and
//! later decompresses it and checks `NarHash`). `.nar` is the NAR, decompressed on the fly.
//!
//! **Integrity of `.nar`: every download is checked, end to end.** The blob reader hashes what
//! it decompresses and checks the blake3 id and the length at the end of the stream; the body
//! pump ([`super::stream`]) holds the last chunk back until that check passed, so a damaged blob
//! (a flipped byte anywhere, a truncated or swapped file) never yields a complete response, at
//! any time, not only the first time it is read: the connection is cut instead. Why this and not
//! "verify at write and scrub" or "verify once per process": both leave a window in which a blob
//! damaged after its check is served whole, and the check is cheap next to the rest of the work
//! (blake3 runs at several GB/s on one core with AVX2/AVX-512, decompression of a typical blob
//! at 1.5-4 GB/s). Measured against harmonia and nginx in docs/benchmarks.md:
//! on the 2-core VM `.nar` is at 0.4-0.8x harmonia, bound by the CPU of decompressing and
//! hashing on one core per connection; issue 11 item 3's goal is not met yet.
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

use std::io::{Read, Seek, SeekFrom};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::nixbase32;

use super::AppState;
use super::cache::{NAR_CACHE, internal, not_found, plain};
use super::range::{self, RangeReader, Ranged};
use super::stream::{BodyReader, stream_body_with};
use crate::store::StoreError;

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
    let head = method == Method::HEAD;
    // The size of the whole body is known before anything is read (the record's NarSize, or
    // the file's length), so the range is decided first and only what is sent is opened.
    let st = state.clone();
    let size = tokio::task::spawn_blocking(move || -> Result<Option<(u64, _)>, StoreError> {
        let Some(blob) = st.store().blob_by_nar_hash(&NixHash::sha256(digest))? else { return Ok(None) };
        if compressed {
            let (file, _) = st.store().open_nar_compressed(&blob.blake3)?;
            let len = file
                .metadata()
                .map_err(|source| StoreError::Io { op: "stat blob", path: blob.blake3.to_string().into(), source })?
                .len();
            Ok(Some((len, (blob, Some(file)))))
        } else {
            Ok(Some((blob.nar_size, (blob, None))))
        }
    })
    .await;
    let (size, (blob, file)) = match size {
        Ok(Ok(Some(v))) => v,
        Ok(Ok(None)) => return not_found(),
        Ok(Err(e)) => return store_error(e),
        Err(e) => return internal("task", e),
    };
    let ranged = if head { Ranged::Full } else { range::decide(&headers, size) };
    if ranged == Ranged::Unsatisfiable {
        let mut resp = plain(StatusCode::RANGE_NOT_SATISFIABLE, format!("no satisfiable range in 0-{size}"));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_RANGE, header_value(range::unsatisfied_range(size)));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        return resp;
    }
    if head {
        return nar_response(StatusCode::OK, size, None, Body::empty());
    }
    // A download holds its slot until its body is done or dropped.
    let slot = match state.inner.downloads.acquire(super::server::client_ip(&ext)).await {
        Ok(slot) => slot,
        Err(busy) => {
            tracing::debug!(cause = %busy, "NAR download refused");
            let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, busy.to_string());
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return resp;
        }
    };
    let st = state.clone();
    let part = match &ranged {
        Ranged::Partial(r) => Some(r.clone()),
        _ => None,
    };
    let opened = tokio::task::spawn_blocking(move || -> Result<BodyReader, StoreError> {
        let reader: BodyReader = match (file, &part) {
            (Some(file), None) => Box::new(file),
            (Some(mut file), Some(r)) => {
                file.seek(SeekFrom::Start(*r.start())).map_err(|source| StoreError::Io {
                    op: "seek blob",
                    path: blob.blake3.to_string().into(),
                    source,
                })?;
                Box::new(file.take(r.end() - r.start() + 1))
            }
            (None, None) => Box::new(st.store().open_nar(&blob.blake3)?),
            (None, Some(r)) => Box::new(RangeReader::new(st.store().open_nar(&blob.blake3)?, r)),
        };
        Ok(reader)
    })
    .await;
    let reader = match opened {
        Ok(Ok(reader)) => reader,
        Ok(Err(e)) => return store_error(e),
        Err(e) => return internal("task", e),
    };
    let body = stream_body_with(reader, slot);
    match ranged {
        Ranged::Partial(r) => nar_response(StatusCode::PARTIAL_CONTENT, r.end() - r.start() + 1, Some((r, size)), body),
        _ => nar_response(StatusCode::OK, size, None, body),
    }
}

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
async fn nar_allowed(state: &AppState, digest: [u8; 32]) -> Result<bool, String> {
    if let Some(mesh) = &state.inner.mesh {
        return mesh.gateway().nar_allowed(digest).await.map_err(|e| e.to_string());
    }
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        crate::trust::serve::nar_servable(st.store(), st.store_dir(), &st.inner.trust, &digest)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}
