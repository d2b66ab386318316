//! The JSON API (`/api/v1`): the node, its builds and its attestations. The CLI
//! (`buildmesh retry`, `cancel`, `submit --wait`) uses it.
//!
//! A `<drv>` in a route is a `.drv` base name (`<hash>-<name>.drv`) or the full path,
//! URL-encoded. Errors are `{"error": "…"}` with 400 (malformed request), 404 (unknown), 409
//! (wrong state for the action) or 500 (the node's own failure).

use std::collections::BTreeMap;
use std::io::{self, Write};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use buildmesh_protocol::derivation::Derivation;
use buildmesh_protocol::store_path::{StoreDir, StorePath};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::AppState;
use crate::audit::{self, AttestationView};
use crate::scheduler::ControlError;
use crate::store::{BuildCounts, BuildFilter, BuildRecord, BuildState, Store, StoreError};
use crate::submit::OutputInfo;
use crate::systems::Systems;

/// Most builds one `GET /api/v1/builds` returns (page with `after`).
pub const MAX_BUILDS_PER_PAGE: usize = 10_000;

/// An API error: a status and a message naming what is wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(cause = %message, "API request failed");
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(format!("store error: {e}"))
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match &e {
            ControlError::UnknownBuild { .. } => StatusCode::NOT_FOUND,
            ControlError::WrongState { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, message: e.to_string() }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("bad query string: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// Run blocking store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("task failed: {e}")))?
}

/// The fallback: JSON 404 under `/api/`, plain text elsewhere.
pub(super) async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::not_found(format!("no such endpoint: {}", super::echo(uri.path()))).into_response()
    } else {
        (StatusCode::NOT_FOUND, "404 not found\n").into_response()
    }
}

/// What a node says about itself (`GET /api/v1/node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// libp2p PeerId (`12D3KooW…`).
    pub peer_id: String,
    /// The key name (in `Sig:` lines).
    pub key_name: String,
    /// The Nix public key `name:base64` (what users put in `trusted-public-keys`).
    pub public_key: String,
    /// The Guix public key `(public-key (ecc (curve Ed25519) (q #…#)))` of the same node key
    /// (what `guix archive --authorize` takes; `buildmesh key guix-public --api URL` prints it).
    #[serde(default)]
    pub guix_public_key: String,
    /// Systems built natively and through emulation.
    pub systems: Systems,
    /// The store directory (`/nix/store`).
    pub store_dir: String,
    /// `local` or `nix` (or a custom executor's name).
    pub executor: String,
    /// buildmesh version.
    pub version: String,
    /// The node's libp2p addresses (empty until the mesh is wired in), relayed ones
    /// (`…/p2p-circuit/p2p/<id>`) included.
    pub addresses: Vec<String>,
    /// Whether peers can dial this node: `public`, `private` (behind NAT: reached through
    /// relays and hole punching) or `unknown` (not tested yet, or not on a mesh).
    #[serde(default)]
    pub reachability: crate::net::Reachability,
    /// The HTTP address the node listens on.
    pub http: String,
    /// The address of the listener that serves the control routes (every request that is not
    /// `GET`/`HEAD`): `http` itself, or the separate admin listener (`admin_http`).
    #[serde(default)]
    pub admin_http: String,
    /// Build slots.
    pub slots: usize,
}

/// `GET /api/v1/node`: [`NodeInfo`] plus build counts and the number of paths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Who the node is.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Builds per state.
    pub builds: BuildCounts,
    /// Registered store paths.
    pub paths: u64,
    /// Why the node takes no new builds because it is over its disk limits (`max_store_bytes`,
    /// `min_free_bytes`); absent when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_pressure: Option<String>,
}

pub(super) async fn node(State(state): State<AppState>) -> Result<Json<NodeView>, ApiError> {
    let st = state.clone();
    let (builds, paths) = blocking(move || Ok((st.store().build_counts()?, st.store().path_count()?))).await?;
    let mut info = (*state.inner.info).clone();
    if let Some(m) = &state.inner.mesh {
        info.addresses = m.addresses();
        info.reachability = m.reachability();
    }
    let disk_pressure = state.store().disk_pressure();
    Ok(Json(NodeView { info, builds, paths, disk_pressure }))
}

