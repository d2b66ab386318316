//! The Nix binary-cache protocol: `/nix-cache-info` and `/<hash32>.narinfo` (the NAR routes
//! are [`super::nar`]).
//!
//! A narinfo (and a NAR) is served only under the trust rule ([`crate::trust`]): on a mesh node
//! the quorum gateway decides; on a standalone node, an output this node built and attested
//! (served with the signature it made then) or a content-addressed path whose bytes match it
//! (served unsigned with its `CA:`). An upload never becomes a signed narinfo. A narinfo points
//! at the zstd file of the NAR blob (`URL: nar/<nix32 NarHash>.nar.zst`, `Compression: zstd`,
//! `FileSize`).
//!
//! Caching by clients and proxies (`Cache-Control`):
//! - a narinfo found: [`NARINFO_FOUND_CACHE`], one day like harmonia. Not `immutable`: the NAR a
//!   served narinfo names never changes (the store refuses to re-register a path with another
//!   NarHash, and the quorum serves one NarHash per path), but on a mesh node its `Sig` lines
//!   grow as more builders agree, and a later dispute withdraws it; a day bounds how long a
//!   client keeps either (Nix itself keeps positive lookups for 30 days).
//! - a narinfo (or NAR) missing: [`MISSING_CACHE`], a minute, because a path becomes servable as
//!   soon as a build finishes or a quorum is reached (harmonia says `no-store`; Nix keeps
//!   negative lookups for an hour on its own).
//! - a NAR: [`NAR_CACHE`], a year and `immutable`: `/nar/<NarHash>.nar` can only ever be the NAR
//!   with that hash.
//! - `/nix-cache-info`: [`CACHE_INFO_CACHE`], an hour (its `Priority` is configuration).
//!
//! Every route answers `HEAD` with the status and headers of `GET`, `Content-Length` included,
//! and no body.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use buildmesh_protocol::nixbase32;
use serde::{Deserialize, Serialize};

use super::AppState;

pub use super::stream::{CHUNK, stream_body, stream_body_with};

/// `Cache-Control` of a narinfo that was found.
pub const NARINFO_FOUND_CACHE: &str = "public, max-age=86400";
/// `Cache-Control` of a 404 on a cache route.
pub const MISSING_CACHE: &str = "public, max-age=60";
/// `Cache-Control` of a NAR (content-addressed by its NarHash).
pub const NAR_CACHE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of `/nix-cache-info`.
pub const CACHE_INFO_CACHE: &str = "public, max-age=3600";

/// Largest accepted `[cache] priority` (Nix's own caches use 10 to 50; a larger value is almost
/// surely a typo).
pub const MAX_PRIORITY: u32 = 1000;

/// What `/nix-cache-info` says (`[cache]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// `Priority`: Nix tries substituters in increasing priority (cache.nixos.org says 40).
    pub priority: u32,
    /// `WantMassQuery`: whether Nix may ask for many narinfos at once (e.g. `nix copy`,
    /// `nix-env -qas`) instead of one by one.
    pub want_mass_query: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings { priority: super::CACHE_PRIORITY, want_mass_query: true }
    }
}

impl CacheSettings {
    /// Check every field; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.priority > MAX_PRIORITY {
            return Err(format!("priority {} is above {MAX_PRIORITY}", self.priority));
        }
        Ok(())
    }

    /// The body of `/nix-cache-info` for a store at `store_dir`.
    pub fn nix_cache_info(&self, store_dir: &str) -> String {
        format!(
            "StoreDir: {store_dir}\nWantMassQuery: {}\nPriority: {}\n",
            u8::from(self.want_mass_query),
            self.priority
        )
    }
}

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
    inner: crate::bounded_cache::BoundedCache<String, Bytes, NARINFO_CACHE_ENTRIES>,
}

impl NarinfoCache {
    /// The cached narinfo of `hash_part`.
    pub fn get(&self, hash_part: &str) -> Option<Bytes> {
        self.inner.get(hash_part)
    }

    /// Remember the narinfo of `hash_part`.
    pub fn insert(&self, hash_part: String, narinfo: Bytes) {
        self.inner.insert(hash_part, narinfo);
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// `Content-Type` of narinfos.
pub(super) const NARINFO_TYPE: &str = "text/x-nix-narinfo";

/// A plain-text answer (with its `Content-Length`, so `HEAD` shows it too).
pub(super) fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    sized(status, "text/plain; charset=utf-8", None, Bytes::from(text))
}

/// A 404 of a cache route, cached briefly ([`MISSING_CACHE`]).
pub(super) fn not_found() -> Response {
    let mut resp = plain(StatusCode::NOT_FOUND, "404 not found");
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(MISSING_CACHE));
    resp
}

/// A response with a body in memory and its `Content-Length` set explicitly (axum answers `HEAD`
/// with the `GET` response's headers and no body; an explicit length survives that).
pub(super) fn sized(
    status: StatusCode,
    content_type: &'static str,
    cache: Option<&'static str>,
    body: Bytes,
) -> Response {
    let len = body.len();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(cache) = cache {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    }
    resp
}

pub(super) fn internal(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(cause = %e, what, "binary cache request failed");
    plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

/// `GET`/`HEAD /nix-cache-info`.
pub(super) async fn nix_cache_info(State(state): State<AppState>) -> Response {
    sized(StatusCode::OK, "text/x-nix-cache-info", Some(CACHE_INFO_CACHE), Bytes::from(state.inner.cache_info.clone()))
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
    sized(StatusCode::OK, NARINFO_TYPE, Some(NARINFO_FOUND_CACHE), text)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn cache_settings_default_to_what_nix_expects_and_are_checked() {
        let s = CacheSettings::default();
        s.validate().unwrap();
        assert_eq!(s.nix_cache_info("/nix/store"), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n");
        let s = CacheSettings { priority: 10, want_mass_query: false };
        assert_eq!(s.nix_cache_info("/gnu/store"), "StoreDir: /gnu/store\nWantMassQuery: 0\nPriority: 10\n");
        assert!(CacheSettings { priority: MAX_PRIORITY + 1, ..CacheSettings::default() }.validate().is_err());
    }
}
