//! `POST /api/v1/submit`: the axum side of [`super::accept`].
//!
//! The handler forwards the request body in chunks over a bounded channel to a blocking task that
//! runs [`super::accept`] (parsing, hashing, spooling and store writes are blocking work). When
//! the acceptor rejects the upload early, the handler reads and discards the rest of the body (up
//! to [`DRAIN_LIMIT`]) so that the client gets to read the error response instead of a reset
//! connection.
//!
//! Per-submitter limits (the submitter is the holder of the request's API token, put into the
//! request's extensions as a [`Submitter`] by [`crate::http::auth`]; the operator's without one):
//! the outstanding jobs of the submitter (`max_outstanding_jobs`) and of everyone
//! (`max_outstanding_jobs_total`) are checked before the body is read; the bytes of the
//! submitter's unfinished uploads (`max_closure_bytes_per_submitter`) are reserved from
//! `Content-Length` before the body is read, or chunk by chunk as a body without one arrives.
//! Every refusal is a 429 naming the limit, the submitter and the numbers.

use std::io::{self, Read};
use std::sync::Arc;

use axum::Extension;
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
use crate::scheduler::submitters::{Reservation, Submitter, SubmitterLedger};
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
    /// Who uploaded what (the scheduler's, [`crate::scheduler::SchedulerHandle::submitters`]);
    /// [`SubmitContext::new`] makes a fresh one.
    pub submitters: SubmitterLedger,
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
            submitters: SubmitterLedger::default(),
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

#[tracing::instrument(skip_all, fields(content_length, submitter))]
async fn submit(
    State(state): State<Arc<ServerState>>,
    submitter: Option<Extension<Submitter>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_length: Option<u64> =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
    let who = submitter.map_or_else(Submitter::operator, |Extension(s)| s);
    tracing::Span::current().record("content_length", content_length);
    tracing::Span::current().record("submitter", who.0.as_ref());
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
    if let Err(e) = check_outstanding(&state, &who).await {
        return refuse(&e, body).await;
    }
    let ledger = &state.ctx.submitters;
    let max_bytes = state.ctx.limits.max_closure_bytes_per_submitter;
    let mut reservation = match ledger.reserve(&who, content_length.unwrap_or(0), max_bytes) {
        Ok(r) => r,
        Err(usage) => {
            let upload = content_length.unwrap_or(0);
            let e = SubmitError::ClosureQuota { submitter: who.to_string(), used: usage.bytes, upload, max: max_bytes };
            return refuse(&e, body).await;
        }
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let worker_state = state.clone();
    let mesh_mode = state.mesh.is_some();
    let who_name = who.0.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader { rx, buf: Bytes::new() };
        if mesh_mode {
            super::accept::accept_for_mesh(&worker_state.ctx, &mut reader, content_length, unix_ms())
                .map(|(r, p)| (r, Some(p), Default::default()))
        } else {
            super::accept::accept_queued(&worker_state.ctx, &mut reader, content_length, unix_ms(), &who_name)
                .map(|(r, queued)| (r, None, queued))
        }
    });
    // A body without `Content-Length` is counted against the quota as it arrives.
    let metered = content_length.is_none().then_some((&mut reservation, max_bytes));
    let over_quota = forward(body, tx, metered).await;
    let result = match (task.await, over_quota) {
        (_, Some((used, upload))) => {
            Err(SubmitError::ClosureQuota { submitter: who.to_string(), used, upload, max: max_bytes })
        }
        (Ok(r), None) => r,
        (Err(e), None) => Err(SubmitError::Internal(format!("the submit task failed: {e}"))),
    };
    let result = result.map(|(resp, plan, queued)| {
        // Committed with the builds it queued; now counted in memory too.
        match queued {
            Some(q) => ledger.record(q.id, &who, q.bytes, q.drvs, Some(reservation)),
            None => drop(reservation),
        }
        (resp, plan)
    });
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

/// Answer `e` after reading and discarding up to [`DRAIN_LIMIT`] bytes of the body, so that the
/// client reads the refusal rather than a reset connection.
async fn refuse(e: &SubmitError, body: Body) -> Response {
    tracing::warn!(cause = %e, "refused a submission");
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    forward(body, tx, None).await;
    error_response(e)
}

/// Refuse the upload when `who` (on a mesh node: the node, whose key signs every job) or all
/// submitters together have as many outstanding jobs as the limits allow. When the store cannot
/// say, the upload is not held back.
async fn check_outstanding(state: &Arc<ServerState>, who: &Submitter) -> Result<(), SubmitError> {
    let limits = &state.ctx.limits;
    let (mine, all) = match &state.mesh {
        Some(mesh) => {
            let own = mesh.status().own_submissions;
            (Some((format!("this node (whose key signs the jobs of submitter `{who}`)"), own)), Some(own))
        }
        None => {
            let store = state.ctx.store.clone();
            let counts = tokio::task::spawn_blocking(move || store.build_counts()).await.ok().and_then(Result::ok);
            // Each unfinished upload counts as at least one job, which also bounds the ledger's
            // rows (`submitter_uploads`) per submitter.
            let usage = state.ctx.submitters.usage(who);
            let mine = usage.jobs.max(usage.uploads);
            (Some((format!("submitter `{who}`"), mine)), counts.map(|c| (c.queued + c.running) as usize))
        }
    };
    if let Some((whose, outstanding)) = mine
        && outstanding >= limits.max_outstanding_jobs
    {
        return Err(SubmitError::Outstanding {
            who: whose,
            limit: "max_outstanding_jobs",
            outstanding,
            max: limits.max_outstanding_jobs,
        });
    }
    if let Some(outstanding) = all
        && outstanding >= limits.max_outstanding_jobs_total
    {
        return Err(SubmitError::Outstanding {
            who: "all submitters together".to_string(),
            limit: "max_outstanding_jobs_total",
            outstanding,
            max: limits.max_outstanding_jobs_total,
        });
    }
    Ok(())
}

/// Feed the body to the acceptor; once it stops listening, discard up to [`DRAIN_LIMIT`] bytes.
/// With `metered`, every chunk first grows the reservation within its maximum; a chunk that would
/// pass it stops the upload (the acceptor reads an error), and `Some((used, upload so far))`
/// comes back.
async fn forward(
    body: Body,
    tx: mpsc::Sender<io::Result<Bytes>>,
    mut metered: Option<(&mut Reservation, u64)>,
) -> Option<(u64, u64)> {
    let mut stream = body.into_data_stream();
    let mut listening = true;
    let mut drained = 0u64;
    let mut over = None;
    while let Some(next) = stream.next().await {
        match next {
            Ok(chunk) if listening => {
                if let Some((reservation, max)) = metered.as_mut()
                    && let Err(usage) = reservation.grow(chunk.len() as u64, *max)
                {
                    let upload = reservation.bytes() + chunk.len() as u64;
                    over = Some((usage.bytes.saturating_sub(reservation.bytes()), upload));
                    let _ = tx.send(Err(io::Error::other("over the submitter's closure-byte quota"))).await;
                    listening = false;
                    continue;
                }
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
    over
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