/// One build as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildView {
    /// The `.drv` path (absolute).
    pub drv: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: BuildState,
    /// Priority (higher first).
    pub priority: i32,
    /// Attempts started.
    pub attempts: u32,
    /// Unix ms it was first queued.
    pub submitted_at: u64,
    /// Unix ms the last attempt started.
    pub started_at: Option<u64>,
    /// Unix ms it finished (done, failed, cancelled).
    pub finished_at: Option<u64>,
    /// Unix ms before which a retry does not start (backoff).
    pub not_before: Option<u64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Replicas asked for.
    pub replicas: u32,
    /// The registered outputs, by output name (empty until built).
    pub outputs: BTreeMap<String, OutputInfo>,
}

/// The API view of a build record: its outputs that are registered.
pub fn build_view(store: &Store, store_dir: &StoreDir, r: &BuildRecord) -> Result<BuildView, StoreError> {
    let mut outputs = BTreeMap::new();
    if let Some(bytes) = store.get_drv(&r.drv)?
        && let Ok(d) = Derivation::parse(&bytes, store_dir)
    {
        for (name, o) in &d.outputs {
            let Some(p) = &o.path else { continue };
            if let Some(info) = store.path_info(p)? {
                outputs.insert(
                    name.clone(),
                    OutputInfo {
                        path: store_dir.display(p),
                        nar_hash: info.nar_hash.to_string(),
                        nar_size: info.nar_size,
                    },
                );
            }
        }
    }
    Ok(BuildView {
        drv: store_dir.display(&r.drv),
        state: r.state,
        priority: r.priority,
        attempts: r.attempts,
        submitted_at: r.submitted_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        not_before: r.not_before,
        error: r.last_error.clone(),
        replicas: r.replicas,
        outputs,
    })
}

/// Parse a `<drv>` route parameter: a base name or an absolute path in the node's store dir.
fn parse_drv(store_dir: &StoreDir, s: &str) -> Result<StorePath, ApiError> {
    let p = if s.starts_with('/') { store_dir.parse_path(s) } else { StorePath::from_basename(s) }
        .map_err(|e| ApiError::bad_request(format!("{} is not a store path: {e}", super::echo(s))))?;
    if !p.is_derivation() {
        return Err(ApiError::bad_request(format!("{} is not a derivation (.drv) path", super::echo(s))));
    }
    Ok(p)
}

/// Parse a store path given as a base name or an absolute path.
fn parse_path(store_dir: &StoreDir, s: &str) -> Result<StorePath, ApiError> {
    if s.starts_with('/') { store_dir.parse_path(s) } else { StorePath::from_basename(s) }
        .map_err(|e| ApiError::bad_request(format!("{} is not a store path: {e}", super::echo(s))))
}

/// Query of `GET /api/v1/builds`.
#[derive(Debug, Deserialize)]
pub(super) struct BuildsQuery {
    state: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn builds(
    State(state): State<AppState>,
    query: Result<Query<BuildsQuery>, QueryRejection>,
) -> Result<Json<Vec<BuildView>>, ApiError> {
    let Query(q) = query?;
    let mut states = Vec::new();
    if let Some(list) = &q.state {
        for s in list.split(',').filter(|s| !s.is_empty()) {
            let st = BuildState::ALL.into_iter().find(|b| b.as_str() == s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "state {} is not one of queued, running, done, failed, cancelled",
                    super::echo(s)
                ))
            })?;
            states.push(st);
        }
    }
    let after = q.after.as_deref().map(|a| parse_drv(state.store_dir(), a)).transpose()?;
    let limit = q.limit.unwrap_or(MAX_BUILDS_PER_PAGE).clamp(1, MAX_BUILDS_PER_PAGE);
    let st = state.clone();
    let views = blocking(move || {
        let records = st.store().list_builds(&BuildFilter { states, after, limit })?;
        records.iter().map(|r| build_view(st.store(), st.store_dir(), r).map_err(ApiError::from)).collect()
    })
    .await?;
    Ok(Json(views))
}

