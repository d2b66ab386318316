//! Per-builder views: `/builder/<key id>/…`, a binary cache per builder, serving each output
//! exactly as that one builder attested it, so that auditors compare builders through one node
//! with their own tools: `guix challenge --substitute-urls="http://node/builder/A
//! http://node/builder/B"`, `nix path-info --store http://node/builder/A`, `nix store verify`.
//!
//! | route | what |
//! |---|---|
//! | `/builder/<key id>/<hash32>.narinfo` | the output as the builder attested it (its NarHash, NarSize, references, deriver) with **its own** signature |
//! | `/builder/<key id>/nar/zstd/<basename>` | that NAR, zstd (the stored blob file) |
//! | `/builder/<key id>/nar/<basename>` | that NAR, uncompressed |
//! | `/builder/<key id>/nix-cache-info` | as the node's own |
//! | `/builder/<key id>/signing-key.pub` | the builder's Guix public key (what `guix archive --authorize` takes) |
//!
//! `<key id>` is the builder's node id: 64 hex digits or its libp2p peer id (`12D3KooW…`), as
//! `buildmesh query` and `/api/v1/attestations` show it.
//!
//! **What such a narinfo is, and what it is not.** It is the builder's own statement, re-served:
//! the facts of the builder's verified attestation and the signature the builder made over them
//! when it built the output (Nix layout: its `Sig:` line; Guix layout on a `/gnu/store` node: its
//! `Signature:` line, when its attestation carries one). The node adds no signature of its own
//! and applies no quorum here: a view shows what one builder signed, also when other builders
//! disagree (that is what it is for). So a client that trusts only the builder's key gets only
//! what the builder signed, and a client that trusts the node's or the mesh's keys gets nothing
//! it would not get from the builder. Each answer says whose statement it is in the header
//! `X-Buildmesh-Builder: <node id>`.
//!
//! **NARs are verified against the builder's NarHash.** The NAR route serves the stored blob with
//! the builder's NarHash and NarSize (blobs are content-addressed, so it holds exactly those
//! bytes), or, on a mesh node, fetches it first from that builder and verifies it against the
//! NarHash the builder signed ([`crate::mesh::Gateway::builder_nar`]) — only from builders of the
//! node's trust policy, so that a stranger's attestation cannot make the node download its NARs.
//! A narinfo request never fetches anything (`guix challenge` reads narinfos only); when the NAR is
//! not here yet the narinfo offers only the uncompressed URL, whose route fetches it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use buildmesh_protocol::hash::NixHash;
use buildmesh_protocol::id::NodeId;
use buildmesh_protocol::narinfo::guix_layout::{self, NarUrl};
use buildmesh_protocol::nixbase32;
use buildmesh_protocol::store_path::StorePath;
use buildmesh_protocol::wire::OutputAttestation;

use super::AppState;
use super::cache::{NARINFO_FOUND_CACHE, internal, not_found, plain};
use crate::store::{BlobInfo, StoreError};

/// The header naming whose statement a per-builder answer is.
pub const BUILDER_HEADER: &str = "x-buildmesh-builder";

fn builder_id(key: &str) -> Result<NodeId, Box<Response>> {
    key.parse::<NodeId>().map_err(|_| {
        Box::new(plain(
            StatusCode::BAD_REQUEST,
            format!("{} is not a builder's key id (64 hex digits or a peer id)", super::echo(key)),
        ))
    })
}

/// The output `path` as `builder` attested it: the record of its latest verified attestation
/// naming `path` in this node's store dir (blocking).
fn attested_by(st: &AppState, builder: &NodeId, path: &StorePath) -> Result<Option<OutputAttestation>, StoreError> {
    let atts = crate::trust::verified_attestations(st.store(), path)?;
    Ok(atts
        .into_iter()
        .filter(|a| a.builder == *builder && a.store_dir == *st.store_dir())
        .max_by_key(|a| a.finished_at_ms)
        .and_then(|a| a.outputs.into_values().find(|o| o.path == *path)))
}

/// The output with this hash part that some attestation names (blocking).
fn find_output(st: &AppState, hash_part: &str) -> Result<Option<StorePath>, StoreError> {
    if let Some(m) = &st.inner.mesh
        && let Some(p) = m.gateway().index().get(hash_part)
    {
        return Ok(Some(p));
    }
    Ok(st.store().path_by_hash_part(hash_part)?.map(|i| i.path))
}

/// The stored blob with the builder's NarHash and NarSize, if any (blocking).
fn held_blob(st: &AppState, o: &OutputAttestation) -> Result<Option<BlobInfo>, StoreError> {
    Ok(st.store().blob_by_nar_hash(&NixHash::sha256(o.nar_hash))?.filter(|b| b.nar_size == o.nar_size))
}

