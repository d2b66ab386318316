//! The Nix binary-cache protocol: `/nix-cache-info`, `/<hash32>.narinfo` and `/nar/…`.
//!
//! A narinfo (and a NAR) is served only under the trust rule ([`crate::trust`]): on a mesh node
//! the quorum gateway decides; on a standalone node, an output this node built and attested
//! (served with the signature it made then) or a content-addressed path whose bytes match it
//! (served unsigned with its `CA:`). An upload never becomes a signed narinfo. A narinfo points at the zstd file of the NAR blob
//! (`URL: nar/<nix32 NarHash>.nar.zst`, `Compression: zstd`, `FileSize`), which is served as it
//! is stored, without recompressing; Nix (2.8 and later) decompresses it and checks `NarHash`.
//! The uncompressed `nar/<nix32 NarHash>.nar` is served too, decompressed on the fly: the blob
//! reader checks the blob's blake3 id at the end of the stream, and the last chunk is held back
//! until that check passed, so a damaged blob never arrives as a complete response (the
//! connection is cut instead).
//!
//! Bodies are read in [`CHUNK`]s, each in a short blocking task started when the connection has
//! taken the previous one ([`stream_body_with`]): a NAR is never held in memory whole and a
//! client that stops reading holds no thread. Downloads (`GET /nar/…`) take a slot of the
//! node's [`super::limits::DownloadLimiter`] (in all and per client) for as long as they stream.

use std::io::{self, Read};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::nixbase32;

use super::AppState;
use crate::store::StoreError;

/// Bytes per streamed chunk (a download holds about three: one held back, two in the
/// connection's write buffer).
pub const CHUNK: usize = 256 * 1024;

/// Rendered narinfos kept per generation of [`NarinfoCache`] (two generations: at most twice
/// this many, about 1 KiB each).
pub const NARINFO_CACHE_ENTRIES: usize = 4096;

/// Signed narinfos by hash part, so that a hot narinfo costs neither a database read nor a
/// signature. A registered path never changes (the store refuses to re-register it with another
/// NarHash), so entries never go stale. Bounded: two generations of at most
/// [`NARINFO_CACHE_ENTRIES`]; when the current one is full it becomes the old one and the oldest
/// is dropped; a hit in the old generation moves the entry to the current one.
#[derive(Debug, Default)]
pub struct NarinfoCache {
    inner: std::sync::Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: std::collections::HashMap<String, Bytes>,
    old: std::collections::HashMap<String, Bytes>,
}

impl NarinfoCache {
    /// The cached narinfo of `hash_part`.
    pub fn get(&self, hash_part: &str) -> Option<Bytes> {
        let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = g.current.get(hash_part) {
            return Some(b.clone());
        }
        let b = g.old.remove(hash_part)?;
        g.insert(hash_part.to_string(), b.clone());
        Some(b)
    }

    /// Remember the narinfo of `hash_part`.
    pub fn insert(&self, hash_part: String, narinfo: Bytes) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(hash_part, narinfo);
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.current.len() + g.old.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Generations {
    fn insert(&mut self, key: String, value: Bytes) {
        if self.current.len() >= NARINFO_CACHE_ENTRIES {
            self.old = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }
}

/// `Content-Type` of narinfos.
const NARINFO_TYPE: &str = "text/x-nix-narinfo";
/// `Content-Type` of NARs (whatever the compression).
const NAR_TYPE: &str = "application/x-nix-nar";

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], text).into_response()
}

fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "404 not found")
}

