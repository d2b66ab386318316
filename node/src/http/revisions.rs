//! Publishing a revision and seeing the mesh's revision headers (issue 13, the mesh side; the QA
//! routes over them are a separate module).
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/mesh/revisions` | `{"channel", "branch", "commit", "replicas", "manifest": "<base64 of the canonical manifest bytes>"}`: this node signs the header (submitter = this node, hash, size and counts from the manifest), stores both, gossips the header; answers `{"revision": "C@ID", "jobs": N, "id", "manifest_hash", "new"}` |
//! | `GET /api/v1/mesh/revisions[?channel=C&branch=B]` | every visible header with where its manifest is: `"manifest": "present" \| "fetching" \| "missing"`, and for a missing one the `error` naming the hash and the peers tried |
//!
//! The manifest is size-checked before it is decoded (at most `MAX_MANIFEST_SIZE`, the body at
//! most [`MAX_BODY`]), then decoded strictly; a bad one is a `400` naming what is wrong, and
//! nothing is stored.

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use buildmesh_protocol::revision::{MAX_MANIFEST_SIZE, Manifest, RevisionHeader};
use serde::{Deserialize, Serialize};

use crate::mesh::revisions::ManifestState;
use crate::mesh::{MeshApiError, MeshHandle};
use crate::store::{Store, unix_ms};

/// Largest request body: a base64 manifest of `MAX_MANIFEST_SIZE` bytes and the other fields.
pub const MAX_BODY: usize = MAX_MANIFEST_SIZE / 3 * 4 + 64 * 1024;

#[derive(Clone)]
struct Ctx {
    store: Store,
    mesh: MeshHandle,
}

/// The routes (state applied).
pub fn router(store: Store, mesh: MeshHandle) -> Router {
    Router::new()
        .route("/api/v1/mesh/revisions", get(list).post(publish).layer(DefaultBodyLimit::max(MAX_BODY)))
        .with_state(Ctx { store, mesh })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Body of `POST /api/v1/mesh/revisions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishBody {
    /// The channel (`guix`, `nixpkgs`).
    pub channel: String,
    /// The branch.
    pub branch: String,
    /// The commit id.
    pub commit: String,
    /// The replication factor its jobs are submitted with (default 2).
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// The manifest's canonical bytes, base64 (standard alphabet).
    pub manifest: String,
}

fn default_replicas() -> u8 {
    2
}

async fn publish(State(ctx): State<Ctx>, Json(body): Json<PublishBody>) -> Response {
    let bytes = match base64::engine::general_purpose::STANDARD.decode(body.manifest.as_bytes()) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("manifest is not base64: {e}")),
    };
    if bytes.len() > MAX_MANIFEST_SIZE {
        return error(
            StatusCode::BAD_REQUEST,
            format!("manifest of {} bytes exceeds the limit of {MAX_MANIFEST_SIZE}", bytes.len()),
        );
    }
    let parsed = match tokio::task::spawn_blocking(move || (Manifest::decode(&bytes), bytes)).await {
        Ok((Ok(m), bytes)) => (m, bytes),
        Ok((Err(e), _)) => return error(StatusCode::BAD_REQUEST, format!("malformed manifest: {e}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("task failed: {e}")),
    };
    let (manifest, bytes) = parsed;
    let header = match RevisionHeader::for_manifest(
        ctx.mesh.node_id(),
        unix_ms(),
        &body.channel,
        &body.branch,
        &body.commit,
        body.replicas,
        &manifest,
        &bytes,
    ) {
        Ok(h) => h,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid revision: {e}")),
    };
    match ctx.mesh.publish_revision(header, bytes).await {
        Ok(p) => Json(serde_json::json!({
            "revision": p.revision, "jobs": p.jobs, "id": p.id.to_string(),
            "manifest_hash": p.manifest_hash, "new": p.new,
        }))
        .into_response(),
        Err(MeshApiError::Refused(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Query of `GET /api/v1/mesh/revisions`.
#[derive(Debug, Clone, Default, Deserialize)]
struct ListQuery {
    channel: Option<String>,
    branch: Option<String>,
}

/// One header as `GET /api/v1/mesh/revisions` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeaderView {
    /// `C@ID`.
    pub revision: String,
    /// The header's message id.
    pub id: String,
    /// Channel.
    pub channel: String,
    /// Branch.
    pub branch: String,
    /// Commit.
    pub commit: String,
    /// Submitter (node id, hex).
    pub submitter: String,
    /// When it was made (Unix ms, submitter's clock).
    pub created_at_ms: u64,
    /// blake3 of the manifest (hex).
    pub manifest_hash: String,
    /// Its size (bytes).
    pub manifest_size: u64,
    /// Where the manifest is here.
    #[serde(flatten)]
    pub state: ManifestState,
}

async fn list(State(ctx): State<Ctx>, Query(q): Query<ListQuery>) -> Response {
    let store = ctx.store.clone();
    let listed =
        tokio::task::spawn_blocking(move || store.list_revisions(q.channel.as_deref(), q.branch.as_deref())).await;
    let list = match listed {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("task failed: {e}")),
    };
    let views: Vec<HeaderView> = list
        .into_iter()
        .map(|r| {
            let e = r.entry;
            HeaderView {
                revision: format!("{}@{}", e.channel, e.commit),
                id: e.id.to_string(),
                submitter: e.submitter.to_string(),
                created_at_ms: e.created_at_ms,
                manifest_hash: hex::encode(e.manifest_hash),
                manifest_size: e.manifest_size,
                state: ctx.mesh.manifest_state(&e.manifest_hash),
                channel: e.channel,
                branch: e.branch,
                commit: e.commit,
            }
        })
        .collect();
    Json(serde_json::json!({ "revisions": views, "counts": ctx.mesh.revision_counts() })).into_response()
}