async fn one_build(state: &AppState, drv: StorePath) -> Result<BuildView, ApiError> {
    let st = state.clone();
    blocking(move || {
        let r = st
            .store()
            .get_build(&drv)?
            .ok_or_else(|| ApiError::not_found(format!("no build of {drv} on this node")))?;
        Ok(build_view(st.store(), st.store_dir(), &r)?)
    })
    .await
}

pub(super) async fn build(State(state): State<AppState>, Path(drv): Path<String>) -> Result<Json<BuildView>, ApiError> {
    let drv = parse_drv(state.store_dir(), &drv)?;
    Ok(Json(one_build(&state, drv).await?))
}

/// Answer of `POST …/retry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryView {
    /// Derivations queued again: the one asked for, then failed inputs it needs.
    pub requeued: Vec<String>,
    /// The build after the retry (absent when a mesh node builds a job it had no record of).
    pub build: Option<BuildView>,
    /// Whether the retry went to the mesh: this node claims and builds the mesh's job, and its
    /// attestation is gossiped (`false`: the node's own queue).
    #[serde(default)]
    pub mesh: bool,
}

pub(super) async fn retry(State(state): State<AppState>, Path(drv): Path<String>) -> Result<Json<RetryView>, ApiError> {
    let drv = parse_drv(state.store_dir(), &drv)?;
    if let Some(mesh) = &state.inner.mesh {
        let here = mesh
            .retry_here(drv.clone())
            .await
            .map_err(|e| ApiError { status: StatusCode::CONFLICT, message: format!("mesh retry of {drv}: {e}") })?;
        if here {
            let build = one_build(&state, drv.clone()).await.ok();
            return Ok(Json(RetryView { requeued: vec![state.store_dir().display(&drv)], build, mesh: true }));
        }
    }
    let sched = state.inner.scheduler.clone();
    let d = drv.clone();
    let requeued = blocking(move || Ok(sched.retry(&d)?)).await?;
    let build = one_build(&state, drv).await?;
    Ok(Json(RetryView {
        requeued: requeued.iter().map(|p| state.store_dir().display(p)).collect(),
        build: Some(build),
        mesh: false,
    }))
}

/// Answer of `POST …/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelView {
    /// The state it had.
    pub previous_state: BuildState,
    /// The build after the cancel.
    pub build: BuildView,
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(drv): Path<String>,
) -> Result<Json<CancelView>, ApiError> {
    let drv = parse_drv(state.store_dir(), &drv)?;
    let sched = state.inner.scheduler.clone();
    let d = drv.clone();
    let previous_state = blocking(move || Ok(sched.cancel(&d)?)).await?;
    let build = one_build(&state, drv).await?;
    Ok(Json(CancelView { previous_state, build }))
}

/// Query of `GET /api/v1/attestations`.
#[derive(Debug, Deserialize)]
pub(super) struct AttestationsQuery {
    path: Option<String>,
    drv: Option<String>,
    format: Option<String>,
}

/// One attestation of one output, as the API lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputAttestationView {
    /// The output path (absolute).
    pub path: String,
    /// What the builder said about it.
    #[serde(flatten)]
    pub attestation: AttestationView,
}

pub(super) async fn attestations(
    State(state): State<AppState>,
    query: Result<Query<AttestationsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    match q.format.as_deref() {
        None | Some("json") => {}
        Some("jsonl") => {
            if q.path.is_some() || q.drv.is_some() {
                return Err(ApiError::bad_request("format=jsonl exports every attestation; drop path= and drv="));
            }
            return export_jsonl(state.store().clone());
        }
        Some("in-toto") => {
            if q.path.is_some() || q.drv.is_some() {
                return Err(ApiError::bad_request("format=in-toto exports every attestation; drop path= and drv="));
            }
            return export_in_toto(state.store().clone(), state.inner.key.clone()).await;
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!("format {} is not json, jsonl or in-toto", super::echo(other))));
        }
    }
    let store_dir = state.store_dir().clone();
    let st = state.clone();
    let views = match (q.path, q.drv) {
        (Some(p), None) => {
            let path = parse_path(&store_dir, &p)?;
            blocking(move || {
                let report = audit::query_path(st.store(), &path).map_err(|e| ApiError::internal(e.to_string()))?;
                Ok(flatten(vec![report]))
            })
            .await?
        }
        (None, Some(d)) => {
            let drv = parse_drv(&store_dir, &d)?;
            blocking(move || {
                let reports = audit::query_drv(st.store(), &drv).map_err(|e| ApiError::internal(e.to_string()))?;
                Ok(flatten(reports))
            })
            .await?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of ?path=<store path> or ?drv=<drv path>, or ?format=jsonl",
            ));
        }
    };
    Ok(Json(views).into_response())
}

