//! `POST /api/v1/submit`: the axum side of [`super::accept`].
//!
//! The handler forwards the request body in chunks over a bounded channel to a blocking task that
//! runs [`super::accept`] (parsing, hashing, spooling and store writes are blocking work). When
//! the acceptor rejects the upload early, the handler reads and discards the rest of the body (up
//! to [`DRAIN_LIMIT`]) so that the client gets to read the error response instead of a reset
//! connection.

use std::io::{self, Read};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use buildmesh_protocol::store_path::StoreDir;
use libp2p::futures::StreamExt as _;
use tokio::sync::{Notify, Semaphore, mpsc};

use super::{SubmitError, SubmitLimits};
use crate::store::{Store, unix_ms};

/// The route this module serves.
pub const SUBMIT_PATH: &str = "/api/v1/submit";
/// After a rejection, at most this many further body bytes are read and discarded before the
/// error is answered (and the connection closed).
pub const DRAIN_LIMIT: u64 = 64 << 20;
/// Body chunks buffered between the HTTP task and the acceptor.
const CHANNEL_CHUNKS: usize = 16;

/// What the submit endpoint needs from the node.
#[derive(Debug, Clone)]
pub struct SubmitContext {
    /// The node's store (drvs, sources and builds are written here).
    pub store: Store,
    /// The node's store directory; uploads for another one are refused.
    pub store_dir: StoreDir,
    /// Size limits of one upload.
    pub limits: SubmitLimits,
    /// Notified (`notify_one`) after every accepted upload: the scheduler waits on it.
    pub wake: Arc<Notify>,
    /// The trust rule deciding whether a registered output counts as built
    /// ([`crate::trust`]); [`SubmitContext::new`] trusts no builder (nothing counts as built).
    pub trust: buildmesh_protocol::mesh::TrustConfig,
}

impl SubmitContext {
    /// A context with default limits and a fresh `wake`.
    pub fn new(store: Store, store_dir: StoreDir) -> SubmitContext {
        SubmitContext {
            store,
            store_dir,
            limits: SubmitLimits::default(),
            wake: Arc::new(Notify::new()),
            trust: buildmesh_protocol::mesh::TrustConfig {
                trusted: Some(std::collections::BTreeSet::new()),
                quorum: 1,
                needs_native: false,
                no_emulation_for: Default::default(),
            },
        }
    }
}

#[derive(Debug)]
struct ServerState {
    ctx: SubmitContext,
    permits: Semaphore,
    mesh: Option<crate::mesh::MeshHandle>,
}

/// The router serving `POST /api/v1/submit` (state applied; merge it into the gateway's router).
pub fn router(ctx: SubmitContext) -> Router {
    let permits = Semaphore::new(ctx.limits.max_concurrent.max(1));
    Router::new()
        .route(SUBMIT_PATH, post(submit))
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::new(ServerState { ctx, permits, mesh: None }))
}

/// The router of a mesh node: uploads are checked and stored as by [`router`], then every
/// derivation to build becomes a mesh job ([`crate::mesh::MeshHandle::submit`]) instead of a
/// local build.
pub fn mesh_router(ctx: SubmitContext, mesh: crate::mesh::MeshHandle) -> Router {
    let permits = Semaphore::new(ctx.limits.max_concurrent.max(1));
    Router::new()
        .route(SUBMIT_PATH, post(submit))
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::new(ServerState { ctx, permits, mesh: Some(mesh) }))
}

/// The JSON error body: `{"error": "...", "path": "/nix/store/..."}` (`path` when the error is
/// about one store path).
pub fn error_response(e: &SubmitError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::json!({ "error": e.to_string() });
    if let Some(p) = e.path() {
        body["path"] = serde_json::Value::String(p.to_string());
    }
    (status, Json(body)).into_response()
}

