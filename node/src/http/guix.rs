//! The routes `guix publish` serves beyond the narinfo, for Guix clients of a node whose store
//! dir is `/gnu/store` (the narinfo itself, in the Guix layout, is [`super::cache`] through
//! [`crate::trust::serve`]):
//!
//! | route | what |
//! |---|---|
//! | `GET`, `HEAD /nar/zstd/<basename>` | the accepted NAR of that store path, zstd (the stored blob file) |
//! | `GET`, `HEAD /nar/<basename>` | the same, uncompressed (the `/nar/<NarHash>.nar` route tells the two apart: a base name has a `-`) |
//! | `GET`, `HEAD /log/<basename>` | the build log of an output (or of a `.drv`) built on this node, `text/plain` |
//! | `GET`, `HEAD /signing-key.pub` | the node's Guix public key, `(public-key (ecc (curve Ed25519) (q #…#)))` |
//!
//! The NAR routes follow the trust rule exactly like the NarHash routes: the NAR served for a path
//! is the one the trust policy accepts for it (on a mesh node the quorum), and nothing when none is
//! accepted. The routes answer on every node (a `/nix/store` node too: they are harmless there),
//! but only a `/gnu/store` node's narinfos point at them.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::store_path::StorePath;

use super::AppState;
use super::cache::{CACHE_INFO_CACHE, MISSING_CACHE, internal, not_found, plain, sized};

/// Guix's public key s-expression of a node (its Ed25519 public key as a point of edwards25519),
/// what `guix archive --authorize` reads; `None` for an id that is no curve point.
pub fn public_key_sexp(node: &NodeId) -> Option<String> {
    buildmesh_protocol::narinfo::guix_layout::guix_public_key(node).ok().map(|k| k.to_sexp())
}

/// The answer of a `signing-key.pub` route: `node`'s Guix public key.
pub(super) fn public_key_response(node: &NodeId) -> Response {
    match public_key_sexp(node) {
        Some(sexp) => sized(StatusCode::OK, "text/plain; charset=utf-8", Some(CACHE_INFO_CACHE), Bytes::from(sexp)),
        None => not_found(),
    }
}

/// `GET`/`HEAD /signing-key.pub`: this node's Guix public key.
pub(super) async fn signing_key(State(state): State<AppState>) -> Response {
    public_key_response(&state.inner.node_id)
}

/// `GET`/`HEAD /nar/zstd/<basename>`.
pub(super) async fn nar_zstd(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    Path(file): Path<String>,
) -> Response {
    nar_of_path(state, &file, true, method, headers, ext).await
}

/// `/nar/<basename>` and `/nar/zstd/<basename>`: the accepted NAR of the store path `file`.
pub(super) async fn nar_of_path(
    state: AppState,
    file: &str,
    compressed: bool,
    method: Method,
    headers: HeaderMap,
    ext: axum::http::Extensions,
) -> Response {
    let Ok(path) = StorePath::from_basename(file) else {
        return plain(StatusCode::BAD_REQUEST, format!("{} is not a store path's base name", super::echo(file)));
    };
    match accepted_nar(&state, path).await {
        Ok(Some(digest)) => super::nar::send_blob(&state, digest, compressed, &method, headers, &ext).await,
        Ok(None) => not_found(),
        Err(e) => internal("trust", e),
    }
}

/// The NarHash the trust rule accepts for `path` (the mesh's quorum on a mesh node).
async fn accepted_nar(state: &AppState, path: StorePath) -> Result<Option<[u8; 32]>, String> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || -> Result<Option<[u8; 32]>, String> {
        if let Some(m) = &st.inner.mesh {
            let acc = m.gateway().accepted(&path.hash_part()).map_err(|e| e.to_string())?;
            return Ok(acc.filter(|a| a.path == path).map(|a| a.nar_hash));
        }
        let j = crate::trust::judge(st.store(), st.store_dir(), &st.inner.trust, &path).map_err(|e| e.to_string())?;
        Ok(j.nar_hash().and_then(|h| <[u8; 32]>::try_from(h.digest()).ok()))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// `GET`/`HEAD /log/<basename>`: the build log of an output built on this node (found through its
/// verified attestations' derivations), or of a derivation; 404 when this node has none.
pub(super) async fn log(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let Ok(path) = StorePath::from_basename(&file) else {
        return plain(StatusCode::BAD_REQUEST, format!("{} is not a store path's base name", super::echo(&file)));
    };
    let st = state.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        if path.to_string().ends_with(".drv") {
            return st.store().get_log(&path);
        }
        for a in crate::trust::verified_attestations(st.store(), &path)? {
            if let Some(log) = st.store().get_log(&a.drv)? {
                return Ok(Some(log));
            }
        }
        Ok(None)
    })
    .await;
    match found {
        Ok(Ok(Some(log))) => sized(StatusCode::OK, "text/plain; charset=utf-8", Some(MISSING_CACHE), Bytes::from(log)),
        Ok(Ok(None)) => not_found(),
        Ok(Err(e)) => internal("store", e),
        Err(e) => internal("task", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_is_guix_sexp_of_the_ed25519_key() {
        let key = buildmesh_protocol::identity::NodeKey::from_seed("k", [7; 32]).unwrap();
        let s = public_key_sexp(&key.node_id()).unwrap();
        assert!(s.starts_with("(public-key \n (ecc \n  (curve Ed25519)\n  (q #"), "{s}");
        assert!(s.contains(&hex::encode_upper(key.node_id().as_bytes())));
    }
}