fn internal(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(cause = %e, what, "binary cache request failed");
    plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

/// `GET /nix-cache-info`.
pub(super) async fn nix_cache_info(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/x-nix-cache-info"))], state.inner.cache_info.clone())
        .into_response()
}

/// `GET`/`HEAD /<hash32>.narinfo` (any other top-level name is a 404).
#[tracing::instrument(level = "debug", skip_all, fields(file = %file))]
pub(super) async fn narinfo(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let Some(hash_part) = file.strip_suffix(".narinfo") else { return not_found() };
    if hash_part.len() != 32 || nixbase32::decode_fixed::<20>(hash_part).is_err() {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("{} is not <32-character nix32 hash>.narinfo", super::echo(&file)),
        );
    }
    if let Some(mesh) = &state.inner.mesh {
        // A mesh node serves what the quorum accepts, nothing else.
        return match mesh.gateway().narinfo(hash_part).await {
            Ok(Some(text)) => narinfo_response(Bytes::from(text)),
            Ok(None) => not_found(),
            Err(e) => internal("quorum narinfo", e),
        };
    }
    if let Some(text) = state.inner.narinfos.get(hash_part) {
        return narinfo_response(text);
    }
    // A standalone node serves what the trust rule accepts: its own attested builds (with the
    // signature it made when it built them) and content-addressed paths whose bytes match.
    let hash_part = hash_part.to_string();
    let st = state.clone();
    let key = hash_part.clone();
    let found = tokio::task::spawn_blocking(move || {
        crate::trust::serve::narinfo_for(st.store(), st.store_dir(), &st.inner.trust, &hash_part)
    })
    .await;
    match found {
        Ok(Ok(Some(text))) => {
            let text = Bytes::from(text);
            state.inner.narinfos.insert(key, text.clone());
            narinfo_response(text)
        }
        Ok(Ok(None)) => not_found(),
        Ok(Err(e)) => internal("trust", e),
        Err(e) => internal("task", e),
    }
}

fn narinfo_response(text: Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(NARINFO_TYPE))], text).into_response()
}

/// A NAR to serve: its length and (for GET) the reader of its body.
type Opened = (u64, Option<Box<dyn Read + Send>>);

/// `GET`/`HEAD /nar/<nix32 NarHash>.nar` and `.nar.zst`.
#[tracing::instrument(level = "debug", skip_all, fields(file = %file))]
pub(super) async fn nar(
    State(state): State<AppState>,
    method: Method,
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
    // A download holds its slot until its body is done or dropped; HEAD streams nothing.
    let slot = if head {
        None
    } else {
        match state.inner.downloads.acquire(super::server::client_ip(&ext)).await {
            Ok(slot) => Some(slot),
            Err(busy) => {
                tracing::debug!(cause = %busy, "NAR download refused");
                let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, busy.to_string());
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return resp;
            }
        }
    };
    let st = state.clone();
    let opened = tokio::task::spawn_blocking(move || -> Result<Option<Opened>, StoreError> {
        let Some(blob) = st.store().blob_by_nar_hash(&NixHash::sha256(digest))? else { return Ok(None) };
        if compressed {
            let (file, _) = st.store().open_nar_compressed(&blob.blake3)?;
            let len = file
                .metadata()
                .map_err(|source| StoreError::Io { op: "stat blob", path: blob.blake3.to_string().into(), source })?
                .len();
            Ok(Some((len, (!head).then(|| Box::new(file) as Box<dyn Read + Send>))))
        } else if head {
            Ok(Some((blob.nar_size, None)))
        } else {
            let reader = st.store().open_nar(&blob.blake3)?;
            Ok(Some((blob.nar_size, Some(Box::new(reader) as Box<dyn Read + Send>))))
        }
    })
    .await;
    let (len, reader) = match opened {
        Ok(Ok(Some(v))) => v,
        Ok(Ok(None)) => return not_found(),
        Ok(Err(StoreError::BlobMissing { blob, path })) => {
            tracing::error!(%blob, path = %path.display(), "blob file missing");
            return not_found();
        }
        Ok(Err(e)) => return internal("store", e),
        Err(e) => return internal("task", e),
    };
    let body = match reader {
        Some(r) => stream_body_with(r, slot),
        None => Body::empty(),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(NAR_TYPE));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
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

/// A body read from `reader` in [`CHUNK`]s (see [`stream_body_with`]).
pub fn stream_body(reader: Box<dyn Read + Send>) -> Body {
    stream_body_with(reader, ())
}

/// A body read from `reader` in [`CHUNK`]s, each read in a short `spawn_blocking` task started
/// only when the connection asks for the next chunk: a client that stops reading holds no
/// thread, only the chunk it has not taken (the connection's write timeout then drops it). The
/// last chunk is sent only after the reader reported a clean end, so a reader that fails at its
/// end (a blob whose hash check fails) never yields a complete body. `guard` (e.g. a download
/// slot) is dropped with the body.
pub fn stream_body_with(reader: Box<dyn Read + Send>, guard: impl Send + 'static) -> Body {
    let state = Pump { reader: Some(reader), pending: None, _guard: Box::new(guard) };
    let stream = libp2p::futures::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    });
    Body::from_stream(stream)
}

