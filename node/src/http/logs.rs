//! `GET /api/v1/builds/<drv>/log[?builder=<peer id or node id>]`: a build log from any node
//! (issue 14).
//!
//! The node's own log when it holds one (and no other builder is asked for); else, on a mesh
//! node, the log of a builder that signed one, fetched and checked against the builder's signed
//! [`buildmesh_protocol::wire::LogDigest`] ([`crate::mesh::logs`]). The answer is `text/plain`
//! with `X-Buildmesh-Log-Builder` (the builder's peer id) and, for a fetched log,
//! `X-Buildmesh-Log-Sha256` (and `X-Buildmesh-Log-Cached: true` when it came from this node's
//! cache of fetched logs, [`crate::mesh::log_cache`]). Errors: 400 (bad drv or builder), 404 (no
//! log here and none signed), 502 (builders asked, none served a log that matches its signature:
//! the body names each), 503 (too many log fetches at once; the body names the bound).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use crate::mesh::logs::LogError;

/// The builder's peer id header.
pub const BUILDER_HEADER: &str = "x-buildmesh-log-builder";
/// The verified sha256 header (fetched logs).
pub const SHA256_HEADER: &str = "x-buildmesh-log-sha256";
/// Set (`true`) on a log served from the cache of fetched logs.
pub const CACHED_HEADER: &str = "x-buildmesh-log-cached";

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The query of the log route.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// Only this builder's log (peer id or 64-hex node id).
    pub builder: Option<String>,
}

fn text(bytes: Vec<u8>, builder: String, sha256: Option<String>) -> Response {
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&builder) {
        h.insert(HeaderName::from_static(BUILDER_HEADER), v);
    }
    if let Some(v) = sha256.and_then(|s| HeaderValue::from_str(&s).ok()) {
        h.insert(HeaderName::from_static(SHA256_HEADER), v);
    }
    resp
}

/// The handler.
pub(super) async fn log(
    State(state): State<AppState>,
    Path(drv): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else { return error(StatusCode::BAD_REQUEST, "bad query string: want ?builder=") };
    let drv = match super::audit::parse_target(state.store_dir(), &drv) {
        Ok(d) if d.is_derivation() => d,
        Ok(_) => return error(StatusCode::BAD_REQUEST, format!("{} is not a .drv path", super::echo(&drv))),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let builder = match q.builder.as_deref().map(super::mesh::parse_node) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let me = state.inner.key.node_id();
    if builder.is_none_or(|b| b == me) {
        let (store, d) = (state.store().clone(), drv.clone());
        match tokio::task::spawn_blocking(move || store.get_log(&d)).await {
            Ok(Ok(Some(log))) => return text(log, me.to_peer_id(), None),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("store error: {e}")),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("task failed: {e}")),
        }
        if builder == Some(me) {
            return error(StatusCode::NOT_FOUND, format!("no log of {drv} on this node"));
        }
    }
    let Some(mesh) = state.inner.mesh.clone() else {
        return error(StatusCode::NOT_FOUND, format!("no log of {drv} on this node"));
    };
    match mesh.fetch_log(state.store(), &drv, builder).await {
        Ok(v) => {
            let mut resp = text(v.bytes, v.builder.to_peer_id(), Some(hex::encode(v.digest.sha256)));
            if v.cached {
                resp.headers_mut().insert(HeaderName::from_static(CACHED_HEADER), HeaderValue::from_static("true"));
            }
            resp
        }
        Err(e @ LogError::NoSignedLog { .. }) => {
            error(StatusCode::NOT_FOUND, format!("no log of {drv} on this node, and {e}"))
        }
        Err(e @ LogError::Unavailable { .. }) => error(StatusCode::BAD_GATEWAY, e.to_string()),
        Err(e @ LogError::Busy(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