fn flatten(reports: Vec<audit::OutputReport>) -> Vec<OutputAttestationView> {
    reports
        .into_iter()
        .flat_map(|r| {
            let path = r.path;
            r.attestations.into_iter().map(move |a| OutputAttestationView { path: path.clone(), attestation: a })
        })
        .collect()
}

/// Exports streaming at once: each holds a blocking thread for as long as its client reads, so
/// slow clients could otherwise take every blocking thread of the node.
pub const MAX_CONCURRENT_EXPORTS: usize = 4;
static EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_EXPORTS);

/// `?format=jsonl`: every attestation, streamed as [`audit::ExportLine`]s (503 when
/// [`MAX_CONCURRENT_EXPORTS`] are already running).
fn export_jsonl(store: Store) -> Result<Response, ApiError> {
    export_stream(store, "application/jsonl", |store, w| audit::export_jsonl(store, w))
}

/// The header of an in-toto export that counts the attestations left out (other builders'
/// attestations without their provenance; [`audit::intoto`]).
pub const NOT_EXPORTED_HEADER: &str = "x-buildmesh-not-exported";

/// `?format=in-toto`: a first pass counts what is left out (the [`NOT_EXPORTED_HEADER`] and
/// `x-buildmesh-exported` headers), then the envelopes are streamed, up to the last attestation
/// the count saw (the headers describe the body exactly).
async fn export_in_toto(
    store: Store,
    key: std::sync::Arc<buildmesh_protocol::identity::NodeKey>,
) -> Result<Response, ApiError> {
    let permit = export_permit()?;
    let (s, k) = (store.clone(), key.clone());
    let census = blocking(move || audit::intoto::census(&s, &k).map_err(|e| ApiError::internal(e.to_string()))).await?;
    let mut resp = stream_export(permit, store, "application/jsonl", move |store, w| {
        audit::intoto::export_in_toto(store, &key, census.through_seq, w).map(|c| c.exported)
    });
    resp.headers_mut().insert(NOT_EXPORTED_HEADER, HeaderValue::from(census.without_envelope));
    resp.headers_mut().insert("x-buildmesh-exported", HeaderValue::from(census.exported));
    Ok(resp)
}

fn export_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    EXPORTS.try_acquire().map_err(|_| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!("{MAX_CONCURRENT_EXPORTS} attestation exports are already running; try again later"),
    })
}

/// Stream what `export` writes (in a blocking task, at most [`MAX_CONCURRENT_EXPORTS`] at once).
fn export_stream(
    store: Store,
    content_type: &'static str,
    export: impl FnOnce(&Store, &mut dyn Write) -> Result<u64, audit::AuditError> + Send + 'static,
) -> Result<Response, ApiError> {
    Ok(stream_export(export_permit()?, store, content_type, export))
}

fn stream_export(
    permit: tokio::sync::SemaphorePermit<'static>,
    store: Store,
    content_type: &'static str,
    export: impl FnOnce(&Store, &mut dyn Write) -> Result<u64, audit::AuditError> + Send + 'static,
) -> Response {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut w = io::BufWriter::with_capacity(64 * 1024, ChannelWriter { tx: tx.clone() });
        let result = export(&store, &mut w).map_err(io::Error::other).and_then(|_| w.flush());
        if let Err(e) = result {
            tracing::error!(cause = %e, "attestation export failed; cutting the response");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = libp2p::futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], Body::from_stream(stream)).into_response()
}

/// A [`Write`] that sends what is written as body chunks (blocking when the client is slow).
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