/// The state of a [`stream_body_with`] stream.
struct Pump {
    /// `None` once the reader ended or failed.
    reader: Option<Box<dyn Read + Send>>,
    /// The chunk read last, held back until the next read shows it is not the last one (or the
    /// reader ended cleanly).
    pending: Option<Bytes>,
    _guard: Box<dyn Send>,
}

impl Pump {
    /// The next chunk to send; `None` at the end.
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let reader = self.reader.take()?;
            let (reader, read) = match tokio::task::spawn_blocking(move || read_chunk(reader)).await {
                Ok(v) => v,
                Err(e) => return Some(Err(io::Error::other(format!("NAR reader task failed: {e}")))),
            };
            match read {
                Ok(Some(chunk)) => {
                    self.reader = Some(reader);
                    if let Some(prev) = self.pending.replace(chunk) {
                        return Some(Ok(prev));
                    }
                }
                Ok(None) => return self.pending.take().map(Ok),
                Err(e) => {
                    tracing::error!(cause = %e, "streaming a NAR failed; cutting the response");
                    self.pending = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Read up to [`CHUNK`] bytes (blocking): `Ok(None)` at a clean end.
fn read_chunk(mut reader: Box<dyn Read + Send>) -> (Box<dyn Read + Send>, io::Result<Option<Bytes>>) {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (reader, Err(e)),
        }
    }
    buf.truncate(filled);
    (reader, Ok((filled > 0).then(|| Bytes::from(buf))))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FailAtEnd(io::Cursor<Vec<u8>>);
    impl Read for FailAtEnd {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::new(io::ErrorKind::InvalidData, "hash mismatch")),
                n => Ok(n),
            }
        }
    }

    async fn collect(body: Body) -> (usize, bool) {
        use libp2p::futures::StreamExt as _;
        let mut stream = body.into_data_stream();
        let mut bytes = 0;
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => bytes += b.len(),
                Err(_) => return (bytes, true),
            }
        }
        (bytes, false)
    }

    #[test]
    fn narinfo_cache_is_bounded_and_keeps_hot_entries() {
        let c = NarinfoCache::default();
        assert!(c.is_empty());
        c.insert("hot".into(), Bytes::from_static(b"h"));
        for i in 0..NARINFO_CACHE_ENTRIES * 3 {
            c.insert(format!("k{i}"), Bytes::from_static(b"x"));
            if i % 100 == 0 {
                assert_eq!(c.get("hot").as_deref(), Some(&b"h"[..]), "at {i}");
            }
        }
        assert!(c.len() <= 2 * NARINFO_CACHE_ENTRIES);
        assert!(c.get("k0").is_none());
        assert!(c.get(&format!("k{}", NARINFO_CACHE_ENTRIES * 3 - 1)).is_some());
    }

    #[tokio::test]
    async fn the_last_chunk_of_a_failing_reader_is_held_back() {
        let data = vec![7u8; CHUNK + 10];
        assert_eq!(collect(stream_body(Box::new(io::Cursor::new(data.clone())))).await, (CHUNK + 10, false));
        let (bytes, failed) = collect(stream_body(Box::new(FailAtEnd(io::Cursor::new(data))))).await;
        assert!(failed);
        assert!(bytes < CHUNK + 10, "the last chunk must not be sent: {bytes}");
        // A reader failing within its only chunk yields nothing at all.
        let (bytes, failed) = collect(stream_body(Box::new(FailAtEnd(io::Cursor::new(vec![1u8; 10]))))).await;
        assert_eq!((bytes, failed), (0, true));
        assert_eq!(collect(stream_body(Box::new(io::Cursor::new(Vec::new())))).await, (0, false));
    }

    #[tokio::test]
    async fn the_guard_lives_as_long_as_the_body() {
        let guard = std::sync::Arc::new(());
        let body = stream_body_with(Box::new(io::Cursor::new(vec![1u8; 3 * CHUNK])), guard.clone());
        assert_eq!(std::sync::Arc::strong_count(&guard), 2);
        assert_eq!(collect(body).await, (3 * CHUNK, false));
        assert_eq!(std::sync::Arc::strong_count(&guard), 1);
    }
}