#[tracing::instrument(skip_all, fields(content_length))]
async fn submit(State(state): State<Arc<ServerState>>, headers: HeaderMap, body: Body) -> Response {
    let content_length: Option<u64> =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
    tracing::Span::current().record("content_length", content_length);
    if let Some(cl) = content_length
        && cl > state.ctx.limits.max_total_bytes
    {
        return error_response(&SubmitError::TooLarge {
            what: "body",
            path: "of the upload".to_string(),
            size: cl,
            max: state.ctx.limits.max_total_bytes,
        });
    }
    let Ok(_permit) = state.permits.acquire().await else {
        return error_response(&SubmitError::Internal("the submit endpoint is shutting down".to_string()));
    };
    if let Some(outstanding) = outstanding_jobs(&state).await
        && outstanding >= state.ctx.limits.max_outstanding_jobs
    {
        let e = SubmitError::Outstanding { outstanding, max: state.ctx.limits.max_outstanding_jobs };
        tracing::warn!(cause = %e, "refused a submission");
        return error_response(&e);
    }
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let worker_state = state.clone();
    let mesh_mode = state.mesh.is_some();
    let task = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader { rx, buf: Bytes::new() };
        if mesh_mode {
            super::accept::accept_for_mesh(&worker_state.ctx, &mut reader, content_length, unix_ms())
                .map(|(r, p)| (r, Some(p)))
        } else {
            super::accept(&worker_state.ctx, &mut reader, content_length, unix_ms()).map(|r| (r, None))
        }
    });
    forward(body, tx).await;
    let result = match task.await {
        Ok(r) => r,
        Err(e) => Err(SubmitError::Internal(format!("the submit task failed: {e}"))),
    };
    // A mesh node hands the derivations to build to the mesh.
    let result = match (result, &state.mesh) {
        (Ok((resp, Some(plan))), Some(mesh)) => {
            let req = crate::mesh::SubmitRequest {
                jobs: plan
                    .jobs
                    .into_iter()
                    .map(|(drv, outputs, inputs)| crate::mesh::SubmitJob { drv, outputs, inputs })
                    .collect(),
                priority: plan.priority,
                replicas: (plan.replicas > 0).then_some(plan.replicas),
            };
            match mesh.submit(req).await {
                Ok(_) => Ok(resp),
                Err(e) => Err(SubmitError::Internal(format!("the mesh did not take the submission: {e}"))),
            }
        }
        (r, _) => r.map(|(resp, _)| resp),
    };
    match result {
        Ok(resp) => {
            state.ctx.wake.notify_one();
            (StatusCode::OK, Json(resp)).into_response()
        }
        Err(e) => {
            tracing::warn!(cause = %e, path = e.path(), "rejected a submission");
            error_response(&e)
        }
    }
}

/// The submitter's outstanding jobs: unfinished mesh submissions, or queued and running builds
/// (`None` when the store cannot say; the upload is then not held back).
async fn outstanding_jobs(state: &Arc<ServerState>) -> Option<usize> {
    if let Some(mesh) = &state.mesh {
        return Some(mesh.status().own_submissions);
    }
    let store = state.ctx.store.clone();
    let counts = tokio::task::spawn_blocking(move || store.build_counts()).await.ok()?.ok()?;
    Some((counts.queued + counts.running) as usize)
}

/// Feed the body to the acceptor; once it stops listening, discard up to [`DRAIN_LIMIT`] bytes.
async fn forward(body: Body, tx: mpsc::Sender<io::Result<Bytes>>) {
    let mut stream = body.into_data_stream();
    let mut listening = true;
    let mut drained = 0u64;
    while let Some(next) = stream.next().await {
        match next {
            Ok(chunk) if listening => {
                if tx.send(Ok(chunk)).await.is_err() {
                    listening = false;
                }
            }
            Ok(chunk) => {
                drained += chunk.len() as u64;
                if drained > DRAIN_LIMIT {
                    break;
                }
            }
            Err(e) => {
                if listening {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                }
                break;
            }
        }
    }
}

/// A blocking [`Read`] over the chunks of the body.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.buf = chunk,
                Some(Err(e)) => return Err(e),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}