/// The narinfo of `o` as its builder attested it, in the node's layout (see the module docs).
pub fn render(st: &AppState, o: &OutputAttestation, blob: Option<&BlobInfo>) -> String {
    let sd = st.store_dir();
    if guix_layout::is_guix_store(sd) {
        let mut urls = Vec::with_capacity(2);
        if let Some(b) = blob {
            urls.push(NarUrl::zstd(&o.path, b.compressed_size));
        }
        urls.push(NarUrl::none(&o.path, o.nar_size));
        return guix_layout::render(&o.guix_signed_part(sd), o.guix_signature.as_deref(), &urls);
    }
    let mut n = o.to_narinfo(sd);
    match blob {
        Some(b) => {
            n.url = format!("nar/zstd/{}", o.path);
            n.compression = Some("zstd".into());
            n.file_size = Some(b.compressed_size);
        }
        None => {
            n.url = format!("nar/{}", o.path);
            n.compression = Some("none".into());
            n.file_size = Some(o.nar_size);
        }
    }
    n.to_string()
}

fn labelled(mut resp: Response, builder: &NodeId) -> Response {
    if let Ok(v) = HeaderValue::try_from(builder.to_string()) {
        resp.headers_mut().insert(BUILDER_HEADER, v);
    }
    resp
}

/// `GET`/`HEAD /builder/<key id>/<file>`: `<hash32>.narinfo`, `nix-cache-info`, `signing-key.pub`.
#[tracing::instrument(level = "debug", skip_all, fields(key = %key, file = %file))]
pub(super) async fn file(State(state): State<AppState>, Path((key, file)): Path<(String, String)>) -> Response {
    let builder = match builder_id(&key) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    if file == "nix-cache-info" {
        return labelled(super::cache::nix_cache_info(State(state)).await, &builder);
    }
    if file == "signing-key.pub" {
        return labelled(super::guix::public_key_response(&builder), &builder);
    }
    let Some(hash_part) = file.strip_suffix(".narinfo") else { return not_found() };
    if hash_part.len() != 32 || nixbase32::decode_fixed::<20>(hash_part).is_err() {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("{} is not <32-character nix32 hash>.narinfo", super::echo(&file)),
        );
    }
    let (st, hp) = (state.clone(), hash_part.to_string());
    let found = tokio::task::spawn_blocking(move || -> Result<Option<String>, StoreError> {
        let Some(path) = find_output(&st, &hp)? else { return Ok(None) };
        let Some(o) = attested_by(&st, &builder, &path)? else { return Ok(None) };
        let blob = held_blob(&st, &o)?;
        Ok(Some(render(&st, &o, blob.as_ref())))
    })
    .await;
    match found {
        Ok(Ok(Some(text))) => labelled(
            super::cache::sized(
                StatusCode::OK,
                super::cache::NARINFO_TYPE,
                Some(NARINFO_FOUND_CACHE),
                Bytes::from(text),
            ),
            &builder,
        ),
        Ok(Ok(None)) => not_found(),
        Ok(Err(e)) => internal("store", e),
        Err(e) => internal("task", e),
    }
}

/// `GET`/`HEAD /builder/<key id>/nar/<basename>` (uncompressed).
pub(super) async fn nar(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    Path((key, file)): Path<(String, String)>,
) -> Response {
    send(state, &key, &file, false, method, headers, ext).await
}

/// `GET`/`HEAD /builder/<key id>/nar/zstd/<basename>`.
pub(super) async fn nar_zstd(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    Path((key, file)): Path<(String, String)>,
) -> Response {
    send(state, &key, &file, true, method, headers, ext).await
}

async fn send(
    state: AppState,
    key: &str,
    file: &str,
    compressed: bool,
    method: Method,
    headers: HeaderMap,
    ext: axum::http::Extensions,
) -> Response {
    let builder = match builder_id(key) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let Ok(path) = StorePath::from_basename(file) else {
        return plain(StatusCode::BAD_REQUEST, format!("{} is not a store path's base name", super::echo(file)));
    };
    let st = state.clone();
    let o = match tokio::task::spawn_blocking(move || attested_by(&st, &builder, &path)).await {
        Ok(Ok(Some(o))) => o,
        Ok(Ok(None)) => return not_found(),
        Ok(Err(e)) => return internal("store", e),
        Err(e) => return internal("task", e),
    };
    // The blob with the builder's NarHash: here already, or fetched from that builder and
    // verified against it (mesh nodes, trusted builders only).
    let (nar_hash, nar_size) = (o.nar_hash, o.nar_size);
    let available: Result<bool, String> = match &state.inner.mesh {
        Some(m) => {
            m.gateway().builder_nar(builder, nar_hash, nar_size).await.map(|b| b.is_some()).map_err(|e| e.to_string())
        }
        None => {
            let st = state.clone();
            match tokio::task::spawn_blocking(move || held_blob(&st, &o)).await {
                Ok(r) => r.map(|b| b.is_some()).map_err(|e| e.to_string()),
                Err(e) => return internal("task", e),
            }
        }
    };
    match available {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(e) => return internal("builder NAR", e),
    }
    labelled(super::nar::send_blob(&state, nar_hash, compressed, &method, headers, &ext).await, &builder)
}
